/*
 * walcat_restore.c: `walcat restore`, point-in-time restore of a cache's
 * WAL directory.
 *
 *   walcat restore [--until-seq S | --until-time T] [--force] SOURCE OUTDIR
 *
 * SOURCE is a relay's data directory (raw .wal and archived .wal.zst
 * segments) or a relay's address (FCWAL-SUB/1 from earliest, with a token
 * and TLS as `walcat repair` takes them). Every frame is checked on the way
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lz4.h>
#include <zstd.h>

#include "archive.h"
#include "clock.h"
#include "config.h"
#include "fcw2.h"
#include "fdio.h"
#include "handshake.h"
#include "scan.h"
#include "segment.h"
#include "tls.h"
#include "walcat.h"

#define RESTORE_WBUF		(4u << 20)
#define RESTORE_SEG_BYTES	(64ull << 20)
#define RESTORE_PROGRESS_NS	200000000LL
#define RESTORE_EXIT_BAD	2	/* a frame failed verification */

struct rfile {
	char		 rf_name[64];	/* final name */
	uint64_t	 rf_bytes;
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
	uint8_t		*rs_wbuf;
	size_t		 rs_wlen;

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
};

static void
restore_usage(FILE *f)
{
	fprintf(f,
"usage: walcat restore [options] SOURCE OUTDIR\n"
"  Rebuild a cache's WAL directory: the frames of SOURCE, a relay's data\n"
"  directory (raw and archived segments) or a relay's address (read with\n"
"  FCWAL-SUB/1 from earliest), verified and written byte for byte as raw\n"
"  .wal segments into OUTDIR, cut at the point asked for.\n"
"options:\n"
"  --until-seq S        stop after the frame with sequence S\n"
"  --until-time T       stop after the last frame (in stream order) whose\n"
"                       record timestamp is at or before T: milliseconds\n"
"                       since the epoch, or UTC YYYY-MM-DDTHH:MM:SS[.mmm]Z\n"
"  --force              restore into a directory that is not empty (its\n"
"                       segment files are replaced)\n"
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
"exit status: 0 restored, 2 a frame failed verification or frames are\n"
"  missing, 3 usage or I/O error.\n");
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

static int
restore_flush(struct restore *rs)
{
	if (rs->rs_wlen == 0)
		return 0;
	if (fdio_write_all(rs->rs_fd, rs->rs_wbuf, rs->rs_wlen) == -1) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: %s/%s.part: %s\n", rs->rs_out,
		    rs->rs_files[rs->rs_nfiles - 1].rf_name, strerror(errno));
		return -1;
	}
	rs->rs_wlen = 0;
	return 0;
}

/* Finish the file being written: write, fdatasync, close (still .part). */
static int
restore_seal(struct restore *rs)
{
	int r;

	if (rs->rs_fd == -1)
		return 0;
	if (restore_flush(rs) == -1)
		return -1;
	while ((r = fdatasync(rs->rs_fd)) == -1 && errno == EINTR)
		;
	if (r == -1 || close(rs->rs_fd) == -1) {
		restore_progress_clear(rs);
		fprintf(stderr, "walcat: restore: %s/%s.part: %s\n", rs->rs_out,
		    rs->rs_files[rs->rs_nfiles - 1].rf_name, strerror(errno));
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
		if (fdio_write_all(rs->rs_fd, p, len) == -1) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s/%s.part: %s\n",
			    rs->rs_out, rf->rf_name, strerror(errno));
			return -1;
		}
	} else {
		memcpy(rs->rs_wbuf + rs->rs_wlen, p, len);
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
 * final name, fsync the directory. Returns 0 or -1.
 */
static int
restore_finish(struct restore *rs)
{
	char part[80];
	size_t keep = rs->rs_nfiles;

	if (restore_seal(rs) == -1)
		return -1;
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

static int
restore_from_dir(struct restore *rs, const char *dir)
{
	struct scan sc;
	struct scan_event ev;
	char **names = NULL, path[PATH_MAX], err[512];
	size_t n = 0;
	uint64_t base, seq;
	int fd = -1, rc = WALCAT_EXIT_ERROR, r;

	if (restore_dir_files(dir, &names, &n) == -1)
		return WALCAT_EXIT_ERROR;
	if (n == 0) {
		fprintf(stderr, "walcat: restore: %s holds no segment files\n",
		    dir);
		segment_list_free(names, n);
		return WALCAT_EXIT_ERROR;
	}
	scan_init(&sc, rs->rs_max_frame, 0, rs->rs_check_records);
	for (size_t i = 0; i < n && !rs->rs_done; i++) {
		int zst = scan_is_zstd_name(names[i]);
		char *zname;

		if ((zst ? archive_name_parse(names[i], &base, NULL) :
		    segment_name_parse(names[i], &base, NULL)) == -1) {
			restore_progress_clear(rs);
			fprintf(stderr, "walcat: restore: %s/%s: not a segment "
			    "name; skipped\n", dir, names[i]);
			continue;
		}
		if (rs->rs_started && base != rs->rs_next) {
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

static int
restore_from_relay(struct restore *rs, const char *addr, const char *token,
    struct tls_ctx *tls)
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
	    strlen(token), HANDSHAKE_FROM_EARLIEST, 0, 0, 0,
	    HANDSHAKE_COMPRESS_NONE, rs->rs_stream);
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
		if (have_reply && (rs->rs_done || seq >= rs->rs_source_end))
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
				fprintf(stderr, "walcat: restore: %s refused: "
				    "%s %s\n", addr, rep.hp_code, rep.hp_text);
				rc = 2;
				goto out;
			}
			have_reply = 1;
			seq = rep.hp_start;
			/* the stream as it was when the restore began */
			rs->rs_source_end = rep.hp_next;
			if (seq >= rs->rs_source_end)
				break;
			if (off > (size_t)n)
				continue;
		}
		if (fcw2_decoder_feed(&dec, buf + off, (size_t)n - off) == -1) {
			fprintf(stderr, "walcat: restore: out of memory\n");
			goto out;
		}
		while ((st = fcw2_decoder_next(&dec, &fr)) == FCW2_OK) {
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
		/* what a cache would read, and what a restore leaves */
		if (segment_is_wal_name(de->d_name) || (l > 5 &&
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
	char token[1100] = "-", host[256], err[512];
	int c, force = 0, usetls = 0, rc = WALCAT_EXIT_ERROR, has_seq = 0;
	uint16_t port;
	size_t sz;
	long long t0;
	char *end;

	memset(&rs, 0, sizeof(rs));
	memset(&tf, 0, sizeof(tf));
	rs.rs_until_seq = UINT64_MAX;
	rs.rs_max_frame = FCW2_DEFAULT_MAX_FRAME;
	rs.rs_seg_bytes = RESTORE_SEG_BYTES;
	rs.rs_fd = rs.rs_dirfd = -1;
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
		if (usetls || tf.tf_ca != NULL || tf.tf_cert != NULL ||
		    tf.tf_key != NULL || tf.tf_server_name != NULL) {
			if ((tf.tf_cert == NULL) != (tf.tf_key == NULL)) {
				fprintf(stderr, "walcat: restore: --tls-cert "
				    "and --tls-key go together\n");
				return WALCAT_EXIT_ERROR;
			}
			if (tf.tf_server_name == NULL) {
				if (config_addr_split(src, host, sizeof(host),
				    &port, err, sizeof(err)) == -1) {
					fprintf(stderr, "walcat: restore: %s\n",
					    err);
					return WALCAT_EXIT_ERROR;
				}
				tf.tf_server_name = host;
			}
			if ((tls = tls_client_new(&tf, err, sizeof(err))) ==
			    NULL) {
				fprintf(stderr, "walcat: restore: %s\n", err);
				return WALCAT_EXIT_ERROR;
			}
		}
	}
	if ((rs.rs_wbuf = malloc(RESTORE_WBUF)) == NULL) {
		fprintf(stderr, "walcat: restore: out of memory\n");
		goto out;
	}
	if (restore_outdir(&rs, force) == -1)
		goto out;
	t0 = (long long)clock_mono_ns();
	restore_progress(&rs, 1);
	if (stat(src, &st) == 0 && S_ISDIR(st.st_mode))
		rc = restore_from_dir(&rs, src);
	else
		rc = restore_from_relay(&rs, src, token, tls);
	if (rc != 0) {
		if (rs.rs_fd != -1)
			close(rs.rs_fd);
		rs.rs_fd = -1;
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
		if (rs.rs_fd != -1)
			close(rs.rs_fd);
		rs.rs_fd = -1;
		rc = RESTORE_EXIT_BAD;
		goto out;
	}
	if (restore_finish(&rs) == -1) {
		rc = WALCAT_EXIT_ERROR;
		goto out;
	}
	if (rs.rs_started && rs.rs_first > 0)
		fprintf(stderr, "walcat: restore: the oldest frame available "
		    "is sequence %" PRIu64 ", not 0: the cache recovers the "
		    "state from a snapshot taken at or before it plus these "
		    "segments\n", rs.rs_first);
	restore_summary(&rs, (double)((long long)clock_mono_ns() - t0) / 1e9);
	rc = 0;
out:
	if (rs.rs_fd != -1)
		close(rs.rs_fd);
	if (rs.rs_dirfd != -1)
		close(rs.rs_dirfd);
	free(rs.rs_files);
	free(rs.rs_wbuf);
	tls_free(tls);
	return rc;
}
