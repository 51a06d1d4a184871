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

#include "clock.h"
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
	uint64_t		 fo_stored;	/* and below this are on disk */
	struct fanout_links	 fo_subs;	/* streaming */
	/*
	 * Streaming, caught up: woken by fanout_advance. Only fanout_wait and
	 * fanout_unwait change it; it stays ordered by fl_wait_gen.
	 */
	struct fanout_links	 fo_waiting;
	uint64_t		 fo_wake_gen;	/* advances that woke subscribers */
	int			 fo_advancing;	/* in fanout_advance */
	uint64_t		 fo_blocks_read; /* fanout_blocks_read's last */
	struct fanout_links	 fo_pending;	/* in the handshake */
	struct fanout_links	 fo_closing;	/* freed from the loop */
	unsigned		 fo_nsubs;	/* streaming */
	unsigned		 fo_npending;
	struct net_listener	*fo_listener;
	struct event		*fo_reaper;
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
	fo->fo_stored = st->st_ss.ss_durable;
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
	    fo->fo_tail_bytes > budget && CHUNK_END(ch) <= fo->fo_sendable &&
	    CHUNK_END(ch) <= fo->fo_stored) {
		TAILQ_REMOVE(&fo->fo_tail, ch, ch_entry);
		fo->fo_tail_bytes -= ch->ch_len;
		fo->fo_tail_cap -= ch->ch_cap;
		fo->fo_tail_chunks--;
		/* subscribers still sending it hold their own references */
		chunk_unref(ch);
	}
}

void
fanout_advance(struct fanout *fo, uint64_t sendable, uint64_t stored)
{
	struct fanout_link *l;
	uint64_t gen;

	if (stored > fo->fo_stored)
		fo->fo_stored = stored;
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

void
fanout_blocks_read(struct fanout *fo, uint64_t reads)
{
	struct fanout_link *l, *next;
	uint64_t gen;

	if (reads == fo->fo_blocks_read || fo->fo_advancing)
		return;
	fo->fo_blocks_read = reads;
	/* handshakes that wait for the check of their first frame */
	for (l = TAILQ_FIRST(&fo->fo_pending); l != NULL; l = next) {
		next = TAILQ_NEXT(l, fl_entry);
		subscriber_handshake_resume(l->fl_sub);
	}
	fo->fo_advancing = 1;
	gen = ++fo->fo_wake_gen;
	while ((l = TAILQ_FIRST(&fo->fo_waiting)) != NULL &&
	    l->fl_wait_gen < gen) {
		fanout_unwait(fo, l);
		subscriber_refill(l->fl_sub);
	}
	fo->fo_advancing = 0;
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

/* ---- status: lag in bytes and time, retention margins ------------------ */

struct fo_seg {
	uint64_t	 fs_base;
	uint64_t	 fs_end;
	uint64_t	 fs_bytes;
	uint64_t	 fs_created_ms;
};

struct fo_index {
	struct fo_seg	*fi_segs;	/* oldest first */
	size_t		 fi_nsegs;
	size_t		 fi_capsegs;
	int		 fi_oom;
	struct chunk	**fi_chunks;	/* the sendable tail, oldest first */
	uint64_t	*fi_after;	/* bytes of the sendable tail after each */
	size_t		 fi_nchunks;
};

static void
fanout_seg_cb(void *arg, const char *name, uint64_t base, uint64_t end,
    uint64_t bytes)
{
	struct fo_index *fi = arg;
	struct fo_seg *v;
	uint64_t created = 0;

	if (fi->fi_nsegs == fi->fi_capsegs) {
		size_t cap = fi->fi_capsegs ? fi->fi_capsegs * 2 : 64;

		if ((v = reallocarray(fi->fi_segs, cap, sizeof(*v))) == NULL) {
			fi->fi_oom = 1;
			return;
		}
		fi->fi_segs = v;
		fi->fi_capsegs = cap;
	}
	(void)segment_name_parse(name, &base, &created);
	v = &fi->fi_segs[fi->fi_nsegs++];
	v->fs_base = base;
	v->fs_end = end;
	v->fs_bytes = bytes;
	v->fs_created_ms = created;
}

/* The segment that holds seq (the newest for later ones), or -1. */
static ssize_t
fanout_seg_of(const struct fo_index *fi, uint64_t seq)
{
	size_t lo = 0, hi = fi->fi_nsegs;

	if (hi == 0 || seq < fi->fi_segs[0].fs_base)
		return -1;
	while (hi - lo > 1) {		/* the last one with base <= seq */
		size_t mid = lo + (hi - lo) / 2;

		if (fi->fi_segs[mid].fs_base <= seq)
			lo = mid;
		else
			hi = mid;
	}
	return (ssize_t)lo;
}

/* Bytes of the frames [from, to) in segment files, by interpolation. */
static uint64_t
fanout_seg_bytes(const struct fo_index *fi, uint64_t from, uint64_t to)
{
	ssize_t i = fanout_seg_of(fi, from);
	uint64_t bytes = 0;

	for (; i >= 0 && (size_t)i < fi->fi_nsegs && from < to; i++) {
		const struct fo_seg *g = &fi->fi_segs[i];
		uint64_t lo = from > g->fs_base ? from : g->fs_base;
		uint64_t hi = to < g->fs_end ? to : g->fs_end;

		if (g->fs_end > g->fs_base && hi > lo)
			bytes += (uint64_t)((long double)g->fs_bytes *
			    (hi - lo) / (g->fs_end - g->fs_base));
	}
	return bytes;
}

/* The sendable tail chunk that holds seq, or -1. */
static ssize_t
fanout_chunk_of(const struct fo_index *fi, uint64_t seq)
{
	size_t lo = 0, hi = fi->fi_nchunks;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (CHUNK_END(fi->fi_chunks[mid]) <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == fi->fi_nchunks || fi->fi_chunks[lo]->ch_seq > seq)
		return -1;
	return (ssize_t)lo;
}

static void
fanout_lag(const struct fanout *fo, const struct fo_index *fi,
    struct subscriber_status *st, uint64_t now_us, uint64_t now_ms)
{
	uint64_t p = st->ss_pos, s = fo->fo_sendable, t;
	ssize_t i;

	st->ss_lag_exact = 1;
	if (p >= s)
		return;
	if ((i = fanout_chunk_of(fi, p)) != -1) {
		struct chunk *ch = fi->fi_chunks[i];

		st->ss_lag_bytes = ch->ch_len - chunk_offset_of(ch, p) +
		    fi->fi_after[i];
		if (ch->ch_recv_us != 0 && now_us > ch->ch_recv_us)
			st->ss_lag_us = now_us - ch->ch_recv_us;
		return;
	}
	/* on disk: up to the tail's first sendable frame, then the tail */
	st->ss_lag_exact = 0;
	t = fi->fi_nchunks > 0 ? fi->fi_chunks[0]->ch_seq : s;
	if (t < p)
		t = p;
	st->ss_lag_bytes = fanout_seg_bytes(fi, p, t) +
	    (fi->fi_nchunks > 0 && p < t ? fi->fi_chunks[0]->ch_len +
	    fi->fi_after[0] : 0);
	if ((i = fanout_seg_of(fi, p)) != -1) {
		const struct fo_seg *g = &fi->fi_segs[i];
		uint64_t next = (size_t)i + 1 < fi->fi_nsegs ?
		    fi->fi_segs[i + 1].fs_created_ms : now_ms;
		uint64_t at = g->fs_created_ms;

		/* frames arrived between its creation and the next's */
		if (g->fs_end > g->fs_base && next > at && p > g->fs_base)
			at += (uint64_t)((long double)(next - at) *
			    (p - g->fs_base) / (g->fs_end - g->fs_base));
		if (now_ms > at)
			st->ss_lag_us = (now_ms - at) * 1000;
	}
}

static void
fanout_margins(const struct fanout *fo, const struct fo_index *fi,
    struct subscriber_status *st, uint64_t now_ms)
{
	const struct wr_config *cfg = fo->fo_stream->st_cfg;
	ssize_t i = fanout_seg_of(fi, st->ss_pos);
	uint64_t kept = 0;

	st->ss_has_margin_bytes = cfg->retain_bytes != 0;
	st->ss_has_margin_s = cfg->retain_age_s != 0;
	if (i == -1)		/* no segment, or its position is gone */
		return;
	if (st->ss_has_margin_bytes) {
		/* retention deletes the oldest files while over the limit */
		for (size_t k = (size_t)i; k < fi->fi_nsegs; k++)
			kept += fi->fi_segs[k].fs_bytes;
		st->ss_margin_bytes = cfg->retain_bytes > kept ?
		    cfg->retain_bytes - kept : 0;
	}
	if (st->ss_has_margin_s) {
		/* a file goes retain-age after its successor was started */
		if ((size_t)i + 1 == fi->fi_nsegs)
			st->ss_margin_s = cfg->retain_age_s;
		else {
			uint64_t at = fi->fi_segs[i + 1].fs_created_ms +
			    cfg->retain_age_s * 1000;

			st->ss_margin_s = at > now_ms ? (at - now_ms) / 1000 :
			    0;
		}
	}
}

int
fanout_status_foreach(struct fanout *fo, void (*fn)(void *,
    const struct subscriber_status *), void *arg)
{
	struct fo_index fi;
	struct subscriber_status st;
	struct fanout_link *l;
	struct chunk *ch;
	uint64_t now_us = clock_mono_us(), now_ms = clock_wall_ms(), after;
	size_t n = 0;
	int rc = -1;

	memset(&fi, 0, sizeof(fi));
	if (TAILQ_EMPTY(&fo->fo_subs))
		return 0;
	segstore_foreach(fo->fo_stream->st_store, fanout_seg_cb, &fi);
	if (fi.fi_oom)
		goto done;
	if (fo->fo_tail_chunks > 0 &&
	    ((fi.fi_chunks = calloc(fo->fo_tail_chunks,
	    sizeof(*fi.fi_chunks))) == NULL ||
	    (fi.fi_after = calloc(fo->fo_tail_chunks,
	    sizeof(*fi.fi_after))) == NULL))
		goto done;
	TAILQ_FOREACH(ch, &fo->fo_tail, ch_entry) {
		if (CHUNK_END(ch) > fo->fo_sendable || n == fo->fo_tail_chunks)
			break;
		fi.fi_chunks[n++] = ch;
	}
	fi.fi_nchunks = n;
	for (after = 0; n > 0; n--) {
		fi.fi_after[n - 1] = after;
		after += fi.fi_chunks[n - 1]->ch_len;
	}
	TAILQ_FOREACH(l, &fo->fo_subs, fl_entry) {
		subscriber_status(l->fl_sub, &st);
		fanout_lag(fo, &fi, &st, now_us, now_ms);
		fanout_margins(fo, &fi, &st, now_ms);
		fn(arg, &st);
	}
	rc = 0;
done:
	free(fi.fi_segs);
	free(fi.fi_chunks);
	free(fi.fi_after);
	return rc;
}
