/*
 * notify.c: the service manager's view of the relay (sd_notify).
 *
 * Everything here runs on the event loop: a watchdog ping proves the loop
 * turns, not just that the process exists.
 */
#include "autoconfig.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "fanout.h"
#include "log.h"
#include "notify.h"
#include "relay.h"
#include "segment.h"
#include "upstream.h"

/* STATUS= is refreshed this often when nothing else sends it. */
#define NOTIFY_STATUS_MS	5000

struct notify {
	struct event	*n_timer;
	uint64_t	 n_watchdog_us;	/* 0: no watchdog */
	uint64_t	 n_tick_us;	/* the timer's period */
	uint64_t	 n_last_status_us;
	int		 n_enabled;	/* NOTIFY_SOCKET is set */
	int		 n_ready;
};

static struct notify N;

static uint64_t
notify_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void
notify_send(const char *msg)
{
#ifdef HAVE_LIBSYSTEMD
	int rc;

	if (!N.n_enabled)
		return;
	if ((rc = sd_notify(0, msg)) < 0)
		log_debug("notify: sd_notify: %s", strerror(-rc));
#else
	(void)msg;
#endif
}

void
notify_status_line(char *buf, size_t len)
{
	struct upstream_status us;
	struct fanout_status fs;
	struct stream *st, *one = NULL;
	const char *state;
	unsigned subs = 0, connected = 0;
	int failing = 0;

	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		one = st;
		memset(&us, 0, sizeof(us));
		if (st->st_up != NULL)
			upstream_status(st->st_up, &us);
		if (st->st_fan != NULL) {
			fanout_status(st->st_fan, &fs);
			subs += fs.fs_subscribers;
		}
		connected += us.us_connected != 0;
		failing |= st->st_ss.ss_error != 0;
	}
	state = relay->r_stopping ? "stopping" : N.n_ready ? "ready" :
	    "starting";
	if (relay->r_nstreams == 1 && one != NULL)
		snprintf(buf, len, "%s: next=%" PRIu64 " durable=%" PRIu64
		    " subscribers=%u upstream=%s%s", state, one->st_ss.ss_next,
		    one->st_ss.ss_durable, subs, connected ? "connected" :
		    "disconnected", failing ? " storage=failing" : "");
	else
		snprintf(buf, len, "%s: streams=%zu subscribers=%u "
		    "upstreams-connected=%u%s", state, relay->r_nstreams, subs,
		    connected, failing ? " storage=failing" : "");
}

static void
notify_status(const char *prefix)
{
	char line[256], msg[320];

	if (!N.n_enabled)
		return;
	notify_status_line(line, sizeof(line));
	snprintf(msg, sizeof(msg), "%sSTATUS=%s", prefix, line);
	notify_send(msg);
	N.n_last_status_us = notify_now_us();
}

static void
notify_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t now = notify_now_us();

	if (N.n_watchdog_us != 0)
		notify_send("WATCHDOG=1");
	if (now - N.n_last_status_us >= NOTIFY_STATUS_MS * 1000ULL)
		notify_status("");
}

int
notify_init(struct event_base *base, char *errbuf, size_t errlen)
{
#ifdef HAVE_LIBSYSTEMD
	struct timeval tv;
	uint64_t usec = 0;
	int rc;

	memset(&N, 0, sizeof(N));
	if (getenv("NOTIFY_SOCKET") == NULL)
		return 0;
	N.n_enabled = 1;
	if ((rc = sd_watchdog_enabled(0, &usec)) < 0) {
		snprintf(errbuf, errlen, "WATCHDOG_USEC or WATCHDOG_PID in "
		    "the environment is not valid: %s", strerror(-rc));
		return -1;
	}
	if (rc > 0 && usec > 0) {
		N.n_watchdog_us = usec;
		N.n_tick_us = usec / 2;
		log_info("notify: watchdog every %" PRIu64 " ms (half of "
		    "WatchdogSec)", N.n_tick_us / 1000);
	} else
		N.n_tick_us = NOTIFY_STATUS_MS * 1000ULL;
	if (N.n_tick_us == 0)
		N.n_tick_us = 1;
	if ((N.n_timer = event_new(base, -1, EV_PERSIST, notify_timer_cb,
	    NULL)) == NULL) {
		snprintf(errbuf, errlen, "notify: out of memory");
		return -1;
	}
	tv.tv_sec = (time_t)(N.n_tick_us / 1000000);
	tv.tv_usec = (suseconds_t)(N.n_tick_us % 1000000);
	event_add(N.n_timer, &tv);
#else
	(void)base;
	(void)errbuf;
	(void)errlen;
	memset(&N, 0, sizeof(N));
#endif
	return 0;
}

void
notify_ready(void)
{
	N.n_ready = 1;
	notify_status("READY=1\n");
}

void
notify_reloading(void)
{
	char msg[96];

	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64
	    "\nSTATUS=reloading the configuration", notify_now_us());
	notify_send(msg);
}

void
notify_stopping(void)
{
	notify_send("STOPPING=1\nSTATUS=stopping: making everything durable, "
	    "draining subscribers");
}

void
notify_free(void)
{
	if (N.n_timer != NULL)
		event_free(N.n_timer);
	N.n_timer = NULL;
}
