/*
 * iopool.c: worker threads for blocking file work, results handed back to
 * the event loop through an eventfd.
 *
 * Workers take jobs in submission order; a finished job goes on the done
 * list, and the worker that makes the list non-empty wakes the loop (wakeup.h).
 * The loop's callback takes the whole list at once and runs the done
 * callbacks in the order the jobs finished.
 *
 * The workers' disk I/O is in the idle class: the pool reads for
 * catching-up subscribers and checks, and removes old segments, while the
 * segment writer's writes and fdatasync (in fsync always mode, what every
 * live frame waits for) share the same disk queue. Schedulers that honour
 * I/O classes (mq-deadline, bfq) then serve the pool when the writer's
 * requests are done; mq-deadline still serves a request kept waiting for
 * 10 s (prio_aging_expire), so a busy writer does not starve a reader.
 */
#include "autoconfig.h"

#include <sys/prctl.h>
#include <sys/syscall.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "iopool.h"
#include "wakeup.h"

#define IOPOOL_MAX_THREADS	64

/* linux/ioprio.h, which not every libc's headers carry */
#define IOPOOL_IOPRIO_WHO_PROCESS	1
#define IOPOOL_IOPRIO_CLASS_IDLE	3
#define IOPOOL_IOPRIO_CLASS_SHIFT	13

STAILQ_HEAD(iopool_jobs, iopool_job);

struct iopool {
	char			 ip_name[32];
	pthread_mutex_t		 ip_mtx;
	pthread_cond_t		 ip_work;	/* a job queued, or stop */
	pthread_cond_t		 ip_idle;	/* a job finished */
	struct iopool_jobs	 ip_queue;	/* submitted */
	struct iopool_jobs	 ip_done;	/* finished, done not run */
	unsigned		 ip_queued;
	unsigned		 ip_running;
	unsigned		 ip_ndone;
	int			 ip_stop;
	struct wakeup		*ip_wake;	/* workers -> loop */
	pthread_t		*ip_threads;
	unsigned		 ip_nthreads;
	uint64_t		 ip_finished;	/* done callbacks run (loop) */
};

/*
 * This thread's disk I/O goes in the idle class (who 0: the calling
 * thread). Best effort: where the call is refused, the pool works as
 * before, at the process's priority.
 */
static void
iopool_idle_io(void)
{
#ifdef SYS_ioprio_set
	(void)syscall(SYS_ioprio_set, IOPOOL_IOPRIO_WHO_PROCESS, 0,
	    IOPOOL_IOPRIO_CLASS_IDLE << IOPOOL_IOPRIO_CLASS_SHIFT);
#endif
}

static void *
iopool_main(void *arg)
{
	struct iopool *ip = arg;
	struct iopool_job *j;
	int wake;

	prctl(PR_SET_NAME, "wr-io", 0, 0, 0);	/* top -H, tests/fault */
	iopool_idle_io();
	pthread_mutex_lock(&ip->ip_mtx);
	for (;;) {
		if ((j = STAILQ_FIRST(&ip->ip_queue)) == NULL) {
			if (ip->ip_stop)
				break;
			pthread_cond_wait(&ip->ip_work, &ip->ip_mtx);
			continue;
		}
		STAILQ_REMOVE_HEAD(&ip->ip_queue, ij_entry);
		ip->ip_queued--;
		ip->ip_running++;
		pthread_mutex_unlock(&ip->ip_mtx);
		j->ij_work(j);
		pthread_mutex_lock(&ip->ip_mtx);
		ip->ip_running--;
		wake = STAILQ_EMPTY(&ip->ip_done);
		STAILQ_INSERT_TAIL(&ip->ip_done, j, ij_entry);
		ip->ip_ndone++;
		pthread_cond_broadcast(&ip->ip_idle);
		if (wake)
			wakeup_signal(ip->ip_wake);
	}
	pthread_mutex_unlock(&ip->ip_mtx);
	return NULL;
}

/* Run the done callbacks of every finished job (loop thread). */
static void
iopool_reap(struct iopool *ip)
{
	struct iopool_jobs done;
	struct iopool_job *j;

	pthread_mutex_lock(&ip->ip_mtx);
	STAILQ_INIT(&done);
	STAILQ_CONCAT(&done, &ip->ip_done);
	ip->ip_ndone = 0;
	pthread_mutex_unlock(&ip->ip_mtx);
	while ((j = STAILQ_FIRST(&done)) != NULL) {
		STAILQ_REMOVE_HEAD(&done, ij_entry);
		ip->ip_finished++;
		j->ij_done(j);
	}
}

static void
iopool_wake_cb(void *arg)
{
	iopool_reap(arg);
}

struct iopool *
iopool_new(struct event_base *base, unsigned nthreads, const char *name,
    char *errbuf, size_t errlen)
{
	struct iopool *ip;
	sigset_t all, old;
	int r;

	if (nthreads == 0 || nthreads > IOPOOL_MAX_THREADS) {
		snprintf(errbuf, errlen, "I/O threads: %u is not within 1 to %d",
		    nthreads, IOPOOL_MAX_THREADS);
		return NULL;
	}
	if ((ip = calloc(1, sizeof(*ip))) == NULL ||
	    (ip->ip_threads = calloc(nthreads, sizeof(pthread_t))) == NULL) {
		free(ip);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	snprintf(ip->ip_name, sizeof(ip->ip_name), "%s", name);
	pthread_mutex_init(&ip->ip_mtx, NULL);
	pthread_cond_init(&ip->ip_work, NULL);
	pthread_cond_init(&ip->ip_idle, NULL);
	STAILQ_INIT(&ip->ip_queue);
	STAILQ_INIT(&ip->ip_done);
	if ((ip->ip_wake = wakeup_new(base, iopool_wake_cb, ip, errbuf,
	    errlen)) == NULL)
		goto fail;
	/* signals are for the loop thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (; ip->ip_nthreads < nthreads; ip->ip_nthreads++)
		if ((r = pthread_create(&ip->ip_threads[ip->ip_nthreads], NULL,
		    iopool_main, ip)) != 0)
			break;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ip->ip_nthreads < nthreads) {
		snprintf(errbuf, errlen, "cannot start the %s I/O threads: %s",
		    name, strerror(r));
		goto fail;
	}
	return ip;
fail:
	iopool_free(ip);
	return NULL;
}

void
iopool_submit(struct iopool *ip, struct iopool_job *j)
{
	pthread_mutex_lock(&ip->ip_mtx);
	STAILQ_INSERT_TAIL(&ip->ip_queue, j, ij_entry);
	ip->ip_queued++;
	pthread_cond_signal(&ip->ip_work);
	pthread_mutex_unlock(&ip->ip_mtx);
}

void
iopool_drain(struct iopool *ip)
{
	int more;

	if (ip == NULL)
		return;
	do {
		pthread_mutex_lock(&ip->ip_mtx);
		while (ip->ip_queued > 0 || ip->ip_running > 0)
			pthread_cond_wait(&ip->ip_idle, &ip->ip_mtx);
		pthread_mutex_unlock(&ip->ip_mtx);
		iopool_reap(ip);
		/* a done callback may have queued another job */
		pthread_mutex_lock(&ip->ip_mtx);
		more = ip->ip_queued > 0 || ip->ip_running > 0 ||
		    ip->ip_ndone > 0;
		pthread_mutex_unlock(&ip->ip_mtx);
	} while (more);
}

void
iopool_free(struct iopool *ip)
{
	if (ip == NULL)
		return;
	if (ip->ip_nthreads > 0)
		iopool_drain(ip);
	pthread_mutex_lock(&ip->ip_mtx);
	ip->ip_stop = 1;
	pthread_cond_broadcast(&ip->ip_work);
	pthread_mutex_unlock(&ip->ip_mtx);
	for (unsigned i = 0; i < ip->ip_nthreads; i++)
		pthread_join(ip->ip_threads[i], NULL);
	wakeup_free(ip->ip_wake);
	pthread_cond_destroy(&ip->ip_idle);
	pthread_cond_destroy(&ip->ip_work);
	pthread_mutex_destroy(&ip->ip_mtx);
	free(ip->ip_threads);
	free(ip);
}

void
iopool_status(struct iopool *ip, struct iopool_status *s)
{
	pthread_mutex_lock(&ip->ip_mtx);
	s->ips_threads = ip->ip_nthreads;
	s->ips_queued = ip->ip_queued;
	s->ips_running = ip->ip_running;
	pthread_mutex_unlock(&ip->ip_mtx);
	s->ips_done = ip->ip_finished;
}
