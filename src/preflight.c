/*
 * preflight.c: a start's preconditions, checked without side effects.
 *
 * Nothing is created, truncated or locked for longer than the check: the
 * data directory is only looked at (stat, access, a shared-nothing flock
 * probe of an existing lock file), and each listener address is bound
 * and closed without listen().
 */
#include "autoconfig.h"

#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preflight.h"
#include "config.h"
#include "relay.h"
#include "segment.h"

/* The lock file segstore_open takes in the data directory. */
#define PREFLIGHT_LOCK	"walrelay.lock"

static int
preflight_writable_dir(const char *what, const char *path, char *errbuf,
    size_t errlen)
{
	struct stat st;

	if (stat(path, &st) == -1) {
		snprintf(errbuf, errlen, "%s %s: %s", what, path,
		    strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(errbuf, errlen, "%s %s is not a directory", what,
		    path);
		return -1;
	}
	if (access(path, W_OK | X_OK) == -1) {
		snprintf(errbuf, errlen, "%s %s is not writable by uid %ld: %s",
		    what, path, (long)geteuid(), strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * 1 when a running walrelay holds the directory's lock, 0 when not, -1
 * on error. The probe takes the lock and lets it go at once.
 */
static int
preflight_locked(const char *dir, char *pid, size_t pidlen, char *errbuf,
    size_t errlen)
{
	char path[4096];
	ssize_t n;
	int fd, rc = 0;

	pid[0] = '\0';
	snprintf(path, sizeof(path), "%s/%s", dir, PREFLIGHT_LOCK);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		if (errno == ENOENT)
			return 0;
		snprintf(errbuf, errlen, "data-dir: %s: %s", path,
		    strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		if (errno == EWOULDBLOCK) {
			rc = 1;
			if ((n = pread(fd, pid, pidlen - 1, 0)) > 0) {
				pid[n] = '\0';
				pid[strcspn(pid, "\r\n")] = '\0';
			}
		} else {
			snprintf(errbuf, errlen, "data-dir: lock %s: %s", path,
			    strerror(errno));
			rc = -1;
		}
	}
	close(fd);	/* releases the probe's lock */
	return rc;
}

/* Are a and b the same path but for trailing slashes? */
static int
preflight_same_path(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	while (la > 1 && a[la - 1] == '/')
		la--;
	while (lb > 1 && b[lb - 1] == '/')
		lb--;
	return la == lb && strncmp(a, b, la) == 0;
}

/*
 * dir does not exist (or a component of its path is not a directory):
 * can a start create it? It creates one level (segstore_open), after made
 * (not NULL: the directory a start creates first, one level too).
 */
static int
preflight_creatable(const char *dir, const char *made, char *errbuf,
    size_t errlen)
{
	struct stat st;
	char *copy, *parent, *up;
	int rc = -1;

	if ((copy = strdup(dir)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	parent = dirname(copy);
	if (stat(parent, &st) == 0)
		rc = preflight_writable_dir("data-dir does not exist; its "
		    "parent", parent, errbuf, errlen);
	else if (errno == ENOENT && made != NULL &&
	    preflight_same_path(parent, made))
		rc = preflight_creatable(made, NULL, errbuf, errlen);
	else if (errno == ENOTDIR) {
		/* the path runs through a file: name it */
		for (up = parent; stat(up, &st) == -1 && errno == ENOTDIR;)
			up = dirname(up);
		snprintf(errbuf, errlen, "data-dir %s cannot be created: %s "
		    "is not a directory", dir, up);
	} else
		snprintf(errbuf, errlen, "data-dir %s does not exist and "
		    "cannot be created: its parent %s: %s", dir, parent,
		    strerror(errno));
	free(copy);
	return rc;
}

static int
preflight_data_dir(const char *dir, const char *made, int *locked,
    char *pid, size_t pidlen, char *errbuf, size_t errlen)
{
	struct stat st;
	int rc;

	*locked = 0;
	if (stat(dir, &st) == 0) {
		if (preflight_writable_dir("data-dir", dir, errbuf, errlen) == -1)
			return -1;
		if ((rc = preflight_locked(dir, pid, pidlen, errbuf, errlen)) ==
		    -1)
			return -1;
		*locked = rc;
		return 0;
	}
	if (errno != ENOENT && errno != ENOTDIR) {
		snprintf(errbuf, errlen, "data-dir %s: %s", dir,
		    strerror(errno));
		return -1;
	}
	/* a start creates it (one level, as segstore_open does) */
	return preflight_creatable(dir, made, errbuf, errlen);
}

/* Bind addr and close: can a listener take it? */
static int
preflight_bind(const char *what, const char *addr, char *errbuf, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	char err[512];
	int fd, one = 1;

	if (relay_addr_parse(addr, &ss, &sslen, err, sizeof(err)) == -1) {
		snprintf(errbuf, errlen, "%s listener %s: %s", what, addr, err);
		return -1;
	}
	if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) ==
	    -1) {
		snprintf(errbuf, errlen, "%s listener %s: socket: %s", what,
		    addr, strerror(errno));
		return -1;
	}
	/* as the listener does (LEV_OPT_REUSEABLE) */
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sslen) == -1) {
		snprintf(errbuf, errlen, "%s listener %s: cannot bind: %s",
		    what, addr, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static int
preflight_one(const struct wr_config *cfg, const char *made, char *note,
    size_t notelen, char *errbuf, size_t errlen)
{
	char pid[32];
	int locked;

	if (note != NULL && notelen > 0)
		note[0] = '\0';
	if (preflight_data_dir(cfg->data_dir, made, &locked, pid, sizeof(pid),
	    errbuf, errlen) == -1)
		return -1;
	if (locked) {
		/* its listeners hold the ports: nothing to learn there */
		if (note != NULL && pid[0] != '\0')
			snprintf(note, notelen, "data-dir %s is in use by a "
			    "running walrelay (pid %s): a start fails until it "
			    "stops; listeners not checked", cfg->data_dir, pid);
		else if (note != NULL)
			snprintf(note, notelen, "data-dir %s is in use by a "
			    "running walrelay: a start fails until it stops; "
			    "listeners not checked", cfg->data_dir);
		return 0;
	}
	if (cfg->upstream == NULL && cfg->ingest != NULL &&
	    preflight_bind("ingest", cfg->ingest, errbuf, errlen) == -1)
		return -1;
	if (cfg->listen != NULL &&
	    preflight_bind("subscriber", cfg->listen, errbuf, errlen) == -1)
		return -1;
	if (cfg->http != NULL &&
	    preflight_bind("http", cfg->http, errbuf, errlen) == -1)
		return -1;
	return 0;
}

int
preflight_start(const struct wr_config *cfg, char *note, size_t notelen,
    char *errbuf, size_t errlen)
{
	return preflight_one(cfg, NULL, note, notelen, errbuf, errlen);
}

int
preflight_stream(const struct wr_config *top, const struct wr_config *sc,
    char *note, size_t notelen, char *errbuf, size_t errlen)
{
	struct stat st;

	if (top->streams == NULL || top == sc)
		return preflight_one(sc, NULL, note, notelen, errbuf, errlen);
	/* a start creates the top data-dir first, as main.c does */
	if (stat(top->data_dir, &st) == -1 && (errno == ENOENT ||
	    errno == ENOTDIR) && preflight_creatable(top->data_dir, NULL,
	    errbuf, errlen) == -1)
		return -1;
	return preflight_one(sc, top->data_dir, note, notelen, errbuf,
	    errlen);
}
