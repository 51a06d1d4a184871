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
#include <sys/stat.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "auth.h"
#include "clock.h"
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

#define STOP_POLL_MS	20

static struct relay	 the_relay;
static struct event	*ev_stop_poll;
static struct event	*ev_stop_deadline;
static int		 exit_code;

static void
stop_finish(void)
{
	event_base_loopexit(relay->r_base, NULL);
}

static void
stop_check(void)
{
	struct stream *st;
	int failing = 0;

	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		if (!stream_stopped(st))
			return;
		failing |= st->st_ss.ss_error != 0;
	}
	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		if (st->st_ss.ss_error != 0)
			log_warnx("%s: stop: storage is failing (%s): %" PRIu64
			    " frames from sequence %" PRIu64 " are not "
			    "durable; the writer tries a few more times",
			    st->st_name, strerror(st->st_ss.ss_error),
			    st->st_ss.ss_next - st->st_ss.ss_durable,
			    st->st_ss.ss_durable);
	if (!failing)
		log_info("stop: everything durable and every subscriber "
		    "drained");
	stop_finish();
}

static void
stop_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	stop_check();
}

static void
stop_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct stream *st;

	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		stream_store_update(st);
		log_warnx("%s: stop: gave subscribers %u ms to drain; closing "
		    "the rest (durable up to sequence %" PRIu64 ")",
		    st->st_name, relay->r_cfg->shutdown_timeout_ms,
		    st->st_ss.ss_durable);
	}
	stop_finish();
}

/* Once a second, for the whole process. */
static void
process_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	chunk_cache_tick();	/* no reuse for a second: free kept buffers */
}

static void
stop_begin(int sig)
{
	struct timeval poll = { 0, STOP_POLL_MS * 1000 };
	struct timeval dl;
	struct stream *st;
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
	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		stream_stop(st);
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
 * The listeners' TLS context cfg describes, new (NULL when it has none).
 * A reload builds new contexts and swaps them in only when everything
 * loaded; connections hold their own reference to the old ones.
 */
static int
tls_setup_server(const struct wr_config *cfg, struct tls_ctx **ctx,
    char *err, size_t errlen)
{
	struct tls_files tf;

	*ctx = NULL;
	if (cfg->tls_cert == NULL && cfg->tls_key == NULL)
		return 0;
	tls_files_server(cfg, &tf);
	if ((*ctx = tls_server_new(&tf, err, errlen)) == NULL)
		return -1;
	return 0;
}

/* A stream's pull client context, new (NULL when it has none). */
static int
tls_setup_client(const struct wr_config *cfg, struct tls_ctx **ctx,
    char *err, size_t errlen)
{
	struct tls_files tf;
	char host[256];

	*ctx = NULL;
	if (!cfg->upstream_tls || cfg->upstream == NULL)
		return 0;
	tls_files_client(cfg, &tf, host, sizeof(host));
	if ((*ctx = tls_client_new(&tf, err, errlen)) == NULL)
		return -1;
	return 0;
}

/* The streams a config defines: its [stream NAME] sections, or itself. */
static struct wr_config *
stream_cfg_first(struct wr_config *cfg)
{
	return cfg->streams != NULL ? cfg->streams : cfg;
}

static const char *
stream_cfg_name(const struct wr_config *sc)
{
	return sc->stream_name != NULL ? sc->stream_name : STREAM_DEFAULT;
}

static int	routing_clash(const struct wr_config *,
		    const struct auth_tokens *, const struct wr_config *,
		    const struct auth_tokens *, char *, size_t);

/*
 * [stream NAME] sections on reload: a running stream takes its section's
 * reloadable keys; a new section starts a new stream; a section removed
 * (or a data-dir changed) takes a restart and changes nothing.
 */
static void
reload_streams(struct wr_config *cur, struct wr_config *next)
{
	struct wr_config **pp, *sc, **tailp;
	struct stream *st;
	struct auth_tokens *tok;
	struct tls_ctx *utls;
	char err[1024];

	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		for (sc = next->streams; sc != NULL; sc = sc->next_stream)
			if (strcmp(sc->stream_name, st->st_name) == 0)
				break;
		if (sc == NULL)
			log_warnx("reload: stream %s is no longer in the "
			    "config; removing a stream takes a restart (it "
			    "keeps running)", st->st_name);
		else if (config_apply_reload(st->st_cfg, sc) > 0)
			log_warnx("reload: stream %s: the keys above take a "
			    "restart", st->st_name);
	}
	for (tailp = &cur->streams; *tailp != NULL;
	    tailp = &(*tailp)->next_stream)
		;
	for (pp = &next->streams; (sc = *pp) != NULL;) {
		if (relay_stream(sc->stream_name) != NULL) {
			pp = &sc->next_stream;
			continue;
		}
		/* a new stream: its config joins the running one */
		*pp = sc->next_stream;
		sc->next_stream = NULL;
		*tailp = sc;
		tailp = &sc->next_stream;
		utls = NULL;
		if ((tok = calloc(1, sizeof(*tok))) == NULL ||
		    auth_load(tok, sc, err, sizeof(err)) == -1 ||
		    tls_setup_client(sc, &utls, err, sizeof(err)) == -1) {
			log_warnx("reload: new stream %s: %s; not started",
			    sc->stream_name, tok ? err : "out of memory");
			if (tok != NULL)
				auth_free(tok);
			free(tok);
			tls_free(utls);
			continue;
		}
		TAILQ_FOREACH(st, &relay->r_streams, st_entry)
			if (routing_clash(sc, tok, st->st_cfg, st->st_tokens,
			    err, sizeof(err)) == -1)
				break;
		if (st != NULL) {
			log_warnx("reload: new stream %s: %s; not started",
			    sc->stream_name, err);
			auth_free(tok);
			free(tok);
			tls_free(utls);
			continue;
		}
		if ((st = stream_new(sc->stream_name, sc, tok, utls, err,
		    sizeof(err))) == NULL) {
			log_warnx("reload: %s; not started", err);
			continue;
		}
		TAILQ_INSERT_TAIL(&relay->r_streams, st, st_entry);
		relay->r_nstreams++;
		log_info("reload: stream %s started", st->st_name);
	}
}

/* The running stream a reloaded config names, or NULL. */
static struct wr_config *
reload_find(struct wr_config *next, const char *name)
{
	struct wr_config *sc;

	for (sc = stream_cfg_first(next); sc != NULL; sc = sc->next_stream)
		if (strcmp(stream_cfg_name(sc), name) == 0)
			return sc;
	return NULL;
}

/* The settings a running stream will have after the reload. */
static const struct wr_config *
reload_cfg(struct wr_config *next, const struct stream *st)
{
	struct wr_config *sc;

	return (sc = reload_find(next, st->st_name)) != NULL ? sc : st->st_cfg;
}

/* Say what a reload changes in a token set (never the tokens). */
static void
reload_log_tokens(const struct stream *st, const char *role,
    const struct tokenset *was, const struct tokenset *now)
{
	size_t added = tokenset_missing(now, was);
	size_t removed = tokenset_missing(was, now);

	if (added > 0 || removed > 0)
		log_info("reload: %s%s%s tokens changed: %zu added, %zu "
		    "removed, %zu now: applied", relay->r_cfg->streams ?
		    st->st_name : "", relay->r_cfg->streams ? ": " : "", role,
		    added, removed, now->ts_count);
}

/*
 * All or nothing: the config, every running stream's tokens and every TLS
 * context are built from the file first; only if everything loads are they
 * swapped in. Keys that take a restart keep their running values.
 */
static int
reload(void)
{
	struct wr_config *next, *cur = relay->r_cfg, *sc;
	struct stream *st;
	struct tls_ctx *srv = NULL;
	char err[1024];
	size_t n = 0, nrn = relay->r_nstreams, npub = 0, nsub = 0, ncli = 0;
	int restart, applied, rc = -1;
	struct reload_new {
		struct stream		*rn_st;
		struct auth_tokens	*rn_tok;
		struct tls_ctx		*rn_cli;
	} *rn = NULL;

	/* an operator who freed disk space reloads to retry at once */
	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		segstore_retry(st->st_store);
	if ((next = calloc(1, sizeof(*next))) == NULL) {
		log_warnx("reload: out of memory; keeping the running config");
		return -1;
	}
	if ((restart = config_reload(cur, next, err, sizeof(err))) == -1) {
		log_warnx("reload: %s; keeping the running config", err);
		goto out;
	}
	if ((cur->streams == NULL) != (next->streams == NULL)) {
		log_warnx("reload: moving between one stream and [stream NAME] "
		    "sections takes a restart; keeping the running config");
		goto out;
	}
	if ((rn = calloc(nrn, sizeof(*rn))) == NULL) {
		log_warnx("reload: out of memory; keeping the running config");
		goto out;
	}
	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		struct reload_new *r = &rn[n++];

		r->rn_st = st;
		/* a removed stream keeps its running settings */
		if ((sc = reload_find(next, st->st_name)) == NULL)
			sc = st->st_cfg;
		if ((r->rn_tok = calloc(1, sizeof(*r->rn_tok))) == NULL ||
		    auth_load(r->rn_tok, sc, err, sizeof(err)) == -1) {
			log_warnx("reload: %s%s%s; keeping the running tokens "
			    "and config", cur->streams ? st->st_name : "",
			    cur->streams ? ": " : "",
			    r->rn_tok ? err : "out of memory");
			goto out;
		}
		if (tls_setup_client(sc, &r->rn_cli, err, sizeof(err)) == -1) {
			log_warnx("reload: %s%s%s; keeping the running "
			    "certificates, tokens and config",
			    cur->streams ? st->st_name : "",
			    cur->streams ? ": " : "", err);
			goto out;
		}
		ncli += r->rn_cli != NULL;
	}
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (routing_clash(reload_cfg(next, rn[i].rn_st),
			    rn[i].rn_tok, reload_cfg(next, rn[j].rn_st),
			    rn[j].rn_tok, err, sizeof(err)) == -1) {
				log_warnx("reload: %s; keeping the running "
				    "tokens and config", err);
				goto out;
			}
	if (tls_setup_server(next, &srv, err, sizeof(err)) == -1) {
		log_warnx("reload: %s; keeping the running certificates, "
		    "tokens and config", err);
		goto out;
	}
	/* everything loaded: swap */
	tls_free(relay->r_tls);
	relay->r_tls = srv;
	srv = NULL;
	n = 0;
	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		struct reload_new *r = &rn[n++];

		warn_loose(r->rn_tok, st->st_cfg);
		if (st->st_tokens != NULL) {
			reload_log_tokens(st, "publish",
			    &st->st_tokens->at_publish,
			    &r->rn_tok->at_publish);
			reload_log_tokens(st, "subscribe",
			    &st->st_tokens->at_subscribe,
			    &r->rn_tok->at_subscribe);
			reload_log_tokens(st, "upstream",
			    &st->st_tokens->at_upstream,
			    &r->rn_tok->at_upstream);
		}
		npub += r->rn_tok->at_publish.ts_count;
		nsub += r->rn_tok->at_subscribe.ts_count;
		stream_set_tokens(st, r->rn_tok);
		r->rn_tok = NULL;
		if (r->rn_cli != NULL || st->st_upstream_tls != NULL) {
			tls_free(st->st_upstream_tls);
			st->st_upstream_tls = r->rn_cli;
			r->rn_cli = NULL;
		}
	}
	if (relay->r_tls != NULL || ncli > 0)
		log_info("reload: TLS certificates reloaded (%s%s%s)",
		    relay->r_tls ? "listeners" : "",
		    relay->r_tls && ncli ? " and " : "", ncli ? "upstream" : "");
	if (cur->streams != NULL)
		reload_streams(cur, next);
	applied = config_apply_reload(cur, next);
	log_set_level(cur->log_level);
	log_info("reload: tokens and limits reloaded (%zu publish, %zu "
	    "subscribe tokens); %d changed keys applied, %d not applied "
	    "(they take a restart)", npub, nsub, applied, restart);
	rc = 0;
out:
	if (rn != NULL) {
		/* the streams a reload started are not in rn */
		for (size_t i = 0; i < nrn; i++) {
			if (rn[i].rn_tok != NULL) {
				auth_free(rn[i].rn_tok);
				free(rn[i].rn_tok);
			}
			tls_free(rn[i].rn_cli);
		}
		free(rn);
	}
	tls_free(srv);
	config_free(next);
	free(next);
	return rc;
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	if (sig == SIGHUP) {
		if (!relay->r_stopping) {
			notify_reloading();
			relay->r_reload_last_ok = reload() == 0;
			relay->r_reload_last_ms = clock_wall_ms();
			if (relay->r_reload_last_ok)
				relay->r_reloads_ok++;
			else
				relay->r_reloads_failed++;
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
 * Two streams that share a listener route its connections by token: a
 * token both accept there could go to either. 0, or -1 with the streams,
 * the listener, the key and where the token is.
 */
static int
routing_clash(const struct wr_config *a, const struct auth_tokens *ta,
    const struct wr_config *b, const struct auth_tokens *tb, char *err,
    size_t errlen)
{
	const struct auth_token *x, *y;

	if (a->upstream == NULL && b->upstream == NULL && a->ingest != NULL &&
	    b->ingest != NULL && strcmp(a->ingest, b->ingest) == 0 &&
	    (x = tokenset_shared(&ta->at_publish, &tb->at_publish, &y)) !=
	    NULL) {
		snprintf(err, errlen, "streams %s and %s share the ingest "
		    "listener %s and both take the same publish token (%s and "
		    "%s): its publishers could not be routed; give each stream "
		    "its own tokens (publish-token-file)",
		    stream_cfg_name(a), stream_cfg_name(b), a->ingest,
		    x->tk_origin, y->tk_origin);
		return -1;
	}
	if (a->listen != NULL && b->listen != NULL &&
	    strcmp(a->listen, b->listen) == 0 &&
	    (x = tokenset_shared(&ta->at_subscribe, &tb->at_subscribe, &y)) !=
	    NULL) {
		snprintf(err, errlen, "streams %s and %s share the subscriber "
		    "listener %s and both take the same subscribe token (%s "
		    "and %s): a stock subscriber could not be routed; give "
		    "each stream its own tokens (subscribe-token-file)",
		    stream_cfg_name(a), stream_cfg_name(b), a->listen,
		    x->tk_origin, y->tk_origin);
		return -1;
	}
	return 0;
}

/* Load and check what every stream needs before anything starts. */
struct stream_plan {
	struct wr_config	*sp_cfg;
	struct auth_tokens	*sp_tok;
	struct tls_ctx		*sp_upstream_tls;
};

static void
plans_free(struct stream_plan *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i].sp_tok != NULL) {
			auth_free(p[i].sp_tok);
			free(p[i].sp_tok);
		}
		tls_free(p[i].sp_upstream_tls);
	}
	free(p);
}

static struct stream_plan *
plans_make(struct wr_config *cfg, size_t *np, char *err, size_t errlen)
{
	struct stream_plan *p;
	struct wr_config *sc;
	size_t n = 0;
	char e[900];

	for (sc = stream_cfg_first(cfg); sc != NULL; sc = sc->next_stream)
		n++;
	if ((p = calloc(n, sizeof(*p))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	n = 0;
	for (sc = stream_cfg_first(cfg); sc != NULL; sc = sc->next_stream) {
		struct stream_plan *sp = &p[n++];

		sp->sp_cfg = sc;
		if ((sp->sp_tok = calloc(1, sizeof(*sp->sp_tok))) == NULL) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		if (auth_load(sp->sp_tok, sc, e, sizeof(e)) == -1 ||
		    check_exposure(sc, sp->sp_tok, e, sizeof(e)) == -1 ||
		    tls_setup_client(sc, &sp->sp_upstream_tls, e,
		    sizeof(e)) == -1) {
			if (cfg->streams != NULL)
				snprintf(err, errlen, "stream %s: %s",
				    stream_cfg_name(sc), e);
			else
				snprintf(err, errlen, "%s", e);
			goto fail;
		}
		warn_loose(sp->sp_tok, sc);
	}
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (routing_clash(p[i].sp_cfg, p[i].sp_tok, p[j].sp_cfg,
			    p[j].sp_tok, err, errlen) == -1)
				goto fail;
	*np = n;
	return p;
fail:
	plans_free(p, n);
	return NULL;
}

int
main(int argc, char **argv)
{
	static struct wr_config cfg;
	struct stream_plan *plans;
	struct stream *st;
	struct event *sig[4], *tick;
	struct timeval onesec = { 1, 0 };
	int signals[4] = { SIGHUP, SIGTERM, SIGINT, -1 };
	char err[1024];
	size_t nplans = 0;
	uint64_t last_next = 0;
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

	relay = &the_relay;
	relay->r_cfg = &cfg;
	TAILQ_INIT(&relay->r_streams);
	if ((plans = plans_make(&cfg, &nplans, err, sizeof(err))) == NULL ||
	    tls_setup_server(&cfg, &relay->r_tls, err, sizeof(err)) == -1) {
		fprintf(stderr, "walrelay: %s\n", err);
		if (plans != NULL)
			plans_free(plans, nplans);
		tls_free(relay->r_tls);
		config_free(&cfg);
		return 2;
	}
	if (cfg.check_only) {
		char note[512];
		struct wr_config *sc;

		rc = 0;
		for (sc = stream_cfg_first(&cfg); sc != NULL && rc == 0;
		    sc = sc->next_stream) {
			if ((rc = preflight_stream(&cfg, sc, note,
			    sizeof(note), err, sizeof(err))) == -1) {
				if (cfg.streams != NULL)
					fprintf(stderr, "walrelay: stream %s: "
					    "%s\n", stream_cfg_name(sc), err);
				else
					fprintf(stderr, "walrelay: %s\n", err);
			} else if (note[0] != '\0')
				printf("walrelay: note: %s\n", note);
		}
		if (rc == 0)
			printf("walrelay: configuration OK\n");
		plans_free(plans, nplans);
		tls_free(relay->r_tls);
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
	 * unmapping them is not free either: chunk.c keeps freed chunk
	 * buffers for reuse (4 MiB at most, released when idle).
	 */
	mallopt(M_MMAP_THRESHOLD, 64 * 1024);
#endif
	signal(SIGXFSZ, SIG_IGN);	/* a file size limit is an I/O error */
	if (evthread_use_pthreads() == -1)
		fatalx("libevent without thread support");

	relay->r_started_ms = clock_wall_ms();
	if ((relay->r_base = event_base_new()) == NULL)
		fatalx("cannot create the event loop");
	if (notify_init(relay->r_base, err, sizeof(err)) == -1)
		fatalx("%s", err);

	/* the streams' directories default to <data-dir>/<NAME> */
	if (cfg.streams != NULL && mkdir(cfg.data_dir, 0700) == -1 &&
	    errno != EEXIST)
		fatal("cannot create the data directory %s", cfg.data_dir);
	/* a taken port or an unusable directory: say so before creating */
	for (size_t i = 0; i < nplans; i++)
		if (preflight_start(plans[i].sp_cfg, NULL, 0, err,
		    sizeof(err)) == -1) {
			if (cfg.streams != NULL)
				fatalx("stream %s: %s",
				    stream_cfg_name(plans[i].sp_cfg), err);
			fatalx("%s", err);
		}
	for (size_t i = 0; i < nplans; i++) {
		struct stream_plan *sp = &plans[i];

#ifdef WR_TEST_HOOKS
		sp->sp_cfg->archive_test_step = test_archive_step;
#endif
		if ((st = stream_new(stream_cfg_name(sp->sp_cfg), sp->sp_cfg,
		    sp->sp_tok, sp->sp_upstream_tls, err, sizeof(err))) == NULL)
			fatalx("%s", err);
		sp->sp_tok = NULL;		/* the stream's now */
		sp->sp_upstream_tls = NULL;
		TAILQ_INSERT_TAIL(&relay->r_streams, st, st_entry);
		relay->r_nstreams++;
	}
	plans_free(plans, nplans);
	if (cfg.http != NULL &&
	    (relay->r_http = http_new(cfg.http, err, sizeof(err))) == NULL)
		fatalx("%s", err);
	if ((tick = event_new(relay->r_base, -1, EV_PERSIST, process_tick_cb,
	    NULL)) == NULL || event_add(tick, &onesec) == -1)
		fatalx("out of memory");

	for (int i = 0; signals[i] != -1; i++) {
		sig[i] = evsignal_new(relay->r_base, signals[i], signal_cb, NULL);
		if (sig[i] == NULL || evsignal_add(sig[i], NULL) == -1)
			fatalx("cannot install signal handlers");
	}
	log_info("walrelay %s started (pid %ld, %zu stream%s)",
	    PACKAGE_VERSION, (long)getpid(), relay->r_nstreams,
	    relay->r_nstreams == 1 ? "" : "s");
	notify_ready();		/* recovered, every listener bound */

	event_base_dispatch(relay->r_base);

	/* shutdown, in reverse */
	if (ev_stop_poll != NULL)
		event_del(ev_stop_poll);
	if (ev_stop_deadline != NULL)
		event_del(ev_stop_deadline);
	event_del(tick);
	http_free(relay->r_http);
	relay->r_http = NULL;
	TAILQ_FOREACH(st, &relay->r_streams, st_entry) {
		if (stream_close(st) == -1)
			exit_code = 1;	/* frames were dropped */
		else if (relay->r_nstreams > 1)
			log_info("%s: stop: frames up to sequence %" PRIu64
			    " are durable", st->st_name, st->st_ss.ss_next);
		last_next = st->st_ss.ss_next;
	}
	/* the last file spans and bufferevents free from the loop */
	event_base_loop(relay->r_base, EVLOOP_NONBLOCK);
	while ((st = TAILQ_FIRST(&relay->r_streams)) != NULL) {
		TAILQ_REMOVE(&relay->r_streams, st, st_entry);
		stream_free(st);
	}
	for (int i = 0; signals[i] != -1; i++)
		event_free(sig[i]);
	event_free(tick);
	if (ev_stop_poll != NULL)
		event_free(ev_stop_poll);
	if (ev_stop_deadline != NULL)
		event_free(ev_stop_deadline);
	notify_free();
	event_base_free(relay->r_base);
	tls_free(relay->r_tls);
	if (chunk_live_count() != 0)
		log_warnx("stop: %ld frame buffers still referenced at exit",
		    chunk_live_count());
	else
		log_info("stop: all frame buffers released");
	chunk_cache_clear();
	if (exit_code != 0)
		log_error("stop: exiting with status %d: frames that could not "
		    "be made durable were dropped (see above)", exit_code);
	else if (relay->r_nstreams == 1)
		log_info("stop: exiting; frames up to sequence %" PRIu64 " are "
		    "durable", last_next);
	else
		log_info("stop: exiting; every stream's frames are durable");
	config_free(&cfg);
	libevent_global_shutdown();
	return exit_code;
}
