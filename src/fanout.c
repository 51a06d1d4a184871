/*
 * fanout.c: one stream's shared tail, its trimming by memory budget, the
 * lists of its subscribers, and waking those that have caught up when new
 * frames become sendable.
 */
#include "autoconfig.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "fanout.h"
#include "log.h"
#include "net.h"
#include "relay.h"
#include "stream.h"
#include "subscriber.h"

/*
 * Newly sendable chunks under FANOUT_MERGE_SMALL bytes are merged into
 * chunks of up to FANOUT_MERGE_MAX: big enough that a subscriber's
 * references are few, small enough that one pins little memory.
 */
#define FANOUT_MERGE_SMALL	(32 * 1024)
#define FANOUT_MERGE_MAX	(256 * 1024)

enum fanout_list_id {
	FL_PENDING = 1,		/* in the handshake */
	FL_STREAMING,
	FL_CLOSING,		/* freed from the loop */
};

TAILQ_HEAD(fanout_links, fanout_link);

struct fanout {
	struct stream		*fo_stream;
	struct chunk_list	 fo_tail;
	size_t			 fo_tail_bytes;
	size_t			 fo_tail_cap;	/* their buffers' sizes */
	size_t			 fo_tail_chunks;
	uint64_t		 fo_sendable;	/* frames below this may be sent */
	struct fanout_links	 fo_subs;	/* streaming */
	/*
	 * Streaming, caught up: woken by fanout_advance. Only fanout_wait and
	 * fanout_unwait change it; it stays ordered by fl_wait_gen.
	 */
	struct fanout_links	 fo_waiting;
	uint64_t		 fo_wake_gen;	/* advances that woke subscribers */
	int			 fo_advancing;	/* in fanout_advance */
	struct fanout_links	 fo_pending;	/* in the handshake */
	struct fanout_links	 fo_closing;	/* freed from the loop */
	unsigned		 fo_nsubs;	/* streaming */
	unsigned		 fo_npending;
	struct net_listener	*fo_listener;
	struct event		*fo_reaper;
	uint8_t			*fo_piece;	/* fanout_piece() */
	int			 fo_stopped;
	/* its listener is shared: subscribers are routed by their line */
	int			 fo_routed;
};

static struct fanout_links *
fanout_list(struct fanout *fo, int id)
{
	switch (id) {
	case FL_PENDING:
		return &fo->fo_pending;
	case FL_STREAMING:
		return &fo->fo_subs;
	default:
		return &fo->fo_closing;
	}
}

static void
fanout_accept_cb(int fd, struct sockaddr *sa, int salen, void *arg)
{
	subscriber_accept(arg, fd, sa, salen);
}

/* Free closed subscribers outside any of their callbacks. */
static void
fanout_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fanout *fo = arg;
	struct fanout_link *l;

	while ((l = TAILQ_FIRST(&fo->fo_closing)) != NULL) {
		TAILQ_REMOVE(&fo->fo_closing, l, fl_entry);
		l->fl_list = 0;
		subscriber_free(l->fl_sub);
	}
}

/* The fan-out of a running stream that listens on addr, or NULL. */
static struct fanout *
fanout_owner(const char *addr)
{
	struct stream *st;

	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		if (st->st_fan != NULL && st->st_fan->fo_listener != NULL &&
		    strcmp(st->st_cfg->listen, addr) == 0)
			return st->st_fan;
	return NULL;
}

int
fanout_routed(const struct fanout *fo)
{
	return fo->fo_routed;
}

struct fanout *
fanout_new(struct stream *st, char *errbuf, size_t errlen)
{
	struct fanout *fo, *owner;

	if ((fo = calloc(1, sizeof(*fo))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	fo->fo_stream = st;
	fo->fo_sendable = stream_sendable(st);
	TAILQ_INIT(&fo->fo_tail);
	TAILQ_INIT(&fo->fo_subs);
	TAILQ_INIT(&fo->fo_waiting);
	TAILQ_INIT(&fo->fo_pending);
	TAILQ_INIT(&fo->fo_closing);
	if ((fo->fo_reaper = event_new(relay->r_base, -1, 0, fanout_reap_cb,
	    fo)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if (st->st_cfg->listen != NULL &&
	    (owner = fanout_owner(st->st_cfg->listen)) != NULL) {
		owner->fo_routed = 1;
		log_info("%s: subscriber: shares %s with stream %s (routed by "
		    "stream= or subscribe token)", st->st_name,
		    st->st_cfg->listen, owner->fo_stream->st_name);
	} else if (st->st_cfg->listen != NULL) {
		fo->fo_listener = net_listen(st->st_cfg->listen,
		    fanout_accept_cb, fo, relay->r_tls ? "subscriber (TLS)" :
		    "subscriber", errbuf, errlen);
		if (fo->fo_listener == NULL)
			goto fail;
	}
	return fo;
fail:
	fanout_free(fo);
	return NULL;
}

struct stream *
fanout_stream(const struct fanout *fo)
{
	return fo->fo_stream;
}

void
fanout_stop(struct fanout *fo)
{
	struct fanout_link *l;

	fo->fo_stopped = 1;
	if (fo->fo_listener != NULL) {
		net_listener_free(fo->fo_listener);
		fo->fo_listener = NULL;
	}
	while ((l = TAILQ_FIRST(&fo->fo_pending)) != NULL)
		subscriber_close(l->fl_sub, "relay stopping");
}

int
fanout_stopped(const struct fanout *fo)
{
	return fo->fo_stopped;
}

void
fanout_free(struct fanout *fo)
{
	struct fanout_link *l;
	struct chunk *ch;

	if (fo == NULL)
		return;
	fanout_stop(fo);
	while ((l = TAILQ_FIRST(&fo->fo_subs)) != NULL)
		subscriber_close(l->fl_sub, "relay stopping");
	if (fo->fo_reaper != NULL)
		fanout_reap_cb(-1, 0, fo);
	while ((ch = TAILQ_FIRST(&fo->fo_tail)) != NULL) {
		TAILQ_REMOVE(&fo->fo_tail, ch, ch_entry);
		chunk_unref(ch);
	}
	if (fo->fo_reaper != NULL)
		event_free(fo->fo_reaper);
	free(fo->fo_piece);
	free(fo);
}

void
fanout_publish(struct fanout *fo, struct chunk *ch)
{
	chunk_ref(ch);
	TAILQ_INSERT_TAIL(&fo->fo_tail, ch, ch_entry);
	fo->fo_tail_bytes += ch->ch_len;
	fo->fo_tail_cap += ch->ch_cap;
	fo->fo_tail_chunks++;
}

/* Drop the oldest durable chunks while the tail is over its budget. */
static void
fanout_trim(struct fanout *fo)
{
	uint64_t budget = fo->fo_stream->st_cfg->tail_memory;
	struct chunk *ch;

	while ((ch = TAILQ_FIRST(&fo->fo_tail)) != NULL &&
	    fo->fo_tail_bytes > budget && CHUNK_END(ch) <= fo->fo_sendable) {
		TAILQ_REMOVE(&fo->fo_tail, ch, ch_entry);
		fo->fo_tail_bytes -= ch->ch_len;
		fo->fo_tail_cap -= ch->ch_cap;
		fo->fo_tail_chunks--;
		/* subscribers still sending it hold their own references */
		chunk_unref(ch);
	}
}

void
fanout_advance(struct fanout *fo, uint64_t sendable)
{
	struct fanout_link *l;
	uint64_t gen;

	if (sendable <= fo->fo_sendable) {
		fanout_trim(fo);
		return;
	}
	/*
	 * Nobody has read the newly sendable chunks yet: merge the small ones
	 * (a slow cache or a busy loop reads the upstream a few KiB at a
	 * time). Each subscriber then queues one reference per merged chunk
	 * instead of one per read: one copy here saves a libevent buffer
	 * (1 KiB or more) and a copy or an iovec per subscriber per chunk.
	 */
	{
		long long capdelta = 0;

		fo->fo_tail_chunks -= chunk_list_merge(&fo->fo_tail,
		    fo->fo_sendable, sendable, FANOUT_MERGE_SMALL,
		    FANOUT_MERGE_MAX, &capdelta);
		fo->fo_tail_cap = (size_t)((long long)fo->fo_tail_cap +
		    capdelta);
	}
	fo->fo_sendable = sendable;
	/*
	 * Wake everyone who waited before this advance. A refill may put its
	 * subscriber back (at the end, with the new generation, which ends the
	 * loop) or close any subscriber (which takes it off fo_waiting itself):
	 * the list is never held anywhere else.
	 */
	WR_ASSERT(!fo->fo_advancing);
	fo->fo_advancing = 1;
	gen = ++fo->fo_wake_gen;
	while ((l = TAILQ_FIRST(&fo->fo_waiting)) != NULL &&
	    l->fl_wait_gen < gen) {
		fanout_unwait(fo, l);
		subscriber_refill(l->fl_sub);
	}
	fo->fo_advancing = 0;
	fanout_trim(fo);
}

uint64_t
fanout_sendable(const struct fanout *fo)
{
	return fo->fo_sendable;
}

void
fanout_join(struct fanout *fo, struct fanout_link *l, struct subscriber *sub)
{
	memset(l, 0, sizeof(*l));
	l->fl_sub = sub;
	l->fl_list = FL_PENDING;
	TAILQ_INSERT_TAIL(&fo->fo_pending, l, fl_entry);
	fo->fo_npending++;
}

void
fanout_start(struct fanout *fo, struct fanout_link *l)
{
	WR_ASSERT(l->fl_list == FL_PENDING);
	TAILQ_REMOVE(&fo->fo_pending, l, fl_entry);
	fo->fo_npending--;
	l->fl_list = FL_STREAMING;
	TAILQ_INSERT_TAIL(&fo->fo_subs, l, fl_entry);
	fo->fo_nsubs++;
}

void
fanout_leave(struct fanout *fo, struct fanout_link *l)
{
	WR_ASSERT(l->fl_list == FL_PENDING || l->fl_list == FL_STREAMING);
	if (l->fl_waiting)
		fanout_unwait(fo, l);
	TAILQ_REMOVE(fanout_list(fo, l->fl_list), l, fl_entry);
	if (l->fl_list == FL_STREAMING)
		fo->fo_nsubs--;
	else
		fo->fo_npending--;
	l->fl_list = FL_CLOSING;
	TAILQ_INSERT_TAIL(&fo->fo_closing, l, fl_entry);
	event_active(fo->fo_reaper, 0, 0);
}

void
fanout_move(struct fanout *from, struct fanout *to, struct fanout_link *l)
{
	WR_ASSERT(l->fl_list == FL_PENDING);
	TAILQ_REMOVE(&from->fo_pending, l, fl_entry);
	from->fo_npending--;
	TAILQ_INSERT_TAIL(&to->fo_pending, l, fl_entry);
	to->fo_npending++;
}

void
fanout_wait(struct fanout *fo, struct fanout_link *l)
{
	WR_ASSERT(!l->fl_waiting && l->fl_list == FL_STREAMING);
	l->fl_waiting = 1;
	l->fl_wait_gen = fo->fo_wake_gen;
	TAILQ_INSERT_TAIL(&fo->fo_waiting, l, fl_wentry);
}

void
fanout_unwait(struct fanout *fo, struct fanout_link *l)
{
	WR_ASSERT(l->fl_waiting);
	TAILQ_REMOVE(&fo->fo_waiting, l, fl_wentry);
	l->fl_waiting = 0;
}

int
fanout_waiting(const struct fanout_link *l)
{
	return l->fl_waiting;
}

struct chunk *
fanout_find(struct fanout *fo, uint64_t seq)
{
	struct chunk *ch;

	/* live subscribers are near the end: search backwards */
	TAILQ_FOREACH_REVERSE(ch, &fo->fo_tail, chunk_list, ch_entry) {
		if (ch->ch_seq <= seq) {
			if (seq < CHUNK_END(ch))
				return ch;
			return NULL;
		}
	}
	return NULL;
}

void
fanout_foreach(struct fanout *fo, void (*fn)(struct subscriber *, void *),
    void *arg)
{
	struct fanout_link *l, *next;

	for (l = TAILQ_FIRST(&fo->fo_subs); l != NULL; l = next) {
		next = TAILQ_NEXT(l, fl_entry);
		fn(l->fl_sub, arg);
	}
}

int
fanout_drained(struct fanout *fo)
{
	struct fanout_link *l;

	TAILQ_FOREACH(l, &fo->fo_subs, fl_entry)
		if (!subscriber_drained(l->fl_sub))
			return 0;
	return 1;
}

static void
fanout_lag_cb(struct subscriber *sub, void *arg)
{
	subscriber_enforce_lag(sub, *(uint64_t *)arg);
}

void
fanout_enforce_lag(struct fanout *fo, uint64_t max)
{
	fanout_foreach(fo, fanout_lag_cb, &max);
}

void
fanout_status(const struct fanout *fo, struct fanout_status *fs)
{
	memset(fs, 0, sizeof(*fs));
	fs->fs_subscribers = fo->fo_nsubs;
	fs->fs_pending = fo->fo_npending;
	fs->fs_tail_bytes = fo->fo_tail_bytes;
	fs->fs_tail_cap = fo->fo_tail_cap;
	fs->fs_tail_chunks = fo->fo_tail_chunks;
	fs->fs_sendable = fo->fo_sendable;
}

uint8_t *
fanout_piece(struct fanout *fo)
{
	if (fo->fo_piece == NULL)
		fo->fo_piece = malloc(FANOUT_PIECE);
	return fo->fo_piece;
}
