/*
 * fanout.h: the shared in-memory tail and the subscribers that read it.
 *
 * The tail is one list of refcounted chunks in sequence order. Nothing is
 * pushed to subscribers at publish time: each one is a cursor that refills
 * its own socket buffer from the tail (or from the segment files when it
 * has fallen behind the tail) up to its own high watermark.
 */
#ifndef WALRELAY_FANOUT_H
#define WALRELAY_FANOUT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "frame.h"

struct subscriber;
TAILQ_HEAD(subscriber_list, subscriber);

struct fanout {
	struct chunk_list	 fo_tail;
	size_t			 fo_tail_bytes;
	size_t			 fo_tail_cap;	/* their buffers' sizes */
	size_t			 fo_tail_chunks;
	uint64_t		 fo_sendable;	/* frames below this may be sent */
	struct subscriber_list	 fo_subs;	/* streaming */
	/*
	 * Streaming, caught up: woken by fanout_advance. Only fanout_wait and
	 * fanout_unwait change it; it stays ordered by sub_wait_gen.
	 */
	struct subscriber_list	 fo_waiting;
	uint64_t		 fo_wake_gen;	/* advances that woke subscribers */
	int			 fo_advancing;	/* in fanout_advance */
	uint64_t		 fo_blocks_read; /* fanout_blocks_read's last */
	struct subscriber_list	 fo_pending;	/* in the handshake */
	struct subscriber_list	 fo_closing;	/* freed from the loop */
	unsigned		 fo_nsubs;	/* streaming */
	struct net_listener	*fo_listener;
	struct event		*fo_reaper;
	struct event		*fo_tick;	/* lag policy, retention by age */
	int			 fo_stopped;
};

struct fanout	*fanout_new(char *errbuf, size_t errlen);
void		 fanout_free(struct fanout *);
/* A new chunk of stored frames (takes a reference). */
void		 fanout_publish(struct fanout *, struct chunk *);
/* Frames below `sendable` may now be sent: wake the caught-up, trim. */
void		 fanout_advance(struct fanout *, uint64_t sendable);
/*
 * Wait for new sendable frames (a subscriber that has queued everything),
 * or stop waiting (a subscriber being closed, even from a refill that
 * fanout_advance started).
 */
void		 fanout_wait(struct fanout *, struct subscriber *);
/*
 * The store finished reading archived blocks (its ss_archive_reads is
 * now reads): refill the waiting subscribers, some waited for them.
 */
void		 fanout_blocks_read(struct fanout *, uint64_t reads);
void		 fanout_unwait(struct fanout *, struct subscriber *);
/* The tail chunk that holds frame seq, or NULL. */
struct chunk	*fanout_find(struct fanout *, uint64_t seq);
/* Stop accepting subscribers (shutdown). */
void		 fanout_stop(struct fanout *);
/* Every subscriber has been sent everything sendable. */
int		 fanout_drained(struct fanout *);

#endif
