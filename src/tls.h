/*
 * tls.h: TLS contexts for the listeners (server) and the pull connection
 * (client). The only module that includes OpenSSL headers.
 *
 * A reload builds new contexts from the files and swaps them in only if
 * every one loads; connections already established keep the SSL_CTX they
 * started with (each holds a reference).
 */
#ifndef WALRELAY_TLS_H
#define WALRELAY_TLS_H

#include <stddef.h>

struct tls_ctx;
struct bufferevent;
struct event_base;

struct tls_files {
	const char	*tf_cert;	/* PEM chain; server: required */
	const char	*tf_key;
	const char	*tf_ca;		/* verify the peer against this */
	int		 tf_verify_peer; /* server: require a client cert */
	const char	*tf_server_name; /* client: SNI and host check */
};

struct tls_ctx	*tls_server_new(const struct tls_files *, char *errbuf,
		    size_t errlen);
struct tls_ctx	*tls_client_new(const struct tls_files *, char *errbuf,
		    size_t errlen);
void		 tls_free(struct tls_ctx *);

/* bufferevents over TLS (socket mode, deferred callbacks). */
struct bufferevent *tls_bev_accepted(struct event_base *, struct tls_ctx *,
		    int fd);
struct bufferevent *tls_bev_connect(struct event_base *, struct tls_ctx *);
int		 tls_bev_is_tls(struct bufferevent *);
/*
 * After the handshake: 1 when the kernel frames and encrypts this
 * connection's sends (kTLS), 0 when OpenSSL does. Its cipher suite
 * (NULL: not TLS).
 */
int		 tls_bev_ktls_send(struct bufferevent *);
const char	*tls_bev_cipher(struct bufferevent *);
/* Why a connection is not on kTLS, for the log. */
const char	*tls_ktls_missing(void);
/* The TLS error behind a failed bufferevent, or NULL. */
const char	*tls_bev_error(struct bufferevent *, char *buf, size_t len);

/*
 * A blocking client connection over a connected socket (walcat): the
 * handshake, then reads and writes. The socket stays the caller's.
 */
struct tls_conn;
struct tls_conn	*tls_conn_connect(struct tls_ctx *, int fd, char *errbuf,
		    size_t errlen);
/* Bytes read, 0 at the end of the stream, -1 with errbuf. */
long		 tls_conn_read(struct tls_conn *, void *, size_t, char *errbuf,
		    size_t errlen);
/* 0 when everything was written, -1 with errbuf. */
int		 tls_conn_write(struct tls_conn *, const void *, size_t,
		    char *errbuf, size_t errlen);
void		 tls_conn_free(struct tls_conn *);

#endif
