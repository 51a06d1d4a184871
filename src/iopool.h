/*
 * iopool.h: a few worker threads that do blocking file work (reads,
 * scans, unlink, fsync) for the event loop, and hand each finished job
 * back to it.
 *
 * A job is embedded in the caller's own struct. ij_work runs on a worker
 * thread and must not touch anything the loop owns; ij_done then runs on
 * the loop thread, exactly once per submitted job, from the pool's event
 * (an eventfd the workers write to: no libevent locking needed). A job
 * whose owner went away meanwhile is the owner's business: the usual way
 * is a pointer back to the owner that the owner clears when it goes (a
 * cancel token), and a done callback that then only frees the job.
 *
 * The loop never waits on a worker, except in iopool_drain and
 * iopool_free (shutdown: they wait for the jobs in flight and run their
 * done callbacks).
 */
#ifndef WALRELAY_IOPOOL_H
#define WALRELAY_IOPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

struct event_base;
struct iopool;

struct iopool_job {
	void			(*ij_work)(struct iopool_job *);	/* worker */
	void			(*ij_done)(struct iopool_job *);	/* loop */
	STAILQ_ENTRY(iopool_job) ij_entry;
};

/* For /metrics and tests. */
struct iopool_status {
	unsigned	 ips_threads;
	unsigned	 ips_queued;	/* submitted, not started */
	unsigned	 ips_running;
	uint64_t	 ips_done;	/* jobs whose ij_done has run */
};

/* A pool of nthreads workers bound to base. NULL with errbuf filled. */
struct iopool	*iopool_new(struct event_base *, unsigned nthreads,
		    const char *name, char *errbuf, size_t errlen);
/*
 * Queue a job (loop thread, or any thread). Never blocks on the disk. A
 * job is submitted again only once its done callback has run.
 */
void		 iopool_submit(struct iopool *, struct iopool_job *);
/*
 * Wait until every job submitted so far has finished and run the done
 * callbacks of all finished jobs (loop thread; shutdown and tests only).
 */
void		 iopool_drain(struct iopool *);
/* Drain, stop the workers and free the pool. */
void		 iopool_free(struct iopool *);
void		 iopool_status(struct iopool *, struct iopool_status *);

#endif
