/*
 * test_iopool.c: the I/O pool: jobs run on worker threads, their done
 * callbacks on the loop thread, exactly once each; the loop keeps running
 * while a job blocks; drain and free run every outstanding done callback.
 */
#include "autoconfig.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "iopool.h"

struct tjob {
	struct iopool_job	 t_job;	/* first: the pool's view */
	pthread_t		 t_worker;
	pthread_t		 t_doner;
	int			 t_worked;
	int			 t_done;
	int			 t_gated;	/* wait for the gate */
	struct iopool		*t_resubmit;	/* done submits t_next */
	struct tjob		*t_next;
};

static pthread_mutex_t	 gate_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 gate_cond = PTHREAD_COND_INITIALIZER;
static int		 gate_open;
static int		 ticks;

static void
tjob_work(struct iopool_job *j)
{
	struct tjob *t = (struct tjob *)j;

	t->t_worker = pthread_self();
	if (t->t_gated) {
		pthread_mutex_lock(&gate_mtx);
		while (!gate_open)
			pthread_cond_wait(&gate_cond, &gate_mtx);
		pthread_mutex_unlock(&gate_mtx);
	}
	t->t_worked++;
}

static void
tjob_done(struct iopool_job *j)
{
	struct tjob *t = (struct tjob *)j;

	t->t_doner = pthread_self();
	t->t_done++;
	if (t->t_resubmit != NULL)
		iopool_submit(t->t_resubmit, &t->t_next->t_job);
}

static void
tjob_init(struct tjob *t)
{
	memset(t, 0, sizeof(*t));
	t->t_job.ij_work = tjob_work;
	t->t_job.ij_done = tjob_done;
}

/* A loop timer: counts, and opens the gate at the third tick. */
static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	if (++ticks == 3) {
		pthread_mutex_lock(&gate_mtx);
		gate_open = 1;
		pthread_cond_broadcast(&gate_cond);
		pthread_mutex_unlock(&gate_mtx);
	}
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

START_TEST(test_work_on_worker_done_on_loop)
{
	struct event_base *base = event_base_new();
	struct iopool *ip;
	struct iopool_status s;
	struct tjob t[32];
	char err[128];
	uint64_t t0;
	int all;

	ck_assert_ptr_nonnull(base);
	ip = iopool_new(base, 3, "test", err, sizeof(err));
	ck_assert_msg(ip != NULL, "%s", err);
	for (int i = 0; i < 32; i++) {
		tjob_init(&t[i]);
		iopool_submit(ip, &t[i].t_job);
	}
	t0 = now_ms();
	do {
		event_base_loop(base, EVLOOP_ONCE);
		all = 1;
		for (int i = 0; i < 32; i++)
			all &= t[i].t_done == 1;
		ck_assert_msg(now_ms() - t0 < 10000, "timed out");
	} while (!all);
	for (int i = 0; i < 32; i++) {
		ck_assert_int_eq(t[i].t_worked, 1);
		ck_assert_int_eq(t[i].t_done, 1);
		ck_assert(!pthread_equal(t[i].t_worker, pthread_self()));
		ck_assert(pthread_equal(t[i].t_doner, pthread_self()));
	}
	iopool_status(ip, &s);
	ck_assert_uint_eq(s.ips_threads, 3);
	ck_assert_uint_eq(s.ips_done, 32);
	ck_assert_uint_eq(s.ips_queued + s.ips_running, 0);
	iopool_free(ip);
	event_base_free(base);
}
END_TEST

/*
 * A job that cannot finish until the loop has run a timer three times:
 * had the loop waited for it, neither would ever finish.
 */
START_TEST(test_loop_runs_while_job_blocks)
{
	struct event_base *base = event_base_new();
	struct timeval tv = { 0, 20 * 1000 };
	struct event *tick;
	struct iopool *ip;
	struct tjob t;
	char err[128];
	uint64_t t0;

	gate_open = 0;
	ticks = 0;
	ip = iopool_new(base, 1, "test", err, sizeof(err));
	ck_assert_msg(ip != NULL, "%s", err);
	tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
	event_add(tick, &tv);
	tjob_init(&t);
	t.t_gated = 1;
	iopool_submit(ip, &t.t_job);
	t0 = now_ms();
	while (t.t_done == 0) {
		event_base_loop(base, EVLOOP_ONCE);
		ck_assert_msg(now_ms() - t0 < 10000, "timed out");
	}
	ck_assert_int_ge(ticks, 3);
	ck_assert_int_eq(t.t_worked, 1);
	event_free(tick);
	iopool_free(ip);
	event_base_free(base);
}
END_TEST

/* Drain waits for every job, a resubmitted one too; free runs the rest. */
START_TEST(test_drain_and_free)
{
	struct event_base *base = event_base_new();
	struct iopool *ip;
	struct tjob a, b, c[8];
	char err[128];

	ip = iopool_new(base, 2, "test", err, sizeof(err));
	ck_assert_msg(ip != NULL, "%s", err);
	tjob_init(&a);
	tjob_init(&b);
	a.t_resubmit = ip;
	a.t_next = &b;
	iopool_submit(ip, &a.t_job);
	iopool_drain(ip);
	ck_assert_int_eq(a.t_done, 1);
	ck_assert_int_eq(b.t_worked, 1);
	ck_assert_int_eq(b.t_done, 1);
	ck_assert(pthread_equal(b.t_doner, pthread_self()));
	for (int i = 0; i < 8; i++) {
		tjob_init(&c[i]);
		iopool_submit(ip, &c[i].t_job);
	}
	iopool_free(ip);
	for (int i = 0; i < 8; i++)
		ck_assert_int_eq(c[i].t_done, 1);
	event_base_free(base);
}
END_TEST

START_TEST(test_bad_thread_count)
{
	struct event_base *base = event_base_new();
	char err[128];

	ck_assert_ptr_null(iopool_new(base, 0, "test", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "not within"));
	event_base_free(base);
}
END_TEST

static Suite *
iopool_suite(void)
{
	Suite *s = suite_create("iopool");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_work_on_worker_done_on_loop);
	tcase_add_test(tc, test_loop_runs_while_job_blocks);
	tcase_add_test(tc, test_drain_and_free);
	tcase_add_test(tc, test_bad_thread_count);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(iopool_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
