/*
 * http.c: the operator's window: /metrics, /healthz, /readyz, /v1/status.
 */
#include "autoconfig.h"

#include <sys/resource.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "crc.h"
#include "fanout.h"
#include "frame.h"
#include "http.h"
#include "log.h"
#include "relay.h"
#include "subscriber.h"
#include "upstream.h"

struct http_server {
	struct evhttp	*h_http;
	struct evconnlistener *h_lev;
	struct event	*h_resume;	/* re-enables h_lev after a pause */
};

#define HTTP_ACCEPT_PAUSE_MS	100

static void
http_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *h = arg;

	evconnlistener_enable(h->h_lev);
}

/*
 * Out of descriptors: pause like the other listeners. Without this error
 * callback libevent logs and retries at once, spinning on the queued
 * connection. (The callback's argument is the evhttp: use h_self.)
 */
static struct http_server *h_self;

static void
http_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(5, 10);
	struct timeval tv = { 0, HTTP_ACCEPT_PAUSE_MS * 1000 };
	int err = EVUTIL_SOCKET_ERROR();

	if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
		log_limited(&rl, LOG_LEVEL_WARN, "http: accept: %s",
		    strerror(err));
		return;
	}
	log_limited(&rl, LOG_LEVEL_WARN, "http: accept: %s; pausing the "
	    "listener for %d ms", strerror(err), HTTP_ACCEPT_PAUSE_MS);
	evconnlistener_disable(lev);
	evtimer_add(h_self->h_resume, &tv);
}

static const char *
fsync_name(int mode)
{
	switch (mode) {
	case FSYNC_ALWAYS:
		return "always";
	case FSYNC_INTERVAL:
		return "interval";
	default:
		return "never";
	}
}

/* The first corrupt range of the store, if any. */
static int
store_corrupt(struct segstore_corrupt *c)
{
	uint64_t lim = segstore_limit(relay->r_store);

	return lim != UINT64_MAX && segstore_corrupt_at(relay->r_store, lim,
	    c) == 1;
}

/* Why the relay is not ready (into buf), or NULL. */
static const char *
not_ready(const struct segstore_state *ss, char *buf, size_t len)
{
	struct segstore_corrupt c;

	if (relay->r_stopping)
		return "stopping";
	if (ss->ss_error != 0)
		return "storage error";
	if (store_corrupt(&c)) {
		snprintf(buf, len, "degraded: corrupt frame at sequence %"
		    PRIu64 " (%s, offset %" PRIu64 "): frames %" PRIu64 " to %"
		    PRIu64 " cannot be served, readers that reach them are "
		    "disconnected; live subscribers are served", c.sc_first,
		    c.sc_name, c.sc_offset, c.sc_first, c.sc_end - 1);
		return buf;
	}
	return NULL;
}

static void
reply(struct evhttp_request *req, int code, const char *reason,
    const char *ctype, struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", ctype);
	evhttp_send_reply(req, code, reason, body);
}

static void
healthz_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL)
		return;
	evbuffer_add_printf(b, "ok\n");
	reply(req, 200, "OK", "text/plain", b);
	evbuffer_free(b);
}

static void
readyz_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	struct segstore_state ss;
	const char *why;
	char buf[512];

	if (b == NULL)
		return;
	segstore_poll(relay->r_store, &ss);
	if ((why = not_ready(&ss, buf, sizeof(buf))) != NULL) {
		evbuffer_add_printf(b, "not ready: %s\n", why);
		reply(req, 503, "Service Unavailable", "text/plain", b);
	} else {
		evbuffer_add_printf(b, "ready\n");
		reply(req, 200, "OK", "text/plain", b);
	}
	evbuffer_free(b);
}

#define nitems(a)	(sizeof(a) / sizeof((a)[0]))

struct labeled {
	const char	*reason;
	uint64_t	 value;
};

/* A counter with one line per LABEL="..." value. */
static void
metric_labeled(struct evbuffer *b, const char *name, const char *label,
    const char *help, const struct labeled *v, size_t n)
{
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
	    "counter\n", name, help, name);
	for (size_t i = 0; i < n; i++)
		evbuffer_add_printf(b, "walrelay_%s{%s=\"%s\"} %" PRIu64 "\n",
		    name, label, v[i].reason, v[i].value);
}

static void
metric_by_reason(struct evbuffer *b, const char *name, const char *help,
    const struct labeled *v, size_t n)
{
	metric_labeled(b, name, "reason", help, v, n);
}

#define METRIC(b, name, type, help, fmt, val) do {			\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s %s\n" \
	    "walrelay_%s " fmt "\n", name, help, name, type, name, val);	\
} while (0)

/* A histogram of the store's, in seconds. */
static void
metric_hist(struct evbuffer *b, const char *name, const char *help,
    const struct segstore_hist *h)
{
	uint64_t n = 0;

	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
	    "histogram\n", name, help, name);
	for (size_t i = 0; i < SEGSTORE_HIST_BUCKETS; i++) {
		n += h->sh_count[i];
		evbuffer_add_printf(b, "walrelay_%s_bucket{le=\"%g\"} %" PRIu64
		    "\n", name, segstore_hist_bounds_us[i] / 1e6, n);
	}
	evbuffer_add_printf(b, "walrelay_%s_bucket{le=\"+Inf\"} %" PRIu64 "\n"
	    "walrelay_%s_sum %.6f\nwalrelay_%s_count %" PRIu64 "\n", name,
	    h->sh_total, name, h->sh_sum_us / 1e6, name, h->sh_total);
}

/*
 * Process metrics (the names every Prometheus client library uses), read
 * from /proc when scraped. A value that cannot be read is left out.
 */
static void
metrics_process(struct evbuffer *b)
{
	char buf[1024], *p;
	unsigned long utime, stime;
	long rss;
	unsigned long long vsize;
	struct rlimit rl;
	struct dirent *de;
	DIR *d;
	FILE *f;
	size_t n;
	long fds = 0;

	if ((f = fopen("/proc/self/stat", "re")) != NULL) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = '\0';
		fclose(f);
		/* after the command name: fields 3 (state) to 24 (rss) */
		if ((p = strrchr(buf, ')')) != NULL && sscanf(p + 2,
		    "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d "
		    "%*d %*d %*d %*d %*d %*u %llu %ld", &utime, &stime, &vsize,
		    &rss) == 4) {
			evbuffer_add_printf(b, "# HELP process_cpu_seconds_total "
			    "user and system CPU time spent\n# TYPE "
			    "process_cpu_seconds_total counter\n"
			    "process_cpu_seconds_total %.2f\n",
			    (double)(utime + stime) / sysconf(_SC_CLK_TCK));
			evbuffer_add_printf(b, "# HELP "
			    "process_resident_memory_bytes resident memory "
			    "size\n# TYPE process_resident_memory_bytes gauge\n"
			    "process_resident_memory_bytes %lld\n",
			    (long long)rss * sysconf(_SC_PAGESIZE));
			evbuffer_add_printf(b, "# HELP "
			    "process_virtual_memory_bytes virtual memory "
			    "size\n# TYPE process_virtual_memory_bytes gauge\n"
			    "process_virtual_memory_bytes %llu\n", vsize);
		}
	}
	if ((d = opendir("/proc/self/fd")) != NULL) {
		while ((de = readdir(d)) != NULL)
			if (de->d_name[0] != '.')
				fds++;
		closedir(d);
		evbuffer_add_printf(b, "# HELP process_open_fds open file "
		    "descriptors\n# TYPE process_open_fds gauge\n"
		    "process_open_fds %ld\n", fds - 1);	/* not d's own */
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		evbuffer_add_printf(b, "# HELP process_max_fds the limit on "
		    "open file descriptors\n# TYPE process_max_fds gauge\n"
		    "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
	evbuffer_add_printf(b, "# HELP process_start_time_seconds start time "
	    "of the process since the Unix epoch\n# TYPE "
	    "process_start_time_seconds gauge\nprocess_start_time_seconds "
	    "%.3f\n", relay->r_started_ms / 1e3);
}

/* The subscribers of one scrape, and where the series end. */
struct sub_series {
	struct subscriber_status *ss_v;
	size_t		 ss_n;
	size_t		 ss_cap;
	int		 ss_oom;
};

static void
sub_series_cb(void *arg, const struct subscriber_status *st)
{
	struct sub_series *s = arg;
	struct subscriber_status *v;

	if (s->ss_n == s->ss_cap) {
		size_t cap = s->ss_cap ? s->ss_cap * 2 : 16;

		if ((v = reallocarray(s->ss_v, cap, sizeof(*v))) == NULL) {
			s->ss_oom = 1;
			return;
		}
		s->ss_v = v;
		s->ss_cap = cap;
	}
	s->ss_v[s->ss_n++] = *st;
}

enum sub_value {
	SV_LAG_FRAMES,
	SV_LAG_BYTES,
	SV_LAG_SECONDS,
	SV_POSITION,
	SV_MARGIN_BYTES,
	SV_MARGIN_SECONDS,
};

/* The value, or -1 when the subscriber has none (no retention limit). */
static double
sub_value(const struct subscriber_status *st, int what)
{
	switch (what) {
	case SV_LAG_FRAMES:
		return (double)st->sst_lag_frames;
	case SV_LAG_BYTES:
		return (double)st->sst_lag_bytes;
	case SV_LAG_SECONDS:
		return st->sst_lag_us / 1e6;
	case SV_POSITION:
		return (double)st->sst_pos;
	case SV_MARGIN_BYTES:
		return st->sst_has_margin_bytes ?
		    (double)st->sst_margin_bytes : -1;
	default:
		return st->sst_has_margin_s ? (double)st->sst_margin_s : -1;
	}
}

/*
 * One family of per-subscriber gauges: a series for each of the first
 * `max` subscribers (by connection), one with id="other" for the rest:
 * the largest lag among them, the smallest position and margin (what an
 * alert needs to know about the worst one).
 */
static void
metric_subs(struct evbuffer *b, const char *name, const char *help,
    const struct sub_series *s, size_t max, int what)
{
	double v, other = -1;
	int lowest = what >= SV_POSITION;

	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
	    "gauge\n", name, help, name);
	for (size_t i = 0; i < s->ss_n; i++) {
		if ((v = sub_value(&s->ss_v[i], what)) < 0)
			continue;
		if (i < max)
			evbuffer_add_printf(b, "walrelay_%s{id=\"%s\",kind=\""
			    "%s\"} %.15g\n", name, s->ss_v[i].sst_name,
			    s->ss_v[i].sst_kind, v);
		else if (other < 0 || (lowest ? v < other : v > other))
			other = v;
	}
	if (other >= 0)
		evbuffer_add_printf(b, "walrelay_%s{id=\"other\",kind=\"other\"}"
		    " %.15g\n", name, other);
}

static void
metrics_subscribers(struct evbuffer *b)
{
	struct sub_series s;
	size_t max = relay->r_cfg->metrics_max_subscribers;

	memset(&s, 0, sizeof(s));
	if (fanout_status_foreach(relay->r_fan, sub_series_cb, &s) == -1 ||
	    s.ss_oom) {
		log_warnx("http: /metrics: out of memory: per-subscriber "
		    "series left out");
		free(s.ss_v);
		return;
	}
	METRIC(b, "subscribers_aggregated", "gauge", "streaming subscribers "
	    "beyond metrics-max-subscribers, reported together as "
	    "id=\"other\"", "%zu", s.ss_n > max ? s.ss_n - max : 0);
	metric_subs(b, "subscriber_lag_frames", "durable frames the "
	    "subscriber has not been sent yet (queued to its connection)",
	    &s, max, SV_LAG_FRAMES);
	metric_subs(b, "subscriber_lag_bytes", "bytes of those frames "
	    "(estimated within the segment file while it reads from disk)",
	    &s, max, SV_LAG_BYTES);
	metric_subs(b, "subscriber_lag_seconds", "time since the relay "
	    "received the oldest of those frames, 0 when caught up",
	    &s, max, SV_LAG_SECONDS);
	metric_subs(b, "subscriber_position", "sequence of the next frame "
	    "the subscriber is sent", &s, max, SV_POSITION);
	metric_subs(b, "subscriber_retention_margin_bytes", "bytes the relay "
	    "can still store before retention by size (retain-bytes) deletes "
	    "the segment file that holds the subscriber's position (only "
	    "with retain-bytes)", &s, max, SV_MARGIN_BYTES);
	metric_subs(b, "subscriber_retention_margin_seconds", "time until "
	    "retention by age (retain-age) may delete the segment file that "
	    "holds the subscriber's position (only with retain-age)", &s, max,
	    SV_MARGIN_SECONDS);
	free(s.ss_v);
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct relay_stats *s = &relay->r_stats;
	struct segstore_state sst, *ss = &sst;
	struct upstream_status us;
	struct evbuffer *b = evbuffer_new();
	uint64_t now = relay_now_ms(), last;
	char buf[512];

	if (b == NULL)
		return;
	segstore_poll(relay->r_store, ss);
	upstream_status(relay->r_up, &us);

	evbuffer_add_printf(b, "# HELP walrelay_build_info always 1; the "
	    "labels say which build runs\n# TYPE walrelay_build_info gauge\n"
	    "walrelay_build_info{version=\"%s\",crc=\"%s\"} 1\n",
	    PACKAGE_VERSION, crc_impl());
	METRIC(b, "up", "gauge", "always 1: the relay answered this scrape "
	    "(a relay that is down is seen by Prometheus's own up series)",
	    "%d", 1);
	METRIC(b, "ready", "gauge", "1 when /readyz answers 200: storage "
	    "works, no corrupt frame, not stopping; 0 otherwise", "%d",
	    not_ready(ss, buf, sizeof(buf)) == NULL);
	METRIC(b, "corrupt_sequence", "gauge", "first stored frame that "
	    "cannot be served because it is corrupt, -1 when none", "%lld",
	    segstore_limit(relay->r_store) == UINT64_MAX ? -1LL :
	    (long long)segstore_limit(relay->r_store));
	METRIC(b, "next_sequence", "gauge", "sequence the next stored frame "
	    "gets", "%" PRIu64, ss->ss_next);
	METRIC(b, "durable_sequence", "gauge", "frames below this are durable",
	    "%" PRIu64, ss->ss_durable);
	METRIC(b, "earliest_sequence", "gauge", "oldest retained frame",
	    "%" PRIu64, ss->ss_earliest);
	METRIC(b, "storage_failing", "gauge", "1 while writes or fsyncs fail "
	    "and are retried (the errno is storage_error in /v1/status)", "%d",
	    ss->ss_error != 0);
	{
		const struct labeled err[] = {
			{ "write", ss->ss_write_errors },
			{ "fsync", ss->ss_fsync_errors },
			{ "create", ss->ss_create_errors },
			{ "truncate", ss->ss_truncate_errors },
		};

		metric_labeled(b, "storage_errors_total", "op", "failed disk "
		    "operations of the segment writer, by operation", err,
		    nitems(err));
	}
	METRIC(b, "storage_pending_bytes", "gauge", "bytes received and not "
	    "durable yet", "%zu", ss->ss_pending_bytes);
	METRIC(b, "storage_fsyncs_total", "counter", "fdatasync calls that "
	    "succeeded", "%" PRIu64, ss->ss_fsyncs);
	metric_hist(b, "storage_fsync_duration_seconds", "time each "
	    "successful fdatasync of a segment file took", &ss->ss_fsync_time);
	metric_hist(b, "ingest_to_durable_seconds", "per frame, the time from "
	    "its read from the upstream until it was durable (fsync always or "
	    "interval) or written (fsync never), that is sendable",
	    &ss->ss_durable_time);
	METRIC(b, "storage_bytes_written_total", "counter", "bytes written to "
	    "segment files", "%" PRIu64, ss->ss_bytes_written);
	METRIC(b, "segments", "gauge", "segment files", "%" PRIu64,
	    ss->ss_segments);
	METRIC(b, "store_bytes", "gauge", "bytes in segment files", "%" PRIu64,
	    ss->ss_store_bytes);
	METRIC(b, "retain_bytes", "gauge", "retention limit on store_bytes "
	    "(retain-bytes), 0 when none", "%" PRIu64,
	    relay->r_cfg->retain_bytes);
	METRIC(b, "segments_deleted_total", "counter", "segments deleted by "
	    "retention", "%" PRIu64, ss->ss_deleted);

	METRIC(b, "upstream_connected", "gauge", "1 while a publisher or pull "
	    "connection streams", "%d", us.us_connected);
	METRIC(b, "upstream_paused", "gauge", "1 while reading is paused by "
	    "flow control", "%d", us.us_paused);
	last = us.us_last_frame_ms != 0 ? us.us_last_frame_ms :
	    relay->r_started_ms;
	METRIC(b, "upstream_last_frame_age_seconds", "gauge", "time since "
	    "the last frame was received (since the start when none was)",
	    "%.3f", now > last ? (now - last) / 1e3 : 0.0);
	METRIC(b, "upstream_connections_total", "counter", "upstream "
	    "connections accepted or made", "%" PRIu64, s->up_connections);
	{
		const struct labeled rej[] = {
			{ "auth", s->up_rejected_auth },
			{ "limit", s->up_rejected_limit },
			{ "timeout", s->up_rejected_timeout },
			{ "tls", s->up_rejected_tls },
		};

		metric_by_reason(b, "upstream_rejected_total", "ingest "
		    "connections refused, by reason", rej, nitems(rej));
	}
	METRIC(b, "upstream_replaced_total", "counter", "publishers replaced "
	    "by a newer connection", "%" PRIu64, s->up_replaced);
	METRIC(b, "frames_received_total", "counter", "frames validated and "
	    "stored", "%" PRIu64, s->up_frames);
	METRIC(b, "bytes_received_total", "counter", "bytes of frames stored",
	    "%" PRIu64, s->up_bytes);
	METRIC(b, "bad_frames_total", "counter", "upstream connections closed "
	    "on an invalid frame", "%" PRIu64, s->up_bad_frames);
	METRIC(b, "partial_frames_dropped_total", "counter", "partial frames "
	    "dropped when an upstream connection ended", "%" PRIu64,
	    s->up_partial_dropped);
	METRIC(b, "upstream_reconnects_total", "counter", "pull connections "
	    "started (the first one and every reconnect)", "%" PRIu64,
	    s->up_reconnects);
	METRIC(b, "upstream_connect_failures_total", "counter", "pull "
	    "connections that failed", "%" PRIu64, s->up_connect_failures);
	METRIC(b, "upstream_pauses_total", "counter", "times upstream reading "
	    "was paused", "%" PRIu64, s->up_paused);

	METRIC(b, "active_subscribers", "gauge", "streaming subscribers", "%u",
	    relay->r_fan->fo_nsubs);
	METRIC(b, "subscribers_accepted_total", "counter", "subscribers that "
	    "started streaming", "%" PRIu64, s->sub_accepted);
	{
		const struct labeled rej[] = {
			{ "auth", s->sub_rejected_auth },
			{ "busy", s->sub_rejected_busy },
			{ "request", s->sub_rejected_request },
			{ "limit", s->sub_rejected_limit },
			{ "timeout", s->sub_rejected_timeout },
			{ "tls", s->sub_rejected_tls },
			{ "corrupt", s->sub_rejected_corrupt },
		};
		const struct labeled disc[] = {
			{ "gone", s->sub_disconnected_gone },
			{ "lag", s->sub_disconnected_lag },
			{ "timeout", s->sub_disconnected_timeout },
			{ "corrupt", s->sub_disconnected_corrupt },
		};

		metric_by_reason(b, "subscribers_rejected_total",
		    "subscribers refused, by reason", rej, nitems(rej));
		metric_by_reason(b, "subscribers_disconnected_total",
		    "streaming subscribers disconnected by the relay, by reason",
		    disc, nitems(disc));
	}
	METRIC(b, "frames_sent_total", "counter", "frames handed to "
	    "subscriber connections for sending (counted when queued to the "
	    "connection, sent or not when it closes)", "%" PRIu64,
	    s->sub_frames_sent);
	METRIC(b, "bytes_sent_total", "counter", "bytes of those frames, "
	    "before compression", "%" PRIu64, s->sub_bytes_sent);
	metrics_subscribers(b);
	METRIC(b, "disk_reads_total", "counter", "segment spans served to "
	    "subscribers behind the in-memory tail", "%" PRIu64,
	    s->sub_disk_reads);
	METRIC(b, "tail_bytes", "gauge", "bytes in the shared in-memory tail",
	    "%zu", relay->r_fan->fo_tail_bytes);
	METRIC(b, "tail_buffer_bytes", "gauge", "bytes of the buffers that "
	    "hold the shared tail", "%zu", relay->r_fan->fo_tail_cap);
	METRIC(b, "zstd_chunks_total", "counter", "chunks compressed once "
	    "for compress=zstd subscribers", "%lld", chunk_zstd_count());
	METRIC(b, "tail_chunks", "gauge", "frame buffers in the shared tail",
	    "%zu", relay->r_fan->fo_tail_chunks);
	METRIC(b, "chunks_live", "gauge", "frame buffers alive (tail and "
	    "in flight)", "%ld", chunk_live_count());
	METRIC(b, "chunk_bytes_live", "gauge", "bytes of frame buffers alive",
	    "%lld", chunk_live_bytes());
	METRIC(b, "chunk_cache_bytes", "gauge", "bytes of freed frame "
	    "buffers kept for reuse", "%zu", chunk_cache_bytes());
	METRIC(b, "chunk_cache_reused_total", "counter", "frame buffers "
	    "taken from the reuse cache instead of the system", "%lu",
	    chunk_cache_reused());
	{
		const struct labeled rl[] = {
			{ "success", s->reloads_ok },
			{ "failure", s->reloads_failed },
		};

		metric_labeled(b, "reloads_total", "result", "configuration "
		    "reloads (SIGHUP); a failed one keeps the running "
		    "configuration", rl, nitems(rl));
	}
	METRIC(b, "reload_last_success", "gauge", "1 when the last reload "
	    "succeeded or there was none, 0 when it failed", "%d",
	    s->reload_last_ms == 0 || s->reload_last_ok);
	METRIC(b, "reload_last_timestamp_seconds", "gauge", "time of the last "
	    "reload since the Unix epoch, 0 when none", "%.3f",
	    s->reload_last_ms / 1e3);
	metrics_process(b);
	reply(req, 200, "OK", "text/plain; version=0.0.4", b);
	evbuffer_free(b);
}

static void
status_segment(void *arg, const char *name, uint64_t base, uint64_t end,
    uint64_t bytes)
{
	struct evbuffer *b = arg;

	evbuffer_add_printf(b, "{\"name\":\"%s\",\"first\":%" PRIu64 ",\"end\":%"
	    PRIu64 ",\"bytes\":%" PRIu64 "},", name, base, end, bytes);
}

struct status_json {
	struct evbuffer	*sj_b;
};

/* One subscriber as JSON, followed by a comma. */
static void
status_sub(void *arg, const struct subscriber_status *st)
{
	struct status_json *sj = arg;

	evbuffer_add_printf(sj->sj_b, "{\"id\":\"%s\",\"peer\":\"%s\","
	    "\"kind\":\"%s\",\"start\":%" PRIu64 ",\"position\":%" PRIu64
	    ",\"lag\":%" PRIu64 ",\"lag_bytes\":%" PRIu64 ",\"lag_ms\":%"
	    PRIu64 ",\"bytes_queued\":%" PRIu64 ",\"buffered\":%zu,"
	    "\"from_disk\":%s,\"zstd\":%s,\"connected_ms\":%" PRIu64 "},",
	    st->sst_name, st->sst_peer, st->sst_kind, st->sst_start,
	    st->sst_pos, st->sst_lag_frames, st->sst_lag_bytes,
	    st->sst_lag_us / 1000, st->sst_bytes_queued, st->sst_buffered,
	    st->sst_on_disk ? "true" : "false", st->sst_zstd ? "true" : "false",
	    st->sst_connected_ms);
}

static void
status_cb(struct evhttp_request *req, void *arg)
{
	struct segstore_state sst, *ss = &sst;
	struct segstore_corrupt c;
	struct upstream_status us;
	struct evbuffer *b = evbuffer_new(), *segs = evbuffer_new();
	struct status_json sj = { evbuffer_new() };
	char buf[512];

	if (b == NULL || segs == NULL || sj.sj_b == NULL)
		goto done;
	segstore_poll(relay->r_store, ss);
	upstream_status(relay->r_up, &us);
	evbuffer_add_printf(b, "{\"version\":\"%s\",\"uptime_ms\":%" PRIu64
	    ",\"ready\":%s,\"epoch\":\"%016" PRIx64 "\",\"earliest\":%" PRIu64
	    ",\"next\":%" PRIu64 ",\"durable\":%" PRIu64 ",\"fsync\":\"%s\","
	    "\"storage_error\":%d,\"pending_bytes\":%zu,\"tail_bytes\":%zu,",
	    PACKAGE_VERSION, relay_now_ms() - relay->r_started_ms,
	    not_ready(ss, buf, sizeof(buf)) ? "false" : "true",
	    segstore_epoch(relay->r_store),
	    ss->ss_earliest, ss->ss_next, ss->ss_durable,
	    fsync_name(relay->r_cfg->fsync_mode), ss->ss_error,
	    ss->ss_pending_bytes, relay->r_fan->fo_tail_bytes);
	evbuffer_add_printf(b, "\"upstream\":{\"mode\":\"%s\",\"connected\":%s,"
	    "\"paused\":%s,\"connection\":\"%s\",\"peer\":\"%s\",\"bytes\":%"
	    PRIu64 ",\"last_frame_ms\":%" PRIu64 "},",
	    us.us_pull ? "pull" : "ingest", us.us_connected ? "true" : "false",
	    us.us_paused ? "true" : "false", us.us_name, us.us_peer,
	    us.us_conn_bytes, us.us_last_frame_ms);
	if (store_corrupt(&c))
		evbuffer_add_printf(b, "\"corrupt\":{\"segment\":\"%s\","
		    "\"offset\":%" PRIu64 ",\"first\":%" PRIu64 ",\"end\":%"
		    PRIu64 "},", c.sc_name, c.sc_offset, c.sc_first, c.sc_end);
	else
		evbuffer_add_printf(b, "\"corrupt\":null,");
	segstore_foreach(relay->r_store, status_segment, segs);
	evbuffer_add_printf(b, "\"segments\":[");
	if (evbuffer_get_length(segs) > 0)	/* all but the trailing comma */
		evbuffer_remove_buffer(segs, b, evbuffer_get_length(segs) - 1);
	evbuffer_add_printf(b, "],\"subscribers\":[");
	if (fanout_status_foreach(relay->r_fan, status_sub, &sj) == -1)
		goto done;
	if (evbuffer_get_length(sj.sj_b) > 0)	/* all but the last comma */
		evbuffer_remove_buffer(sj.sj_b, b,
		    evbuffer_get_length(sj.sj_b) - 1);
	evbuffer_add_printf(b, "]}\n");
	reply(req, 200, "OK", "application/json", b);
done:
	if (b != NULL)
		evbuffer_free(b);
	if (segs != NULL)
		evbuffer_free(segs);
	if (sj.sj_b != NULL)
		evbuffer_free(sj.sj_b);
}

struct http_server *
http_new(const char *addr, char *errbuf, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct http_server *h;
	struct evconnlistener *lev;

	if (relay_addr_parse(addr, &ss, &sslen, errbuf, errlen) == -1)
		return NULL;
	if ((h = calloc(1, sizeof(*h))) == NULL ||
	    (h->h_http = evhttp_new(relay->r_base)) == NULL) {
		free(h);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	lev = evconnlistener_new_bind(relay->r_base, NULL, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
	    64, (struct sockaddr *)&ss, (int)sslen);
	if (lev == NULL || evhttp_bind_listener(h->h_http, lev) == NULL) {
		snprintf(errbuf, errlen, "http listener on %s: %s", addr,
		    strerror(errno));
		if (lev != NULL)
			evconnlistener_free(lev);
		http_free(h);
		return NULL;
	}
	h->h_lev = lev;
	if ((h->h_resume = evtimer_new(relay->r_base, http_resume_cb, h)) ==
	    NULL) {
		snprintf(errbuf, errlen, "out of memory");
		http_free(h);
		return NULL;
	}
	h_self = h;
	evconnlistener_set_error_cb(lev, http_accept_error_cb);
	evhttp_set_allowed_methods(h->h_http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_timeout(h->h_http, 10);
	evhttp_set_cb(h->h_http, "/metrics", metrics_cb, NULL);
	evhttp_set_cb(h->h_http, "/healthz", healthz_cb, NULL);
	evhttp_set_cb(h->h_http, "/readyz", readyz_cb, NULL);
	evhttp_set_cb(h->h_http, "/v1/status", status_cb, NULL);
	log_info("http: listening on %s (/metrics /healthz /readyz /v1/status)",
	    addr);
	return h;
}

void
http_free(struct http_server *h)
{
	if (h == NULL)
		return;
	if (h->h_resume != NULL)
		event_free(h->h_resume);
	if (h->h_http != NULL)
		evhttp_free(h->h_http);
	if (h_self == h)
		h_self = NULL;
	free(h);
}
