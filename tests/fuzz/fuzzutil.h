/*
 * fuzzutil.h: pieces the libFuzzer targets share: little-endian fields and
 * rewriting the crcs of a run of FCW2 frames so that a mutated input gets
 * past them. Header-only: each target is one program.
 */
#ifndef WALRELAY_FUZZUTIL_H
#define WALRELAY_FUZZUTIL_H

#include <stdint.h>
#include <string.h>

#include "crc.h"
#include "fcw2.h"

static inline void
fuzz_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t
fuzz_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

/*
 * Rewrite the frame crc of every whole frame at the start of p (and the
 * record crc of uncompressed ones), up to the first header without the
 * magic or a frame that does not fit.
 */
static inline void
fuzz_fix_crcs(uint8_t *p, size_t len)
{
	size_t pos = 0, flen, plen;

	while (len - pos >= FCW2_HEADER_LEN &&
	    memcmp(p + pos, FCW2_MAGIC, 4) == 0) {
		flen = fcw2_frame_len(p + pos);
		if (flen > len - pos)
			break;
		plen = flen - FCW2_OVERHEAD;
		if ((p[pos + 4] & FCW2_FLAG_LZ4) == 0 && plen >= 4)
			fuzz_put32(p + pos + FCW2_HEADER_LEN + plen - 4,
			    crc_update(0, p + pos + FCW2_HEADER_LEN, plen - 4));
		fuzz_put32(p + pos + flen - FCW2_CRC_LEN,
		    crc_update(0, p + pos, flen - FCW2_CRC_LEN));
		pos += flen;
	}
}

#endif
