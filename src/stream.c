/*
 * stream.c: one stream's life: open its store, start its writer thread,
 * fan-out and upstream; the durable -> sendable step when the writer
 * reports; the janitor; the stream's part of shutdown.
 */
#include "autoconfig.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "auth.h"
#include "config.h"
#include "fanout.h"
#include "iopool.h"
#include "jetstream.h"
#include "log.h"
#include "relay.h"
#include "snapshot.h"
#include "stream.h"
#include "subscriber.h"
#include "tls.h"
#include "upstream.h"
#include "wakeup.h"

#define STREAM_JANITOR_MS	1000
/*
 * Threads that read segment and snapshot files for subscribers (and do
 * the store's other file work): several, so that a few cold reads in
 * flight at once keep the disk's queue busy.
 */
#define STREAM_IO_THREADS	4
/*
 * Stores opened at once at a start: their metadata fsyncs overlap (the
 * file system commits them together) instead of queueing one by one.
 */
#define STREAM_OPEN_THREADS	16

int
stream_name_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > STREAM_NAME_MAX)
		return 0;
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '_' || *s == '.' ||
		    *s == '-'))
			return 0;
	return 1;
}

const struct segstore_state *
stream_store_update(struct stream *st)
{
	segstore_poll(st->st_store, &st->st_ss);
	return &st->st_ss;
}

uint64_t
stream_sendable(const struct stream *st)
{
	/*
	 * fsync never promises nothing about the disk: a frame may be sent
	 * once validated and handed to the writer, which may lag (the page
	 * cache's writeback throttling stalls it, never the subscribers).
	 * A crash that loses frames subscribers saw makes the next start
	 * take a new epoch (segment.c), as before.
	 */
	if (st->st_cfg->fsync_mode == FSYNC_NEVER)
		return segstore_next(st->st_store);
	return st->st_ss.ss_durable;
}

void
stream_publish(struct stream *st, struct chunk *ch)
{
	segstore_append(st->st_store, ch);
	fanout_publish(st->st_fan, ch);
	st->st_stats.up_frames += ch->ch_nframes;
	st->st_stats.up_bytes += ch->ch_len;
}

void
stream_published(struct stream *st)
{
	if (st->st_cfg->fsync_mode == FSYNC_NEVER)
		fanout_advance(st->st_fan, stream_sendable(st),
		    st->st_ss.ss_durable);
}

/*
 * The writer thread calls this: wake the loop (thread-safe), through an
 * eventfd (wakeup.h), not event_active, which would hold the loop's lock
 * while the loop wakes (a second sleep before it can send the frames just
 * made durable).
 */
static void
stream_store_notify(void *arg)
{
	struct stream *st = arg;

	wakeup_signal(st->st_store_wake);
}

/* The writer moved: new durable frames, disk trouble, or recovery. */
static void
stream_store_cb(void *arg)
{
	struct stream *st = arg;
	int olderr = st->st_ss.ss_error;

	if (st->st_fan == NULL || st->st_store == NULL)
		return;		/* closing */
	stream_store_update(st);
	if (st->st_ss.ss_error != olderr && st->st_ss.ss_error == 0)
		log_info("%s: storage: healthy again at sequence %" PRIu64,
		    st->st_name, st->st_ss.ss_durable);
	fanout_advance(st->st_fan, stream_sendable(st), st->st_ss.ss_durable);
	fanout_blocks_read(st->st_fan, st->st_ss.ss_archive_reads +
	    st->st_ss.ss_pool_done);
	if (st->st_up != NULL)
		upstream_flow(st->st_up);
	if (st->st_js != NULL) {
		jetstream_store_moved(st->st_js, &st->st_ss);
		jetstream_flow(st->st_js);
	}
}

/* ---- NATS JetStream: the stream's side of jetstream.c ----------------- */

static uint64_t
stream_js_next(void *arg)
{
	struct stream *st = arg;

	return segstore_next(st->st_store);
}

static uint64_t
stream_js_epoch(void *arg)
{
	struct stream *st = arg;

	return segstore_epoch(st->st_store);
}

static int
stream_js_adopt(void *arg, uint64_t epoch, uint64_t next)
{
	struct stream *st = arg;

	if (segstore_adopt(st->st_store, epoch, next) == -1)
		return -1;
	stream_store_update(st);
	return 0;
}

/* Validated frames from JetStream: stored and published like a pull's. */
static void
stream_js_deliver(void *arg, struct chunk *ch)
{
	struct stream *st = arg;

	stream_publish(st, ch);
	st->st_positioned = 1;
	stream_published(st);
}

/* The store is behind: JetStream's frames wait (upstream_flow's rule). */
static int
stream_js_busy(void *arg)
{
	struct stream *st = arg;
	struct segstore_state ss;

	segstore_poll(st->st_store, &ss);
	return ss.ss_error != 0 ||
	    ss.ss_pending_bytes > st->st_cfg->ingest_pause_bytes;
}

/* The stream's JetStream sink or source, when its config has one. */
static int
stream_js_start(struct stream *st, char *err, size_t errlen)
{
	const struct wr_config *cfg = st->st_cfg;
	struct jetstream_config jc;
	struct jetstream_source_hooks h = { st, stream_js_next,
	    stream_js_epoch, stream_js_adopt, stream_js_deliver,
	    stream_js_busy };
	int source = cfg->upstream != NULL &&
	    cfg->upstream_protocol == UPSTREAM_PROTO_JETSTREAM;

	if (cfg->jetstream_sink == NULL && !source)
		return 0;
	memset(&jc, 0, sizeof(jc));
	jc.jc_urls = source ? cfg->upstream : cfg->jetstream_sink;
	jc.jc_stream = cfg->jetstream_stream;
	jc.jc_data_dir = cfg->data_dir;
	jc.jc_must_exist = cfg->jetstream_must_exist;
	jc.jc_replicas = cfg->jetstream_replicas;
	jc.jc_window = cfg->jetstream_window;
	jc.jc_max_frame_bytes = cfg->max_frame_bytes;
	jc.jc_handoff_bytes = cfg->ingest_resume_bytes > 0 ?
	    cfg->ingest_resume_bytes : 8 * 1024 * 1024;
	jc.jc_backoff_min_ms = cfg->upstream_backoff_min_ms;
	jc.jc_backoff_max_ms = cfg->upstream_backoff_max_ms;
	jc.jc_user_file = cfg->jetstream_user_file;
	jc.jc_token_file = cfg->jetstream_token_file;
	jc.jc_nkey = cfg->jetstream_nkey;
	jc.jc_nkey_seed_file = cfg->jetstream_nkey_seed_file;
	jc.jc_creds_file = cfg->jetstream_creds_file;
	jc.jc_tls_ca = cfg->jetstream_tls_ca;
	jc.jc_tls_cert = cfg->jetstream_tls_cert;
	jc.jc_tls_key = cfg->jetstream_tls_key;
	if (source)
		st->st_js = jetstream_source_new(&jc, relay->r_base, &h, err,
		    errlen);
	else
		st->st_js = jetstream_sink_new(&jc, relay->r_base,
		    st->st_store, err, errlen);
	return st->st_js != NULL ? 0 : -1;
}

/* ---- the janitor: the stream's periodic housekeeping ---------------- */

/* Disconnect subscribers over the operator's lag limit (max-lag). */
static void
janitor_lag(struct stream *st)
{
	if (st->st_cfg->max_lag_frames > 0)
		fanout_enforce_lag(st->st_fan, st->st_cfg->max_lag_frames);
}

/* Archive sealed segments now due (by age it changes with the clock). */
static void
janitor_archive(struct stream *st)
{
	segstore_archive_kick(st->st_store);
}

/* Delete segments past retention (by age it changes with the clock). */
static void
janitor_retain(struct stream *st)
{
	if (st->st_cfg->retain_age_s > 0 || st->st_cfg->retain_bytes > 0)
		segstore_retain(st->st_store);
}

/* Start a snapshot job when one is due (snapshot-every, -every-bytes). */
static void
janitor_snapshot(struct stream *st)
{
	snapshotter_tick(st->st_snap);
}

/*
 * Every job runs once a second, in this order, on the loop: each one
 * only starts work (a thread for anything that touches the disk at
 * length) and hands results back to the loop.
 */
static const struct {
	const char	*j_what;
	void		(*j_run)(struct stream *);
} stream_jobs[] = {
	{ "lag limits", janitor_lag },
	{ "retention", janitor_retain },
	{ "archiving", janitor_archive },
	{ "snapshots", janitor_snapshot },
};

static void
stream_janitor_cb(evutil_socket_t fd, short what, void *arg)
{
	struct stream *st = arg;

	if (st->st_stopping)
		return;
	for (size_t i = 0; i < sizeof(stream_jobs) / sizeof(stream_jobs[0]);
	    i++)
		stream_jobs[i].j_run(st);
}

/* ---- life cycle ------------------------------------------------------ */

static int
stream_snapshot_open(struct stream *st, char *errbuf, size_t errlen)
{
	const struct wr_config *cfg = st->st_cfg;
	struct snapshot_config sc;

	memset(&sc, 0, sizeof(sc));
	sc.sc_dir = cfg->data_dir;
	sc.sc_every_ms = cfg->snapshot_every_ms;
	sc.sc_every_bytes = cfg->snapshot_every_bytes;
	sc.sc_compress = cfg->snapshot_compress;
	sc.sc_memory = cfg->snapshot_memory;
	sc.sc_keep = cfg->snapshot_keep;
	sc.sc_skew_ms = cfg->snapshot_skew_ms;
	sc.sc_max_frame = cfg->max_frame_bytes;
	st->st_snap = snapshotter_open(&sc, st->st_store, relay->r_base,
	    errbuf, errlen);
	return st->st_snap != NULL ? 0 : -1;
}

/* The store's settings from a stream's config. */
static void
stream_store_config(const struct wr_config *cfg, struct segment_config *sc)
{
	memset(sc, 0, sizeof(*sc));
	sc->dir = cfg->data_dir;
	sc->fsync_mode = cfg->fsync_mode;
	sc->fsync_interval_ms = cfg->fsync_interval_ms;
	sc->segment_bytes = cfg->segment_bytes;
	sc->segment_age_ms = cfg->segment_age_s * 1000;
	sc->retain_bytes = cfg->retain_bytes;
	sc->retain_age_s = cfg->retain_age_s;
	sc->max_frame_bytes = cfg->max_frame_bytes;
	sc->retry_ms = 1000;
	sc->verify_sealed = cfg->verify_segments;
	sc->archive.ac_enabled = cfg->archive_after_s > 0 ||
	    cfg->archive_keep_raw > 0;
	sc->archive.ac_after_s = cfg->archive_after_s;
	sc->archive.ac_keep_raw = cfg->archive_keep_raw;
	sc->archive.ac_level = (int)cfg->archive_level;
	sc->archive.ac_long = cfg->archive_long;
	sc->archive.ac_test_step = cfg->archive_test_step;
}

/* stream_open_stores: the work shared by its threads. */
struct stream_opening {
	pthread_mutex_t		 so_mtx;
	struct wr_config *const	*so_cfgs;
	struct segstore		**so_stores;
	char			(*so_errs)[512];
	size_t			 so_n;
	size_t			 so_next;	/* under so_mtx */
};

static void *
stream_open_thread(void *arg)
{
	struct stream_opening *so = arg;
	struct segment_config sc;
	size_t i;

	for (;;) {
		pthread_mutex_lock(&so->so_mtx);
		i = so->so_next++;
		pthread_mutex_unlock(&so->so_mtx);
		if (i >= so->so_n)
			break;
		stream_store_config(so->so_cfgs[i], &sc);
		so->so_stores[i] = segstore_open(&sc, so->so_errs[i],
		    sizeof(so->so_errs[i]));
	}
	return NULL;
}

int
stream_open_stores(struct wr_config *const *cfgs, size_t n,
    struct segstore **stores, char *errbuf, size_t errlen)
{
	struct stream_opening so;
	pthread_t th[STREAM_OPEN_THREADS];
	sigset_t all, old;
	size_t nth = 0, i;
	int rc = 0;

	memset(&so, 0, sizeof(so));
	for (i = 0; i < n; i++)
		stores[i] = NULL;
	if (n == 0)
		return 0;
	if ((so.so_errs = calloc(n, sizeof(*so.so_errs))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	pthread_mutex_init(&so.so_mtx, NULL);
	so.so_cfgs = cfgs;
	so.so_stores = stores;
	so.so_n = n;
	/* signals are for the loop thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (i = 0; i + 1 < n && i + 1 < STREAM_OPEN_THREADS; i++) {
		if (pthread_create(&th[nth], NULL, stream_open_thread, &so) != 0)
			break;		/* fewer threads: still every store */
		nth++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	stream_open_thread(&so);
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&so.so_mtx);
	for (i = 0; i < n; i++)
		if (stores[i] == NULL) {
			snprintf(errbuf, errlen, "stream %s: storage: %s",
			    cfgs[i]->stream_name != NULL ?
			    cfgs[i]->stream_name : STREAM_DEFAULT, so.so_errs[i]);
			rc = -1;
			break;
		}
	if (rc == -1)
		for (i = 0; i < n; i++) {
			segstore_close(stores[i]);
			stores[i] = NULL;
		}
	free(so.so_errs);
	return rc;
}

struct stream *
stream_new(const char *name, struct wr_config *cfg, struct auth_tokens *tok,
    struct tls_ctx *upstream_tls, char *errbuf, size_t errlen)
{
	return stream_new_opened(name, cfg, NULL, tok, upstream_tls, errbuf,
	    errlen);
}

struct stream *
stream_new_opened(const char *name, struct wr_config *cfg,
    struct segstore *store, struct auth_tokens *tok,
    struct tls_ctx *upstream_tls, char *errbuf, size_t errlen)
{
	struct segment_config sc;
	struct stream *st;
	struct timeval tv = { STREAM_JANITOR_MS / 1000,
	    (STREAM_JANITOR_MS % 1000) * 1000 };
	char err[512];

	if ((st = calloc(1, sizeof(*st))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		segstore_close(store);
		return NULL;
	}
	snprintf(st->st_name, sizeof(st->st_name), "%s", name);
	st->st_cfg = cfg;
	st->st_tokens = tok;
	st->st_upstream_tls = upstream_tls;

	if ((st->st_io = iopool_new(relay->r_base, STREAM_IO_THREADS, name,
	    err, sizeof(err))) == NULL) {
		snprintf(errbuf, errlen, "stream %s: %s", name, err);
		if (store != NULL)
			segstore_close(store);
		goto fail;
	}
	st->st_store = store;
	stream_store_config(cfg, &sc);
	if (st->st_store == NULL &&
	    (st->st_store = segstore_open(&sc, err, sizeof(err))) == NULL) {
		snprintf(errbuf, errlen, "stream %s: storage: %s", name, err);
		goto fail;
	}
	segstore_set_iopool(st->st_store, st->st_io);
	stream_store_update(st);
	log_info("%s: storage: %s, epoch %016" PRIx64 ", frames %" PRIu64
	    " to %" PRIu64 ", fsync %s", st->st_name, cfg->data_dir,
	    segstore_epoch(st->st_store), st->st_ss.ss_earliest,
	    st->st_ss.ss_next, segment_fsync_name(cfg->fsync_mode));

	/* before anything is served: complete or undo an interrupted one */
	if (stream_snapshot_open(st, err, sizeof(err)) == -1) {
		snprintf(errbuf, errlen, "stream %s: snapshots: %s", name, err);
		goto fail;
	}
	stream_store_update(st);

	st->st_positioned = !(cfg->upstream != NULL &&
	    (cfg->upstream_protocol == UPSTREAM_PROTO_SUB ||
	    cfg->upstream_protocol == UPSTREAM_PROTO_JETSTREAM) &&
	    st->st_ss.ss_next == 0);
	if ((st->st_store_wake = wakeup_new(relay->r_base, stream_store_cb, st,
	    err, sizeof(err))) == NULL) {
		snprintf(errbuf, errlen, "stream %s: %s", name, err);
		goto fail;
	}
	if ((st->st_janitor = event_new(relay->r_base, -1, EV_PERSIST,
	    stream_janitor_cb, st)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if ((st->st_fan = fanout_new(st, err, sizeof(err))) == NULL) {
		snprintf(errbuf, errlen, "stream %s: %s", name, err);
		goto fail;
	}
	if (segstore_start(st->st_store, stream_store_notify, st) == -1) {
		snprintf(errbuf, errlen, "stream %s: storage: cannot start the "
		    "writer thread", name);
		goto fail;
	}
	if ((st->st_up = upstream_new(st, err, sizeof(err))) == NULL) {
		snprintf(errbuf, errlen, "stream %s: %s", name, err);
		goto fail;
	}
	if (stream_js_start(st, err, sizeof(err)) == -1) {
		snprintf(errbuf, errlen, "stream %s: jetstream: %s", name, err);
		goto fail;
	}
	event_add(st->st_janitor, &tv);
	return st;
fail:
	stream_free(st);
	return NULL;
}

void
stream_stop(struct stream *st)
{
	st->st_stopping = 1;
	if (st->st_up != NULL)
		upstream_stop(st->st_up);
	if (st->st_fan != NULL)
		fanout_stop(st->st_fan);
}

int
stream_stopped(struct stream *st)
{
	const struct segstore_state *ss = stream_store_update(st);

	if (ss->ss_durable < ss->ss_next && ss->ss_error == 0)
		return 0;	/* still making frames durable */
	return fanout_drained(st->st_fan);
}

void
stream_set_tokens(struct stream *st, struct auth_tokens *tok)
{
	auth_free(st->st_tokens);
	free(st->st_tokens);
	st->st_tokens = tok;
}

int
stream_corrupt(struct stream *st, struct segstore_corrupt *c)
{
	uint64_t lim = segstore_limit(st->st_store);

	return lim != UINT64_MAX && segstore_corrupt_at(st->st_store, lim,
	    c) == 1;
}

const char *
stream_not_ready(struct stream *st, char *buf, size_t len)
{
	struct segstore_state ss;
	struct segstore_corrupt c;
	struct upstream_status us;

	if (relay->r_stopping || st->st_stopping)
		return "stopping";
	segstore_poll(st->st_store, &ss);
	if (ss.ss_error != 0)
		return "storage error";
	if (!st->st_positioned)
		return "not positioned yet: waiting to adopt the upstream's "
		    "epoch and position";
	if (st->st_up != NULL) {
		upstream_status(st->st_up, &us);
		if (us.us_epoch[0] != '\0') {
			snprintf(buf, len, "%s", us.us_epoch);
			return buf;
		}
	}
	if (stream_corrupt(st, &c)) {
		snprintf(buf, len, "degraded: corrupt frame at sequence %"
		    PRIu64 " (%s, offset %" PRIu64 "): frames %" PRIu64 " to %"
		    PRIu64 " cannot be served, readers that reach them are "
		    "disconnected; live subscribers are served", c.sc_first,
		    c.sc_name, c.sc_offset, c.sc_first, c.sc_end - 1);
		return buf;
	}
	return NULL;
}

int
stream_close(struct stream *st)
{
	int rc = 0;

	/* no more housekeeping: the janitor's jobs use the store */
	if (st->st_janitor != NULL)
		event_del(st->st_janitor);
	jetstream_free(st->st_js);	/* records what JetStream acknowledged */
	st->st_js = NULL;
	upstream_free(st->st_up);
	st->st_up = NULL;
	fanout_free(st->st_fan);
	st->st_fan = NULL;
	/* reads in flight for subscribers that are gone now */
	iopool_drain(st->st_io);
	/* bufferevents free through finalizers: let the loop run them */
	event_base_loop(relay->r_base, EVLOOP_NONBLOCK);
	/* a running snapshot job is cancelled and joined: it uses the store */
	snapshotter_close(st->st_snap);
	st->st_snap = NULL;
	if (st->st_store != NULL) {
		stream_store_update(st);
		if (segstore_close(st->st_store) == -1)	/* makes it durable */
			rc = -1;	/* or could not: frames were dropped */
		st->st_store = NULL;
		/* the writer thread is gone: no more wake-ups */
		wakeup_free(st->st_store_wake);
		st->st_store_wake = NULL;
	}
	return rc;
}

void
stream_free(struct stream *st)
{
	if (st == NULL)
		return;
	if (st->st_store != NULL || st->st_fan != NULL || st->st_up != NULL ||
	    st->st_js != NULL || st->st_snap != NULL)
		(void)stream_close(st);
	iopool_free(st->st_io);
	if (st->st_janitor != NULL)
		event_free(st->st_janitor);
	wakeup_free(st->st_store_wake);
	tls_free(st->st_upstream_tls);
	auth_free(st->st_tokens);
	free(st->st_tokens);
	free(st);
}
