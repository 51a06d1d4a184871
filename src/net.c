/*
 * net.c: listeners and connection buffers.
 */
#include "autoconfig.h"

#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "log.h"
#include "net.h"
#include "relay.h"
#include "tls.h"

#define NET_ACCEPT_PAUSE_MS	100

struct net_listener {
	struct evconnlistener	*nl_lev;
	struct event		*nl_resume;
	net_accept_cb		 nl_cb;
	void			*nl_arg;
	int			 nl_loopback;
	char			 nl_what[24];
};

static void
net_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct net_listener *nl = arg;

	evconnlistener_enable(nl->nl_lev);
}

static void
net_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(5, 10);
	struct net_listener *nl = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, NET_ACCEPT_PAUSE_MS * 1000 };

	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		/* out of descriptors: stop accepting for a moment, not spin */
		log_limited(&rl, LOG_LEVEL_WARN, "%s: accept: %s; pausing the "
		    "listener for %d ms", nl->nl_what, strerror(err),
		    NET_ACCEPT_PAUSE_MS);
		evconnlistener_disable(lev);
		evtimer_add(nl->nl_resume, &tv);
		return;
	}
	log_limited(&rl, LOG_LEVEL_WARN, "%s: accept: %s", nl->nl_what,
	    strerror(err));
}

static void
net_accept(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct net_listener *nl = arg;
	int one = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/*
	 * Deadlines (auth-timeout) run from this accept, not from the start
	 * of a loop iteration that may have been busy for a while: refresh
	 * the loop's cached clock before the callback arms any timer.
	 */
	(void)event_base_update_cache_time(relay->r_base);
	nl->nl_cb(fd, sa, salen, nl->nl_arg);
}

struct net_listener *
net_listen(const char *addr, net_accept_cb cb, void *arg, const char *what,
    char *errbuf, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct net_listener *nl;

	if (relay_addr_parse(addr, &ss, &sslen, errbuf, errlen) == -1)
		return NULL;
	if ((nl = calloc(1, sizeof(*nl))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	nl->nl_cb = cb;
	nl->nl_arg = arg;
	nl->nl_loopback = relay_addr_is_loopback((struct sockaddr *)&ss);
	snprintf(nl->nl_what, sizeof(nl->nl_what), "%s", what);
	nl->nl_lev = evconnlistener_new_bind(relay->r_base, net_accept, nl,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
	    1024, (struct sockaddr *)&ss, (int)sslen);
	if (nl->nl_lev == NULL) {
		snprintf(errbuf, errlen, "%s listener on %s: %s", what, addr,
		    strerror(errno));
		free(nl);
		return NULL;
	}
	if ((nl->nl_resume = evtimer_new(relay->r_base, net_resume_cb,
	    nl)) == NULL) {
		net_listener_free(nl);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	evconnlistener_set_error_cb(nl->nl_lev, net_accept_error_cb);
	log_info("%s: listening on %s%s", what, addr,
	    nl->nl_loopback ? " (loopback)" : "");
	return nl;
}

void
net_listener_free(struct net_listener *nl)
{
	if (nl == NULL)
		return;
	if (nl->nl_resume != NULL)
		event_free(nl->nl_resume);
	evconnlistener_free(nl->nl_lev);
	free(nl);
}

/* ---- connections per source address --------------------------------- */

#define NET_SOURCE_BUCKETS	1024

struct net_source {
	struct net_source	*ns_next;
	int			 ns_family;
	uint8_t			 ns_addr[16];
	unsigned		 ns_count;
	const void		*ns_scope;	/* the listener's owner */
	unsigned		 ns_port;	/* NET_PORT_* */
	unsigned		 ns_bucket;
};

/* One table per port: one port's clients never use up the other's room. */
static struct net_source	*net_source_table[NET_PORTS][NET_SOURCE_BUCKETS];

static int
net_source_key(const struct sockaddr *sa, uint8_t addr[16], int *family)
{
	memset(addr, 0, 16);
	if (sa->sa_family == AF_INET) {
		memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		*family = AF_INET;
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		*family = AF_INET6;
		return 0;
	}
	return -1;
}

/* One connection's places in the counts. */
struct net_conn {
	struct net_source	*nc_listener;
	struct net_source	*nc_total;	/* NULL: no total limit */
};

static struct net_source *
net_source_acquire(unsigned port, const void *scope, const struct sockaddr *sa,
    unsigned limit)
{
	struct net_source *ns, **table;
	uint8_t addr[16];
	uintptr_t sp = (uintptr_t)scope;
	unsigned h = 2166136261u;
	int family;

	if (port >= NET_PORTS || net_source_key(sa, addr, &family) == -1)
		return NULL;
	table = net_source_table[port];
	for (int i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 16777619u;
	for (size_t i = 0; i < sizeof(sp); i++)
		h = (h ^ (unsigned)((sp >> (i * 8)) & 0xff)) * 16777619u;
	h %= NET_SOURCE_BUCKETS;
	for (ns = table[h]; ns != NULL; ns = ns->ns_next)
		if (ns->ns_family == family && ns->ns_scope == scope &&
		    memcmp(ns->ns_addr, addr, 16) == 0)
			break;
	if (ns == NULL) {
		if (limit == 0 || (ns = calloc(1, sizeof(*ns))) == NULL)
			return NULL;
		ns->ns_family = family;
		ns->ns_scope = scope;
		memcpy(ns->ns_addr, addr, 16);
		ns->ns_port = port;
		ns->ns_bucket = h;
		ns->ns_next = table[h];
		table[h] = ns;
	}
	if (ns->ns_count >= limit)
		return NULL;
	ns->ns_count++;
	return ns;
}

static void
net_source_release(struct net_source *ns)
{
	struct net_source **pp;

	if (ns == NULL || --ns->ns_count > 0)
		return;
	for (pp = &net_source_table[ns->ns_port][ns->ns_bucket]; *pp != ns;
	    pp = &(*pp)->ns_next)
		;
	*pp = ns->ns_next;
	free(ns);
}

/* The process-wide count of an address: the scope no listener has. */
static const char net_total_scope[] = "total";

struct net_conn *
net_conn_acquire(unsigned port, const void *scope, const struct sockaddr *sa,
    unsigned limit, unsigned total, int *over)
{
	struct net_conn *nc;

	*over = NET_OVER_LISTENER;
	if ((nc = calloc(1, sizeof(*nc))) == NULL)
		return NULL;
	if ((nc->nc_listener = net_source_acquire(port, scope, sa, limit)) ==
	    NULL) {
		free(nc);
		return NULL;
	}
	if (total > 0 && (nc->nc_total = net_source_acquire(port,
	    net_total_scope, sa, total)) == NULL) {
		*over = NET_OVER_TOTAL;
		net_source_release(nc->nc_listener);
		free(nc);
		return NULL;
	}
	return nc;
}

void
net_conn_release(struct net_conn *nc)
{
	if (nc == NULL)
		return;
	net_source_release(nc->nc_listener);
	net_source_release(nc->nc_total);
	free(nc);
}

struct bufferevent *
net_bev_accepted(int fd, struct tls_ctx *tls)
{
	if (tls != NULL)
		return tls_bev_accepted(relay->r_base, tls, fd);
	return bufferevent_socket_new(relay->r_base, fd,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
}

struct bufferevent *
net_bev_connect(struct tls_ctx *tls, const char *server_name)
{
	(void)server_name;	/* part of the TLS context */
	if (tls != NULL)
		return tls_bev_connect(relay->r_base, tls);
	return bufferevent_socket_new(relay->r_base, -1,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
}

int
net_bev_is_tls(struct bufferevent *bev)
{
	return tls_bev_is_tls(bev);
}

const char *
net_bev_error(struct bufferevent *bev)
{
	static char buf[512];
	int err = EVUTIL_SOCKET_ERROR();

	if (tls_bev_error(bev, buf, sizeof(buf)) != NULL)
		return buf;
	return err ? evutil_socket_error_to_string(err) : "unknown error";
}
