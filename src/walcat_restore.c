/*
 * walcat_restore.c: `walcat restore`, point-in-time restore of a cache's
 * WAL directory.
 *
 *   walcat restore [--until-seq S | --until-time T] [--force] SOURCE OUTDIR
 *
 * SOURCE is a relay's data directory (raw .wal and archived .wal.zst
 * segments) or a relay's address (FCWAL-SUB/1 from 0 with resync=1, or
 * from earliest when it has no snapshot, with a token and TLS as `walcat
 * repair` takes them). Every frame is checked on the way
 * (its crc, which covers every byte; with --check-records the record
 * inside too, as the relay did when it stored it); the frames are written
 * byte for byte into
 * raw segment files named after their first sequence, as the cache's own
 * recovery reads them.
 *
 * Files are written as NAME.wal.part, fdatasynced and renamed to NAME.wal
 * once complete, so an interrupted restore leaves only whole files the
 * cache can read (a prefix of the stream) and .part files to delete.
 *
 * --until-time T keeps every frame up to the last one, in stream order,
 * whose record timestamp is at or before T: no mutation at or before T is
 * left out. The cache's shards interleave, so some frames before that
 * point carry later timestamps: the summary says how many.
 *
 * When the frames before some sequence C are gone from the source and a
 * snapshot holds their state (FCSNAP1, the cache's format: a data
 * directory's snapshot recorded in walrelay.meta, or a relay's full
 * resync), OUTDIR gets that snapshot plus the frames from C on: the
 * cache's recovery (the newest snapshot-* by name, then every .wal,
 * skipping records older than the snapshot's timestamp) rebuilds the
 * state. A cut before C - 1 cannot be rebuilt and is refused. The
 * snapshot is written as restore-NAME.part (a name the cache never
 * loads) and renamed before the segments.
 */
#include "autoconfig.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lz4.h>
#include <xxhash.h>
#include <zstd.h>

#include "archive.h"
#include "clock.h"
#include "config.h"
#include "fcw2.h"
#include "fdio.h"
#include "handshake.h"
#include "scan.h"
#include "segment.h"
#include "snapshot.h"
#include "tls.h"
#include "walcat.h"

#define RESTORE_WBUF		(4u << 20)
#define RESTORE_NBUF		4	/* buffers between reader and writer */
#define RESTORE_SEG_BYTES	(64ull << 20)
#define RESTORE_PROGRESS_NS	200000000LL
#define RESTORE_EXIT_BAD	2	/* a frame failed verification */
#define RESTORE_META		"walrelay.meta"
#define RESTORE_META_MAX	4096
#define RESTORE_SNAP_PREFIX	"restore-"	/* + final name + ".part" */

struct rfile {
	char		 rf_name[64];	/* final name */
	uint64_t	 rf_bytes;
};

/*
 * The writer thread: the reading thread decompresses and checks frames
 * into RESTORE_WBUF buffers and hands each full one over; the writer
 * writes it (one write(2) per buffer), starts its writeback at once, and
 * fdatasyncs and closes a file when told to, so that decompression and
 * checking overlap the copy into the page cache and the disk.
 */
struct rjob {
	uint8_t		*rj_buf;	/* NULL: seal the file (fdatasync, close) */
	size_t		 rj_len;
	uint64_t	 rj_off;	/* where in the file it goes */
	int		 rj_fd;
	size_t		 rj_file;	/* index in rs_files, for errors */
};

struct rwriter {
	pthread_t	 rw_thread;
	int		 rw_started;
	pthread_mutex_t	 rw_mtx;
	pthread_cond_t	 rw_cond;	/* any change of the fields below */
	struct rjob	 rw_q[RESTORE_NBUF + 2];	/* ring */
	size_t		 rw_head;
	size_t		 rw_count;
	int		 rw_busy;	/* a job is being done */
	uint8_t		*rw_free[RESTORE_NBUF];
	size_t		 rw_nfree;
	int		 rw_stop;
	int		 rw_errno;	/* the first error, or 0 */
	size_t		 rw_errfile;
	const char	*rw_errop;
	uint64_t	 rw_writes;	/* write(2) calls */
};

struct restore {
	const char	*rs_out;
	const char	*rs_stream;	/* --stream: stream=NAME, or NULL */
	int		 rs_dirfd;
	uint64_t	 rs_until_seq;	/* UINT64_MAX: none */
	int		 rs_has_time;
	uint64_t	 rs_until_ms;
	size_t		 rs_max_frame;
	int		 rs_check_records;	/* decode every record too */
	uint64_t	 rs_seg_bytes;
	int		 rs_progress;
	long long	 rs_last_progress;
	int		 rs_progress_shown;
	uint64_t	 rs_source_end;	/* network: next= of the reply */

	/* output */
	struct rfile	*rs_files;
	size_t		 rs_nfiles;
	size_t		 rs_capfiles;
	int		 rs_fd;		/* the .part being written, or -1 */
	uint8_t		*rs_wbuf;	/* being filled (from rs_w) */
	size_t		 rs_wlen;
	struct rwriter	 rs_w;

	/* frames written */
	int		 rs_started;
	uint64_t	 rs_first;
	uint64_t	 rs_next;	/* sequence of the next frame */
	uint64_t	 rs_bytes;
	uint64_t	 rs_min_ts;
	uint64_t	 rs_max_ts;
	int		 rs_done;	/* reached --until-seq */

	/* --until-time: the cut so far */
	int		 rs_cut_valid;
	uint64_t	 rs_cut_seq;	/* the last frame kept */
	size_t		 rs_cut_file;
	uint64_t	 rs_cut_off;	/* its file ends here */
	uint64_t	 rs_cut_bytes;
	uint64_t	 rs_cut_min_ts;
	uint64_t	 rs_cut_max_ts;
	uint64_t	 rs_after_t;	/* frames so far with ts > T */
	uint64_t	 rs_cut_after_t;

	/*
	 * A snapshot the restore starts from (FCSNAP1, FCW2.md section 6):
	 * the frames before rs_snap_covered are gone from the source, the
	 * snapshot holds their state, and only frames from rs_snap_covered
	 * on are written after it.
	 */
	int		 rs_snap;	/* a snapshot file is written */
	int		 rs_based;	/* frames start at rs_snap_covered */
	char		 rs_snap_name[SNAP_NAME_MAX];	/* final name */
	uint64_t	 rs_snap_covered;
	uint64_t	 rs_snap_ts;
	uint64_t	 rs_snap_entries;
	uint64_t	 rs_snap_got;	/* entries received (network) */
	uint64_t	 rs_snap_bytes;
	int		 rs_snap_fd;	/* its .part being written, or -1 */
	uint8_t		*rs_snap_buf;
	size_t		 rs_snap_len;
};

static void
restore_usage(FILE *f)
{
	fprintf(f,
"usage: walcat restore [options] SOURCE OUTDIR\n"
"  Rebuild a cache's WAL directory: the frames of SOURCE, a relay's data\n"
"  directory (raw and archived segments) or a relay's address (read with\n"
"  FCWAL-SUB/1 from 0 with resync=1), verified and written byte for byte\n"
"  as raw .wal segments into OUTDIR, cut at the point asked for. When the\n"
"  early frames are gone and a snapshot covers them, OUTDIR also gets that\n"
"  snapshot (snapshot-TS.bin[.lz4]), so the cache recovers the state.\n"
"options:\n"
"  --until-seq S        stop after the frame with sequence S\n"
"  --until-time T       stop after the last frame (in stream order) whose\n"
"                       record timestamp is at or before T: milliseconds\n"
"                       since the epoch, or UTC YYYY-MM-DDTHH:MM:SS[.mmm]Z\n"
"  --force              restore into a directory that is not empty (its\n"
"                       segment and snapshot files are replaced)\n"
"  --segment-bytes N    start a new file at this size (default 64M)\n"
"  --check-records      also decode every record (record crc, LZ4, op), as\n"
"                       the cache's recovery will; by default the frame\n"
"                       crc is checked, which covers every byte\n"
"  --max-frame-bytes N  frame size cap (default 64M)\n"
"  --token-file FILE    the subscribe token (network source)\n"
"  --stream NAME        the stream to restore when the relay serves several\n"
"                       (stream=NAME in FCWAL-SUB/1; network source)\n"
"  --tls                connect with TLS (implied by the options below)\n"
"  --tls-ca FILE        CA certificates (PEM) (default: the system's)\n"
"  --tls-cert FILE      client certificate (PEM), for mTLS\n"
"  --tls-key FILE       its private key (PEM)\n"
"  --tls-server-name N  name checked in its certificate (default: its host)\n"
"exit status: 0 restored, 2 a frame failed verification, frames are\n"
"  missing or the point is inside what the snapshot covers, 3 usage or\n"
"  I/O error.\n");
}

/* T as milliseconds: digits, or an ISO 8601 UTC time. */
static int
restore_parse_time(const char *s, uint64_t *ms)
{
	struct tm tm;
	const char *p;
	char *end;
	unsigned long long v;
	unsigned frac = 0;
	int nd = 0;
	time_t t;

	if (s[0] >= '0' && s[0] <= '9' && strchr(s, '-') == NULL) {
		errno = 0;
		v = strtoull(s, &end, 10);
		if (errno != 0 || *end != '\0')
			return -1;
		*ms = v;
		return 0;
	}
	memset(&tm, 0, sizeof(tm));
	if ((p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL)
		return -1;
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, nd++)
			if (nd < 3)
				frac = frac * 10 + (unsigned)(*p - '0');
		while (nd < 3) {
			frac *= 10;
			nd++;
		}
	}
	if (strcmp(p, "Z") != 0 || (t = timegm(&tm)) == (time_t)-1 || t < 0)
		return -1;
	*ms = (uint64_t)t * 1000 + frac;
	return 0;
}

static void
restore_fmt_time(uint64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL) {
		snprintf(buf, len, "%" PRIu64, ms);
		return;
	}
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
}

static void
restore_progress(struct restore *rs, int force)
{
	long long now;

	if (!rs->rs_progress)
		return;
	now = (long long)clock_mono_ns();
	if (!force && now - rs->rs_last_progress < RESTORE_PROGRESS_NS)
		return;
	rs->rs_last_progress = now;
	fprintf(stderr, "\r\033[Kwalcat: restore: %" PRIu64 " frames, %" PRIu64
	    " MiB, at sequence %" PRIu64, rs->rs_started ? rs->rs_next -
	    rs->rs_first : 0, rs->rs_bytes >> 20, rs->rs_next);
	fflush(stderr);
	rs->rs_progress_shown = 1;
}

static void
restore_progress_clear(struct restore *rs)
{
	if (rs->rs_progress_shown) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
		rs->rs_progress_shown = 0;
	}
}

/* ---- the writer thread -------------------------------------------------- */

static void *
rwriter_main(void *arg)
{
	struct rwriter *w = arg;
	struct rjob j;
	int r, err;
	const char *op;

	pthread_mutex_lock(&w->rw_mtx);
	for (;;) {
		while (w->rw_count == 0 && !w->rw_stop)
			pthread_cond_wait(&w->rw_cond, &w->rw_mtx);
		if (w->rw_count == 0)
			break;
		j = w->rw_q[w->rw_head];
		w->rw_head = (w->rw_head + 1) % (RESTORE_NBUF + 2);
		w->rw_count--;
		w->rw_busy = 1;
		pthread_mutex_unlock(&w->rw_mtx);

		err = 0;
		op = "write";
		if (j.rj_buf != NULL) {
			/* after an error, buffers only go back to the pool */
			if (w->rw_errno == 0) {
				if (fdio_write_all(j.rj_fd, j.rj_buf,
				    j.rj_len) == -1)
					err = errno;
#ifdef SYNC_FILE_RANGE_WRITE
				/* start the writeback: fdatasync waits less */
				else
					(void)sync_file_range(j.rj_fd,
					    (off_t)j.rj_off, (off_t)j.rj_len,
					    SYNC_FILE_RANGE_WRITE);
#endif
			}
		} else {
			op = "fdatasync";
			r = 0;
			if (w->rw_errno == 0)
				while ((r = fdatasync(j.rj_fd)) == -1 &&
				    errno == EINTR)
					;
			if (r == -1)
				err = errno;
			if (close(j.rj_fd) == -1 && err == 0 &&
			    w->rw_errno == 0) {
				err = errno;
				op = "close";
			}
		}

		pthread_mutex_lock(&w->rw_mtx);
		if (j.rj_buf != NULL) {
			w->rw_free[w->rw_nfree++] = j.rj_buf;
			w->rw_writes++;
		}
		if (err != 0 && w->rw_errno == 0) {
			w->rw_errno = err;
			w->rw_errfile = j.rj_file;
			w->rw_errop = op;
		}
		w->rw_busy = 0;
		pthread_cond_broadcast(&w->rw_cond);
	}
	pthread_mutex_unlock(&w->rw_mtx);
	return NULL;
}

/* The pool of buffers and the thread. 0, or -1 (said why). */
static int
rwriter_start(struct restore *rs)
{
	struct rwriter *w = &rs->rs_w;
	int e;

	for (size_t i = 0; i < RESTORE_NBUF; i++) {
		if ((w->rw_free[i] = malloc(RESTORE_WBUF)) == NULL) {
			fprintf(stderr, "walcat: restore: out of memory\n");
			return -1;
		}
		w->rw_nfree++;
	}
	pthread_mutex_init(&w->rw_mtx, NULL);
	pthread_cond_init(&w->rw_cond, NULL);
	if ((e = pthread_create(&w->rw_thread, NULL, rwriter_main, w)) != 0) {
		fprintf(stderr, "walcat: restore: a thread: %s\n",
		    strerror(e));
		return -1;
	}
	w->rw_started = 1;
	rs->rs_wbuf = w->rw_free[--w->rw_nfree];
	return 0;
}

/* Say the writer's first error, if any. 0, or -1. */
static int
rwriter_error(struct restore *rs)
{
	struct rwriter *w = &rs->rs_w;

	if (w->rw_errno == 0)
		return 0;
	restore_progress_clear(rs);
	fprintf(stderr, "walcat: restore: %s/%s.part: %s: %s\n", rs->rs_out,
	    rs->rs_files[w->rw_errfile].rf_name, w->rw_errop,
	    strerror(w->rw_errno));
	return -1;
}

/*
 * Queue a job; with buf, take an empty buffer for rs_wbuf (waiting for
 * one). 0, or -1 once the writer failed (said why).
 */
static int
rwriter_submit(struct restore *rs, uint8_t *buf, size_t len)
{
	struct rwriter *w = &rs->rs_w;
	struct rjob *j;
	int err;

	pthread_mutex_lock(&w->rw_mtx);
	while (w->rw_count == RESTORE_NBUF + 2)
		pthread_cond_wait(&w->rw_cond, &w->rw_mtx);
	j = &w->rw_q[(w->rw_head + w->rw_count) % (RESTORE_NBUF + 2)];
	j->rj_buf = buf;
	j->rj_len = len;
	j->rj_off = rs->rs_files[rs->rs_nfiles - 1].rf_bytes - len;
	j->rj_fd = rs->rs_fd;
	j->rj_file = rs->rs_nfiles - 1;
	w->rw_count++;
	pthread_cond_broadcast(&w->rw_cond);
	if (buf != NULL) {
		while (w->rw_nfree == 0)
			pthread_cond_wait(&w->rw_cond, &w->rw_mtx);
		rs->rs_wbuf = w->rw_free[--w->rw_nfree];
	}
	err = w->rw_errno;
	pthread_mutex_unlock(&w->rw_mtx);
	return err != 0 ? rwriter_error(rs) : 0;
}

/* Wait until everything queued is done. 0, or -1 (said why). */
static int
rwriter_drain(struct restore *rs)
{
	struct rwriter *w = &rs->rs_w;
	int err;

	if (!w->rw_started)
		return 0;
	pthread_mutex_lock(&w->rw_mtx);
	while (w->rw_count > 0 || w->rw_busy)
		pthread_cond_wait(&w->rw_cond, &w->rw_mtx);
	err = w->rw_errno;
	pthread_mutex_unlock(&w->rw_mtx);
	return err != 0 ? rwriter_error(rs) : 0;
}

/* Drain, stop and free (every queued seal closes its file). */
static void
rwriter_stop(struct restore *rs)
{
	struct rwriter *w = &rs->rs_w;

	if (w->rw_started) {
		pthread_mutex_lock(&w->rw_mtx);
		w->rw_stop = 1;
		pthread_cond_broadcast(&w->rw_cond);
		pthread_mutex_unlock(&w->rw_mtx);
		pthread_join(w->rw_thread, NULL);
		pthread_mutex_destroy(&w->rw_mtx);
		pthread_cond_destroy(&w->rw_cond);
		w->rw_started = 0;
	}
	while (w->rw_nfree > 0)
		free(w->rw_free[--w->rw_nfree]);
	free(rs->rs_wbuf);
	rs->rs_wbuf = NULL;
}

static int
restore_flush(struct restore *rs)
{
	if (rs->rs_wlen == 0)
		return 0;
	if (rwriter_submit(rs, rs->rs_wbuf, rs->rs_wlen) == -1)
		return -1;
	rs->rs_wlen = 0;
	return 0;
}

/*
 * Finish the file being written: its last buffer, then fdatasync and
 * close on the writer thread (still .part; restore_finish waits for it).
 */
static int
restore_seal(struct restore *rs)
{
	if (rs->rs_fd == -1)
		return 0;
	if (restore_flush(rs) == -1)
		return -1;
	if (rwriter_submit(rs, NULL, 0) == -1) {
		rs->rs_fd = -1;
		return -1;
	}
	rs->rs_fd = -1;
	return 0;
}

static int
restore_new_file(struct restore *rs, uint64_t seq)
{
	struct rfile *rf;
	char part[80];

	if (restore_seal(rs) == -1)
		return -1;
	if (rs->rs_nfiles == rs->rs_capfiles) {
		size_t cap = rs->rs_capfiles ? rs->rs_capfiles * 2 : 16;

		if ((rf = realloc(rs->rs_files, cap * sizeof(*rf))) == NULL) {
			fprintf(stderr, "walcat: restore: out of memory\n");
			return -1;
		}
		rs->rs_files = rf;
		rs->rs_capfiles = cap;
	}
	rf = &rs->rs_files[rs->rs_nfiles];
	memset(rf, 0, sizeof(*rf));
	snprintf(rf->rf_name, sizeof(rf->rf_name), "segment-%020" PRIu64
	    "-%" PRIu64 ".wal", seq, clock_wall_ms());
	snprintf(part, sizeof(part), "%s.part", rf->rf_name);
	rs->rs_fd = openat(rs->rs_dirfd, part, O_WRONLY | O_CREAT | O_TRUNC |
	    O_CLOEXEC, 0644);
	if (rs->rs_fd == -1) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: %s/%s: %s\n", rs->rs_out,
		    part, strerror(errno));
		return -1;
	}
	rs->rs_nfiles++;
	return 0;
}

/*
 * The record timestamp of a frame whose crc was checked, without decoding
 * the whole record: at a fixed offset, or from the first bytes of an LZ4
 * payload. Returns 0, or -1 when the record cannot hold one.
 */
static int
restore_frame_ts(const uint8_t *p, size_t len, uint64_t *ts)
{
	const uint8_t *pl = p + FCW2_HEADER_LEN;
	size_t plen = len - FCW2_OVERHEAD;
	uint8_t head[FCW2_RECORD_FIXED];
	int n;

	if (len < FCW2_OVERHEAD)
		return -1;
	if (p[4] & FCW2_FLAG_LZ4) {
		if (plen <= 4 || plen - 4 > INT_MAX)
			return -1;
		n = LZ4_decompress_safe_partial((const char *)pl + 4,
		    (char *)head, (int)(plen - 4), FCW2_RECORD_FIXED,
		    FCW2_RECORD_FIXED);
		if (n < FCW2_RECORD_FIXED)
			return -1;
		pl = head;
	} else if (plen < FCW2_RECORD_FIXED)
		return -1;
	*ts = (uint64_t)pl[9] | (uint64_t)pl[10] << 8 |
	    (uint64_t)pl[11] << 16 | (uint64_t)pl[12] << 24 |
	    (uint64_t)pl[13] << 32 | (uint64_t)pl[14] << 40 |
	    (uint64_t)pl[15] << 48 | (uint64_t)pl[16] << 56;
	return 0;
}

/* ---- a snapshot to start from ------------------------------------------ */

static void
restore_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void
restore_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The snapshot's temporary name: it must not start with "snapshot-". */
static void
restore_snap_part(const struct restore *rs, char *buf, size_t len)
{
	snprintf(buf, len, RESTORE_SNAP_PREFIX "%s.part", rs->rs_snap_name);
}

static void
restore_snap_ioerr(struct restore *rs)
{
	char part[SNAP_NAME_MAX + 16];

	restore_snap_part(rs, part, sizeof(part));
	restore_progress_clear(rs);
	fprintf(stderr, "walcat: restore: %s/%s: %s\n", rs->rs_out, part,
	    strerror(errno));
}

/*
 * The state of the frames before covered comes from a snapshot: frames
 * before covered are not written, the restore counts from covered.
 */
static void
restore_snap_base(struct restore *rs, uint64_t covered)
{
	rs->rs_based = 1;
	rs->rs_snap_covered = covered;
	rs->rs_started = 1;
	rs->rs_first = rs->rs_next = covered;
	rs->rs_min_ts = UINT64_MAX;
	rs->rs_max_ts = 0;
}

/*
 * --until-seq must not ask for a point inside what the snapshot covers:
 * those frames are gone from src. 0, or -1 (said why).
 */
static int
restore_snap_reaches(struct restore *rs, const char *src)
{
	if (rs->rs_until_seq == UINT64_MAX || rs->rs_snap_covered == 0 ||
	    rs->rs_until_seq >= rs->rs_snap_covered - 1)
		return 0;
	restore_progress_clear(rs);
	fprintf(stderr, "walcat: restore: --until-seq %" PRIu64 " is inside "
	    "what the snapshot of %s covers (the state after sequence %" PRIu64
	    "), and the frames before sequence %" PRIu64 " are gone from it: "
	    "the earliest point it can restore is --until-seq %" PRIu64 "\n",
	    rs->rs_until_seq, src, rs->rs_snap_covered - 1,
	    rs->rs_snap_covered, rs->rs_snap_covered - 1);
	return -1;
}

static int
restore_snap_flush(struct restore *rs)
{
	if (rs->rs_snap_len == 0)
		return 0;
	if (fdio_write_all(rs->rs_snap_fd, rs->rs_snap_buf,
	    rs->rs_snap_len) == -1) {
		restore_snap_ioerr(rs);
		return -1;
	}
	rs->rs_snap_len = 0;
	return 0;
}

static int
restore_snap_put(struct restore *rs, const void *p, size_t len)
{
	if (rs->rs_snap_len + len > RESTORE_WBUF &&
	    restore_snap_flush(rs) == -1)
		return -1;
	if (len > RESTORE_WBUF) {
		if (fdio_write_all(rs->rs_snap_fd, p, len) == -1) {
			restore_snap_ioerr(rs);
			return -1;
		}
	} else {
		memcpy(rs->rs_snap_buf + rs->rs_snap_len, p, len);
		rs->rs_snap_len += len;
	}
	rs->rs_snap_bytes += len;
	return 0;
}

/*
 * One SET frame of a full resync (its record decoded): an entry of the
 * snapshot, which is written as snapshot-{ts}.bin, ts the record
 * timestamp every one of them carries. 0, or -1 (said why).
 */
static int
restore_snap_entry(struct restore *rs, const struct fcw2_record *rec,
    const char *addr)
{
	uint8_t h[SNAP_HEADER_LEN];
	char part[SNAP_NAME_MAX + 16];

	if (rec->op != FCW2_OP_SET) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: %s: snapshot entry %" PRIu64
		    " is not a SET frame\n", addr, rs->rs_snap_got);
		return -1;
	}
	if (rs->rs_snap_got == 0) {
		rs->rs_snap_ts = rec->timestamp_ms;
		snap_name_format(rs->rs_snap_name, sizeof(rs->rs_snap_name),
		    rs->rs_snap_ts, 0);
		restore_snap_part(rs, part, sizeof(part));
		if (rs->rs_snap_buf == NULL &&
		    (rs->rs_snap_buf = malloc(RESTORE_WBUF)) == NULL) {
			fprintf(stderr, "walcat: restore: out of memory\n");
			return -1;
		}
		if ((rs->rs_snap_fd = openat(rs->rs_dirfd, part, O_WRONLY |
		    O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) == -1) {
			restore_snap_ioerr(rs);
			return -1;
		}
		rs->rs_snap = 1;
		memcpy(h, SNAP_MAGIC, 8);	/* with its NUL */
		restore_le32(h + 8, SNAP_VERSION);
		restore_le64(h + 12, rs->rs_snap_ts);
		restore_le64(h + 20, rs->rs_snap_entries);
		if (restore_snap_put(rs, h, sizeof(h)) == -1)
			return -1;
	} else if (rec->timestamp_ms != rs->rs_snap_ts) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: %s: snapshot entry %" PRIu64
		    " has timestamp %" PRIu64 ", the first one %" PRIu64 "\n",
		    addr, rs->rs_snap_got, rec->timestamp_ms, rs->rs_snap_ts);
		return -1;
	}
	restore_le32(h, rec->key_len);
	restore_le32(h + 4, rec->value_len);
	restore_le64(h + 8, rec->expire_at_ms < 0 ? SNAP_NO_EXPIRY :
	    (uint64_t)rec->expire_at_ms);
	if (restore_snap_put(rs, h, SNAP_ENTRY_FIXED) == -1 ||
	    restore_snap_put(rs, rec->key, rec->key_len) == -1 ||
	    restore_snap_put(rs, rec->value, rec->value_len) == -1)
		return -1;
	rs->rs_snap_got++;
	return 0;
}

/* Make the snapshot being written durable (still under its .part name). */
static int
restore_snap_seal(struct restore *rs)
{
	int r;

	if (rs->rs_snap_fd == -1)
		return 0;
	if (restore_snap_flush(rs) == -1)
		return -1;
	while ((r = fdatasync(rs->rs_snap_fd)) == -1 && errno == EINTR)
		;
	if (r == -1 || close(rs->rs_snap_fd) == -1) {
		restore_snap_ioerr(rs);
		rs->rs_snap_fd = -1;
		return -1;
	}
	rs->rs_snap_fd = -1;
	return 0;
}

/*
 * The snapshot recorded in DIR/walrelay.meta (checksummed text, see
 * segment.c: a "snapshot <covered> <timestamp> <entries> <file>" line).
 * 1 and *sm, 0 when there is none (or no metadata), -1 (said why).
 */
static int
restore_meta_snapshot(const char *dir, struct segstore_snapmeta *sm)
{
	char path[PATH_MAX], buf[RESTORE_META_MAX + 1], *sum, *p;
	unsigned long long want, c, t, e;
	ssize_t n;
	size_t len = 0;
	int fd;

	memset(sm, 0, sizeof(*sm));
	snprintf(path, sizeof(path), "%s/%s", dir, RESTORE_META);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		if (errno == ENOENT)
			return 0;
		fprintf(stderr, "walcat: restore: %s: %s\n", path,
		    strerror(errno));
		return -1;
	}
	while (len < sizeof(buf) - 1 &&
	    (n = read(fd, buf + len, sizeof(buf) - 1 - len)) != 0) {
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			fprintf(stderr, "walcat: restore: %s: %s\n", path,
			    strerror(errno));
			close(fd);
			return -1;
		}
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	if ((sum = strstr(buf, "\nxxh64 ")) == NULL ||
	    sscanf(sum + 1, "xxh64 %16llx", &want) != 1 ||
	    want != (unsigned long long)XXH64(buf, (size_t)(sum + 1 - buf),
	    0)) {
		fprintf(stderr, "walcat: restore: %s: damaged (bad checksum)\n",
		    path);
		return -1;
	}
	sum[1] = '\0';
	if ((p = strstr(buf, "\nsnapshot ")) == NULL)
		return 0;
	if (sscanf(p + 1, "snapshot %llu %llu %llu %63s", &c, &t, &e,
	    sm->sm_name) != 4) {
		fprintf(stderr, "walcat: restore: %s: damaged (its snapshot "
		    "line)\n", path);
		return -1;
	}
	sm->sm_valid = 1;
	sm->sm_covered = c;
	sm->sm_ts = t;
	sm->sm_entries = e;
	return 1;
}

/*
 * Start from the snapshot sm of dir: check every entry of it, then copy it
 * byte for byte (it stays .bin or .bin.lz4) to its .part name. 0, or -1.
 */
static int
restore_snap_copy(struct restore *rs, const char *dir,
    const struct segstore_snapmeta *sm)
{
	struct snap_reader *sr;
	struct snap_entry e;
	char path[PATH_MAX], part[SNAP_NAME_MAX + 16], err[512];
	uint64_t ts, count, got = 0, fts;
	ssize_t n;
	int lz4, sfd = -1, r;

	snprintf(path, sizeof(path), "%s/%s", dir, sm->sm_name);
	if (strchr(sm->sm_name, '/') != NULL ||
	    snap_name_parse(sm->sm_name, &fts, &lz4) == -1) {
		fprintf(stderr, "walcat: restore: %s/%s names %s as its "
		    "snapshot: not a snapshot name\n", dir, RESTORE_META,
		    sm->sm_name);
		return -1;
	}
	if ((sr = snap_reader_open(path, 0, &ts, &count, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "walcat: restore: %s\n", err);
		return -1;
	}
	while ((r = snap_reader_next(sr, &e, err, sizeof(err))) == 1)
		got++;
	snap_reader_close(sr);
	if (r == -1) {
		fprintf(stderr, "walcat: restore: %s\n", err);
		return -1;
	}
	if (ts != sm->sm_ts || fts != ts || got != count ||
	    count != sm->sm_entries) {
		fprintf(stderr, "walcat: restore: %s: timestamp %" PRIu64
		    " and %" PRIu64 " entries, where %s/%s records %" PRIu64
		    " and %" PRIu64 "\n", path, ts, got, dir, RESTORE_META,
		    sm->sm_ts, sm->sm_entries);
		return -1;
	}
	snprintf(rs->rs_snap_name, sizeof(rs->rs_snap_name), "%s",
	    sm->sm_name);
	rs->rs_snap_ts = ts;
	rs->rs_snap_entries = count;
	restore_snap_part(rs, part, sizeof(part));
	if ((sfd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		fprintf(stderr, "walcat: restore: %s: %s\n", path,
		    strerror(errno));
		return -1;
	}
	if ((rs->rs_snap_fd = openat(rs->rs_dirfd, part, O_WRONLY | O_CREAT |
	    O_TRUNC | O_CLOEXEC, 0644)) == -1) {
		restore_snap_ioerr(rs);
		close(sfd);
		return -1;
	}
	rs->rs_snap = 1;
	while ((n = read(sfd, rs->rs_wbuf, RESTORE_WBUF)) != 0) {
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			fprintf(stderr, "walcat: restore: %s: %s\n", path,
			    strerror(errno));
			close(sfd);
			return -1;
		}
		if (fdio_write_all(rs->rs_snap_fd, rs->rs_wbuf,
		    (size_t)n) == -1) {
			restore_snap_ioerr(rs);
			close(sfd);
			return -1;
		}
		rs->rs_snap_bytes += (uint64_t)n;
	}
	close(sfd);
	return restore_snap_seal(rs);
}

/*
 * One verified frame with sequence seq (rec: its decoded record, or NULL
 * when only the frame was checked). Returns 0, 1 when the restore is
 * complete (--until-seq reached), or -1 (said why).
 */
static int
restore_frame(struct restore *rs, uint64_t seq, const uint8_t *p,
    size_t len, const struct fcw2_record *rec)
{
	struct rfile *rf;
	uint64_t ts;

	if (rec != NULL)
		ts = rec->timestamp_ms;
	else if (restore_frame_ts(p, len, &ts) == -1) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: frame %" PRIu64 " holds no "
		    "whole record header\n", seq);
		return -1;
	}

	if (rs->rs_done)
		return 1;
	if (rs->rs_based && seq < rs->rs_snap_covered)
		return 0;	/* in the snapshot */
	if (seq > rs->rs_until_seq) {
		rs->rs_done = 1;
		return 1;
	}
	if (!rs->rs_started) {
		rs->rs_started = 1;
		rs->rs_first = rs->rs_next = seq;
		rs->rs_min_ts = UINT64_MAX;
	} else if (seq != rs->rs_next) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: frames %" PRIu64 " to %" PRIu64
		    " are missing from the source\n", rs->rs_next, seq - 1);
		return -1;
	}
	if (rs->rs_fd == -1 || (rs->rs_files[rs->rs_nfiles - 1].rf_bytes > 0 &&
	    rs->rs_files[rs->rs_nfiles - 1].rf_bytes + len >
	    rs->rs_seg_bytes)) {
		if (restore_new_file(rs, seq) == -1)
			return -1;
	}
	rf = &rs->rs_files[rs->rs_nfiles - 1];
	if (rs->rs_wlen + len > RESTORE_WBUF && restore_flush(rs) == -1)
		return -1;
	if (len > RESTORE_WBUF) {
		/* a frame larger than a buffer: in order, from here */
		if (rwriter_drain(rs) == -1)
			return -1;
		if (fdio_write_all(rs->rs_fd, p, len) == -1) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s/%s.part: %s\n",
			    rs->rs_out, rf->rf_name, strerror(errno));
			return -1;
		}
	} else {
		/* an archived block is decompressed where its frames go */
		if (p != rs->rs_wbuf + rs->rs_wlen)
			memmove(rs->rs_wbuf + rs->rs_wlen, p, len);
		rs->rs_wlen += len;
	}
	rf->rf_bytes += len;
	rs->rs_bytes += len;
	rs->rs_next = seq + 1;
	if (ts < rs->rs_min_ts)
		rs->rs_min_ts = ts;
	if (ts > rs->rs_max_ts)
		rs->rs_max_ts = ts;
	if (rs->rs_has_time) {
		if (ts <= rs->rs_until_ms) {
			rs->rs_cut_valid = 1;
			rs->rs_cut_seq = seq;
			rs->rs_cut_file = rs->rs_nfiles - 1;
			rs->rs_cut_off = rf->rf_bytes;
			rs->rs_cut_bytes = rs->rs_bytes;
			rs->rs_cut_min_ts = rs->rs_min_ts;
			rs->rs_cut_max_ts = rs->rs_max_ts;
			rs->rs_cut_after_t = rs->rs_after_t;
		} else
			rs->rs_after_t++;
	}
	if (seq == rs->rs_until_seq) {
		rs->rs_done = 1;
		return 1;
	}
	restore_progress(rs, 0);
	return 0;
}

/*
 * The end: apply an --until-time cut, make every file durable under its
 * final name, fsync the directory. Returns 0, -1 (I/O error) or 1 (the
 * cut is inside what the snapshot covers; said why).
 */
static int
restore_finish(struct restore *rs)
{
	char part[SNAP_NAME_MAX + 16];
	size_t keep = rs->rs_nfiles;

	if (restore_seal(rs) == -1 || restore_snap_seal(rs) == -1 ||
	    rwriter_drain(rs) == -1)
		return -1;
	if (rs->rs_has_time && rs->rs_based && !rs->rs_cut_valid) {
		char t[80];

		restore_progress_clear(rs);
		restore_fmt_time(rs->rs_until_ms, t, sizeof(t));
		fprintf(stderr, "walcat: restore: no frame from sequence %"
		    PRIu64 " on (the first one after the snapshot) is stamped "
		    "at or before %s: that point is inside what the snapshot "
		    "covers, and the frames before sequence %" PRIu64 " are "
		    "gone from the source\n", rs->rs_snap_covered, t,
		    rs->rs_snap_covered);
		return 1;
	}
	if (rs->rs_has_time) {
		keep = rs->rs_cut_valid ? rs->rs_cut_file + 1 : 0;
		for (size_t i = keep; i < rs->rs_nfiles; i++) {
			snprintf(part, sizeof(part), "%s.part",
			    rs->rs_files[i].rf_name);
			if (unlinkat(rs->rs_dirfd, part, 0) == -1)
				goto ioerr;
		}
		if (rs->rs_cut_valid) {
			struct rfile *rf = &rs->rs_files[keep - 1];
			int fd, r;

			snprintf(part, sizeof(part), "%s.part", rf->rf_name);
			if ((fd = openat(rs->rs_dirfd, part, O_WRONLY |
			    O_CLOEXEC)) == -1)
				goto ioerr;
			r = ftruncate(fd, (off_t)rs->rs_cut_off);
			if (r == 0)
				r = fdatasync(fd);
			close(fd);
			if (r == -1)
				goto ioerr;
			rf->rf_bytes = rs->rs_cut_off;
			rs->rs_next = rs->rs_cut_seq + 1;
			rs->rs_bytes = rs->rs_cut_bytes;
			rs->rs_min_ts = rs->rs_cut_min_ts;
			rs->rs_max_ts = rs->rs_cut_max_ts;
			rs->rs_after_t = rs->rs_cut_after_t;
		} else
			rs->rs_started = 0;
		rs->rs_nfiles = keep;
	}
	/* the snapshot first: a prefix of these renames is a state too */
	if (rs->rs_snap) {
		restore_snap_part(rs, part, sizeof(part));
		if (renameat(rs->rs_dirfd, part, rs->rs_dirfd,
		    rs->rs_snap_name) == -1)
			goto ioerr;
	}
	for (size_t i = 0; i < rs->rs_nfiles; i++) {
		snprintf(part, sizeof(part), "%s.part", rs->rs_files[i].rf_name);
		if (renameat(rs->rs_dirfd, part, rs->rs_dirfd,
		    rs->rs_files[i].rf_name) == -1)
			goto ioerr;
	}
	if (fsync(rs->rs_dirfd) == -1)
		goto ioerr;
	return 0;
ioerr:
	restore_progress_clear(rs);
	fprintf(stderr, "walcat: restore: %s: %s\n", rs->rs_out,
	    strerror(errno));
	return -1;
}

/* ---- from a data directory --------------------------------------------- */

/* Buffers for restoring archived segments, reused from file to file. */
struct rarch {
	ZSTD_DCtx	*ra_dctx;
	uint8_t		*ra_zbuf;	/* a block's compressed bytes */
	size_t		 ra_zcap;
	uint8_t		*ra_big;	/* a block larger than a write buffer */
	size_t		 ra_bigcap;
};

static void
rarch_free(struct rarch *ra)
{
	ZSTD_freeDCtx(ra->ra_dctx);
	free(ra->ra_zbuf);
	free(ra->ra_big);
	memset(ra, 0, sizeof(*ra));
}

/* Make *buf hold at least len bytes. 0, or -1 (said why). */
static int
rarch_grow(uint8_t **buf, size_t *cap, size_t len)
{
	uint8_t *nb;

	if (*cap >= len)
		return 0;
	if ((nb = realloc(*buf, len)) == NULL) {
		fprintf(stderr, "walcat: restore: out of memory\n");
		return -1;
	}
	*buf = nb;
	*cap = len;
	return 0;
}

/*
 * The frames of an archived segment, block by block through its index:
 * each block is decompressed in one call straight into the write buffer,
 * where its frames are checked (frame crc, which covers every byte, so
 * zstd's XXH64 is skipped; records too with --check-records) and stay:
 * no copy between zstd and the write(2) of the buffer. A block is moved out of the write buffer only
 * when an output file ends inside it (the buffer then goes to the writer)
 * and decompressed elsewhere when it is larger than a buffer.
 * Returns 0 (every frame, or the cut was reached: rs_done), 1 when the
 * file has no valid index (the caller reads it as a stream of zstd
 * frames, which says what is wrong with it), -1 (I/O error, said) or
 * RESTORE_EXIT_BAD (a bad block or frame, said).
 */
static int
restore_archived(struct restore *rs, struct rarch *ra,
    struct fcw2_checker *chk, int fd, const char *path, uint64_t base)
{
	struct archive_index idx;
	struct fcw2_record rec;
	char err[512];
	int rc = RESTORE_EXIT_BAD, r;

	if (archive_index_read(fd, &idx, err, sizeof(err)) == -1)
		return 1;
	if (idx.ai_base != base) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: %s: its index starts at "
		    "sequence %" PRIu64 ", its name at %" PRIu64 "\n", path,
		    idx.ai_base, base);
		goto out;
	}
	if (ra->ra_dctx == NULL && (ra->ra_dctx = ZSTD_createDCtx()) == NULL) {
		fprintf(stderr, "walcat: restore: out of memory\n");
		rc = -1;
		goto out;
	}
	for (uint32_t i = 0; i < idx.ai_nblocks && !rs->rs_done; i++) {
		const struct archive_block *b = &idx.ai_blocks[i];
		uint8_t *dst;
		size_t len = b->ab_raw_len, off = 0, flen;
		uint64_t seq = b->ab_seq, raw = b->ab_raw_off;
		int inplace = len <= RESTORE_WBUF;

		if (inplace) {
			if (rs->rs_wlen + len > RESTORE_WBUF &&
			    restore_flush(rs) == -1) {
				rc = -1;
				goto out;
			}
			dst = rs->rs_wbuf + rs->rs_wlen;
		} else {
			if (rarch_grow(&ra->ra_big, &ra->ra_bigcap, len) == -1) {
				rc = -1;
				goto out;
			}
			dst = ra->ra_big;
		}
		if (archive_block_decompress(ra->ra_dctx, fd, b, 1, dst, len,
		    &ra->ra_zbuf, &ra->ra_zcap, err, sizeof(err)) == -1) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s: %s\n", path, err);
			goto out;
		}
		while (off < len && !rs->rs_done) {
			r = fcw2_check(chk, dst + off, len - off, &flen, &rec);
			if (r != FCW2_OK) {
				restore_progress_clear(rs);
				fprintf(stderr, "walcat: restore: %s: corrupt "
				    "block at offset %" PRIu64 " (sequences %"
				    PRIu64 " to %" PRIu64 "): raw offset %"
				    PRIu64 " (sequence %" PRIu64 "): %s; "
				    "nothing after it is restored\n", path,
				    b->ab_zoff, b->ab_seq, b->ab_seq +
				    b->ab_nframes - 1, raw + off, seq, r ==
				    FCW2_NEED_MORE ? "incomplete frame" :
				    fcw2_strerror(r));
				goto out;
			}
			/*
			 * A new output file hands the write buffer, and the
			 * rest of this block in it, to the writer: move the
			 * rest out first.
			 */
			if (inplace && rs->rs_fd != -1 &&
			    rs->rs_files[rs->rs_nfiles - 1].rf_bytes > 0 &&
			    rs->rs_files[rs->rs_nfiles - 1].rf_bytes + flen >
			    rs->rs_seg_bytes) {
				if (rarch_grow(&ra->ra_big, &ra->ra_bigcap,
				    len - off) == -1) {
					rc = -1;
					goto out;
				}
				memcpy(ra->ra_big, dst + off, len - off);
				dst = ra->ra_big;
				len -= off;
				raw += off;
				off = 0;
				inplace = 0;
			}
			if ((r = restore_frame(rs, seq, dst + off, flen,
			    rs->rs_check_records ? &rec : NULL)) == -1) {
				rc = -1;
				goto out;
			}
			off += flen;
			seq++;
		}
		if (!rs->rs_done && seq != b->ab_seq + b->ab_nframes) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s: corrupt block at "
			    "offset %" PRIu64 " (sequences %" PRIu64 " to %"
			    PRIu64 "): it holds %" PRIu64 " frames where the "
			    "index says %" PRIu32 "\n", path, b->ab_zoff,
			    b->ab_seq, b->ab_seq + b->ab_nframes - 1,
			    seq - b->ab_seq, b->ab_nframes);
			goto out;
		}
	}
	rc = 0;
out:
	archive_index_free(&idx);
	return rc;
}

/* The segment files of dir in order: an archived one replaces its raw twin. */
static int
restore_dir_files(const char *dir, char ***out, size_t *nout)
{
	char **names, err[512];
	size_t n, k = 0;
	uint64_t base, nbase;

	if (segment_list_dir_all(dir, &names, &n, err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: restore: %s\n", err);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(names[i]);

		if (l > 4 && strcmp(names[i] + l - 4, ".tmp") == 0) {
			free(names[i]);
			continue;
		}
		/* an interrupted archive step: X.wal then X.wal.zst */
		if (i + 1 < n && segment_name_parse(names[i], &base, NULL) ==
		    0 && archive_name_parse(names[i + 1], &nbase, NULL) == 0 &&
		    base == nbase) {
			free(names[i]);
			continue;
		}
		names[k++] = names[i];
	}
	*out = names;
	*nout = k;
	return 0;
}

/* The first sequence of a raw or archived segment file. 0, or -1. */
static int
restore_name_base(const char *name, uint64_t *base)
{
	return scan_is_zstd_name(name) ? archive_name_parse(name, base, NULL) :
	    segment_name_parse(name, base, NULL);
}

static int
restore_from_dir(struct restore *rs, const char *dir)
{
	struct scan sc;
	struct scan_event ev;
	char **names = NULL, path[PATH_MAX], err[512];
	size_t n = 0;
	uint64_t base, nbase, seq, first;
	struct segstore_snapmeta sm;
	struct rarch ra;
	int fd = -1, rc = WALCAT_EXIT_ERROR, r;

	memset(&ra, 0, sizeof(ra));
	if (restore_dir_files(dir, &names, &n) == -1)
		return WALCAT_EXIT_ERROR;
	if ((r = restore_meta_snapshot(dir, &sm)) == -1) {
		segment_list_free(names, n);
		return WALCAT_EXIT_ERROR;
	}
	if (n == 0 && r == 0) {
		fprintf(stderr, "walcat: restore: %s holds no segment files\n",
		    dir);
		segment_list_free(names, n);
		return WALCAT_EXIT_ERROR;
	}
	/*
	 * Frames before the first one here are gone (compacted or retained
	 * away): the snapshot that covers them holds their state.
	 */
	first = UINT64_MAX;
	for (size_t i = 0; i < n && first == UINT64_MAX; i++)
		if (restore_name_base(names[i], &base) == 0)
			first = base;
	if (first > 0 && sm.sm_valid && sm.sm_covered > 0) {
		if (sm.sm_covered < first && first != UINT64_MAX) {
			fprintf(stderr, "walcat: restore: %s: the snapshot %s "
			    "covers frames up to sequence %" PRIu64 ", the "
			    "segments start at %" PRIu64 ": frames are "
			    "missing\n", dir, sm.sm_name, sm.sm_covered - 1,
			    first);
			segment_list_free(names, n);
			return RESTORE_EXIT_BAD;
		}
		rs->rs_snap_covered = sm.sm_covered;
		if (restore_snap_reaches(rs, dir) == -1) {
			segment_list_free(names, n);
			return RESTORE_EXIT_BAD;
		}
		if (restore_snap_copy(rs, dir, &sm) == -1) {
			segment_list_free(names, n);
			return WALCAT_EXIT_ERROR;
		}
		restore_snap_base(rs, sm.sm_covered);
	}
	scan_init(&sc, rs->rs_max_frame, 0, rs->rs_check_records);
	for (size_t i = 0; i < n && !rs->rs_done; i++) {
		int zst = scan_is_zstd_name(names[i]);
		char *zname;

		if (restore_name_base(names[i], &base) == -1) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s/%s: not a segment "
			    "name; skipped\n", dir, names[i]);
			continue;
		}
		/* wholly inside the snapshot: the next file starts by then */
		if (rs->rs_based && i + 1 < n &&
		    restore_name_base(names[i + 1], &nbase) == 0 &&
		    nbase <= rs->rs_snap_covered)
			continue;
		if (rs->rs_based && base < rs->rs_snap_covered &&
		    rs->rs_next == rs->rs_snap_covered)
			;	/* its frames before covered are skipped */
		else if (rs->rs_started && base != rs->rs_next) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s/%s starts at "
			    "sequence %" PRIu64 " where %" PRIu64 " was due: "
			    "frames are missing\n", dir, names[i], base,
			    rs->rs_next);
			rc = RESTORE_EXIT_BAD;
			goto out;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 &&
		    errno == ENOENT && !zst &&
		    asprintf(&zname, "%s.zst", names[i]) != -1) {
			/* a running relay archived it meanwhile */
			free(names[i]);
			names[i] = zname;
			zst = 1;
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
			fd = open(path, O_RDONLY | O_CLOEXEC);
		}
		if (fd == -1) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s: %s\n", path,
			    strerror(errno));
			goto out;
		}
#ifdef POSIX_FADV_SEQUENTIAL
		posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
		if (zst && (r = restore_archived(rs, &ra, &sc.sc_chk, fd, path,
		    base)) != 1) {
			if (r != 0) {
				rc = r == -1 ? WALCAT_EXIT_ERROR : r;
				goto out;
			}
			close(fd);
			fd = -1;
			continue;
		}
		if (zst ? scan_start_zstd(&sc, fd) : (scan_start(&sc, fd), 0)) {
			fprintf(stderr, "walcat: restore: out of memory\n");
			goto out;
		}
		for (seq = base;;) {
			if (scan_next(&sc, &ev, err, sizeof(err)) == -1) {
				restore_progress_clear(rs);
				fprintf(stderr, "walcat: restore: %s: %s\n",
				    path, err);
				rc = scan_corrupt(&sc) ? RESTORE_EXIT_BAD :
				    WALCAT_EXIT_ERROR;
				goto out;
			}
			if (ev.ev_type == SCAN_END)
				break;
			if (ev.ev_type == SCAN_INCOMPLETE && i + 1 == n && !zst) {
				/* a torn tail in the newest: recovery cuts it */
				restore_progress_clear(rs);
				fprintf(stderr, "walcat: restore: %s: a torn "
				    "frame at offset %" PRIu64 " ends the "
				    "stream (%" PRIu64 " bytes, not restored)\n",
				    path, ev.ev_offset, ev.ev_have);
				break;
			}
			if (ev.ev_type != SCAN_FRAME) {
				restore_progress_clear(rs);
				fprintf(stderr, "walcat: restore: %s: offset %"
				    PRIu64 " (sequence %" PRIu64 "): %s; "
				    "nothing after it is restored\n", path,
				    ev.ev_offset, seq, ev.ev_type ==
				    SCAN_INCOMPLETE ? "incomplete frame" :
				    fcw2_strerror(ev.ev_status));
				rc = RESTORE_EXIT_BAD;
				goto out;
			}
			if ((r = restore_frame(rs, seq, ev.ev_data, ev.ev_len,
			    rs->rs_check_records ? &ev.ev_rec : NULL)) == -1)
				goto out;
			if (r == 1)
				break;
			seq++;
		}
		close(fd);
		fd = -1;
	}
	rc = 0;
out:
	if (fd != -1)
		close(fd);
	rarch_free(&ra);
	scan_free(&sc);
	segment_list_free(names, n);
	return rc;
}

/* ---- from a relay ------------------------------------------------------ */

struct rconn {
	int		 rc_fd;
	struct tls_conn	*rc_tls;
};

static long
rconn_read(struct rconn *c, void *buf, size_t len, char *err, size_t errlen)
{
	long n;

	if (c->rc_tls != NULL)
		return tls_conn_read(c->rc_tls, buf, len, err, errlen);
	while ((n = recv(c->rc_fd, buf, len, 0)) == -1 && errno == EINTR)
		;
	if (n == -1)
		snprintf(err, errlen, "%s", strerror(errno));
	return n;
}

static int
rconn_write(struct rconn *c, const void *buf, size_t len, char *err,
    size_t errlen)
{
	if (c->rc_tls != NULL)
		return tls_conn_write(c->rc_tls, buf, len, err, errlen);
	if (fdio_send_all(c->rc_fd, buf, len, NULL) == -1) {
		snprintf(err, errlen, "%s", strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Read the stream from addr. resync: ask for sequence 0 with resync=1, so
 * that a relay whose early frames are gone sends its snapshot first (a
 * full resync, docs/protocol.md); RESTORE_GONE when it has none. Without:
 * from earliest.
 */
#define RESTORE_GONE	(-2)

static int
restore_from_relay(struct restore *rs, const char *addr, const char *token,
    struct tls_ctx *tls, int resync)
{
	struct handshake_reply rep;
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	struct rconn c = { -1, NULL };
	struct timeval tv = { 60, 0 };
	char line[HANDSHAKE_LINE_MAX + 2], err[512];
	uint8_t *buf = NULL;
	size_t llen = 0, bufsz = 256 * 1024, off;
	uint64_t seq = 0;
	long n;
	int linelen, rc = WALCAT_EXIT_ERROR, st, r, have_reply = 0;

	fcw2_decoder_init(&dec, rs->rs_max_frame, rs->rs_check_records);
	linelen = handshake_format_sub_stream(line, sizeof(line), token,
	    strlen(token), resync ? HANDSHAKE_FROM_SEQ : HANDSHAKE_FROM_EARLIEST,
	    0, 0, 0, HANDSHAKE_COMPRESS_NONE, rs->rs_stream);
	if (linelen != -1 && resync) {
		/* the same line with " resync=1" before its LF */
		if ((size_t)linelen - 1 + 10 > HANDSHAKE_LINE_MAX)
			linelen = -1;
		else {
			memcpy(line + linelen - 1, " resync=1\n", 11);
			linelen += 9;
		}
	}
	if (linelen == -1) {
		fprintf(stderr, "walcat: restore: the token does not fit in a "
		    "handshake line\n");
		goto out;
	}
	if ((buf = malloc(bufsz)) == NULL)
		goto out;
	if ((c.rc_fd = walcat_net_dial(addr)) == -1)
		goto out;
	setsockopt(c.rc_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (tls != NULL && (c.rc_tls = tls_conn_connect(tls, c.rc_fd, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "walcat: restore: %s: %s\n", addr, err);
		goto out;
	}
	if (rconn_write(&c, line, (size_t)linelen, err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: restore: %s: %s\n", addr, err);
		goto out;
	}
	for (;;) {
		if (have_reply && rs->rs_snap_got == rs->rs_snap_entries &&
		    (rs->rs_done || seq >= rs->rs_source_end))
			break;
		n = rconn_read(&c, buf, bufsz, err, sizeof(err));
		if (n <= 0) {
			restore_progress_clear(rs);
			if (n == 0)
				fprintf(stderr, "walcat: restore: %s closed the "
				    "connection at sequence %" PRIu64 "\n", addr,
				    seq);
			else
				fprintf(stderr, "walcat: restore: %s: %s\n",
				    addr, err);
			goto out;
		}
		off = 0;
		if (!have_reply) {
			while (off < (size_t)n && buf[off] != '\n' &&
			    llen < sizeof(line) - 1)
				line[llen++] = (char)buf[off++];
			if (off == (size_t)n && llen < sizeof(line) - 1)
				continue;
			off++;
			if (handshake_parse_reply_line(line, llen, &rep, err,
			    sizeof(err)) == -1) {
				fprintf(stderr, "walcat: restore: %s: %s\n",
				    addr, err);
				goto out;
			}
			if (!rep.hp_ok) {
				if (resync && strcmp(rep.hp_code,
				    HANDSHAKE_ERR_GONE) == 0) {
					rc = RESTORE_GONE;
					goto out;
				}
				fprintf(stderr, "walcat: restore: %s refused: "
				    "%s %s\n", addr, rep.hp_code, rep.hp_text);
				rc = 2;
				goto out;
			}
			have_reply = 1;
			seq = rep.hp_start;
			/* the stream as it was when the restore began */
			rs->rs_source_end = rep.hp_next;
			if (rep.hp_has_snapshot && seq > 0) {
				/* a full resync: the state before start */
				rs->rs_snap_covered = seq;
				rs->rs_snap_entries = rep.hp_snapshot;
				if (restore_snap_reaches(rs, addr) == -1) {
					rc = RESTORE_EXIT_BAD;
					goto out;
				}
				restore_snap_base(rs, seq);
				dec.chk.check_records = 1;
			}
			if (rs->rs_snap_got == rs->rs_snap_entries &&
			    seq >= rs->rs_source_end)
				break;
			if (off > (size_t)n)
				continue;
		}
		if (fcw2_decoder_feed(&dec, buf + off, (size_t)n - off) == -1) {
			fprintf(stderr, "walcat: restore: out of memory\n");
			goto out;
		}
		while ((st = fcw2_decoder_next(&dec, &fr)) == FCW2_OK) {
			if (rs->rs_snap_got < rs->rs_snap_entries) {
				if (restore_snap_entry(rs, &fr.rec, addr) ==
				    -1)
					goto out;
				if (rs->rs_snap_got < rs->rs_snap_entries)
					continue;
				/* the stream after it */
				if (restore_snap_seal(rs) == -1)
					goto out;
				dec.chk.check_records = rs->rs_check_records;
				restore_progress(rs, 1);
				if (seq >= rs->rs_source_end)
					break;
				continue;
			}
			if ((r = restore_frame(rs, seq, fr.data, fr.len,
			    rs->rs_check_records ? &fr.rec : NULL)) == -1)
				goto out;
			seq++;
			if (r == 1 || seq >= rs->rs_source_end)
				break;
		}
		if (st != FCW2_OK && st != FCW2_NEED_MORE) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s: frame %" PRIu64
			    " at stream offset %" PRIu64 ": %s\n", addr, seq,
			    dec.offset, fcw2_strerror(st));
			rc = RESTORE_EXIT_BAD;
			goto out;
		}
	}
	rc = 0;
out:
	if (c.rc_tls != NULL)
		tls_conn_free(c.rc_tls);
	if (c.rc_fd != -1)
		close(c.rc_fd);
	fcw2_decoder_free(&dec);
	free(buf);
	return rc;
}

/* ---- the command ------------------------------------------------------- */

/* Is OUTDIR empty (or absent: created)? Its segment files go with --force. */
static int
restore_outdir(struct restore *rs, int force)
{
	DIR *d;
	struct dirent *de;
	int nonempty = 0;

	if (mkdir(rs->rs_out, 0750) == -1 && errno != EEXIST) {
		fprintf(stderr, "walcat: restore: %s: %s\n", rs->rs_out,
		    strerror(errno));
		return -1;
	}
	if ((rs->rs_dirfd = open(rs->rs_out, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1 || (d = fdopendir(dup(rs->rs_dirfd))) == NULL) {
		fprintf(stderr, "walcat: restore: %s: %s\n", rs->rs_out,
		    strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		nonempty = 1;
		if (!force)
			break;
		/*
		 * What a cache would read (a snapshot-* file it would load
		 * instead of the restored one), and what a restore leaves.
		 */
		if (segment_is_wal_name(de->d_name) || strncmp(de->d_name,
		    "snapshot-", 9) == 0 || (l > 5 &&
		    strcmp(de->d_name + l - 5, ".part") == 0)) {
			if (unlinkat(rs->rs_dirfd, de->d_name, 0) == -1) {
				fprintf(stderr, "walcat: restore: %s/%s: %s\n",
				    rs->rs_out, de->d_name, strerror(errno));
				closedir(d);
				return -1;
			}
		}
	}
	closedir(d);
	if (nonempty && !force) {
		fprintf(stderr, "walcat: restore: %s is not empty; restore "
		    "into an empty directory, or add --force to replace the "
		    "segment files in it\n", rs->rs_out);
		return -1;
	}
	return 0;
}

static void
restore_summary(struct restore *rs, double secs)
{
	char t0[80], t1[80];
	uint64_t frames = rs->rs_started ? rs->rs_next - rs->rs_first : 0;

	restore_progress_clear(rs);
	if (rs->rs_snap)
		printf("restored the snapshot %s (%" PRIu64 " entries, %" PRIu64
		    " bytes, the state up to sequence %" PRIu64 ")\n",
		    rs->rs_snap_name, rs->rs_snap_entries, rs->rs_snap_bytes,
		    rs->rs_snap_covered - 1);
	else if (rs->rs_based)
		printf("the snapshot up to sequence %" PRIu64 " is empty: no "
		    "snapshot file is needed\n", rs->rs_snap_covered - 1);
	if (frames == 0) {
		printf("restored 0 frames into %s\n", rs->rs_out);
		return;
	}
	restore_fmt_time(rs->rs_min_ts, t0, sizeof(t0));
	restore_fmt_time(rs->rs_max_ts, t1, sizeof(t1));
	printf("restored %" PRIu64 " frames (%" PRIu64 " bytes, %zu files) "
	    "into %s: sequences %" PRIu64 " to %" PRIu64 ", timestamps %s to "
	    "%s", frames, rs->rs_bytes, rs->rs_nfiles, rs->rs_out, rs->rs_first,
	    rs->rs_next - 1, t0, t1);
	if (rs->rs_has_time)
		printf(", %" PRIu64 " of them after the requested time "
		    "(shards interleave)", rs->rs_after_t);
	printf(", %.1f MB/s\n", secs > 0 ? (double)rs->rs_bytes / 1e6 / secs :
	    0.0);
}

int
walcat_restore(int argc, char **argv)
{
	enum { O_SEQ = 256, O_TIME, O_FORCE, O_SEGB, O_MAXF, O_TOKEN, O_TLS,
	    O_CA, O_CERT, O_KEY, O_NAME, O_RECORDS, O_STREAM };
	static const struct option opts[] = {
		{ "until-seq", required_argument, NULL, O_SEQ },
		{ "until-time", required_argument, NULL, O_TIME },
		{ "force", no_argument, NULL, O_FORCE },
		{ "segment-bytes", required_argument, NULL, O_SEGB },
		{ "max-frame-bytes", required_argument, NULL, O_MAXF },
		{ "check-records", no_argument, NULL, O_RECORDS },
		{ "token-file", required_argument, NULL, O_TOKEN },
		{ "stream", required_argument, NULL, O_STREAM },
		{ "tls", no_argument, NULL, O_TLS },
		{ "tls-ca", required_argument, NULL, O_CA },
		{ "tls-cert", required_argument, NULL, O_CERT },
		{ "tls-key", required_argument, NULL, O_KEY },
		{ "tls-server-name", required_argument, NULL, O_NAME },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct restore rs;
	struct tls_files tf;
	struct tls_ctx *tls = NULL;
	struct stat st;
	const char *tokfile = NULL, *src;
	char token[1100] = "-";
	int c, force = 0, usetls = 0, rc = WALCAT_EXIT_ERROR, has_seq = 0, r;
	size_t sz;
	long long t0;
	char *end;

	memset(&rs, 0, sizeof(rs));
	memset(&tf, 0, sizeof(tf));
	rs.rs_until_seq = UINT64_MAX;
	rs.rs_max_frame = FCW2_DEFAULT_MAX_FRAME;
	rs.rs_seg_bytes = RESTORE_SEG_BYTES;
	rs.rs_fd = rs.rs_dirfd = rs.rs_snap_fd = -1;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_SEQ:
			errno = 0;
			rs.rs_until_seq = strtoull(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || optarg[0] == '-' ||
			    optarg[0] == '\0') {
				fprintf(stderr, "walcat: restore: --until-seq "
				    "%s: not a sequence number\n", optarg);
				return WALCAT_EXIT_ERROR;
			}
			has_seq = 1;
			break;
		case O_TIME:
			if (restore_parse_time(optarg, &rs.rs_until_ms) == -1) {
				fprintf(stderr, "walcat: restore: --until-time "
				    "%s: use milliseconds since the epoch or "
				    "YYYY-MM-DDTHH:MM:SS[.mmm]Z\n", optarg);
				return WALCAT_EXIT_ERROR;
			}
			rs.rs_has_time = 1;
			break;
		case O_FORCE: force = 1; break;
		case O_RECORDS: rs.rs_check_records = 1; break;
		case O_SEGB:
		case O_MAXF:
			if (walcat_max_frame_arg(optarg, &sz) == -1)
				return WALCAT_EXIT_ERROR;
			if (c == O_SEGB)
				rs.rs_seg_bytes = sz;
			else
				rs.rs_max_frame = sz;
			break;
		case O_TOKEN: tokfile = optarg; break;
		case O_STREAM:
			if (!config_stream_name_ok(optarg)) {
				fprintf(stderr, "walcat: restore: --stream %s: "
				    "not a stream name (1 to 64 of A-Z a-z 0-9 "
				    "_ . -)\n", optarg);
				return WALCAT_EXIT_ERROR;
			}
			rs.rs_stream = optarg;
			break;
		case O_TLS: usetls = 1; break;
		case O_CA: tf.tf_ca = optarg; break;
		case O_CERT: tf.tf_cert = optarg; break;
		case O_KEY: tf.tf_key = optarg; break;
		case O_NAME: tf.tf_server_name = optarg; break;
		case 'h': restore_usage(stdout); return 0;
		default: restore_usage(stderr); return WALCAT_EXIT_ERROR;
		}
	}
	if (optind + 2 != argc || (has_seq && rs.rs_has_time)) {
		restore_usage(stderr);
		return WALCAT_EXIT_ERROR;
	}
	src = argv[optind];
	rs.rs_out = argv[optind + 1];
	rs.rs_progress = isatty(STDERR_FILENO);

	if (stat(src, &st) == 0 && S_ISDIR(st.st_mode)) {
		if (tokfile != NULL || usetls || tf.tf_ca != NULL ||
		    tf.tf_cert != NULL) {
			fprintf(stderr, "walcat: restore: %s is a directory: "
			    "token and TLS options are for a relay address\n",
			    src);
			return WALCAT_EXIT_ERROR;
		}
	} else {
		if (tokfile != NULL && walcat_net_token(tokfile, token,
		    sizeof(token)) == -1)
			return WALCAT_EXIT_ERROR;
		if (walcat_net_tls("restore", src, &tf, usetls, &tls) == -1)
			return WALCAT_EXIT_ERROR;
	}
	if (rwriter_start(&rs) == -1)
		goto out;
	if (restore_outdir(&rs, force) == -1)
		goto out;
	t0 = (long long)clock_mono_ns();
	restore_progress(&rs, 1);
	if (stat(src, &st) == 0 && S_ISDIR(st.st_mode))
		rc = restore_from_dir(&rs, src);
	else if ((rc = restore_from_relay(&rs, src, token, tls, 1)) ==
	    RESTORE_GONE)
		/* no snapshot, and the start is gone: what there is */
		rc = restore_from_relay(&rs, src, token, tls, 0);
	if (rc != 0) {
		restore_progress_clear(&rs);
		fprintf(stderr, "walcat: restore: stopped; %s holds .part files "
		    "of an incomplete restore (run it again with --force)\n",
		    rs.rs_out);
		goto out;
	}
	if (rs.rs_until_seq != UINT64_MAX && (!rs.rs_started ||
	    rs.rs_next <= rs.rs_until_seq)) {
		restore_progress_clear(&rs);
		fprintf(stderr, "walcat: restore: the source ends at sequence "
		    "%" PRIu64 ", before --until-seq %" PRIu64 "\n",
		    rs.rs_started ? rs.rs_next : 0, rs.rs_until_seq);
		rc = RESTORE_EXIT_BAD;
		goto out;
	}
	if ((r = restore_finish(&rs)) != 0) {
		rc = r == 1 ? RESTORE_EXIT_BAD : WALCAT_EXIT_ERROR;
		goto out;
	}
	if (rs.rs_started && rs.rs_first > 0 && !rs.rs_based)
		fprintf(stderr, "walcat: restore: the oldest frame available "
		    "is sequence %" PRIu64 ", not 0: the cache recovers the "
		    "state from a snapshot taken at or before it plus these "
		    "segments\n", rs.rs_first);
	restore_summary(&rs, (double)((long long)clock_mono_ns() - t0) / 1e9);
	rc = 0;
out:
	rwriter_stop(&rs);
	if (rs.rs_fd != -1)
		close(rs.rs_fd);
	if (rs.rs_snap_fd != -1)
		close(rs.rs_snap_fd);
	if (rs.rs_dirfd != -1)
		close(rs.rs_dirfd);
	free(rs.rs_files);
	free(rs.rs_snap_buf);
	tls_free(tls);
	return rc;
}
