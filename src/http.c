/*
 * http.c: the operator's window: /metrics, /healthz, /readyz, /v1/status.
 */
#include "autoconfig.h"

#include <sys/resource.h>

#include <dirent.h>
#include <stddef.h>
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
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "chunk.h"
#include "clock.h"
#include "crc.h"
#include "fanout.h"
#include "http.h"
#include "jetstream.h"
#include "log.h"
#include "relay.h"
#include "snapshot.h"
#include "stream.h"
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
 * connection. (The callback's argument is the evhttp: the server is the
 * relay's, relay->r_http.)
 */
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
	if (relay->r_http != NULL)
		evtimer_add(relay->r_http->h_resume, &tv);
}

/* Every stream ready, or the first reason one is not (into buf). */
static const char *
not_ready_all(char *buf, size_t len)
{
	struct stream *st;
	char why[512];
	const char *w;

	if (relay->r_stopping)
		return "stopping";
	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		if ((w = stream_not_ready(st, why, sizeof(why))) != NULL) {
			snprintf(buf, len, "stream %s: %s", st->st_name, w);
			return buf;
		}
	}
	return NULL;
}

/* The value of query key `key` in the request's URI, or NULL. */
static const char *
query_get(struct evhttp_request *req, struct evkeyvalq *q, const char *key)
{
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *query;

	TAILQ_INIT(q);
	if (u == NULL || (query = evhttp_uri_get_query(u)) == NULL)
		return NULL;
	if (evhttp_parse_query_str(query, q) == -1)
		return NULL;
	return evhttp_find_header(q, key);
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

/*
 * /readyz?component=jetstream[&stream=NAME]: the JetStream sinks and
 * sources alone (a NATS outage never makes a stream unready).
 */
static void
readyz_component(struct evhttp_request *req, struct evbuffer *b,
    const char *comp, struct stream *only)
{
	struct stream *st;
	char buf[512];
	int n = 0, bad = 0;

	if (strcmp(comp, "jetstream") != 0) {
		evbuffer_add_printf(b, "unknown component (known: jetstream)\n");
		reply(req, 400, "Bad Request", "text/plain", b);
		return;
	}
	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		if ((only != NULL && st != only) || st->st_js == NULL)
			continue;
		n++;
		if (!jetstream_ready(st->st_js, buf, sizeof(buf))) {
			evbuffer_add_printf(b, "not ready: stream %s: %s\n",
			    st->st_name, buf);
			bad++;
		}
	}
	if (n == 0) {
		evbuffer_add_printf(b, "not configured: no jetstream-sink and "
		    "no upstream-protocol jetstream\n");
		reply(req, 404, "Not Found", "text/plain", b);
	} else if (bad > 0)
		reply(req, 503, "Service Unavailable", "text/plain", b);
	else {
		evbuffer_add_printf(b, "ready\n");
		reply(req, 200, "OK", "text/plain", b);
	}
}

static void
readyz_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	struct evkeyvalq q;
	struct stream *st = NULL;
	const char *name, *why;
	char buf[640];

	if (b == NULL)
		return;
	if ((name = query_get(req, &q, "stream")) != NULL &&
	    (st = relay_stream(name)) == NULL) {
		evbuffer_add_printf(b, "no such stream\n");
		reply(req, 404, "Not Found", "text/plain", b);
		goto done;
	}
	if (evhttp_find_header(&q, "component") != NULL) {
		readyz_component(req, b, evhttp_find_header(&q, "component"),
		    st);
		goto done;
	}
	if (st != NULL)
		why = relay->r_stopping ? "stopping" :
		    stream_not_ready(st, buf, sizeof(buf));
	else
		why = not_ready_all(buf, sizeof(buf));
	if (why != NULL) {
		evbuffer_add_printf(b, "not ready: %s\n", why);
		reply(req, 503, "Service Unavailable", "text/plain", b);
	} else {
		evbuffer_add_printf(b, "ready\n");
		reply(req, 200, "OK", "text/plain", b);
	}
done:
	evhttp_clear_headers(&q);
	evbuffer_free(b);
}

#define nitems(a)	(sizeof(a) / sizeof((a)[0]))

/* What /metrics and /v1/status show of one stream. */
struct stream_view {
	struct stream		*v_st;
	struct segstore_state	 v_ss;
	struct upstream_status	 v_us;
	struct fanout_status	 v_fs;
	const struct stream_stats *v_s;
	int			 v_ready;
	long long		 v_corrupt;	/* first corrupt sequence, -1 */
	struct snapshotter_status v_sn;
};

static void
stream_view(struct stream *st, struct stream_view *v)
{
	char buf[512];
	uint64_t lim;

	v->v_st = st;
	segstore_poll(st->st_store, &v->v_ss);
	upstream_status(st->st_up, &v->v_us);
	fanout_status(st->st_fan, &v->v_fs);
	v->v_s = &st->st_stats;
	v->v_ready = stream_not_ready(st, buf, sizeof(buf)) == NULL &&
	    !relay->r_stopping;
	lim = segstore_limit(st->st_store);
	v->v_corrupt = lim == UINT64_MAX ? -1LL : (long long)lim;
	snapshotter_status(st->st_snap, &v->v_sn);
}

/* The views of every stream (NULL when out of memory). */
static struct stream_view *
stream_views(size_t *n)
{
	struct stream_view *v;
	struct stream *st;
	size_t i = 0;

	if ((v = calloc(relay->r_nstreams + 1, sizeof(*v))) == NULL)
		return NULL;
	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		stream_view(st, &v[i++]);
	*n = i;
	return v;
}

#define METRIC(b, name, type, help, fmt, val) do {			\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s %s\n" \
	    "walrelay_%s " fmt "\n", name, help, name, type, name, val);	\
} while (0)

/* One line per stream, labelled stream="NAME". */
#define SMETRIC(b, name, type, help, expr) do {				\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s %s\n", \
	    name, help, name, type);					\
	for (size_t i_ = 0; i_ < nv; i_++) {				\
		const struct stream_view *v = &views[i_];		\
		evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\"} %lld\n",	\
		    name, v->v_st->st_name, (long long)(expr));		\
	}								\
} while (0)

/* A gauge in seconds (a double), one line per stream. */
#define SMETRIC_F(b, name, type, help, expr) do {			\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s %s\n", \
	    name, help, name, type);					\
	for (size_t i_ = 0; i_ < nv; i_++) {				\
		const struct stream_view *v = &views[i_];		\
		evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\"} %.3f\n",	\
		    name, v->v_st->st_name, (double)(expr));		\
	}								\
} while (0)

/* The store's error counters, one line per stream and op="...". */
#define SOP(b, name, help) do {						\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s " \
	    "counter\n", name, help, name);				\
	for (size_t i_ = 0; i_ < nv; i_++) {				\
		const struct segstore_state *s_ = &views[i_].v_ss;	\
		const char *n_ = views[i_].v_st->st_name;		\
		evbuffer_add_printf(b,					\
		    "walrelay_%s{stream=\"%s\",op=\"write\"} %" PRIu64 "\n" \
		    "walrelay_%s{stream=\"%s\",op=\"fsync\"} %" PRIu64 "\n" \
		    "walrelay_%s{stream=\"%s\",op=\"create\"} %" PRIu64 "\n" \
		    "walrelay_%s{stream=\"%s\",op=\"truncate\"} %" PRIu64 "\n", \
		    name, n_, s_->ss_write_errors, name, n_,		\
		    s_->ss_fsync_errors, name, n_, s_->ss_create_errors,	\
		    name, n_, s_->ss_truncate_errors);			\
	}								\
} while (0)

/* Seconds since the stream's last frame (since the start when none). */
static double
last_frame_age(const struct stream_view *v)
{
	uint64_t now = clock_wall_ms(), last = v->v_us.us_last_frame_ms;

	if (last == 0)
		last = relay->r_started_ms;
	return now > last ? (now - last) / 1e3 : 0.0;
}

/* A counter with one line per stream and reason="...". */
#define SREASON(b, name, help, ...) do {				\
	static const char *const r_[] = { __VA_ARGS__ };		\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s " \
	    "counter\n", name, help, name);				\
	for (size_t i_ = 0; i_ < nv; i_++) {				\
		const struct stream_view *v = &views[i_];		\
		for (size_t j_ = 0; j_ < nitems(r_); j_++)		\
			evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\","	\
			    "reason=\"%s\"} %" PRIu64 "\n", name,		\
			    v->v_st->st_name, r_[j_],			\
			    reason_value(v->v_s, name, r_[j_]));	\
	}								\
} while (0)

/* The counter behind each metric_by_reason label. */
static uint64_t
reason_value(const struct stream_stats *s, const char *metric,
    const char *r)
{
	if (strcmp(metric, "upstream_rejected_total") == 0) {
		if (strcmp(r, "auth") == 0)
			return s->up_rejected_auth;
		if (strcmp(r, "limit") == 0)
			return s->up_rejected_limit;
		if (strcmp(r, "timeout") == 0)
			return s->up_rejected_timeout;
		return s->up_rejected_tls;
	}
	if (strcmp(metric, "subscribers_rejected_total") == 0) {
		if (strcmp(r, "auth") == 0)
			return s->sub_rejected_auth;
		if (strcmp(r, "busy") == 0)
			return s->sub_rejected_busy;
		if (strcmp(r, "request") == 0)
			return s->sub_rejected_request;
		if (strcmp(r, "limit") == 0)
			return s->sub_rejected_limit;
		if (strcmp(r, "timeout") == 0)
			return s->sub_rejected_timeout;
		if (strcmp(r, "tls") == 0)
			return s->sub_rejected_tls;
		return s->sub_rejected_corrupt;
	}
	/* subscribers_disconnected_total */
	if (strcmp(r, "gone") == 0)
		return s->sub_disconnected_gone;
	if (strcmp(r, "lag") == 0)
		return s->sub_disconnected_lag;
	if (strcmp(r, "timeout") == 0)
		return s->sub_disconnected_timeout;
	return s->sub_disconnected_corrupt;
}

/* The JetStream series of the streams that have a sink or a source. */
static void
metrics_jetstream(struct evbuffer *b, const struct stream_view *views,
    size_t nv)
{
	static const struct {
		const char	*name, *type, *help;
		int		 sink_only;
	} m[] = {
		{ "jetstream_ready", "gauge", "1 while the JetStream sink or "
		  "source streams", 0 },
		{ "jetstream_messages_total", "counter", "frames published to "
		  "JetStream and acknowledged (sink) or received (source)", 0 },
		{ "jetstream_bytes_total", "counter", "bytes of those frames", 0 },
		{ "jetstream_errors_total", "counter", "JetStream errors: "
		  "refused publishes, bad messages, failed connects", 0 },
		{ "jetstream_resyncs_total", "counter", "times the sink asked "
		  "JetStream where to continue after a refusal or reconnect", 1 },
		{ "jetstream_reconnects_total", "counter", "NATS reconnects", 0 },
		{ "jetstream_acked_sequence", "gauge", "frames below this are "
		  "acknowledged by JetStream", 1 },
		{ "jetstream_inflight_frames", "gauge", "frames published, not "
		  "yet acknowledged", 1 },
		{ "jetstream_lag_frames", "gauge", "durable frames JetStream has "
		  "not acknowledged", 1 },
		{ "jetstream_lag_bytes", "gauge", "bytes of those frames", 1 },
		{ "jetstream_lag_seconds", "gauge", "age of the oldest frame "
		  "JetStream has not acknowledged", 1 },
	};
	struct jetstream_status *js;
	size_t i, k, have = 0, sinks = 0;

	if ((js = calloc(nv + 1, sizeof(*js))) == NULL)
		return;
	for (i = 0; i < nv; i++)
		if (views[i].v_st->st_js != NULL) {
			jetstream_status(views[i].v_st->st_js, &js[i]);
			have++;
			sinks += js[i].jst_sink;
		}
	for (k = 0; have > 0 && k < nitems(m); k++) {
		if (m[k].sink_only && sinks == 0)
			continue;
		evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
		    "%s\n", m[k].name, m[k].help, m[k].name, m[k].type);
		for (i = 0; i < nv; i++) {
			const struct jetstream_status *j = &js[i];
			const char *sn = views[i].v_st->st_name;
			uint64_t v[] = { j->jst_state == JS_STATE_STREAMING,
			    j->jst_messages, j->jst_bytes, j->jst_errors,
			    j->jst_resyncs, j->jst_reconnects, j->jst_position,
			    j->jst_inflight, j->jst_lag_frames,
			    j->jst_lag_bytes };

			if (views[i].v_st->st_js == NULL ||
			    (m[k].sink_only && !j->jst_sink))
				continue;
			if (k == nitems(m) - 1)
				evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\"} "
				    "%.3f\n", m[k].name, sn,
				    (double)j->jst_lag_ms / 1000.0);
			else
				evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\"} "
				    "%" PRIu64 "\n", m[k].name, sn, v[k]);
		}
	}
	free(js);
}

/* A histogram of each stream's store, in seconds. */
static void
metric_hist(struct evbuffer *b, const char *name, const char *help,
    const struct stream_view *views, size_t nv, size_t off)
{
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
	    "histogram\n", name, help, name);
	for (size_t k = 0; k < nv; k++) {
		const struct segstore_hist *h = (const struct segstore_hist *)
		    (const void *)((const char *)&views[k].v_ss + off);
		const char *sn = views[k].v_st->st_name;
		uint64_t n = 0;

		for (size_t i = 0; i < SEGSTORE_HIST_BUCKETS; i++) {
			n += h->sh_count[i];
			evbuffer_add_printf(b, "walrelay_%s_bucket{stream=\"%s\","
			    "le=\"%g\"} %" PRIu64 "\n", name, sn,
			    segstore_hist_bounds_us[i] / 1e6, n);
		}
		evbuffer_add_printf(b, "walrelay_%s_bucket{stream=\"%s\","
		    "le=\"+Inf\"} %" PRIu64 "\nwalrelay_%s_sum{stream=\"%s\"} "
		    "%.6f\nwalrelay_%s_count{stream=\"%s\"} %" PRIu64 "\n", name,
		    sn, h->sh_total, name, sn, h->sh_sum_us / 1e6, name, sn,
		    h->sh_total);
	}
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

/* One stream's streaming subscribers, for one scrape. */
struct sub_series {
	struct subscriber_status *ss_v;
	size_t		 ss_n;
	size_t		 ss_cap;
	size_t		 ss_max;	/* metrics-max-subscribers */
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
		return (double)st->ss_lag;
	case SV_LAG_BYTES:
		return (double)st->ss_lag_bytes;
	case SV_LAG_SECONDS:
		return st->ss_lag_us / 1e6;
	case SV_POSITION:
		return (double)st->ss_pos;
	case SV_MARGIN_BYTES:
		return st->ss_has_margin_bytes ?
		    (double)st->ss_margin_bytes : -1;
	default:
		return st->ss_has_margin_s ? (double)st->ss_margin_s : -1;
	}
}

/*
 * One family of per-subscriber gauges: in each stream, a series for each
 * of the first metrics-max-subscribers subscribers (by connection), one
 * with id="other" for the rest: the largest lag among them, the smallest
 * position and margin (what an alert needs to know about the worst one).
 */
static void
metric_subs(struct evbuffer *b, const char *name, const char *help,
    const struct stream_view *views, const struct sub_series *ser,
    size_t nv, int what)
{
	int lowest = what >= SV_POSITION;

	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
	    "gauge\n", name, help, name);
	for (size_t k = 0; k < nv; k++) {
		const struct sub_series *s = &ser[k];
		const char *sn = views[k].v_st->st_name;
		double v, other = -1;

		for (size_t i = 0; i < s->ss_n; i++) {
			const struct subscriber_status *st = &s->ss_v[i];

			if ((v = sub_value(st, what)) < 0)
				continue;
			if (i < s->ss_max)
				evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\","
				    "id=\"%s\",kind=\"%s\"} %.15g\n", name, sn,
				    st->ss_name, st->ss_resuming ? "resuming" :
				    "stock", v);
			else if (other < 0 || (lowest ? v < other :
			    v > other))
				other = v;
		}
		if (other >= 0)
			evbuffer_add_printf(b, "walrelay_%s{stream=\"%s\","
			    "id=\"other\",kind=\"other\"} %.15g\n", name, sn,
			    other);
	}
}

static void
metrics_subscribers(struct evbuffer *b, const struct stream_view *views,
    size_t nv)
{
	struct sub_series *ser;
	size_t k;

	if ((ser = calloc(nv + 1, sizeof(*ser))) == NULL)
		goto oom;
	for (k = 0; k < nv; k++) {
		ser[k].ss_max = views[k].v_st->st_cfg->metrics_max_subscribers;
		if (fanout_status_foreach(views[k].v_st->st_fan, sub_series_cb,
		    &ser[k]) == -1 || ser[k].ss_oom)
			goto oom;
	}
	evbuffer_add_printf(b, "# HELP walrelay_subscribers_aggregated "
	    "streaming subscribers beyond metrics-max-subscribers, reported "
	    "together as id=\"other\"\n# TYPE walrelay_subscribers_aggregated "
	    "gauge\n");
	for (k = 0; k < nv; k++)
		evbuffer_add_printf(b, "walrelay_subscribers_aggregated{stream="
		    "\"%s\"} %zu\n", views[k].v_st->st_name,
		    ser[k].ss_n > ser[k].ss_max ? ser[k].ss_n - ser[k].ss_max :
		    0);
	metric_subs(b, "subscriber_lag_frames", "durable frames the "
	    "subscriber has not been sent yet (queued to its connection)",
	    views, ser, nv, SV_LAG_FRAMES);
	metric_subs(b, "subscriber_lag_bytes", "bytes of those frames "
	    "(estimated within the segment file while it reads from disk)",
	    views, ser, nv, SV_LAG_BYTES);
	metric_subs(b, "subscriber_lag_seconds", "time since the relay "
	    "received the oldest of those frames, 0 when caught up", views,
	    ser, nv, SV_LAG_SECONDS);
	metric_subs(b, "subscriber_position", "sequence of the next frame "
	    "the subscriber is sent", views, ser, nv, SV_POSITION);
	metric_subs(b, "subscriber_retention_margin_bytes", "bytes the relay "
	    "can still store before retention by size (retain-bytes) deletes "
	    "the segment file that holds the subscriber's position (only "
	    "with retain-bytes)", views, ser, nv, SV_MARGIN_BYTES);
	metric_subs(b, "subscriber_retention_margin_seconds", "time until "
	    "retention by age (retain-age) may delete the segment file that "
	    "holds the subscriber's position (only with retain-age)", views,
	    ser, nv, SV_MARGIN_SECONDS);
	goto done;
oom:
	log_warnx("http: /metrics: out of memory: per-subscriber series left "
	    "out");
done:
	if (ser != NULL)
		for (k = 0; k < nv; k++)
			free(ser[k].ss_v);
	free(ser);
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	struct stream_view *views;
	size_t nv = 0;
	char buf[512];

	if (b == NULL)
		return;
	if ((views = stream_views(&nv)) == NULL) {
		evbuffer_free(b);
		evhttp_send_error(req, 500, "out of memory");
		return;
	}

	evbuffer_add_printf(b, "# HELP walrelay_build_info always 1; the "
	    "labels say which build runs\n# TYPE walrelay_build_info gauge\n"
	    "walrelay_build_info{version=\"%s\",crc=\"%s\"} 1\n",
	    PACKAGE_VERSION, crc_impl());
	METRIC(b, "up", "gauge", "always 1: the relay answered this scrape "
	    "(a relay that is down is seen by Prometheus's own up series)",
	    "%d", 1);
	METRIC(b, "streams", "gauge", "streams this process serves", "%zu",
	    nv);
	METRIC(b, "all_ready", "gauge", "1 when /readyz answers 200: every "
	    "stream is ready and the relay is not stopping", "%d",
	    not_ready_all(buf, sizeof(buf)) == NULL);
	SMETRIC(b, "ready", "gauge", "1 when /readyz?stream=NAME answers 200: "
	    "its storage works, no corrupt stored frame, not stopping",
	    v->v_ready);
	SMETRIC(b, "corrupt_sequence", "gauge", "first stored frame that "
	    "cannot be served because it is corrupt, -1 when none",
	    v->v_corrupt);
	SMETRIC(b, "next_sequence", "gauge", "sequence the next stored frame "
	    "gets", v->v_ss.ss_next);
	SMETRIC(b, "durable_sequence", "gauge", "frames below this are "
	    "durable", v->v_ss.ss_durable);
	SMETRIC(b, "earliest_sequence", "gauge", "oldest retained frame",
	    v->v_ss.ss_earliest);
	SMETRIC(b, "storage_failing", "gauge", "1 while writes or fsyncs fail "
	    "and are retried (the errno is storage_error in /v1/status)",
	    v->v_ss.ss_error != 0);
	SOP(b, "storage_errors_total", "failed disk operations of the segment "
	    "writer, by operation");
	SMETRIC(b, "storage_pending_bytes", "gauge", "bytes received and not "
	    "durable yet", v->v_ss.ss_pending_bytes);
	SMETRIC(b, "storage_fsyncs_total", "counter", "fdatasync calls that "
	    "succeeded", v->v_ss.ss_fsyncs);
	metric_hist(b, "storage_fsync_duration_seconds", "time each successful "
	    "fdatasync of a segment file took", views, nv,
	    offsetof(struct segstore_state, ss_fsync_time));
	metric_hist(b, "ingest_to_durable_seconds", "per frame, the time from "
	    "its read from the upstream until it was durable (fsync always or "
	    "interval) or written (fsync never), that is sendable", views, nv,
	    offsetof(struct segstore_state, ss_durable_time));
	SMETRIC(b, "storage_bytes_written_total", "counter", "bytes written "
	    "to segments", v->v_ss.ss_bytes_written);
	SMETRIC(b, "segments", "gauge", "segment files", v->v_ss.ss_segments);
	SMETRIC(b, "store_bytes", "gauge", "bytes in segment files",
	    v->v_ss.ss_store_bytes);
	SMETRIC(b, "retain_bytes", "gauge", "retention limit on store_bytes "
	    "(retain-bytes), 0 when none", v->v_st->st_cfg->retain_bytes);
	SMETRIC(b, "segments_deleted_total", "counter", "segments deleted by "
	    "retention", v->v_ss.ss_deleted);
	SMETRIC(b, "archived_segments", "gauge", "segments held as .wal.zst "
	    "(archive tier)", v->v_ss.ss_archived);
	SMETRIC(b, "archived_bytes", "gauge", "bytes of the .wal.zst files",
	    v->v_ss.ss_archived_bytes);
	SMETRIC(b, "archived_raw_bytes", "gauge", "bytes of the frames they "
	    "hold", v->v_ss.ss_archive_raw_bytes);
	SMETRIC(b, "archive_block_reads_total", "counter", "archived blocks "
	    "decompressed for readers", v->v_ss.ss_archive_reads);
	SMETRIC(b, "archive_failures_total", "counter", "archive attempts "
	    "that failed on the disk (retried)", v->v_ss.ss_archive_failures);
	SMETRIC(b, "snapshots_total", "counter", "snapshots written",
	    v->v_sn.st_taken);
	SMETRIC(b, "snapshot_failures_total", "counter", "snapshot jobs that "
	    "failed", v->v_sn.st_failed);
	SMETRIC(b, "snapshot_running", "gauge", "1 while a snapshot job runs",
	    v->v_sn.st_running);
	SMETRIC(b, "snapshot_covered_sequence", "gauge", "frames below this "
	    "are in the newest snapshot", v->v_sn.st_have ?
	    v->v_sn.st_info.si_covered : 0);
	SMETRIC(b, "snapshot_keys", "gauge", "keys in the newest snapshot",
	    v->v_sn.st_have ? v->v_sn.st_info.si_entries : 0);
	SMETRIC_F(b, "snapshot_duration_seconds", "gauge", "duration of the "
	    "last snapshot job", v->v_sn.st_last_ms / 1e3);
	SMETRIC(b, "snapshot_late_records_total", "counter", "records older "
	    "than the snapshot before them (raise snapshot-skew)",
	    v->v_sn.st_late_records);

	SMETRIC(b, "upstream_connected", "gauge", "1 while a publisher or "
	    "pull connection streams", v->v_us.us_connected);
	SMETRIC(b, "upstream_paused", "gauge", "1 while reading is paused by "
	    "flow control", v->v_us.us_paused);
	SMETRIC_F(b, "upstream_last_frame_age_seconds", "gauge", "time since "
	    "the last frame was received (since the start when none was)",
	    last_frame_age(v));
	SMETRIC(b, "upstream_connections_total", "counter", "upstream "
	    "connections accepted or made", v->v_s->up_connections);
	SREASON(b, "upstream_rejected_total", "ingest connections refused, by "
	    "reason", "auth", "limit", "timeout", "tls");
	SMETRIC(b, "upstream_replaced_total", "counter", "publishers replaced "
	    "by a newer connection", v->v_s->up_replaced);
	SMETRIC(b, "frames_received_total", "counter", "frames validated and "
	    "stored", v->v_s->up_frames);
	SMETRIC(b, "bytes_received_total", "counter", "bytes of frames stored",
	    v->v_s->up_bytes);
	SMETRIC(b, "bad_frames_total", "counter", "upstream connections "
	    "closed on an invalid frame", v->v_s->up_bad_frames);
	SMETRIC(b, "partial_frames_dropped_total", "counter", "partial frames "
	    "dropped when an upstream connection ended",
	    v->v_s->up_partial_dropped);
	SMETRIC(b, "upstream_reconnects_total", "counter", "pull connections "
	    "started (the first one and every reconnect)",
	    v->v_s->up_reconnects);
	SMETRIC(b, "upstream_connect_failures_total", "counter", "pull "
	    "connections that failed", v->v_s->up_connect_failures);
	SMETRIC(b, "upstream_pauses_total", "counter", "times upstream "
	    "reading was paused", v->v_s->up_paused);

	SMETRIC(b, "active_subscribers", "gauge", "streaming subscribers",
	    v->v_fs.fs_subscribers);
	SMETRIC(b, "subscribers_accepted_total", "counter", "subscribers that "
	    "started streaming", v->v_s->sub_accepted);
	SREASON(b, "subscribers_rejected_total", "subscribers refused, by "
	    "reason", "auth", "busy", "request", "limit", "timeout", "tls",
	    "corrupt");
	SREASON(b, "subscribers_disconnected_total", "streaming subscribers "
	    "disconnected by the relay, by reason", "gone", "lag", "timeout",
	    "corrupt");
	SMETRIC(b, "frames_sent_total", "counter", "frames handed to "
	    "subscriber connections for sending (counted when queued to the "
	    "connection, sent or not when it closes)",
	    v->v_s->sub_frames_sent);
	SMETRIC(b, "bytes_sent_total", "counter", "bytes of those frames, "
	    "before compression", v->v_s->sub_bytes_sent);
	metrics_subscribers(b, views, nv);
	evbuffer_add_printf(b, "# HELP walrelay_tls_subscribers_total TLS "
	    "subscribers that started streaming, by who encrypts their bytes: "
	    "the kernel (kTLS) or OpenSSL\n# TYPE walrelay_tls_subscribers_total "
	    "counter\n");
	for (size_t i = 0; i < nv; i++)
		evbuffer_add_printf(b, "walrelay_tls_subscribers_total{stream="
		    "\"%s\",path=\"ktls\"} %" PRIu64 "\n"
		    "walrelay_tls_subscribers_total{stream=\"%s\",path="
		    "\"openssl\"} %" PRIu64 "\n", views[i].v_st->st_name,
		    views[i].v_s->sub_tls_ktls, views[i].v_st->st_name,
		    views[i].v_s->sub_tls_openssl);
	SMETRIC(b, "disk_reads_total", "counter", "segment spans served to "
	    "subscribers behind the in-memory tail", v->v_s->sub_disk_reads);
	SMETRIC(b, "tail_bytes", "gauge", "bytes in the shared in-memory tail",
	    v->v_fs.fs_tail_bytes);
	SMETRIC(b, "tail_buffer_bytes", "gauge", "bytes of the buffers that "
	    "hold the shared tail", v->v_fs.fs_tail_cap);
	SMETRIC(b, "tail_chunks", "gauge", "frame buffers in the shared tail",
	    v->v_fs.fs_tail_chunks);

	metrics_jetstream(b, views, nv);

	/* process-wide: frame buffers are shared by every stream */
	METRIC(b, "zstd_chunks_total", "counter", "chunks compressed once "
	    "for compress=zstd subscribers", "%lld", chunk_zstd_count());
	METRIC(b, "chunks_live", "gauge", "frame buffers alive (tail and "
	    "in flight)", "%ld", chunk_live_count());
	METRIC(b, "chunk_bytes_live", "gauge", "bytes of frame buffers alive",
	    "%lld", chunk_live_bytes());
	METRIC(b, "chunk_cache_bytes", "gauge", "bytes of freed frame "
	    "buffers kept for reuse", "%zu", chunk_cache_bytes());
	METRIC(b, "chunk_cache_reused_total", "counter", "frame buffers "
	    "taken from the reuse cache instead of the system", "%lu",
	    chunk_cache_reused());
	evbuffer_add_printf(b, "# HELP walrelay_reloads_total configuration "
	    "reloads (SIGHUP); a failed one keeps the running configuration\n"
	    "# TYPE walrelay_reloads_total counter\n"
	    "walrelay_reloads_total{result=\"success\"} %" PRIu64 "\n"
	    "walrelay_reloads_total{result=\"failure\"} %" PRIu64 "\n",
	    relay->r_reloads_ok, relay->r_reloads_failed);
	METRIC(b, "reload_last_success", "gauge", "1 when the last reload "
	    "succeeded or there was none, 0 when it failed", "%d",
	    relay->r_reload_last_ms == 0 || relay->r_reload_last_ok);
	METRIC(b, "reload_last_timestamp_seconds", "gauge", "time of the last "
	    "reload since the Unix epoch, 0 when none", "%.3f",
	    relay->r_reload_last_ms / 1e3);
	metrics_process(b);
	reply(req, 200, "OK", "text/plain; version=0.0.4", b);
	evbuffer_free(b);
	free(views);
}

static void
status_segment(void *arg, const char *name, uint64_t base, uint64_t end,
    uint64_t bytes)
{
	struct evbuffer *b = arg;

	evbuffer_add_printf(b, "{\"name\":\"%s\",\"first\":%" PRIu64 ",\"end\":%"
	    PRIu64 ",\"bytes\":%" PRIu64 "},", name, base, end, bytes);
}

static void
status_subscriber(void *arg, const struct subscriber_status *ss)
{
	struct evbuffer *b = arg;

	evbuffer_add_printf(b, "{\"id\":\"%s\",\"peer\":\"%s\","
	    "\"kind\":\"%s\",\"start\":%" PRIu64 ",\"position\":%"
	    PRIu64 ",\"lag\":%" PRIu64 ",\"lag_bytes\":%" PRIu64
	    ",\"lag_ms\":%" PRIu64 ",\"bytes_queued\":%" PRIu64
	    ",\"buffered\":%zu,\"from_disk\":%s,\"zstd\":%s,\"tls\":%s,"
	    "\"connected_ms\":%" PRIu64 "},", ss->ss_name, ss->ss_peer,
	    ss->ss_resuming ? "resuming" : "stock", ss->ss_start, ss->ss_pos,
	    ss->ss_lag, ss->ss_lag_bytes, ss->ss_lag_us / 1000,
	    ss->ss_bytes_queued, ss->ss_buffered,
	    ss->ss_on_disk ? "true" : "false", ss->ss_zstd ? "true" : "false",
	    ss->ss_tls == SUBSCRIBER_TLS_KTLS ? "\"ktls\"" :
	    ss->ss_tls == SUBSCRIBER_TLS_OPENSSL ? "\"openssl\"" : "null",
	    ss->ss_connected_ms);
}

/* Move the text of tmp into b without its trailing comma. */
static void
status_list(struct evbuffer *b, struct evbuffer *tmp)
{
	if (evbuffer_get_length(tmp) > 0) {
		evbuffer_remove_buffer(tmp, b, evbuffer_get_length(tmp) - 1);
		evbuffer_drain(tmp, evbuffer_get_length(tmp));
	}
}

/* "jetstream":{...} or null, and a comma. */
static void
status_jetstream(struct evbuffer *b, struct stream *st)
{
	struct jetstream_status js;
	char err[sizeof(js.jst_error) * 2];
	size_t n = 0;

	if (st->st_js == NULL) {
		evbuffer_add_printf(b, "\"jetstream\":null,");
		return;
	}
	jetstream_status(st->st_js, &js);
	/* a JSON string: the server's words may hold quotes */
	for (const char *p = js.jst_error; *p && n < sizeof(err) - 2; p++) {
		if (*p == '"' || *p == '\\')
			err[n++] = '\\';
		err[n++] = (unsigned char)*p < 0x20 ? ' ' : *p;
	}
	err[n] = '\0';
	evbuffer_add_printf(b, "\"jetstream\":{\"role\":\"%s\",\"stream\":"
	    "\"%s\",\"state\":\"%s\",\"ready\":%s,\"server\":\"%s\","
	    "\"error\":\"%s\",\"%s\":%" PRIu64 ",\"lag_frames\":%" PRIu64
	    ",\"lag_bytes\":%" PRIu64 ",\"lag_seconds\":%.3f,\"inflight\":%"
	    PRIu64 ",\"messages\":%" PRIu64 ",\"errors\":%" PRIu64
	    ",\"resyncs\":%" PRIu64 ",\"reconnects\":%" PRIu64 "},",
	    js.jst_sink ? "sink" : "source", js.jst_stream,
	    jetstream_state_name(js.jst_state),
	    js.jst_state == JS_STATE_STREAMING ? "true" : "false",
	    js.jst_server, err, js.jst_sink ? "acked" : "next",
	    js.jst_position, js.jst_lag_frames, js.jst_lag_bytes,
	    (double)js.jst_lag_ms / 1000.0, js.jst_inflight, js.jst_messages,
	    js.jst_errors, js.jst_resyncs, js.jst_reconnects);
}

/* One stream's fields (no braces). */
static void
status_stream(struct evbuffer *b, struct evbuffer *tmp,
    const struct stream_view *v)
{
	struct stream *st = v->v_st;
	struct segstore_corrupt c;

	evbuffer_add_printf(b, "\"name\":\"%s\",\"data_dir\":\"%s\","
	    "\"ready\":%s,\"epoch\":\"%016" PRIx64 "\",\"earliest\":%" PRIu64
	    ",\"next\":%" PRIu64 ",\"durable\":%" PRIu64 ",\"fsync\":\"%s\","
	    "\"storage_error\":%d,\"pending_bytes\":%zu,\"tail_bytes\":%zu,",
	    st->st_name, st->st_cfg->data_dir, v->v_ready ? "true" : "false",
	    segstore_epoch(st->st_store), v->v_ss.ss_earliest, v->v_ss.ss_next,
	    v->v_ss.ss_durable, segment_fsync_name(st->st_cfg->fsync_mode),
	    v->v_ss.ss_error, v->v_ss.ss_pending_bytes,
	    v->v_fs.fs_tail_bytes);
	evbuffer_add_printf(b, "\"upstream\":{\"mode\":\"%s\",\"connected\":%s,"
	    "\"paused\":%s,\"connection\":\"%s\",\"peer\":\"%s\",\"bytes\":%"
	    PRIu64 ",\"last_frame_ms\":%" PRIu64 "},",
	    v->v_us.us_pull ? "pull" : "ingest",
	    v->v_us.us_connected ? "true" : "false",
	    v->v_us.us_paused ? "true" : "false", v->v_us.us_name,
	    v->v_us.us_peer, v->v_us.us_conn_bytes, v->v_us.us_last_frame_ms);
	status_jetstream(b, st);
	if (v->v_sn.st_have)
		evbuffer_add_printf(b, "\"snapshot\":{\"file\":\"%s\","
		    "\"covered\":%" PRIu64 ",\"timestamp_ms\":%" PRIu64
		    ",\"keys\":%" PRIu64 ",\"running\":%s},",
		    v->v_sn.st_info.si_name, v->v_sn.st_info.si_covered,
		    v->v_sn.st_info.si_ts, v->v_sn.st_info.si_entries,
		    v->v_sn.st_running ? "true" : "false");
	else
		evbuffer_add_printf(b, "\"snapshot\":null,");
	if (stream_corrupt(st, &c))
		evbuffer_add_printf(b, "\"corrupt\":{\"segment\":\"%s\","
		    "\"offset\":%" PRIu64 ",\"first\":%" PRIu64 ",\"end\":%"
		    PRIu64 "},", c.sc_name, c.sc_offset, c.sc_first, c.sc_end);
	else
		evbuffer_add_printf(b, "\"corrupt\":null,");
	segstore_foreach(st->st_store, status_segment, tmp);
	evbuffer_add_printf(b, "\"segments\":[");
	status_list(b, tmp);
	evbuffer_add_printf(b, "],\"subscribers\":[");
	if (fanout_status_foreach(st->st_fan, status_subscriber, tmp) == -1)
		log_warnx("http: /v1/status: out of memory: subscribers of "
		    "stream %s left out", st->st_name);
	status_list(b, tmp);
	evbuffer_add_printf(b, "]");
}

/*
 * {"version", "uptime_ms", "ready" (every stream), "streams": [...]}; with
 * one stream, or a stream named "default", that stream's fields are also
 * at the top level, as before streams.
 */
static void
status_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new(), *tmp = evbuffer_new();
	struct stream_view *views = NULL, *top = NULL;
	size_t nv = 0;
	char buf[512];

	if (b == NULL || tmp == NULL || (views = stream_views(&nv)) == NULL)
		goto done;
	for (size_t i = 0; i < nv; i++)
		if (nv == 1 || strcmp(views[i].v_st->st_name,
		    STREAM_DEFAULT) == 0)
			top = &views[i];
	evbuffer_add_printf(b, "{\"version\":\"%s\",\"uptime_ms\":%" PRIu64
	    ",\"all_ready\":%s,", PACKAGE_VERSION,
	    clock_wall_ms() - relay->r_started_ms,
	    not_ready_all(buf, sizeof(buf)) ? "false" : "true");
	if (top != NULL) {
		status_stream(b, tmp, top);
		evbuffer_add_printf(b, ",");
	} else
		evbuffer_add_printf(b, "\"ready\":%s,",
		    not_ready_all(buf, sizeof(buf)) ? "false" : "true");
	evbuffer_add_printf(b, "\"streams\":[");
	for (size_t i = 0; i < nv; i++) {
		evbuffer_add_printf(b, "%s{", i > 0 ? "," : "");
		status_stream(b, tmp, &views[i]);
		evbuffer_add_printf(b, "}");
	}
	evbuffer_add_printf(b, "]}\n");
	reply(req, 200, "OK", "application/json", b);
done:
	if (b != NULL)
		evbuffer_free(b);
	if (tmp != NULL)
		evbuffer_free(tmp);
	free(views);
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
	free(h);
}
