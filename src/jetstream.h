/*
 * jetstream.h: a stream into and out of NATS JetStream (libnats).
 *
 * Sink: every stored frame, in sequence order, becomes one JetStream
 * message on subject walrelay.<stream>: the FCW2 frame byte for byte,
 * headers Walrelay-Seq, Walrelay-Epoch and Nats-Msg-Id <epoch>-<seq>, and
 * Nats-Expected-Last-Sequence (the stream holds only this subject) so that
 * the server refuses a gap or a repeat. A thread of this module reads durable frames from the
 * segment files and publishes them asynchronously with a bounded window
 * of unacknowledged messages; libnats calls back on its own threads. The
 * highest acknowledged position is kept in jetstream-<stream>.state in the
 * data directory (checksummed) and JetStream's own last message decides
 * where publishing resumes after a restart or an outage.
 *
 * Source: an ordered consumer from the relay's own next sequence. Every
 * message is checked (epoch, sequence, one whole valid FCW2 frame) on this
 * module's thread, and runs of them are handed to the loop as chunks.
 *
 * Threads: jetstream_* functions are called on the event loop thread. The
 * module's thread never touches the loop's state: it asks the loop (an
 * event) to locate and unpin segment spans, and hands chunks over through
 * a queue. The loop never waits on the thread or on NATS.
 */
#ifndef WALRELAY_JETSTREAM_H
#define WALRELAY_JETSTREAM_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct segstore;
struct segstore_state;
struct chunk;
struct jetstream;

struct jetstream_config {
	const char	*jc_urls;		/* nats://h:p,... */
	const char	*jc_stream;		/* JetStream stream name */
	const char	*jc_data_dir;		/* sink: the state file */
	int		 jc_must_exist;		/* sink: never create the stream */
	unsigned	 jc_replicas;		/* sink: a created stream's R */
	unsigned	 jc_window;		/* sink: unacknowledged messages */
	size_t		 jc_max_frame_bytes;	/* source: the frame cap */
	size_t		 jc_handoff_bytes;	/* source: queued to the loop */
	unsigned	 jc_backoff_min_ms;
	unsigned	 jc_backoff_max_ms;
	/* credentials and TLS, from files; NULL when not used */
	const char	*jc_user_file;		/* user:password */
	const char	*jc_token_file;
	const char	*jc_nkey;		/* public key */
	const char	*jc_nkey_seed_file;
	const char	*jc_creds_file;
	const char	*jc_tls_ca;
	const char	*jc_tls_cert;
	const char	*jc_tls_key;
};

/* What the source needs from its stream (loop thread). */
struct jetstream_source_hooks {
	void		*jh_arg;
	/* the store's next sequence and epoch (at start) */
	uint64_t	(*jh_next)(void *arg);
	uint64_t	(*jh_epoch)(void *arg);
	/*
	 * An empty store takes the origin's epoch and its first sequence.
	 * 0, or -1 (the store holds frames).
	 */
	int		(*jh_adopt)(void *arg, uint64_t epoch, uint64_t next);
	/* Store and publish a chunk of validated frames (ch_seq is set). */
	void		(*jh_deliver)(void *arg, struct chunk *);
	/* 1 while the store is behind: hold the next chunks back */
	int		(*jh_busy)(void *arg);
};

enum jetstream_state {
	JS_STATE_CONNECTING = 0,	/* no NATS connection yet */
	JS_STATE_STREAMING,		/* connected and positioned */
	JS_STATE_DISCONNECTED,		/* lost NATS; libnats reconnects */
	JS_STATE_ERROR,			/* refused; retried with backoff */
};

struct jetstream_status {
	int		 jst_sink;		/* 1 sink, 0 source */
	int		 jst_state;		/* enum jetstream_state */
	char		 jst_stream[72];
	char		 jst_server[128];	/* connected URL */
	char		 jst_error[256];	/* the last error, "" when none */
	uint64_t	 jst_position;	/* sink: frames below it acknowledged;
					   source: next sequence expected */
	uint64_t	 jst_lag_frames;	/* sink: durable, not acknowledged */
	uint64_t	 jst_lag_bytes;
	uint64_t	 jst_lag_ms;		/* age of the oldest of them */
	uint64_t	 jst_inflight;		/* sink: published, unacknowledged */
	uint64_t	 jst_messages;		/* published / received */
	uint64_t	 jst_bytes;
	uint64_t	 jst_errors;		/* refused publishes, bad messages */
	uint64_t	 jst_resyncs;		/* repositionings */
	uint64_t	 jst_reconnects;
};

/* 1 when built with libnats. */
int		 jetstream_available(void);
const char	*jetstream_state_name(int);

/*
 * Start the sink: reads the state file, starts the thread (which
 * connects, creates the stream if allowed, positions and publishes).
 * Returns NULL with errbuf (bad credentials file, no libnats).
 */
struct jetstream *jetstream_sink_new(const struct jetstream_config *,
		    struct event_base *, struct segstore *, char *errbuf,
		    size_t errlen);
/* The store moved (loop): new durable frames, a new earliest. */
void		 jetstream_store_moved(struct jetstream *,
		    const struct segstore_state *);

struct jetstream *jetstream_source_new(const struct jetstream_config *,
		    struct event_base *, const struct jetstream_source_hooks *,
		    char *errbuf, size_t errlen);
/* The store caught up (loop): deliver what the source holds back. */
void		 jetstream_flow(struct jetstream *);

/* Stop the thread (records the acknowledged position), free. */
void		 jetstream_free(struct jetstream *);
void		 jetstream_status(struct jetstream *, struct jetstream_status *);
/* 1 when streaming; else 0 and why in buf. */
int		 jetstream_ready(struct jetstream *, char *buf, size_t len);

#endif
