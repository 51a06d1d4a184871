/*
 * subscriber.h: one downstream connection: the handshake, the cursor, the
 * refill from the tail or the segment files, the lag policy, the one close
 * path.
 */
#ifndef WALRELAY_SUBSCRIBER_H
#define WALRELAY_SUBSCRIBER_H

#include <stdint.h>
#include <sys/queue.h>

#include "handshake.h"
#include "segment.h"

struct bufferevent;
struct event;
struct fanout;
struct net_source;

enum subscriber_state {
	SUB_HANDSHAKE,
	SUB_STREAM,
	SUB_FLUSH,	/* a reply or error is being written, then close */
	SUB_DEAD,	/* closed, waiting to be freed from the loop */
};

struct subscriber {
	uint64_t		 sub_id;
	char			 sub_name[24];	/* "sub-42" */
	char			 sub_peer[64];
	struct bufferevent	*sub_bev;
	struct net_source	*sub_src;	/* per-address count */
	int			 sub_state;
	int			 sub_resuming;	/* FCWAL-SUB/1 */
	int			 sub_zstd;
	void			*sub_zc;	/* ZSTD_CCtx */
	int			 sub_zopen;	/* sub_zc has an unfinished frame */
	struct handshake	 sub_hs;
	struct event		*sub_timer;	/* auth deadline, flush deadline */
	uint64_t		 sub_start;	/* first frame it asked for */
	uint64_t		 sub_pos;	/* next frame to queue */
	uint64_t		 sub_bytes_queued;
	uint64_t		 sub_connected_ms;
	int			 sub_waiting;	/* on fo_waiting */
	uint64_t		 sub_wait_gen;	/* fo_wake_gen when it began waiting */
	/*
	 * Reached a frame the store cannot serve: nothing more is queued,
	 * it is closed once what is queued has been written.
	 */
	int			 sub_ending;
	int			 sub_on_disk;	/* reading segment files */
	/* a segment span being read piecewise (TLS, zstd) */
	struct segment_span	 sub_span;
	uint64_t		 sub_span_done;	/* bytes of the span queued */
	int			 sub_has_span;
	/* a full resync: the snapshot's SET frames, sent before sub_pos */
	int			 sub_resync;	/* the reply says snapshot= */
	int			 sub_snap_fd;	/* -1: none (left) */
	uint64_t		 sub_snap_off;
	uint64_t		 sub_snap_len;
	uint64_t		 sub_snap_entries;
	TAILQ_ENTRY(subscriber)	 sub_entry;	/* fo_subs, fo_pending, fo_closing */
	TAILQ_ENTRY(subscriber)	 sub_wentry;	/* fo_waiting */
};

/* Accept a connection on the subscriber port. */
void	subscriber_accept(struct fanout *, int fd, struct sockaddr *, int);
/* Queue frames up to the high watermark. */
void	subscriber_refill(struct subscriber *);
/* The one close path: log, count, unlink; freed later from the loop. */
void	subscriber_close(struct subscriber *, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
void	subscriber_free(struct subscriber *);
/* Free what subscribers share (at exit, after the last one is freed). */
void	subscriber_shutdown(void);
/* Frames the subscriber is behind the newest sendable frame. */
uint64_t subscriber_lag(const struct subscriber *);

#endif
