/*
 * storetest.h: what the segment store's unit tests share: a temporary data
 * directory, the store's settings, opening and starting it, the writer
 * thread's notifications and the model of the frames appended.
 *
 * Included by one test program each; everything is static.
 */
#ifndef WALRELAY_STORETEST_H
#define WALRELAY_STORETEST_H

#include <sys/types.h>

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "segment.h"

/*
 * For per-frame helpers: Check records every passing ck_assert in a file,
 * which must stay small (the disk-full tests limit the file size).
 */
#define REQUIRE(e) do {							\
	if (!(e))							\
		ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #e);	\
} while (0)

static inline uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A new empty directory under $TMPDIR (or /tmp); the caller frees it. */
static inline char *
tmpdir_new(void)
{
	const char *t = getenv("TMPDIR");
	char path[PATH_MAX], *d;

	snprintf(path, sizeof(path), "%s/walrelay-seg-XXXXXX",
	    t != NULL && *t != '\0' ? t : "/tmp");
	d = mkdtemp(path);
	ck_assert_msg(d != NULL, "mkdtemp: %s", strerror(errno));
	return strdup(d);
}

/* Remove dir (its files, then it) and free the name. */
static inline void
tmpdir_rm(char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[PATH_MAX];

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
	ck_assert_int_eq(rmdir(dir), 0);
	free(dir);
}

/* fsync always, 64 MiB segments, 1 MiB frames, retries after 20 ms. */
static inline void
config_init(struct segment_config *cf, const char *dir)
{
	memset(cf, 0, sizeof(*cf));
	cf->dir = dir;
	cf->fsync_mode = FSYNC_ALWAYS;
	cf->segment_bytes = 64 * 1024 * 1024;
	cf->max_frame_bytes = 1024 * 1024;
	cf->retry_ms = 20;
}

static inline struct segstore *
store_open(const struct segment_config *cf)
{
	char err[1024];
	struct segstore *ss;

	ss = segstore_open(cf, err, sizeof(err));
	ck_assert_msg(ss != NULL, "segstore_open: %s", err);
	return ss;
}

/* notify: a generation counter the tests wait on */
static pthread_mutex_t	 nt_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 nt_cond = PTHREAD_COND_INITIALIZER;
static unsigned long	 nt_gen;

static void	(*nt_watch)(void);	/* run on the writer thread */

static inline void
notify_cb(void *arg)
{
	(void)arg;
	if (nt_watch != NULL)
		nt_watch();
	pthread_mutex_lock(&nt_mtx);
	nt_gen++;
	pthread_cond_broadcast(&nt_cond);
	pthread_mutex_unlock(&nt_mtx);
}

static inline void
store_start(struct segstore *ss)
{
	ck_assert_int_eq(segstore_start(ss, notify_cb, NULL), 0);
}

static inline unsigned long
notify_gen(void)
{
	unsigned long g;

	pthread_mutex_lock(&nt_mtx);
	g = nt_gen;
	pthread_mutex_unlock(&nt_mtx);
	return g;
}

/* Wait for a notification after gen (or 50 ms). */
static inline void
wait_notify(unsigned long gen)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 50 * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&nt_mtx);
	if (nt_gen == gen)
		pthread_cond_timedwait(&nt_cond, &nt_mtx, &ts);
	pthread_mutex_unlock(&nt_mtx);
}

/*
 * What the tests appended: every frame's bytes back to back, frame i
 * having sequence base + i.
 */
struct model {
	uint64_t	 base;
	uint8_t		*buf;
	size_t		 len;
	size_t		 cap;
	size_t		*off;	/* n + 1 offsets */
	uint64_t	 n;
	uint64_t	 ncap;
};

static inline void
model_init(struct model *m, uint64_t base)
{
	memset(m, 0, sizeof(*m));
	m->base = base;
	m->ncap = 1024;
	m->off = calloc(m->ncap + 1, sizeof(*m->off));
	ck_assert_ptr_nonnull(m->off);
}

static inline void
model_free(struct model *m)
{
	free(m->buf);
	free(m->off);
}

/* Add the n bytes of one frame (the next sequence) to the model. */
static inline void
model_push(struct model *m, const uint8_t *frame, size_t n)
{
	if (m->len + n > m->cap) {
		m->cap = (m->len + n) * 2;
		m->buf = realloc(m->buf, m->cap);
		REQUIRE(m->buf != NULL);
	}
	memcpy(m->buf + m->len, frame, n);
	m->len += n;
	if (m->n + 1 >= m->ncap) {
		m->ncap *= 2;
		m->off = realloc(m->off, (m->ncap + 1) * sizeof(*m->off));
		REQUIRE(m->off != NULL);
	}
	m->n++;
	m->off[m->n] = m->len;
}

#endif
