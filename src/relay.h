/*
 * relay.h: the running relay's shared state (event loop thread only).
 */
#ifndef WALRELAY_RELAY_H
#define WALRELAY_RELAY_H

#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "config.h"
#include "frame.h"
#include "segment.h"

struct event_base;
struct event;
struct evconnlistener;
struct bufferevent;
struct upstream;
struct fanout;
struct subscriber;
struct http_server;
struct auth_tokens;
struct tls_ctx;
struct snapshotter;

/* Counters for /metrics: names match the cache's export counters. */
struct relay_stats {
	/* upstream (ingest and pull) */
	uint64_t	 up_connections;	/* accepted or connected */
	uint64_t	 up_rejected_auth;	/* missing or bad auth line */
	uint64_t	 up_rejected_limit;	/* connection limits */
	uint64_t	 up_rejected_timeout;	/* no auth line in auth-timeout */
	uint64_t	 up_rejected_tls;	/* TLS handshake failed */
	uint64_t	 up_replaced;		/* publisher replaced by a newer one */
	uint64_t	 up_frames;		/* frames validated and stored */
	uint64_t	 up_bytes;
	uint64_t	 up_bad_frames;		/* connections closed on a bad frame */
	uint64_t	 up_partial_dropped;	/* partial frames dropped at close */
	uint64_t	 up_reconnects;		/* pull reconnects */
	uint64_t	 up_connect_failures;
	uint64_t	 up_paused;		/* times reading was paused */
	/* downstream */
	uint64_t	 sub_accepted;
	uint64_t	 sub_rejected_auth;
	uint64_t	 sub_rejected_busy;
	uint64_t	 sub_rejected_request;	/* bad-request, gone, future, epoch */
	uint64_t	 sub_rejected_limit;	/* per-address limit */
	uint64_t	 sub_rejected_timeout;	/* no handshake in auth-timeout */
	uint64_t	 sub_rejected_tls;	/* TLS handshake failed */
	uint64_t	 sub_disconnected_gone;	/* position deleted by retention */
	uint64_t	 sub_disconnected_lag;	/* over max-lag */
	uint64_t	 sub_disconnected_timeout; /* no progress for subscriber-timeout */
	uint64_t	 sub_disconnected_corrupt; /* reached a corrupt stored frame */
	uint64_t	 sub_rejected_corrupt;	/* asked for a corrupt stored frame */
	uint64_t	 sub_frames_sent;
	uint64_t	 sub_bytes_sent;
	uint64_t	 sub_disk_reads;	/* spans served from segment files */
};

struct relay {
	struct event_base	*r_base;
	struct wr_config	*r_cfg;
	struct segstore		*r_store;
	struct snapshotter	*r_snap;	/* snapshots of the store */
	/*
	 * The store's state as of the last relay_store_update(): what the
	 * loop has acted on (fanout_advance, upstream flow). Read-only for
	 * everyone; a module that wants fresher numbers polls its own copy.
	 */
	const struct segstore_state *r_ss;
	struct upstream		*r_up;
	struct fanout		*r_fan;
	struct http_server	*r_http;
	struct auth_tokens	*r_tokens;
	struct tls_ctx		*r_tls;		/* listeners, or NULL */
	struct tls_ctx		*r_upstream_tls;	/* pull, or NULL */
	struct event		*r_store_ev;	/* writer -> loop */
	struct relay_stats	 r_stats;
	uint64_t		 r_next_id;	/* connection ids */
	int			 r_stopping;
	/*
	 * 0 while an empty relay that pulls from another relay has not yet
	 * adopted the upstream's epoch and sequence: subscribers must wait.
	 */
	int			 r_positioned;
	uint64_t		 r_started_ms;
};

extern struct relay *relay;

uint64_t	relay_now_ms(void);
uint64_t	relay_conn_id(void);
/*
 * Poll the store into relay->r_ss (its one writer: the loop, when the
 * writer thread reports a change, at start and at stop).
 */
const struct segstore_state *relay_store_update(void);
/*
 * Frames subscribers may be sent: [earliest, relay_sendable()), the
 * durable ones. A corrupt stored frame stops only the reader that reaches
 * it (subscriber.c), never this bound.
 */
uint64_t	relay_sendable(void);
/* Is this address (sockaddr) on loopback? */
int		relay_addr_is_loopback(const struct sockaddr *);
/* "1.2.3.4:5", "[::1]:5" */
void		relay_addr_str(const struct sockaddr *, char *, size_t);
/* Parse host:port / [v6]:port into a sockaddr (numeric or resolved). */
int		relay_addr_parse(const char *, struct sockaddr_storage *,
		    socklen_t *, char *errbuf, size_t errlen);

#endif
