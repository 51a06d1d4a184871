/*
 * crc.c: CRC-32 with ISA-L when available, zlib otherwise. Pure.
 */
#include "autoconfig.h"

#include <zlib.h>

#ifdef HAVE_ISAL
#include <isa-l/crc.h>
#endif

#include "crc.h"

uint32_t
crc_update_zlib(uint32_t crc, const void *p, size_t len)
{
	const unsigned char *b = p;
	uLong c = crc;

	/* zlib takes uInt lengths: feed huge buffers in pieces */
	while (len > 0) {
		uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;

		c = crc32(c, b, n);
		b += n;
		len -= n;
	}
	return (uint32_t)c;
}

#ifdef HAVE_ISAL
uint32_t
crc_update_isal(uint32_t crc, const void *p, size_t len)
{
	/* same pre- and post-inversion as zlib: the values are zlib's */
	return crc32_gzip_refl(crc, p, len);
}
#endif

uint32_t
crc_update(uint32_t crc, const void *p, size_t len)
{
#ifdef HAVE_ISAL
	return crc32_gzip_refl(crc, p, len);
#else
	return crc_update_zlib(crc, p, len);
#endif
}

const char *
crc_impl(void)
{
#ifdef HAVE_ISAL
	return "ISA-L";
#else
	return "zlib";
#endif
}
