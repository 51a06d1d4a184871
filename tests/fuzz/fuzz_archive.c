/*
 * fuzz_archive.c: libFuzzer target for the archive format (archive.h): the
 * index in the trailing skippable frame (archive_index_read,
 * archive_index_find), the block reader (archive_read_block) and the
 * streaming scan of a .wal.zst (scan_start_zstd, what `walcat verify`
 * reads). Files live in a temporary directory (under /dev/shm when it
 * exists, else $TMPDIR or /tmp).
 *
 * Input layout:
 *   byte 0     bit 0: build mode: the rest is raw segment bytes (FCW2
 *              frames; their crcs are rewritten so that whole frames are
 *              valid), archived by archive_compress with a small block
 *              size, then one byte of the archived file is flipped
 *              bit 1: after the flip (or, without bit 0, in the file as
 *              given) the index checksum is recomputed, so that damage
 *              inside the index gets past it
 *              bit 2: frame cap of 4096 bytes instead of the default
 *   build mode: byte 1 the block size ((byte + 1) * 64 raw bytes), bytes
 *              2-3 the offset of the flipped byte (u16le, modulo the file
 *              size), byte 4 what it is xored with (0: no damage)
 *   the rest   the segment bytes (build mode) or the archived file
 *
 * Invariants: a failed index read says why and leaves no blocks; an
 * accepted index is contiguous, in order, ends where the index frame
 * starts, and archive_index_find agrees with a linear search; a block
 * that reads holds exactly its frames, byte for byte what zstd
 * decompresses there. In build mode: the undamaged archive holds every
 * whole valid frame of the segment, in blocks of at most the block size
 * (or one frame), and a scan of it gives the same frames; a damaged one
 * never yields different bytes: the index it accepts is the original one
 * and every block it reads is the original block.
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "archive.h"
#include "chunk.h"
#include "crc.h"
#include "fcw2.h"
#include "log.h"
#include "scan.h"
#define FUZZ_NAME "fuzz_archive"
#include "fuzzutil.h"

#define FUZZ_SMALL_CAP	4096
#define FUZZ_MAX_BLOCKS	256	/* blocks read per input */
#define FUZZ_SKIPPABLE	0x184D2A5Eu
#define FUZZ_HDR_LEN	40
#define FUZZ_ENTRY_LEN	40

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static char	fuzz_root[4096];
static char	fuzz_raw[4200];		/* the raw segment (build mode) */
static char	fuzz_zst[4200];		/* the archived file */

static void
fuzz_exit(void)
{
	unlink(fuzz_raw);
	unlink(fuzz_zst);
	rmdir(fuzz_root);
}

static void
fuzz_setup(void)
{
	fuzz_tmproot(fuzz_root, sizeof(fuzz_root));
	snprintf(fuzz_raw, sizeof(fuzz_raw), "%s/segment-"
	    "00000000000000000000-0.wal", fuzz_root);
	snprintf(fuzz_zst, sizeof(fuzz_zst), "%s/segment-"
	    "00000000000000000000-0.wal.zst", fuzz_root);
	atexit(fuzz_exit);
	log_set_level(-1);
}

static void
fuzz_put64(uint8_t *p, uint64_t v)
{
	fuzz_put32(p, (uint32_t)v);
	fuzz_put32(p + 4, (uint32_t)(v >> 32));
}

/*
 * Recompute the XXH64 of the index frame the trailer points at, when the
 * trailer's length locates a skippable frame header inside the file.
 */
static void
fuzz_fix_index(uint8_t *f, size_t len)
{
	uint32_t plen;
	size_t start;

	if (len < 16 || memcmp(f + len - 4, "WRAZ", 4) != 0)
		return;
	plen = fuzz_get32(f + len - 8);
	if (plen < 16 || (uint64_t)plen + 8 > len)
		return;
	start = len - plen - 8;
	fuzz_put64(f + len - 16, XXH64(f + start + 8, plen - 16, 0));
}

/* The index's shape, checked independently of archive_index_read. */
static void
fuzz_check_index(const struct archive_index *idx, size_t fsize)
{
	uint64_t seq = idx->ai_base, raw = 0, zend = 0;

	if (idx->ai_index_off > fsize)
		fuzz_fail("index starts past the end of the file", NULL);
	for (uint32_t i = 0; i < idx->ai_nblocks; i++) {
		const struct archive_block *b = &idx->ai_blocks[i];

		if (b->ab_seq != seq || b->ab_nframes == 0 ||
		    b->ab_raw_off != raw || b->ab_zoff != zend)
			fuzz_fail("accepted index is not contiguous", NULL);
		seq += b->ab_nframes;
		raw += b->ab_raw_len;
		zend = b->ab_zoff + b->ab_zlen;
	}
	if (seq != idx->ai_base + idx->ai_nframes ||
	    raw != idx->ai_raw_bytes || zend != idx->ai_index_off)
		fuzz_fail("accepted index does not add up", NULL);
}

static long
fuzz_find(const struct archive_index *idx, uint64_t seq)
{
	for (uint32_t i = 0; i < idx->ai_nblocks; i++)
		if (seq >= idx->ai_blocks[i].ab_seq && seq <
		    idx->ai_blocks[i].ab_seq + idx->ai_blocks[i].ab_nframes)
			return (long)i;
	return -1;
}

static void
fuzz_check_find(const struct archive_index *idx)
{
	uint64_t probe[6];

	probe[0] = idx->ai_base - 1;
	probe[1] = idx->ai_base;
	probe[2] = idx->ai_base + idx->ai_nframes / 2;
	probe[3] = idx->ai_base + idx->ai_nframes - 1;
	probe[4] = idx->ai_base + idx->ai_nframes;
	probe[5] = UINT64_MAX;
	for (int i = 0; i < 6; i++)
		if (archive_index_find(idx, probe[i]) != fuzz_find(idx, probe[i]))
			fuzz_fail("archive_index_find disagrees with a linear "
			    "search", NULL);
	for (uint32_t i = 0; i < idx->ai_nblocks && i < FUZZ_MAX_BLOCKS; i++)
		if (archive_index_find(idx, idx->ai_blocks[i].ab_seq) !=
		    (long)i)
			fuzz_fail("archive_index_find misses a block's first "
			    "frame", NULL);
}

/*
 * Read block i; when it reads, check it against zstd and a frame walk.
 * Returns the chunk (the caller unrefs it) or NULL.
 */
static struct chunk *
fuzz_block(int fd, const uint8_t *file, size_t fsize,
    const struct archive_block *b, size_t cap)
{
	struct chunk *ch;
	char err[512];
	uint8_t *raw;
	size_t r, off = 0, flen;
	uint32_t n = 0;

	err[0] = '\0';
	if (archive_read_block(fd, b, cap, &ch, err, sizeof(err)) == -1) {
		if (err[0] == '\0')
			fuzz_fail("a block read failed without a reason", NULL);
		if (ch != NULL)
			fuzz_fail("a failed block read returned a chunk", err);
		return NULL;
	}
	if (ch->ch_len != b->ab_raw_len || ch->ch_seq != b->ab_seq ||
	    ch->ch_nframes != b->ab_nframes)
		fuzz_fail("block read does not match its index entry", NULL);
	if (b->ab_zoff + b->ab_zlen > fsize)
		fuzz_fail("block read past the end of the file", NULL);
	if ((raw = malloc(ch->ch_len + 1)) == NULL)
		fuzz_fail("out of memory", NULL);
	r = ZSTD_decompress(raw, ch->ch_len + 1, file + b->ab_zoff,
	    b->ab_zlen);
	if (ZSTD_isError(r) || r != ch->ch_len ||
	    memcmp(raw, ch->ch_data, r) != 0)
		fuzz_fail("block read differs from what zstd decompresses",
		    NULL);
	free(raw);
	while (ch->ch_len - off >= FCW2_HEADER_LEN &&
	    memcmp(ch->ch_data + off, FCW2_MAGIC, 4) == 0 &&
	    (flen = fcw2_frame_len(ch->ch_data + off)) <= ch->ch_len - off) {
		off += flen;
		n++;
	}
	if (off != ch->ch_len || n != b->ab_nframes)
		fuzz_fail("block read does not hold whole frames", NULL);
	return ch;
}

/* Scan the archived file to its end (bounded); the frames and bytes. */
static int
fuzz_scan(int fd, size_t cap, const uint8_t *want, size_t wantlen,
    uint64_t wantframes)
{
	struct scan sc;
	struct scan_event ev;
	char err[512];
	uint64_t n = 0;
	size_t pos = 0;
	int rc = 0, steps = 0;

	if (lseek(fd, 0, SEEK_SET) == -1)
		fuzz_fail("lseek", strerror(errno));
	scan_init(&sc, cap, 0, 0);
	if (scan_start_zstd(&sc, fd) == -1)
		fuzz_fail("scan_start_zstd", NULL);
	for (;;) {
		if (++steps > 100000)
			fuzz_fail("scan does not end", NULL);
		if (scan_next(&sc, &ev, err, sizeof(err)) == -1) {
			rc = -1;
			break;
		}
		if (ev.ev_type == SCAN_END)
			break;
		if (ev.ev_type != SCAN_FRAME) {
			rc = -1;
			continue;
		}
		if (want != NULL && (ev.ev_offset != pos ||
		    ev.ev_len > wantlen - pos ||
		    memcmp(ev.ev_data, want + pos, ev.ev_len) != 0))
			fuzz_fail("scan of the archive gives other frames",
			    NULL);
		pos += ev.ev_len;
		n++;
	}
	scan_free(&sc);
	if (want != NULL && (rc != 0 || pos != wantlen || n != wantframes))
		fuzz_fail("scan of the archive does not give every frame",
		    err);
	return rc;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	struct archive_config ac;
	struct archive_index idx, orig;
	struct chunk *ch;
	uint8_t *seg = NULL, *file = NULL;
	size_t cap, seglen = 0, plen = 0, flen, block = 0, flip = 0;
	uint64_t nframes = 0, zbytes;
	char err[512];
	int build, fixidx, fd, rawfd, outfd, damaged = 0, have_orig = 0;
	uint8_t x = 0;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	if (size < 1)
		return 0;
	build = data[0] & 0x01;
	fixidx = (data[0] & 0x02) != 0;
	cap = (data[0] & 0x04) ? FUZZ_SMALL_CAP : FCW2_DEFAULT_MAX_FRAME;
	memset(&orig, 0, sizeof(orig));

	if (build) {
		if (size < 5)
			return 0;
		block = ((size_t)data[1] + 1) * 64;
		flip = (size_t)data[2] | (size_t)data[3] << 8;
		x = data[4];
		seglen = size - 5;
		if ((seg = malloc(seglen + 1)) == NULL)
			fuzz_fail("out of memory", NULL);
		memcpy(seg, data + 5, seglen);
		fuzz_fix_crcs(seg, seglen);
		plen = fuzz_prefix(seg, seglen, cap, 0, &nframes);
		fuzz_write(fuzz_raw, seg, seglen);

		memset(&ac, 0, sizeof(ac));
		ac.ac_enabled = 1;
		ac.ac_level = 1;
		ac.ac_block = block;
		if ((rawfd = open(fuzz_raw, O_RDONLY | O_CLOEXEC)) == -1)
			fuzz_fail("open", strerror(errno));
		if ((outfd = open(fuzz_zst, O_WRONLY | O_CREAT | O_TRUNC |
		    O_CLOEXEC, 0644)) == -1)
			fuzz_fail("open", strerror(errno));
		err[0] = '\0';
		if (archive_compress(rawfd, outfd, 0, nframes, &ac, cap, &orig,
		    &zbytes, err, sizeof(err)) == -1)
			fuzz_fail("archive_compress refused whole valid frames",
			    err);
		close(rawfd);
		close(outfd);
		have_orig = 1;
		file = fuzz_slurp(fuzz_zst, &flen);
		if (zbytes != flen)
			fuzz_fail("archive_compress misreports its size", NULL);
		if (orig.ai_nframes != nframes || orig.ai_raw_bytes != plen)
			fuzz_fail("archive_compress lost frames", NULL);
		for (uint32_t i = 0; i < orig.ai_nblocks; i++)
			if (orig.ai_blocks[i].ab_raw_len > block &&
			    orig.ai_blocks[i].ab_nframes != 1)
				fuzz_fail("a block of several frames is over "
				    "the block size", NULL);
		if (x != 0 && flen > 0) {
			file[flip % flen] ^= x;
			damaged = 1;
		}
		if (fixidx)
			fuzz_fix_index(file, flen);
		fuzz_write(fuzz_zst, file, flen);
	} else {
		flen = size - 1;
		if ((file = malloc(flen + 1)) == NULL)
			fuzz_fail("out of memory", NULL);
		memcpy(file, data + 1, flen);
		if (fixidx)
			fuzz_fix_index(file, flen);
		fuzz_write(fuzz_zst, file, flen);
	}
	if ((fd = open(fuzz_zst, O_RDONLY | O_CLOEXEC)) == -1)
		fuzz_fail("open", strerror(errno));
	err[0] = '\0';
	if (archive_index_read(fd, &idx, err, sizeof(err)) == -1) {
		if (err[0] == '\0')
			fuzz_fail("an index read failed without a reason", NULL);
		if (idx.ai_blocks != NULL || idx.ai_nblocks != 0)
			fuzz_fail("a failed index read left blocks", NULL);
		if (build && !damaged)
			fuzz_fail("the index archive_compress wrote does not "
			    "read", err);
		fuzz_scan(fd, cap, NULL, 0, 0);
		goto out;
	}
	fuzz_check_index(&idx, flen);
	fuzz_check_find(&idx);
	if (have_orig && orig.ai_nframes > 0) {
		/* what a damaged file's accepted index may say */
		if (idx.ai_base != orig.ai_base ||
		    idx.ai_nframes != orig.ai_nframes ||
		    idx.ai_raw_bytes != orig.ai_raw_bytes ||
		    idx.ai_index_off != orig.ai_index_off ||
		    idx.ai_nblocks != orig.ai_nblocks ||
		    (idx.ai_nblocks > 0 && memcmp(idx.ai_blocks,
		    orig.ai_blocks, idx.ai_nblocks * sizeof(*idx.ai_blocks)) !=
		    0))
			fuzz_fail("a damaged index was accepted with other "
			    "entries", NULL);
	}
	for (uint32_t i = 0; i < idx.ai_nblocks && i < FUZZ_MAX_BLOCKS; i++) {
		const struct archive_block *b = &idx.ai_blocks[i];

		ch = fuzz_block(fd, file, flen, b, cap);
		if (ch == NULL) {
			if (build && !damaged)
				fuzz_fail("a block archive_compress wrote does "
				    "not read", NULL);
			continue;
		}
		if (build && (b->ab_raw_off + ch->ch_len > plen ||
		    memcmp(ch->ch_data, seg + b->ab_raw_off, ch->ch_len) != 0))
			fuzz_fail("a block read gives other bytes than were "
			    "archived", NULL);
		chunk_unref(ch);
	}
	if (build && !damaged)
		fuzz_scan(fd, cap, seg, plen, nframes);
	else
		fuzz_scan(fd, cap, NULL, 0, 0);
	archive_index_free(&idx);
out:
	close(fd);
	if (have_orig)
		archive_index_free(&orig);
	free(file);
	free(seg);
	return 0;
}
