/*
 * fuzz_scan.c: libFuzzer target for the segment scanner (what walcat
 * verify and recovery-style scans run on arbitrary file bytes).
 *
 * Input layout:
 *   byte 0     bits 0-3: read block size (1 << n bytes, 1 to 32768)
 *              bit 4: small frame cap (256 bytes) instead of the default
 *              bit 5: rewrite the frame crcs of the leading whole frames
 *   the rest   the file
 *
 * Invariants: the events tile the file exactly (each starts where the
 * previous one ended: a frame at offset + len, a bad region at offset +
 * skipped, an incomplete tail at the end of the file); every frame checks
 * again with fcw2_check; a resumption point starts a valid frame; the
 * events are the same with another block size; all bytes are read; the
 * buffer never grows past the cap plus a block.
 */
#include "autoconfig.h"

#include <sys/mman.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "fcw2.h"
#include "scan.h"

#define FUZZ_SMALL_CAP	256
#define FUZZ_MAX_EVENTS	8192

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

struct fuzz_ev {
	int		 type;
	int		 status;
	uint64_t	 offset;
	uint64_t	 end;
};

static void
fuzz_fail(const char *what)
{
	fprintf(stderr, "fuzz_scan: invariant broken: %s\n", what);
	abort();
}

static void
fuzz_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void
fuzz_fix_crcs(uint8_t *p, size_t len)
{
	size_t pos = 0, flen;

	while (len - pos >= FCW2_HEADER_LEN &&
	    memcmp(p + pos, FCW2_MAGIC, 4) == 0) {
		flen = fcw2_frame_len(p + pos);
		if (flen > len - pos)
			break;
		fuzz_put32(p + pos + flen - FCW2_CRC_LEN,
		    (uint32_t)crc32(crc32(0L, Z_NULL, 0), p + pos,
		    (uInt)(flen - FCW2_CRC_LEN)));
		pos += flen;
	}
}

static size_t
fuzz_scan(int fd, const uint8_t *file, size_t len, size_t block, size_t cap,
    struct fuzz_ev *evs)
{
	struct fcw2_checker chk;
	struct scan sc;
	struct scan_event ev;
	char errbuf[256];
	uint64_t at = 0;
	size_t n = 0, flen;

	if (lseek(fd, 0, SEEK_SET) != 0)
		fuzz_fail("lseek");
	if (block == 0)
		block = SCAN_BLOCK;
	fcw2_checker_init(&chk, cap, 1);
	scan_init(&sc, cap, block, 1);
	scan_start(&sc, fd);
	for (;;) {
		if (scan_next(&sc, &ev, errbuf, sizeof(errbuf)) != 0)
			fuzz_fail(errbuf);
		if (sc.sc_cap > (cap > block ? cap : block) + block)
			fuzz_fail("buffer grew past the cap");
		if (ev.ev_offset != at)
			fuzz_fail("events do not tile the file");
		if (n == FUZZ_MAX_EVENTS)
			fuzz_fail("too many events");
		evs[n].type = ev.ev_type;
		evs[n].status = ev.ev_status;
		evs[n].offset = ev.ev_offset;
		switch (ev.ev_type) {
		case SCAN_FRAME:
			if (ev.ev_len > len - at ||
			    memcmp(ev.ev_data, file + at, ev.ev_len) != 0)
				fuzz_fail("frame bytes differ from the file");
			if (fcw2_check(&chk, ev.ev_data, ev.ev_len, &flen,
			    NULL) != FCW2_OK || flen != ev.ev_len)
				fuzz_fail("frame does not check again");
			at += ev.ev_len;
			break;
		case SCAN_BAD:
			if (ev.ev_skipped == 0 || ev.ev_resume != at +
			    ev.ev_skipped || ev.ev_resume > len)
				fuzz_fail("bad region out of range");
			if (ev.ev_resumed && fcw2_check(&chk, file +
			    ev.ev_resume, len - ev.ev_resume, &flen,
			    NULL) != FCW2_OK)
				fuzz_fail("resumed where no valid frame starts");
			if (!ev.ev_resumed && ev.ev_resume != len)
				fuzz_fail("gave up before the end of the file");
			at = ev.ev_resume;
			break;
		case SCAN_INCOMPLETE:
			if (ev.ev_have != len - at || ev.ev_have == 0)
				fuzz_fail("incomplete tail is not the tail");
			if (ev.ev_need != 0 && ev.ev_need <= ev.ev_have)
				fuzz_fail("incomplete frame that was complete");
			at = len;
			break;
		case SCAN_END:
			if (at != len)
				fuzz_fail("end before the end of the file");
			break;
		default:
			fuzz_fail("unknown event");
		}
		evs[n++].end = at;
		if (ev.ev_type == SCAN_END)
			break;
	}
	if (scan_bytes_read(&sc) != len)
		fuzz_fail("not every byte was read");
	scan_free(&sc);
	fcw2_checker_free(&chk);
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fuzz_ev a[FUZZ_MAX_EVENTS], b[FUZZ_MAX_EVENTS];
	uint8_t *file;
	size_t len, na, nb, block, cap;
	int fd;

	if (size < 1)
		return 0;
	block = (size_t)1 << (data[0] & 0x0f);
	cap = (data[0] & 0x10) ? FUZZ_SMALL_CAP : FCW2_DEFAULT_MAX_FRAME;
	len = size - 1;
	if ((file = malloc(len + 1)) == NULL)
		fuzz_fail("out of memory");
	memcpy(file, data + 1, len);
	if (data[0] & 0x20)
		fuzz_fix_crcs(file, len);

	if ((fd = memfd_create("fuzz_scan", MFD_CLOEXEC)) == -1)
		fuzz_fail("memfd_create");
	if (write(fd, file, len) != (ssize_t)len)
		fuzz_fail("write");
	na = fuzz_scan(fd, file, len, block, cap, a);
	nb = fuzz_scan(fd, file, len, block == 4096 ? 7 : 4096, cap, b);
	if (na != nb)
		fuzz_fail("events depend on the block size");
	for (size_t i = 0; i < na; i++)
		if (a[i].type != b[i].type || a[i].status != b[i].status ||
		    a[i].offset != b[i].offset || a[i].end != b[i].end)
			fuzz_fail("events depend on the block size");
	close(fd);
	free(file);
	return 0;
}
