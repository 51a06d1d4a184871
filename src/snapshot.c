/*
 * snapshot.c: FCSNAP1 files, folding records into them, and the relay's
 * snapshot jobs (compaction).
 *
 * A job folds the segments after the previous snapshot into a table of
 * per-key changes (spilled to sorted run files above half of the memory
 * budget), merges the previous snapshot (sorted by key) with the runs and
 * the table into a new body and its SET frames, and then, in this order:
 * fdatasync, rename the frames file and the snapshot into place, fsync
 * the directory, record the snapshot in the store's metadata, delete the
 * snapshot files the new one supersedes, and let the store remove the
 * segments it covers. A crash at any point leaves either the previous
 * state or one the next start completes (snapshotter_open).
 */
#include "autoconfig.h"

#include <sys/types.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <lz4.h>
#include <xxhash.h>

#include "clock.h"
#include "fcw2.h"
#include "fdio.h"
#include "log.h"
#include "scan.h"
#include "segment.h"
#include "snapshot.h"

#define SNAP_IOBUF		(1024 * 1024)
#define SNAP_TMP_BODY		"walrelay-snap-body.tmp"
#define SNAP_TMP_FRAMES		"walrelay-snap-frames.tmp"
#define SNAP_TMP_LZ4		"walrelay-snap-lz4.tmp"
#define SNAP_TMP_RUN		"walrelay-snap-run-%u.tmp"
#define SNAP_TMP_PREFIX		"walrelay-snap-"
#define SNAP_FRAMES_PREFIX	"walrelay-frames-"
#define SNAP_CHG_OVERHEAD	64	/* per key in the table, roughly */
#define SNAP_JOB_NICE		10	/* the job yields the CPU to the stream */

enum snap_chg_type {
	CHG_SET = 1,
	CHG_DEL = 2,
	CHG_EXPIRE = 3,	/* an expiry for a key that may exist before */
};

static void
le32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static void
le64(uint8_t *p, uint64_t v)
{
	le32(p, (uint32_t)v);
	le32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t
rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

static uint64_t
rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

int
snap_key_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b,
    uint32_t blen)
{
	size_t n = alen < blen ? alen : blen;
	int c = n > 0 ? memcmp(a, b, n) : 0;	/* an empty key may be NULL */

	if (c != 0)
		return c;
	return alen < blen ? -1 : alen > blen;
}

/* ---- buffered I/O ------------------------------------------------------ */

struct bufw {
	int		 fd;
	uint8_t		*buf;
	size_t		 len;
	uint64_t	 total;
};

static int
bufw_open(struct bufw *w, int dirfd, const char *name)
{
	memset(w, 0, sizeof(*w));
	if ((w->buf = malloc(SNAP_IOBUF)) == NULL)
		return -1;
	w->fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0644);
	if (w->fd == -1) {
		free(w->buf);
		w->buf = NULL;
		return -1;
	}
	return 0;
}

static int
bufw_flush(struct bufw *w)
{
	if (w->len > 0 && fdio_write_all(w->fd, w->buf, w->len) == -1)
		return -1;
	w->len = 0;
	return 0;
}

static int
bufw_put(struct bufw *w, const void *p, size_t len)
{
	w->total += len;
	if (w->len + len > SNAP_IOBUF) {
		if (bufw_flush(w) == -1)
			return -1;
		if (len > SNAP_IOBUF)
			return fdio_write_all(w->fd, p, len);
	}
	memcpy(w->buf + w->len, p, len);
	w->len += len;
	return 0;
}

/* Flush, fdatasync, close. -1 with errno (the fd is closed either way). */
static int
bufw_finish(struct bufw *w, int sync)
{
	int rc = 0, save;

	if (bufw_flush(w) == -1 || (sync && fdatasync(w->fd) == -1))
		rc = -1;
	save = errno;
	if (close(w->fd) == -1 && rc == 0) {
		rc = -1;
		save = errno;
	}
	w->fd = -1;
	free(w->buf);
	w->buf = NULL;
	errno = save;
	return rc;
}

static void
bufw_abort(struct bufw *w)
{
	if (w->fd != -1)
		close(w->fd);
	w->fd = -1;
	free(w->buf);
	w->buf = NULL;
}

/*
 * A streaming decoder of one LZ4 block (a .bin.lz4 body): the output goes
 * through a window that keeps the last 64 KiB a match may copy from, so
 * a snapshot of any size is read with constant memory.
 */
#define LZ4D_HIST	65536
#define LZ4D_WCAP	(SNAP_IOBUF + LZ4D_HIST)

enum { LZ4D_TOKEN, LZ4D_LITEXT, LZ4D_LIT, LZ4D_OFF, LZ4D_MLEXT, LZ4D_MATCH,
    LZ4D_END };

struct lz4d {
	int		 d_fd;
	uint64_t	 d_inleft;	/* compressed bytes not yet read */
	uint8_t		*d_in;
	size_t		 d_inlen;
	size_t		 d_inpos;
	uint8_t		*d_w;		/* the window */
	size_t		 d_wlen;
	size_t		 d_dpos;	/* bytes of d_w handed out */
	uint64_t	 d_out;		/* bytes decoded */
	uint64_t	 d_raw;		/* the body's length */
	int		 d_state;
	size_t		 d_lit;
	size_t		 d_ml;
	size_t		 d_off;
	int		 d_offb;	/* offset bytes read */
	uint64_t	 d_insize;	/* the block's compressed bytes */
	char		 d_err[160];	/* why the block does not decode */
};

/* Where the decoder is in the file: the length field, then the block. */
static uint64_t
lz4d_pos(const struct lz4d *d)
{
	return 4 + d->d_insize - d->d_inleft - (d->d_inlen - d->d_inpos);
}

/* 1 and a byte, 0 at the end of the input, -1 with errno. */
static int
lz4d_byte(struct lz4d *d, uint8_t *b)
{
	ssize_t n;

	if (d->d_inpos == d->d_inlen) {
		if (d->d_inleft == 0)
			return 0;
		do
			n = read(d->d_fd, d->d_in, d->d_inleft < SNAP_IOBUF ?
			    (size_t)d->d_inleft : SNAP_IOBUF);
		while (n == -1 && errno == EINTR);
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			return -1;
		}
		d->d_inleft -= (uint64_t)n;
		d->d_inlen = (size_t)n;
		d->d_inpos = 0;
	}
	*b = d->d_in[d->d_inpos++];
	return 1;
}

/* Decode into the window until it is full or the block ends. 0 or -1. */
static int
lz4d_fill(struct lz4d *d)
{
	uint8_t b;
	int r;

	if (d->d_wlen == LZ4D_WCAP) {
		/* everything was handed out: keep the history only */
		memmove(d->d_w, d->d_w + d->d_wlen - LZ4D_HIST, LZ4D_HIST);
		d->d_wlen = d->d_dpos = LZ4D_HIST;
	}
	while (d->d_wlen < LZ4D_WCAP && d->d_state != LZ4D_END) {
		switch (d->d_state) {
		case LZ4D_TOKEN:
			if ((r = lz4d_byte(d, &b)) != 1)
				goto trunc;
			d->d_lit = b >> 4;
			d->d_ml = b & 15;
			d->d_state = d->d_lit == 15 ? LZ4D_LITEXT : LZ4D_LIT;
			break;
		case LZ4D_LITEXT:
		case LZ4D_MLEXT:
			if ((r = lz4d_byte(d, &b)) != 1)
				goto trunc;
			if (d->d_state == LZ4D_LITEXT)
				d->d_lit += b;
			else
				d->d_ml += b;
			if (b != 255 && d->d_state == LZ4D_LITEXT)
				d->d_state = LZ4D_LIT;
			else if (b != 255) {
				d->d_ml += 4;
				d->d_state = LZ4D_MATCH;
			}
			break;
		case LZ4D_LIT:
			while (d->d_lit > 0 && d->d_wlen < LZ4D_WCAP) {
				size_t n = d->d_lit, room = LZ4D_WCAP -
				    d->d_wlen;

				if (d->d_inpos == d->d_inlen) {
					if ((r = lz4d_byte(d, &b)) != 1)
						goto trunc;
					d->d_inpos--;
				}
				if (n > room)
					n = room;
				if (n > d->d_inlen - d->d_inpos)
					n = d->d_inlen - d->d_inpos;
				memcpy(d->d_w + d->d_wlen, d->d_in +
				    d->d_inpos, n);
				d->d_inpos += n;
				d->d_wlen += n;
				d->d_out += n;
				d->d_lit -= n;
			}
			if (d->d_lit > 0)
				break;
			if (d->d_inpos == d->d_inlen && d->d_inleft == 0) {
				d->d_state = LZ4D_END;	/* the last sequence */
				break;
			}
			d->d_state = LZ4D_OFF;
			d->d_off = 0;
			d->d_offb = 0;
			break;
		case LZ4D_OFF:
			if ((r = lz4d_byte(d, &b)) != 1)
				goto trunc;
			d->d_off |= (size_t)b << (8 * d->d_offb);
			if (++d->d_offb < 2)
				break;
			if (d->d_off == 0 || d->d_off > d->d_out ||
			    d->d_off > d->d_wlen) {
				/* 0 is not an LZ4 offset; LZ4's own decoder
				 * copies unwritten bytes for it */
				snprintf(d->d_err, sizeof(d->d_err), "LZ4 block "
				    "damaged at byte %" PRIu64 ": a match "
				    "offset of %zu after %" PRIu64 " decoded "
				    "bytes", lz4d_pos(d) - 2, d->d_off,
				    d->d_out);
				goto corrupt;
			}
			if (d->d_ml == 15)
				d->d_state = LZ4D_MLEXT;
			else {
				d->d_ml += 4;
				d->d_state = LZ4D_MATCH;
			}
			break;
		case LZ4D_MATCH:
			/* d_ml bytes from d_off back (they may overlap) */
			while (d->d_ml > 0 && d->d_wlen < LZ4D_WCAP) {
				d->d_w[d->d_wlen] = d->d_w[d->d_wlen -
				    d->d_off];
				d->d_wlen++;
				d->d_out++;
				d->d_ml--;
			}
			if (d->d_ml == 0)
				d->d_state = LZ4D_TOKEN;
			break;
		}
		if (d->d_out > d->d_raw) {
			snprintf(d->d_err, sizeof(d->d_err), "LZ4 block "
			    "decodes to more than the %" PRIu64 " bytes its "
			    "length field states", d->d_raw);
			goto corrupt;
		}
	}
	if (d->d_state == LZ4D_END && d->d_out != d->d_raw) {
		snprintf(d->d_err, sizeof(d->d_err), "LZ4 block decodes to "
		    "%" PRIu64 " of the %" PRIu64 " bytes its length field "
		    "states", d->d_out, d->d_raw);
		goto corrupt;
	}
	return 0;
trunc:
	if (r == 0) {
		snprintf(d->d_err, sizeof(d->d_err), "LZ4 block ends inside "
		    "a sequence after %" PRIu64 " of %" PRIu64 " bytes",
		    d->d_out, d->d_raw);
		errno = EIO;
	}
	return -1;
corrupt:
	errno = EIO;
	return -1;
}

/* Like read(2) from the decoded body. */
static ssize_t
lz4d_read(struct lz4d *d, uint8_t *p, size_t len)
{
	size_t n;

	while (d->d_dpos == d->d_wlen) {
		if (d->d_state == LZ4D_END)
			return 0;
		if (lz4d_fill(d) == -1)
			return -1;
	}
	n = d->d_wlen - d->d_dpos;
	if (n > len)
		n = len;
	memcpy(p, d->d_w + d->d_dpos, n);
	d->d_dpos += n;
	return (ssize_t)n;
}

static void
lz4d_free(struct lz4d *d)
{
	if (d == NULL)
		return;
	free(d->d_in);
	free(d->d_w);
	free(d);
}

struct bufr {
	int		 fd;
	uint8_t		*buf;
	size_t		 cap;
	size_t		 len;
	size_t		 pos;
	int		 eof;
	/* a whole file in memory (decompressed .lz4): no fd */
	const uint8_t	*mem;
	struct lz4d	*lz;	/* read through this decoder (owns fd) */
};

static int
bufr_init_fd(struct bufr *r, int fd)
{
	memset(r, 0, sizeof(*r));
	r->fd = fd;
	r->cap = SNAP_IOBUF;
	if ((r->buf = malloc(r->cap)) == NULL)
		return -1;
	return 0;
}

/*
 * Make n bytes available at *p. 1, 0 at a clean end of file (nothing
 * left), -1 with errno (EIO for a truncated file).
 */
static int
bufr_need(struct bufr *r, size_t n, const uint8_t **p)
{
	ssize_t got;

	if (r->len - r->pos >= n) {
		*p = r->buf + r->pos;
		r->pos += n;
		return 1;
	}
	if (r->mem != NULL || r->eof) {
		if (r->len == r->pos)
			return 0;
		errno = EIO;
		return -1;
	}
	if (r->pos > 0) {
		memmove(r->buf, r->buf + r->pos, r->len - r->pos);
		r->len -= r->pos;
		r->pos = 0;
	}
	if (n > r->cap) {
		uint8_t *nb;
		size_t cap = r->cap;

		while (cap < n)
			cap *= 2;
		if ((nb = realloc(r->buf, cap)) == NULL)
			return -1;
		r->buf = nb;
		r->cap = cap;
	}
	while (r->len < n) {
		got = r->lz != NULL ? lz4d_read(r->lz, r->buf + r->len,
		    r->cap - r->len) : read(r->fd, r->buf + r->len,
		    r->cap - r->len);
		if (got == -1 && errno == EINTR)
			continue;
		if (got == -1)
			return -1;
		if (got == 0) {
			r->eof = 1;
			if (r->len == 0)
				return 0;
			errno = EIO;
			return -1;
		}
		r->len += (size_t)got;
	}
	*p = r->buf;
	r->pos = n;
	return 1;
}

static void
bufr_free(struct bufr *r)
{
	if (r->mem == NULL)
		free(r->buf);
	r->buf = NULL;
	lz4d_free(r->lz);
	r->lz = NULL;
}

/* ---- names ------------------------------------------------------------- */

int
snap_name_parse(const char *name, uint64_t *ts, int *lz4)
{
	const char *p;
	uint64_t v = 0;

	if (strncmp(name, "snapshot-", 9) != 0)
		return -1;
	p = name + 9;
	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (strcmp(p, ".bin") == 0)
		*lz4 = 0;
	else if (strcmp(p, ".bin.lz4") == 0)
		*lz4 = 1;
	else
		return -1;
	*ts = v;
	return 0;
}

void
snap_name_format(char *buf, size_t len, uint64_t ts, int lz4)
{
	snprintf(buf, len, "snapshot-%" PRIu64 "%s", ts, lz4 ? ".bin.lz4" :
	    ".bin");
}

void
snap_frames_name(char *buf, size_t len, uint64_t ts)
{
	snprintf(buf, len, SNAP_FRAMES_PREFIX "%" PRIu64 ".fcw2", ts);
}

/* ---- reading ----------------------------------------------------------- */

struct snap_reader {
	struct bufr	 sr_in;
	uint8_t		*sr_body;	/* decompressed .lz4 body */
	uint64_t	 sr_left;	/* entries still to read */
	uint64_t	 sr_count;
	uint64_t	 sr_size;	/* bytes of the body ... */
	uint64_t	 sr_off;	/* ... and read so far */
};

/* An LZ4 block decodes to at most 255 bytes per byte of it. */
#define SNAP_LZ4_MAX_RATIO	255

struct snap_reader *
snap_reader_open(const char *path, uint64_t max_body, uint64_t *ts,
    uint64_t *count, char *errbuf, size_t errlen)
{
	struct snap_reader *sr;
	const uint8_t *h;
	uint8_t *comp = NULL;
	struct stat sb;
	size_t plen = strlen(path);
	int fd, lz4, r;

	lz4 = plen > 4 && strcmp(path + plen - 4, ".lz4") == 0;
	if ((sr = calloc(1, sizeof(*sr))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
		free(sr);
		return NULL;
	}
	if (!lz4) {
		if (fstat(fd, &sb) == -1) {
			snprintf(errbuf, errlen, "%s: %s", path,
			    strerror(errno));
			goto fail;
		}
		sr->sr_size = (uint64_t)sb.st_size;
		if (bufr_init_fd(&sr->sr_in, fd) == -1) {
			snprintf(errbuf, errlen, "out of memory");
			goto fail;
		}
	} else {
		uint8_t raw[4];
		ssize_t n;
		struct lz4d *d;

		(void)max_body;
		if (fstat(fd, &sb) == -1) {
			snprintf(errbuf, errlen, "%s: %s", path,
			    strerror(errno));
			goto fail;
		}
		while ((n = pread(fd, raw, 4, 0)) == -1 && errno == EINTR)
			;
		if (sb.st_size < 4 || n != 4) {
			snprintf(errbuf, errlen, "%s: not an LZ4 snapshot "
			    "(%lld bytes)", path, (long long)sb.st_size);
			goto fail;
		}
		if (bufr_init_fd(&sr->sr_in, fd) == -1 ||
		    (d = calloc(1, sizeof(*d))) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			goto fail;
		}
		sr->sr_in.lz = d;
		d->d_fd = fd;
		d->d_raw = rd32(raw);
		d->d_inleft = d->d_insize = (uint64_t)sb.st_size - 4;
		if (lseek(fd, 4, SEEK_SET) == -1 ||
		    (d->d_in = malloc(SNAP_IOBUF)) == NULL ||
		    (d->d_w = malloc(LZ4D_WCAP)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			goto fail;
		}
		if (d->d_raw == 0)
			d->d_state = LZ4D_END;
		/* what the block can decode to: 255 bytes per byte at most */
		sr->sr_size = d->d_raw;
		if (sr->sr_size > d->d_inleft * SNAP_LZ4_MAX_RATIO)
			sr->sr_size = d->d_inleft * SNAP_LZ4_MAX_RATIO;
	}
	if ((r = bufr_need(&sr->sr_in, SNAP_HEADER_LEN, &h)) != 1) {
		if (sr->sr_in.lz != NULL && sr->sr_in.lz->d_err[0] != '\0')
			snprintf(errbuf, errlen, "%s: %s", path,
			    sr->sr_in.lz->d_err);
		else if (r == -1 && errno != EIO)
			snprintf(errbuf, errlen, "%s: %s", path,
			    strerror(errno));
		else
			snprintf(errbuf, errlen, "%s: too short for an FCSNAP1 "
			    "header", path);
		goto fail;
	}
	if (memcmp(h, SNAP_MAGIC, 8) != 0) {
		snprintf(errbuf, errlen, "%s: not an FCSNAP1 snapshot (bad "
		    "magic)", path);
		goto fail;
	}
	if (rd32(h + 8) != SNAP_VERSION) {
		snprintf(errbuf, errlen, "%s: FCSNAP1 version %u (this reads "
		    "version %d)", path, rd32(h + 8), SNAP_VERSION);
		goto fail;
	}
	*ts = rd64(h + 12);
	*count = sr->sr_count = sr->sr_left = rd64(h + 20);
	sr->sr_off = SNAP_HEADER_LEN;
	return sr;
fail:
	free(comp);
	if (fd != -1)
		close(fd);
	bufr_free(&sr->sr_in);
	free(sr->sr_body);
	free(sr);
	return NULL;
}

int
snap_reader_next(struct snap_reader *sr, struct snap_entry *e, char *errbuf,
    size_t errlen)
{
	const uint8_t *p;
	int r;

	if (sr->sr_left == 0) {
		if ((r = bufr_need(&sr->sr_in, 1, &p)) == 0)
			return 0;
		if (r == -1 && sr->sr_in.lz != NULL &&
		    sr->sr_in.lz->d_err[0] != '\0')
			snprintf(errbuf, errlen, "after the last of %" PRIu64
			    " entries: %s", sr->sr_count, sr->sr_in.lz->d_err);
		else if (r == -1 && errno != EIO)
			snprintf(errbuf, errlen, "read: %s", strerror(errno));
		else
			snprintf(errbuf, errlen, "bytes after the last of %"
			    PRIu64 " entries", sr->sr_count);
		return -1;
	}
	if ((r = bufr_need(&sr->sr_in, SNAP_ENTRY_FIXED, &p)) != 1)
		goto truncated;
	e->se_klen = rd32(p);
	e->se_vlen = rd32(p + 4);
	e->se_expire = rd64(p + 8);
	sr->sr_off += SNAP_ENTRY_FIXED;
	/* a damaged length is refused before its memory is allocated */
	if (sr->sr_off > sr->sr_size ||
	    (uint64_t)e->se_klen + e->se_vlen > sr->sr_size - sr->sr_off) {
		snprintf(errbuf, errlen, "entry %" PRIu64 " of %" PRIu64
		    " states %" PRIu64 " bytes of key and value, past the end "
		    "of the body (%" PRIu64 " bytes)", sr->sr_count -
		    sr->sr_left, sr->sr_count, (uint64_t)e->se_klen +
		    e->se_vlen, sr->sr_size);
		return -1;
	}
	/* p stays valid: the key and value are read as one piece */
	if ((r = bufr_need(&sr->sr_in, (size_t)e->se_klen + e->se_vlen,
	    &p)) != 1)
		goto truncated;
	sr->sr_off += (uint64_t)e->se_klen + e->se_vlen;
	e->se_key = p;
	e->se_val = p + e->se_klen;
	sr->sr_left--;
	return 1;
truncated:
	if (sr->sr_in.lz != NULL && sr->sr_in.lz->d_err[0] != '\0')
		snprintf(errbuf, errlen, "entry %" PRIu64 " of %" PRIu64
		    ": %s", sr->sr_count - sr->sr_left, sr->sr_count,
		    sr->sr_in.lz->d_err);
	else if (r == -1 && errno != EIO)
		snprintf(errbuf, errlen, "read: %s", strerror(errno));
	else
		snprintf(errbuf, errlen, "truncated at entry %" PRIu64 " of %"
		    PRIu64, sr->sr_count - sr->sr_left, sr->sr_count);
	return -1;
}

void
snap_reader_close(struct snap_reader *sr)
{
	if (sr == NULL)
		return;
	if (sr->sr_in.fd != -1 && sr->sr_in.mem == NULL)
		close(sr->sr_in.fd);
	bufr_free(&sr->sr_in);
	free(sr->sr_body);
	free(sr);
}

/* ---- the fold table and its runs --------------------------------------- */

struct snap_chg {
	struct snap_chg	*c_next;
	uint64_t	 c_hash;
	uint64_t	 c_expire;	/* SNAP_NO_EXPIRY: none */
	uint32_t	 c_klen;
	uint32_t	 c_vlen;
	uint32_t	 c_vcap;
	uint8_t		 c_type;
	uint8_t		*c_val;
	uint8_t		 c_key[];
};

struct snap_fold {
	char		*f_dir;
	int		 f_dirfd;
	uint64_t	 f_limit;
	uint64_t	 f_mem;
	struct snap_chg	**f_tab;
	size_t		 f_nbuckets;
	size_t		 f_count;
	unsigned	 f_runs;
	uint64_t	 f_records;
};

struct snap_fold *
snap_fold_new(const char *dir, uint64_t mem_limit, char *errbuf,
    size_t errlen)
{
	struct snap_fold *f;

	if ((f = calloc(1, sizeof(*f))) == NULL ||
	    (f->f_dir = strdup(dir)) == NULL) {
		free(f);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	f->f_limit = mem_limit;
	f->f_nbuckets = 1024;
	if ((f->f_tab = calloc(f->f_nbuckets, sizeof(*f->f_tab))) == NULL) {
		free(f->f_dir);
		free(f);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	if ((f->f_dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1) {
		snprintf(errbuf, errlen, "%s: %s", dir, strerror(errno));
		free(f->f_tab);
		free(f->f_dir);
		free(f);
		return NULL;
	}
	f->f_mem = f->f_nbuckets * sizeof(*f->f_tab);
	return f;
}

static void
snap_chg_free(struct snap_chg *c)
{
	free(c->c_val);
	free(c);
}

static void
snap_fold_clear(struct snap_fold *f)
{
	for (size_t i = 0; i < f->f_nbuckets; i++) {
		struct snap_chg *c, *n;

		for (c = f->f_tab[i]; c != NULL; c = n) {
			n = c->c_next;
			snap_chg_free(c);
		}
		f->f_tab[i] = NULL;
	}
	f->f_count = 0;
	f->f_mem = f->f_nbuckets * sizeof(*f->f_tab);
}

void
snap_fold_free(struct snap_fold *f)
{
	char name[64];

	if (f == NULL)
		return;
	snap_fold_clear(f);
	for (unsigned i = 0; i < f->f_runs; i++) {
		snprintf(name, sizeof(name), SNAP_TMP_RUN, i);
		unlinkat(f->f_dirfd, name, 0);
	}
	close(f->f_dirfd);
	free(f->f_tab);
	free(f->f_dir);
	free(f);
}

uint64_t
snap_fold_records(const struct snap_fold *f)
{
	return f->f_records;
}

unsigned
snap_fold_runs(const struct snap_fold *f)
{
	return f->f_runs;
}

static int
snap_chg_sort_cmp(const void *a, const void *b)
{
	const struct snap_chg *x = *(struct snap_chg *const *)a;
	const struct snap_chg *y = *(struct snap_chg *const *)b;

	return snap_key_cmp(x->c_key, x->c_klen, y->c_key, y->c_klen);
}

/* The table's changes sorted by key (the caller frees the array). */
static struct snap_chg **
snap_fold_sorted(struct snap_fold *f)
{
	struct snap_chg **v, *c;
	size_t n = 0;

	if ((v = malloc((f->f_count ? f->f_count : 1) * sizeof(*v))) == NULL)
		return NULL;
	for (size_t i = 0; i < f->f_nbuckets; i++)
		for (c = f->f_tab[i]; c != NULL; c = c->c_next)
			v[n++] = c;
	qsort(v, n, sizeof(*v), snap_chg_sort_cmp);
	return v;
}

/*
 * Run file entry: type:u8 klen:u32 vlen:u32 expire:u64 key value, sorted
 * by key, one per key.
 */
#define RUN_FIXED	17

static int
snap_fold_spill(struct snap_fold *f, char *errbuf, size_t errlen)
{
	struct snap_chg **v;
	struct bufw w;
	uint8_t hdr[RUN_FIXED];
	char name[64];

	if ((v = snap_fold_sorted(f)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	snprintf(name, sizeof(name), SNAP_TMP_RUN, f->f_runs);
	if (bufw_open(&w, f->f_dirfd, name) == -1) {
		snprintf(errbuf, errlen, "%s/%s: %s", f->f_dir, name,
		    strerror(errno));
		free(v);
		return -1;
	}
	f->f_runs++;	/* removed by snap_fold_free from now on */
	for (size_t i = 0; i < f->f_count; i++) {
		struct snap_chg *c = v[i];

		hdr[0] = c->c_type;
		le32(hdr + 1, c->c_klen);
		le32(hdr + 5, c->c_vlen);
		le64(hdr + 9, c->c_expire);
		if (bufw_put(&w, hdr, sizeof(hdr)) == -1 ||
		    bufw_put(&w, c->c_key, c->c_klen) == -1 ||
		    (c->c_vlen > 0 && bufw_put(&w, c->c_val, c->c_vlen) == -1))
			goto fail;
	}
	free(v);
	v = NULL;
	if (bufw_finish(&w, 0) == -1)
		goto fail;
	log_debug("%s: snapshot: %zu changed keys written to %s (memory "
	    "limit %" PRIu64 " bytes)", f->f_dir, f->f_count, name,
	    f->f_limit);
	snap_fold_clear(f);
	return 0;
fail:
	snprintf(errbuf, errlen, "%s/%s: %s", f->f_dir, name, strerror(errno));
	bufw_abort(&w);
	free(v);
	return -1;
}

static int
snap_fold_grow(struct snap_fold *f)
{
	struct snap_chg **nt, *c, *n;
	size_t nb = f->f_nbuckets * 2;

	if ((nt = calloc(nb, sizeof(*nt))) == NULL)
		return -1;
	for (size_t i = 0; i < f->f_nbuckets; i++)
		for (c = f->f_tab[i]; c != NULL; c = n) {
			n = c->c_next;
			c->c_next = nt[c->c_hash & (nb - 1)];
			nt[c->c_hash & (nb - 1)] = c;
		}
	free(f->f_tab);
	f->f_mem += (nb - f->f_nbuckets) * sizeof(*nt);
	f->f_tab = nt;
	f->f_nbuckets = nb;
	return 0;
}

static int
snap_chg_setval(struct snap_fold *f, struct snap_chg *c, const uint8_t *v,
    uint32_t len)
{
	if (len > c->c_vcap || (c->c_vcap > 4096 && len < c->c_vcap / 4)) {
		uint8_t *nv = NULL;

		if (len > 0 && (nv = malloc(len)) == NULL)
			return -1;
		f->f_mem -= c->c_vcap;
		free(c->c_val);
		c->c_val = nv;
		c->c_vcap = len;
		f->f_mem += len;
	}
	if (len > 0)
		memcpy(c->c_val, v, len);
	c->c_vlen = len;
	return 0;
}

int
snap_fold_apply(struct snap_fold *f, const struct fcw2_record *rec,
    char *errbuf, size_t errlen)
{
	struct snap_chg *c;
	uint64_t h, exp;
	size_t b;

	exp = rec->expire_at_ms < 0 ? SNAP_NO_EXPIRY :
	    (uint64_t)rec->expire_at_ms;
	h = XXH3_64bits(rec->key, rec->key_len);
	b = h & (f->f_nbuckets - 1);
	for (c = f->f_tab[b]; c != NULL; c = c->c_next)
		if (c->c_hash == h && c->c_klen == rec->key_len &&
		    memcmp(c->c_key, rec->key, rec->key_len) == 0)
			break;
	if (c == NULL) {
		if ((c = calloc(1, sizeof(*c) + rec->key_len)) == NULL)
			goto oom;
		memcpy(c->c_key, rec->key, rec->key_len);
		c->c_klen = rec->key_len;
		c->c_hash = h;
		c->c_type = 0;
		c->c_expire = SNAP_NO_EXPIRY;
		c->c_next = f->f_tab[b];
		f->f_tab[b] = c;
		f->f_count++;
		f->f_mem += sizeof(*c) + rec->key_len + SNAP_CHG_OVERHEAD;
	}
	switch (rec->op) {
	case FCW2_OP_SET:
		if (snap_chg_setval(f, c, rec->value, rec->value_len) == -1)
			goto oom;
		c->c_type = CHG_SET;
		c->c_expire = exp;
		break;
	case FCW2_OP_DEL:
		snap_chg_setval(f, c, NULL, 0);
		c->c_type = CHG_DEL;
		c->c_expire = SNAP_NO_EXPIRY;
		break;
	case FCW2_OP_EXPIRE:
		/* on a key that does not exist, EXPIRE does nothing */
		if (c->c_type == 0)
			c->c_type = CHG_EXPIRE;
		if (c->c_type != CHG_DEL)
			c->c_expire = exp;
		break;
	default:
		snprintf(errbuf, errlen, "record with op %u", rec->op);
		return -1;
	}
	f->f_records++;
	if (f->f_count > f->f_nbuckets && snap_fold_grow(f) == -1)
		goto oom;
	if (f->f_mem > f->f_limit)
		return snap_fold_spill(f, errbuf, errlen);
	return 0;
oom:
	snprintf(errbuf, errlen, "out of memory");
	return -1;
}

/* ---- merging and writing ----------------------------------------------- */

/* One sorted source of the merge: the base, a run, or the table. */
struct snap_src {
	int		 s_kind;	/* 0 base, 1 run, 2 table */
	int		 s_have;	/* a current entry */
	uint8_t		 s_type;
	const uint8_t	*s_key;
	uint32_t	 s_klen;
	const uint8_t	*s_val;
	uint32_t	 s_vlen;
	uint64_t	 s_expire;
	struct snap_reader *s_base;
	struct bufr	 s_run;
	int		 s_fd;
	struct snap_chg	**s_vec;
	size_t		 s_n;
	size_t		 s_i;
	/* the previous key of the base, to check its order */
	uint8_t		*s_prev;
	uint32_t	 s_prevlen;
	size_t		 s_prevcap;
	int		 s_hasprev;	/* s_prev holds a key (maybe empty) */
};

static int
snap_src_next(struct snap_src *s, char *errbuf, size_t errlen)
{
	const uint8_t *p;
	struct snap_entry e;
	int r;

	switch (s->s_kind) {
	case 0:
		if (s->s_have) {
			/* keep the key to check that the next one is greater */
			if (s->s_klen > s->s_prevcap) {
				uint8_t *np = realloc(s->s_prev, s->s_klen);

				if (np == NULL) {
					snprintf(errbuf, errlen,
					    "out of memory");
					return -1;
				}
				s->s_prev = np;
				s->s_prevcap = s->s_klen;
			}
			if (s->s_klen > 0)
				memcpy(s->s_prev, s->s_key, s->s_klen);
			s->s_prevlen = s->s_klen;
			s->s_hasprev = 1;
		}
		if ((r = snap_reader_next(s->s_base, &e, errbuf, errlen)) ==
		    -1)
			return -1;
		s->s_have = r;
		if (r == 0)
			return 0;
		s->s_type = CHG_SET;
		s->s_key = e.se_key;
		s->s_klen = e.se_klen;
		s->s_val = e.se_val;
		s->s_vlen = e.se_vlen;
		s->s_expire = e.se_expire;
		if (s->s_hasprev && snap_key_cmp(s->s_prev, s->s_prevlen,
		    s->s_key, s->s_klen) >= 0) {
			snprintf(errbuf, errlen, "the previous snapshot is not "
			    "sorted by key (not written by walrelay)");
			return -1;
		}
		return 0;
	case 1:
		if ((r = bufr_need(&s->s_run, RUN_FIXED, &p)) == -1)
			goto bad_run;
		if (r == 0) {
			s->s_have = 0;
			return 0;
		}
		s->s_type = p[0];
		s->s_klen = rd32(p + 1);
		s->s_vlen = rd32(p + 5);
		s->s_expire = rd64(p + 9);
		if ((r = bufr_need(&s->s_run, (size_t)s->s_klen + s->s_vlen,
		    &p)) != 1)
			goto bad_run;
		s->s_key = p;
		s->s_val = p + s->s_klen;
		s->s_have = 1;
		return 0;
	default:
		if (s->s_i >= s->s_n) {
			s->s_have = 0;
			return 0;
		}
		s->s_type = s->s_vec[s->s_i]->c_type;
		s->s_key = s->s_vec[s->s_i]->c_key;
		s->s_klen = s->s_vec[s->s_i]->c_klen;
		s->s_val = s->s_vec[s->s_i]->c_val;
		s->s_vlen = s->s_vec[s->s_i]->c_vlen;
		s->s_expire = s->s_vec[s->s_i]->c_expire;
		s->s_i++;
		s->s_have = 1;
		return 0;
	}
bad_run:
	snprintf(errbuf, errlen, "a temporary run file: %s", r == -1 ?
	    strerror(errno) : "truncated");
	return -1;
}

static int
snap_unlink_tmp(int dirfd)
{
	unlinkat(dirfd, SNAP_TMP_BODY, 0);
	unlinkat(dirfd, SNAP_TMP_FRAMES, 0);
	unlinkat(dirfd, SNAP_TMP_LZ4, 0);
	return 0;
}

/*
 * Compress the body file into the .lz4 temporary (fdatasynced) as the
 * cache reads it: u32 body length, then ONE LZ4 block of the whole body.
 * The body is compressed in SNAP_LZ4_IN pieces with the streaming API
 * (each piece may refer to the 64 KiB before it), so memory stays small
 * whatever the body's size. Each piece comes out as a block that ends
 * with a sequence of literals only; that sequence is held back and its
 * literals join the first sequence of the next piece (the token's literal
 * length is re-encoded), which makes the pieces one block: only literal
 * runs that cross a piece's end are held, at most SNAP_LZ4_PENDING bytes.
 * Returns 0, 1 when a run of incompressible bytes exceeds that (the
 * caller writes .bin), or -1 with errbuf.
 */
#define SNAP_LZ4_IN		(256 * 1024)
#define SNAP_LZ4_PENDING	(32 * 1024 * 1024)

struct lz4cat {
	struct bufw	 lc_out;
	uint8_t		*lc_pend;	/* literals held back */
	size_t		 lc_plen;
	size_t		 lc_pcap;
};

static int
lz4cat_len(struct bufw *w, size_t n)
{
	uint8_t b[256];
	size_t k = 0;

	/* the extension bytes of a length >= 15 (its nibble is 15) */
	for (n -= 15; ; n -= 255) {
		b[k++] = n >= 255 ? 255 : (uint8_t)n;
		if (k == sizeof(b) || n < 255) {
			if (bufw_put(w, b, k) == -1)
				return -1;
			k = 0;
		}
		if (n < 255)
			return 0;
	}
}

/* A sequence: literal length nl (its bytes: a then b), then mpart. */
static int
lz4cat_seq(struct lz4cat *lc, unsigned mnib, const uint8_t *a, size_t alen,
    const uint8_t *b, size_t blen, const uint8_t *mpart, size_t mlen)
{
	size_t nl = alen + blen;
	uint8_t tok = (uint8_t)((nl >= 15 ? 15 : nl) << 4 | mnib);

	if (bufw_put(&lc->lc_out, &tok, 1) == -1 ||
	    (nl >= 15 && lz4cat_len(&lc->lc_out, nl) == -1) ||
	    (alen > 0 && bufw_put(&lc->lc_out, a, alen) == -1) ||
	    (blen > 0 && bufw_put(&lc->lc_out, b, blen) == -1) ||
	    (mlen > 0 && bufw_put(&lc->lc_out, mpart, mlen) == -1))
		return -1;
	return 0;
}

/* Hold back literals. 0, 1 over SNAP_LZ4_PENDING, -1 out of memory. */
static int
lz4cat_hold(struct lz4cat *lc, const uint8_t *p, size_t n)
{
	if (lc->lc_plen + n > SNAP_LZ4_PENDING)
		return 1;
	if (lc->lc_plen + n > lc->lc_pcap) {
		size_t cap = lc->lc_pcap ? lc->lc_pcap : 65536;
		uint8_t *nb;

		while (cap < lc->lc_plen + n)
			cap *= 2;
		if ((nb = realloc(lc->lc_pend, cap)) == NULL)
			return -1;
		lc->lc_pend = nb;
		lc->lc_pcap = cap;
	}
	memcpy(lc->lc_pend + lc->lc_plen, p, n);
	lc->lc_plen += n;
	return 0;
}

/*
 * One piece's block c: its first sequence takes the held literals, its
 * last (literals only) is held. 0, 1 (too much held), -1 (errno; EINVAL:
 * not a block LZ4 made).
 */
static int
lz4cat_piece(struct lz4cat *lc, const uint8_t *c, size_t len)
{
	size_t pos = 0, lit, lstart, mstart, first_end = 0, last = 0;
	int first = 1;

	while (pos < len) {
		uint8_t tok = c[pos++];

		last = pos - 1;
		lit = tok >> 4;
		if (lit == 15)
			do {
				if (pos >= len)
					goto bad;
				lit += c[pos];
			} while (c[pos++] == 255);
		lstart = pos;
		if (lit > len - pos)
			goto bad;
		pos += lit;
		if (pos == len) {
			/* the last sequence: literals only, held back */
			if (first)
				return lz4cat_hold(lc, c + lstart, lit);
			break;
		}
		mstart = pos;
		if (len - pos < 2)
			goto bad;
		pos += 2;
		if ((tok & 15) == 15)
			do {
				if (pos >= len)
					goto bad;
			} while (c[pos++] == 255);
		if (first) {
			/* the held literals, then this sequence's own */
			if (lz4cat_seq(lc, tok & 15, lc->lc_pend, lc->lc_plen,
			    c + lstart, lit, c + mstart, pos - mstart) == -1)
				return -1;
			lc->lc_plen = 0;
			first = 0;
			first_end = pos;
		}
	}
	/* the sequences between the first and the last, as they are */
	if (last > first_end && bufw_put(&lc->lc_out, c + first_end,
	    last - first_end) == -1)
		return -1;
	return lz4cat_hold(lc, c + lstart, lit);
bad:
	errno = EINVAL;
	return -1;
}

static int
snap_compress(int dirfd, uint64_t body_len, uint64_t *out_len, char *errbuf,
    size_t errlen)
{
	LZ4_stream_t *ls = NULL;
	struct lz4cat lc;
	uint8_t *in[2] = { NULL, NULL }, *comp = NULL, hdr[4];
	size_t got;
	ssize_t n;
	uint64_t done = 0;
	int fd = -1, cur = 0, clen, r, rc = -1;

	memset(&lc, 0, sizeof(lc));
	lc.lc_out.fd = -1;
	if ((ls = LZ4_createStream()) == NULL ||
	    (in[0] = malloc(SNAP_LZ4_IN)) == NULL ||
	    (in[1] = malloc(SNAP_LZ4_IN)) == NULL ||
	    (comp = malloc((size_t)LZ4_compressBound(SNAP_LZ4_IN))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto out;
	}
	if ((fd = openat(dirfd, SNAP_TMP_BODY, O_RDONLY | O_CLOEXEC)) == -1 ||
	    bufw_open(&lc.lc_out, dirfd, SNAP_TMP_LZ4) == -1)
		goto fail_errno;
	le32(hdr, (uint32_t)body_len);
	if (bufw_put(&lc.lc_out, hdr, 4) == -1)
		goto fail_errno;
	while (done < body_len) {
		/* the other buffer still holds the previous piece: its dict */
		for (got = 0; got < SNAP_LZ4_IN && done + got < body_len; ) {
			n = read(fd, in[cur] + got, SNAP_LZ4_IN - got);
			if (n == -1 && errno == EINTR)
				continue;
			if (n <= 0) {
				if (n == 0)
					errno = EIO;
				goto fail_errno;
			}
			got += (size_t)n;
		}
		if (done + got > body_len) {
			errno = EIO;	/* the body grew: not ours */
			goto fail_errno;
		}
		clen = LZ4_compress_fast_continue(ls, (const char *)in[cur],
		    (char *)comp, (int)got, LZ4_compressBound(SNAP_LZ4_IN), 1);
		if (clen <= 0) {
			snprintf(errbuf, errlen, "LZ4 compression failed");
			goto out;
		}
		if ((r = lz4cat_piece(&lc, comp, (size_t)clen)) == 1) {
			rc = 1;
			goto out;
		}
		if (r == -1) {
			if (errno == EINVAL) {
				snprintf(errbuf, errlen, "LZ4 made a block "
				    "this cannot join");
				goto out;
			}
			goto fail_errno;
		}
		done += got;
		cur ^= 1;
	}
	/* the last sequence: the held literals */
	if (lz4cat_seq(&lc, 0, lc.lc_pend, lc.lc_plen, NULL, 0, NULL, 0) ==
	    -1)
		goto fail_errno;
	*out_len = lc.lc_out.total;
	if (bufw_finish(&lc.lc_out, 1) == -1)
		goto fail_errno;
	rc = 0;
	goto out;
fail_errno:
	snprintf(errbuf, errlen, "compressing the snapshot: %s",
	    strerror(errno));
out:
	if (rc != 0) {
		bufw_abort(&lc.lc_out);
		unlinkat(dirfd, SNAP_TMP_LZ4, 0);
	}
	if (fd != -1)
		close(fd);
	LZ4_freeStream(ls);
	free(in[0]);
	free(in[1]);
	free(comp);
	free(lc.lc_pend);
	return rc;
}

int
snap_write(const char *dir, const char *base, struct snap_fold *f,
    uint64_t ts, int compress, uint64_t max_lz4, const volatile int *cancel,
    struct snap_write_result *res, char *errbuf, size_t errlen)
{
	struct snap_src *src = NULL;
	struct bufw body, frames;
	uint8_t hdr[SNAP_HEADER_LEN], eh[SNAP_ENTRY_FIXED], *fbuf = NULL;
	size_t nsrc = 0, fcap = 0;
	uint64_t bts, bcount;
	char name[64], err[512];
	int dirfd = f->f_dirfd, r;

	memset(res, 0, sizeof(*res));
	memset(&body, 0, sizeof(body));
	memset(&frames, 0, sizeof(frames));
	body.fd = frames.fd = -1;
	err[0] = '\0';

	if ((src = calloc(f->f_runs + 2, sizeof(*src))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < f->f_runs + 2; i++)
		src[i].s_fd = -1;
	if (base != NULL) {
		src[0].s_kind = 0;
		/* read as a stream, compressed or not */
		if ((src[0].s_base = snap_reader_open(base, 0, &bts, &bcount,
		    err, sizeof(err))) == NULL)
			goto fail;
		nsrc = 1;
	}
	for (unsigned i = 0; i < f->f_runs; i++, nsrc++) {
		snprintf(name, sizeof(name), SNAP_TMP_RUN, i);
		src[nsrc].s_kind = 1;
		if ((src[nsrc].s_fd = openat(dirfd, name, O_RDONLY |
		    O_CLOEXEC)) == -1 ||
		    bufr_init_fd(&src[nsrc].s_run, src[nsrc].s_fd) == -1) {
			snprintf(err, sizeof(err), "%s: %s", name,
			    strerror(errno));
			goto fail;
		}
	}
	src[nsrc].s_kind = 2;
	if ((src[nsrc].s_vec = snap_fold_sorted(f)) == NULL) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	src[nsrc].s_n = f->f_count;
	nsrc++;
	for (size_t i = 0; i < nsrc; i++)
		if (snap_src_next(&src[i], err, sizeof(err)) == -1)
			goto fail;

	if (bufw_open(&body, dirfd, SNAP_TMP_BODY) == -1 ||
	    bufw_open(&frames, dirfd, SNAP_TMP_FRAMES) == -1) {
		snprintf(err, sizeof(err), "%s: %s", dir, strerror(errno));
		goto fail;
	}
	memcpy(hdr, SNAP_MAGIC, 8);
	le32(hdr + 8, SNAP_VERSION);
	le64(hdr + 12, ts);
	le64(hdr + 20, 0);	/* the count, written at the end */
	if (bufw_put(&body, hdr, sizeof(hdr)) == -1)
		goto fail_io;

	for (;;) {
		const uint8_t *key = NULL, *val = NULL;
		uint32_t klen = 0, vlen = 0;
		uint64_t exp = SNAP_NO_EXPIRY;
		int present = 0, m = -1;

		if (cancel != NULL && *cancel) {
			snprintf(err, sizeof(err), "cancelled");
			goto fail;
		}
		for (size_t i = 0; i < nsrc; i++)
			if (src[i].s_have && (m == -1 || snap_key_cmp(
			    src[i].s_key, src[i].s_klen, src[m].s_key,
			    src[m].s_klen) < 0))
				m = (int)i;
		if (m == -1)
			break;
		key = src[m].s_key;
		klen = src[m].s_klen;
		/* oldest source first: the base, the runs, the table */
		for (size_t i = 0; i < nsrc; i++) {
			if (!src[i].s_have || snap_key_cmp(src[i].s_key,
			    src[i].s_klen, key, klen) != 0)
				continue;
			switch (src[i].s_type) {
			case CHG_SET:
				present = 1;
				val = src[i].s_val;
				vlen = src[i].s_vlen;
				exp = src[i].s_expire;
				break;
			case CHG_DEL:
				present = 0;
				break;
			case CHG_EXPIRE:
				if (present)
					exp = src[i].s_expire;
				break;
			}
		}
		if (present && exp != SNAP_NO_EXPIRY && exp < ts)
			res->wr_dropped_expired++;
		else if (present) {
			struct fcw2_record rec;
			size_t need, flen;

			le32(eh, klen);
			le32(eh + 4, vlen);
			le64(eh + 8, exp);
			if (bufw_put(&body, eh, sizeof(eh)) == -1 ||
			    bufw_put(&body, key, klen) == -1 ||
			    (vlen > 0 && bufw_put(&body, val, vlen) == -1))
				goto fail_io;
			memset(&rec, 0, sizeof(rec));
			rec.op = FCW2_OP_SET;
			rec.key = key;
			rec.key_len = klen;
			rec.value = val;
			rec.value_len = vlen;
			rec.timestamp_ms = ts;
			rec.expire_at_ms = exp == SNAP_NO_EXPIRY || exp >
			    INT64_MAX ? -1 : (int64_t)exp;
			need = fcw2_encoded_max(&rec);
			if (need > fcap) {
				uint8_t *nb = realloc(fbuf, need);

				if (nb == NULL) {
					snprintf(err, sizeof(err),
					    "out of memory");
					goto fail;
				}
				fbuf = nb;
				fcap = need;
			}
			flen = fcw2_encode(&rec, compress == SNAP_COMPRESS_LZ4,
			    fbuf, fcap);
			if (flen == 0) {
				snprintf(err, sizeof(err), "cannot encode the "
				    "SET frame of a %u-byte key", klen);
				goto fail;
			}
			if (bufw_put(&frames, fbuf, flen) == -1)
				goto fail_io;
			res->wr_entries++;
		}
		/* advance every source at this key (the key points into m) */
		for (size_t i = 0; i < nsrc; i++) {
			if ((int)i == m || !src[i].s_have ||
			    snap_key_cmp(src[i].s_key, src[i].s_klen, key,
			    klen) != 0)
				continue;
			if (snap_src_next(&src[i], err, sizeof(err)) == -1)
				goto fail;
		}
		if (snap_src_next(&src[m], err, sizeof(err)) == -1)
			goto fail;
	}
	res->wr_body_bytes = body.total;
	res->wr_frames_bytes = frames.total;
	if (bufw_flush(&body) == -1)
		goto fail_io;
	le64(hdr, res->wr_entries);
	if (pwrite(body.fd, hdr, 8, 20) != 8)
		goto fail_io;
	if (bufw_finish(&body, 1) == -1 || bufw_finish(&frames, 1) == -1)
		goto fail_io;
	res->wr_file_bytes = res->wr_body_bytes;
	/* the changes are merged: their memory goes before compressing */
	for (size_t i = 0; i < nsrc; i++)
		if (src[i].s_kind == 2) {
			free(src[i].s_vec);
			src[i].s_vec = NULL;
		}
	snap_fold_clear(f);
	(void)max_lz4;
	if (compress == SNAP_COMPRESS_LZ4 &&
	    res->wr_body_bytes <= (uint64_t)LZ4_MAX_INPUT_SIZE) {
		/* the base's memory is no longer needed */
		if (base != NULL) {
			snap_reader_close(src[0].s_base);
			src[0].s_base = NULL;
		}
		if ((r = snap_compress(dirfd, res->wr_body_bytes,
		    &res->wr_file_bytes, err, sizeof(err))) == -1)
			goto fail;
		if (r == 0)
			res->wr_compressed = 1;
		else {
			res->wr_file_bytes = res->wr_body_bytes;
			log_warnx("%s: snapshot: more than %d bytes in a row "
			    "that LZ4 cannot compress; written uncompressed "
			    "(.bin)", dir, SNAP_LZ4_PENDING);
		}
	} else if (compress == SNAP_COMPRESS_LZ4)
		log_warnx("%s: snapshot: the body (%" PRIu64 " bytes) is over "
		    "the %d bytes an LZ4 block can hold; written "
		    "uncompressed (.bin)", dir, res->wr_body_bytes,
		    LZ4_MAX_INPUT_SIZE);
	goto out;
fail_io:
	snprintf(err, sizeof(err), "%s: writing the snapshot: %s", dir,
	    strerror(errno));
fail:
	bufw_abort(&body);
	bufw_abort(&frames);
	snap_unlink_tmp(dirfd);
out:
	for (size_t i = 0; i < nsrc; i++) {
		if (src[i].s_kind == 0)
			snap_reader_close(src[i].s_base);
		else if (src[i].s_kind == 1) {
			bufr_free(&src[i].s_run);
			if (src[i].s_fd != -1)
				close(src[i].s_fd);
		} else
			free(src[i].s_vec);
		free(src[i].s_prev);
	}
	free(src);
	free(fbuf);
	if (err[0] != '\0') {
		snprintf(errbuf, errlen, "%s", err);
		return -1;
	}
	return 0;
}

/* ---- the directory: leftovers, superseded snapshots --------------------- */

static int
snap_is_tmp(const char *name)
{
	size_t n = strlen(name);

	return strncmp(name, SNAP_TMP_PREFIX, strlen(SNAP_TMP_PREFIX)) == 0 &&
	    n > 4 && strcmp(name + n - 4, ".tmp") == 0;
}

/* walrelay-frames-{ts}.fcw2: 0 and ts, or -1. */
static int
snap_frames_parse(const char *name, uint64_t *ts)
{
	char buf[SNAP_NAME_MAX];
	uint64_t v = 0;
	const char *p;

	if (strncmp(name, SNAP_FRAMES_PREFIX, strlen(SNAP_FRAMES_PREFIX)) != 0)
		return -1;
	p = name + strlen(SNAP_FRAMES_PREFIX);
	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (strcmp(p, ".fcw2") != 0)
		return -1;
	snap_frames_name(buf, sizeof(buf), v);
	if (strcmp(buf, name) != 0)
		return -1;	/* leading zeros: not ours */
	*ts = v;
	return 0;
}

struct snap_dirent {
	char		*d_name;
	uint64_t	 d_ts;
	int		 d_frames;	/* a frames file (else a snapshot) */
};

static int
snap_dirent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct snap_dirent *)a)->d_name,
	    ((const struct snap_dirent *)b)->d_name);
}

static void
snap_dirents_free(struct snap_dirent *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].d_name);
	free(v);
}

/* Snapshots and frames files of dir, sorted by name; temporaries removed. */
static int
snap_dir_list(int dirfd, const char *dir, struct snap_dirent **out,
    size_t *nout, char *errbuf, size_t errlen)
{
	struct snap_dirent *v = NULL, *nv;
	struct dirent *de;
	size_t n = 0, cap = 0;
	uint64_t ts;
	DIR *d;
	int fd, lz4, frames;

	if ((fd = dup(dirfd)) == -1 || (d = fdopendir(fd)) == NULL) {
		snprintf(errbuf, errlen, "%s: %s", dir, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		if (snap_is_tmp(de->d_name)) {
			if (unlinkat(dirfd, de->d_name, 0) == 0)
				log_info("%s/%s: removed a temporary file of an "
				    "interrupted snapshot", dir, de->d_name);
			continue;
		}
		if (snap_name_parse(de->d_name, &ts, &lz4) == 0)
			frames = 0;
		else if (snap_frames_parse(de->d_name, &ts) == 0)
			frames = 1;
		else
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL)
				goto oom;
			v = nv;
		}
		if ((v[n].d_name = strdup(de->d_name)) == NULL)
			goto oom;
		v[n].d_ts = ts;
		v[n].d_frames = frames;
		n++;
	}
	closedir(d);
	if (n > 0)
		qsort(v, n, sizeof(*v), snap_dirent_cmp);
	*out = v;
	*nout = n;
	return 0;
oom:
	closedir(d);
	snap_dirents_free(v, n);
	snprintf(errbuf, errlen, "out of memory");
	return -1;
}

static int
snap_has_frames(const struct snap_dirent *v, size_t n, uint64_t ts)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].d_frames && v[i].d_ts == ts)
			return 1;
	return 0;
}

/* 0 removed, -1 not (logged). */
static int
snap_remove(int dirfd, const char *dir, const char *name, const char *why)
{
	if (unlinkat(dirfd, name, 0) == -1 && errno != ENOENT) {
		log_warn("%s/%s: cannot remove (%s); tried again after the "
		    "next snapshot", dir, name, why);
		return -1;
	}
	log_info("%s/%s: removed (%s)", dir, name, why);
	return 0;
}

/*
 * Make the directory's snapshots agree with the newest one (newest, or
 * NULL when none is recorded): a snapshot of the relay's (it has a frames
 * file) that sorts after it was never recorded or is superseded, so it
 * goes; of the older ones, keep - 1 stay; frames files without their
 * snapshot go. Another program's snapshot that sorts after the newest is
 * reported: the cache would load it instead.
 */
static int
snap_dir_clean(int dirfd, const char *dir, const char *newest, unsigned keep,
    char *errbuf, size_t errlen)
{
	struct snap_dirent *v = NULL;
	size_t n = 0;
	unsigned kept = 1;
	uint64_t nts = 0;
	int nlz4, removed = 0;

	if (snap_dir_list(dirfd, dir, &v, &n, errbuf, errlen) == -1)
		return -1;
	if (newest != NULL && snap_name_parse(newest, &nts, &nlz4) == -1)
		newest = NULL;
	/* newest first */
	for (size_t k = n; k-- > 0;) {
		struct snap_dirent *e = &v[k];

		if (e->d_frames)
			continue;
		if (newest != NULL && strcmp(e->d_name, newest) == 0)
			continue;
		if (!snap_has_frames(v, n, e->d_ts)) {
			if (newest == NULL || strcmp(e->d_name, newest) > 0)
				log_warnx("%s/%s: a snapshot walrelay did not "
				    "write sorts after %s: the cache would "
				    "recover from it; move it away", dir,
				    e->d_name, newest ? newest :
				    "the segments");
			continue;
		}
		/*
		 * Its frames file goes once it is gone: a snapshot without
		 * one would look like another program's and stay for good.
		 */
		if (newest == NULL || strcmp(e->d_name, newest) > 0) {
			if (snap_remove(dirfd, dir, e->d_name, newest == NULL ?
			    "a snapshot never recorded in the metadata" :
			    "it would sort after the newest snapshot") == 0)
				e->d_ts = UINT64_MAX;	/* its frames go too */
			removed = 1;
		} else if (kept < keep)
			kept++;
		else {
			if (snap_remove(dirfd, dir, e->d_name, "beyond "
			    "snapshot-keep") == 0)
				e->d_ts = UINT64_MAX;
			removed = 1;
		}
	}
	/* frames files whose snapshot is gone */
	for (size_t i = 0; i < n; i++) {
		int found = 0;

		if (!v[i].d_frames)
			continue;
		if (newest != NULL && v[i].d_ts == nts)
			continue;
		for (size_t j = 0; j < n; j++)
			if (!v[j].d_frames && v[j].d_ts == v[i].d_ts &&
			    (newest == NULL || strcmp(v[j].d_name, newest) !=
			    0))
				found = 1;
		if (!found) {
			snap_remove(dirfd, dir, v[i].d_name, "its snapshot is "
			    "gone");
			removed = 1;
		}
	}
	snap_dirents_free(v, n);
	if (removed && fsync(dirfd) == -1) {
		snprintf(errbuf, errlen, "%s: fsync: %s", dir, strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- the snapshotter --------------------------------------------------- */

struct snap_seg {
	char		*sg_name;
	uint64_t	 sg_base;
	uint64_t	 sg_end;
	uint64_t	 sg_bytes;
};

struct snap_job {
	struct snap_seg	*j_segs;
	size_t		 j_nsegs;
	size_t		 j_ncover;	/* the first ones are folded */
	uint64_t	 j_covered;
	struct segstore_snapmeta j_prev;
	/* results */
	int		 j_ok;
	char		 j_err[1024];
	struct snapshot_info j_info;
	struct snap_write_result j_res;
	uint64_t	 j_records;
	uint64_t	 j_late;
	unsigned	 j_runs;
	uint64_t	 j_ms;
};

struct snapshotter {
	struct snapshot_config	 sn_cf;
	char			*sn_dir;
	int			 sn_dirfd;
	int			 sn_enabled;
	int			 sn_broken;	/* cannot write snapshots */
	struct segstore		*sn_store;
	struct event		*sn_done_ev;
	pthread_t		 sn_thread;
	int			 sn_running;
	volatile int		 sn_cancel;
	struct snap_job		*sn_job;
	int			 sn_have;
	struct snapshot_info	 sn_info;
	uint64_t		 sn_last_ms;	/* monotonic: last job's end */
	uint64_t		 sn_taken;
	uint64_t		 sn_failed;
	unsigned		 sn_failing;	/* failed jobs in a row */
	uint64_t		 sn_late;
	uint64_t		 sn_job_ms;
};

static void
snap_job_free(struct snap_job *j)
{
	if (j == NULL)
		return;
	for (size_t i = 0; i < j->j_nsegs; i++)
		free(j->j_segs[i].sg_name);
	free(j->j_segs);
	free(j);
}

/* Fold one sealed segment, checking that it holds exactly its frames. */
static int
snap_job_fold_seg(struct snapshotter *sn, struct snap_job *j,
    struct snap_fold *f, const struct snap_seg *sg, uint64_t *min_ts,
    uint64_t *max_ts, int fold)
{
	struct scan sc;
	struct scan_event ev;
	uint64_t frames = 0;
	char err[512];
	int fd, rc = -1;

	char zname[PATH_MAX];
	int zst = scan_is_zstd_name(sg->sg_name);

	if ((fd = openat(sn->sn_dirfd, sg->sg_name, O_RDONLY | O_CLOEXEC)) ==
	    -1 && errno == ENOENT && !zst) {
		/* the archive tier compressed it meanwhile (archive.h) */
		snprintf(zname, sizeof(zname), "%s.zst", sg->sg_name);
		fd = openat(sn->sn_dirfd, zname, O_RDONLY | O_CLOEXEC);
		zst = 1;
	}
	if (fd == -1) {
		snprintf(j->j_err, sizeof(j->j_err), "%s/%s: %s", sn->sn_dir,
		    sg->sg_name, strerror(errno));
		return -1;
	}
	scan_init(&sc, sn->sn_cf.sc_max_frame, 0, 1);
	if (zst) {
		if (scan_start_zstd(&sc, fd) == -1) {
			snprintf(j->j_err, sizeof(j->j_err), "out of memory");
			goto out;
		}
	} else
		scan_start(&sc, fd);
	for (;;) {
		if (sn->sn_cancel) {
			snprintf(j->j_err, sizeof(j->j_err), "cancelled");
			goto out;
		}
		if (scan_next(&sc, &ev, err, sizeof(err)) == -1) {
			snprintf(j->j_err, sizeof(j->j_err), "%s/%s: %s",
			    sn->sn_dir, sg->sg_name, err);
			goto out;
		}
		if (ev.ev_type == SCAN_END)
			break;
		if (ev.ev_type != SCAN_FRAME) {
			if (!fold)
				break;	/* the segment being written */
			snprintf(j->j_err, sizeof(j->j_err), "%s/%s: %s at "
			    "offset %" PRIu64 ": a sealed segment must be "
			    "whole to be folded into a snapshot", sn->sn_dir,
			    sg->sg_name, ev.ev_type == SCAN_BAD ?
			    fcw2_strerror(ev.ev_status) : "incomplete frame",
			    ev.ev_offset);
			goto out;
		}
		if (!fold) {
			/* the oldest record the cache must replay after it */
			if (ev.ev_rec.timestamp_ms < *min_ts)
				*min_ts = ev.ev_rec.timestamp_ms;
			frames++;
			continue;
		}
		if (ev.ev_rec.timestamp_ms > *max_ts)
			*max_ts = ev.ev_rec.timestamp_ms;
		if (j->j_prev.sm_valid &&
		    ev.ev_rec.timestamp_ms < j->j_prev.sm_ts)
			j->j_late++;
		if (snap_fold_apply(f, &ev.ev_rec, err, sizeof(err)) == -1) {
			snprintf(j->j_err, sizeof(j->j_err), "%s/%s: %s",
			    sn->sn_dir, sg->sg_name, err);
			goto out;
		}
		frames++;
		if (frames > sg->sg_end - sg->sg_base)
			break;
	}
	if (fold && frames != sg->sg_end - sg->sg_base) {
		snprintf(j->j_err, sizeof(j->j_err), "%s/%s: %" PRIu64
		    " frames where the store counts %" PRIu64, sn->sn_dir,
		    sg->sg_name, frames, sg->sg_end - sg->sg_base);
		goto out;
	}
	rc = 0;
out:
	scan_free(&sc);
	close(fd);
	return rc;
}

static void *
snap_job_main(void *arg)
{
	struct snapshotter *sn = arg;
	struct snap_job *j = sn->sn_job;
	struct snap_fold *f = NULL;
	struct segstore_snapmeta sm;
	uint64_t min_ts = UINT64_MAX, max_ts = 0, ts, t0 = clock_mono_ms();
	char base[PATH_MAX], name[SNAP_NAME_MAX], fname[SNAP_NAME_MAX];
	char err[512];
	int renamed = 0, fnamed = 0, prio, rc;
	pid_t tid = (pid_t)syscall(SYS_gettid);

	prctl(PR_SET_NAME, "wr-snapshot", 0, 0, 0);	/* top -H, tests/fault */

	/* Linux: a thread's own nice value; ingest and fanout go first */
	errno = 0;
	prio = getpriority(PRIO_PROCESS, (id_t)tid);
	if (errno == 0 && setpriority(PRIO_PROCESS, (id_t)tid,
	    prio + SNAP_JOB_NICE > 19 ? 19 : prio + SNAP_JOB_NICE) == -1)
		log_debug("%s: snapshot: cannot lower the job's priority: %s",
		    sn->sn_dir, strerror(errno));
#ifdef SYS_ioprio_set
	/*
	 * And its disk I/O: the lowest best-effort level (class 2, level 7),
	 * so the store's writes and fsyncs go first on a busy disk.
	 */
	if (syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, (int)tid,
	    (2 << 13) | 7) == -1)
		log_debug("%s: snapshot: cannot lower the job's I/O priority: "
		    "%s", sn->sn_dir, strerror(errno));
#endif
	if ((f = snap_fold_new(sn->sn_dir, sn->sn_cf.sc_memory / 2, err,
	    sizeof(err))) == NULL) {
		snprintf(j->j_err, sizeof(j->j_err), "%s", err);
		goto done;
	}
	for (size_t i = 0; i < j->j_ncover; i++)
		if (snap_job_fold_seg(sn, j, f, &j->j_segs[i], &min_ts, &max_ts,
		    1) == -1)
			goto done;
	/* what the cache will replay after it must not be skipped */
	for (size_t i = j->j_ncover; i < j->j_nsegs; i++)
		if (snap_job_fold_seg(sn, j, f, &j->j_segs[i], &min_ts, &max_ts,
		    0) == -1)
			goto done;
	ts = max_ts;
	if (min_ts < ts)
		ts = min_ts;
	ts = ts > sn->sn_cf.sc_skew_ms ? ts - sn->sn_cf.sc_skew_ms : 0;
	/* never the previous name: undoing must not remove the base */
	if (j->j_prev.sm_valid && ts == j->j_prev.sm_ts && ts > 0)
		ts--;
	j->j_records = snap_fold_records(f);
	j->j_runs = snap_fold_runs(f);
	if (j->j_prev.sm_valid)
		snprintf(base, sizeof(base), "%s/%s", sn->sn_dir,
		    j->j_prev.sm_name);
	if (snap_write(sn->sn_dir, j->j_prev.sm_valid ? base : NULL, f, ts,
	    sn->sn_cf.sc_compress, sn->sn_cf.sc_memory / 2, &sn->sn_cancel,
	    &j->j_res, err, sizeof(err)) == -1) {
		snprintf(j->j_err, sizeof(j->j_err), "%s", err);
		goto done;
	}
	snap_fold_free(f);
	f = NULL;

	snap_name_format(name, sizeof(name), ts, j->j_res.wr_compressed);
	snap_frames_name(fname, sizeof(fname), ts);
	if (renameat(sn->sn_dirfd, SNAP_TMP_FRAMES, sn->sn_dirfd, fname) ==
	    -1) {
		snprintf(j->j_err, sizeof(j->j_err), "%s/%s: renaming the "
		    "snapshot's frames file into place: %s", sn->sn_dir, fname,
		    strerror(errno));
		goto done;
	}
	fnamed = 1;
	if (renameat(sn->sn_dirfd, j->j_res.wr_compressed ? SNAP_TMP_LZ4 :
	    SNAP_TMP_BODY, sn->sn_dirfd, name) == -1) {
		snprintf(j->j_err, sizeof(j->j_err), "%s/%s: renaming the "
		    "snapshot into place: %s", sn->sn_dir, name,
		    strerror(errno));
		goto done;
	}
	renamed = 1;
	unlinkat(sn->sn_dirfd, SNAP_TMP_BODY, 0);
	if (fsync(sn->sn_dirfd) == -1) {
		snprintf(j->j_err, sizeof(j->j_err), "%s: fsync: %s",
		    sn->sn_dir, strerror(errno));
		goto done;
	}

	memset(&sm, 0, sizeof(sm));
	sm.sm_valid = 1;
	sm.sm_covered = j->j_covered;
	sm.sm_ts = ts;
	sm.sm_entries = j->j_res.wr_entries;
	snprintf(sm.sm_name, sizeof(sm.sm_name), "%s", name);
	if ((rc = segstore_record_snapshot(sn->sn_store, &sm, err,
	    sizeof(err))) != 0) {
		snprintf(j->j_err, sizeof(j->j_err), "%s", err);
		if (rc == -2)
			/*
			 * The metadata file on disk may name this snapshot
			 * (its rename is not known durable): the files stay,
			 * nothing is deleted; the next job or start settles it.
			 */
			renamed = fnamed = 0;
		goto done;
	}
	renamed = fnamed = 0;	/* recorded: it stays */

	j->j_info.si_covered = j->j_covered;
	j->j_info.si_ts = ts;
	j->j_info.si_entries = j->j_res.wr_entries;
	snprintf(j->j_info.si_name, sizeof(j->j_info.si_name), "%s", name);
	snprintf(j->j_info.si_frames, sizeof(j->j_info.si_frames), "%s",
	    fname);
	if (snap_dir_clean(sn->sn_dirfd, sn->sn_dir, name, sn->sn_cf.sc_keep,
	    err, sizeof(err)) == -1)
		log_warnx("snapshot: %s", err);
	/* the segments it covers leave the directory */
	segstore_compact(sn->sn_store, j->j_covered, 1);
	j->j_ok = 1;
done:
	if (renamed) {
		/* never recorded: undo, the previous snapshot stays newest */
		if (!j->j_prev.sm_valid || strcmp(name, j->j_prev.sm_name) != 0)
			unlinkat(sn->sn_dirfd, name, 0);
	}
	if (renamed || fnamed) {
		unlinkat(sn->sn_dirfd, fname, 0);
		fsync(sn->sn_dirfd);
	}
	if (!j->j_ok)
		snap_unlink_tmp(sn->sn_dirfd);	/* the runs go with f */
	snap_fold_free(f);
	j->j_ms = clock_mono_ms() - t0;
	event_active(sn->sn_done_ev, 0, 0);
	return NULL;
}

static void
snap_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct snapshotter *sn = arg;
	struct snap_job *j = sn->sn_job;

	pthread_join(sn->sn_thread, NULL);
	sn->sn_running = 0;
	sn->sn_job = NULL;
	sn->sn_last_ms = clock_mono_ms();
	sn->sn_job_ms = j->j_ms;
	sn->sn_late += j->j_late;
	if (j->j_ok) {
		sn->sn_have = 1;
		sn->sn_info = j->j_info;
		sn->sn_taken++;
		log_info("%s/%s: snapshot of sequences 0 to %" PRIu64 " written "
		    "in %" PRIu64 " ms: %" PRIu64 " keys (%" PRIu64 " expired "
		    "dropped), %" PRIu64 " bytes (%" PRIu64 " uncompressed), "
		    "from %" PRIu64 " records in %zu segments%s, timestamp %"
		    PRIu64, sn->sn_dir, j->j_info.si_name,
		    j->j_covered - 1, j->j_ms, j->j_res.wr_entries,
		    j->j_res.wr_dropped_expired, j->j_res.wr_file_bytes,
		    j->j_res.wr_body_bytes, j->j_records, j->j_ncover,
		    j->j_runs ? " (through runs on disk)" : "",
		    j->j_info.si_ts);
		if (j->j_late > 0)
			log_warnx("%s: %" PRIu64 " records had a timestamp "
			    "older than the previous snapshot's (%" PRIu64
			    "): the cache's own recovery of this directory "
			    "skipped them until this snapshot; raise "
			    "snapshot-skew", sn->sn_dir, j->j_late,
			    j->j_prev.sm_ts);
		if (sn->sn_failing > 0)
			log_info("%s: snapshots work again after %u failed "
			    "jobs", sn->sn_dir, sn->sn_failing);
		sn->sn_failing = 0;
	} else if (sn->sn_cancel)
		log_info("%s: snapshot cancelled", sn->sn_dir);
	else if (sn->sn_failing++ == 0) {
		/* once per episode: the next jobs are counted */
		sn->sn_failed++;
		log_warnx("snapshot failed, the previous one stays and no "
		    "segment is removed for it; retried at the next period "
		    "(further failures are counted in "
		    "walrelay_snapshot_failures_total): %s", j->j_err);
	} else {
		sn->sn_failed++;
		log_debug("snapshot failed again (job %u in a row): %s",
		    sn->sn_failing, j->j_err);
	}
	snap_job_free(j);
}

struct snap_collect {
	struct snap_seg	*c_v;
	size_t		 c_n;
	size_t		 c_cap;
	int		 c_oom;
};

static void
snap_collect_cb(void *arg, const char *name, uint64_t base, uint64_t end,
    uint64_t bytes)
{
	struct snap_collect *c = arg;
	struct snap_seg *nv;

	if (c->c_oom)
		return;
	if (c->c_n == c->c_cap) {
		c->c_cap = c->c_cap ? c->c_cap * 2 : 16;
		if ((nv = realloc(c->c_v, c->c_cap * sizeof(*nv))) == NULL) {
			c->c_oom = 1;
			return;
		}
		c->c_v = nv;
	}
	if ((c->c_v[c->c_n].sg_name = strdup(name)) == NULL) {
		c->c_oom = 1;
		return;
	}
	c->c_v[c->c_n].sg_base = base;
	c->c_v[c->c_n].sg_end = end;
	c->c_v[c->c_n].sg_bytes = bytes;
	c->c_n++;
}

/* Start a job: force ignores the schedule. 0 started, -1 not. */
static int
snap_start(struct snapshotter *sn, int force)
{
	struct snap_collect c;
	struct segstore_state st;
	struct snap_job *j;
	uint64_t from, to, bytes = 0;
	size_t first, i;
	int due;

	if (sn->sn_broken || sn->sn_running)
		return -1;
	from = sn->sn_have ? sn->sn_info.si_covered : 0;
	memset(&c, 0, sizeof(c));
	segstore_foreach(sn->sn_store, snap_collect_cb, &c);
	if (c.c_oom || c.c_n < 2)
		goto skip;
	for (first = 0; first < c.c_n && c.c_v[first].sg_base < from; first++)
		;
	/* everything but the newest segment (the one being written) */
	to = c.c_v[c.c_n - 1].sg_base;
	if (first >= c.c_n - 1 || to <= from)
		goto skip;
	if (c.c_v[first].sg_base != from) {
		log_warnx("%s: snapshot: the segments start at sequence %"
		    PRIu64 ", not at %" PRIu64 " where the last snapshot ends; "
		    "snapshots stop", sn->sn_dir, c.c_v[first].sg_base, from);
		sn->sn_broken = 1;
		goto skip;
	}
	segstore_poll(sn->sn_store, &st);
	if (st.ss_durable < to || segstore_limit(sn->sn_store) < to)
		goto skip;
	for (i = first; i < c.c_n - 1; i++)
		bytes += c.c_v[i].sg_bytes;
	due = force || (sn->sn_cf.sc_every_ms != 0 && clock_mono_ms() -
	    sn->sn_last_ms >= sn->sn_cf.sc_every_ms) ||
	    (sn->sn_cf.sc_every_bytes != 0 && bytes >=
	    sn->sn_cf.sc_every_bytes);
	if (!due)
		goto skip;

	if ((j = calloc(1, sizeof(*j))) == NULL)
		goto skip;
	/* hand the job the segments from `from` on; the rest are freed */
	for (i = 0; i < first; i++)
		free(c.c_v[i].sg_name);
	memmove(c.c_v, c.c_v + first, (c.c_n - first) * sizeof(*c.c_v));
	j->j_segs = c.c_v;
	j->j_nsegs = c.c_n - first;
	j->j_ncover = j->j_nsegs - 1;
	j->j_covered = to;
	segstore_snapmeta(sn->sn_store, &j->j_prev);
	sn->sn_job = j;
	sn->sn_cancel = 0;
	if (pthread_create(&sn->sn_thread, NULL, snap_job_main, sn) != 0) {
		log_warnx("%s: snapshot: cannot start a thread", sn->sn_dir);
		sn->sn_job = NULL;
		snap_job_free(j);
		return -1;
	}
	sn->sn_running = 1;
	log_info("%s: snapshot of sequences %" PRIu64 " to %" PRIu64
	    " started (%" PRIu64 " bytes in %zu segments)", sn->sn_dir, from,
	    to - 1, bytes, j->j_ncover);
	return 0;
skip:
	for (i = 0; i < c.c_n; i++)
		free(c.c_v[i].sg_name);
	free(c.c_v);
	return -1;
}

void
snapshotter_tick(struct snapshotter *sn)
{
	if (sn != NULL && sn->sn_enabled)
		snap_start(sn, 0);
}

int
snapshotter_run(struct snapshotter *sn)
{
	return snap_start(sn, 1);
}

int
snapshotter_current(const struct snapshotter *sn, struct snapshot_info *si)
{
	if (sn == NULL || !sn->sn_have)
		return 0;
	*si = sn->sn_info;
	return 1;
}

void
snapshotter_status(const struct snapshotter *sn, struct snapshotter_status *st)
{
	memset(st, 0, sizeof(*st));
	if (sn == NULL)
		return;
	st->st_enabled = sn->sn_enabled && !sn->sn_broken;
	st->st_running = sn->sn_running;
	st->st_have = sn->sn_have;
	st->st_info = sn->sn_info;
	st->st_taken = sn->sn_taken;
	st->st_failed = sn->sn_failed;
	st->st_late_records = sn->sn_late;
	st->st_last_ms = sn->sn_job_ms;
}

struct snapshotter *
snapshotter_open(const struct snapshot_config *cf, struct segstore *store,
    struct event_base *base, char *errbuf, size_t errlen)
{
	struct snapshotter *sn;
	struct segstore_snapmeta sm;
	struct segstore_state st;
	struct stat sb;
	uint64_t ts;
	int lz4;

	if ((sn = calloc(1, sizeof(*sn))) == NULL ||
	    (sn->sn_dir = strdup(cf->sc_dir)) == NULL) {
		free(sn);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	sn->sn_dirfd = -1;
	sn->sn_cf = *cf;
	sn->sn_cf.sc_dir = sn->sn_dir;
	if (sn->sn_cf.sc_keep == 0)
		sn->sn_cf.sc_keep = 1;
	if (sn->sn_cf.sc_max_frame == 0)
		sn->sn_cf.sc_max_frame = FCW2_DEFAULT_MAX_FRAME;
	sn->sn_enabled = cf->sc_every_ms != 0 || cf->sc_every_bytes != 0;
	sn->sn_last_ms = clock_mono_ms();
	sn->sn_store = store;
	if ((sn->sn_dirfd = open(sn->sn_dir, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1) {
		snprintf(errbuf, errlen, "%s: %s", sn->sn_dir, strerror(errno));
		goto fail;
	}
	if ((sn->sn_done_ev = event_new(base, -1, 0, snap_done_cb, sn)) ==
	    NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}

	segstore_snapmeta(store, &sm);
	if (sm.sm_valid && (snap_name_parse(sm.sm_name, &ts, &lz4) == -1 ||
	    fstatat(sn->sn_dirfd, sm.sm_name, &sb, 0) == -1)) {
		log_error("%s: the snapshot recorded in the metadata, %s, is "
		    "missing: frames before %" PRIu64 " can no longer be "
		    "rebuilt from this directory, and no further snapshot "
		    "is written", sn->sn_dir, sm.sm_name, sm.sm_covered);
		sn->sn_broken = 1;
		sm.sm_valid = 0;
	}
	if (snap_dir_clean(sn->sn_dirfd, sn->sn_dir, sm.sm_valid ?
	    sm.sm_name : NULL, sn->sn_cf.sc_keep, errbuf, errlen) == -1)
		goto fail;
	if (sm.sm_valid) {
		sn->sn_have = 1;
		sn->sn_info.si_covered = sm.sm_covered;
		sn->sn_info.si_ts = sm.sm_ts;
		sn->sn_info.si_entries = sm.sm_entries;
		snprintf(sn->sn_info.si_name, sizeof(sn->sn_info.si_name), "%s",
		    sm.sm_name);
		snap_frames_name(sn->sn_info.si_frames,
		    sizeof(sn->sn_info.si_frames), sm.sm_ts);
		/* completes a compaction a stop interrupted */
		segstore_compact(store, sm.sm_covered, sn->sn_enabled &&
		    !sn->sn_broken);
		log_info("%s/%s: snapshot of sequences 0 to %" PRIu64 " (%"
		    PRIu64 " keys)", sn->sn_dir, sm.sm_name, sm.sm_covered - 1,
		    sm.sm_entries);
	} else if (sn->sn_enabled && !sn->sn_broken) {
		segstore_poll(store, &st);
		if (st.ss_earliest > 0) {
			log_error("%s: snapshots need the stream from sequence "
			    "0, and this store starts at %" PRIu64 " (older "
			    "segments were deleted): no snapshot is written",
			    sn->sn_dir, st.ss_earliest);
			sn->sn_broken = 1;
		} else
			segstore_compact(store, 0, 1);	/* holds retention */
	}
	return sn;
fail:
	if (sn->sn_dirfd != -1)
		close(sn->sn_dirfd);
	free(sn->sn_dir);
	free(sn);
	return NULL;
}

void
snapshotter_close(struct snapshotter *sn)
{
	if (sn == NULL)
		return;
	if (sn->sn_running) {
		sn->sn_cancel = 1;
		pthread_join(sn->sn_thread, NULL);
		sn->sn_running = 0;
		snap_job_free(sn->sn_job);
	}
	event_free(sn->sn_done_ev);
	close(sn->sn_dirfd);
	free(sn->sn_dir);
	free(sn);
}
