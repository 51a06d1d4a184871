/*
 * http.c: the operator's window: /metrics, /healthz, /readyz, /v1/status.
 */
#include "autoconfig.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

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
	struct upstream_status us;

	if (relay->r_stopping)
		return "stopping";
	if (ss->ss_error != 0)
		return "storage error";
	if (!relay->r_positioned)
		return "not positioned yet: waiting to adopt the upstream's "
		    "epoch and position";
	if (relay->r_up != NULL) {
		upstream_status(relay->r_up, &us);
		if (us.us_epoch[0] != '\0') {
			snprintf(buf, len, "%s", us.us_epoch);
			return buf;
		}
	}
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

/* A counter with one line per reason="..." label. */
static void
metric_by_reason(struct evbuffer *b, const char *name, const char *help,
    const struct labeled *v, size_t n)
{
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s "
	    "counter\n", name, help, name);
	for (size_t i = 0; i < n; i++)
		evbuffer_add_printf(b, "walrelay_%s{reason=\"%s\"} %" PRIu64
		    "\n", name, v[i].reason, v[i].value);
}

#define METRIC(b, name, type, help, fmt, val) do {			\
	evbuffer_add_printf(b, "# HELP walrelay_%s %s\n# TYPE walrelay_%s %s\n" \
	    "walrelay_%s " fmt "\n", name, help, name, type, name, val);	\
} while (0)

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct relay_stats *s = &relay->r_stats;
	struct segstore_state sst, *ss = &sst;
	struct upstream_status us;
	struct evbuffer *b = evbuffer_new();
	char buf[512];

	if (b == NULL)
		return;
	segstore_poll(relay->r_store, ss);
	upstream_status(relay->r_up, &us);

	METRIC(b, "up", "gauge", "1 while the relay runs", "%d", 1);
	METRIC(b, "ready", "gauge", "1 when storage is healthy", "%d",
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
	METRIC(b, "storage_error", "gauge", "errno of the current disk "
	    "trouble, 0 when healthy", "%d", ss->ss_error);
	METRIC(b, "storage_pending_bytes", "gauge", "bytes waiting for the "
	    "disk", "%zu", ss->ss_pending_bytes);
	METRIC(b, "storage_fsyncs_total", "counter", "fdatasync calls", "%"
	    PRIu64, ss->ss_fsyncs);
	METRIC(b, "storage_write_errors_total", "counter", "failed writes",
	    "%" PRIu64, ss->ss_write_errors);
	METRIC(b, "storage_fsync_errors_total", "counter", "failed fsyncs",
	    "%" PRIu64, ss->ss_fsync_errors);
	METRIC(b, "storage_bytes_written_total", "counter", "bytes written to "
	    "segments", "%" PRIu64, ss->ss_bytes_written);
	METRIC(b, "segments", "gauge", "segment files", "%" PRIu64,
	    ss->ss_segments);
	METRIC(b, "store_bytes", "gauge", "bytes in segment files", "%" PRIu64,
	    ss->ss_store_bytes);
	METRIC(b, "segments_deleted_total", "counter", "segments deleted by "
	    "retention", "%" PRIu64, ss->ss_deleted);

	METRIC(b, "upstream_connected", "gauge", "1 while a publisher or pull "
	    "connection streams", "%d", us.us_connected);
	METRIC(b, "upstream_paused", "gauge", "1 while reading is paused by "
	    "flow control", "%d", us.us_paused);
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
	METRIC(b, "upstream_reconnects_total", "counter", "pull connection "
	    "attempts", "%" PRIu64, s->up_reconnects);
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
	METRIC(b, "frames_sent_total", "counter", "frames queued to "
	    "subscribers", "%" PRIu64, s->sub_frames_sent);
	METRIC(b, "bytes_sent_total", "counter", "bytes queued to subscribers",
	    "%" PRIu64, s->sub_bytes_sent);
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

static void
status_cb(struct evhttp_request *req, void *arg)
{
	struct segstore_state sst, *ss = &sst;
	struct segstore_corrupt c;
	struct upstream_status us;
	struct evbuffer *b = evbuffer_new(), *segs = evbuffer_new();
	struct subscriber *sub;
	int first = 1;
	char buf[512];

	if (b == NULL || segs == NULL)
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
	TAILQ_FOREACH(sub, &relay->r_fan->fo_subs, sub_entry) {
		evbuffer_add_printf(b, "%s{\"id\":\"%s\",\"peer\":\"%s\","
		    "\"kind\":\"%s\",\"start\":%" PRIu64 ",\"position\":%"
		    PRIu64 ",\"lag\":%" PRIu64 ",\"bytes_queued\":%" PRIu64
		    ",\"buffered\":%zu,\"from_disk\":%s,\"zstd\":%s,"
		    "\"connected_ms\":%" PRIu64 "}", first ? "" : ",",
		    sub->sub_name, sub->sub_peer,
		    sub->sub_resuming ? "resuming" : "stock", sub->sub_start,
		    sub->sub_pos, subscriber_lag(sub), sub->sub_bytes_queued,
		    evbuffer_get_length(bufferevent_get_output(sub->sub_bev)),
		    sub->sub_on_disk ? "true" : "false",
		    sub->sub_zstd ? "true" : "false", sub->sub_connected_ms);
		first = 0;
	}
	evbuffer_add_printf(b, "]}\n");
	reply(req, 200, "OK", "application/json", b);
done:
	if (b != NULL)
		evbuffer_free(b);
	if (segs != NULL)
		evbuffer_free(segs);
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
