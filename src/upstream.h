/*
 * upstream.h: where frames come from. The ingest listener (the cache's
 * connect mode) and the pull client (a cache in listen mode, or another
 * relay), both ending in: bytes -> fcw2 validation -> segment -> fanout.
 */
#ifndef WALRELAY_UPSTREAM_H
#define WALRELAY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct stream;
struct upstream;
struct wr_config;

/*
 * The most a TLS connection's bufferevent reads in one go (plain TCP
 * reads straight into the connection's 256 KiB buffer, upstream.c).
 */
#define UPSTREAM_READ_MAX	(1024 * 1024)

/* Stream st's upstream: its ingest listener, or its pull client. */
struct upstream	*upstream_new(struct stream *st, char *errbuf, size_t errlen);
void		 upstream_free(struct upstream *);
/* A connection accepted on an ingest listener of u's stream. */
void		 upstream_accept(struct upstream *, int fd, struct sockaddr *,
		    int);
/* Storage moved: pause or resume reading (two thresholds). */
void		 upstream_flow(struct upstream *);
/* Stop accepting and close every upstream connection (shutdown). */
void		 upstream_stop(struct upstream *);

/* For /v1/status and /metrics. */
struct upstream_status {
	int		 us_connected;	/* a publisher or pull connection streams */
	int		 us_paused;	/* reading paused by flow control */
	int		 us_pull;	/* pull mode */
	char		 us_peer[64];
	char		 us_name[24];
	uint64_t	 us_conn_bytes;	/* bytes taken on the current connection */
	uint64_t	 us_last_frame_ms;
	char		 us_epoch[384];	/* "upstream epoch changed: ...", or "" */
};
void		 upstream_status(const struct upstream *, struct upstream_status *);

#endif
