/*
 * net.h: listeners and bufferevents, plain or TLS (through tls.c).
 */
#ifndef WALRELAY_NET_H
#define WALRELAY_NET_H

#include <stddef.h>
#include <sys/socket.h>

struct bufferevent;
struct tls_ctx;
struct net_listener;

typedef void (*net_accept_cb)(int fd, struct sockaddr *, int, void *);

/*
 * Listen on "host:port". The accept path survives fd exhaustion: on EMFILE
 * or ENFILE the listener pauses briefly instead of spinning.
 */
struct net_listener	*net_listen(const char *addr, net_accept_cb, void *arg,
			    const char *what, char *errbuf, size_t errlen);
void			 net_listener_free(struct net_listener *);

/*
 * Connections per source address, of one kind (port: each kind has its
 * own tables and limits), counted twice: per listener (scope names it: the
 * stream that owns it) against `limit`, and over every listener of the
 * process against `total` (0: no limit). A host that connects to many
 * streams' own listeners uses each listener's allowance apart; on a
 * listener several streams share, the stream is known only after the
 * handshake, so they share that listener's count. net_conn_acquire counts
 * the connection in both and returns its handle, or NULL when the address
 * is at a limit (*over says which: NET_OVER_LISTENER or NET_OVER_TOTAL);
 * net_conn_release gives both back.
 */
#define NET_PORT_INGEST		0
#define NET_PORT_SUBSCRIBER	1
#define NET_PORTS		2

#define NET_OVER_LISTENER	0
#define NET_OVER_TOTAL		1

struct net_conn;
struct net_conn		*net_conn_acquire(unsigned port, const void *scope,
			    const struct sockaddr *, unsigned limit,
			    unsigned total, int *over);
void			 net_conn_release(struct net_conn *);

/* A bufferevent for an accepted socket, TLS when tls is non-NULL. */
struct bufferevent	*net_bev_accepted(int fd, struct tls_ctx *tls);
/* A bufferevent for an outgoing connection (connect it afterwards). */
struct bufferevent	*net_bev_connect(struct tls_ctx *tls,
			    const char *server_name);
int			 net_bev_is_tls(struct bufferevent *);
/* Why a bufferevent failed: socket error or TLS error, as text. */
const char		*net_bev_error(struct bufferevent *);

#endif
