/*
 * tls.c: OpenSSL 3 contexts and bufferevent_openssl connections.
 */
#include "autoconfig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls.h"

/* TLS 1.2 ciphers: forward secret AEAD only. */
#define TLS_CIPHERS_12	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
			"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
			"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
/*
 * TLS 1.3 suites, in the server's order of preference. OpenSSL's default
 * puts AES-256-GCM first; with AES instructions AES-128-GCM encrypts the
 * same bytes in 0.8 to 0.9 of its time (openssl speed -evp, 16 KiB) and
 * every subscriber byte is encrypted, so it comes first. Without them
 * ChaCha20-Poly1305 is the faster one. SSL_OP_PRIORITIZE_CHACHA lets a
 * client that lists ChaCha20 first (one without AES instructions) have it.
 */
#define TLS_SUITES_13_AES	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:" \
				"TLS_CHACHA20_POLY1305_SHA256"
#define TLS_SUITES_13_CHACHA	"TLS_CHACHA20_POLY1305_SHA256:" \
				"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"

struct tls_ctx {
	SSL_CTX		*t_ctx;
	int		 t_server;
	char		*t_server_name;
};

static void
ssl_errstr(const char *what, const char *file, char *errbuf, size_t errlen)
{
	unsigned long e = ERR_get_error();
	char reason[256];

	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	else
		snprintf(reason, sizeof(reason), "unknown error");
	ERR_clear_error();
	snprintf(errbuf, errlen, "%s%s%s: %s", what, file ? " " : "",
	    file ? file : "", reason);
}

/* Say so when our own certificate is outside its validity period. */
static void
tls_check_dates(SSL_CTX *ctx, const char *file)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	const ASN1_TIME *na, *nb;
	struct tm tm;
	char when[32] = "?";

	if (x == NULL)
		return;
	na = X509_get0_notAfter(x);
	nb = X509_get0_notBefore(x);
	if (X509_cmp_current_time(na) < 0) {
		if (ASN1_TIME_to_tm(na, &tm) == 1)
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		log_warnx("TLS certificate %s expired on %s: peers that verify "
		    "it refuse to connect", file, when);
	} else if (X509_cmp_current_time(nb) > 0) {
		if (ASN1_TIME_to_tm(nb, &tm) == 1)
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		log_warnx("TLS certificate %s is not valid before %s: peers "
		    "that verify it refuse to connect", file, when);
	}
}

/* Does this CPU have AES instructions (AES-NI, ARMv8 crypto)? */
static int
tls_cpu_has_aes(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_cpu_init();
	return __builtin_cpu_supports("aes");
#else
	return 1;	/* the common 64-bit ARM servers have them */
#endif
}

static SSL_CTX *
tls_build(const struct tls_files *tf, int server, char *errbuf, size_t errlen)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (ctx == NULL) {
		ssl_errstr("TLS context", NULL, errbuf, errlen);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION |
	    SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	    SSL_OP_PRIORITIZE_CHACHA);
	/*
	 * Kernel TLS where the kernel offers it: OpenSSL hands the traffic
	 * keys to the socket after the handshake and the kernel frames and
	 * encrypts what is written. Without it (no tls module, a suite the
	 * kernel lacks) OpenSSL encrypts as before: tls_bev_ktls_send says
	 * which, per connection.
	 */
	if (server)
		SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
	/* never SSL_MODE_ENABLE_PARTIAL_WRITE with bufferevent_openssl */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS_12) != 1 ||
	    SSL_CTX_set_ciphersuites(ctx, tls_cpu_has_aes() ?
	    TLS_SUITES_13_AES : TLS_SUITES_13_CHACHA) != 1) {
		ssl_errstr("TLS ciphers", NULL, errbuf, errlen);
		goto fail;
	}
	if (tf->tf_cert != NULL &&
	    SSL_CTX_use_certificate_chain_file(ctx, tf->tf_cert) != 1) {
		ssl_errstr("TLS certificate", tf->tf_cert, errbuf, errlen);
		goto fail;
	}
	if (tf->tf_cert != NULL)
		tls_check_dates(ctx, tf->tf_cert);
	if (tf->tf_key != NULL) {
		if (SSL_CTX_use_PrivateKey_file(ctx, tf->tf_key,
		    SSL_FILETYPE_PEM) != 1) {
			ssl_errstr("TLS key", tf->tf_key, errbuf, errlen);
			goto fail;
		}
		if (SSL_CTX_check_private_key(ctx) != 1) {
			ssl_errstr("TLS key does not match the certificate",
			    tf->tf_key, errbuf, errlen);
			goto fail;
		}
	}
	if (tf->tf_ca != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, tf->tf_ca, NULL) != 1) {
			ssl_errstr("TLS CA", tf->tf_ca, errbuf, errlen);
			goto fail;
		}
		if (server) {
			STACK_OF(X509_NAME) *names;
			if ((names = SSL_load_client_CA_file(tf->tf_ca)) != NULL)
				SSL_CTX_set_client_CA_list(ctx, names);
		}
	} else if (!server && SSL_CTX_set_default_verify_paths(ctx) != 1) {
		ssl_errstr("TLS system CA store", NULL, errbuf, errlen);
		goto fail;
	}
	if (server) {
		if (tf->tf_cert == NULL || tf->tf_key == NULL) {
			snprintf(errbuf, errlen, "TLS on a listener needs "
			    "--tls-cert and --tls-key");
			goto fail;
		}
		if (tf->tf_verify_peer)
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
			    SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
		else
			SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
		SSL_CTX_set_session_id_context(ctx,
		    (const unsigned char *)"walrelay", 8);
	} else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static struct tls_ctx *
tls_new(const struct tls_files *tf, int server, char *errbuf, size_t errlen)
{
	struct tls_ctx *t;

	if ((t = calloc(1, sizeof(*t))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	t->t_server = server;
	if ((t->t_ctx = tls_build(tf, server, errbuf, errlen)) == NULL) {
		free(t);
		return NULL;
	}
	if (tf->tf_server_name != NULL &&
	    (t->t_server_name = strdup(tf->tf_server_name)) == NULL) {
		tls_free(t);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	return t;
}

struct tls_ctx *
tls_server_new(const struct tls_files *tf, char *errbuf, size_t errlen)
{
	return tls_new(tf, 1, errbuf, errlen);
}

struct tls_ctx *
tls_client_new(const struct tls_files *tf, char *errbuf, size_t errlen)
{
	return tls_new(tf, 0, errbuf, errlen);
}

void
tls_free(struct tls_ctx *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->t_ctx);
	free(t->t_server_name);
	free(t);
}

struct bufferevent *
tls_bev_accepted(struct event_base *base, struct tls_ctx *t, int fd)
{
	struct bufferevent *bev;
	SSL *ssl;

	if ((ssl = SSL_new(t->t_ctx)) == NULL)
		return NULL;
	bev = bufferevent_openssl_socket_new(base, fd, ssl,
	    BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

struct bufferevent *
tls_bev_connect(struct event_base *base, struct tls_ctx *t)
{
	struct bufferevent *bev;
	SSL *ssl;

	if ((ssl = SSL_new(t->t_ctx)) == NULL)
		return NULL;
	if (t->t_server_name != NULL) {
		/* SNI, and the certificate must name this host */
		SSL_set_tlsext_host_name(ssl, t->t_server_name);
		if (SSL_set1_host(ssl, t->t_server_name) != 1) {
			SSL_free(ssl);
			return NULL;
		}
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	}
	bev = bufferevent_openssl_socket_new(base, -1, ssl,
	    BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

int
tls_bev_is_tls(struct bufferevent *bev)
{
	return bufferevent_openssl_get_ssl(bev) != NULL;
}

int
tls_bev_ktls_send(struct bufferevent *bev)
{
	SSL *ssl;
	BIO *w;

	if ((ssl = bufferevent_openssl_get_ssl(bev)) == NULL ||
	    (w = SSL_get_wbio(ssl)) == NULL)
		return 0;
	return BIO_get_ktls_send(w) ? 1 : 0;
}

const char *
tls_bev_cipher(struct bufferevent *bev)
{
	SSL *ssl;

	if ((ssl = bufferevent_openssl_get_ssl(bev)) == NULL)
		return NULL;
	return SSL_get_cipher_name(ssl);
}

const char *
tls_ktls_missing(void)
{
#ifdef OPENSSL_NO_KTLS
	return "this OpenSSL was built without kTLS";
#else
	if (access("/proc/net/tls_stat", F_OK) == -1)
		return "the kernel has no TLS module loaded (no "
		    "/proc/net/tls_stat; modprobe tls)";
	return "the kernel did not take this connection's keys (its "
	    "version or the cipher suite)";
#endif
}

const char *
tls_bev_error(struct bufferevent *bev, char *buf, size_t len)
{
	unsigned long e;
	SSL *ssl;

	if ((ssl = bufferevent_openssl_get_ssl(bev)) == NULL)
		return NULL;
	if ((e = bufferevent_get_openssl_error(bev)) == 0)
		return NULL;
	ERR_error_string_n(e, buf, len);
	{
		long vr = SSL_get_verify_result(ssl);
		size_t n = strlen(buf);
		if (vr != X509_V_OK && n < len)
			snprintf(buf + n, len - n, " (certificate: %s)",
			    X509_verify_cert_error_string(vr));
	}
	/* drain the rest of this connection's queue */
	while (bufferevent_get_openssl_error(bev) != 0)
		;
	return buf;
}

/* ---- blocking client (walcat) ---------------------------------------- */

struct tls_conn {
	SSL		*c_ssl;
};

struct tls_conn *
tls_conn_connect(struct tls_ctx *t, int fd, char *errbuf, size_t errlen)
{
	struct tls_conn *c;
	long v;

	if ((c = calloc(1, sizeof(*c))) == NULL ||
	    (c->c_ssl = SSL_new(t->t_ctx)) == NULL) {
		free(c);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	if (t->t_server_name != NULL) {
		SSL_set_tlsext_host_name(c->c_ssl, t->t_server_name);
		if (SSL_set1_host(c->c_ssl, t->t_server_name) != 1) {
			snprintf(errbuf, errlen, "TLS: bad server name %s",
			    t->t_server_name);
			goto fail;
		}
		SSL_set_hostflags(c->c_ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	}
	ERR_clear_error();
	if (SSL_set_fd(c->c_ssl, fd) != 1 || SSL_connect(c->c_ssl) != 1) {
		if ((v = SSL_get_verify_result(c->c_ssl)) != X509_V_OK)
			snprintf(errbuf, errlen, "TLS handshake: the server's "
			    "certificate: %s", X509_verify_cert_error_string(v));
		else
			ssl_errstr("TLS handshake", NULL, errbuf, errlen);
		goto fail;
	}
	return c;
fail:
	tls_conn_free(c);
	return NULL;
}

long
tls_conn_read(struct tls_conn *c, void *buf, size_t len, char *errbuf,
    size_t errlen)
{
	size_t n = 0;
	int rc;

	ERR_clear_error();
	if ((rc = SSL_read_ex(c->c_ssl, buf, len, &n)) == 1)
		return (long)n;
	switch (SSL_get_error(c->c_ssl, rc)) {
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0) {
			/* closed without close_notify: the end, for us */
			return 0;
		}
		/* FALLTHROUGH */
	default:
		ssl_errstr("TLS read", NULL, errbuf, errlen);
		return -1;
	}
}

int
tls_conn_write(struct tls_conn *c, const void *buf, size_t len, char *errbuf,
    size_t errlen)
{
	size_t n = 0;

	ERR_clear_error();
	if (SSL_write_ex(c->c_ssl, buf, len, &n) != 1 || n != len) {
		ssl_errstr("TLS write", NULL, errbuf, errlen);
		return -1;
	}
	return 0;
}

void
tls_conn_free(struct tls_conn *c)
{
	if (c == NULL)
		return;
	SSL_free(c->c_ssl);
	free(c);
}
