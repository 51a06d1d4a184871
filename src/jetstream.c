/*
 * jetstream.c: a stream into (sink) and out of (source) NATS JetStream.
 *
 * Everything NATS is libnats's documented API; this file only decides
 * what to publish, where to resume and what to accept. See jetstream.h
 * for the threads.
 */
#include "autoconfig.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <xxhash.h>

#ifdef HAVE_NATS
#include <nats/nats.h>
#endif

#include "chunk.h"
#include "fcw2.h"
#include "fdio.h"
#include "jetstream.h"
#include "log.h"
#include "segment.h"

const char *
jetstream_state_name(int st)
{
	switch (st) {
	case JS_STATE_CONNECTING:
		return "connecting";
	case JS_STATE_STREAMING:
		return "streaming";
	case JS_STATE_DISCONNECTED:
		return "disconnected";
	default:
		return "error";
	}
}

#ifndef HAVE_NATS

int
jetstream_available(void)
{
	return 0;
}

static struct jetstream *
jetstream_missing(char *errbuf, size_t errlen)
{
	snprintf(errbuf, errlen, "this walrelay was built without NATS "
	    "support (install libnats-dev and run configure again)");
	return NULL;
}

struct jetstream *
jetstream_sink_new(const struct jetstream_config *jc, struct event_base *base,
    struct segstore *store, char *errbuf, size_t errlen)
{
	return jetstream_missing(errbuf, errlen);
}

struct jetstream *
jetstream_source_new(const struct jetstream_config *jc,
    struct event_base *base, const struct jetstream_source_hooks *h,
    char *errbuf, size_t errlen)
{
	return jetstream_missing(errbuf, errlen);
}

void
jetstream_store_moved(struct jetstream *j, const struct segstore_state *st)
{
}

void
jetstream_flow(struct jetstream *j)
{
}

void
jetstream_free(struct jetstream *j)
{
}

void
jetstream_status(struct jetstream *j, struct jetstream_status *st)
{
	memset(st, 0, sizeof(*st));
}

int
jetstream_ready(struct jetstream *j, char *buf, size_t len)
{
	snprintf(buf, len, "built without NATS support");
	return 0;
}

#else /* HAVE_NATS */

#define JS_HDR_SEQ		"Walrelay-Seq"
#define JS_HDR_EPOCH		"Walrelay-Epoch"
#define JS_STATE_FILE_FMT	"jetstream-%s.state"
#define JS_STATE_MAX		1024
#define JS_STATE_VERSION	1
#define JS_WAIT_MS		200	/* the threads look at j_stopping */
#define JS_API_WAIT_MS		5000	/* JetStream API calls, publish acks */
#define JS_STATE_EVERY_MS	200	/* state file writes at most */
#define JS_READ_MAX		(1024 * 1024)
#define JS_CHUNK_MAX		(1024 * 1024)
#define JS_MARKS		1024
#define JS_NONE			UINT64_MAX

/* When frames became durable: (first sequence after them, time). */
struct js_mark {
	uint64_t	 dm_end;
	uint64_t	 dm_ms;
};

/* A run of validated frames on its way to the loop (source). */
struct js_item {
	struct chunk		*it_chunk;
	uint64_t		 it_seq;	/* first frame */
	uint64_t		 it_epoch;
	TAILQ_ENTRY(js_item)	 it_entry;
};
TAILQ_HEAD(js_item_list, js_item);

struct jetstream {
	int			 j_sink;
	char			 j_name[16];	/* js-sink, js-source */
	char			 j_subject[80];
	char			 j_statefile[4096];
	struct jetstream_config	 j_cfg;		/* strings owned below */
	char			*j_urls;
	char			*j_stream;
	char			*j_user;	/* secrets read from files */
	char			*j_pass;
	char			*j_token;
	struct event_base	*j_base;
	struct event		*j_ev;		/* thread -> loop */
	struct segstore		*j_store;	/* sink */
	struct jetstream_source_hooks j_hooks;	/* source */
	pthread_t		 j_thread;
	int			 j_started;

	pthread_mutex_t		 j_mtx;
	pthread_cond_t		 j_cond;
	/* under j_mtx */
	int			 j_stopping;
	int			 j_state;
	char			 j_error[256];	/* the current error, logged once */
	char			 j_server[128];
	uint64_t		 j_reconnects;
	uint64_t		 j_errors;
	uint64_t		 j_resyncs;
	uint64_t		 j_messages;
	uint64_t		 j_bytes;
	uint64_t		 j_epoch;	/* the store's (sink) */
	/* sink */
	uint64_t		 j_durable;	/* loop -> thread */
	uint64_t		 j_earliest;
	uint64_t		 j_acked;	/* frames below are in JetStream */
	uint64_t		 j_sent;	/* next frame to publish */
	uint64_t		 j_read_off;	/* file offset of j_sent, or JS_NONE */
	uint64_t		 j_inflight;
	uint64_t		 j_inflight_bytes;
	int			 j_resync;	/* a publish was refused */
	char			 j_ackerr[256];
	uint64_t		 j_want;	/* span request, JS_NONE */
	int			 j_span_state;	/* 0 none, 1 ready, -1 failed */
	struct segment_span	 j_span;
	char			 j_span_err[320];
	void			*j_unpin;	/* span handed back */
	int			 j_ev_pending;
	/* source */
	struct js_item_list	 j_queue;
	size_t			 j_queue_bytes;
	uint64_t		 j_store_next;	/* loop -> thread */
	uint64_t		 j_store_epoch;
	int			 j_positioned;	/* store has the origin's epoch */
	int			 j_mismatch;	/* loop refused a chunk */

	/* loop only */
	struct js_mark		 j_marks[JS_MARKS];
	size_t			 j_nmarks;
	uint64_t		 j_loop_durable;
};

static pthread_mutex_t	 js_lib_mtx = PTHREAD_MUTEX_INITIALIZER;
static int		 js_lib_users;

int
jetstream_available(void)
{
	return 1;
}

static uint64_t
js_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- errors and states (any thread) ---------------------------------- */

/*
 * The state changes, with a reason: logged when the state or the reason
 * differs from the last one, so an outage is one line, not one a second.
 */
static void
js_set_state(struct jetstream *j, int state, const char *fmt, ...)
    WR_PRINTF(3, 4);

static void
js_set_state(struct jetstream *j, int state, const char *fmt, ...)
{
	char why[256] = "";
	va_list ap;
	int changed, was;

	if (fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(why, sizeof(why), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_lock(&j->j_mtx);
	was = j->j_state;
	changed = was != state || strcmp(why, j->j_error) != 0;
	j->j_state = state;
	if (state == JS_STATE_ERROR)
		j->j_errors++;
	snprintf(j->j_error, sizeof(j->j_error), "%s", why);
	pthread_mutex_unlock(&j->j_mtx);
	if (!changed)
		return;
	if (state == JS_STATE_STREAMING)
		log_info("%s: %s%s%s", j->j_name, was == JS_STATE_STREAMING ?
		    "" : "streaming", why[0] && was != JS_STATE_STREAMING ?
		    ": " : "", why);
	else if (state == JS_STATE_ERROR || state == JS_STATE_DISCONNECTED)
		log_warnx("%s: %s: %s", j->j_name, jetstream_state_name(state),
		    why);
	else
		log_info("%s: %s%s%s", j->j_name, jetstream_state_name(state),
		    why[0] ? ": " : "", why);
}

/* libnats's words for a failed call: the server's text when it gave one. */
static void
js_nats_err(natsStatus s, jsErrCode jerr, char *buf, size_t len)
{
	natsStatus ls;
	const char *last = nats_GetLastError(&ls);
	size_t n;

	snprintf(buf, len, "%s", last != NULL && *last != '\0' ? last :
	    natsStatus_GetText(s));
	n = strlen(buf);
	if (jerr != 0 && n < len)
		snprintf(buf + n, len - n, " (JetStream error %d)", (int)jerr);
}

/* Wait up to ms, or until stopped or signalled. Called with j_mtx held. */
static void
js_timedwait(struct jetstream *j, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&j->j_cond, &j->j_mtx, &ts);
}

/* Capped exponential backoff with jitter: between half and all of it. */
static unsigned
js_backoff_ms(const struct jetstream *j, unsigned attempt)
{
	uint64_t d = j->j_cfg.jc_backoff_min_ms;
	uint32_t r = 0;

	for (unsigned i = 0; i < attempt && d < j->j_cfg.jc_backoff_max_ms; i++)
		d *= 2;
	if (d > j->j_cfg.jc_backoff_max_ms)
		d = j->j_cfg.jc_backoff_max_ms;
	(void)getrandom(&r, sizeof(r), GRND_NONBLOCK);
	return (unsigned)(d / 2 + (d / 2 + 1) * (r % 1000) / 1000);
}

/* Sleep a backoff period, waking early on stop. 1 when stopping. */
static int
js_sleep(struct jetstream *j, unsigned ms)
{
	uint64_t until = js_now_ms() + ms;
	int stop;

	pthread_mutex_lock(&j->j_mtx);
	while (!j->j_stopping && js_now_ms() < until)
		js_timedwait(j, (unsigned)(until - js_now_ms()) < JS_WAIT_MS ?
		    (unsigned)(until - js_now_ms()) + 1 : JS_WAIT_MS);
	stop = j->j_stopping;
	pthread_mutex_unlock(&j->j_mtx);
	return stop;
}

static int
js_stopping(struct jetstream *j)
{
	int s;

	pthread_mutex_lock(&j->j_mtx);
	s = j->j_stopping;
	pthread_mutex_unlock(&j->j_mtx);
	return s;
}

/* Wake the loop (any thread); not once stopping. Called with j_mtx. */
static void
js_wake_loop(struct jetstream *j)
{
	if (!j->j_stopping && !j->j_ev_pending) {
		j->j_ev_pending = 1;
		event_active(j->j_ev, EV_READ, 0);
	}
}

/* ---- credentials (loop, at start) ------------------------------------ */

/* The first line of a secret file, without its newline. */
static char *
js_read_line(const char *path, const char *what, char *errbuf, size_t errlen)
{
	char buf[4096], *nl;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		snprintf(errbuf, errlen, "%s %s: %s", what, path,
		    strerror(errno));
		return NULL;
	}
	if (fgets(buf, sizeof(buf), f) == NULL) {
		snprintf(errbuf, errlen, "%s %s: empty", what, path);
		fclose(f);
		return NULL;
	}
	fclose(f);
	if ((nl = strpbrk(buf, "\r\n")) != NULL)
		*nl = '\0';
	if (buf[0] == '\0') {
		snprintf(errbuf, errlen, "%s %s: the first line is empty",
		    what, path);
		return NULL;
	}
	nl = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	if (nl == NULL)
		snprintf(errbuf, errlen, "out of memory");
	return nl;
}

static int
js_file_readable(const char *path, const char *what, char *errbuf,
    size_t errlen)
{
	if (path != NULL && access(path, R_OK) == -1) {
		snprintf(errbuf, errlen, "%s %s: %s", what, path,
		    strerror(errno));
		return -1;
	}
	return 0;
}

static int
js_load_credentials(struct jetstream *j, char *errbuf, size_t errlen)
{
	const struct jetstream_config *jc = &j->j_cfg;
	char *line, *colon;

	if (jc->jc_user_file != NULL) {
		if ((line = js_read_line(jc->jc_user_file,
		    "jetstream-user-file", errbuf, errlen)) == NULL)
			return -1;
		if ((colon = strchr(line, ':')) == NULL || colon == line) {
			snprintf(errbuf, errlen, "jetstream-user-file %s: the "
			    "first line must be user:password",
			    jc->jc_user_file);
			explicit_bzero(line, strlen(line));
			free(line);
			return -1;
		}
		*colon = '\0';
		j->j_user = strdup(line);
		j->j_pass = strdup(colon + 1);
		explicit_bzero(colon + 1, strlen(colon + 1));
		free(line);
		if (j->j_user == NULL || j->j_pass == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return -1;
		}
	}
	if (jc->jc_token_file != NULL && (j->j_token = js_read_line(
	    jc->jc_token_file, "jetstream-token-file", errbuf, errlen)) == NULL)
		return -1;
	if (js_file_readable(jc->jc_nkey_seed_file, "jetstream-nkey-seed-file",
	    errbuf, errlen) == -1 ||
	    js_file_readable(jc->jc_creds_file, "jetstream-creds-file",
	    errbuf, errlen) == -1 ||
	    js_file_readable(jc->jc_tls_ca, "jetstream-tls-ca", errbuf,
	    errlen) == -1 ||
	    js_file_readable(jc->jc_tls_cert, "jetstream-tls-cert", errbuf,
	    errlen) == -1 ||
	    js_file_readable(jc->jc_tls_key, "jetstream-tls-key", errbuf,
	    errlen) == -1)
		return -1;
	return 0;
}

/* ---- the NATS connection (module thread; callbacks on libnats's) ----- */

static void
js_disconnected_cb(natsConnection *nc, void *closure)
{
	struct jetstream *j = closure;
	const char *e = NULL;

	if (js_stopping(j))
		return;		/* our own close */
	natsConnection_GetLastError(nc, &e);
	js_set_state(j, JS_STATE_DISCONNECTED, "lost the NATS connection%s%s; "
	    "reconnecting with backoff, the relay keeps storing and serving",
	    e != NULL && *e ? ": " : "", e != NULL ? e : "");
}

static void
js_reconnected_cb(natsConnection *nc, void *closure)
{
	struct jetstream *j = closure;
	char url[128] = "";

	natsConnection_GetConnectedUrl(nc, url, sizeof(url));
	pthread_mutex_lock(&j->j_mtx);
	j->j_reconnects++;
	snprintf(j->j_server, sizeof(j->j_server), "%s", url);
	/* the sink re-reads JetStream's last message before publishing on */
	if (j->j_sink)
		j->j_resync = 1;
	pthread_cond_broadcast(&j->j_cond);
	pthread_mutex_unlock(&j->j_mtx);
	js_set_state(j, JS_STATE_CONNECTING, "reconnected to %s", url);
}

static void
js_async_err_cb(natsConnection *nc, natsSubscription *sub, natsStatus err,
    void *closure)
{
	struct jetstream *j = closure;
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(5, 60);

	log_limited(&rl, LOG_LEVEL_WARN, "%s: NATS: %s", j->j_name,
	    natsStatus_GetText(err));
}

static int64_t
js_reconnect_delay_cb(natsConnection *nc, int attempts, void *closure)
{
	struct jetstream *j = closure;

	return js_backoff_ms(j, attempts > 0 ? (unsigned)attempts - 1 : 0);
}

/* Connect to the first server that answers. 0, or -1 with err. */
static int
js_connect(struct jetstream *j, natsConnection **ncp, jsCtx **jsp,
    jsOptions *jo, char *err, size_t errlen)
{
	const struct jetstream_config *jc = &j->j_cfg;
	natsOptions *o = NULL;
	const char *urls[32];
	char *list = NULL, *p, *save = NULL;
	char url[128] = "", name[64];
	int n = 0;
	natsStatus s;

	*ncp = NULL;
	*jsp = NULL;
	if ((list = strdup(j->j_urls)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (p = strtok_r(list, ",", &save); p != NULL && n < 32;
	    p = strtok_r(NULL, ",", &save))
		urls[n++] = p;
	snprintf(name, sizeof(name), "walrelay %s %s", j->j_name, j->j_stream);
	s = natsOptions_Create(&o);
	if (s == NATS_OK)
		s = natsOptions_SetServers(o, urls, n);
	if (s == NATS_OK)
		s = natsOptions_SetName(o, name);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(o, -1);
	if (s == NATS_OK)
		s = natsOptions_SetCustomReconnectDelay(o,
		    js_reconnect_delay_cb, j);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(o, 2000);
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(o, 5000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(o, 3);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(o, js_disconnected_cb, j);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(o, js_reconnected_cb, j);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(o, js_async_err_cb, j);
	if (s == NATS_OK && j->j_user != NULL)
		s = natsOptions_SetUserInfo(o, j->j_user, j->j_pass);
	if (s == NATS_OK && j->j_token != NULL)
		s = natsOptions_SetToken(o, j->j_token);
	if (s == NATS_OK && jc->jc_nkey != NULL)
		s = natsOptions_SetNKeyFromSeed(o, jc->jc_nkey,
		    jc->jc_nkey_seed_file);
	if (s == NATS_OK && jc->jc_creds_file != NULL)
		s = natsOptions_SetUserCredentialsFromFiles(o,
		    jc->jc_creds_file, NULL);
	if (s == NATS_OK && jc->jc_tls_ca != NULL) {
		s = natsOptions_SetSecure(o, true);
		if (s == NATS_OK)
			s = natsOptions_LoadCATrustedCertificates(o,
			    jc->jc_tls_ca);
	}
	if (s == NATS_OK && jc->jc_tls_cert != NULL)
		s = natsOptions_LoadCertificatesChain(o, jc->jc_tls_cert,
		    jc->jc_tls_key);
	if (s != NATS_OK) {
		js_nats_err(s, 0, err, errlen);
		goto fail;
	}
	if ((s = natsConnection_Connect(ncp, o)) != NATS_OK) {
		js_nats_err(s, 0, err, errlen);
		*ncp = NULL;
		goto fail;
	}
	if ((s = natsConnection_JetStream(jsp, *ncp, jo)) != NATS_OK) {
		js_nats_err(s, 0, err, errlen);
		*jsp = NULL;
		goto fail;
	}
	natsConnection_GetConnectedUrl(*ncp, url, sizeof(url));
	pthread_mutex_lock(&j->j_mtx);
	snprintf(j->j_server, sizeof(j->j_server), "%s", url);
	pthread_mutex_unlock(&j->j_mtx);
	log_info("%s: connected to NATS %s", j->j_name, url);
	natsOptions_Destroy(o);
	free(list);
	return 0;
fail:
	if (*ncp != NULL)
		natsConnection_Destroy(*ncp);
	*ncp = NULL;
	natsOptions_Destroy(o);
	free(list);
	return -1;
}

static void
js_disconnect(natsConnection **ncp, jsCtx **jsp)
{
	if (*jsp != NULL)
		jsCtx_Destroy(*jsp);
	*jsp = NULL;
	if (*ncp != NULL) {
		natsConnection_Close(*ncp);
		natsConnection_Destroy(*ncp);
	}
	*ncp = NULL;
}

/* A header as a number (hex with base 16). 0, or -1 when absent/bad. */
static int
js_header_u64(natsMsg *m, const char *key, int base, uint64_t *v)
{
	const char *s = NULL;
	char *end;

	if (natsMsgHeader_Get(m, key, &s) != NATS_OK || s == NULL || *s == '\0')
		return -1;
	errno = 0;
	*v = strtoull(s, &end, base);
	return errno != 0 || *end != '\0' ? -1 : 0;
}

/* ---- the sink's state file (module thread; loop at start) ------------ */

static int
js_state_write(struct jetstream *j, uint64_t epoch, uint64_t acked)
{
	char buf[512], tmp[4200], dir[4096], *slash;
	int fd = -1, len;

	len = snprintf(buf, sizeof(buf),
	    "# walrelay JetStream sink position; checksummed, do not edit\n"
	    "version %d\nstream %s\nepoch %016" PRIx64 "\nacked %" PRIu64 "\n",
	    JS_STATE_VERSION, j->j_stream, epoch, acked);
	len += snprintf(buf + len, sizeof(buf) - len, "xxh64 %016llx\n",
	    (unsigned long long)XXH64(buf, len, 0));
	snprintf(tmp, sizeof(tmp), "%s.tmp", j->j_statefile);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0644)) == -1)
		goto fail;
	if (fdio_write_all(fd, buf, (size_t)len) == -1)
		goto fail;
	if (fsync(fd) == -1 || close(fd) == -1) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, j->j_statefile) == -1)
		goto fail;
	snprintf(dir, sizeof(dir), "%s", j->j_statefile);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		(void)fsync(fd);
		close(fd);
	}
	return 0;
fail:
	{
		static struct log_ratelimit rl = LOG_RATELIMIT_INIT(1, 60);

		log_limited(&rl, LOG_LEVEL_WARN, "%s: cannot write %s: %s "
		    "(the position is kept in JetStream too)", j->j_name,
		    j->j_statefile, strerror(errno));
	}
	if (fd != -1)
		close(fd);
	unlink(tmp);
	return -1;
}

/* 0 and the recorded position, 1 when there is none, -1 when unusable. */
static int
js_state_read(struct jetstream *j, uint64_t *epoch, uint64_t *acked)
{
	char buf[JS_STATE_MAX + 1], stream[80], *sum;
	unsigned long long want;
	int fd, version;
	ssize_t n;

	if ((fd = open(j->j_statefile, O_RDONLY | O_CLOEXEC)) == -1)
		return errno == ENOENT ? 1 : -1;
	n = read(fd, buf, JS_STATE_MAX);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	if ((sum = strstr(buf, "xxh64 ")) == NULL ||
	    sscanf(sum, "xxh64 %llx", &want) != 1 ||
	    XXH64(buf, (size_t)(sum - buf), 0) != want)
		return -1;
	if (sscanf(buf, "# walrelay JetStream sink position; checksummed, do "
	    "not edit\nversion %d\nstream %79s\nepoch %" SCNx64 "\nacked %"
	    SCNu64, &version, stream, epoch, acked) != 4 ||
	    version != JS_STATE_VERSION || strcmp(stream, j->j_stream) != 0)
		return -1;
	return 0;
}

/* ---- the sink: spans from the loop ----------------------------------- */

/*
 * Module thread: the span holding frame seq, located and pinned by the
 * loop. 0, 1 when stopping, -1 with the reason in err.
 */
static int
sink_get_span(struct jetstream *j, uint64_t seq, struct segment_span *sp,
    char *err, size_t errlen)
{
	int rc;

	pthread_mutex_lock(&j->j_mtx);
	j->j_want = seq;
	j->j_span_state = 0;
	js_wake_loop(j);
	while (!j->j_stopping && j->j_span_state == 0)
		js_timedwait(j, JS_WAIT_MS);
	if (j->j_span_state == 1) {
		*sp = j->j_span;
		rc = 0;
	} else if (j->j_span_state == -1) {
		snprintf(err, errlen, "%s", j->j_span_err);
		rc = -1;
	} else {
		j->j_want = JS_NONE;
		rc = 1;
	}
	j->j_span_state = 0;
	pthread_mutex_unlock(&j->j_mtx);
	return rc;
}

static void
sink_put_span(struct jetstream *j, void *pin)
{
	pthread_mutex_lock(&j->j_mtx);
	j->j_unpin = pin;	/* one span at a time: the slot is free */
	j->j_read_off = JS_NONE;
	js_wake_loop(j);
	pthread_mutex_unlock(&j->j_mtx);
}

/* Loop: unpin what the thread gave back, locate what it asks for. */
static void
sink_loop_spans(struct jetstream *j)
{
	struct segment_span sp;
	struct segstore_corrupt c;
	struct segstore_state st;
	void *pin;
	uint64_t want;
	int rc;

	pthread_mutex_lock(&j->j_mtx);
	pin = j->j_unpin;
	j->j_unpin = NULL;
	want = j->j_span_state == 0 ? j->j_want : JS_NONE;
	pthread_mutex_unlock(&j->j_mtx);
	if (pin != NULL)
		segstore_unpin(j->j_store, pin);
	if (want == JS_NONE)
		return;
	rc = segstore_locate(j->j_store, want, &sp);
	pthread_mutex_lock(&j->j_mtx);
	if (j->j_want != want || j->j_stopping) {
		pthread_mutex_unlock(&j->j_mtx);
		if (rc == 0)
			segstore_unpin(j->j_store, sp.sp_pin);
		return;
	}
	j->j_want = JS_NONE;
	if (rc == 0) {
		j->j_span = sp;
		j->j_span_state = 1;
		j->j_read_off = sp.sp_offset;
	} else {
		segstore_poll(j->j_store, &st);
		j->j_span_state = -1;
		if (want < st.ss_earliest)
			snprintf(j->j_span_err, sizeof(j->j_span_err),
			    "frame %" PRIu64 " was deleted by retention before "
			    "JetStream acknowledged it (earliest retained %"
			    PRIu64 "): JetStream cannot have this stream "
			    "without a gap", want, st.ss_earliest);
		else if (segstore_corrupt_at(j->j_store, want, &c) == 1)
			snprintf(j->j_span_err, sizeof(j->j_span_err),
			    "frame %" PRIu64 " is corrupt in %s (offset %"
			    PRIu64 ")", want, c.sc_name, c.sc_offset);
		else
			snprintf(j->j_span_err, sizeof(j->j_span_err),
			    "cannot read frame %" PRIu64 " from the segments",
			    want);
	}
	pthread_cond_broadcast(&j->j_cond);
	pthread_mutex_unlock(&j->j_mtx);
}

/* ---- the sink: publishing (module thread; acks on libnats's) --------- */

static void
sink_ack_cb(jsCtx *js, natsMsg *m, jsPubAck *pa, jsPubAckErr *pae,
    void *closure)
{
	struct jetstream *j = closure;
	uint64_t seq = 0;
	int len = natsMsg_GetDataLength(m);

	(void)js_header_u64(m, JS_HDR_SEQ, 10, &seq);
	pthread_mutex_lock(&j->j_mtx);
	if (j->j_inflight > 0)
		j->j_inflight--;
	if (j->j_inflight_bytes >= (uint64_t)len)
		j->j_inflight_bytes -= (uint64_t)len;
	if (pa != NULL) {
		if (seq + 1 > j->j_acked)
			j->j_acked = seq + 1;
		j->j_messages++;
		j->j_bytes += (uint64_t)len;
		js_wake_loop(j);
	} else if (pae != NULL) {
		if (!j->j_resync)
			snprintf(j->j_ackerr, sizeof(j->j_ackerr), "JetStream "
			    "refused frame %" PRIu64 ": %s (error %d)", seq,
			    pae->ErrText != NULL ? pae->ErrText :
			    natsStatus_GetText(pae->Err), (int)pae->ErrCode);
		j->j_resync = 1;
	}
	pthread_cond_broadcast(&j->j_cond);
	pthread_mutex_unlock(&j->j_mtx);
	natsMsg_Destroy(m);
}

/* Publish one frame; 0, or -1 with err (the connection is in trouble). */
static int
sink_publish(struct jetstream *j, jsCtx *js, uint64_t seq, uint64_t epoch,
    uint64_t expect, const uint8_t *p, size_t len, char *err, size_t errlen)
{
	jsPubOptions po;
	natsMsg *m = NULL;
	char id[64], sseq[24], sep[24];
	natsStatus s;

	snprintf(id, sizeof(id), "%016" PRIx64 "-%" PRIu64, epoch, seq);
	snprintf(sseq, sizeof(sseq), "%" PRIu64, seq);
	snprintf(sep, sizeof(sep), "%016" PRIx64, epoch);
	jsPubOptions_Init(&po);
	po.MsgId = id;
	po.MaxWait = JS_API_WAIT_MS;
	/*
	 * The stream holds only our subject, so its last sequence is our
	 * last message's. Nats-Expected-Last-Sequence, not the subject one:
	 * a clustered stream checks the subject's against what it has
	 * applied, which refuses every publish while the one before it is
	 * still being replicated; the stream's counts the ones in flight.
	 */
	if (expect == 0)
		po.ExpectNoMessage = true;
	else
		po.ExpectLastSeq = expect;
	s = natsMsg_Create(&m, j->j_subject, NULL, (const char *)p, (int)len);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, JS_HDR_SEQ, sseq);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, JS_HDR_EPOCH, sep);
	if (s != NATS_OK) {
		natsMsg_Destroy(m);
		js_nats_err(s, 0, err, errlen);
		return -1;
	}
	pthread_mutex_lock(&j->j_mtx);
	j->j_inflight++;
	j->j_inflight_bytes += len;
	pthread_mutex_unlock(&j->j_mtx);
	s = js_PublishMsgAsync(js, &m, &po);
	if (s != NATS_OK) {
		pthread_mutex_lock(&j->j_mtx);
		j->j_inflight--;
		j->j_inflight_bytes -= len;
		pthread_mutex_unlock(&j->j_mtx);
		natsMsg_Destroy(m);
		js_nats_err(s, 0, err, errlen);
		return -1;
	}
	return 0;
}

/*
 * Everything in flight is answered (acked, refused or timed out), or
 * dropped from libnats's pending list after the publish timeout.
 */
static void
sink_drain(struct jetstream *j, jsCtx *js)
{
	jsPubOptions po;
	natsMsgList pend;

	jsPubOptions_Init(&po);
	po.MaxWait = JS_API_WAIT_MS + 1000;
	if (js_PublishAsyncComplete(js, &po) == NATS_OK)
		return;
	if (js_PublishAsyncGetPendingList(&pend, js) == NATS_OK)
		natsMsgList_Destroy(&pend);
	pthread_mutex_lock(&j->j_mtx);
	j->j_inflight = 0;
	j->j_inflight_bytes = 0;
	pthread_mutex_unlock(&j->j_mtx);
}

/* The stream exists (created if allowed) and takes only our subject. */
static int
sink_ensure_stream(struct jetstream *j, jsCtx *js, int sink, char *err,
    size_t errlen)
{
	jsStreamInfo *si = NULL;
	jsStreamConfig sc;
	jsErrCode jerr = 0;
	const char *subj[1];
	natsStatus s;
	int ok;

	s = js_GetStreamInfo(&si, js, j->j_stream, NULL, &jerr);
	if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
		if (!sink || j->j_cfg.jc_must_exist) {
			snprintf(err, errlen, "JetStream has no stream %s%s",
			    j->j_stream, sink ? " (jetstream-must-exist)" :
			    ": waiting for the sink relay to create it");
			return -1;
		}
		jsStreamConfig_Init(&sc);
		subj[0] = j->j_subject;
		sc.Name = j->j_stream;
		sc.Subjects = subj;
		sc.SubjectsLen = 1;
		sc.Storage = js_FileStorage;
		sc.Replicas = j->j_cfg.jc_replicas;
		jerr = 0;
		s = js_AddStream(&si, js, &sc, NULL, &jerr);
		if (s != NATS_OK) {
			char e[200];

			js_nats_err(s, jerr, e, sizeof(e));
			snprintf(err, errlen, "cannot create stream %s (R%u, "
			    "file storage): %s", j->j_stream,
			    j->j_cfg.jc_replicas, e);
			return -1;
		}
		log_info("%s: created JetStream stream %s (subject %s, R%u, "
		    "file storage)", j->j_name, j->j_stream, j->j_subject,
		    j->j_cfg.jc_replicas);
	} else if (s != NATS_OK) {
		char e[200];

		js_nats_err(s, jerr, e, sizeof(e));
		snprintf(err, errlen, "stream %s: %s", j->j_stream, e);
		return -1;
	}
	ok = si->Config != NULL && si->Config->SubjectsLen == 1 &&
	    strcmp(si->Config->Subjects[0], j->j_subject) == 0;
	jsStreamInfo_Destroy(si);
	if (!ok) {
		snprintf(err, errlen, "stream %s must take exactly one subject, "
		    "%s (sequence numbers of JetStream and of the relay must "
		    "move together)", j->j_stream, j->j_subject);
		return -1;
	}
	return 0;
}

/*
 * Where to publish from: JetStream's last message on our subject. Sets
 * *next (the relay sequence to publish) and *expect (its JetStream
 * sequence, the guard of the next publish). 0, or -1 with err.
 */
static int
sink_position(struct jetstream *j, jsCtx *js, uint64_t *next,
    uint64_t *expect, char *err, size_t errlen)
{
	natsMsg *m = NULL;
	jsErrCode jerr = 0;
	natsStatus s;
	uint64_t seq, epoch, earliest, durable, acked, rec_epoch, rec_acked;
	int rec;

	pthread_mutex_lock(&j->j_mtx);
	epoch = j->j_epoch;
	earliest = j->j_earliest;
	durable = j->j_durable;
	acked = j->j_acked;
	pthread_mutex_unlock(&j->j_mtx);

	s = js_GetLastMsg(&m, js, j->j_stream, j->j_subject, NULL, &jerr);
	if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) {
		/* an empty stream: everything the relay still has */
		rec = js_state_read(j, &rec_epoch, &rec_acked);
		if (rec == 0 && rec_epoch == epoch && rec_acked > earliest)
			log_warnx("%s: stream %s holds nothing, but frames "
			    "below %" PRIu64 " were acknowledged before (purged "
			    "or recreated?): publishing again from %" PRIu64,
			    j->j_name, j->j_stream, rec_acked, earliest);
		*next = earliest;
		*expect = 0;
		goto ok;
	}
	if (s != NATS_OK) {
		js_nats_err(s, jerr, err, errlen);
		return -1;
	}
	if (js_header_u64(m, JS_HDR_SEQ, 10, &seq) == -1 ||
	    js_header_u64(m, JS_HDR_EPOCH, 16, &epoch) == -1) {
		snprintf(err, errlen, "the last message of stream %s (sequence "
		    "%" PRIu64 ") has no %s and %s headers: not a walrelay "
		    "stream", j->j_stream, natsMsg_GetSequence(m), JS_HDR_SEQ,
		    JS_HDR_EPOCH);
		natsMsg_Destroy(m);
		return -1;
	}
	if (epoch != j->j_epoch) {
		snprintf(err, errlen, "stream %s holds epoch %016" PRIx64 " up "
		    "to frame %" PRIu64 ", this relay has epoch %016" PRIx64
		    ": its frames are not the same; purge or rename the stream",
		    j->j_stream, epoch, seq, j->j_epoch);
		natsMsg_Destroy(m);
		return -1;
	}
	if (seq + 1 > durable) {
		snprintf(err, errlen, "stream %s holds frames up to %" PRIu64
		    ", this relay has only %" PRIu64 " durable frames",
		    j->j_stream, seq, durable);
		natsMsg_Destroy(m);
		return -1;
	}
	if (seq + 1 < acked)
		log_warnx("%s: stream %s ends at frame %" PRIu64 " but frames "
		    "below %" PRIu64 " were acknowledged: JetStream lost "
		    "frames; publishing them again", j->j_name, j->j_stream,
		    seq, acked);
	*next = seq + 1;
	*expect = natsMsg_GetSequence(m);
	natsMsg_Destroy(m);
	if (*next < earliest) {
		snprintf(err, errlen, "frames %" PRIu64 " to %" PRIu64 " were "
		    "deleted by retention before JetStream acknowledged them: "
		    "the stream %s cannot continue without a gap", *next,
		    earliest - 1, j->j_stream);
		return -1;
	}
ok:
	pthread_mutex_lock(&j->j_mtx);
	j->j_acked = *next;
	j->j_sent = *next;
	j->j_resync = 0;
	j->j_ackerr[0] = '\0';
	pthread_mutex_unlock(&j->j_mtx);
	return 0;
}

/*
 * Publish the frames of one span, while the window has room. Returns 0,
 * 1 when stopping or a publish was refused, -1 with err.
 */
static int
sink_publish_span(struct jetstream *j, jsCtx *js, uint64_t epoch,
    uint64_t *expect, uint8_t **bufp, size_t *capp, char *err, size_t errlen)
{
	struct segment_span sp;
	uint64_t seq, off, end, stop_seq;
	size_t have = 0, pos = 0, flen;
	uint8_t *buf = *bufp;
	ssize_t n;
	int rc;

	pthread_mutex_lock(&j->j_mtx);
	seq = j->j_sent;
	pthread_mutex_unlock(&j->j_mtx);
	if ((rc = sink_get_span(j, seq, &sp, err, errlen)) != 0)
		return rc;
	off = sp.sp_offset;
	end = sp.sp_offset + sp.sp_len;
	stop_seq = sp.sp_end_seq;
	rc = 0;
	while (seq < stop_seq) {
		/* the window */
		pthread_mutex_lock(&j->j_mtx);
		while (!j->j_stopping && !j->j_resync &&
		    j->j_state != JS_STATE_DISCONNECTED &&
		    j->j_inflight >= j->j_cfg.jc_window)
			js_timedwait(j, JS_WAIT_MS);
		if (j->j_stopping || j->j_resync ||
		    j->j_state == JS_STATE_DISCONNECTED) {
			pthread_mutex_unlock(&j->j_mtx);
			rc = 1;
			break;
		}
		pthread_mutex_unlock(&j->j_mtx);
		/* one whole frame in buf[pos, have) */
		if (have - pos < FCW2_HEADER_LEN || have - pos <
		    fcw2_frame_len(buf + pos)) {
			size_t want = JS_READ_MAX;

			if (pos > 0) {
				memmove(buf, buf + pos, have - pos);
				have -= pos;
				pos = 0;
			}
			if (have >= FCW2_HEADER_LEN &&
			    fcw2_frame_len(buf) > want)
				want = fcw2_frame_len(buf);
			if (want > *capp) {
				uint8_t *nb = realloc(buf, want);

				if (nb == NULL) {
					snprintf(err, errlen, "out of memory "
					    "for a frame of %zu bytes", want);
					rc = -1;
					break;
				}
				*bufp = buf = nb;
				*capp = want;
			}
			if (off >= end) {
				snprintf(err, errlen, "segment span ends inside "
				    "frame %" PRIu64, seq);
				rc = -1;
				break;
			}
			n = pread(sp.sp_fd, buf + have, (size_t)(end - off) <
			    *capp - have ? (size_t)(end - off) : *capp - have,
			    (off_t)off);
			if (n <= 0) {
				snprintf(err, errlen, "reading frame %" PRIu64
				    ": %s", seq, n == 0 ? "end of file" :
				    strerror(errno));
				rc = -1;
				break;
			}
			have += (size_t)n;
			off += (uint64_t)n;
			continue;
		}
		flen = fcw2_frame_len(buf + pos);
		if (memcmp(buf + pos, FCW2_MAGIC, 4) != 0) {
			snprintf(err, errlen, "no frame where frame %" PRIu64
			    " should start in the segment", seq);
			rc = -1;
			break;
		}
		if (sink_publish(j, js, seq, epoch, *expect, buf + pos, flen,
		    err, errlen) == -1) {
			rc = -1;
			break;
		}
		pos += flen;
		seq++;
		(*expect)++;
		pthread_mutex_lock(&j->j_mtx);
		j->j_sent = seq;
		j->j_read_off = off - (have - pos);
		pthread_mutex_unlock(&j->j_mtx);
	}
	sink_put_span(j, sp.sp_pin);
	return rc;
}

static void *
sink_main(void *arg)
{
	static struct log_ratelimit refusals = LOG_RATELIMIT_INIT(5, 60);
	struct jetstream *j = arg;
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	jsOptions jo;
	char err[512];
	uint8_t *buf = NULL;
	size_t cap = 0;
	uint64_t expect = 0, epoch, written = JS_NONE, acked, wrote_ms = 0;
	uint64_t from = 0;
	unsigned attempt = 0;
	int positioned = 0, ensured = 0, rc;

	jsOptions_Init(&jo);
	jo.Wait = JS_API_WAIT_MS;
	jo.PublishAsync.MaxPending = (int64_t)j->j_cfg.jc_window + 16;
	jo.PublishAsync.AckHandler = sink_ack_cb;
	jo.PublishAsync.AckHandlerClosure = j;
	pthread_mutex_lock(&j->j_mtx);
	epoch = j->j_epoch;
	written = j->j_acked;
	pthread_mutex_unlock(&j->j_mtx);

	while (!js_stopping(j)) {
		if (nc == NULL) {
			if (js_connect(j, &nc, &js, &jo, err,
			    sizeof(err)) == -1) {
				js_set_state(j, JS_STATE_ERROR, "cannot connect "
				    "to %s: %s", j->j_urls, err);
				js_sleep(j, js_backoff_ms(j, attempt++));
				continue;
			}
			positioned = ensured = 0;
		}
		pthread_mutex_lock(&j->j_mtx);
		if (j->j_resync) {
			if (j->j_ackerr[0] != '\0')
				log_limited(&refusals, LOG_LEVEL_WARN, "%s: %s; "
				    "waiting for the frames in flight and asking "
				    "JetStream where it stands", j->j_name,
				    j->j_ackerr);
			j->j_ackerr[0] = '\0';
			j->j_resyncs++;
			positioned = 0;
		}
		pthread_mutex_unlock(&j->j_mtx);
		if (!positioned) {
			sink_drain(j, js);
			if ((!ensured && sink_ensure_stream(j, js, 1, err,
			    sizeof(err)) == -1) || sink_position(j, js,
			    &from, &expect, err, sizeof(err)) == -1) {
				js_set_state(j, JS_STATE_ERROR, "%s", err);
				js_sleep(j, js_backoff_ms(j, attempt++));
				continue;
			}
			ensured = positioned = 1;
			attempt = 0;
			js_set_state(j, JS_STATE_STREAMING, "stream %s, "
			    "publishing from frame %" PRIu64 " (JetStream "
			    "sequence %" PRIu64 ")", j->j_stream, from,
			    expect + 1);
		}
		/* work, or wait for it */
		pthread_mutex_lock(&j->j_mtx);
		if (!j->j_stopping && !j->j_resync && (j->j_sent >= j->j_durable ||
		    j->j_state == JS_STATE_DISCONNECTED))
			js_timedwait(j, JS_WAIT_MS);
		acked = j->j_acked;
		rc = !j->j_stopping && !j->j_resync &&
		    j->j_state != JS_STATE_DISCONNECTED &&
		    j->j_sent < j->j_durable;
		pthread_mutex_unlock(&j->j_mtx);
		if (acked != written && js_now_ms() - wrote_ms >=
		    JS_STATE_EVERY_MS) {
			if (js_state_write(j, epoch, acked) == 0)
				written = acked;
			wrote_ms = js_now_ms();
		}
		if (!rc)
			continue;
		rc = sink_publish_span(j, js, epoch, &expect, &buf, &cap, err,
		    sizeof(err));
		if (rc == -1) {
			js_set_state(j, JS_STATE_ERROR, "%s", err);
			positioned = 0;
			js_sleep(j, js_backoff_ms(j, attempt++));
		}
	}
	if (nc != NULL) {
		jsPubOptions po;

		jsPubOptions_Init(&po);
		po.MaxWait = 1000;
		(void)js_PublishAsyncComplete(js, &po);
	}
	js_disconnect(&nc, &js);
	pthread_mutex_lock(&j->j_mtx);
	acked = j->j_acked;
	pthread_mutex_unlock(&j->j_mtx);
	if (acked != written)
		(void)js_state_write(j, epoch, acked);
	free(buf);
	return NULL;
}

/* ---- the source (module thread) -------------------------------------- */

/* The JetStream sequence of a delivered message, for log lines. */
static uint64_t
source_js_seq(natsMsg *m)
{
	jsMsgMetaData *meta = NULL;
	uint64_t seq = 0;

	if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
		seq = meta->Sequence.Stream;
		jsMsgMetaData_Destroy(meta);
	}
	return seq;
}

/* Hand a run of frames to the loop; waits while the queue is full. */
static int
source_handoff(struct jetstream *j, struct chunk *ch, uint64_t seq,
    uint64_t epoch)
{
	struct js_item *it;

	if ((it = calloc(1, sizeof(*it))) == NULL)
		return -1;
	it->it_chunk = ch;
	it->it_seq = seq;
	it->it_epoch = epoch;
	pthread_mutex_lock(&j->j_mtx);
	while (!j->j_stopping && j->j_queue_bytes > 0 && j->j_queue_bytes +
	    ch->ch_len > j->j_cfg.jc_handoff_bytes)
		js_timedwait(j, JS_WAIT_MS);
	if (j->j_stopping) {
		pthread_mutex_unlock(&j->j_mtx);
		chunk_unref(ch);
		free(it);
		return -1;
	}
	TAILQ_INSERT_TAIL(&j->j_queue, it, it_entry);
	j->j_queue_bytes += ch->ch_len;
	j->j_messages += ch->ch_nframes;
	j->j_bytes += ch->ch_len;
	js_wake_loop(j);
	pthread_mutex_unlock(&j->j_mtx);
	return 0;
}

/*
 * Subscribe from the relay's next frame: its JetStream sequence follows
 * from the last message (the sink keeps them in step). 0, or -1 with err.
 */
static int
source_subscribe(struct jetstream *j, jsCtx *js, uint64_t next, int empty,
    uint64_t epoch, natsSubscription **sub, char *err, size_t errlen)
{
	jsSubOptions so;
	natsMsg *m = NULL;
	jsErrCode jerr = 0;
	uint64_t lseq = 0, lepoch = 0, ljs = 0, start = 0;
	natsStatus s;

	s = js_GetLastMsg(&m, js, j->j_stream, j->j_subject, NULL, &jerr);
	if (s == NATS_OK) {
		if (js_header_u64(m, JS_HDR_SEQ, 10, &lseq) == -1 ||
		    js_header_u64(m, JS_HDR_EPOCH, 16, &lepoch) == -1) {
			snprintf(err, errlen, "the last message of stream %s "
			    "has no %s and %s headers: not a walrelay stream",
			    j->j_stream, JS_HDR_SEQ, JS_HDR_EPOCH);
			natsMsg_Destroy(m);
			return -1;
		}
		ljs = natsMsg_GetSequence(m);
		natsMsg_Destroy(m);
		if (!empty && lepoch != epoch) {
			snprintf(err, errlen, "stream %s holds epoch %016"
			    PRIx64 ", this relay has epoch %016" PRIx64 ": the "
			    "frames it holds are not the origin's (remove its "
			    "data directory to start over)", j->j_stream,
			    lepoch, epoch);
			return -1;
		}
		if (!empty && next > lseq + 1) {
			snprintf(err, errlen, "this relay is at frame %" PRIu64
			    ", beyond the stream's last frame %" PRIu64,
			    next, lseq);
			return -1;
		}
		if (!empty)
			start = ljs - (lseq + 1 - next) + 1;
	} else if (s != NATS_NOT_FOUND && jerr != JSNoMessageFoundErr) {
		js_nats_err(s, jerr, err, errlen);
		return -1;
	}
	jsSubOptions_Init(&so);
	so.Stream = j->j_stream;
	so.Ordered = true;
	if (start > 0) {
		so.Config.DeliverPolicy = js_DeliverByStartSequence;
		so.Config.OptStartSeq = start;
	} else
		so.Config.DeliverPolicy = js_DeliverAll;
	jerr = 0;
	if ((s = js_SubscribeSync(sub, js, j->j_subject, NULL, &so, &jerr)) !=
	    NATS_OK) {
		*sub = NULL;
		js_nats_err(s, jerr, err, errlen);
		return -1;
	}
	js_set_state(j, JS_STATE_STREAMING, "stream %s, %s", j->j_stream,
	    empty ? "from its first frame (adopting the origin's epoch and "
	    "sequence numbers)" : "resuming");
	if (!empty)
		log_info("%s: ordered consumer from frame %" PRIu64 " (JetStream "
		    "sequence %" PRIu64 ", epoch %016" PRIx64 ")", j->j_name,
		    next, start > 0 ? start : 1, epoch);
	return 0;
}

/*
 * Check one message: the epoch, the sequence we expect, one whole valid
 * FCW2 frame. 0, or -1 with err.
 */
static int
source_check(struct jetstream *j, struct fcw2_checker *chk, natsMsg *m,
    uint64_t next, int empty, uint64_t epoch, uint64_t *seqp,
    uint64_t *epochp, char *err, size_t errlen)
{
	uint64_t seq, ep;
	const uint8_t *p = (const uint8_t *)natsMsg_GetData(m);
	size_t len = (size_t)natsMsg_GetDataLength(m), flen = 0;
	int rc;

	if (js_header_u64(m, JS_HDR_SEQ, 10, &seq) == -1 ||
	    js_header_u64(m, JS_HDR_EPOCH, 16, &ep) == -1) {
		snprintf(err, errlen, "JetStream message %" PRIu64 " has no "
		    "%s and %s headers", source_js_seq(m), JS_HDR_SEQ,
		    JS_HDR_EPOCH);
		return -1;
	}
	if (!empty && ep != epoch) {
		snprintf(err, errlen, "frame %" PRIu64 " has epoch %016" PRIx64
		    ", expected %016" PRIx64, seq, ep, epoch);
		return -1;
	}
	if (!empty && seq != next) {
		snprintf(err, errlen, "expected frame %" PRIu64 ", JetStream "
		    "delivered frame %" PRIu64 " (JetStream sequence %" PRIu64
		    ")", next, seq, source_js_seq(m));
		return -1;
	}
	rc = p == NULL ? FCW2_NEED_MORE : fcw2_check(chk, p, len, &flen, NULL);
	if (rc != FCW2_OK || flen != len) {
		snprintf(err, errlen, "frame %" PRIu64 " (JetStream sequence %"
		    PRIu64 ") is not one valid FCW2 frame: %s", seq,
		    source_js_seq(m), rc == FCW2_OK ? "bytes after the "
		    "frame" : rc == FCW2_NEED_MORE ? "truncated" :
		    fcw2_strerror(rc));
		return -1;
	}
	*seqp = seq;
	*epochp = ep;
	return 0;
}

static void *
source_main(void *arg)
{
	struct jetstream *j = arg;
	natsConnection *nc = NULL;
	natsSubscription *sub = NULL;
	jsCtx *js = NULL;
	jsOptions jo;
	struct fcw2_checker chk;
	struct chunk *ch = NULL;
	natsMsg *m;
	natsStatus s;
	char err[512];
	uint64_t next = 0, epoch = 0, first = 0, seq, ep;
	unsigned attempt = 0;
	int empty = 0, pending, pbytes, fail;

	fcw2_checker_init(&chk, j->j_cfg.jc_max_frame_bytes, 1);
	jsOptions_Init(&jo);
	jo.Wait = JS_API_WAIT_MS;
	while (!js_stopping(j)) {
		if (nc == NULL) {
			if (js_connect(j, &nc, &js, &jo, err,
			    sizeof(err)) == -1) {
				js_set_state(j, JS_STATE_ERROR, "cannot connect "
				    "to %s: %s", j->j_urls, err);
				js_sleep(j, js_backoff_ms(j, attempt++));
				continue;
			}
		}
		if (sub == NULL) {
			/* everything handed over is stored: start after it */
			pthread_mutex_lock(&j->j_mtx);
			while (!j->j_stopping && !TAILQ_EMPTY(&j->j_queue))
				js_timedwait(j, JS_WAIT_MS);
			j->j_mismatch = 0;
			next = j->j_store_next;
			epoch = j->j_store_epoch;
			empty = !j->j_positioned;
			pthread_mutex_unlock(&j->j_mtx);
			if ((sink_ensure_stream(j, js, 0, err,
			    sizeof(err)) == -1) || source_subscribe(j, js, next,
			    empty, epoch, &sub, err, sizeof(err)) == -1) {
				js_set_state(j, JS_STATE_ERROR, "%s", err);
				js_sleep(j, js_backoff_ms(j, attempt++));
				continue;
			}
			attempt = 0;
		}
		s = natsSubscription_NextMsg(&m, sub, JS_WAIT_MS);
		fail = 0;
		if (s == NATS_OK || s == NATS_TIMEOUT) {
			/* consuming again (after a reconnect, say) */
			pthread_mutex_lock(&j->j_mtx);
			fail = j->j_state != JS_STATE_STREAMING;
			pthread_mutex_unlock(&j->j_mtx);
			if (fail && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED)
				js_set_state(j, JS_STATE_STREAMING,
				    "stream %s, at frame %" PRIu64,
				    j->j_stream, next);
			fail = 0;
		}
		while (s == NATS_OK) {
			if (source_check(j, &chk, m, next, empty, epoch, &seq,
			    &ep, err, sizeof(err)) == -1) {
				natsMsg_Destroy(m);
				fail = 1;
				break;
			}
			if (empty) {
				/* the origin's positions from its first frame */
				empty = 0;
				next = seq;
				epoch = ep;
			}
			if (ch == NULL) {
				size_t len = (size_t)natsMsg_GetDataLength(m);

				if ((ch = chunk_new(len > JS_CHUNK_MAX ? len :
				    JS_CHUNK_MAX)) == NULL) {
					natsMsg_Destroy(m);
					snprintf(err, sizeof(err), "out of memory");
					fail = 1;
					break;
				}
				first = seq;
			} else if (ch->ch_cap - ch->ch_len <
			    (size_t)natsMsg_GetDataLength(m)) {
				natsMsg_Destroy(m);
				snprintf(err, sizeof(err), "internal: chunk "
				    "full");
				fail = 1;
				break;
			}
			memcpy(ch->ch_data + ch->ch_len, natsMsg_GetData(m),
			    (size_t)natsMsg_GetDataLength(m));
			ch->ch_len += (size_t)natsMsg_GetDataLength(m);
			ch->ch_nframes++;
			next++;
			natsMsg_Destroy(m);
			/* more already here, and room for it? */
			if (natsSubscription_GetPending(sub, &pending,
			    &pbytes) != NATS_OK || pending == 0 ||
			    ch->ch_len + (size_t)pbytes / (size_t)pending >
			    ch->ch_cap || ch->ch_len >= JS_CHUNK_MAX / 2)
				break;
			s = natsSubscription_NextMsg(&m, sub, 1);
		}
		if (ch != NULL && ch->ch_nframes > 0) {
			ch->ch_seq = first;
			if (source_handoff(j, ch, first, epoch) == -1)
				fail = fail ? fail : 2;
		} else if (ch != NULL)
			chunk_unref(ch);
		ch = NULL;
		pthread_mutex_lock(&j->j_mtx);
		if (j->j_mismatch) {
			snprintf(err, sizeof(err), "the store did not take "
			    "frame %" PRIu64 " where expected", first);
			fail = 1;
		}
		pthread_mutex_unlock(&j->j_mtx);
		if (fail == 1 || (s != NATS_OK && s != NATS_TIMEOUT)) {
			if (fail != 1)
				js_nats_err(s, 0, err, sizeof(err));
			js_set_state(j, JS_STATE_ERROR, "%s; subscribing again "
			    "from the relay's next frame", err);
			natsSubscription_Destroy(sub);
			sub = NULL;
			js_sleep(j, js_backoff_ms(j, attempt++));
		}
	}
	if (sub != NULL) {
		natsSubscription_Unsubscribe(sub);
		natsSubscription_Destroy(sub);
	}
	js_disconnect(&nc, &js);
	fcw2_checker_free(&chk);
	return NULL;
}

/* Loop: store what the source handed over, while the store keeps up. */
static void
source_loop_deliver(struct jetstream *j)
{
	struct jetstream_source_hooks *h = &j->j_hooks;
	struct js_item *it;

	while (!h->jh_busy(h->jh_arg)) {
		pthread_mutex_lock(&j->j_mtx);
		if ((it = TAILQ_FIRST(&j->j_queue)) != NULL) {
			TAILQ_REMOVE(&j->j_queue, it, it_entry);
			j->j_queue_bytes -= it->it_chunk->ch_len;
		}
		pthread_mutex_unlock(&j->j_mtx);
		if (it == NULL)
			break;
		if (!j->j_positioned && h->jh_adopt(h->jh_arg, it->it_epoch,
		    it->it_seq) == 0) {
			log_info("%s: adopted the origin's epoch %016" PRIx64
			    " starting at frame %" PRIu64, j->j_name,
			    it->it_epoch, it->it_seq);
		}
		if (h->jh_next(h->jh_arg) != it->it_seq ||
		    h->jh_epoch(h->jh_arg) != it->it_epoch) {
			log_warnx("%s: frames %" PRIu64 " to %" PRIu64 " of "
			    "epoch %016" PRIx64 " do not follow this relay's "
			    "frame %" PRIu64 " of epoch %016" PRIx64 ": not "
			    "stored", j->j_name, it->it_seq, it->it_seq +
			    it->it_chunk->ch_nframes - 1, it->it_epoch,
			    h->jh_next(h->jh_arg), h->jh_epoch(h->jh_arg));
			pthread_mutex_lock(&j->j_mtx);
			j->j_mismatch = 1;
			pthread_mutex_unlock(&j->j_mtx);
		} else {
			h->jh_deliver(h->jh_arg, it->it_chunk);
			pthread_mutex_lock(&j->j_mtx);
			j->j_positioned = 1;
			pthread_mutex_unlock(&j->j_mtx);
		}
		chunk_unref(it->it_chunk);
		free(it);
		pthread_mutex_lock(&j->j_mtx);
		j->j_store_next = h->jh_next(h->jh_arg);
		j->j_store_epoch = h->jh_epoch(h->jh_arg);
		pthread_cond_broadcast(&j->j_cond);
		pthread_mutex_unlock(&j->j_mtx);
	}
}

/* ---- life cycle (loop) ----------------------------------------------- */

static void
js_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct jetstream *j = arg;

	pthread_mutex_lock(&j->j_mtx);
	j->j_ev_pending = 0;
	pthread_mutex_unlock(&j->j_mtx);
	if (j->j_sink) {
		sink_loop_spans(j);
		jetstream_store_moved(j, NULL);
	} else
		source_loop_deliver(j);
}

static char *
js_strdup(const char *s, int *fail)
{
	char *d;

	if (s == NULL)
		return NULL;
	if ((d = strdup(s)) == NULL)
		*fail = 1;
	return d;
}

static struct jetstream *
js_new(const struct jetstream_config *jc, struct event_base *base, int sink,
    char *errbuf, size_t errlen)
{
	struct jetstream *j;
	int fail = 0;

	if ((j = calloc(1, sizeof(*j))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	j->j_sink = sink;
	j->j_cfg = *jc;
	snprintf(j->j_name, sizeof(j->j_name), "%s", sink ? "js-sink" :
	    "js-source");
	j->j_urls = js_strdup(jc->jc_urls, &fail);
	j->j_stream = js_strdup(jc->jc_stream, &fail);
	j->j_cfg.jc_nkey = js_strdup(jc->jc_nkey, &fail);
	j->j_cfg.jc_nkey_seed_file = js_strdup(jc->jc_nkey_seed_file, &fail);
	j->j_cfg.jc_creds_file = js_strdup(jc->jc_creds_file, &fail);
	j->j_cfg.jc_tls_ca = js_strdup(jc->jc_tls_ca, &fail);
	j->j_cfg.jc_tls_cert = js_strdup(jc->jc_tls_cert, &fail);
	j->j_cfg.jc_tls_key = js_strdup(jc->jc_tls_key, &fail);
	j->j_cfg.jc_urls = j->j_urls;
	j->j_cfg.jc_stream = j->j_stream;
	j->j_cfg.jc_data_dir = NULL;
	if (j->j_cfg.jc_window == 0)
		j->j_cfg.jc_window = 1024;
	if (j->j_cfg.jc_replicas == 0)
		j->j_cfg.jc_replicas = 3;
	if (j->j_cfg.jc_handoff_bytes == 0)
		j->j_cfg.jc_handoff_bytes = 8 * 1024 * 1024;
	if (j->j_cfg.jc_backoff_min_ms == 0)
		j->j_cfg.jc_backoff_min_ms = 100;
	if (j->j_cfg.jc_backoff_max_ms < j->j_cfg.jc_backoff_min_ms)
		j->j_cfg.jc_backoff_max_ms = j->j_cfg.jc_backoff_min_ms;
	pthread_mutex_init(&j->j_mtx, NULL);
	pthread_cond_init(&j->j_cond, NULL);
	TAILQ_INIT(&j->j_queue);
	j->j_want = JS_NONE;
	j->j_read_off = JS_NONE;
	j->j_base = base;
	if (fail || j->j_urls == NULL || j->j_stream == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	snprintf(j->j_subject, sizeof(j->j_subject), "walrelay.%s",
	    j->j_stream);
	if (sink && snprintf(j->j_statefile, sizeof(j->j_statefile), "%s/"
	    JS_STATE_FILE_FMT, jc->jc_data_dir, j->j_stream) >=
	    (int)sizeof(j->j_statefile)) {
		snprintf(errbuf, errlen, "data directory name too long");
		goto fail;
	}
	if (js_load_credentials(j, errbuf, errlen) == -1)
		goto fail;
	if ((j->j_ev = event_new(base, -1, 0, js_event_cb, j)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	return j;
fail:
	jetstream_free(j);
	return NULL;
}

static int
js_start(struct jetstream *j, void *(*fn)(void *), char *errbuf,
    size_t errlen)
{
	pthread_mutex_lock(&js_lib_mtx);
	js_lib_users++;
	pthread_mutex_unlock(&js_lib_mtx);
	if (pthread_create(&j->j_thread, NULL, fn, j) != 0) {
		snprintf(errbuf, errlen, "cannot start the %s thread",
		    j->j_name);
		pthread_mutex_lock(&js_lib_mtx);
		js_lib_users--;
		pthread_mutex_unlock(&js_lib_mtx);
		return -1;
	}
	j->j_started = 1;
	return 0;
}

struct jetstream *
jetstream_sink_new(const struct jetstream_config *jc, struct event_base *base,
    struct segstore *store, char *errbuf, size_t errlen)
{
	struct segstore_state st;
	struct jetstream *j;
	uint64_t epoch, acked;
	int rc;

	if ((j = js_new(jc, base, 1, errbuf, errlen)) == NULL)
		return NULL;
	j->j_store = store;
	segstore_poll(store, &st);
	j->j_epoch = segstore_epoch(store);
	j->j_durable = j->j_loop_durable = st.ss_durable;
	j->j_earliest = st.ss_earliest;
	/* until JetStream answers: the recorded position, for the lag */
	j->j_acked = st.ss_earliest;
	rc = js_state_read(j, &epoch, &acked);
	if (rc == 0 && epoch == j->j_epoch && acked <= st.ss_next) {
		j->j_acked = acked > st.ss_earliest ? acked : st.ss_earliest;
		log_info("%s: frames below %" PRIu64 " were acknowledged by "
		    "JetStream stream %s (%s)", j->j_name, acked, j->j_stream,
		    j->j_statefile);
	} else if (rc == 0)
		log_warnx("%s: %s is for another epoch or store: ignored; "
		    "JetStream's last message decides", j->j_name,
		    j->j_statefile);
	else if (rc == -1)
		log_warnx("%s: %s is unreadable or damaged: ignored; "
		    "JetStream's last message decides", j->j_name,
		    j->j_statefile);
	j->j_sent = j->j_acked;
	/* frames durable at start count as old as the start */
	j->j_marks[0].dm_end = st.ss_durable;
	j->j_marks[0].dm_ms = js_now_ms();
	j->j_nmarks = 1;
	if (js_start(j, sink_main, errbuf, errlen) == -1) {
		jetstream_free(j);
		return NULL;
	}
	log_info("%s: publishing to JetStream stream %s (subject %s) at %s, "
	    "%u frames in flight at most", j->j_name, j->j_stream,
	    j->j_subject, j->j_urls, j->j_cfg.jc_window);
	return j;
}

struct jetstream *
jetstream_source_new(const struct jetstream_config *jc,
    struct event_base *base, const struct jetstream_source_hooks *h,
    char *errbuf, size_t errlen)
{
	struct jetstream *j;

	if ((j = js_new(jc, base, 0, errbuf, errlen)) == NULL)
		return NULL;
	j->j_hooks = *h;
	j->j_store_next = h->jh_next(h->jh_arg);
	j->j_store_epoch = h->jh_epoch(h->jh_arg);
	j->j_positioned = j->j_store_next > 0;
	if (js_start(j, source_main, errbuf, errlen) == -1) {
		jetstream_free(j);
		return NULL;
	}
	log_info("%s: taking the stream from JetStream stream %s (subject "
	    "%s) at %s, from frame %" PRIu64 "%s", j->j_name, j->j_stream,
	    j->j_subject, j->j_urls, j->j_store_next, j->j_positioned ? "" :
	    " (empty: adopting the origin's positions)");
	return j;
}

void
jetstream_store_moved(struct jetstream *j, const struct segstore_state *st)
{
	uint64_t now = js_now_ms(), acked;
	size_t drop = 0;

	if (j == NULL || !j->j_sink)
		return;
	if (st != NULL && st->ss_durable > j->j_loop_durable) {
		struct js_mark *last = &j->j_marks[j->j_nmarks - 1];

		/* one mark per 10 ms: a frame is counted at most that older */
		if (j->j_nmarks > 0 && (now - last->dm_ms < 10 ||
		    j->j_nmarks == JS_MARKS))
			last->dm_end = st->ss_durable;
		else {
			j->j_marks[j->j_nmarks].dm_end = st->ss_durable;
			j->j_marks[j->j_nmarks].dm_ms = now;
			j->j_nmarks++;
		}
		j->j_loop_durable = st->ss_durable;
	}
	pthread_mutex_lock(&j->j_mtx);
	if (st != NULL) {
		if (st->ss_durable > j->j_durable)
			pthread_cond_broadcast(&j->j_cond);
		j->j_durable = st->ss_durable;
		j->j_earliest = st->ss_earliest;
	}
	acked = j->j_acked;
	pthread_mutex_unlock(&j->j_mtx);
	/* marks whose frames are all acknowledged go (keep one) */
	while (drop + 1 < j->j_nmarks && j->j_marks[drop].dm_end <= acked)
		drop++;
	if (drop > 0) {
		memmove(j->j_marks, j->j_marks + drop, (j->j_nmarks - drop) *
		    sizeof(j->j_marks[0]));
		j->j_nmarks -= drop;
	}
}

void
jetstream_flow(struct jetstream *j)
{
	if (j != NULL && !j->j_sink)
		source_loop_deliver(j);
}

void
jetstream_free(struct jetstream *j)
{
	struct js_item *it;
	void *pin = NULL;
	int last = 0;

	if (j == NULL)
		return;
	pthread_mutex_lock(&j->j_mtx);
	j->j_stopping = 1;
	pthread_cond_broadcast(&j->j_cond);
	pthread_mutex_unlock(&j->j_mtx);
	if (j->j_started) {
		pthread_join(j->j_thread, NULL);
		pthread_mutex_lock(&js_lib_mtx);
		last = --js_lib_users == 0;
		pthread_mutex_unlock(&js_lib_mtx);
		/* every libnats thread gone: no callback runs after this */
		if (last)
			nats_CloseAndWait(5000);
	}
	pin = j->j_unpin;
	if (pin != NULL && j->j_store != NULL)
		segstore_unpin(j->j_store, pin);
	if (j->j_span_state == 1 && j->j_store != NULL)
		segstore_unpin(j->j_store, j->j_span.sp_pin);
	while ((it = TAILQ_FIRST(&j->j_queue)) != NULL) {
		TAILQ_REMOVE(&j->j_queue, it, it_entry);
		chunk_unref(it->it_chunk);
		free(it);
	}
	if (j->j_ev != NULL)
		event_free(j->j_ev);
	if (j->j_pass != NULL)
		explicit_bzero(j->j_pass, strlen(j->j_pass));
	if (j->j_token != NULL)
		explicit_bzero(j->j_token, strlen(j->j_token));
	free(j->j_user);
	free(j->j_pass);
	free(j->j_token);
	free(j->j_urls);
	free(j->j_stream);
	free((char *)j->j_cfg.jc_nkey);
	free((char *)j->j_cfg.jc_nkey_seed_file);
	free((char *)j->j_cfg.jc_creds_file);
	free((char *)j->j_cfg.jc_tls_ca);
	free((char *)j->j_cfg.jc_tls_cert);
	free((char *)j->j_cfg.jc_tls_key);
	pthread_mutex_destroy(&j->j_mtx);
	pthread_cond_destroy(&j->j_cond);
	free(j);
}

struct js_lag {
	uint64_t	 la_seq;	/* first unread frame */
	uint64_t	 la_off;	/* its file offset, or JS_NONE */
	uint64_t	 la_bytes;
};

static void
js_lag_segment(void *arg, const char *name, uint64_t base, uint64_t end,
    uint64_t bytes)
{
	struct js_lag *la = arg;

	if (end <= la->la_seq)
		return;
	if (base >= la->la_seq)
		la->la_bytes += bytes;
	else if (la->la_off != JS_NONE && la->la_off <= bytes)
		la->la_bytes += bytes - la->la_off;
	else if (end > base)	/* not being read: a share of the file */
		la->la_bytes += bytes * (end - la->la_seq) / (end - base);
}

void
jetstream_status(struct jetstream *j, struct jetstream_status *st)
{
	struct js_lag la;
	uint64_t now = js_now_ms();

	memset(st, 0, sizeof(*st));
	if (j == NULL)
		return;
	st->jst_sink = j->j_sink;
	snprintf(st->jst_stream, sizeof(st->jst_stream), "%s", j->j_stream);
	pthread_mutex_lock(&j->j_mtx);
	st->jst_state = j->j_state;
	snprintf(st->jst_server, sizeof(st->jst_server), "%s", j->j_server);
	snprintf(st->jst_error, sizeof(st->jst_error), "%s",
	    j->j_state == JS_STATE_STREAMING ? "" : j->j_error);
	st->jst_messages = j->j_messages;
	st->jst_bytes = j->j_bytes;
	st->jst_errors = j->j_errors;
	st->jst_resyncs = j->j_resyncs;
	st->jst_reconnects = j->j_reconnects;
	if (j->j_sink) {
		st->jst_position = j->j_acked;
		st->jst_inflight = j->j_inflight;
		st->jst_lag_frames = j->j_durable > j->j_acked ?
		    j->j_durable - j->j_acked : 0;
		la.la_seq = j->j_sent;
		la.la_off = j->j_read_off;
		la.la_bytes = j->j_sent > j->j_acked ? j->j_inflight_bytes : 0;
	} else
		st->jst_position = j->j_store_next;
	pthread_mutex_unlock(&j->j_mtx);
	if (!j->j_sink)
		return;
	if (st->jst_lag_frames > 0) {
		/* frames read but not in flight (a resync) are unread again */
		if (la.la_seq > st->jst_position + st->jst_inflight) {
			la.la_seq = st->jst_position;
			la.la_off = JS_NONE;
			la.la_bytes = 0;
		}
		segstore_foreach(j->j_store, js_lag_segment, &la);
		st->jst_lag_bytes = la.la_bytes;
		for (size_t i = 0; i < j->j_nmarks; i++)
			if (j->j_marks[i].dm_end > st->jst_position) {
				st->jst_lag_ms = now > j->j_marks[i].dm_ms ?
				    now - j->j_marks[i].dm_ms : 0;
				break;
			}
	}
}

int
jetstream_ready(struct jetstream *j, char *buf, size_t len)
{
	struct jetstream_status st;

	jetstream_status(j, &st);
	if (st.jst_state == JS_STATE_STREAMING)
		return 1;
	snprintf(buf, len, "%s %s: %s%s%s", st.jst_sink ? "sink to" :
	    "source from", st.jst_stream, jetstream_state_name(st.jst_state),
	    st.jst_error[0] ? ": " : "", st.jst_error);
	return 0;
}

#endif /* HAVE_NATS */
