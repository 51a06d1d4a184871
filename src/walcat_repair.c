/*
 * walcat_repair.c: `walcat repair DIR --from ADDR`.
 *
 * Finds the corrupt byte ranges of a stopped relay's data directory (the
 * bad frames `walcat verify` reports), fetches the frames that belong
 * there from another relay of the same stream (FCWAL-SUB/1 with this
 * store's epoch), checks every one of them and that they fill exactly the
 * corrupt range, and replaces the range in place: a temporary copy of the
 * segment with the range replaced, checked again, fdatasync, rename over
 * the segment, fsync of the directory.
 *
 * The relay holds an exclusive flock on DIR/walrelay.lock while it runs;
 * repair takes the same lock (without waiting) and holds it to the end, so
 * it refuses a directory a relay is running on, and a relay cannot start
 * on it while it works.
 */
#include "autoconfig.h"

#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "config.h"
#include "fcw2.h"
#include "fdio.h"
#include "handshake.h"
#include "scan.h"
#include "segment.h"
#include "tls.h"
#include "walcat.h"

#define REPAIR_LOCK		"walrelay.lock"
#define REPAIR_META		"walrelay.meta"
#define REPAIR_META_MAX		4096
#define REPAIR_TIMEOUT_S	30
#define REPAIR_EXIT_UNREPAIRED	2

struct repair {
	const char	*rp_dir;
	int		 rp_dirfd;
	const char	*rp_addr;
	const char	*rp_stream;	/* --stream: stream=NAME, or NULL */
	char		 rp_token[1100];
	struct tls_ctx	*rp_tls;
	size_t		 rp_max_frame;
	unsigned	 rp_timeout_s;
	uint64_t	 rp_epoch;
	unsigned	 rp_repaired;
	unsigned	 rp_failed;
};

/* One corrupt range of one segment file. */
struct repair_range {
	const char	*rr_name;
	uint64_t	 rr_size;	/* of the file */
	uint64_t	 rr_base;	/* the file's first sequence */
	uint64_t	 rr_expect;	/* frames the file must hold, or 0 */
	uint64_t	 rr_before;	/* valid frames before the range */
	uint64_t	 rr_after;	/* valid frames after it */
	uint64_t	 rr_off;	/* the range: [rr_off, rr_end) */
	uint64_t	 rr_end;
	int		 rr_torn;	/* an incomplete frame ends the file */
};

static void
repair_usage(FILE *f)
{
	fprintf(f,
"usage: walcat repair [options] --from ADDR DIR\n"
"  Replace the corrupt frames of a stopped relay's data directory DIR with\n"
"  the same frames fetched from ADDR, another relay of the same stream\n"
"  (same epoch: a member of its chain). Every fetched frame is checked, and\n"
"  they must fill the corrupt bytes exactly; each segment is rewritten\n"
"  through a temporary copy (fdatasync, rename, fsync of DIR).\n"
"  Refuses while a walrelay runs on DIR (it holds DIR/walrelay.lock).\n"
"options:\n"
"  --from ADDR             the relay to fetch from (host:port)\n"
"  --token-file FILE       its subscribe token (first line of FILE)\n"
"  --stream NAME           the stream to fetch when ADDR serves several\n"
"                          (stream=NAME in FCWAL-SUB/1)\n"
"  --tls                   connect with TLS (implied by the options below)\n"
"  --tls-ca FILE           CA certificates (PEM) (default: the system's)\n"
"  --tls-cert FILE         client certificate (PEM), for mTLS\n"
"  --tls-key FILE          its private key (PEM)\n"
"  --tls-server-name NAME  name checked in its certificate (default: its host)\n"
"  --timeout SECONDS       wait at most this long for its data (default 30)\n"
"  --max-frame-bytes N     frame size cap (default 64M)\n"
"exit status: 0 nothing left to repair, 2 a corrupt range was not repaired\n"
"  (the reason is printed), 3 usage, I/O or connection error.\n");
}

/* The epoch in DIR/walrelay.meta (checksummed text, see segment_meta.c). */
static int
repair_read_epoch(struct repair *rp)
{
	char buf[REPAIR_META_MAX + 1], *sum, *p;
	unsigned long long want, epoch;
	ssize_t n;
	size_t len = 0;
	int fd;

	if ((fd = openat(rp->rp_dirfd, REPAIR_META, O_RDONLY | O_CLOEXEC)) ==
	    -1) {
		fprintf(stderr, "walcat: repair: %s/%s: %s (not a walrelay "
		    "data directory?)\n", rp->rp_dir, REPAIR_META,
		    strerror(errno));
		return -1;
	}
	while (len < sizeof(buf) - 1 &&
	    (n = read(fd, buf + len, sizeof(buf) - 1 - len)) != 0) {
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			fprintf(stderr, "walcat: repair: %s/%s: %s\n",
			    rp->rp_dir, REPAIR_META, strerror(errno));
			close(fd);
			return -1;
		}
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	if ((sum = strstr(buf, "\nxxh64 ")) == NULL ||
	    sscanf(sum + 1, "xxh64 %16llx", &want) != 1 ||
	    want != (unsigned long long)XXH64(buf, (size_t)(sum + 1 - buf), 0) ||
	    (p = strstr(buf, "\nepoch ")) == NULL || p > sum ||
	    sscanf(p + 1, "epoch %16llx", &epoch) != 1) {
		fprintf(stderr, "walcat: repair: %s/%s: damaged (its checksum "
		    "or epoch line)\n", rp->rp_dir, REPAIR_META);
		return -1;
	}
	rp->rp_epoch = epoch;
	return 0;
}

/* Take the relay's lock on DIR, or say who holds it. */
static int
repair_lock(struct repair *rp)
{
	char pid[32] = "";
	ssize_t n;
	int fd;

	if ((fd = openat(rp->rp_dirfd, REPAIR_LOCK, O_RDWR | O_CREAT |
	    O_CLOEXEC, 0644)) == -1) {
		fprintf(stderr, "walcat: repair: %s/%s: %s\n", rp->rp_dir,
		    REPAIR_LOCK, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return fd;	/* held until exit */
	if (errno == EWOULDBLOCK) {
		if ((n = pread(fd, pid, sizeof(pid) - 1, 0)) > 0) {
			pid[n] = '\0';
			pid[strcspn(pid, "\n")] = '\0';
		}
		fprintf(stderr, "walcat: repair: %s: a walrelay is running on "
		    "this directory (%s is locked%s%s): stop it first\n",
		    rp->rp_dir, REPAIR_LOCK, pid[0] ? " by pid " : "", pid);
	} else
		fprintf(stderr, "walcat: repair: %s/%s: lock: %s\n",
		    rp->rp_dir, REPAIR_LOCK, strerror(errno));
	close(fd);
	return -1;
}

/* ---- the connection -------------------------------------------------- */

struct rconn {
	int		 rc_fd;
	struct tls_conn	*rc_tls;
	const char	*rc_addr;
};

static int
rconn_open(struct repair *rp, struct rconn *c)
{
	struct timeval tv = { rp->rp_timeout_s, 0 };
	char err[512];

	c->rc_tls = NULL;
	c->rc_addr = rp->rp_addr;
	if ((c->rc_fd = walcat_net_dial(rp->rp_addr)) == -1)
		return -1;
	setsockopt(c->rc_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->rc_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (rp->rp_tls != NULL && (c->rc_tls = tls_conn_connect(rp->rp_tls,
	    c->rc_fd, err, sizeof(err))) == NULL) {
		fprintf(stderr, "walcat: repair: %s: %s\n", rp->rp_addr, err);
		close(c->rc_fd);
		return -1;
	}
	return 0;
}

static void
rconn_close(struct rconn *c)
{
	tls_conn_free(c->rc_tls);
	close(c->rc_fd);
}

/* Exactly len bytes; -1 (said why) on an error, the end or a timeout. */
static int
rconn_read(struct rconn *c, void *buf, size_t len)
{
	char err[512];
	size_t got = 0;
	long n;

	while (got < len) {
		if (c->rc_tls != NULL) {
			n = tls_conn_read(c->rc_tls, (char *)buf + got,
			    len - got, err, sizeof(err));
			if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
				snprintf(err, sizeof(err), "timed out");
		} else {
			n = recv(c->rc_fd, (char *)buf + got, len - got, 0);
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1)
				snprintf(err, sizeof(err), "%s", errno == EAGAIN ?
				    "timed out" : strerror(errno));
		}
		if (n == 0) {
			fprintf(stderr, "walcat: repair: %s closed the "
			    "connection\n", c->rc_addr);
			return -1;
		}
		if (n < 0) {
			fprintf(stderr, "walcat: repair: %s: %s\n", c->rc_addr,
			    err);
			return -1;
		}
		got += (size_t)n;
	}
	return 0;
}

static int
rconn_write(struct rconn *c, const void *buf, size_t len)
{
	char err[512];

	if (c->rc_tls != NULL) {
		if (tls_conn_write(c->rc_tls, buf, len, err, sizeof(err)) ==
		    -1) {
			fprintf(stderr, "walcat: repair: %s: %s\n", c->rc_addr,
			    err);
			return -1;
		}
		return 0;
	}
	if (fdio_send_all(c->rc_fd, buf, len, NULL) == -1) {
		fprintf(stderr, "walcat: repair: %s: %s\n", c->rc_addr,
		    strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- finding the corrupt ranges -------------------------------------- */

/*
 * Scan one segment file. Returns 1 and fills rr when it holds corruption
 * (from the first bad byte to the end of the last bad stretch), 0 when it
 * is intact, -1 on an I/O error.
 */
static int
repair_scan(struct repair *rp, const char *name, int last,
    struct repair_range *rr)
{
	struct scan sc;
	struct scan_event ev;
	struct stat st;
	char err[512];
	uint64_t frames = 0;
	int fd, bad = 0, rc = -1;

	memset(rr, 0, sizeof(*rr));
	rr->rr_name = name;
	if ((fd = openat(rp->rp_dirfd, name, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &st) == -1) {
		fprintf(stderr, "walcat: repair: %s/%s: %s\n", rp->rp_dir, name,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	rr->rr_size = (uint64_t)st.st_size;
	scan_init(&sc, rp->rp_max_frame, 0, 1);
	scan_start(&sc, fd);
	for (;;) {
		if (scan_next(&sc, &ev, err, sizeof(err)) == -1) {
			fprintf(stderr, "walcat: repair: %s/%s: %s\n",
			    rp->rp_dir, name, err);
			goto out;
		}
		if (ev.ev_type == SCAN_END)
			break;
		if (ev.ev_type == SCAN_FRAME) {
			frames++;
			continue;
		}
		if (ev.ev_type == SCAN_INCOMPLETE && last) {
			/* a torn tail: walrelay cuts it when it starts */
			rr->rr_torn = 1;
			break;
		}
		if (!bad) {
			bad = 1;
			rr->rr_before = frames;
			rr->rr_off = ev.ev_offset;
		}
		frames = 0;
		rr->rr_end = ev.ev_type == SCAN_INCOMPLETE ? rr->rr_size :
		    ev.ev_resume;
	}
	rr->rr_after = frames;
	rc = bad;
out:
	scan_free(&sc);
	close(fd);
	return rc;
}

/* ---- fetching and replacing ------------------------------------------- */

/*
 * Fetch from the other relay the frames from sequence `first` that fill
 * exactly rr's corrupt bytes, checking each; and, when the file goes on
 * after the range, the next frame too, which must equal ours. Returns the
 * bytes (*nframes frames), or NULL with the reason printed (*refused set
 * when the other relay refused or its frames do not fit: not an I/O
 * error).
 */
static uint8_t *
repair_fetch(struct repair *rp, const struct repair_range *rr, uint64_t first,
    const uint8_t *next_frame, size_t next_len, uint64_t *nframes,
    int *refused)
{
	struct fcw2_checker chk;
	struct fcw2_record rec;
	struct handshake hs;
	struct handshake_reply rep;
	struct rconn c;
	char line[HANDSHAKE_LINE_MAX + 2], err[HANDSHAKE_LINE_MAX + 64];
	int hsrc;
	uint64_t want = rr->rr_end - rr->rr_off, got = 0, k = 0;
	uint8_t *buf = NULL, hdr[FCW2_HEADER_LEN], *fr = NULL;
	size_t llen = 0, flen, chklen;
	int n, rc;

	*refused = 0;
	n = handshake_format_sub_stream(line, sizeof(line), rp->rp_token,
	    strlen(rp->rp_token), HANDSHAKE_FROM_SEQ, first, 1, rp->rp_epoch,
	    HANDSHAKE_COMPRESS_NONE, rp->rp_stream);
	if (n == -1) {
		fprintf(stderr, "walcat: repair: the token does not fit in a "
		    "handshake line (too long, or a space in it)\n");
		return NULL;
	}
	if (rconn_open(rp, &c) == -1)
		return NULL;
	if (rconn_write(&c, line, (size_t)n) == -1)
		goto fail;
	/* the reply line, read a byte at a time: the frames follow it */
	handshake_init(&hs);
	do {
		if (rconn_read(&c, line, 1) == -1)
			goto fail;
		hsrc = handshake_feed(&hs, line, 1, &llen);
	} while (hsrc == HANDSHAKE_NEED_MORE);
	if (hsrc == HANDSHAKE_TOO_LONG || handshake_parse_reply(&hs, &rep,
	    err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: repair: %s: bad reply: %s\n",
		    rp->rp_addr, hsrc == HANDSHAKE_TOO_LONG ? "longer than "
		    "1023 bytes" : err);
		*refused = 1;
		goto fail;
	}
	if (!rep.hp_ok) {
		fprintf(stderr, "walcat: repair: %s refused frames from %" PRIu64
		    ": %s%s\n", rp->rp_addr, first, handshake_line(&hs, &llen),
		    strcmp(rep.hp_code, HANDSHAKE_ERR_EPOCH) == 0 ? " (it is not "
		    "a relay of this store's stream: its sequence numbers name "
		    "other frames)" : "");
		*refused = 1;
		goto fail;
	}
	if ((buf = malloc(want)) == NULL) {
		fprintf(stderr, "walcat: repair: out of memory\n");
		goto fail;
	}
	fcw2_checker_init(&chk, rp->rp_max_frame, 1);
	while (got < want || (next_frame != NULL && fr == NULL)) {
		if (rconn_read(&c, hdr, sizeof(hdr)) == -1)
			goto fail_chk;
		flen = fcw2_frame_len(hdr);
		if (memcmp(hdr, FCW2_MAGIC, 4) != 0 ||
		    flen > rp->rp_max_frame) {
			fprintf(stderr, "walcat: repair: %s sent a bad frame "
			    "header at sequence %" PRIu64 "\n", rp->rp_addr,
			    first + k);
			*refused = 1;
			goto fail_chk;
		}
		if (got >= want) {
			/* the frame after the range: compare with ours */
			if ((fr = malloc(flen)) == NULL)
				goto fail_chk;
			memcpy(fr, hdr, sizeof(hdr));
			if (rconn_read(&c, fr + sizeof(hdr), flen -
			    sizeof(hdr)) == -1)
				goto fail_chk;
			if (flen != next_len || memcmp(fr, next_frame,
			    flen) != 0) {
				fprintf(stderr, "walcat: repair: %s/%s: frame "
				    "%" PRIu64 " after the corrupt range differs "
				    "from %s's: not the same stream here\n",
				    rp->rp_dir, rr->rr_name, first + k,
				    rp->rp_addr);
				*refused = 1;
				goto fail_chk;
			}
			break;
		}
		if (flen > want - got) {
			fprintf(stderr, "walcat: repair: %s/%s: %s's frames from "
			    "sequence %" PRIu64 " do not fill the corrupt range "
			    "of %" PRIu64 " bytes exactly (frame %" PRIu64 " of "
			    "%zu bytes at byte %" PRIu64 " of it): the frame "
			    "layout differs, not repaired\n", rp->rp_dir,
			    rr->rr_name, rp->rp_addr, first, want, first + k,
			    flen, got);
			*refused = 1;
			goto fail_chk;
		}
		memcpy(buf + got, hdr, sizeof(hdr));
		if (rconn_read(&c, buf + got + sizeof(hdr), flen -
		    sizeof(hdr)) == -1)
			goto fail_chk;
		rc = fcw2_check(&chk, buf + got, flen, &chklen, &rec);
		if (rc != FCW2_OK || chklen != flen) {
			fprintf(stderr, "walcat: repair: %s sent frame %" PRIu64
			    " that fails its check: %s\n", rp->rp_addr,
			    first + k, fcw2_strerror(rc));
			*refused = 1;
			goto fail_chk;
		}
		got += flen;
		k++;
	}
	fcw2_checker_free(&chk);
	free(fr);
	rconn_close(&c);
	*nframes = k;
	return buf;
fail_chk:
	fcw2_checker_free(&chk);
fail:
	free(fr);
	free(buf);
	rconn_close(&c);
	return NULL;
}

/* Copy [off, off + len) of src to dst. */
static int
repair_copy(int src, int dst, uint64_t off, uint64_t len)
{
	uint8_t buf[65536];
	ssize_t n;

	while (len > 0) {
		n = pread(src, buf, len < sizeof(buf) ? (size_t)len :
		    sizeof(buf), (off_t)off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			return -1;
		}
		if (fdio_write_all(dst, buf, (size_t)n) == -1)
			return -1;
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

/* Read the whole frame at off of fd (for the check after the range). */
static uint8_t *
repair_read_frame(int fd, uint64_t off, size_t *len)
{
	uint8_t hdr[FCW2_HEADER_LEN], *p;

	if (fdio_pread_all(fd, hdr, sizeof(hdr), off) == -1)
		return NULL;
	*len = fcw2_frame_len(hdr);
	if ((p = malloc(*len)) == NULL)
		return NULL;
	if (fdio_pread_all(fd, p, *len, off) == -1) {
		free(p);
		return NULL;
	}
	return p;
}

/* Repair one range. Returns 0, 1 (not repaired, said why) or -1. */
static int
repair_range(struct repair *rp, struct repair_range *rr)
{
	char tmp[NAME_MAX + 1] = "";
	struct repair_range check;
	uint8_t *data = NULL, *next = NULL;
	uint64_t first = rr->rr_base + rr->rr_before, k = 0, total;
	size_t next_len = 0;
	int fd = -1, tfd = -1, refused, rc = -1;

	printf("%s/%s: corrupt bytes %" PRIu64 " to %" PRIu64 " (from "
	    "sequence %" PRIu64 ")\n", rp->rp_dir, rr->rr_name, rr->rr_off,
	    rr->rr_end - 1, first);
	fflush(stdout);
	if ((fd = openat(rp->rp_dirfd, rr->rr_name, O_RDONLY | O_CLOEXEC)) ==
	    -1)
		goto ioerr;
	if (rr->rr_end < rr->rr_size &&
	    (next = repair_read_frame(fd, rr->rr_end, &next_len)) == NULL)
		goto ioerr;
	data = repair_fetch(rp, rr, first, next, next_len, &k, &refused);
	if (data == NULL) {
		rc = refused ? 1 : -1;
		goto out;
	}
	total = rr->rr_before + k + rr->rr_after;
	if (rr->rr_expect > 0 && total != rr->rr_expect) {
		fprintf(stderr, "walcat: repair: %s/%s: would hold %" PRIu64
		    " frames where the next segment's name implies %" PRIu64
		    ": not repaired\n", rp->rp_dir, rr->rr_name, total,
		    rr->rr_expect);
		rc = 1;
		goto out;
	}

	/* a copy with the range replaced, checked, then renamed over */
	snprintf(tmp, sizeof(tmp), ".%s.repair", rr->rr_name);
	if ((tfd = openat(rp->rp_dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC |
	    O_CLOEXEC, 0644)) == -1)
		goto ioerr;
	if (repair_copy(fd, tfd, 0, rr->rr_off) == -1 ||
	    fdio_write_all(tfd, data, rr->rr_end - rr->rr_off) == -1 ||
	    repair_copy(fd, tfd, rr->rr_end, rr->rr_size - rr->rr_end) == -1 ||
	    fdatasync(tfd) == -1)
		goto ioerr;
	if (repair_scan(rp, tmp, 0, &check) != 0 || rr->rr_before + k +
	    rr->rr_after != check.rr_after) {
		fprintf(stderr, "walcat: repair: %s/%s: the repaired copy does "
		    "not check out: not repaired\n", rp->rp_dir, rr->rr_name);
		rc = 1;
		goto out;
	}
	if (renameat(rp->rp_dirfd, tmp, rp->rp_dirfd, rr->rr_name) == -1 ||
	    fsync(rp->rp_dirfd) == -1)
		goto ioerr;
	tmp[0] = '\0';
	printf("%s/%s: replaced bytes %" PRIu64 " to %" PRIu64 " with frames %"
	    PRIu64 " to %" PRIu64 " from %s, epoch %016" PRIx64 "; every "
	    "frame checked, the file holds %" PRIu64 " valid frames\n",
	    rp->rp_dir, rr->rr_name, rr->rr_off, rr->rr_end - 1, first,
	    first + k - 1, rp->rp_addr, rp->rp_epoch, total);
	rc = 0;
	goto out;
ioerr:
	fprintf(stderr, "walcat: repair: %s/%s: %s\n", rp->rp_dir, rr->rr_name,
	    strerror(errno));
out:
	if (tfd != -1) {
		close(tfd);
		if (tmp[0] != '\0')
			unlinkat(rp->rp_dirfd, tmp, 0);
	}
	if (fd != -1)
		close(fd);
	free(data);
	free(next);
	return rc;
}

int
walcat_repair(int argc, char **argv)
{
	enum { O_FROM = 256, O_TOKEN, O_TLS, O_CA, O_CERT, O_KEY, O_NAME,
	    O_TIMEOUT, O_MAXF, O_STREAM };
	static const struct option opts[] = {
		{ "from", required_argument, NULL, O_FROM },
		{ "token-file", required_argument, NULL, O_TOKEN },
		{ "tls", no_argument, NULL, O_TLS },
		{ "tls-ca", required_argument, NULL, O_CA },
		{ "tls-cert", required_argument, NULL, O_CERT },
		{ "tls-key", required_argument, NULL, O_KEY },
		{ "tls-server-name", required_argument, NULL, O_NAME },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "max-frame-bytes", required_argument, NULL, O_MAXF },
		{ "stream", required_argument, NULL, O_STREAM },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct repair rp;
	struct tls_files tf;
	struct repair_range rr;
	const char *tokfile = NULL;
	char **names = NULL, err[512], *end;
	size_t n = 0, i;
	int c, tls = 0, lockfd = -1, rc = WALCAT_EXIT_ERROR, r;
	unsigned long v;

	memset(&rp, 0, sizeof(rp));
	memset(&tf, 0, sizeof(tf));
	rp.rp_dirfd = -1;
	rp.rp_max_frame = FCW2_DEFAULT_MAX_FRAME;
	rp.rp_timeout_s = REPAIR_TIMEOUT_S;
	snprintf(rp.rp_token, sizeof(rp.rp_token), "-");
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_FROM: rp.rp_addr = optarg; break;
		case O_TOKEN: tokfile = optarg; break;
		case O_STREAM: rp.rp_stream = optarg; break;
		case O_TLS: tls = 1; break;
		case O_CA: tf.tf_ca = optarg; break;
		case O_CERT: tf.tf_cert = optarg; break;
		case O_KEY: tf.tf_key = optarg; break;
		case O_NAME: tf.tf_server_name = optarg; break;
		case O_TIMEOUT:
			v = strtoul(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || v == 0 ||
			    v > 86400) {
				fprintf(stderr, "walcat: repair: --timeout %s: "
				    "want 1 to 86400 seconds\n", optarg);
				return WALCAT_EXIT_ERROR;
			}
			rp.rp_timeout_s = (unsigned)v;
			break;
		case O_MAXF:
			if (walcat_max_frame_arg(optarg, &rp.rp_max_frame) != 0)
				return WALCAT_EXIT_ERROR;
			break;
		case 'h': repair_usage(stdout); return WALCAT_EXIT_OK;
		default: repair_usage(stderr); return WALCAT_EXIT_ERROR;
		}
	}
	if (optind + 1 != argc || rp.rp_addr == NULL) {
		repair_usage(stderr);
		return WALCAT_EXIT_ERROR;
	}
	rp.rp_dir = argv[optind];
	if (config_addr_check(rp.rp_addr, err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: repair: --from: %s\n", err);
		return WALCAT_EXIT_ERROR;
	}
	if (rp.rp_stream != NULL && !config_stream_name_ok(rp.rp_stream)) {
		fprintf(stderr, "walcat: repair: --stream %s: not a stream name "
		    "(1 to 64 of A-Z a-z 0-9 _ . -)\n", rp.rp_stream);
		return WALCAT_EXIT_ERROR;
	}
	if (tokfile != NULL && walcat_net_token(tokfile, rp.rp_token,
	    sizeof(rp.rp_token)) == -1)
		return WALCAT_EXIT_ERROR;
	if ((rp.rp_dirfd = open(rp.rp_dir, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1) {
		fprintf(stderr, "walcat: repair: %s: %s\n", rp.rp_dir,
		    strerror(errno));
		return WALCAT_EXIT_ERROR;
	}
	if (repair_read_epoch(&rp) == -1 || (lockfd = repair_lock(&rp)) == -1)
		goto out;
	if (walcat_net_tls("repair", rp.rp_addr, &tf, tls, &rp.rp_tls) == -1)
		goto out;
	if (segment_list_dir(rp.rp_dir, &names, &n, err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: repair: %s\n", err);
		goto out;
	}
	rc = WALCAT_EXIT_OK;
	for (i = 0; i < n; i++) {
		uint64_t base, nb, created;

		if (segment_name_parse(names[i], &base, &created) == -1)
			continue;	/* not one of the relay's files */
		r = repair_scan(&rp, names[i], i + 1 == n, &rr);
		rr.rr_base = base;
		if (r == -1) {
			rc = WALCAT_EXIT_ERROR;
			continue;
		}
		if (rr.rr_torn)
			printf("%s/%s: an incomplete frame ends the newest "
			    "segment (a torn tail): walrelay cuts it when it "
			    "starts\n", rp.rp_dir, names[i]);
		if (r == 0)
			continue;
		if (i + 1 < n && segment_name_parse(names[i + 1], &nb,
		    &created) == 0)
			rr.rr_expect = nb - rr.rr_base;
		switch (repair_range(&rp, &rr)) {
		case 0:
			rp.rp_repaired++;
			break;
		case 1:
			rp.rp_failed++;
			if (rc == WALCAT_EXIT_OK)
				rc = REPAIR_EXIT_UNREPAIRED;
			break;
		default:
			rp.rp_failed++;
			rc = WALCAT_EXIT_ERROR;
		}
	}
	if (rp.rp_repaired == 0 && rp.rp_failed == 0 && rc == WALCAT_EXIT_OK)
		printf("%s: no corrupt frame: nothing to repair\n", rp.rp_dir);
	else
		printf("summary: repaired=%u not_repaired=%u\n",
		    rp.rp_repaired, rp.rp_failed);
out:
	segment_list_free(names, n);
	tls_free(rp.rp_tls);
	if (lockfd != -1)
		close(lockfd);
	close(rp.rp_dirfd);
	if (fflush(stdout) == EOF)
		rc = WALCAT_EXIT_ERROR;
	return rc;
}
