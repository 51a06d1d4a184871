/*
 * upstream.c: the ingest listener and the pull client.
 *
 * One publisher at a time. Bytes are read into a buffer the connection
 * fills from front to back (plain TCP: read() straight from the socket;
 * TLS: from the bufferevent's input), the whole frames in it are
 * validated in place, and each read hands the run of whole frames to the
 * segment writer and the shared tail as one chunk that is a view of that
 * buffer: the bytes the socket was read into are the ones written to disk
 * and sent to every subscriber. When the buffer is nearly full, the
 * partial frame at its end moves into a new one. A bad frame closes the
 * connection: everything before it is stored, nothing from it on.
 */
#include "autoconfig.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "auth.h"
#include "clock.h"
#include "fanout.h"
#include "fcw2.h"
#include "handshake.h"
#include "log.h"
#include "net.h"
#include "relay.h"
#include "stream.h"
#include "upstream.h"

enum upconn_state {
	UC_HANDSHAKE,	/* waiting for the auth line (or the first frame) */
	UC_REPLY,	/* pull from a relay: waiting for FCWAL-OK/1 */
	UC_STREAM,	/* frames */
};

struct upconn {
	struct upstream		*uc_up;		/* its stream's */
	uint64_t		 uc_id;
	char			 uc_name[24];	/* "up-3", "pull-4" */
	char			 uc_peer[64];
	struct bufferevent	*uc_bev;
	struct net_conn		*uc_src;	/* per-address count (ingest) */
	int			 uc_state;
	int			 uc_pull;
	struct handshake	 uc_hs;
	struct event		*uc_timer;	/* auth deadline */
	/* plain TCP, streaming: reads from the socket into uc_buf */
	struct event		*uc_rev;
	/*
	 * The buffer reads go into: [0, uc_pub) published (views of it),
	 * [uc_pub, uc_checked) validated, the rest up to ch_len a partial
	 * frame.
	 */
	struct chunk		*uc_buf;
	size_t			 uc_pub;
	size_t			 uc_checked;
	uint32_t		 uc_nframes;	/* frames in [uc_pub, uc_checked) */
	uint64_t		 uc_offset;	/* stream offset of uc_buf[uc_pub] */
	uint64_t		 uc_frames;	/* frames stored from this conn */
	uint64_t		 uc_connected_ms;
	TAILQ_ENTRY(upconn)	 uc_entry;
};
TAILQ_HEAD(upconn_list, upconn);

struct upstream {
	struct stream		*u_stream;
	struct net_listener	*u_listener;
	struct upconn_list	 u_pending;	/* accepted, not yet publishing */
	struct upconn		*u_publisher;	/* the one that streams */
	struct fcw2_checker	 u_chk;
	int			 u_paused;
	int			 u_stopped;
	/* its ingest listener is shared: route each connection by token */
	int			 u_routed;
	/* pull */
	struct event		*u_retry;
	unsigned		 u_attempt;
	char			 u_refused[32];	/* code of the last refusal */
	char			 u_epoch[384];	/* why the upstream's epoch is not ours */
	uint64_t		 u_last_frame_ms;
};

static void	upconn_close(struct upconn *, const char *, ...)
		    WR_PRINTF(2, 3);
static void	upconn_read_cb(struct bufferevent *, void *);
static void	upconn_event_cb(struct bufferevent *, short, void *);
static void	pull_schedule(struct upstream *);
static void	pull_connect(struct upstream *);
static void	upconn_pull_connected(struct upconn *);
static struct upstream *upstream_route(struct upstream *, const void *,
		    size_t);

#define UPCONN_EOF	"connection closed by peer"
#define UPCONN_REFUSED	"upstream refused the subscription"

static struct log_ratelimit up_refusals = LOG_RATELIMIT_INIT(10, 10);

static struct stream *
upconn_stream(const struct upconn *uc)
{
	return uc->uc_up->u_stream;
}

/* ---- the data path --------------------------------------------------- */

/*
 * Buffers of UPSTREAM_BUF bytes: a view of one pins at most that much,
 * and a run of views of one buffer joins into one chunk without a copy
 * (chunk_list_merge). A read goes into the rest of the buffer while at
 * least UPSTREAM_ROOM is free; then the partial frame moves to a new one.
 */
#define UPSTREAM_BUF	(256 * 1024)
#define UPSTREAM_ROOM	(16 * 1024)

/* Hand the validated frames of the buffer to the store and the tail. */
static int
upconn_publish(struct upconn *uc)
{
	struct chunk *ch;

	if (uc->uc_nframes == 0)
		return 0;
	if ((ch = chunk_view(uc->uc_buf, uc->uc_pub, uc->uc_checked -
	    uc->uc_pub, 0, uc->uc_nframes)) == NULL)
		return -1;
	ch->ch_recv_us = clock_mono_us();
	stream_publish(upconn_stream(uc), ch);
	uc->uc_frames += ch->ch_nframes;
	uc->uc_offset += ch->ch_len;
	uc->uc_up->u_last_frame_ms = clock_wall_ms();
	if (uc->uc_pull)
		uc->uc_up->u_attempt = 0;	/* the upstream delivers: backoff over */
	chunk_unref(ch);
	uc->uc_pub = uc->uc_checked;
	uc->uc_nframes = 0;
	return 0;
}

/* Validate whatever whole frames the buffer now holds. */
static int
upconn_check(struct upconn *uc, size_t *need)
{
	struct chunk *ch = uc->uc_buf;
	size_t flen;
	int rc;

	*need = 0;
	while (uc->uc_checked < ch->ch_len) {
		rc = fcw2_check(&uc->uc_up->u_chk, ch->ch_data + uc->uc_checked,
		    ch->ch_len - uc->uc_checked, &flen, NULL);
		if (rc == FCW2_NEED_MORE) {
			*need = flen;
			return 0;
		}
		if (rc != FCW2_OK)
			return rc;
		uc->uc_checked += flen;
		uc->uc_nframes++;
	}
	return 0;
}

/*
 * Room in the buffer for a read: at least UPSTREAM_ROOM bytes, and the
 * whole frame being read (need bytes from uc_checked). Otherwise the
 * validated frames are published and the partial frame moves to a new
 * buffer (the only copy: less than a frame). 0 or -1.
 */
static int
upconn_reserve(struct upconn *uc, size_t need)
{
	struct chunk *ch = uc->uc_buf, *nb;
	size_t part, cap;

	if (ch != NULL && ch->ch_cap - ch->ch_len >= UPSTREAM_ROOM &&
	    ch->ch_cap - uc->uc_checked >= need)
		return 0;
	part = ch != NULL ? ch->ch_len - uc->uc_checked : 0;
	cap = UPSTREAM_BUF;
	if (need + UPSTREAM_ROOM > cap)
		cap = need + UPSTREAM_ROOM;
	if (part + UPSTREAM_ROOM > cap)
		cap = part + UPSTREAM_ROOM;
	if ((nb = chunk_buffer_new(cap)) == NULL)
		return -1;
	if (ch != NULL) {
		if (upconn_publish(uc) == -1) {
			chunk_unref(nb);
			return -1;
		}
		memcpy(nb->ch_data, ch->ch_data + uc->uc_checked, part);
		chunk_unref(ch);
	}
	nb->ch_len = part;
	uc->uc_buf = nb;
	uc->uc_pub = uc->uc_checked = 0;
	uc->uc_nframes = 0;
	return 0;
}

/*
 * A bad frame at uc_checked: keep the frames before it, drop it and the
 * rest, close. Returns -1 (the connection is freed).
 */
static int
upconn_bad_frame(struct upconn *uc, int rc)
{
	uint64_t off = uc->uc_offset + (uc->uc_checked - uc->uc_pub);

	upconn_stream(uc)->st_stats.up_bad_frames++;
	uc->uc_buf->ch_len = uc->uc_checked;
	(void)upconn_publish(uc);
	stream_published(upconn_stream(uc));
	upconn_close(uc, "bad frame at byte %" PRIu64 " of the connection: "
	    "%s; closed it, %" PRIu64 " frames before it are stored, nothing "
	    "after", off, fcw2_strerror(rc), uc->uc_frames);
	return -1;
}

/* After reading: publish, let subscribers see it, flow control. */
static int
upconn_ingested(struct upconn *uc)
{
	if (upconn_publish(uc) == -1) {
		upconn_close(uc, "out of memory");
		return -1;
	}
	stream_published(upconn_stream(uc));
	upstream_flow(uc->uc_up);
	return 0;
}

/*
 * Take what the bufferevent's input holds (the bytes that came with the
 * handshake, or a TLS connection's). Returns 0, or -1 when the connection
 * was closed (and freed).
 */
static int
upconn_ingest(struct upconn *uc)
{
	struct evbuffer *in = bufferevent_get_input(uc->uc_bev);
	size_t need = 0;
	int rc, n;

	while (evbuffer_get_length(in) > 0) {
		if (upconn_reserve(uc, need) == -1) {
			upconn_close(uc, "out of memory buffering %zu bytes",
			    evbuffer_get_length(in));
			return -1;
		}
		n = evbuffer_remove(in, uc->uc_buf->ch_data +
		    uc->uc_buf->ch_len, uc->uc_buf->ch_cap -
		    uc->uc_buf->ch_len);
		if (n <= 0)
			break;
		uc->uc_buf->ch_len += (size_t)n;
		if ((rc = upconn_check(uc, &need)) != 0)
			return upconn_bad_frame(uc, rc);
	}
	return upconn_ingested(uc);
}

/*
 * Plain TCP, streaming: read the socket straight into the buffer, one
 * read() per wake-up (the loop calls again while there is more).
 */
static void
upconn_direct_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upconn *uc = arg;
	size_t need = 0;
	ssize_t n;
	int rc;

	if (uc->uc_buf != NULL && uc->uc_checked < uc->uc_buf->ch_len &&
	    uc->uc_buf->ch_len - uc->uc_checked >= FCW2_HEADER_LEN)
		need = fcw2_frame_len(uc->uc_buf->ch_data + uc->uc_checked);
	if (upconn_reserve(uc, need) == -1) {
		upconn_close(uc, "out of memory reading a frame of %zu bytes",
		    need);
		return;
	}
	n = read(fd, uc->uc_buf->ch_data + uc->uc_buf->ch_len,
	    uc->uc_buf->ch_cap - uc->uc_buf->ch_len);
	if (n == -1) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		upconn_close(uc, "connection error: %s", strerror(errno));
		return;
	}
	if (n == 0) {
		upconn_close(uc, "%s", UPCONN_EOF);
		return;
	}
	uc->uc_buf->ch_len += (size_t)n;
	if ((rc = upconn_check(uc, &need)) != 0) {
		(void)upconn_bad_frame(uc, rc);
		return;
	}
	(void)upconn_ingested(uc);
}

/* Read, or stop reading (flow control), from the publishing connection. */
static void
upconn_reading(struct upconn *uc, int on)
{
	if (uc->uc_rev != NULL) {
		if (on)
			event_add(uc->uc_rev, NULL);
		else
			event_del(uc->uc_rev);
	} else if (on)
		bufferevent_enable(uc->uc_bev, EV_READ);
	else
		bufferevent_disable(uc->uc_bev, EV_READ);
}

/*
 * The connection streams frames: on plain TCP, read the socket directly
 * from now on (after what the bufferevent already holds). Returns 0, or
 * -1 when the connection was closed (and freed).
 */
static int
upconn_streaming(struct upconn *uc)
{
	evutil_socket_t fd = bufferevent_getfd(uc->uc_bev);

	if (!net_bev_is_tls(uc->uc_bev) && fd != -1) {
		uc->uc_rev = event_new(relay->r_base, fd, EV_READ | EV_PERSIST,
		    upconn_direct_cb, uc);
		if (uc->uc_rev == NULL) {
			upconn_close(uc, "out of memory");
			return -1;
		}
		bufferevent_disable(uc->uc_bev, EV_READ);
		if (!uc->uc_up->u_paused)
			event_add(uc->uc_rev, NULL);
	}
	return upconn_ingest(uc);
}

/* ---- connections ----------------------------------------------------- */

static void
upconn_free(struct upconn *uc)
{
	if (uc->uc_timer != NULL)
		event_free(uc->uc_timer);
	if (uc->uc_rev != NULL)
		event_free(uc->uc_rev);
	if (uc->uc_bev != NULL)
		bufferevent_free(uc->uc_bev);
	if (uc->uc_buf != NULL)
		chunk_unref(uc->uc_buf);
	net_conn_release(uc->uc_src);
	free(uc);
}

/* The one close path: logs why, drops a partial frame, frees. */
static void
upconn_close(struct upconn *uc, const char *fmt, ...)
{
	struct upstream *u = uc->uc_up;
	char why[512];
	va_list ap;
	int was_pull = uc->uc_pull;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);

	if (uc->uc_buf != NULL && uc->uc_buf->ch_len > uc->uc_checked) {
		upconn_stream(uc)->st_stats.up_partial_dropped++;
		log_info("%s: dropped a partial frame of %zu bytes at close",
		    uc->uc_name, uc->uc_buf->ch_len - uc->uc_checked);
	}
	if (uc == uc->uc_up->u_publisher) {
		uc->uc_up->u_publisher = NULL;
		/* a publisher that hangs up is routine; anything else is not */
		if (strcmp(why, UPCONN_REFUSED) == 0)
			log_debug("%s: %s (peer %s)", uc->uc_name, why,
			    uc->uc_peer);	/* upconn_reply said why */
		else if (strcmp(why, UPCONN_EOF) == 0)
			log_info("%s: %s (peer %s, %" PRIu64 " frames stored)",
			    uc->uc_name, why, uc->uc_peer, uc->uc_frames);
		else
			log_warnx("%s: %s (peer %s, %" PRIu64 " frames stored)",
			    uc->uc_name, why, uc->uc_peer, uc->uc_frames);
	} else {
		TAILQ_REMOVE(&uc->uc_up->u_pending, uc, uc_entry);
		log_limited(&up_refusals, LOG_LEVEL_WARN, "%s: %s (peer %s)",
		    uc->uc_name, why, uc->uc_peer);
		/*
		 * Refused: reset, not a clean close, so that a producer can
		 * tell "refused" from "took everything and closed" (the
		 * protocol has no reply line).
		 */
		if (!was_pull && uc->uc_bev != NULL) {
			struct linger lg = { 1, 0 };
			evutil_socket_t fd = bufferevent_getfd(uc->uc_bev);

			if (fd != -1)
				(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg,
				    sizeof(lg));
		}
	}
	upconn_free(uc);
	if (was_pull && !u->u_stopped)
		pull_schedule(u);
}

/* This connection now streams; the previous publisher is replaced. */
static void
upconn_promote(struct upconn *uc)
{
	struct upconn *old = uc->uc_up->u_publisher;

	TAILQ_REMOVE(&uc->uc_up->u_pending, uc, uc_entry);
	if (uc->uc_timer != NULL) {
		event_free(uc->uc_timer);
		uc->uc_timer = NULL;
	}
	uc->uc_up->u_publisher = NULL;
	if (old != NULL) {
		upconn_stream(uc)->st_stats.up_replaced++;
		TAILQ_INSERT_TAIL(&uc->uc_up->u_pending, old, uc_entry);
		upconn_close(old, "replaced by %s", uc->uc_name);
	}
	uc->uc_up->u_publisher = uc;
	uc->uc_state = UC_STREAM;
	log_info("%s: publisher %s streaming, next sequence %" PRIu64,
	    uc->uc_name, uc->uc_peer, segstore_next(upconn_stream(uc)->st_store));
	if (uc->uc_up->u_paused)
		bufferevent_disable(uc->uc_bev, EV_READ);
}

static int
publish_required(const struct stream *st)
{
	return st->st_tokens != NULL &&
	    st->st_tokens->at_publish.ts_count > 0;
}

/* Ingest: the optional auth line, then frames. */
static void
upconn_handshake(struct upconn *uc)
{
	struct evbuffer *in = bufferevent_get_input(uc->uc_bev);
	struct handshake_req req;
	unsigned char peek[5];
	char err[128];
	size_t have;
	int rc;

	have = evbuffer_copyout(in, peek, sizeof(peek));
	if (uc->uc_hs.hs_len == 0) {
		/* "FCW2..." is a frame, "FCWAL-..." the auth line */
		size_t m = have < 4 ? have : 4;
		if (memcmp(peek, "FCW2", m) == 0 && memcmp(peek, "FCWA",
		    m) != 0) {
			if (uc->uc_up->u_routed) {
				upconn_stream(uc)->st_stats.up_rejected_auth++;
				upconn_close(uc, "refused: frames without the "
				    "auth line on an ingest listener several "
				    "streams share (the token picks the "
				    "stream)");
				return;
			}
			if (publish_required(upconn_stream(uc))) {
				upconn_stream(uc)->st_stats.up_rejected_auth++;
				upconn_close(uc, "refused: frames without the "
				    "auth line, and publish tokens are "
				    "configured");
				return;
			}
			upconn_promote(uc);
			(void)upconn_streaming(uc);
			return;
		}
		if (m < 4)
			return;	/* cannot tell yet */
		if (memcmp(peek, "FCWAL", have < 5 ? have : 5) != 0) {
			upconn_stream(uc)->st_stats.up_rejected_auth++;
			upconn_close(uc, "refused: neither an auth line nor an "
			    "FCW2 frame");
			return;
		}
	}
	if ((rc = handshake_feed_evbuffer(&uc->uc_hs, in)) ==
	    HANDSHAKE_TOO_LONG) {
		upconn_stream(uc)->st_stats.up_rejected_auth++;
		upconn_close(uc, "refused: auth line longer than 1023 bytes");
		return;
	}
	if (rc != HANDSHAKE_LINE)
		return;
	if (handshake_parse(&uc->uc_hs, &req, err, sizeof(err)) == -1 ||
	    req.hr_kind != HANDSHAKE_AUTH) {
		upconn_stream(uc)->st_stats.up_rejected_auth++;
		upconn_close(uc, "refused: not an auth line (%s)",
		    req.hr_kind == HANDSHAKE_SUB ? "FCWAL-SUB/1 is for the "
		    "subscriber port" : err);
		return;
	}
	if (uc->uc_up->u_routed) {
		struct upstream *to = upstream_route(uc->uc_up, req.hr_token,
		    req.hr_token_len);

		if (to == NULL) {
			upconn_stream(uc)->st_stats.up_rejected_auth++;
			upconn_close(uc, "refused: token is not a publish "
			    "token of any stream on this listener");
			return;
		}
		if (to != uc->uc_up) {
			TAILQ_REMOVE(&uc->uc_up->u_pending, uc, uc_entry);
			uc->uc_up = to;
			TAILQ_INSERT_TAIL(&to->u_pending, uc, uc_entry);
		}
		log_debug("%s: routed to stream %s", uc->uc_name,
		    upconn_stream(uc)->st_name);
	}
	if (publish_required(upconn_stream(uc)) && !tokenset_match(
	    &upconn_stream(uc)->st_tokens->at_publish, req.hr_token,
	    req.hr_token_len)) {
		upconn_stream(uc)->st_stats.up_rejected_auth++;
		upconn_close(uc, "refused: token is not a publish token");
		return;
	}
	upconn_promote(uc);
	(void)upconn_streaming(uc);
}

/*
 * The upstream refused the subscription. A refusal is logged when it
 * differs from the one before (a relay retrying at its backoff would log
 * the same line forever). An epoch refusal does not go away by retrying:
 * the upstream's store restarted under a new epoch (a crash with fsync
 * never), so its sequence numbers no longer name this relay's frames.
 * This relay keeps serving what it has, reports unready and retries at
 * the longest backoff; the operator restarts it on an empty data
 * directory to follow the new epoch (docs/operations.md).
 */
static void
upconn_refused(struct upconn *uc, const struct handshake_reply *rep)
{
	struct upstream *u = uc->uc_up;
	struct segstore *ss = upconn_stream(uc)->st_store;

	if (strcmp(rep->hp_code, "epoch") == 0)
		snprintf(u->u_epoch, sizeof(u->u_epoch), "upstream epoch "
		    "changed: %s refused epoch %016" PRIx64 " (%.160s); serving "
		    "sequences up to %" PRIu64 " of it, restart on an empty "
		    "data directory to follow the upstream", uc->uc_peer,
		    segstore_epoch(ss), rep->hp_text, segstore_next(ss));
	else
		u->u_epoch[0] = '\0';
	if (strcmp(u->u_refused, rep->hp_code) == 0) {
		log_debug("%s: upstream refused again: %s %s", uc->uc_name,
		    rep->hp_code, rep->hp_text);
		return;
	}
	snprintf(u->u_refused, sizeof(u->u_refused), "%s", rep->hp_code);
	if (u->u_epoch[0] != '\0')
		log_error("%s: %s; retrying every %u ms, logged again when "
		    "the upstream's answer changes", uc->uc_name, u->u_epoch,
		    upconn_stream(uc)->st_cfg->upstream_backoff_max_ms);
	else
		log_error("%s: upstream refused: %s %s; logged again when the "
		    "upstream's answer changes", uc->uc_name, rep->hp_code,
		    rep->hp_text);
}

/* Pull from a relay: the reply line, then frames from our next sequence. */
static void
upconn_reply(struct upconn *uc)
{
	struct evbuffer *in = bufferevent_get_input(uc->uc_bev);
	struct handshake_reply rep;
	char err[160];
	int rc;

	if ((rc = handshake_feed_evbuffer(&uc->uc_hs, in)) ==
	    HANDSHAKE_TOO_LONG) {
		upconn_close(uc, "upstream reply longer than 1023 bytes");
		return;
	}
	if (rc != HANDSHAKE_LINE)
		return;
	if (handshake_parse_reply(&uc->uc_hs, &rep, err, sizeof(err)) == -1) {
		upconn_close(uc, "upstream replied with something else than "
		    "FCWAL-OK/1 or FCWAL-ERR/1: %s", err);
		return;
	}
	if (!rep.hp_ok) {
		upconn_refused(uc, &rep);
		upconn_close(uc, UPCONN_REFUSED);
		return;
	}
	if (segstore_next(upconn_stream(uc)->st_store) == 0) {
		if (segstore_adopt(upconn_stream(uc)->st_store, rep.hp_epoch,
		    rep.hp_start) == -1) {
			upconn_close(uc, "cannot adopt the upstream's position");
			return;
		}
		log_info("%s: adopted upstream epoch %016" PRIx64 " starting at "
		    "sequence %" PRIu64, uc->uc_name, rep.hp_epoch,
		    rep.hp_start);
	} else if (rep.hp_start != segstore_next(upconn_stream(uc)->st_store) ||
	    rep.hp_epoch != segstore_epoch(upconn_stream(uc)->st_store)) {
		log_error("%s: upstream would start at %" PRIu64 " epoch %016"
		    PRIx64 ", this relay is at %" PRIu64 " epoch %016" PRIx64,
		    uc->uc_name, rep.hp_start, rep.hp_epoch,
		    segstore_next(upconn_stream(uc)->st_store),
		    segstore_epoch(upconn_stream(uc)->st_store));
		upconn_close(uc, "position mismatch with the upstream");
		return;
	}
	uc->uc_state = UC_STREAM;
	uc->uc_up->u_attempt = 0;
	if (uc->uc_up->u_refused[0] != '\0')
		log_info("%s: the upstream takes this relay's position again",
		    uc->uc_name);
	uc->uc_up->u_refused[0] = uc->uc_up->u_epoch[0] = '\0';
	upconn_stream(uc)->st_positioned = 1;
	log_info("%s: streaming from %s at sequence %" PRIu64 " (upstream "
	    "earliest %" PRIu64 ", next %" PRIu64 ")", uc->uc_name, uc->uc_peer,
	    rep.hp_start, rep.hp_earliest, rep.hp_next);
	(void)upconn_streaming(uc);
}

static void
upconn_read_cb(struct bufferevent *bev, void *arg)
{
	struct upconn *uc = arg;

	switch (uc->uc_state) {
	case UC_HANDSHAKE:
		upconn_handshake(uc);
		break;
	case UC_REPLY:
		upconn_reply(uc);
		break;
	case UC_STREAM:
		upconn_ingest(uc);
		break;
	}
}

static void
upconn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct upconn *uc = arg;

	if (what & BEV_EVENT_CONNECTED) {
		/* an accepted TLS connection reports its handshake too */
		if (uc->uc_pull)
			upconn_pull_connected(uc);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		/* take whatever arrived before the end */
		if (uc->uc_state == UC_STREAM && upconn_ingest(uc) == -1)
			return;
		upconn_close(uc, "%s", UPCONN_EOF);
	} else if (what & BEV_EVENT_ERROR) {
		const char *e = net_bev_error(bev);
		if (uc->uc_pull && uc->uc_state == UC_HANDSHAKE)
			upconn_stream(uc)->st_stats.up_connect_failures++;
		else if (!uc->uc_pull && uc->uc_state == UC_HANDSHAKE &&
		    net_bev_is_tls(bev))
			upconn_stream(uc)->st_stats.up_rejected_tls++;
		upconn_close(uc, "connection error: %s", e);
	}
}

static void
upconn_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upconn *uc = arg;

	upconn_stream(uc)->st_stats.up_rejected_timeout++;
	if (publish_required(upconn_stream(uc)))
		upconn_close(uc, "refused: no auth line within %u ms",
		    upconn_stream(uc)->st_cfg->auth_timeout_ms);
	else
		upconn_close(uc, "closed: no frame or auth line within %u "
		    "ms (auth-timeout)", upconn_stream(uc)->st_cfg->auth_timeout_ms);
}

static struct upconn *
upconn_new(struct upstream *u, struct bufferevent *bev, const char *peer,
    int pull)
{
	struct upconn *uc;

	if ((uc = calloc(1, sizeof(*uc))) == NULL)
		return NULL;
	uc->uc_up = u;
	uc->uc_id = relay_conn_id();
	snprintf(uc->uc_name, sizeof(uc->uc_name), "%s-%" PRIu64,
	    pull ? "pull" : "up", uc->uc_id);
	snprintf(uc->uc_peer, sizeof(uc->uc_peer), "%s", peer);
	uc->uc_bev = bev;
	uc->uc_pull = pull;
	uc->uc_connected_ms = clock_wall_ms();
	handshake_init(&uc->uc_hs);
	TAILQ_INSERT_TAIL(&uc->uc_up->u_pending, uc, uc_entry);
	bufferevent_setcb(bev, upconn_read_cb, NULL, upconn_event_cb, uc);
	bufferevent_set_max_single_read(bev, UPSTREAM_READ_MAX);
	return uc;
}

static void
ingest_accept_cb(int fd, struct sockaddr *sa, int salen, void *arg)
{
	upstream_accept(arg, fd, sa, salen);
}

void
upstream_accept(struct upstream *u, int fd, struct sockaddr *sa, int salen)
{
	struct bufferevent *bev;
	struct net_conn *src;
	struct upconn *uc;
	struct timeval tv;
	char peer[64];
	int over;

	relay_addr_str(sa, peer, sizeof(peer));
	if (u->u_stopped) {
		evutil_closesocket(fd);
		return;
	}
	/* the listener's own limit (its stream's), and the process's */
	if ((src = net_conn_acquire(NET_PORT_INGEST, u, sa,
	    u->u_stream->st_cfg->max_ingest_conns_per_ip,
	    relay->r_cfg->max_ingest_conns_per_ip_total, &over)) == NULL) {
		u->u_stream->st_stats.up_rejected_limit++;
		if (over == NET_OVER_TOTAL)
			log_limited(&up_refusals, LOG_LEVEL_WARN, "ingest: "
			    "refused %s on the listener of stream %s: %u "
			    "ingest connections from that address on all "
			    "listeners, the limit "
			    "(max-ingest-conns-per-ip-total)", peer,
			    u->u_stream->st_name,
			    relay->r_cfg->max_ingest_conns_per_ip_total);
		else
			log_limited(&up_refusals, LOG_LEVEL_WARN, "ingest: "
			    "refused %s: %u ingest connections from that "
			    "address on the listener of stream %s, the limit "
			    "(max-ingest-conns-per-ip)", peer,
			    u->u_stream->st_cfg->max_ingest_conns_per_ip,
			    u->u_stream->st_name);
		evutil_closesocket(fd);
		return;
	}
	if ((bev = net_bev_accepted(fd,
	    relay->r_cfg->tls_ingest ? relay->r_tls : NULL)) == NULL) {
		net_conn_release(src);
		evutil_closesocket(fd);
		return;
	}
	if ((uc = upconn_new(u, bev, peer, 0)) == NULL) {
		net_conn_release(src);
		bufferevent_free(bev);
		return;
	}
	uc->uc_src = src;
	u->u_stream->st_stats.up_connections++;
	log_debug("%s: accepted %s on the ingest port", uc->uc_name, peer);
	/*
	 * With or without tokens: the cache connects when it has a frame to
	 * send, so a connection silent for auth-timeout is not a publisher
	 * and must not hold an ingest slot (max-ingest-conns-per-ip).
	 */
	tv.tv_sec = u->u_stream->st_cfg->auth_timeout_ms / 1000;
	tv.tv_usec = (u->u_stream->st_cfg->auth_timeout_ms % 1000) * 1000;
	if ((uc->uc_timer = evtimer_new(relay->r_base, upconn_timeout_cb,
	    uc)) == NULL) {
		upconn_close(uc, "out of memory");
		return;
	}
	evtimer_add(uc->uc_timer, &tv);
	/* read the handshake even while paused: promotion pauses it */
	bufferevent_enable(bev, EV_READ);
}

/* ---- pull ------------------------------------------------------------ */

static void
pull_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	pull_connect(arg);
}

static void
pull_schedule(struct upstream *u)
{
	struct wr_config *cfg = u->u_stream->st_cfg;
	uint64_t delay = cfg->upstream_backoff_min_ms;
	uint32_t r = 0;
	struct timeval tv;

	for (unsigned i = 0; i < u->u_attempt && delay < cfg->upstream_backoff_max_ms; i++)
		delay *= 2;
	if (delay > cfg->upstream_backoff_max_ms || u->u_epoch[0] != '\0')
		delay = cfg->upstream_backoff_max_ms;
	/* jitter: between half and all of the delay */
	(void)getrandom(&r, sizeof(r), GRND_NONBLOCK);
	delay = delay / 2 + (delay / 2 + 1) * (r % 1000) / 1000;
	u->u_attempt++;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	if (u->u_refused[0] != '\0')
		log_debug("pull: reconnecting to %s in %" PRIu64 " ms (attempt "
		    "%u)", cfg->upstream, delay, u->u_attempt);
	else
		log_info("pull: reconnecting to %s in %" PRIu64 " ms (attempt "
		    "%u)", cfg->upstream, delay, u->u_attempt);
	evtimer_add(u->u_retry, &tv);
}

static void
pull_connect(struct upstream *u)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct bufferevent *bev;
	struct upconn *uc;
	char err[256];

	if (u->u_stopped)
		return;
	if (relay_addr_parse(u->u_stream->st_cfg->upstream, &ss, &sslen, err,
	    sizeof(err)) == -1) {
		log_warnx("pull: %s", err);
		u->u_stream->st_stats.up_connect_failures++;
		pull_schedule(u);
		return;
	}
	if ((bev = net_bev_connect(u->u_stream->st_upstream_tls,
	    u->u_stream->st_cfg->upstream_tls_server_name)) == NULL) {
		pull_schedule(u);
		return;
	}
	if ((uc = upconn_new(u, bev, u->u_stream->st_cfg->upstream, 1)) == NULL) {
		bufferevent_free(bev);
		pull_schedule(u);
		return;
	}
	u->u_stream->st_stats.up_reconnects++;
	if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss,
	    (int)sslen) == -1) {
		u->u_stream->st_stats.up_connect_failures++;
		upconn_close(uc, "cannot connect: %s",
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		return;
	}
}

static void
upconn_pull_connected(struct upconn *uc)
{
	struct evbuffer *out = bufferevent_get_output(uc->uc_bev);
	const char *tok = auth_upstream_token(upconn_stream(uc)->st_tokens);
	struct segstore *ss = upconn_stream(uc)->st_store;
	const char *t = tok ? tok : "-";
	char line[HANDSHAKE_LINE_MAX + 2];
	int n;

	if (upconn_stream(uc)->st_cfg->upstream_protocol == UPSTREAM_PROTO_AUTH)
		n = handshake_format_auth(line, sizeof(line), tok ? tok : "",
		    tok ? strlen(tok) : 0);
	else if (segstore_next(ss) == 0)
		n = handshake_format_sub(line, sizeof(line), t, strlen(t),
		    HANDSHAKE_FROM_EARLIEST, 0, 0, 0, HANDSHAKE_COMPRESS_NONE);
	else
		n = handshake_format_sub(line, sizeof(line), t, strlen(t),
		    HANDSHAKE_FROM_SEQ, segstore_next(ss), 1,
		    segstore_epoch(ss), HANDSHAKE_COMPRESS_NONE);
	if (n == -1) {
		upconn_close(uc, "the upstream token cannot be sent in a "
		    "handshake line");
		return;
	}
	evbuffer_add(out, line, (size_t)n);
	if (upconn_stream(uc)->st_cfg->upstream_protocol == UPSTREAM_PROTO_AUTH) {
		TAILQ_REMOVE(&uc->uc_up->u_pending, uc, uc_entry);
		uc->uc_up->u_publisher = uc;
		uc->uc_state = UC_STREAM;
		/*
		 * No reply in this protocol: a cache that refuses the token
		 * just closes. The backoff starts over once frames arrive
		 * (upconn_publish), not at connect.
		 */
		log_info("%s: connected to cache %s, live from the next frame "
		    "it writes (gaps while disconnected cannot be detected)",
		    uc->uc_name, uc->uc_peer);
	} else {
		TAILQ_REMOVE(&uc->uc_up->u_pending, uc, uc_entry);
		uc->uc_up->u_publisher = uc;
		uc->uc_state = UC_REPLY;
		log_info("%s: connected to relay %s, asking from sequence %"
		    PRIu64, uc->uc_name, uc->uc_peer, segstore_next(ss));
	}
	if (uc->uc_up->u_paused)
		bufferevent_disable(uc->uc_bev, EV_READ);
	else
		bufferevent_enable(uc->uc_bev, EV_READ);
	if (uc->uc_state == UC_STREAM)
		(void)upconn_streaming(uc);
}

/* ---- flow control, life cycle ---------------------------------------- */

void
upstream_flow(struct upstream *u)
{
	struct segstore_state st;
	struct wr_config *cfg = u->u_stream->st_cfg;
	int pause;

	segstore_poll(u->u_stream->st_store, &st);
	if (!u->u_paused)
		pause = st.ss_error != 0 ||
		    st.ss_pending_bytes > cfg->ingest_pause_bytes;
	else
		pause = st.ss_error != 0 ||
		    st.ss_pending_bytes > cfg->ingest_resume_bytes;
	if (pause == u->u_paused)
		return;
	u->u_paused = pause;
	if (pause) {
		u->u_stream->st_stats.up_paused++;
		if (st.ss_error)
			log_warnx("upstream: paused reading: storage error "
			    "(%s); resumes when the disk recovers",
			    strerror(st.ss_error));
		else
			log_info("upstream: paused reading: %zu bytes waiting "
			    "for the disk", st.ss_pending_bytes);
	} else
		log_info("upstream: resumed reading");
	if (u->u_publisher != NULL)
		upconn_reading(u->u_publisher, !pause);
}

/* The upstream of a running stream that listens on addr, or NULL. */
static struct upstream *
upstream_owner(const char *addr)
{
	struct stream *st;

	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		if (st->st_up != NULL && st->st_up->u_listener != NULL &&
		    strcmp(st->st_cfg->ingest, addr) == 0)
			return st->st_up;
	return NULL;
}

/*
 * On a shared ingest listener: the stream whose publish tokens hold the
 * token, among those on the listener of u's stream; or NULL.
 */
static struct upstream *
upstream_route(struct upstream *u, const void *tok, size_t len)
{
	const char *addr = u->u_stream->st_cfg->ingest;
	struct stream *st;

	TAILQ_FOREACH(st, &relay->r_streams, st_entry)
		if (st->st_up != NULL && st->st_cfg->upstream == NULL &&
		    st->st_cfg->ingest != NULL &&
		    strcmp(st->st_cfg->ingest, addr) == 0 &&
		    publish_required(st) && tokenset_match(
		    &st->st_tokens->at_publish, tok, len))
			return st->st_up;
	return NULL;
}

struct upstream *
upstream_new(struct stream *st, char *errbuf, size_t errlen)
{
	struct wr_config *cfg = st->st_cfg;
	struct upstream *u, *owner;

	if ((u = calloc(1, sizeof(*u))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	u->u_stream = st;
	TAILQ_INIT(&u->u_pending);
	fcw2_checker_init(&u->u_chk, cfg->max_frame_bytes, 1);
	if (cfg->ingest != NULL && cfg->upstream != NULL)
		log_info("ingest: listener not opened: this relay pulls from "
		    "%s (one upstream at a time)", cfg->upstream);
	else if (cfg->ingest != NULL && (owner = upstream_owner(cfg->ingest)) !=
	    NULL) {
		/* another stream listens there: it routes by publish token */
		owner->u_routed = 1;
		log_info("%s: ingest: shares %s with stream %s (routed by "
		    "publish token)", st->st_name, cfg->ingest,
		    owner->u_stream->st_name);
	} else if (cfg->ingest != NULL) {
		u->u_listener = net_listen(cfg->ingest, ingest_accept_cb, u,
		    cfg->tls_ingest ? "ingest (TLS)" : "ingest", errbuf, errlen);
		if (u->u_listener == NULL)
			goto fail;
	}
	if ((u->u_retry = evtimer_new(relay->r_base, pull_retry_cb, u)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	/* a JetStream upstream is jetstream.c's (main.c starts it) */
	if (cfg->upstream != NULL &&
	    cfg->upstream_protocol != UPSTREAM_PROTO_JETSTREAM)
		pull_connect(u);
	return u;
fail:
	upstream_free(u);
	return NULL;
}

void
upstream_stop(struct upstream *u)
{
	struct upconn *uc;

	u->u_stopped = 1;
	if (u->u_listener != NULL) {
		net_listener_free(u->u_listener);
		u->u_listener = NULL;
	}
	if (u->u_retry != NULL)
		evtimer_del(u->u_retry);
	while ((uc = TAILQ_FIRST(&u->u_pending)) != NULL)
		upconn_close(uc, "relay stopping");
	if (u->u_publisher != NULL) {
		/* keep every whole frame that already arrived */
		if (upconn_ingest(u->u_publisher) == 0)
			upconn_close(u->u_publisher, "relay stopping");
	}
}

void
upstream_free(struct upstream *u)
{
	if (u == NULL)
		return;
	upstream_stop(u);
	if (u->u_retry != NULL)
		event_free(u->u_retry);
	fcw2_checker_free(&u->u_chk);
	free(u);
}

void
upstream_status(const struct upstream *u, struct upstream_status *st)
{
	memset(st, 0, sizeof(*st));
	st->us_paused = u->u_paused;
	st->us_pull = u->u_stream->st_cfg->upstream != NULL;
	st->us_last_frame_ms = u->u_last_frame_ms;
	snprintf(st->us_epoch, sizeof(st->us_epoch), "%s", u->u_epoch);
	if (u->u_publisher != NULL) {
		st->us_connected = u->u_publisher->uc_state == UC_STREAM;
		snprintf(st->us_peer, sizeof(st->us_peer), "%s",
		    u->u_publisher->uc_peer);
		snprintf(st->us_name, sizeof(st->us_name), "%s",
		    u->u_publisher->uc_name);
		st->us_conn_bytes = u->u_publisher->uc_offset +
		    (u->u_publisher->uc_checked - u->u_publisher->uc_pub);
	}
}
