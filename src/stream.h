/*
 * stream.h: one stream of frames: its store (and writer thread), its
 * upstream, its fan-out tail and subscribers, the step that makes durable
 * frames sendable, its counters and its janitor. A process hosts one or
 * more streams; every connection reaches its stream through its own
 * pointers (upconn -> upstream -> stream, subscriber -> fanout -> stream).
 */
#ifndef WALRELAY_STREAM_H
#define WALRELAY_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "segment.h"

struct event;
struct upstream;
struct fanout;
struct auth_tokens;
struct tls_ctx;
struct wr_config;
struct jetstream;
struct snapshotter;
struct iopool;

/* Stream names: [A-Za-z0-9_.-]{1,64}. */
#define STREAM_NAME_MAX		64
#define STREAM_DEFAULT		"default"

/* Counters for /metrics: names match the cache's export counters. */
struct stream_stats {
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
	uint64_t	 sub_tls_ktls;		/* TLS, sent with kernel TLS */
	uint64_t	 sub_tls_openssl;	/* TLS, encrypted by OpenSSL */
};

struct stream {
	char			 st_name[STREAM_NAME_MAX + 1];
	/* its settings: process-wide keys are read from relay->r_cfg */
	struct wr_config	*st_cfg;
	struct auth_tokens	*st_tokens;
	struct tls_ctx		*st_upstream_tls;	/* pull, or NULL */
	struct segstore		*st_store;
	/*
	 * The store's state as of the last stream_store_update(): what the
	 * loop has acted on (fanout_advance, upstream flow). Read-only for
	 * everyone; a module that wants fresher numbers polls its own copy.
	 */
	struct segstore_state	 st_ss;
	struct upstream		*st_up;
	struct fanout		*st_fan;
	struct jetstream	*st_js;		/* JetStream sink or source */
	struct wakeup		*st_store_wake;	/* writer -> loop */
	struct event		*st_janitor;	/* once a second */
	struct snapshotter	*st_snap;	/* snapshots, compaction */
	struct iopool		*st_io;		/* file work off the loop */
	struct stream_stats	 st_stats;
	/*
	 * 0 while an empty stream that pulls from another relay has not yet
	 * adopted the upstream's epoch and sequence: subscribers must wait.
	 */
	int			 st_positioned;
	int			 st_stopping;
	int			 st_tls_logged;	/* 1 << SUBSCRIBER_TLS_*: said */
	TAILQ_ENTRY(stream)	 st_entry;
};
TAILQ_HEAD(stream_list, stream);

/* Is this a valid stream name? */
int		 stream_name_valid(const char *);
/*
 * Open the stream's store, start its writer thread, its fan-out and its
 * upstream (listeners and pull client as its config says). cfg stays
 * the caller's; the stream takes tokens and upstream_tls (even on failure).
 */
struct stream	*stream_new(const char *name, struct wr_config *cfg,
		    struct auth_tokens *tokens, struct tls_ctx *upstream_tls,
		    char *errbuf, size_t errlen);
/*
 * Open the stores of n streams (segstore_open) on several threads at
 * once: a start with many streams waits for their recoveries and
 * metadata fsyncs together, not one after another. Returns 0 with every
 * stores[i] set, or -1 with errbuf naming the first stream (in cfgs'
 * order) that failed, every store closed again.
 */
struct segstore;
int		 stream_open_stores(struct wr_config *const *cfgs, size_t n,
		    struct segstore **stores, char *errbuf, size_t errlen);
/* stream_new with its store already open (taken, even on failure). */
struct stream	*stream_new_opened(const char *name, struct wr_config *cfg,
		    struct segstore *store, struct auth_tokens *tokens,
		    struct tls_ctx *upstream_tls, char *errbuf, size_t errlen);
/*
 * Close every connection, make everything durable and close the store.
 * Returns 0, or -1 when frames could not be made durable (dropped).
 */
int		 stream_close(struct stream *);
/* Free a closed stream, once the loop has run its last file spans. */
void		 stream_free(struct stream *);
/* Shutdown: no new connections; close upstream connections. */
void		 stream_stop(struct stream *);
/* Stopping: everything durable (or the disk failing) and drained. */
int		 stream_stopped(struct stream *);
/* Poll the store into st->st_ss (its one writer: the loop). */
const struct segstore_state *stream_store_update(struct stream *);
/*
 * Frames subscribers may be sent: [earliest, stream_sendable()), the
 * durable ones (fsync always, interval), every frame handed to the writer
 * (fsync never). A corrupt stored frame stops only the reader that
 * reaches it (subscriber.c), never this bound.
 */
uint64_t	 stream_sendable(const struct stream *);
/*
 * A chunk of validated frames from the upstream: to the writer and the
 * tail. stream_published, once a read's chunks are in: with fsync never
 * they are sendable now, without waiting for the writer.
 */
void		 stream_publish(struct stream *, struct chunk *);
void		 stream_published(struct stream *);
/* Swap in reloaded tokens (the stream frees the old ones). */
void		 stream_set_tokens(struct stream *, struct auth_tokens *);
/* Why the stream is not ready (into buf), or NULL when it is. */
const char	*stream_not_ready(struct stream *, char *buf, size_t len);
/* The first corrupt range of the store: 1 (filled in), or 0. */
int		 stream_corrupt(struct stream *, struct segstore_corrupt *);

#endif
