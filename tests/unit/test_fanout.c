/*
 * test_fanout.c: waking caught-up subscribers (fanout_advance) and their
 * refills from the shared tail, with subscribers on bufferevent pairs: the
 * test reads what each one was sent from the other end of its pair.
 */
#include "autoconfig.h"

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "config.h"
#include "fanout.h"
#include "fcw2.h"
#include "frame.h"
#include "relay.h"
#include "subscriber.h"

static struct relay	 t_relay;
static struct wr_config	 t_cfg;
static struct fanout	*fo;

static void
setup(void)
{
	char err[256];

	memset(&t_relay, 0, sizeof(t_relay));
	memset(&t_cfg, 0, sizeof(t_cfg));
	t_cfg.tail_memory = 64 << 20;
	t_cfg.subscriber_buffer = 1 << 20;
	t_relay.r_cfg = &t_cfg;
	ck_assert_ptr_nonnull(t_relay.r_base = event_base_new());
	relay = &t_relay;
	fo = fanout_new(err, sizeof(err));
	ck_assert_msg(fo != NULL, "%s", err);
	relay->r_fan = fo;
}

static void
teardown(void)
{
	fanout_free(fo);
	relay->r_fan = NULL;
	event_base_free(t_relay.r_base);
	relay = NULL;
}

/*
 * A subscriber on one end of a socket pair. Its bufferevent never writes
 * (writing is not enabled): what it was sent stays in its output buffer.
 */
struct peer {
	struct subscriber	*p_sub;
	int			 p_fd;		/* the other end */
	struct subscriber	*p_close;	/* closed when bytes are queued */
};

/* Runs inside evbuffer_add, so inside the refill that queues the bytes. */
static void
peer_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct peer *p = arg;

	if (info->n_added > 0 && p->p_close != NULL) {
		subscriber_close(p->p_close, "closed by the test");
		p->p_close = NULL;
	}
}

/* A streaming subscriber at pos, as sub_start makes one. */
static void
peer_new(struct peer *p, uint64_t pos)
{
	struct bufferevent *bev;
	int sv[2];

	memset(p, 0, sizeof(*p));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_ptr_nonnull(bev = bufferevent_socket_new(t_relay.r_base,
	    sv[0], BEV_OPT_CLOSE_ON_FREE));
	p->p_fd = sv[1];
	ck_assert_ptr_nonnull(p->p_sub = calloc(1, sizeof(*p->p_sub)));
	p->p_sub->sub_bev = bev;
	snprintf(p->p_sub->sub_name, sizeof(p->p_sub->sub_name), "sub-%d",
	    sv[0]);
	p->p_sub->sub_state = SUB_STREAM;
	p->p_sub->sub_pos = p->p_sub->sub_start = pos;
	TAILQ_INSERT_TAIL(&fo->fo_subs, p->p_sub, sub_entry);
	fo->fo_nsubs++;
	evbuffer_add_cb(bufferevent_get_output(bev), peer_out_cb, p);
	subscriber_refill(p->p_sub);	/* nothing sendable: it waits */
	ck_assert_int_eq(p->p_sub->sub_waiting, 1);
}

static void
peer_free(struct peer *p)
{
	close(p->p_fd);
}

static size_t
frame_bytes(uint64_t seq, uint8_t *out, size_t cap)
{
	struct fcw2_record rec;
	char key[32];

	memset(&rec, 0, sizeof(rec));
	snprintf(key, sizeof(key), "key-%" PRIu64, seq);
	rec.op = FCW2_OP_SET;
	rec.key = (const uint8_t *)key;
	rec.key_len = (uint32_t)strlen(key);
	rec.value = (const uint8_t *)"value";
	rec.value_len = 5;
	rec.timestamp_ms = 1700000000000ull + seq;
	rec.expire_at_ms = -1;
	ck_assert_uint_le(fcw2_encoded_max(&rec), cap);
	return fcw2_encode(&rec, 0, out, cap);
}

/* Publish frames [first, first + n) as one chunk and make them sendable. */
static void
publish(uint64_t first, uint32_t n)
{
	struct chunk *ch;

	ck_assert_ptr_nonnull(ch = chunk_new(4096));
	for (uint32_t i = 0; i < n; i++)
		ch->ch_len += frame_bytes(first + i, ch->ch_data + ch->ch_len,
		    ch->ch_cap - ch->ch_len);
	ch->ch_seq = first;
	ch->ch_nframes = n;
	fanout_publish(fo, ch);
	chunk_unref(ch);
	fanout_advance(fo, first + n);
}

/* The peer has received exactly frames [first, end), nothing else. */
static void
assert_frames(struct peer *p, uint64_t first, uint64_t end)
{
	struct evbuffer *in = bufferevent_get_output(p->p_sub->sub_bev);
	uint8_t want[1 << 14], *got;
	size_t len = 0;

	for (uint64_t s = first; s < end; s++)
		len += frame_bytes(s, want + len, sizeof(want) - len);
	ck_assert_uint_eq(evbuffer_get_length(in), len);
	got = evbuffer_pullup(in, -1);
	ck_assert(len == 0 || memcmp(got, want, len) == 0);
}

/*
 * A subscriber closed by a callback that runs during another one's refill,
 * in the middle of fanout_advance, while it waits to be woken by that same
 * advance: the waiting list must stay whole, so the subscriber that caused
 * it is woken again by the next advance.
 */
START_TEST(test_close_during_advance)
{
	struct peer a, b;

	peer_new(&a, 0);
	peer_new(&b, 0);
	a.p_close = b.p_sub;	/* a's first bytes close b */
	publish(0, 2);
	assert_frames(&a, 0, 2);
	ck_assert_int_eq(b.p_sub->sub_state, SUB_DEAD);
	ck_assert_int_eq(b.p_sub->sub_waiting, 0);
	ck_assert_int_eq(a.p_sub->sub_waiting, 1);
	ck_assert_ptr_eq(TAILQ_FIRST(&fo->fo_waiting), a.p_sub);
	ck_assert_ptr_eq(TAILQ_LAST(&fo->fo_waiting, subscriber_list), a.p_sub);

	publish(2, 3);
	assert_frames(&a, 0, 5);
	ck_assert_int_eq(a.p_sub->sub_waiting, 1);
	peer_free(&a);
	peer_free(&b);
}
END_TEST

/*
 * Subscribers woken by one advance at different positions: small frames
 * are staged before they are queued, and each subscriber gets exactly its
 * own frames, every one of them.
 */
START_TEST(test_staged_bytes_stay_with_their_subscriber)
{
	struct peer p[4];

	for (int i = 0; i < 4; i++)
		peer_new(&p[i], 0);
	publish(0, 3);
	/* p[2] leaves; p[3] asks for nothing it was not sent */
	subscriber_close(p[2].p_sub, "test");
	publish(3, 4);
	for (int i = 0; i < 4; i++)
		assert_frames(&p[i], 0, i == 2 ? 3 : 7);
	/* one more round: the closed one is gone from the list */
	publish(7, 1);
	for (int i = 0; i < 4; i++) {
		assert_frames(&p[i], 0, i == 2 ? 3 : 8);
		if (i != 2)
			ck_assert_int_eq(p[i].p_sub->sub_waiting, 1);
	}
	for (int i = 0; i < 4; i++)
		peer_free(&p[i]);
}
END_TEST

static Suite *
fanout_suite(void)
{
	Suite *s = suite_create("fanout");
	TCase *tc = tcase_create("advance");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_close_during_advance);
	tcase_add_test(tc, test_staged_bytes_stay_with_their_subscriber);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(fanout_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
