/*
 * fuzz_snapshot.c: libFuzzer target for the snapshot reader (snapshot.h):
 * snap_reader_open / snap_reader_next on FCSNAP1 files, .bin and .bin.lz4,
 * as `walcat snapshot verify` reads them and as the snapshotter reads the
 * previous snapshot it merges into the next one (snap_write). Files live
 * in a temporary directory (under /dev/shm when it exists, else $TMPDIR
 * or /tmp).
 *
 * Input layout:
 *   byte 0     bit 0: the file is snapshot-N.bin.lz4 (else .bin)
 *              bit 1: (.bin.lz4) the rest is the FCSNAP1 body and the
 *              harness compresses it (u32 LE length, one LZ4 block), so
 *              that the body's bytes are explored through the LZ4 path
 *              bit 2: then merge the file as the previous snapshot into a
 *              new one (snap_write, no new changes) and read that back
 *              bit 3: the new one compressed (.bin.lz4) as well
 *              bit 4: (.bin.lz4) open with a body limit of 256 bytes
 *              (which the streaming reader does not need: ignored)
 *   the rest   the file (or its body, bit 1)
 *
 * Invariants: the reader gives exactly the entries an independent parse
 * of the body finds, in order, byte for byte, and succeeds exactly when
 * the body is a header and its stated entry count of whole entries and
 * nothing after them (for a .bin.lz4 whose block LZ4 does not decode
 * whole, only that every failure says why); every failure says why. A merge of a readable,
 * sorted snapshot succeeds and holds its entries minus those expired
 * before the new snapshot's time, both as FCSNAP1 and as SET frames; a
 * merge of an unreadable or unsorted one fails, says why and leaves no
 * temporary file.
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lz4.h>

#include "fcw2.h"
#include "log.h"
#include "snapshot.h"
#define FUZZ_NAME "fuzz_snapshot"
#include "fuzzutil.h"

#define FUZZ_MAX_BODY	256
#define FUZZ_TS		1000000	/* the file's name: snapshot-1000000.bin */

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static char	fuzz_root[4096];	/* this process's temporary directory */
static char	fuzz_dir[4200];		/* where snap_write works */

struct fuzz_ent {
	const uint8_t	*key;
	uint32_t	 klen;
	const uint8_t	*val;
	uint32_t	 vlen;
	uint64_t	 exp;
};

static void
fuzz_exit(void)
{
	fuzz_empty_dir(fuzz_dir);
	rmdir(fuzz_dir);
	fuzz_empty_dir(fuzz_root);
	rmdir(fuzz_root);
}

static void
fuzz_setup(void)
{
	fuzz_tmproot(fuzz_root, sizeof(fuzz_root));
	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/work", fuzz_root);
	if (mkdir(fuzz_dir, 0700) == -1)
		fuzz_fail("mkdir", strerror(errno));
	atexit(fuzz_exit);
	log_set_level(-1);
}

static uint64_t
fuzz_get64(const uint8_t *p)
{
	return (uint64_t)fuzz_get32(p) | (uint64_t)fuzz_get32(p + 4) << 32;
}

/*
 * 1 when an LZ4 block holds a match with offset 0, which the format does
 * not allow: LZ4_decompress_safe copies bytes not yet written for it,
 * the relay's reader refuses it, so such a block does not decode.
 */
static int
fuzz_lz4_offset0(const uint8_t *p, size_t len)
{
	size_t i = 0, n;
	uint8_t t;

	while (i < len) {
		t = p[i++];
		n = t >> 4;
		if (n == 15)
			do {
				if (i == len)
					return 0;
				n += p[i];
			} while (p[i++] == 255);
		if (n >= len - i)
			return 0;	/* the last literals */
		i += n;
		if (len - i < 2)
			return 0;
		if ((p[i] | p[i + 1] << 8) == 0)
			return 1;
		i += 2;
		if ((t & 15) == 15)
			do {
				if (i == len)
					return 0;
			} while (p[i++] == 255);
	}
	return 0;
}

/*
 * The independent parse of an FCSNAP1 body: the entries (at most *n,
 * which returns how many whole ones precede the first problem) and 1 when
 * the whole body is valid, 0 when not; *hdr_ok when the header is.
 */
static int
fuzz_parse(const uint8_t *b, size_t len, struct fuzz_ent *v, size_t *n,
    int *hdr_ok, uint64_t *ts)
{
	uint64_t count, i;
	size_t pos = 28, max = *n;

	*n = 0;
	*hdr_ok = len >= 28 && memcmp(b, "FCSNAP1\0", 8) == 0 &&
	    fuzz_get32(b + 8) == 1;
	if (!*hdr_ok)
		return 0;
	*ts = fuzz_get64(b + 12);
	count = fuzz_get64(b + 20);
	for (i = 0; i < count; i++) {
		uint32_t k, vl;

		if (len - pos < 16)
			return 0;
		k = fuzz_get32(b + pos);
		vl = fuzz_get32(b + pos + 4);
		if ((uint64_t)k + vl > len - pos - 16)
			return 0;
		if (*n == max)
			fuzz_fail("more entries than input bytes", NULL);
		v[*n].klen = k;
		v[*n].vlen = vl;
		v[*n].exp = fuzz_get64(b + pos + 8);
		v[*n].key = b + pos + 16;
		v[*n].val = b + pos + 16 + k;
		(*n)++;
		pos += 16 + (size_t)k + vl;
	}
	return pos == len;
}

static int
fuzz_sorted(const struct fuzz_ent *v, size_t n)
{
	for (size_t i = 1; i < n; i++)
		if (snap_key_cmp(v[i - 1].key, v[i - 1].klen, v[i].key,
		    v[i].klen) >= 0)
			return 0;
	return 1;
}

/*
 * Read path with the reader and compare with the expected entries: want
 * (nwant of them) and whether it must end cleanly (ok) after them.
 */
static void
fuzz_read(const char *path, uint64_t max_body, int open_ok, uint64_t want_ts,
    const struct fuzz_ent *want, size_t nwant, int ok)
{
	struct snap_reader *sr;
	struct snap_entry e;
	uint64_t ts, count;
	char err[512];
	size_t n = 0;
	int r;

	err[0] = '\0';
	sr = snap_reader_open(path, max_body, &ts, &count, err, sizeof(err));
	if (sr == NULL) {
		if (err[0] == '\0')
			fuzz_fail("open failed without a reason", NULL);
		if (open_ok)
			fuzz_fail("open refused a valid header", err);
		return;
	}
	if (!open_ok)
		fuzz_fail("open accepted a bad header or body", NULL);
	if (ts != want_ts)
		fuzz_fail("open misread the timestamp", NULL);
	while ((r = snap_reader_next(sr, &e, err, sizeof(err))) == 1) {
		if (n >= nwant)
			fuzz_fail("an entry past the valid ones", NULL);
		if (e.se_klen != want[n].klen || e.se_vlen != want[n].vlen ||
		    e.se_expire != want[n].exp ||
		    memcmp(e.se_key, want[n].key, e.se_klen) != 0 ||
		    memcmp(e.se_val, want[n].val, e.se_vlen) != 0)
			fuzz_fail("an entry differs from the file", NULL);
		n++;
	}
	if (r == 0 && (!ok || n != nwant))
		fuzz_fail("a bad snapshot read to its end cleanly", NULL);
	if (r == -1) {
		if (ok)
			fuzz_fail("a valid snapshot failed", err);
		if (err[0] == '\0')
			fuzz_fail("a read failed without a reason", NULL);
		if (n != nwant)
			fuzz_fail("the read stopped before the last whole "
			    "entry", err);
	}
	/* after the end or an error, the reader stays there */
	snap_reader_close(sr);
}

/*
 * A .bin.lz4 whose block does not decode whole to its stated length (the
 * reader streams it, so it may open and give entries before it finds
 * that): every failure says why.
 */
static void
fuzz_read_any(const char *path)
{
	struct snap_reader *sr;
	struct snap_entry e;
	uint64_t ts, count;
	char err[512];
	int r, steps = 0;

	err[0] = '\0';
	if ((sr = snap_reader_open(path, 0, &ts, &count, err,
	    sizeof(err))) == NULL) {
		if (err[0] == '\0')
			fuzz_fail("open failed without a reason", NULL);
		return;
	}
	while ((r = snap_reader_next(sr, &e, err, sizeof(err))) == 1)
		if (++steps > 1 << 20)
			fuzz_fail("the reader does not end", NULL);
	if (r == -1 && err[0] == '\0')
		fuzz_fail("a read failed without a reason", NULL);
	snap_reader_close(sr);
}

/* The SET frames snap_write wrote next to the snapshot. */
static void
fuzz_check_frames(const char *path, uint64_t ts, const struct fuzz_ent *want,
    size_t nwant)
{
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	uint8_t *buf;
	size_t len, n = 0;
	int r;

	buf = fuzz_slurp(path, &len);
	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
	if (fcw2_decoder_feed(&dec, buf, len) == -1)
		fuzz_fail("out of memory", NULL);
	while ((r = fcw2_decoder_next(&dec, &fr)) == FCW2_OK) {
		const struct fuzz_ent *w;
		int64_t exp;

		if (n >= nwant)
			fuzz_fail("more SET frames than entries", NULL);
		w = &want[n];
		exp = w->exp == SNAP_NO_EXPIRY || w->exp > INT64_MAX ? -1 :
		    (int64_t)w->exp;
		if (fr.rec.op != FCW2_OP_SET || fr.rec.timestamp_ms != ts ||
		    fr.rec.expire_at_ms != exp ||
		    fr.rec.key_len != w->klen || fr.rec.value_len != w->vlen ||
		    memcmp(fr.rec.key, w->key, w->klen) != 0 ||
		    memcmp(fr.rec.value, w->val, w->vlen) != 0)
			fuzz_fail("a SET frame differs from its entry", NULL);
		n++;
	}
	if (r != FCW2_NEED_MORE || fcw2_decoder_finish(&dec) != FCW2_OK ||
	    n != nwant)
		fuzz_fail("the SET frames do not hold every entry", NULL);
	fcw2_decoder_free(&dec);
	free(buf);
}

static void
fuzz_merge(const char *base, int compress, int readable, int sorted,
    uint64_t ts, const struct fuzz_ent *v, size_t n)
{
	struct snap_fold *f;
	struct snap_write_result res;
	struct fuzz_ent *keep;
	struct dirent *de;
	char err[512], path[8400], lz4[8400];
	size_t nkeep = 0;
	DIR *d;
	int rc;

	if ((f = snap_fold_new(fuzz_dir, 1 << 20, err, sizeof(err))) == NULL)
		fuzz_fail("snap_fold_new", err);
	err[0] = '\0';
	rc = snap_write(fuzz_dir, base, f, ts, compress ? SNAP_COMPRESS_LZ4 :
	    SNAP_COMPRESS_NONE, UINT64_MAX, NULL, &res, err, sizeof(err));
	snap_fold_free(f);
	if (rc == -1) {
		if (err[0] == '\0')
			fuzz_fail("a merge failed without a reason", NULL);
		if (readable && sorted)
			fuzz_fail("the merge of a valid snapshot failed", err);
		if ((d = opendir(fuzz_dir)) == NULL)
			fuzz_fail("opendir", strerror(errno));
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] != '.')
				fuzz_fail("a failed merge left a file",
				    de->d_name);
		closedir(d);
		return;
	}
	if (!readable || !sorted)
		fuzz_fail("a bad previous snapshot was merged", NULL);
	if ((keep = calloc(n + 1, sizeof(*keep))) == NULL)
		fuzz_fail("out of memory", NULL);
	for (size_t i = 0; i < n; i++)
		if (v[i].exp == SNAP_NO_EXPIRY || v[i].exp >= ts)
			keep[nkeep++] = v[i];
	if (res.wr_entries != nkeep || res.wr_dropped_expired != n - nkeep)
		fuzz_fail("the merge counted other entries", NULL);
	snprintf(path, sizeof(path), "%s/walrelay-snap-body.tmp", fuzz_dir);
	fuzz_read(path, 0, 1, ts, keep, nkeep, 1);
	if (res.wr_compressed) {
		snprintf(path, sizeof(path), "%s/walrelay-snap-lz4.tmp",
		    fuzz_dir);
		snprintf(lz4, sizeof(lz4), "%s/snapshot-1.bin.lz4", fuzz_dir);
		if (rename(path, lz4) == -1)
			fuzz_fail("rename", strerror(errno));
		fuzz_read(lz4, 0, 1, ts, keep, nkeep, 1);
	} else if (compress)
		fuzz_fail("the merge did not compress", NULL);
	snprintf(path, sizeof(path), "%s/walrelay-snap-frames.tmp", fuzz_dir);
	fuzz_check_frames(path, ts, keep, nkeep);
	free(keep);
	fuzz_empty_dir(fuzz_dir);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	struct fuzz_ent *v;
	uint8_t *file = NULL, *body = NULL;
	size_t flen, blen = 0, n;
	uint64_t ts = 0, max_body = 0;
	char path[4300];
	int lz4, open_ok, ok, hdr_ok = 0, dn;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	if (size < 1)
		return 0;
	lz4 = data[0] & 0x01;
	if (lz4 && (data[0] & 0x10))
		max_body = FUZZ_MAX_BODY;
	snprintf(path, sizeof(path), "%s/snapshot-%d.bin%s", fuzz_root,
	    FUZZ_TS, lz4 ? ".lz4" : "");

	if (lz4 && (data[0] & 0x02)) {
		/* the body given: compress it as the relay does */
		int bound = LZ4_compressBound((int)(size - 1)), c;

		blen = size - 1;
		if ((body = malloc(blen + 1)) == NULL ||
		    (file = malloc(4 + (size_t)bound)) == NULL)
			fuzz_fail("out of memory", NULL);
		memcpy(body, data + 1, blen);
		file[0] = (uint8_t)blen;
		file[1] = (uint8_t)(blen >> 8);
		file[2] = (uint8_t)(blen >> 16);
		file[3] = (uint8_t)(blen >> 24);
		c = LZ4_compress_default((const char *)body, (char *)file + 4,
		    (int)blen, bound);
		if (c <= 0 && blen > 0)
			fuzz_fail("LZ4_compress_default", NULL);
		flen = 4 + (size_t)(c > 0 ? c : 0);
		if (blen == 0) {
			/* LZ4 encodes an empty input as one zero byte */
			file[4] = 0;
			flen = 5;
		}
	} else {
		flen = size - 1;
		if ((file = malloc(flen + 1)) == NULL)
			fuzz_fail("out of memory", NULL);
		memcpy(file, data + 1, flen);
		if (!lz4) {
			body = file;
			blen = flen;
		} else if (flen >= 4) {
			/* the body is what LZ4 makes of it, if anything */
			uint32_t raw = fuzz_get32(file);

			if (raw <= 1u << 24 && (body = malloc(raw + 1)) !=
			    NULL) {
				dn = LZ4_decompress_safe((const char *)file + 4,
				    (char *)body, (int)(flen - 4), (int)raw);
				if (dn < 0 || (uint32_t)dn != raw ||
				    fuzz_lz4_offset0(file + 4, flen - 4)) {
					free(body);
					body = NULL;
				} else
					blen = raw;
			}
		}
	}
	fuzz_write(path, file, flen);

	if ((v = calloc(size / 16 + 1, sizeof(*v))) == NULL)
		fuzz_fail("out of memory", NULL);
	n = size / 16 + 1;
	ok = body != NULL && fuzz_parse(body, blen, v, &n, &hdr_ok, &ts);
	open_ok = body != NULL && hdr_ok;
	if (body != NULL)
		fuzz_read(path, max_body, open_ok, ts, v, n, ok);
	else
		fuzz_read_any(path);
	if ((data[0] & 0x04) && body != NULL)
		fuzz_merge(path, (data[0] & 0x08) != 0, ok && open_ok,
		    fuzz_sorted(v, n), ts, v, n);
	free(v);
	if (body != file)
		free(body);
	free(file);
	unlink(path);
	return 0;
}
