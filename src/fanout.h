/*
 * fanout.h: one stream's shared in-memory tail and the subscribers that
 * read it.
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

#include "chunk.h"

struct fanout;
struct stream;
struct subscriber;

/*
 * A subscriber's place in its fan-out's lists. The subscriber embeds it;
 * only fanout.c reads or writes its fields.
 */
struct fanout_link {
	struct subscriber		*fl_sub;
	int				 fl_list;	/* which list */
	int				 fl_waiting;	/* on fo_waiting */
	uint64_t			 fl_wait_gen;	/* fo_wake_gen then */
	TAILQ_ENTRY(fanout_link)	 fl_entry;
	TAILQ_ENTRY(fanout_link)	 fl_wentry;	/* fo_waiting */
};

/* For /metrics and /v1/status. */
struct fanout_status {
	unsigned	 fs_subscribers;	/* streaming */
	unsigned	 fs_pending;		/* in the handshake */
	size_t		 fs_tail_bytes;
	size_t		 fs_tail_cap;		/* their buffers' sizes */
	size_t		 fs_tail_chunks;
	uint64_t	 fs_sendable;
};

/* The fan-out of stream st; it opens st's subscriber listener, if any. */
struct fanout	*fanout_new(struct stream *st, char *errbuf, size_t errlen);
void		 fanout_free(struct fanout *);
struct stream	*fanout_stream(const struct fanout *);
/* A new chunk of stored frames (takes a reference). */
void		 fanout_publish(struct fanout *, struct chunk *);
/*
 * Frames below `sendable` may now be sent: wake the caught-up, trim.
 * Frames below `stored` can be read from the segment files: only those
 * leave the tail (fsync never sends before the writer has written).
 */
void		 fanout_advance(struct fanout *, uint64_t sendable,
		    uint64_t stored);
/*
 * The store finished reading archived blocks (its ss_archive_reads is
 * now reads): refill the waiting subscribers, some waited for them.
 */
void		 fanout_blocks_read(struct fanout *, uint64_t reads);
uint64_t	 fanout_sendable(const struct fanout *);
/* The tail chunk that holds frame seq, or NULL. */
struct chunk	*fanout_find(struct fanout *, uint64_t seq);
/* Stop accepting subscribers, close those in the handshake (shutdown). */
void		 fanout_stop(struct fanout *);
int		 fanout_stopped(const struct fanout *);
/* Its subscriber listener is shared with other streams. */
int		 fanout_routed(const struct fanout *);
/* Every subscriber has been sent everything sendable. */
int		 fanout_drained(struct fanout *);
/* Disconnect the streaming subscribers more than max frames behind. */
void		 fanout_enforce_lag(struct fanout *, uint64_t max);
void		 fanout_status(const struct fanout *, struct fanout_status *);
/*
 * Call fn for each streaming subscriber, oldest first. fn may close the
 * subscriber it is given (and only that one).
 */
void		 fanout_foreach(struct fanout *,
		    void (*fn)(struct subscriber *, void *), void *arg);
/*
 * For /metrics and /v1/status: call fn with the status of each streaming
 * subscriber, oldest first, with the lag in bytes and time and the
 * retention margins filled in: exact while a subscriber's position is in
 * the tail, interpolated within its segment file when it is older (one
 * look at the store's segment list per call). 0, or -1 when out of memory.
 */
struct subscriber_status;
int		 fanout_status_foreach(struct fanout *, void (*fn)(void *arg,
		    const struct subscriber_status *), void *arg);
/* Bytes of a segment file read at once for a TLS or zstd subscriber. */
#define FANOUT_PIECE	(256 * 1024)

/*
 * The subscriber side (subscriber.c). A new connection joins as pending
 * (fanout_join); fanout_start makes it streaming; fanout_leave takes it
 * off every list and frees it from the loop (subscriber_free), never
 * inside the caller's callback.
 */
void		 fanout_join(struct fanout *, struct fanout_link *,
		    struct subscriber *);
void		 fanout_start(struct fanout *, struct fanout_link *);
void		 fanout_leave(struct fanout *, struct fanout_link *);
/* Move a pending subscriber to another stream's fan-out (routing). */
void		 fanout_move(struct fanout *from, struct fanout *to,
		    struct fanout_link *);
/*
 * Wait for new sendable frames (a subscriber that has queued everything),
 * or stop waiting (a subscriber being closed, even from a refill that
 * fanout_advance started).
 */
void		 fanout_wait(struct fanout *, struct fanout_link *);
void		 fanout_unwait(struct fanout *, struct fanout_link *);
int		 fanout_waiting(const struct fanout_link *);

#endif
