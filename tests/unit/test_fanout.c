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
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "auth.h"
#include "config.h"
#include "fanout.h"
#include "fcw2.h"
#include "chunk.h"
#include "relay.h"
#include "stream.h"
#include "subscriber.h"
#include "upstream.h"

#include <event2/thread.h>

static struct relay	 t_relay;
static struct wr_config	 t_cfg;
static struct stream	*st;
static struct fanout	*fo;
static char		 t_dir[64];

/* One stream in a fresh directory, no listeners: connections come in
 * through socket pairs. */
static void
stream_setup(const char *publish_tokens, const char *fsync)
{
	char *argv[] = { "walrelay", "--data-dir", t_dir, "--http", "none",
	    "--fsync", (char *)fsync, "--tail-memory", "64M",
	    "--subscriber-buffer", "1M", NULL };
	struct auth_tokens *tok;
	char err[512];

	snprintf(t_dir, sizeof(t_dir), "/tmp/test_fanout.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(t_dir));
	memset(&t_relay, 0, sizeof(t_relay));
	memset(&t_cfg, 0, sizeof(t_cfg));
	ck_assert_int_eq(evthread_use_pthreads(), 0);
	ck_assert_msg(config_parse(11, argv, NULL, 0, &t_cfg, err,
	    sizeof(err)) == 0, "%s", err);
	/* no listeners: the test connects through socket pairs */
	free(t_cfg.listen);
	t_cfg.listen = NULL;
	free(t_cfg.ingest);
	t_cfg.ingest = NULL;
	t_relay.r_cfg = &t_cfg;
	TAILQ_INIT(&t_relay.r_streams);
	ck_assert_ptr_nonnull(t_relay.r_base = event_base_new());
	relay = &t_relay;
	ck_assert_ptr_nonnull(tok = calloc(1, sizeof(*tok)));
	tokenset_init(&tok->at_publish);
	tokenset_init(&tok->at_subscribe);
	tokenset_init(&tok->at_upstream);
	if (publish_tokens != NULL)
		ck_assert_int_eq(tokenset_load_list(&tok->at_publish,
		    publish_tokens, "test", err, sizeof(err)), 0);
	st = stream_new("default", &t_cfg, tok, NULL, err, sizeof(err));
	ck_assert_msg(st != NULL, "%s", err);
	TAILQ_INSERT_TAIL(&t_relay.r_streams, st, st_entry);
	t_relay.r_nstreams = 1;
	fo = st->st_fan;
}

static void
setup(void)
{
	stream_setup(NULL, "never");
}

static void
setup_always(void)
{
	stream_setup(NULL, "always");
}

static void
setup_tokens(void)
{
	stream_setup("secret-1", "never");
}

static void
teardown(void)
{
	char cmd[128];

	TAILQ_REMOVE(&t_relay.r_streams, st, st_entry);
	ck_assert_int_eq(stream_close(st), 0);
	event_base_loop(t_relay.r_base, EVLOOP_NONBLOCK);
	stream_free(st);
	config_free(&t_cfg);
	event_base_free(t_relay.r_base);
	relay = NULL;
	ck_assert_int_eq(chunk_live_count(), 0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", t_dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Run the loop until cond() holds, for at most 5 seconds. */
#define LOOP_UNTIL(cond) do {						\
	struct timespec t0_, t1_;					\
	clock_gettime(CLOCK_MONOTONIC, &t0_);				\
	while (!(cond)) {						\
		event_base_loop(t_relay.r_base, EVLOOP_ONCE |		\
		    EVLOOP_NONBLOCK);					\
		clock_gettime(CLOCK_MONOTONIC, &t1_);			\
		ck_assert_msg(t1_.tv_sec - t0_.tv_sec < 5, "timed out: %s", \
		    #cond);						\
		if (!(cond))						\
			usleep(1000);	/* poll; the writer is a thread */ \
	}								\
} while (0)

static struct sockaddr_in
loopback(void)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(0x7f000001);
	sin.sin_port = htons(40000);
	return sin;
}

/*
 * A subscriber on one end of a socket pair, through its real handshake.
 * What it was sent is what reached the other end (a refill writes the
 * socket itself) followed by what is still in its output buffer (the
 * loop is not run between publishing and checking).
 */
struct peer {
	struct subscriber	*p_sub;
	int			 p_fd;		/* the other end */
	struct subscriber	*p_close;	/* closed when bytes are queued */
	uint8_t			 p_got[1 << 14]; /* read from p_fd so far */
	size_t			 p_len;
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

static int
peer_state(struct peer *p)
{
	struct subscriber_status ss;

	subscriber_status(p->p_sub, &ss);
	return ss.ss_state;
}

static int
peer_waiting(struct peer *p)
{
	struct subscriber_status ss;

	subscriber_status(p->p_sub, &ss);
	return ss.ss_waiting;
}

/* A stock subscriber: its auth line, then it streams from the next frame. */
static void
peer_new(struct peer *p)
{
	struct sockaddr_in sin = loopback();
	const char *line = "FCWAL-AUTH/1 anything\n";
	int sv[2];

	memset(p, 0, sizeof(*p));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	/* the relay's end is non-blocking, as an accepted one is */
	ck_assert_int_eq(evutil_make_socket_nonblocking(sv[0]), 0);
	p->p_fd = sv[1];
	ck_assert_ptr_nonnull(p->p_sub = subscriber_accept(fo, sv[0],
	    (struct sockaddr *)&sin, sizeof(sin)));
	ck_assert_int_eq(write(p->p_fd, line, strlen(line)),
	    (ssize_t)strlen(line));
	LOOP_UNTIL(peer_state(p) == SUB_STREAM);
	evbuffer_add_cb(subscriber_output(p->p_sub), peer_out_cb, p);
	ck_assert_int_eq(peer_waiting(p), 1);	/* nothing sendable yet */
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
	fanout_advance(fo, first + n, first + n);
}

/* What reached the peer's end so far, without blocking. */
static void
peer_take(struct peer *p)
{
	ssize_t n;

	fcntl(p->p_fd, F_SETFL, O_NONBLOCK);
	while (p->p_len < sizeof(p->p_got) && (n = read(p->p_fd,
	    p->p_got + p->p_len, sizeof(p->p_got) - p->p_len)) > 0)
		p->p_len += (size_t)n;
}

/*
 * The peer has been sent exactly frames [first, end), nothing else: on
 * its socket, then in its output buffer.
 */
static void
assert_frames(struct peer *p, uint64_t first, uint64_t end)
{
	struct evbuffer *in = subscriber_output(p->p_sub);
	uint8_t want[1 << 14], *got;
	size_t len = 0, queued;

	for (uint64_t s = first; s < end; s++)
		len += frame_bytes(s, want + len, sizeof(want) - len);
	peer_take(p);
	queued = evbuffer_get_length(in);
	ck_assert_uint_eq(p->p_len + queued, len);
	ck_assert(p->p_len == 0 || memcmp(p->p_got, want, p->p_len) == 0);
	got = evbuffer_pullup(in, -1);
	ck_assert(queued == 0 || memcmp(got, want + p->p_len, queued) == 0);
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

	struct fanout_status fs;

	peer_new(&a);
	peer_new(&b);
	a.p_close = b.p_sub;	/* a's first bytes close b */
	publish(0, 2);
	assert_frames(&a, 0, 2);
	ck_assert_int_eq(peer_state(&b), SUB_DEAD);
	ck_assert_int_eq(peer_waiting(&b), 0);
	ck_assert_int_eq(peer_waiting(&a), 1);
	fanout_status(fo, &fs);
	ck_assert_uint_eq(fs.fs_subscribers, 1);

	publish(2, 3);
	assert_frames(&a, 0, 5);
	ck_assert_int_eq(peer_waiting(&a), 1);
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
		peer_new(&p[i]);
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
			ck_assert_int_eq(peer_waiting(&p[i]), 1);
	}
	for (int i = 0; i < 4; i++)
		peer_free(&p[i]);
}
END_TEST

/* ---- upstream -> store -> fan-out -> subscriber, over socket pairs --- */

/* A publisher connection on the stream's upstream; returns our end. */
static int
publisher_new(void)
{
	struct sockaddr_in sin = loopback();
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(evutil_make_socket_nonblocking(sv[0]), 0);
	upstream_accept(st->st_up, sv[0], (struct sockaddr *)&sin,
	    sizeof(sin));
	return sv[1];
}

static void
send_frames(int fd, uint64_t first, uint32_t n)
{
	uint8_t buf[1 << 14];
	size_t len = 0;

	for (uint32_t i = 0; i < n; i++)
		len += frame_bytes(first + i, buf + len, sizeof(buf) - len);
	ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
}

/* Read what the peer's end has received, until want bytes or 5 s. */
static size_t
peer_read(struct peer *p, uint8_t *buf, size_t want)
{
	size_t got = 0;
	ssize_t n;

	fcntl(p->p_fd, F_SETFL, O_NONBLOCK);
	LOOP_UNTIL(got >= want || ((n = read(p->p_fd, buf + got,
	    want - got)) > 0 && (got += (size_t)n) >= want));
	return got;
}

static int
peer_eof(int fd)
{
	char c;

	fcntl(fd, F_SETFL, O_NONBLOCK);
	return read(fd, &c, 1) == 0;
}

/*
 * Frames written to the publisher's socket are validated, stored, made
 * durable and reach a subscriber's socket, byte for byte, in order.
 */
START_TEST(test_upstream_to_subscriber)
{
	uint8_t want[1 << 14], got[1 << 14];
	struct peer a;
	size_t len = 0;
	int pub;

	peer_new(&a);
	pub = publisher_new();
	send_frames(pub, 0, 5);
	send_frames(pub, 5, 7);
	for (uint64_t s = 0; s < 12; s++)
		len += frame_bytes(s, want + len, sizeof(want) - len);
	ck_assert_uint_eq(peer_read(&a, got, len), len);
	ck_assert(memcmp(got, want, len) == 0);
	ck_assert_uint_eq(st->st_stats.up_frames, 12);
	/* fsync never: sent before the writer has written them */
	LOOP_UNTIL(st->st_ss.ss_durable == 12);
	close(pub);
	peer_free(&a);
}
END_TEST

/*
 * A streaming publisher and a subscriber that has every frame up to
 * `end`: the relay reads the publisher's socket directly from now on.
 */
static int
publisher_streaming(struct peer *a, uint64_t end)
{
	uint8_t got[1 << 14];
	size_t len = 0;
	int pub;

	peer_new(a);
	pub = publisher_new();
	send_frames(pub, 0, (uint32_t)end);
	for (uint64_t s = 0; s < end; s++)
		len += frame_bytes(s, got + len, sizeof(got) - len);
	ck_assert_uint_eq(peer_read(a, got, len), len);
	LOOP_UNTIL(st->st_ss.ss_durable == end);
	return pub;
}

/*
 * fsync never: a frame read from the publisher is on the subscriber's
 * socket when the loop pass that read it ends. It does not wait for
 * another pass of the loop (the socket reported writable, after the
 * upstream's next read and the other subscribers' writes).
 */
START_TEST(test_never_sent_in_the_pass_that_reads_it)
{
	uint8_t want[1 << 14];
	struct peer a;
	size_t len = 0;
	int pub;

	pub = publisher_streaming(&a, 2);
	for (uint64_t s = 2; s < 5; s++)
		len += frame_bytes(s, want + len, sizeof(want) - len);
	send_frames(pub, 2, 3);
	/* one pass: it reads the publisher's socket */
	event_base_loop(t_relay.r_base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	ck_assert_uint_eq(st->st_stats.up_frames, 5);
	peer_take(&a);
	ck_assert_msg(a.p_len == len, "after the pass that read them, the "
	    "subscriber's socket holds %zu of the frames' %zu bytes",
	    a.p_len, len);
	ck_assert(memcmp(a.p_got, want, len) == 0);
	close(pub);
	peer_free(&a);
}
END_TEST

/*
 * fsync always: frames are on the subscriber's socket when the loop
 * pass that learns they are durable ends, not a pass later.
 */
START_TEST(test_always_sent_in_the_pass_that_makes_it_durable)
{
	uint8_t want[1 << 14];
	struct peer a;
	size_t len = 0;
	int pub;

	pub = publisher_streaming(&a, 2);
	for (uint64_t s = 2; s < 5; s++)
		len += frame_bytes(s, want + len, sizeof(want) - len);
	send_frames(pub, 2, 3);
	/* st_ss moves in the pass that takes the writer's news */
	LOOP_UNTIL(st->st_ss.ss_durable == 5);
	peer_take(&a);
	ck_assert_msg(a.p_len == len, "after the pass that made them "
	    "sendable, the subscriber's socket holds %zu of the frames' %zu "
	    "bytes", a.p_len, len);
	ck_assert(memcmp(a.p_got, want, len) == 0);
	close(pub);
	peer_free(&a);
}
END_TEST

/*
 * A bad frame closes the publisher's connection: the frames before it
 * are stored and sent, nothing from it on.
 */
START_TEST(test_upstream_bad_frame)
{
	uint8_t want[1 << 14], got[1 << 14];
	struct peer a;
	size_t len = 0;
	int pub;

	peer_new(&a);
	pub = publisher_new();
	send_frames(pub, 0, 3);
	ck_assert_int_eq(write(pub, "FCW2garbage-garbage-garbage-garbage", 35),
	    35);
	for (uint64_t s = 0; s < 3; s++)
		len += frame_bytes(s, want + len, sizeof(want) - len);
	ck_assert_uint_eq(peer_read(&a, got, len), len);
	ck_assert(memcmp(got, want, len) == 0);
	LOOP_UNTIL(peer_eof(pub));
	ck_assert_uint_eq(st->st_stats.up_bad_frames, 1);
	LOOP_UNTIL(st->st_ss.ss_durable == 3);
	ck_assert_uint_eq(st->st_ss.ss_next, 3);
	close(pub);
	peer_free(&a);
}
END_TEST

/*
 * LOOP_UNTIL without assertions: ok_ is set to whether cond held within
 * 5 s. Check records every assertion in a file, which RLIMIT_FSIZE would
 * stop.
 */
#define LOOP_QUIET(cond, ok_) do {					\
	struct timespec t0_, t1_;					\
	(ok_) = 0;							\
	clock_gettime(CLOCK_MONOTONIC, &t0_);				\
	for (;;) {							\
		if ((cond)) {						\
			(ok_) = 1;					\
			break;						\
		}							\
		event_base_loop(t_relay.r_base, EVLOOP_ONCE |		\
		    EVLOOP_NONBLOCK);					\
		clock_gettime(CLOCK_MONOTONIC, &t1_);			\
		if (t1_.tv_sec - t0_.tv_sec >= 5)			\
			break;						\
	}								\
} while (0)

/* Read up to want bytes into buf, without a blocking read. */
static int
read_some(int fd, uint8_t *buf, size_t want, size_t *got)
{
	ssize_t n;

	if (*got < want && (n = read(fd, buf + *got, want - *got)) > 0)
		*got += (size_t)n;
	return *got >= want;
}

/* Write what the socket takes of buf[*sent, len); never blocks. */
static void
write_some(int fd, const uint8_t *buf, size_t len, size_t *sent)
{
	ssize_t n;

	if (*sent < len && (n = write(fd, buf + *sent, len - *sent)) > 0)
		*sent += (size_t)n;
}

/*
 * fsync never: a frame is sent once validated and handed to the writer,
 * never held back by the writer. Here the writer cannot write at all
 * (RLIMIT_FSIZE: EFBIG, as on a full disk): every frame the relay took
 * still reaches the subscriber, and is written once the disk works again.
 */
START_TEST(test_never_sends_before_the_writer)
{
	const size_t cap = 4 << 20;
	struct rlimit old, lim;
	struct peer a;
	uint8_t *want, *got;
	size_t len = 0, sent = 0, want_len = 0, have = 0;
	uint64_t n = 0, accepted, written;
	int pub, failed, received;

	ck_assert(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	/* Check's own result file must stay well under the limit */
	lim = old;
	lim.rlim_cur = 1024 * 1024 + 100;
	ck_assert(old.rlim_cur == RLIM_INFINITY || old.rlim_cur > lim.rlim_cur);
	ck_assert_ptr_nonnull(want = malloc(cap));
	ck_assert_ptr_nonnull(got = malloc(cap));
	while (len < 2 * 1024 * 1024)
		len += frame_bytes(n++, want + len, cap - len);
	peer_new(&a);
	pub = publisher_new();
	fcntl(pub, F_SETFL, O_NONBLOCK);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	/* until the writer fails (the relay then stops reading) */
	LOOP_QUIET((write_some(pub, want, len, &sent), st->st_ss.ss_error ==
	    EFBIG), failed);
	accepted = st->st_stats.up_frames;
	for (uint64_t i = 0; i < accepted; i++)
		want_len += fcw2_frame_len(want + want_len);
	fcntl(a.p_fd, F_SETFL, O_NONBLOCK);
	LOOP_QUIET(read_some(a.p_fd, got, want_len, &have), received);
	written = stream_store_update(st)->ss_written;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	ck_assert_msg(failed, "the writer did not fail");
	ck_assert_msg(received, "the subscriber got %zu of the %zu bytes of "
	    "the %" PRIu64 " frames taken, %" PRIu64 " written", have, want_len,
	    accepted, written);
	ck_assert_uint_lt(written, accepted);
	ck_assert(memcmp(got, want, want_len) == 0);

	/* the disk works again: everything is written, nothing else sent */
	segstore_retry(st->st_store);
	LOOP_UNTIL(st->st_ss.ss_error == 0 && st->st_ss.ss_durable >= accepted);
	close(pub);
	peer_free(&a);
	free(want);
	free(got);
}
END_TEST

/* With publish tokens, a wrong token is refused and nothing is stored. */
START_TEST(test_upstream_token)
{
	const char *bad = "FCWAL-AUTH/1 wrong\n", *good = "FCWAL-AUTH/1 secret-1\n";
	int pub;

	pub = publisher_new();
	ck_assert_int_eq(write(pub, bad, strlen(bad)), (ssize_t)strlen(bad));
	send_frames(pub, 0, 2);
	LOOP_UNTIL(peer_eof(pub));
	ck_assert_uint_eq(st->st_stats.up_rejected_auth, 1);
	close(pub);

	pub = publisher_new();
	ck_assert_int_eq(write(pub, good, strlen(good)), (ssize_t)strlen(good));
	send_frames(pub, 0, 2);
	LOOP_UNTIL(stream_store_update(st)->ss_durable == 2);
	ck_assert_uint_eq(st->st_stats.up_frames, 2);
	close(pub);
}
END_TEST

/* A subscriber over max-lag is closed by the stream's janitor. */
START_TEST(test_janitor_lag)
{
	struct peer a;
	struct fanout_status fs;

	peer_new(&a);
	/* a subscriber that takes nothing: lag grows past the limit */
	t_cfg.max_lag_frames = 5;
	t_cfg.subscriber_buffer = 1;
	publish(0, 20);
	fanout_enforce_lag(fo, t_cfg.max_lag_frames);
	ck_assert_int_eq(peer_state(&a), SUB_DEAD);
	ck_assert_uint_eq(st->st_stats.sub_disconnected_lag, 1);
	event_base_loop(t_relay.r_base, EVLOOP_NONBLOCK);
	fanout_status(fo, &fs);
	ck_assert_uint_eq(fs.fs_subscribers, 0);
	peer_free(&a);
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
	tcase_add_test(tc, test_upstream_to_subscriber);
	tcase_add_test(tc, test_upstream_bad_frame);
	tcase_add_test(tc, test_never_sends_before_the_writer);
	tcase_add_test(tc, test_janitor_lag);
	tcase_add_test(tc, test_never_sent_in_the_pass_that_reads_it);
	suite_add_tcase(s, tc);
	tc = tcase_create("always");
	tcase_add_checked_fixture(tc, setup_always, teardown);
	tcase_add_test(tc, test_always_sent_in_the_pass_that_makes_it_durable);
	suite_add_tcase(s, tc);
	tc = tcase_create("tokens");
	tcase_add_checked_fixture(tc, setup_tokens, teardown);
	tcase_add_test(tc, test_upstream_token);
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
