/*
 * fanout.c: the shared tail, its trimming by memory budget, and waking the
 * subscribers that have caught up when new frames become sendable.
 */
#include "autoconfig.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "fanout.h"
#include "log.h"
#include "net.h"
#include "relay.h"
#include "subscriber.h"

/*
 * Newly sendable chunks under FANOUT_MERGE_SMALL bytes are merged into
 * chunks of up to FANOUT_MERGE_MAX: big enough that a subscriber's
 * references are few, small enough that one pins little memory.
 */
#define FANOUT_MERGE_SMALL	(32 * 1024)
#define FANOUT_MERGE_MAX	(256 * 1024)

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
	struct subscriber *sub;

	while ((sub = TAILQ_FIRST(&fo->fo_closing)) != NULL) {
		TAILQ_REMOVE(&fo->fo_closing, sub, sub_entry);
		subscriber_free(sub);
	}
}

/*
 * Once a second: disconnect subscribers over the operator's lag limit,
 * apply retention (by age, it changes with the clock alone) and let go of
 * chunk buffers kept for reuse when the stream is idle.
 */
static void
fanout_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fanout *fo = arg;
	uint64_t max = relay->r_cfg->max_lag_frames;
	struct subscriber *sub, *next;

	if (max > 0) {
		for (sub = TAILQ_FIRST(&fo->fo_subs); sub != NULL; sub = next) {
			uint64_t lag = subscriber_lag(sub);

			next = TAILQ_NEXT(sub, sub_entry);
			/* one stopped at a corrupt frame is closing already */
			if (lag <= max || sub->sub_ending)
				continue;
			relay->r_stats.sub_disconnected_lag++;
			subscriber_close(sub, "%" PRIu64 " frames behind, over "
			    "the limit of %" PRIu64 " (max-lag): disconnected",
			    lag, max);
		}
	}
	if (relay->r_cfg->retain_age_s > 0 || relay->r_cfg->retain_bytes > 0)
		segstore_retain(relay->r_store);
	chunk_cache_tick();	/* no reuse for a second: free kept buffers */
}

struct fanout *
fanout_new(char *errbuf, size_t errlen)
{
	struct fanout *fo;

	if ((fo = calloc(1, sizeof(*fo))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	TAILQ_INIT(&fo->fo_tail);
	TAILQ_INIT(&fo->fo_subs);
	TAILQ_INIT(&fo->fo_waiting);
	TAILQ_INIT(&fo->fo_pending);
	TAILQ_INIT(&fo->fo_closing);
	if ((fo->fo_reaper = event_new(relay->r_base, -1, 0, fanout_reap_cb,
	    fo)) == NULL || (fo->fo_tick = event_new(relay->r_base, -1,
	    EV_PERSIST, fanout_tick_cb, fo)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	{
		struct timeval tv = { 1, 0 };
		event_add(fo->fo_tick, &tv);
	}
	if (relay->r_cfg->listen != NULL) {
		fo->fo_listener = net_listen(relay->r_cfg->listen,
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

void
fanout_stop(struct fanout *fo)
{
	struct subscriber *sub;

	fo->fo_stopped = 1;
	if (fo->fo_listener != NULL) {
		net_listener_free(fo->fo_listener);
		fo->fo_listener = NULL;
	}
	while ((sub = TAILQ_FIRST(&fo->fo_pending)) != NULL)
		subscriber_close(sub, "relay stopping");
}

void
fanout_free(struct fanout *fo)
{
	struct subscriber *sub;
	struct chunk *ch;

	if (fo == NULL)
		return;
	fanout_stop(fo);
	while ((sub = TAILQ_FIRST(&fo->fo_subs)) != NULL)
		subscriber_close(sub, "relay stopping");
	while ((sub = TAILQ_FIRST(&fo->fo_closing)) != NULL) {
		TAILQ_REMOVE(&fo->fo_closing, sub, sub_entry);
		subscriber_free(sub);
	}
	while ((ch = TAILQ_FIRST(&fo->fo_tail)) != NULL) {
		TAILQ_REMOVE(&fo->fo_tail, ch, ch_entry);
		chunk_unref(ch);
	}
	if (fo->fo_reaper != NULL)
		event_free(fo->fo_reaper);
	if (fo->fo_tick != NULL)
		event_free(fo->fo_tick);
	free(fo);
	subscriber_shutdown();
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
	uint64_t budget = relay->r_cfg->tail_memory;
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
	struct subscriber *sub;
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
	while ((sub = TAILQ_FIRST(&fo->fo_waiting)) != NULL &&
	    sub->sub_wait_gen < gen) {
		fanout_unwait(fo, sub);
		subscriber_refill(sub);
	}
	fo->fo_advancing = 0;
	fanout_trim(fo);
}

void
fanout_blocks_read(struct fanout *fo, uint64_t reads)
{
	struct subscriber *sub;
	uint64_t gen;

	if (reads == fo->fo_blocks_read || fo->fo_advancing)
		return;
	fo->fo_blocks_read = reads;
	fo->fo_advancing = 1;
	gen = ++fo->fo_wake_gen;
	while ((sub = TAILQ_FIRST(&fo->fo_waiting)) != NULL &&
	    sub->sub_wait_gen < gen) {
		fanout_unwait(fo, sub);
		subscriber_refill(sub);
	}
	fo->fo_advancing = 0;
}

void
fanout_wait(struct fanout *fo, struct subscriber *sub)
{
	WR_ASSERT(!sub->sub_waiting && sub->sub_state == SUB_STREAM);
	sub->sub_waiting = 1;
	sub->sub_wait_gen = fo->fo_wake_gen;
	TAILQ_INSERT_TAIL(&fo->fo_waiting, sub, sub_wentry);
}

void
fanout_unwait(struct fanout *fo, struct subscriber *sub)
{
	WR_ASSERT(sub->sub_waiting);
	TAILQ_REMOVE(&fo->fo_waiting, sub, sub_wentry);
	sub->sub_waiting = 0;
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

int
fanout_drained(struct fanout *fo)
{
	struct subscriber *sub;

	TAILQ_FOREACH(sub, &fo->fo_subs, sub_entry) {
		if (sub->sub_pos < fo->fo_sendable ||
		    evbuffer_get_length(bufferevent_get_output(sub->sub_bev)) > 0)
			return 0;
	}
	return 1;
}
