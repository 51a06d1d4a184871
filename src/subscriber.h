/*
 * subscriber.h: one downstream connection: the handshake, the cursor, the
 * refill from the tail or the segment files, the lag policy, the one close
 * path. Each subscriber belongs to one stream's fan-out.
 */
#ifndef WALRELAY_SUBSCRIBER_H
#define WALRELAY_SUBSCRIBER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct evbuffer;
struct fanout;
struct subscriber;

enum subscriber_state {
	SUB_HANDSHAKE,
	SUB_STREAM,
	SUB_FLUSH,	/* a reply or error is being written, then close */
	SUB_DEAD,	/* closed, waiting to be freed from the loop */
};

/* Who encrypts a subscriber's bytes. */
#define SUBSCRIBER_TLS_NONE	0	/* plain TCP */
#define SUBSCRIBER_TLS_OPENSSL	1	/* OpenSSL, in the relay */
#define SUBSCRIBER_TLS_KTLS	2	/* the kernel (kTLS) */

/* For /v1/status, /metrics and tests. */
struct subscriber_status {
	char		 ss_name[24];	/* "sub-42" */
	char		 ss_peer[64];
	int		 ss_state;	/* enum subscriber_state */
	int		 ss_resuming;	/* FCWAL-SUB/1 */
	int		 ss_zstd;
	int		 ss_on_disk;	/* reading segment files */
	int		 ss_tls;	/* SUBSCRIBER_TLS_* */
	int		 ss_waiting;	/* caught up, waiting for frames */
	uint64_t	 ss_start;	/* first frame it asked for */
	uint64_t	 ss_pos;	/* next frame to queue */
	uint64_t	 ss_lag;
	uint64_t	 ss_bytes_queued;
	size_t		 ss_buffered;	/* bytes in its output buffer */
	uint64_t	 ss_connected_ms;
	/* filled by fanout_status_foreach only */
	uint64_t	 ss_lag_bytes;	/* bytes of the ss_lag frames */
	uint64_t	 ss_lag_us;	/* age of the oldest of them */
	int		 ss_lag_exact;	/* 0: estimated from segment files */
	int		 ss_has_margin_bytes;	/* retain-bytes is set */
	uint64_t	 ss_margin_bytes;	/* bytes until retention by size
					   may delete its position */
	int		 ss_has_margin_s;	/* retain-age is set */
	uint64_t	 ss_margin_s;	/* seconds until retention by age
					   may delete its position */
};

/*
 * Accept a connection on a subscriber listener of fo's stream. On a
 * listener several streams share, the handshake picks the stream and the
 * subscriber moves there. Returns the subscriber, or NULL (fd closed).
 */
struct subscriber *subscriber_accept(struct fanout *, int fd,
		    struct sockaddr *, int);
/*
 * The store has finished reading something: a subscriber whose handshake
 * waited for the check of its first frame answers now.
 */
void		 subscriber_handshake_resume(struct subscriber *);
/* Queue frames up to the high watermark. */
void		 subscriber_refill(struct subscriber *);
/* The one close path: log, count, unlink; freed later from the loop. */
void		 subscriber_close(struct subscriber *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
/* Only from the fan-out's reaper. */
void		 subscriber_free(struct subscriber *);
/* Frames the subscriber is behind the newest sendable frame. */
uint64_t	 subscriber_lag(const struct subscriber *);
/* Sent everything sendable, and its output buffer is empty. */
int		 subscriber_drained(const struct subscriber *);
/* Close it when more than max frames behind (max-lag). */
void		 subscriber_enforce_lag(struct subscriber *, uint64_t max);
void		 subscriber_status(const struct subscriber *,
		    struct subscriber_status *);
/* Its output buffer (tests watch what is queued). */
struct evbuffer	*subscriber_output(struct subscriber *);

#endif
