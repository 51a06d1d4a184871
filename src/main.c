/*
 * main.c: walrelay's start-up and shutdown order. Wiring only.
 */
#include "autoconfig.h"

#include <errno.h>
#include <inttypes.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "auth.h"
#include "preflight.h"
#include "config.h"
#include "fanout.h"
#include "http.h"
#include "log.h"
#include "notify.h"
#include "relay.h"
#include "segment.h"
#include "tls.h"
#include "upstream.h"

#define STOP_POLL_MS	20

static struct relay	 the_relay;
static struct event	*ev_stop_poll;
static struct event	*ev_stop_deadline;
static int		 exit_code;

#ifdef WR_TEST_HOOKS
/*
 * Test builds only (tests/walrelay-hooks): WALRELAY_TEST_ARCHIVE_CRASH=N
 * kills the relay with SIGKILL at step N of archiving a segment.
 */
static void
test_archive_step(int step, const char *name, void *arg)
{
	const char *e = getenv("WALRELAY_TEST_ARCHIVE_CRASH");

	if (e != NULL && atoi(e) == step) {
		log_warnx("test: killed at archive step %d (%s)", step, name);
		raise(SIGKILL);
	}
}
#endif

/* The writer thread calls this: wake the loop (thread-safe). */
static void
store_notify(void *arg)
{
	event_active(arg, EV_READ, 0);
}

static void
stop_finish(void)
{
	event_base_loopexit(relay->r_base, NULL);
}

static void
stop_check(void)
{
	relay_store_update();
	if (relay->r_ss->ss_durable < relay->r_ss->ss_next &&
	    relay->r_ss->ss_error == 0)
		return;		/* still making frames durable */
	if (!fanout_drained(relay->r_fan))
		return;
	if (relay->r_ss->ss_error != 0)
		log_warnx("stop: storage is failing (%s): %" PRIu64 " frames "
		    "from sequence %" PRIu64 " are not durable; the writer "
		    "tries a few more times", strerror(relay->r_ss->ss_error),
		    relay->r_ss->ss_next - relay->r_ss->ss_durable,
		    relay->r_ss->ss_durable);
	else
		log_info("stop: everything durable and every subscriber "
		    "drained");
	stop_finish();
}

/* The writer moved: new durable frames, disk trouble, or recovery. */
static void
store_event_cb(evutil_socket_t fd, short what, void *arg)
{
	int olderr = relay->r_ss->ss_error;

	/* the writer notifies until it is joined: after teardown, no one */
	if (relay->r_fan == NULL)
		return;
	relay_store_update();
	if (relay->r_ss->ss_error != olderr && relay->r_ss->ss_error == 0)
		log_info("storage: healthy again at sequence %" PRIu64,
		    relay->r_ss->ss_durable);
	fanout_advance(relay->r_fan, relay_sendable());
	fanout_blocks_read(relay->r_fan, relay->r_ss->ss_archive_reads);
	if (relay->r_up != NULL)
		upstream_flow(relay->r_up);
	if (relay->r_stopping)
		stop_check();
}

static void
stop_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	stop_check();
}

static void
stop_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	relay_store_update();
	log_warnx("stop: gave subscribers %u ms to drain; closing the rest "
	    "(durable up to sequence %" PRIu64 ")",
	    relay->r_cfg->shutdown_timeout_ms, relay->r_ss->ss_durable);
	stop_finish();
}

static void
stop_begin(int sig)
{
	struct timeval poll = { 0, STOP_POLL_MS * 1000 };
	struct timeval dl;
	unsigned ms = relay->r_cfg->shutdown_timeout_ms;

	if (relay->r_stopping) {
		log_warnx("stop: second %s, exiting at once", strsignal(sig));
		_exit(1);
	}
	relay->r_stopping = 1;
	notify_stopping();
	log_info("stop: %s received: no new connections, making everything "
	    "durable, letting subscribers drain (at most %u ms)",
	    strsignal(sig), ms);
	upstream_stop(relay->r_up);
	fanout_stop(relay->r_fan);
	ev_stop_poll = event_new(relay->r_base, -1, EV_PERSIST, stop_poll_cb,
	    NULL);
	ev_stop_deadline = evtimer_new(relay->r_base, stop_deadline_cb, NULL);
	if (ev_stop_poll == NULL || ev_stop_deadline == NULL) {
		stop_finish();
		return;
	}
	event_add(ev_stop_poll, &poll);
	dl.tv_sec = ms / 1000;
	dl.tv_usec = (ms % 1000) * 1000;
	evtimer_add(ev_stop_deadline, &dl);
	stop_check();
}

/* Token files anyone on the machine can read deserve a warning. */
static void
warn_loose(const struct auth_tokens *tok, const struct wr_config *cfg)
{
	if (tok->at_loose_perms & AUTH_PUBLISH)
		log_warnx("%s is readable by group or others: chmod 600 it",
		    cfg->publish_token_file);
	if (tok->at_loose_perms & AUTH_SUBSCRIBE)
		log_warnx("%s is readable by group or others: chmod 600 it",
		    cfg->subscribe_token_file);
	if (tok->at_loose_perms & AUTH_UPSTREAM)
		log_warnx("%s is readable by group or others: chmod 600 it",
		    cfg->upstream_token_file);
}

static void
tls_files_server(const struct wr_config *cfg, struct tls_files *tf)
{
	memset(tf, 0, sizeof(*tf));
	tf->tf_cert = cfg->tls_cert;
	tf->tf_key = cfg->tls_key;
	tf->tf_ca = cfg->tls_ca;
	tf->tf_verify_peer = cfg->tls_verify_client;
}

/* The name the upstream's certificate must carry: given, or its host. */
static void
tls_files_client(const struct wr_config *cfg, struct tls_files *tf,
    char *host, size_t hostlen)
{
	memset(tf, 0, sizeof(*tf));
	tf->tf_cert = cfg->upstream_tls_cert;
	tf->tf_key = cfg->upstream_tls_key;
	tf->tf_ca = cfg->upstream_tls_ca;
	if (cfg->upstream_tls_server_name != NULL)
		snprintf(host, hostlen, "%s", cfg->upstream_tls_server_name);
	else {
		char err[8];

		/* the address was checked when the configuration loaded */
		if (config_addr_split(cfg->upstream, host, hostlen, NULL, err,
		    sizeof(err)) == -1)
			host[0] = '\0';
	}
	tf->tf_server_name = host;
}

/*
 * Both TLS contexts that cfg describes (NULL where it has none), or neither:
 * on failure nothing is left built. The caller swaps them in together.
 */
static int
tls_setup(const struct wr_config *cfg, struct tls_ctx **srv,
    struct tls_ctx **cli, char *err, size_t errlen)
{
	struct tls_files tf;
	char host[256];

	*srv = *cli = NULL;
	if (cfg->tls_cert != NULL || cfg->tls_key != NULL) {
		tls_files_server(cfg, &tf);
		if ((*srv = tls_server_new(&tf, err, errlen)) == NULL)
			return -1;
	}
	if (cfg->upstream_tls && cfg->upstream != NULL) {
		tls_files_client(cfg, &tf, host, sizeof(host));
		if ((*cli = tls_client_new(&tf, err, errlen)) == NULL) {
			tls_free(*srv);
			*srv = NULL;
			return -1;
		}
	}
	return 0;
}

/*
 * All or nothing: the config, the tokens and both TLS contexts are built
 * from the file first; only if everything loads are they swapped in. Keys
 * that take a restart keep their running values throughout (config_reload),
 * so the TLS contexts are rebuilt with the running settings and the new
 * certificate, key and CA files.
 */
static void
reload(void)
{
	struct wr_config *next, *cur = relay->r_cfg;
	struct auth_tokens *tok;
	struct tls_ctx *srv, *cli;
	char err[1024];
	int restart, applied;

	/* an operator who freed disk space reloads to retry at once */
	segstore_retry(relay->r_store);
	if ((next = calloc(1, sizeof(*next))) == NULL) {
		log_warnx("reload: out of memory; keeping the running config");
		return;
	}
	if ((restart = config_reload(cur, next, err, sizeof(err))) == -1) {
		log_warnx("reload: %s; keeping the running config", err);
		config_free(next);
		free(next);
		return;
	}
	if ((tok = calloc(1, sizeof(*tok))) == NULL ||
	    auth_load(tok, next, err, sizeof(err)) == -1) {
		log_warnx("reload: %s; keeping the running tokens and config",
		    tok ? err : "out of memory");
		free(tok);
		config_free(next);
		free(next);
		return;
	}
	if (tls_setup(next, &srv, &cli, err, sizeof(err)) == -1) {
		log_warnx("reload: %s; keeping the running certificates, "
		    "tokens and config", err);
		auth_free(tok);
		free(tok);
		config_free(next);
		free(next);
		return;
	}
	/* established connections hold their own reference to the old ones */
	tls_free(relay->r_tls);
	tls_free(relay->r_upstream_tls);
	relay->r_tls = srv;
	relay->r_upstream_tls = cli;
	if (srv != NULL || cli != NULL)
		log_info("reload: TLS certificates reloaded (%s%s%s)",
		    srv ? "listeners" : "", srv && cli ? " and " : "",
		    cli ? "upstream" : "");
	warn_loose(tok, next);
	applied = config_apply_reload(cur, next);
	config_free(next);
	free(next);
	auth_free(relay->r_tokens);
	free(relay->r_tokens);
	relay->r_tokens = tok;
	log_set_level(cur->log_level);
	log_info("reload: tokens and limits reloaded (%zu publish, %zu "
	    "subscribe tokens); %d changed keys applied, %d not applied "
	    "(they take a restart)", tok->at_publish.ts_count,
	    tok->at_subscribe.ts_count, applied, restart);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	if (sig == SIGHUP) {
		if (!relay->r_stopping) {
			notify_reloading();
			reload();
			notify_ready();
		}
		return;
	}
	stop_begin(sig);
}

/*
 * A listener open to anyone must be on loopback, unless the operator said
 * otherwise.
 */
static int
check_exposure(struct wr_config *cfg, struct auth_tokens *tok, char *err,
    size_t errlen)
{
	struct {
		const char	*addr;
		const char	*what;
		size_t		 ntokens;
		const char	*option;
	} l[] = {
		{ cfg->upstream ? NULL : cfg->ingest, "ingest",
		    tok->at_publish.ts_count, "--publish-token-file" },
		{ cfg->listen, "subscriber", tok->at_subscribe.ts_count,
		    "--subscribe-token-file" },
	};

	if (cfg->allow_unauthenticated)
		return 0;
	for (size_t i = 0; i < sizeof(l) / sizeof(l[0]); i++) {
		struct sockaddr_storage ss;
		socklen_t sslen;

		if (l[i].addr == NULL || l[i].ntokens > 0)
			continue;
		if (relay_addr_parse(l[i].addr, &ss, &sslen, err, errlen) == -1)
			return -1;
		if (!relay_addr_is_loopback((struct sockaddr *)&ss)) {
			snprintf(err, errlen, "the %s listener %s is not on "
			    "loopback and has no token: give it tokens with %s "
			    "(or the environment), or pass "
			    "--allow-unauthenticated to serve anyone who can "
			    "connect", l[i].what, l[i].addr, l[i].option);
			return -1;
		}
	}
	return 0;
}

/*
 * The one shutdown order: everything that fires (timers, the store event,
 * connections) is freed or made inert before what it points to.
 */
static void
teardown(struct event **sig)
{
	/* the stop's timers read the fan-out and the store */
	if (ev_stop_poll != NULL)
		event_free(ev_stop_poll);
	if (ev_stop_deadline != NULL)
		event_free(ev_stop_deadline);
	ev_stop_poll = ev_stop_deadline = NULL;
	/* users before what they use: http reads all, upstream publishes */
	http_free(relay->r_http);
	relay->r_http = NULL;
	upstream_free(relay->r_up);
	relay->r_up = NULL;
	fanout_free(relay->r_fan);
	relay->r_fan = NULL;	/* from here store_event_cb does nothing */
	/* bufferevents free through finalizers: let the loop run them */
	event_base_loop(relay->r_base, EVLOOP_NONBLOCK);
	relay_store_update();
	/* joins the writer: nothing activates r_store_ev after this */
	if (segstore_close(relay->r_store) == -1)	/* makes it durable */
		exit_code = 1;	/* or could not: frames were dropped */
	relay->r_store = NULL;
	event_free(relay->r_store_ev);
	relay->r_store_ev = NULL;
	for (int i = 0; sig[i] != NULL; i++)
		event_free(sig[i]);
	notify_free();
	event_base_free(relay->r_base);
	relay->r_base = NULL;
	/* connections hold their own reference to an SSL_CTX */
	tls_free(relay->r_tls);
	tls_free(relay->r_upstream_tls);
	relay->r_tls = relay->r_upstream_tls = NULL;
}

int
main(int argc, char **argv)
{
	static struct wr_config cfg;
	struct segment_config sc;
	struct auth_tokens *tok;
	struct event *sig[4] = { NULL, NULL, NULL, NULL };
	int signals[4] = { SIGHUP, SIGTERM, SIGINT, -1 };
	char err[1024];
	int rc;

	log_init("walrelay", LOG_LEVEL_INFO, 0);
	rc = config_load(argc, argv, &cfg, err, sizeof(err));
	if (rc == 1)
		return 0;
	if (rc == -1) {
		fprintf(stderr, "walrelay: %s\n", err);
		fprintf(stderr, "walrelay: see walrelay --help\n");
		return 2;
	}
	log_init("walrelay", cfg.log_level, cfg.log_syslog);

	if ((tok = calloc(1, sizeof(*tok))) == NULL)
		fatal("calloc");
	if (auth_load(tok, &cfg, err, sizeof(err)) == -1 ||
	    check_exposure(&cfg, tok, err, sizeof(err)) == -1) {
		fprintf(stderr, "walrelay: %s\n", err);
		auth_free(tok);
		free(tok);
		config_free(&cfg);
		return 2;
	}
	warn_loose(tok, &cfg);
	relay = &the_relay;
	relay->r_cfg = &cfg;
	relay->r_tokens = tok;
	if (tls_setup(&cfg, &relay->r_tls, &relay->r_upstream_tls, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "walrelay: %s\n", err);
		tls_free(relay->r_tls);
		auth_free(tok);
		free(tok);
		config_free(&cfg);
		return 2;
	}
	if (cfg.check_only) {
		char note[512];

		if ((rc = preflight_start(&cfg, note, sizeof(note), err,
		    sizeof(err))) == -1)
			fprintf(stderr, "walrelay: %s\n", err);
		else if (note[0] != '\0')
			printf("walrelay: note: %s\n", note);
		if (rc == 0)
			printf("walrelay: configuration OK\n");
		tls_free(relay->r_tls);
		tls_free(relay->r_upstream_tls);
		auth_free(tok);
		free(tok);
		config_free(&cfg);
		return rc == 0 ? 0 : 2;
	}

	signal(SIGPIPE, SIG_IGN);
#ifdef M_MMAP_THRESHOLD
	/*
	 * Frame chunks (64 KiB to 2 MiB, allocated and freed out of order)
	 * get their own mappings, returned to the system when freed. With
	 * glibc's default, the threshold rises after the first large free and
	 * the heap keeps the holes: a slow subscriber then made the relay's
	 * RSS several times its tail-memory and buffers. Mapping and
	 * unmapping them is not free either: frame.c keeps freed chunk
	 * buffers for reuse (4 MiB at most, released when idle).
	 */
	mallopt(M_MMAP_THRESHOLD, 64 * 1024);
#endif
	signal(SIGXFSZ, SIG_IGN);	/* a file size limit is an I/O error */
	if (evthread_use_pthreads() == -1)
		fatalx("libevent without thread support");

	relay->r_started_ms = relay_now_ms();
	if ((relay->r_base = event_base_new()) == NULL)
		fatalx("cannot create the event loop");
	if (notify_init(relay->r_base, err, sizeof(err)) == -1)
		fatalx("%s", err);

	/* a taken port or an unusable directory: say so before creating */
	if (preflight_start(&cfg, NULL, 0, err, sizeof(err)) == -1)
		fatalx("%s", err);
	memset(&sc, 0, sizeof(sc));
	sc.dir = cfg.data_dir;
	sc.fsync_mode = cfg.fsync_mode;
	sc.fsync_interval_ms = cfg.fsync_interval_ms;
	sc.segment_bytes = cfg.segment_bytes;
	sc.segment_age_ms = cfg.segment_age_s * 1000;
	sc.retain_bytes = cfg.retain_bytes;
	sc.retain_age_s = cfg.retain_age_s;
	sc.max_frame_bytes = cfg.max_frame_bytes;
	sc.retry_ms = 1000;
	sc.verify_sealed = cfg.verify_segments;
	sc.archive.ac_enabled = cfg.archive_after_s > 0 ||
	    cfg.archive_keep_raw > 0;
	sc.archive.ac_after_s = cfg.archive_after_s;
	sc.archive.ac_keep_raw = cfg.archive_keep_raw;
	sc.archive.ac_level = (int)cfg.archive_level;
	sc.archive.ac_long = cfg.archive_long;
#ifdef WR_TEST_HOOKS
	sc.archive.ac_test_step = test_archive_step;
#endif
	if ((relay->r_store = segstore_open(&sc, err, sizeof(err))) == NULL)
		fatalx("storage: %s", err);
	relay_store_update();
	log_info("storage: %s, epoch %016" PRIx64 ", frames %" PRIu64 " to %"
	    PRIu64 ", fsync %s", cfg.data_dir, segstore_epoch(relay->r_store),
	    relay->r_ss->ss_earliest, relay->r_ss->ss_next,
	    cfg.fsync_mode == FSYNC_ALWAYS ? "always" :
	    cfg.fsync_mode == FSYNC_NEVER ? "never" : "interval");

	relay->r_positioned = !(cfg.upstream != NULL &&
	    cfg.upstream_protocol == UPSTREAM_PROTO_SUB &&
	    relay->r_ss->ss_next == 0);
	relay->r_store_ev = event_new(relay->r_base, -1, 0, store_event_cb,
	    NULL);
	if (relay->r_store_ev == NULL)
		fatalx("out of memory");
	if ((relay->r_fan = fanout_new(err, sizeof(err))) == NULL)
		fatalx("%s", err);
	relay->r_fan->fo_sendable = relay_sendable();
	if (segstore_start(relay->r_store, store_notify, relay->r_store_ev) ==
	    -1)
		fatalx("storage: cannot start the writer thread");
	if ((relay->r_up = upstream_new(err, sizeof(err))) == NULL)
		fatalx("%s", err);
	if (cfg.http != NULL &&
	    (relay->r_http = http_new(cfg.http, err, sizeof(err))) == NULL)
		fatalx("%s", err);

	for (int i = 0; signals[i] != -1; i++) {
		sig[i] = evsignal_new(relay->r_base, signals[i], signal_cb, NULL);
		if (sig[i] == NULL || evsignal_add(sig[i], NULL) == -1)
			fatalx("cannot install signal handlers");
	}
	log_info("walrelay %s started (pid %ld)", PACKAGE_VERSION,
	    (long)getpid());
	notify_ready();		/* recovered, every listener bound */

	event_base_dispatch(relay->r_base);

	teardown(sig);
	if (chunk_live_count() != 0)
		log_warnx("stop: %ld frame buffers still referenced at exit",
		    chunk_live_count());
	else
		log_info("stop: all frame buffers released");
	chunk_cache_clear();
	if (exit_code != 0)
		log_error("stop: exiting with status %d: frames that could not "
		    "be made durable were dropped (see above)", exit_code);
	else
		log_info("stop: exiting; frames up to sequence %" PRIu64 " are "
		    "durable", relay->r_ss->ss_next);
	auth_free(relay->r_tokens);
	free(relay->r_tokens);
	config_free(&cfg);
	libevent_global_shutdown();
	return exit_code;
}
