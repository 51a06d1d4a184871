/*
 * archive.c: the archive tier. The file format (blocks of whole FCW2
 * frames as independent zstd frames, then a checksummed index in a
 * skippable frame), the compressor, the block reader thread and the
 * archiver thread. See archive.h.
 *
 * Archiving one segment, and what a kill -9 at each step leaves:
 *   1. compress into segment-....wal.zst.tmp, fdatasync   (start-up removes
 *      the temporary file: the raw segment serves)
 *   2. rename to .wal.zst, fsync the directory           (both files exist:
 *      start-up keeps the .wal.zst, whose index it checks, and removes the
 *      raw one)
 *   3. the store serves the .wal.zst (segstore_archive_commit)
 *   4. remove the raw file, fsync the directory           (only .wal.zst)
 * Either file alone holds every frame of the segment, so a reader always
 * finds them, and never both half.
 */
#include "autoconfig.h"

#include <sys/prctl.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "archive.h"
#include "clock.h"
#include "fcw2.h"
#include "fdio.h"
#include "log.h"
#include "scan.h"
#include "segment.h"

#define ARCHIVE_INDEX_MAGIC	"WRAIDX01"
#define ARCHIVE_TRAILER_MAGIC	"WRAZ"
#define ARCHIVE_SKIPPABLE	0x184D2A5Eu	/* a zstd skippable frame */
#define ARCHIVE_HDR_LEN		40	/* magic, base, nframes, raw, nblocks */
#define ARCHIVE_ENTRY_LEN	40
#define ARCHIVE_TRAILER_LEN	8
#define ARCHIVE_MAX_BLOCKS	(1u << 24)
#define ARCHIVE_IDLE_MS		1000	/* look for work at least this often */
#define ARCHIVE_RETRY_MS	5000	/* after a failed attempt */
/* zstd decodes at most 128 KiB (an RLE block) per 4 bytes */
#define ARCHIVE_ZSTD_MAX_RATIO	32768

static void
put32(uint8_t *p, uint32_t v)
{
	p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static void
put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

static uint64_t
get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

int
archive_name_parse(const char *name, uint64_t *base, uint64_t *created_ms)
{
	char raw[128];
	size_t len = strlen(name), sl = strlen(ARCHIVE_SUFFIX);

	if (len <= sl || len - sl + 4 >= sizeof(raw) ||
	    strcmp(name + len - sl, ARCHIVE_SUFFIX) != 0)
		return -1;
	/* the name without ".zst" is a raw segment's name */
	memcpy(raw, name, len - 4);
	raw[len - 4] = '\0';
	return segment_name_parse(raw, base, created_ms);
}

void
archive_index_free(struct archive_index *idx)
{
	free(idx->ai_blocks);
	memset(idx, 0, sizeof(*idx));
}

static int
index_add(struct archive_index *idx, size_t *cap,
    const struct archive_block *b)
{
	struct archive_block *nb;

	if (idx->ai_nblocks == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;

		if ((nb = realloc(idx->ai_blocks, ncap * sizeof(*nb))) == NULL)
			return -1;
		idx->ai_blocks = nb;
		*cap = ncap;
	}
	idx->ai_blocks[idx->ai_nblocks++] = *b;
	return 0;
}

/* The index as a skippable frame (malloc'd into *out). */
static int
index_encode(const struct archive_index *idx, uint8_t **out, size_t *outlen)
{
	size_t plen, len;
	uint8_t *buf, *p;

	plen = ARCHIVE_HDR_LEN + (size_t)idx->ai_nblocks * ARCHIVE_ENTRY_LEN +
	    8 + ARCHIVE_TRAILER_LEN;
	len = 8 + plen;
	if ((buf = calloc(1, len)) == NULL)
		return -1;
	put32(buf, ARCHIVE_SKIPPABLE);
	put32(buf + 4, (uint32_t)plen);
	p = buf + 8;
	memcpy(p, ARCHIVE_INDEX_MAGIC, 8);
	put64(p + 8, idx->ai_base);
	put64(p + 16, idx->ai_nframes);
	put64(p + 24, idx->ai_raw_bytes);
	put32(p + 32, idx->ai_nblocks);
	p += ARCHIVE_HDR_LEN;
	for (uint32_t i = 0; i < idx->ai_nblocks; i++, p += ARCHIVE_ENTRY_LEN) {
		const struct archive_block *b = &idx->ai_blocks[i];

		put64(p, b->ab_seq);
		put32(p + 8, b->ab_nframes);
		put32(p + 12, b->ab_raw_len);
		put64(p + 16, b->ab_raw_off);
		put64(p + 24, b->ab_zoff);
		put32(p + 32, b->ab_zlen);
	}
	put64(p, XXH64(buf + 8, (size_t)(p - (buf + 8)), 0));
	put32(p + 8, (uint32_t)plen);
	memcpy(p + 12, ARCHIVE_TRAILER_MAGIC, 4);
	*out = buf;
	*outlen = len;
	return 0;
}

int
archive_index_read(int fd, struct archive_index *idx, char *errbuf,
    size_t errlen)
{
	struct stat st;
	uint8_t tr[ARCHIVE_TRAILER_LEN], *buf = NULL, *p;
	uint64_t size, start, zend = 0, raw = 0, seq;
	uint32_t plen, n;

	memset(idx, 0, sizeof(*idx));
	if (fstat(fd, &st) == -1) {
		snprintf(errbuf, errlen, "fstat: %s", strerror(errno));
		return -1;
	}
	size = (uint64_t)st.st_size;
	if (size < 8 + ARCHIVE_HDR_LEN + 8 + ARCHIVE_TRAILER_LEN ||
	    fdio_pread_all(fd, tr, sizeof(tr), size - sizeof(tr)) == -1 ||
	    memcmp(tr + 4, ARCHIVE_TRAILER_MAGIC, 4) != 0) {
		snprintf(errbuf, errlen, "no archive index at the end of the "
		    "file (%" PRIu64 " bytes): not a complete archived segment",
		    size);
		return -1;
	}
	plen = get32(tr);
	if (plen < ARCHIVE_HDR_LEN + 8 + ARCHIVE_TRAILER_LEN ||
	    (uint64_t)plen + 8 > size ||
	    (plen - ARCHIVE_HDR_LEN - 8 - ARCHIVE_TRAILER_LEN) %
	    ARCHIVE_ENTRY_LEN != 0)
		goto bad;
	start = size - plen - 8;
	if ((buf = malloc((size_t)plen + 8)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	if (fdio_pread_all(fd, buf, (size_t)plen + 8, start) == -1) {
		snprintf(errbuf, errlen, "read at offset %" PRIu64 ": %s",
		    start, strerror(errno));
		free(buf);
		return -1;
	}
	p = buf + 8;
	if (get32(buf) != ARCHIVE_SKIPPABLE || get32(buf + 4) != plen ||
	    memcmp(p, ARCHIVE_INDEX_MAGIC, 8) != 0 ||
	    get64(p + plen - ARCHIVE_TRAILER_LEN - 8) !=
	    XXH64(p, plen - ARCHIVE_TRAILER_LEN - 8, 0))
		goto bad;
	n = get32(p + 32);
	if (n != (plen - ARCHIVE_HDR_LEN - 8 - ARCHIVE_TRAILER_LEN) /
	    ARCHIVE_ENTRY_LEN || n > ARCHIVE_MAX_BLOCKS)
		goto bad;
	idx->ai_base = get64(p + 8);
	idx->ai_nframes = get64(p + 16);
	idx->ai_raw_bytes = get64(p + 24);
	idx->ai_nblocks = n;
	idx->ai_index_off = start;
	if (n > 0 && (idx->ai_blocks = calloc(n, sizeof(*idx->ai_blocks))) ==
	    NULL) {
		free(buf);
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	seq = idx->ai_base;
	p += ARCHIVE_HDR_LEN;
	for (uint32_t i = 0; i < n; i++, p += ARCHIVE_ENTRY_LEN) {
		struct archive_block *b = &idx->ai_blocks[i];

		b->ab_seq = get64(p);
		b->ab_nframes = get32(p + 8);
		b->ab_raw_len = get32(p + 12);
		b->ab_raw_off = get64(p + 16);
		b->ab_zoff = get64(p + 24);
		b->ab_zlen = get32(p + 32);
		/* contiguous, in order, inside the file */
		if (b->ab_seq != seq || b->ab_nframes == 0 ||
		    b->ab_raw_off != raw || b->ab_zoff != zend ||
		    b->ab_zoff + b->ab_zlen > start)
			goto bad;
		seq += b->ab_nframes;
		raw += b->ab_raw_len;
		zend = b->ab_zoff + b->ab_zlen;
	}
	if (seq != idx->ai_base + idx->ai_nframes || raw != idx->ai_raw_bytes ||
	    zend != start)
		goto bad;
	free(buf);
	return 0;
bad:
	free(buf);
	archive_index_free(idx);
	snprintf(errbuf, errlen, "the archive index at the end of the file is "
	    "damaged (bad checksum or inconsistent entries)");
	return -1;
}

long
archive_index_find(const struct archive_index *idx, uint64_t seq)
{
	size_t lo = 0, hi = idx->ai_nblocks, mid;

	if (seq < idx->ai_base || seq >= idx->ai_base + idx->ai_nframes)
		return -1;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (idx->ai_blocks[mid].ab_seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (long)lo - 1;
}

/* Compress buf as one block and append it to outfd. */
static int
block_put(ZSTD_CCtx *cc, int outfd, const uint8_t *buf, size_t len,
    uint8_t **zbuf, size_t *zcap, struct archive_block *b, uint64_t *zoff,
    char *errbuf, size_t errlen)
{
	size_t bound = ZSTD_compressBound(len), z;
	uint8_t *nb;

	if (*zcap < bound) {
		if ((nb = realloc(*zbuf, bound)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return -1;
		}
		*zbuf = nb;
		*zcap = bound;
	}
	z = ZSTD_compress2(cc, *zbuf, *zcap, buf, len);
	if (ZSTD_isError(z)) {
		snprintf(errbuf, errlen, "zstd: %s", ZSTD_getErrorName(z));
		return -1;
	}
	if (fdio_write_all(outfd, *zbuf, z) == -1) {
		snprintf(errbuf, errlen, "write: %s", strerror(errno));
		return -1;
	}
	b->ab_zoff = *zoff;
	b->ab_zlen = (uint32_t)z;
	*zoff += z;
	return 0;
}

int
archive_compress(int rawfd, int outfd, uint64_t base, uint64_t nframes,
    const struct archive_config *cf, size_t max_frame,
    struct archive_index *idx, uint64_t *zbytes, char *errbuf, size_t errlen)
{
	struct scan sc;
	struct scan_event ev;
	struct archive_block b;
	ZSTD_CCtx *cc = NULL;
	uint8_t *blk = NULL, *zbuf = NULL, *ibuf = NULL;
	size_t blen = 0, bcap, zcap = 0, ilen, block, icap = 0;
	uint64_t zoff = 0, seq = base, raw = 0;
	char err[256];
	int level;

	memset(idx, 0, sizeof(*idx));
	block = cf->ac_block > 0 ? cf->ac_block : ARCHIVE_BLOCK;
	level = cf->ac_level != 0 ? cf->ac_level : ARCHIVE_DEFAULT_LEVEL;
	scan_init(&sc, max_frame, 0, 0);
	scan_start(&sc, rawfd);
	bcap = block;
	if ((cc = ZSTD_createCCtx()) == NULL || (blk = malloc(bcap)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1);
	if (cf->ac_long)
		ZSTD_CCtx_setParameter(cc, ZSTD_c_enableLongDistanceMatching,
		    1);
	idx->ai_base = base;
	memset(&b, 0, sizeof(b));
	b.ab_seq = base;
	while (seq < base + nframes) {
		if (scan_next(&sc, &ev, err, sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "%s", err);
			goto fail;
		}
		if (ev.ev_type != SCAN_FRAME) {
			snprintf(errbuf, errlen, "%s at offset %" PRIu64
			    " (sequence %" PRIu64 ")", ev.ev_type == SCAN_END ?
			    "the file ends early" : ev.ev_type ==
			    SCAN_INCOMPLETE ? "incomplete frame" :
			    fcw2_strerror(ev.ev_status), ev.ev_offset, seq);
			goto fail;
		}
		/* a block ends before the frame that would overfill it */
		if (blen > 0 && blen + ev.ev_len > block) {
			b.ab_raw_len = (uint32_t)blen;
			if (block_put(cc, outfd, blk, blen, &zbuf, &zcap, &b,
			    &zoff, errbuf, errlen) == -1 ||
			    index_add(idx, &icap, &b) == -1)
				goto nomem_or_fail;
			b.ab_seq = seq;
			b.ab_raw_off = raw;
			b.ab_nframes = 0;
			blen = 0;
		}
		if (ev.ev_len > bcap) {
			uint8_t *nb;

			if ((nb = realloc(blk, ev.ev_len)) == NULL) {
				snprintf(errbuf, errlen, "out of memory");
				goto fail;
			}
			blk = nb;
			bcap = ev.ev_len;
		}
		memcpy(blk + blen, ev.ev_data, ev.ev_len);
		blen += ev.ev_len;
		raw += ev.ev_len;
		b.ab_nframes++;
		seq++;
	}
	if (blen > 0) {
		b.ab_raw_len = (uint32_t)blen;
		if (block_put(cc, outfd, blk, blen, &zbuf, &zcap, &b, &zoff,
		    errbuf, errlen) == -1 || index_add(idx, &icap, &b) == -1)
			goto nomem_or_fail;
	}
	idx->ai_nframes = nframes;
	idx->ai_raw_bytes = raw;
	idx->ai_index_off = zoff;
	if (index_encode(idx, &ibuf, &ilen) == -1) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if (fdio_write_all(outfd, ibuf, ilen) == -1) {
		snprintf(errbuf, errlen, "write: %s", strerror(errno));
		goto fail;
	}
	*zbytes = zoff + ilen;
	free(ibuf);
	free(blk);
	free(zbuf);
	ZSTD_freeCCtx(cc);
	scan_free(&sc);
	return 0;
nomem_or_fail:
	if (errbuf[0] == '\0')
		snprintf(errbuf, errlen, "out of memory");
fail:
	free(ibuf);
	free(blk);
	free(zbuf);
	ZSTD_freeCCtx(cc);
	scan_free(&sc);
	archive_index_free(idx);
	return -1;
}

/*
 * A damaged length is refused before its memory is allocated: 0, or -1
 * with errbuf.
 */
static int
block_plausible(const struct archive_block *b, char *errbuf, size_t errlen)
{
	if ((uint64_t)b->ab_raw_len <= (uint64_t)b->ab_zlen *
	    ARCHIVE_ZSTD_MAX_RATIO)
		return 0;
	snprintf(errbuf, errlen, "corrupt block at offset %" PRIu64
	    " (sequences %" PRIu64 " to %" PRIu64 "): the index states "
	    "%" PRIu32 " raw bytes, more than its %" PRIu32 " bytes of "
	    "zstd can hold", b->ab_zoff, b->ab_seq, b->ab_seq +
	    b->ab_nframes - 1, b->ab_raw_len, b->ab_zlen);
	return -1;
}

int
archive_block_decompress(ZSTD_DCtx *dctx, int fd,
    const struct archive_block *b, int frames_checked, uint8_t *dst,
    size_t dstcap, uint8_t **zbuf, size_t *zcap, char *errbuf, size_t errlen)
{
	size_t r, zlen = b->ab_zlen;
	uint8_t *z;

	if (block_plausible(b, errbuf, errlen) == -1)
		return -1;
	if (dstcap < b->ab_raw_len) {
		snprintf(errbuf, errlen, "a buffer of %zu bytes for a block of "
		    "%" PRIu32, dstcap, b->ab_raw_len);
		return -1;
	}
	if (*zcap < b->ab_zlen || *zbuf == NULL) {
		uint8_t *nz;
		size_t ncap = b->ab_zlen > 0 ? b->ab_zlen : 1;

		if ((nz = realloc(*zbuf, ncap)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return -1;
		}
		*zbuf = nz;
		*zcap = ncap;
	}
	if (fdio_pread_all(fd, *zbuf, b->ab_zlen, b->ab_zoff) == -1) {
		snprintf(errbuf, errlen, "read of the block at offset %" PRIu64
		    ": %s", b->ab_zoff, strerror(errno));
		return -1;
	}
	z = *zbuf;
	if (ZSTD_getFrameContentSize(z, zlen) != b->ab_raw_len) {
		snprintf(errbuf, errlen, "corrupt block at offset %" PRIu64
		    " (sequences %" PRIu64 " to %" PRIu64 "): bad zstd frame "
		    "header", b->ab_zoff, b->ab_seq, b->ab_seq +
		    b->ab_nframes - 1);
		return -1;
	}
	/*
	 * A caller that checks every frame's crc itself needs no XXH64 of
	 * the content as well (a third of the instructions of decompressing
	 * text): the frame header says there is none (Content_Checksum_flag,
	 * bit 2 of the byte after the magic, RFC 8878) and its 4 bytes at the
	 * end of the frame are left out.
	 */
	if (frames_checked && zlen > 4 + 1 + 4 && get32(z) == ZSTD_MAGICNUMBER &&
	    (z[4] & 0x04)) {
		z[4] &= ~0x04;
		zlen -= 4;
	}
	/* one call, straight into dst: zstd needs no window buffer */
	r = ZSTD_decompressDCtx(dctx, dst, dstcap, z, zlen);
	if (ZSTD_isError(r) || r != b->ab_raw_len) {
		snprintf(errbuf, errlen, "corrupt block at offset %" PRIu64
		    " (sequences %" PRIu64 " to %" PRIu64 "): %s", b->ab_zoff,
		    b->ab_seq, b->ab_seq + b->ab_nframes - 1, ZSTD_isError(r) ?
		    ZSTD_getErrorName(r) : "wrong length");
		return -1;
	}
	return 0;
}

int
archive_read_block(int fd, const struct archive_block *b, size_t max_frame,
    struct chunk **out, char *errbuf, size_t errlen)
{
	ZSTD_DCtx *dctx = NULL;
	struct chunk *ch = NULL;
	uint8_t *z = NULL;
	size_t zcap = 0, r, off = 0, flen;
	uint32_t n = 0;

	*out = NULL;
	if (block_plausible(b, errbuf, errlen) == -1)
		return -1;
	if ((dctx = ZSTD_createDCtx()) == NULL ||
	    (ch = chunk_new(b->ab_raw_len)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if (archive_block_decompress(dctx, fd, b, 0, ch->ch_data, ch->ch_cap,
	    &z, &zcap, errbuf, errlen) == -1)
		goto fail;
	r = b->ab_raw_len;
	/*
	 * zstd checked the content against its XXH64 (the frames' crcs were
	 * checked when they were compressed): walk the frame headers.
	 */
	while (r - off >= FCW2_HEADER_LEN &&
	    memcmp(ch->ch_data + off, FCW2_MAGIC, 4) == 0 &&
	    (flen = fcw2_frame_len(ch->ch_data + off)) <= r - off &&
	    flen <= max_frame + FCW2_OVERHEAD) {
		off += flen;
		n++;
	}
	if (off != r || n != b->ab_nframes) {
		snprintf(errbuf, errlen, "corrupt block at offset %" PRIu64
		    " (sequences %" PRIu64 " to %" PRIu64 "): it holds %" PRIu32
		    " whole valid frames where the index says %" PRIu32,
		    b->ab_zoff, b->ab_seq, b->ab_seq + b->ab_nframes - 1, n,
		    b->ab_nframes);
		goto fail;
	}
	ch->ch_len = r;
	ch->ch_seq = b->ab_seq;
	ch->ch_nframes = b->ab_nframes;
	free(z);
	ZSTD_freeDCtx(dctx);
	*out = ch;
	return 0;
fail:
	free(z);
	ZSTD_freeDCtx(dctx);
	if (ch != NULL)
		chunk_unref(ch);
	return -1;
}

void
archive_pieces_free(struct chunk **pieces, uint32_t npieces)
{
	if (pieces == NULL)
		return;
	for (uint32_t i = 0; i < npieces; i++)
		chunk_unref(pieces[i]);
	free(pieces);
}

/* Append ch to *pieces. 0, or -1 (out of memory). */
static int
pieces_add(struct chunk ***pieces, uint32_t *n, uint32_t *cap,
    struct chunk *ch)
{
	struct chunk **np;

	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 32;
		if ((np = realloc(*pieces, *cap * sizeof(*np))) == NULL)
			return -1;
		*pieces = np;
	}
	(*pieces)[(*n)++] = ch;
	return 0;
}

/*
 * archive_read_pieces with the buffer for compressed bytes kept by the
 * caller (*zbuf, *zcap): the reader thread reuses one, where a new one
 * per block (hundreds of KiB for poorly compressible frames, so a fresh
 * mapping) cost page faults on every read.
 */
static int
read_pieces(ZSTD_DCtx *dctx, uint8_t **zbuf, size_t *zcap, int fd,
    const struct archive_block *b, size_t max_frame, size_t piece,
    struct chunk ***out, uint32_t *nout, char *errbuf, size_t errlen)
{
	ZSTD_DCtx *own = NULL;
	struct chunk **pieces = NULL, *ch = NULL, *v;
	size_t r, off = 0, start = 0, flen;
	uint32_t n = 0, npieces = 0, cap = 0, frames = 0;

	*out = NULL;
	*nout = 0;
	if (block_plausible(b, errbuf, errlen) == -1)
		return -1;
	if (dctx == NULL && (dctx = own = ZSTD_createDCtx()) == NULL)
		goto nomem;
	/* blocks of one size share the chunk buffer cache's bucket */
	if ((ch = chunk_new(b->ab_raw_len > ARCHIVE_BLOCK + 64 * 1024 ?
	    b->ab_raw_len : ARCHIVE_BLOCK + 64 * 1024)) == NULL)
		goto nomem;
	/* straight into the chunk the pieces share: no copy after this */
	if (archive_block_decompress(dctx, fd, b, 0, ch->ch_data, ch->ch_cap,
	    zbuf, zcap, errbuf, errlen) == -1)
		goto fail;
	r = b->ab_raw_len;
	ch->ch_len = r;
	ch->ch_seq = b->ab_seq;
	/* zstd checked its XXH64: walk the frame headers, cut pieces */
	for (;;) {
		int whole = r - off >= FCW2_HEADER_LEN &&
		    memcmp(ch->ch_data + off, FCW2_MAGIC, 4) == 0 &&
		    (flen = fcw2_frame_len(ch->ch_data + off)) <= r - off &&
		    flen <= max_frame + FCW2_OVERHEAD;

		if (n > 0 && (!whole || off + flen - start > piece)) {
			if ((v = chunk_view(ch, start, off - start,
			    b->ab_seq + frames, n)) == NULL)
				goto nomem;
			if (pieces_add(&pieces, &npieces, &cap, v) == -1) {
				chunk_unref(v);
				goto nomem;
			}
			frames += n;
			n = 0;
			start = off;
		}
		if (!whole)
			break;
		off += flen;
		n++;
	}
	if (off != r || frames != b->ab_nframes) {
		snprintf(errbuf, errlen, "corrupt block at offset %" PRIu64
		    " (sequences %" PRIu64 " to %" PRIu64 "): it holds %" PRIu32
		    " whole valid frames where the index says %" PRIu32,
		    b->ab_zoff, b->ab_seq, b->ab_seq + b->ab_nframes - 1,
		    frames, b->ab_nframes);
		goto fail;
	}
	chunk_unref(ch);	/* the pieces hold it */
	ZSTD_freeDCtx(own);
	*out = pieces;
	*nout = npieces;
	return 0;
nomem:
	snprintf(errbuf, errlen, "out of memory");
fail:
	if (ch != NULL)
		chunk_unref(ch);
	archive_pieces_free(pieces, npieces);
	ZSTD_freeDCtx(own);
	return -1;
}

int
archive_read_pieces(ZSTD_DCtx *dctx, int fd, const struct archive_block *b,
    size_t max_frame, size_t piece, struct chunk ***out, uint32_t *nout,
    char *errbuf, size_t errlen)
{
	uint8_t *z = NULL;
	size_t zcap = 0;
	int rc;

	rc = read_pieces(dctx, &z, &zcap, fd, b, max_frame, piece, out, nout,
	    errbuf, errlen);
	free(z);
	return rc;
}

/* ---- the block reader ------------------------------------------------- */

STAILQ_HEAD(archive_job_queue, archive_job);

/*
 * Threads that decompress blocks: with two, the block a reader is about to
 * reach (read ahead) is decompressed while the one it waits for is, and a
 * block that is slow (its file's pages are on the disk, or the thread is
 * not scheduled) does not hold up the next.
 */
#define ARCHIVE_READERS		2

struct archive_reader {
	pthread_mutex_t		 ar_mtx;
	pthread_cond_t		 ar_cond;
	pthread_t		 ar_threads[ARCHIVE_READERS];
	int			 ar_nthreads;
	int			 ar_stop;
	struct archive_job_queue ar_queue;
	void			(*ar_notify)(void *);
	void			*ar_arg;
};

static void
reader_run(struct archive_job *j, ZSTD_DCtx *dctx, uint8_t **zbuf,
    size_t *zcap)
{
	char err[256];
	int fd;

	if ((fd = openat(j->aj_dirfd, j->aj_name, O_RDONLY | O_CLOEXEC)) ==
	    -1) {
		j->aj_enoent = errno == ENOENT;
		snprintf(j->aj_err, sizeof(j->aj_err), "%s: open: %s",
		    j->aj_name, strerror(errno));
		return;
	}
	if (read_pieces(dctx, zbuf, zcap, fd, &j->aj_blk, j->aj_max_frame,
	    ARCHIVE_PIECE, &j->aj_pieces, &j->aj_npieces, err,
	    sizeof(err)) == -1)
		snprintf(j->aj_err, sizeof(j->aj_err), "%s: %s", j->aj_name,
		    err);
	close(fd);
}

static void *
reader_main(void *arg)
{
	struct archive_reader *ar = arg;
	struct archive_job *j;
	ZSTD_DCtx *dctx = ZSTD_createDCtx();	/* NULL: one per block */
	uint8_t *zbuf = NULL;
	size_t zcap = 0;

	prctl(PR_SET_NAME, "wr-archread", 0, 0, 0);	/* top -H, tests/fault */
	pthread_mutex_lock(&ar->ar_mtx);
	for (;;) {
		if (ar->ar_stop)
			break;
		if ((j = STAILQ_FIRST(&ar->ar_queue)) == NULL) {
			pthread_cond_wait(&ar->ar_cond, &ar->ar_mtx);
			continue;
		}
		STAILQ_REMOVE_HEAD(&ar->ar_queue, aj_entry);
		pthread_mutex_unlock(&ar->ar_mtx);
		reader_run(j, dctx, &zbuf, &zcap);
		pthread_mutex_lock(&ar->ar_mtx);
		j->aj_done = 1;
		pthread_mutex_unlock(&ar->ar_mtx);
		if (ar->ar_notify != NULL)
			ar->ar_notify(ar->ar_arg);
		pthread_mutex_lock(&ar->ar_mtx);
	}
	pthread_mutex_unlock(&ar->ar_mtx);
	free(zbuf);
	ZSTD_freeDCtx(dctx);
	return NULL;
}

static int
thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int r;

	/* signals are for the loop thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}

struct archive_reader *
archive_reader_start(void (*notify)(void *), void *arg, char *errbuf,
    size_t errlen)
{
	struct archive_reader *ar;
	int r;

	if ((ar = calloc(1, sizeof(*ar))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&ar->ar_mtx, NULL);
	pthread_cond_init(&ar->ar_cond, NULL);
	STAILQ_INIT(&ar->ar_queue);
	ar->ar_notify = notify;
	ar->ar_arg = arg;
	for (int i = 0; i < ARCHIVE_READERS; i++) {
		if ((r = thread_start(&ar->ar_threads[i], reader_main,
		    ar)) != 0) {
			snprintf(errbuf, errlen, "cannot start the archive "
			    "reader threads: %s", strerror(r));
			archive_reader_stop(ar);
			return NULL;
		}
		ar->ar_nthreads++;
	}
	return ar;
}

void
archive_reader_submit(struct archive_reader *ar, struct archive_job *j)
{
	j->aj_done = 0;
	j->aj_pieces = NULL;
	j->aj_npieces = 0;
	j->aj_enoent = 0;
	j->aj_err[0] = '\0';
	pthread_mutex_lock(&ar->ar_mtx);
	STAILQ_INSERT_TAIL(&ar->ar_queue, j, aj_entry);
	pthread_cond_signal(&ar->ar_cond);
	pthread_mutex_unlock(&ar->ar_mtx);
}

int
archive_reader_done(struct archive_reader *ar, struct archive_job *j)
{
	int done;

	pthread_mutex_lock(&ar->ar_mtx);
	done = j->aj_done;
	pthread_mutex_unlock(&ar->ar_mtx);
	return done;
}

void
archive_reader_stop(struct archive_reader *ar)
{
	struct archive_job *j;

	if (ar == NULL)
		return;
	pthread_mutex_lock(&ar->ar_mtx);
	ar->ar_stop = 1;
	pthread_cond_broadcast(&ar->ar_cond);
	pthread_mutex_unlock(&ar->ar_mtx);
	for (int i = 0; i < ar->ar_nthreads; i++)
		pthread_join(ar->ar_threads[i], NULL);
	while ((j = STAILQ_FIRST(&ar->ar_queue)) != NULL) {
		STAILQ_REMOVE_HEAD(&ar->ar_queue, aj_entry);
		snprintf(j->aj_err, sizeof(j->aj_err), "stopping");
		j->aj_done = 1;
	}
	pthread_cond_destroy(&ar->ar_cond);
	pthread_mutex_destroy(&ar->ar_mtx);
	free(ar);
}

/* ---- the archiver ----------------------------------------------------- */

struct archiver {
	struct segstore		*av_ss;
	struct archive_config	 av_cf;
	size_t			 av_max_frame;
	pthread_mutex_t		 av_mtx;
	pthread_cond_t		 av_cond;
	pthread_t		 av_thread;
	int			 av_stop;
	int			 av_kick;
	unsigned		 av_failures;	/* in a row: one episode */
	char			 av_why[PATH_MAX + 128];	/* the last one */
};

/* CPU time of this thread (the machine may be busy with other work). */
static uint64_t
archive_cpu_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * A failed attempt: what and why (strerror(errno) appended), kept for the
 * archiver's report (archive_report), which logs an episode once.
 */
static void WR_PRINTF(2, 3)
archive_why(struct archiver *av, const char *fmt, ...)
{
	va_list ap;
	int e = errno, n;

	va_start(ap, fmt);
	n = vsnprintf(av->av_why, sizeof(av->av_why), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(av->av_why))
		snprintf(av->av_why + n, sizeof(av->av_why) - n, ": %s",
		    strerror(e));
}

static void
archive_step(struct archiver *av, int step, const char *name)
{
	if (av->av_cf.ac_test_step != NULL)
		av->av_cf.ac_test_step(step, name, av->av_cf.ac_test_arg);
}

/*
 * Archive one segment. Returns 0 (done), 1 (nothing done: the segment is
 * gone, or given up on and logged), or -1 when the disk failed (av_why
 * says why; tried again later).
 */
static int
archive_one(struct archiver *av, const struct segstore_pick *pk)
{
	struct archive_index idx;
	const char *dir = segstore_dir(av->av_ss);
	int dirfd = segstore_dirfd(av->av_ss);
	char zname[160], tname[170], err[512];
	uint64_t zbytes = 0, t0 = clock_mono_ms(), ms, cpu0 = archive_cpu_ms();
	int rawfd = -1, outfd = -1, created = 0, rc;
	size_t len = strlen(pk->pk_name);

	memset(&idx, 0, sizeof(idx));
	err[0] = '\0';
	if (len < 4 || strcmp(pk->pk_name + len - 4, ".wal") != 0) {
		/* .wal.lz4 keeps its name: the cache writes those */
		segstore_archive_skip(av->av_ss, pk->pk_base);
		return 1;
	}
	snprintf(zname, sizeof(zname), "%s.zst", pk->pk_name);
	snprintf(tname, sizeof(tname), "%s.zst.tmp", pk->pk_name);
	if ((rawfd = openat(dirfd, pk->pk_name, O_RDONLY | O_CLOEXEC)) == -1) {
		if (errno == ENOENT)
			return 1;	/* retention was faster */
		archive_why(av, "%s/%s: archive: open", dir, pk->pk_name);
		return -1;
	}
#ifdef POSIX_FADV_SEQUENTIAL
	posix_fadvise(rawfd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
	if ((outfd = openat(dirfd, tname, O_WRONLY | O_CREAT | O_TRUNC |
	    O_CLOEXEC, 0644)) == -1) {
		archive_why(av, "%s/%s: archive: create", dir, tname);
		goto fail;
	}
	created = 1;
	errno = 0;
	if (archive_compress(rawfd, outfd, pk->pk_base, pk->pk_end -
	    pk->pk_base, &av->av_cf, av->av_max_frame, &idx, &zbytes, err,
	    sizeof(err)) == -1) {
		if (errno == ENOSPC || errno == EIO || errno == EDQUOT ||
		    errno == EFBIG) {
			snprintf(av->av_why, sizeof(av->av_why),
			    "%s/%s: archive: %s", dir, tname, err);
			goto fail;
		}
		log_error("%s/%s: cannot archive it: %s; it stays raw and "
		    "is served as it is", dir, pk->pk_name, err);
		segstore_archive_skip(av->av_ss, pk->pk_base);
		unlinkat(dirfd, tname, 0);
		close(outfd);
		close(rawfd);
		return 1;
	}
	archive_step(av, ARCHIVE_STEP_WRITTEN, zname);
	while ((rc = fdatasync(outfd)) == -1 && errno == EINTR)
		;
	if (rc == -1) {
		archive_why(av, "%s/%s: archive: fdatasync", dir, tname);
		goto fail;
	}
	archive_step(av, ARCHIVE_STEP_SYNCED, zname);
	close(outfd);
	outfd = -1;
	close(rawfd);
	rawfd = -1;
	if (renameat(dirfd, tname, dirfd, zname) == -1) {
		archive_why(av, "%s/%s: archive: rename", dir, tname);
		goto fail;
	}
	archive_step(av, ARCHIVE_STEP_RENAMED, zname);
	if (fsync(dirfd) == -1) {
		/* the rename may not be durable: undo it, keep the raw file */
		archive_why(av, "%s: archive: fsync of the directory after "
		    "renaming %s", dir, zname);
		if (unlinkat(dirfd, zname, 0) == -1 && errno != ENOENT)
			segstore_archive_left(av->av_ss, pk->pk_base,
			    SEGSTORE_LEFT_ZST, 1);
		archive_index_free(&idx);
		return -1;
	}
	archive_step(av, ARCHIVE_STEP_DIRSYNCED, zname);
	if (segstore_archive_commit(av->av_ss, pk->pk_base, zname, &idx,
	    zbytes) == -1) {
		/* retention removed the raw segment meanwhile */
		unlinkat(dirfd, zname, 0);
		fsync(dirfd);
		archive_index_free(&idx);
		return 1;
	}
	archive_step(av, ARCHIVE_STEP_SWAPPED, zname);
	/* the store owns idx now; readers that pinned the raw file keep it */
	rc = 0;
	if (unlinkat(dirfd, pk->pk_name, 0) == -1 && errno != ENOENT) {
		/* served from the .wal.zst; the raw file goes later */
		archive_why(av, "%s/%s: archive: cannot remove the raw segment "
		    "(the .wal.zst serves it)", dir, pk->pk_name);
		segstore_archive_left(av->av_ss, pk->pk_base, SEGSTORE_LEFT_RAW,
		    1);
		rc = -1;
	}
	archive_step(av, ARCHIVE_STEP_UNLINKED, zname);
	if (fsync(dirfd) == -1 && rc == 0) {
		/* a crash may bring the raw file back: start-up removes it */
		archive_why(av, "%s: archive: fsync of the directory after "
		    "removing %s", dir, pk->pk_name);
		rc = -1;
	}
	archive_step(av, ARCHIVE_STEP_DONE, zname);
	ms = clock_mono_ms() - t0;
	log_info("%s/%s: archived sequences %" PRIu64 " to %" PRIu64 ": %"
	    PRIu64 " -> %" PRIu64 " bytes (ratio %.2f) in %" PRIu64 " ms (%"
	    PRIu64 " ms of CPU)", dir, zname, pk->pk_base, pk->pk_end - 1,
	    pk->pk_bytes, zbytes, zbytes > 0 ? (double)pk->pk_bytes /
	    (double)zbytes : 0.0, ms, archive_cpu_ms() - cpu0);
	return rc;
fail:
	if (outfd != -1)
		close(outfd);
	if (created)
		unlinkat(dirfd, tname, 0);	/* never served: it goes */
	if (rawfd != -1)
		close(rawfd);
	archive_index_free(&idx);
	return -1;
}

/*
 * Remove the files earlier attempts could not (segstore_archive_left).
 * 0, or -1 (av_why says why).
 */
static int
archive_leftovers(struct archiver *av)
{
	char name[PATH_MAX];
	uint64_t base;
	int what, removed = 0;

	while (segstore_archive_leftover(av->av_ss, name, sizeof(name), &base,
	    &what) == 0) {
		if (unlinkat(segstore_dirfd(av->av_ss), name, 0) == -1 &&
		    errno != ENOENT) {
			archive_why(av, "%s/%s: archive: cannot remove it (%s)",
			    segstore_dir(av->av_ss), name, what ==
			    SEGSTORE_LEFT_RAW ? "the .wal.zst serves the "
			    "segment" : "an archive whose rename was not "
			    "durable; the raw segment serves");
			return -1;
		}
		log_info("%s/%s: removed (left by a failed archive step)",
		    segstore_dir(av->av_ss), name);
		segstore_archive_left(av->av_ss, base, what, 0);
		removed = 1;
	}
	if (removed && fsync(segstore_dirfd(av->av_ss)) == -1) {
		archive_why(av, "%s: archive: fsync of the directory",
		    segstore_dir(av->av_ss));
		return -1;
	}
	return 0;
}

/*
 * One attempt's outcome: a failure is counted, and logged when it starts
 * an episode (the disk failed after working); the first success after
 * one says so.
 */
static void
archive_report(struct archiver *av, int failed)
{
	if (failed) {
		segstore_archive_failed(av->av_ss);
		if (av->av_failures++ == 0)
			log_warnx("%s; archiving waits and tries again every %d "
			    "s (the raw segments are served meanwhile; further "
			    "failures are counted in "
			    "walrelay_archive_failures_total)", av->av_why,
			    ARCHIVE_RETRY_MS / 1000);
		else
			log_debug("%s (attempt %u)", av->av_why,
			    av->av_failures);
	} else if (av->av_failures > 0) {
		log_info("%s: archiving works again after %u failed attempts",
		    segstore_dir(av->av_ss), av->av_failures);
		av->av_failures = 0;
	}
}

static void *
archiver_main(void *arg)
{
	struct archiver *av = arg;
	struct segstore_pick pk;
	struct timespec ts;
	uint64_t wake;
	int failed = 0, rc;

	prctl(PR_SET_NAME, "wr-archiver", 0, 0, 0);	/* top -H, tests/fault */
	pthread_mutex_lock(&av->av_mtx);
	while (!av->av_stop) {
		av->av_kick = 0;
		pthread_mutex_unlock(&av->av_mtx);
		failed = archive_leftovers(av) == -1;
		while (!failed && segstore_archive_pick(av->av_ss,
		    av->av_cf.ac_after_s, av->av_cf.ac_keep_raw, &pk) == 0) {
			if ((rc = archive_one(av, &pk)) == -1) {
				failed = 1;
				break;
			}
			if (rc == 0)
				archive_report(av, 0);
			pthread_mutex_lock(&av->av_mtx);
			if (av->av_stop) {
				pthread_mutex_unlock(&av->av_mtx);
				break;
			}
			pthread_mutex_unlock(&av->av_mtx);
		}
		if (failed)
			archive_report(av, 1);
		pthread_mutex_lock(&av->av_mtx);
		/*
		 * An age limit comes due by itself; a failure is retried after
		 * ARCHIVE_RETRY_MS, whatever the rotations' kicks meanwhile.
		 */
		wake = clock_mono_ms() + (failed ? ARCHIVE_RETRY_MS :
		    ARCHIVE_IDLE_MS);
		ts.tv_sec = wake / 1000;
		ts.tv_nsec = (wake % 1000) * 1000000;
		while (!av->av_stop && (failed || !av->av_kick) &&
		    clock_mono_ms() < wake)
			pthread_cond_timedwait(&av->av_cond, &av->av_mtx, &ts);
	}
	pthread_mutex_unlock(&av->av_mtx);
	return NULL;
}

struct archiver *
archiver_start(struct segstore *ss, const struct archive_config *cf,
    size_t max_frame, char *errbuf, size_t errlen)
{
	struct archiver *av;
	pthread_condattr_t ca;
	int r;

	if ((av = calloc(1, sizeof(*av))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	av->av_ss = ss;
	av->av_cf = *cf;
	av->av_max_frame = max_frame;
	pthread_mutex_init(&av->av_mtx, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&av->av_cond, &ca);
	pthread_condattr_destroy(&ca);
	if ((r = thread_start(&av->av_thread, archiver_main, av)) != 0) {
		snprintf(errbuf, errlen, "cannot start the archiver thread: %s",
		    strerror(r));
		pthread_cond_destroy(&av->av_cond);
		pthread_mutex_destroy(&av->av_mtx);
		free(av);
		return NULL;
	}
	return av;
}

void
archiver_kick(struct archiver *av)
{
	if (av == NULL)
		return;
	pthread_mutex_lock(&av->av_mtx);
	av->av_kick = 1;
	pthread_cond_signal(&av->av_cond);
	pthread_mutex_unlock(&av->av_mtx);
}

void
archiver_stop(struct archiver *av)
{
	if (av == NULL)
		return;
	pthread_mutex_lock(&av->av_mtx);
	av->av_stop = 1;
	pthread_cond_signal(&av->av_cond);
	pthread_mutex_unlock(&av->av_mtx);
	pthread_join(av->av_thread, NULL);
	pthread_cond_destroy(&av->av_cond);
	pthread_mutex_destroy(&av->av_mtx);
	free(av);
}
