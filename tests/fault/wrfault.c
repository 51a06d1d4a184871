/*
 * wrfault.c: fault injection for the tests: wraps write, pwrite, writev,
 * pwritev, fsync, fdatasync, ftruncate, rename, renameat, unlink,
 * unlinkat, open, openat, pread, preadv, read (of regular files) and
 * sendfile (from a regular file, where its range is not in the page
 * cache), and fails (or shortens, or delays) the calls that a rule
 * matches. Built as tests/fault/wrfault.so for LD_PRELOAD and
 * linked into unit tests directly; never part of walrelay or walcat.
 *
 * Rules come from WRFAULT (read once at start), from wrfault_set, or from
 * the file named by WRFAULT_FILE, read again whenever it changes (replace
 * it with rename so that a reader never sees half of it; an empty or
 * missing file clears the faults). Every fault injected is counted and,
 * with WRFAULT_LOG set, appended to that file as one line.
 * tests/fault/README.md describes the rules.
 */
#define _GNU_SOURCE

#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "wrfault.h"

#define WRFAULT_RULES	16
#define WRFAULT_IOV	1024
#define WRFAULT_SPEC	4096

enum wrfault_op {
	OP_WRITE = 0,
	OP_SYNC,
	OP_TRUNCATE,
	OP_RENAME,
	OP_UNLINK,
	OP_OPEN,
	OP_READ,
};

static const char *const op_names[] = {
	"write", "sync", "truncate", "rename", "unlink", "open", "read"
};

struct wrfault_rule {
	int			 r_op;
	char			 r_path[PATH_MAX];
	char			 r_thread[32];	/* "": any thread */
	unsigned long long	 r_after;	/* bytes (write) or calls */
	int			 r_err;		/* 0: delay only */
	int			 r_short;	/* 1: cut the crossing write; 2: cut only */
	int			 r_dir;		/* -1: any; 1: directories; 0: files */
	unsigned long long	 r_every;	/* short=only: bytes between cuts */
	unsigned long		 r_times;	/* failures, then off; 0: all */
	unsigned		 r_delay_ms;
	unsigned long long	 r_passed;
	unsigned long		 r_failed;
};

static pthread_mutex_t		 wf_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct wrfault_rule	 wf_rules[WRFAULT_RULES];
static int			 wf_nrules;
static unsigned long		 wf_hits;
static char			 wf_ctl[PATH_MAX];
static char			 wf_log[PATH_MAX];
static struct stat		 wf_ctl_sb;
static int			 wf_ctl_seen;

/* ---- the real calls ------------------------------------------------------ */

static void *
real(const char *name)
{
	void *p = dlsym(RTLD_NEXT, name);

	if (p == NULL) {
		fprintf(stderr, "wrfault: %s not found\n", name);
		abort();
	}
	return p;
}

#define REAL(type, name, args)						\
	static type (*real_##name) args;				\
	if (real_##name == NULL)					\
		real_##name = (type (*) args)real(#name)

/* ---- rules --------------------------------------------------------------- */

static int
parse_errno(const char *v)
{
	static const struct { const char *n; int e; } names[] = {
		{ "none", 0 }, { "EIO", EIO }, { "ENOSPC", ENOSPC },
		{ "EFBIG", EFBIG }, { "EDQUOT", EDQUOT }, { "EROFS", EROFS },
		{ "EACCES", EACCES }, { "EPERM", EPERM }, { "ENOMEM", ENOMEM },
		{ "EMFILE", EMFILE }, { "EINTR", EINTR },
	};
	char *end;
	long n;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(v, names[i].n) == 0)
			return names[i].e;
	n = strtol(v, &end, 10);
	if (*v == '\0' || *end != '\0' || n < 0 || n > 4095)
		return -1;
	return (int)n;
}

static int
parse_rule(char *s, struct wrfault_rule *r)
{
	char *kv, *v, *save = NULL, *end;
	int op = 0;

	memset(r, 0, sizeof(*r));
	snprintf(r->r_path, sizeof(r->r_path), "*");
	r->r_err = EIO;
	r->r_short = 1;
	r->r_dir = -1;
	for (kv = strtok_r(s, ",", &save); kv != NULL;
	    kv = strtok_r(NULL, ",", &save)) {
		while (*kv == ' ' || *kv == '\t')
			kv++;
		if ((v = strchr(kv, '=')) == NULL)
			return -1;
		*v++ = '\0';
		if (strcmp(kv, "op") == 0) {
			r->r_op = -1;
			for (int i = 0; i <= OP_READ; i++)
				if (strcmp(v, op_names[i]) == 0)
					r->r_op = i;
			if (r->r_op == -1)
				return -1;
			op = 1;
		} else if (strcmp(kv, "path") == 0)
			snprintf(r->r_path, sizeof(r->r_path), "%s", v);
		else if (strcmp(kv, "thread") == 0)
			snprintf(r->r_thread, sizeof(r->r_thread), "%s", v);
		else if (strcmp(kv, "after") == 0) {
			r->r_after = strtoull(v, &end, 10);
			if (*v == '\0' || *end != '\0')
				return -1;
		} else if (strcmp(kv, "err") == 0) {
			if ((r->r_err = parse_errno(v)) == -1)
				return -1;
		} else if (strcmp(kv, "short") == 0)
			r->r_short = strcmp(v, "only") == 0 ? 2 :
			    strcmp(v, "0") != 0;
		else if (strcmp(kv, "dir") == 0)
			r->r_dir = strcmp(v, "0") != 0;
		else if (strcmp(kv, "times") == 0) {
			r->r_times = strtoul(v, &end, 10);
			if (*v == '\0' || *end != '\0')
				return -1;
		} else if (strcmp(kv, "delay") == 0) {
			r->r_delay_ms = (unsigned)strtoul(v, &end, 10);
			if (*v == '\0' || *end != '\0')
				return -1;
		} else
			return -1;
	}
	if (r->r_short == 2 && (r->r_op != OP_WRITE || r->r_after == 0))
		return -1;
	r->r_every = r->r_after;
	return op ? 0 : -1;
}

/* Parse a whole spec into rules (mutex held). */
static int
set_locked(const char *spec)
{
	struct wrfault_rule rules[WRFAULT_RULES];
	char buf[WRFAULT_SPEC], *s, *save = NULL;
	int n = 0;

	if (spec == NULL)
		spec = "";
	if (strlen(spec) >= sizeof(buf))
		return -1;
	memcpy(buf, spec, strlen(spec) + 1);
	for (s = strtok_r(buf, ";\n", &save); s != NULL;
	    s = strtok_r(NULL, ";\n", &save)) {
		if (strspn(s, " \t\r") == strlen(s))
			continue;
		if (n == WRFAULT_RULES || parse_rule(s, &rules[n]) == -1) {
			fprintf(stderr, "wrfault: bad rule in \"%s\"\n", spec);
			return -1;
		}
		n++;
	}
	memcpy(wf_rules, rules, n * sizeof(rules[0]));
	wf_nrules = n;
	return 0;
}

int
wrfault_set(const char *spec)
{
	int r;

	pthread_mutex_lock(&wf_mtx);
	r = set_locked(spec);
	pthread_mutex_unlock(&wf_mtx);
	return r;
}

void
wrfault_clear(void)
{
	wrfault_set(NULL);
}

unsigned long
wrfault_hits(void)
{
	unsigned long n;

	pthread_mutex_lock(&wf_mtx);
	n = wf_hits;
	pthread_mutex_unlock(&wf_mtx);
	return n;
}

/* Read the control file again if it changed (mutex held). */
static void
ctl_poll(void)
{
	REAL(int, open, (const char *, int, ...));
	REAL(ssize_t, read, (int, void *, size_t));
	char buf[WRFAULT_SPEC];
	struct stat sb;
	ssize_t n;
	size_t len = 0;
	int fd;

	if (wf_ctl[0] == '\0')
		return;
	if (stat(wf_ctl, &sb) == -1) {
		if (wf_ctl_seen)
			set_locked(NULL);
		wf_ctl_seen = 0;
		return;
	}
	if (wf_ctl_seen && sb.st_ino == wf_ctl_sb.st_ino &&
	    sb.st_size == wf_ctl_sb.st_size &&
	    sb.st_mtim.tv_sec == wf_ctl_sb.st_mtim.tv_sec &&
	    sb.st_mtim.tv_nsec == wf_ctl_sb.st_mtim.tv_nsec)
		return;
	wf_ctl_sb = sb;
	wf_ctl_seen = 1;
	if ((fd = real_open(wf_ctl, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	while (len < sizeof(buf) - 1 &&
	    (n = real_read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	set_locked(buf);
}

static void
log_hit(const struct wrfault_rule *r, const char *path, const char *what)
{
	REAL(int, open, (const char *, int, ...));
	REAL(ssize_t, write, (int, const void *, size_t));
	char line[PATH_MAX + 128];
	int fd, len;

	wf_hits++;
	if (wf_log[0] == '\0')
		return;
	len = snprintf(line, sizeof(line), "%s %s %s\n", op_names[r->r_op],
	    path, what);
	if (len < 0 || (size_t)len >= sizeof(line))
		return;
	if ((fd = real_open(wf_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
	    0644)) == -1)
		return;
	(void)real_write(fd, line, (size_t)len);
	close(fd);
}

static void
fd_path(int fd, char *buf, size_t len)
{
	char link[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	if ((n = readlink(link, buf, len - 1)) < 0)
		n = 0;
	buf[n] = '\0';
}

static void
at_path(int dirfd, const char *name, char *buf, size_t len)
{
	char dir[PATH_MAX];

	int n;

	if (name[0] == '/' || dirfd == AT_FDCWD) {
		if (name[0] != '/' && getcwd(dir, sizeof(dir)) != NULL)
			n = snprintf(buf, len, "%s/%s", dir, name);
		else
			n = snprintf(buf, len, "%s", name);
	} else {
		fd_path(dirfd, dir, sizeof(dir));
		n = snprintf(buf, len, "%s/%s", dir, name);
	}
	if (n < 0 || (size_t)n >= len)
		buf[0] = '\0';		/* too long to match anything */
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/*
 * What to do with a call of op on path (path2: the other name of a
 * rename, or NULL) moving len bytes (writes) or 0. Returns how many bytes
 * may go through (len for any call that is not failed; fewer for a short
 * write), or -1 with *err to fail the call.
 */
static long long
decide(int op, const char *path, const char *path2, int isdir, size_t len,
    int *err)
{
	struct wrfault_rule *r, *slow = NULL;
	unsigned delay = 0;
	long long allow = (long long)len;
	char what[64], tname[32] = "";
	int tnamed = 0;

	pthread_mutex_lock(&wf_mtx);
	ctl_poll();
	for (int i = 0; i < wf_nrules; i++) {
		r = &wf_rules[i];
		if (r->r_op != op || (r->r_times != 0 &&
		    r->r_failed >= r->r_times))
			continue;
		if (fnmatch(r->r_path, path, 0) != 0 && (path2 == NULL ||
		    fnmatch(r->r_path, path2, 0) != 0))
			continue;
		if (r->r_dir != -1 && r->r_dir != isdir)
			continue;
		if (r->r_thread[0] != '\0') {
			if (!tnamed) {
				if (pthread_getname_np(pthread_self(), tname,
				    sizeof(tname)) != 0)
					tname[0] = '\0';
				tnamed = 1;
			}
			if (fnmatch(r->r_thread, tname, 0) != 0)
				continue;
		}
		if (op == OP_WRITE) {
			if (r->r_passed + len <= r->r_after) {
				r->r_passed += len;
				continue;
			}
			if (r->r_short == 2) {
				/* a short count, no error; the next cut is
				 * r_every bytes further on */
				allow = (long long)(r->r_after - r->r_passed);
				r->r_passed = r->r_after;
				r->r_after += r->r_every;
				r->r_failed++;
				snprintf(what, sizeof(what), "short %lld of %zu",
				    allow, len);
				log_hit(r, path, what);
				break;
			}
			if (r->r_err != 0 && r->r_short &&
			    r->r_passed < r->r_after) {
				allow = (long long)(r->r_after - r->r_passed);
				r->r_passed = r->r_after;
				snprintf(what, sizeof(what), "short %lld of %zu",
				    allow, len);
				log_hit(r, path, what);
				break;
			}
		} else if (r->r_passed < r->r_after) {
			r->r_passed++;
			continue;
		}
		if (r->r_delay_ms > delay) {
			delay = r->r_delay_ms;
			slow = r;
		}
		if (r->r_err == 0)
			continue;
		r->r_failed++;
		*err = r->r_err;
		allow = -1;
		log_hit(r, path, strerror(r->r_err));
		break;
	}
	if (delay > 0 && allow >= 0) {
		/* a delay alone is a fault too: say so */
		snprintf(what, sizeof(what), "delay %u ms", delay);
		log_hit(slow, path, what);
	}
	pthread_mutex_unlock(&wf_mtx);
	if (delay > 0)
		sleep_ms(delay);
	return allow;
}

__attribute__((constructor)) static void
wrfault_init(void)
{
	const char *s;

	if ((s = getenv("WRFAULT_FILE")) != NULL)
		snprintf(wf_ctl, sizeof(wf_ctl), "%s", s);
	if ((s = getenv("WRFAULT_LOG")) != NULL)
		snprintf(wf_log, sizeof(wf_log), "%s", s);
	if ((s = getenv("WRFAULT")) != NULL && wrfault_set(s) == -1)
		abort();
}

/* ---- the wrapped calls --------------------------------------------------- */

/* Cut an iovec array down to len bytes (into out); returns the count. */
static int
iov_cut(const struct iovec *iov, int cnt, size_t len, struct iovec *out)
{
	int n = 0;

	for (int i = 0; i < cnt && len > 0 && n < WRFAULT_IOV; i++) {
		out[n] = iov[i];
		if (out[n].iov_len > len)
			out[n].iov_len = len;
		len -= out[n].iov_len;
		n++;
	}
	return n;
}

static size_t
iov_total(const struct iovec *iov, int cnt)
{
	size_t t = 0;

	for (int i = 0; i < cnt; i++)
		t += iov[i].iov_len;
	return t;
}

static long long
decide_fd(int op, int fd, size_t len, int *err)
{
	char path[PATH_MAX];
	struct stat sb;
	int isdir;

	if (wf_nrules == 0 && wf_ctl[0] == '\0')
		return (long long)len;
	fd_path(fd, path, sizeof(path));
	isdir = fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode);
	return decide(op, path, NULL, isdir, len, err);
}

ssize_t
write(int fd, const void *buf, size_t len)
{
	REAL(ssize_t, write, (int, const void *, size_t));
	long long a;
	int err;

	if ((a = decide_fd(OP_WRITE, fd, len, &err)) < 0) {
		errno = err;
		return -1;
	}
	return real_write(fd, buf, (size_t)a);
}

/* read(2) of regular files only: sockets and pipes pass untouched. */
ssize_t
read(int fd, void *buf, size_t len)
{
	REAL(ssize_t, read, (int, void *, size_t));
	struct stat sb;
	int err;

	if ((wf_nrules != 0 || wf_ctl[0] != '\0') && fstat(fd, &sb) == 0 &&
	    S_ISREG(sb.st_mode) && decide_fd(OP_READ, fd, 0, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_read(fd, buf, len);
}

static ssize_t
do_pread(int fd, void *buf, size_t len, off_t off)
{
	REAL(ssize_t, pread, (int, void *, size_t, off_t));
	int err;

	if (decide_fd(OP_READ, fd, 0, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_pread(fd, buf, len, off);
}

ssize_t
pread(int fd, void *buf, size_t len, off_t off)
{
	return do_pread(fd, buf, len, off);
}

ssize_t
pread64(int fd, void *buf, size_t len, off_t off)
{
	return do_pread(fd, buf, len, off);
}

static ssize_t
do_preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(ssize_t, preadv, (int, const struct iovec *, int, off_t));
	int err;

	if (decide_fd(OP_READ, fd, 0, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_preadv(fd, iov, cnt, off);
}

ssize_t
preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return do_preadv(fd, iov, cnt, off);
}

ssize_t
preadv64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return do_preadv(fd, iov, cnt, off);
}

/*
 * Whether [off, off + len) of the regular file fd is all in the page cache
 * (mincore of a mapping of it). The part past the end of the file counts
 * as cached: nothing is read there.
 */
static int
range_cached(int fd, off_t off, size_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	struct stat sb;
	unsigned char *vec;
	off_t moff;
	size_t mlen, npg, i;
	void *map;
	int cached;

	if (fstat(fd, &sb) == -1 || off >= sb.st_size)
		return 1;
	if ((off_t)len > sb.st_size - off)
		len = (size_t)(sb.st_size - off);
	if (len == 0)
		return 1;
	moff = off & ~(off_t)(pg - 1);
	mlen = (size_t)(off - moff) + len;
	npg = (mlen + (size_t)pg - 1) / (size_t)pg;
	if ((map = mmap(NULL, mlen, PROT_READ, MAP_SHARED, fd, moff)) ==
	    MAP_FAILED)
		return 0;
	cached = 0;
	if ((vec = malloc(npg)) != NULL && mincore(map, mlen, vec) == 0) {
		for (i = 0; i < npg && (vec[i] & 1); i++)
			;
		cached = i == npg;
	}
	free(vec);
	munmap(map, mlen);
	return cached;
}

/*
 * sendfile from a regular file is a read of it (op=read), but only when
 * some of its range is not in the page cache: a cached range does not
 * touch the disk, so a rule that makes the disk slow or failing lets it
 * through, as the kernel would. Sends from sockets or pipes pass.
 */
static ssize_t
do_sendfile(ssize_t (*fn)(int, int, off_t *, size_t), int out, int in,
    off_t *off, size_t count)
{
	struct stat sb;
	off_t at;
	int err;

	if ((wf_nrules != 0 || wf_ctl[0] != '\0') && fstat(in, &sb) == 0 &&
	    S_ISREG(sb.st_mode)) {
		at = off != NULL ? *off : lseek(in, 0, SEEK_CUR);
		if (at != -1 && !range_cached(in, at, count) &&
		    decide_fd(OP_READ, in, 0, &err) < 0) {
			errno = err;
			return -1;
		}
	}
	return fn(out, in, off, count);
}

ssize_t
sendfile(int out, int in, off_t *off, size_t count)
{
	REAL(ssize_t, sendfile, (int, int, off_t *, size_t));

	return do_sendfile(real_sendfile, out, in, off, count);
}

ssize_t
sendfile64(int out, int in, off_t *off, size_t count)
{
	REAL(ssize_t, sendfile64, (int, int, off_t *, size_t));

	return do_sendfile(real_sendfile64, out, in, off, count);
}

static ssize_t
do_pwrite(int fd, const void *buf, size_t len, off_t off)
{
	REAL(ssize_t, pwrite, (int, const void *, size_t, off_t));
	long long a;
	int err;

	if ((a = decide_fd(OP_WRITE, fd, len, &err)) < 0) {
		errno = err;
		return -1;
	}
	return real_pwrite(fd, buf, (size_t)a, off);
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
	return do_pwrite(fd, buf, len, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	return do_pwrite(fd, buf, len, off);
}

ssize_t
writev(int fd, const struct iovec *iov, int cnt)
{
	REAL(ssize_t, writev, (int, const struct iovec *, int));
	struct iovec cut[WRFAULT_IOV];
	size_t len = iov_total(iov, cnt);
	long long a;
	int err;

	if ((a = decide_fd(OP_WRITE, fd, len, &err)) < 0) {
		errno = err;
		return -1;
	}
	if ((size_t)a == len)
		return real_writev(fd, iov, cnt);
	return real_writev(fd, cut, iov_cut(iov, cnt, (size_t)a, cut));
}

static ssize_t
do_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	REAL(ssize_t, pwritev, (int, const struct iovec *, int, off_t));
	struct iovec cut[WRFAULT_IOV];
	size_t len = iov_total(iov, cnt);
	long long a;
	int err;

	if ((a = decide_fd(OP_WRITE, fd, len, &err)) < 0) {
		errno = err;
		return -1;
	}
	if ((size_t)a == len)
		return real_pwritev(fd, iov, cnt, off);
	return real_pwritev(fd, cut, iov_cut(iov, cnt, (size_t)a, cut), off);
}

ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return do_pwritev(fd, iov, cnt, off);
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return do_pwritev(fd, iov, cnt, off);
}

int
fsync(int fd)
{
	REAL(int, fsync, (int));
	int err;

	if (decide_fd(OP_SYNC, fd, 0, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_fsync(fd);
}

int
fdatasync(int fd)
{
	REAL(int, fdatasync, (int));
	int err;

	if (decide_fd(OP_SYNC, fd, 0, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_fdatasync(fd);
}

int
ftruncate(int fd, off_t len)
{
	REAL(int, ftruncate, (int, off_t));
	int err;

	if (decide_fd(OP_TRUNCATE, fd, 0, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_ftruncate(fd, len);
}

int
ftruncate64(int fd, off_t len)
{
	return ftruncate(fd, len);
}

static long long
decide_at(int op, int dirfd, const char *name, int dirfd2,
    const char *name2, int *err)
{
	char path[PATH_MAX], path2[PATH_MAX];

	if (wf_nrules == 0 && wf_ctl[0] == '\0')
		return 0;
	at_path(dirfd, name, path, sizeof(path));
	if (name2 != NULL)
		at_path(dirfd2, name2, path2, sizeof(path2));
	return decide(op, path, name2 != NULL ? path2 : NULL, 0, 0, err);
}

int
renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
	REAL(int, renameat, (int, const char *, int, const char *));
	int err;

	if (decide_at(OP_RENAME, olddirfd, oldpath, newdirfd, newpath,
	    &err) < 0) {
		errno = err;
		return -1;
	}
	return real_renameat(olddirfd, oldpath, newdirfd, newpath);
}

int
rename(const char *oldpath, const char *newpath)
{
	REAL(int, rename, (const char *, const char *));
	int err;

	if (decide_at(OP_RENAME, AT_FDCWD, oldpath, AT_FDCWD, newpath,
	    &err) < 0) {
		errno = err;
		return -1;
	}
	return real_rename(oldpath, newpath);
}

int
unlinkat(int dirfd, const char *path, int flags)
{
	REAL(int, unlinkat, (int, const char *, int));
	int err;

	if (decide_at(OP_UNLINK, dirfd, path, 0, NULL, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_unlinkat(dirfd, path, flags);
}

int
unlink(const char *path)
{
	REAL(int, unlink, (const char *));
	int err;

	if (decide_at(OP_UNLINK, AT_FDCWD, path, 0, NULL, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_unlink(path);
}

static mode_t
open_mode(int flags, va_list ap)
{
	if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE)
		return (mode_t)va_arg(ap, int);
	return 0;
}

int
openat(int dirfd, const char *path, int flags, ...)
{
	REAL(int, openat, (int, const char *, int, ...));
	va_list ap;
	mode_t mode;
	int err;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	if (decide_at(OP_OPEN, dirfd, path, 0, NULL, &err) < 0) {
		errno = err;
		return -1;
	}
	return real_openat(dirfd, path, flags, mode);
}

int
openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return openat(dirfd, path, flags, mode);
}

int
open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return openat(AT_FDCWD, path, flags, mode);
}

int
open64(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return openat(AT_FDCWD, path, flags, mode);
}
