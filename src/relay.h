/*
 * relay.h: the running process's shared state (event loop thread only).
 */
#ifndef WALRELAY_RELAY_H
#define WALRELAY_RELAY_H

#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "config.h"
#include "frame.h"
#include "segment.h"
#include "stream.h"

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

/*
 * The process: what every stream shares. Per-stream state (store, upstream,
 * fan-out, counters) lives in struct stream (stream.h).
 */
struct relay {
	struct event_base	*r_base;
	struct wr_config	*r_cfg;		/* process-wide keys */
	struct http_server	*r_http;
	struct tls_ctx		*r_tls;		/* listeners, or NULL */
	struct stream_list	 r_streams;
	size_t			 r_nstreams;
	uint64_t		 r_next_id;	/* connection ids */
	int			 r_stopping;
	uint64_t		 r_started_ms;
	/* SIGHUP, for /metrics */
	uint64_t		 r_reloads_ok;
	uint64_t		 r_reloads_failed;	/* kept the running config */
	uint64_t		 r_reload_last_ms;	/* wall clock, 0: none yet */
	int			 r_reload_last_ok;
};

extern struct relay *relay;

uint64_t	relay_now_ms(void);
uint64_t	relay_conn_id(void);
/* The stream named name, or NULL. */
struct stream	*relay_stream(const char *name);
/* Is this address (sockaddr) on loopback? */
int		relay_addr_is_loopback(const struct sockaddr *);
/* "1.2.3.4:5", "[::1]:5" */
void		relay_addr_str(const struct sockaddr *, char *, size_t);
/* Parse host:port / [v6]:port into a sockaddr (numeric or resolved). */
int		relay_addr_parse(const char *, struct sockaddr_storage *,
		    socklen_t *, char *errbuf, size_t errlen);

#endif
