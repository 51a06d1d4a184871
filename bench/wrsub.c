/*
 * wrsub: N subscriber connections in one process (epoll), to walrelay
 * (FCWAL-SUB/1 from the first frame, or the stock FCWAL-AUTH/1), over
 * plain TCP or TLS, or raw (no handshake: ncat --broker). Counts whole
 * FCW2 frames and bytes per connection and measures end-to-end latency
 * from the send stamp in each SET frame's value.
 *
 *   wrsub --addr 127.0.0.1:7632 -n 16 --count 100000 [--proto sub|stock|raw]
 *         [--tls] [--stall K] [--timeout S] [--ready FILE]
 *
 * Prints one RESULT line (see common.c): frames and bytes summed over the
 * connections that read, from the first byte to the last frame.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common.h"

#define HEAD_MAX	160

enum { C_HS, C_STREAM, C_DONE };

struct conn {
	int		 fd;
	SSL		*ssl;
	int		 state;
	int		 stalled;
	uint64_t	 frames, bytes;
	/* the frame being read */
	uint8_t		 head[HEAD_MAX];
	size_t		 hlen;		/* bytes of head collected */
	size_t		 hwant;		/* bytes of head wanted */
	size_t		 flen;		/* whole frame length, 0 unknown */
	size_t		 skip;		/* bytes of the frame still to skip */
	char		 line[1100];
	size_t		 llen;
};

static struct hist H;
static uint64_t total_frames, total_bytes, t_first, t_last, want_count;
static unsigned ndone;

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

static void
frame_done(struct conn *c, uint64_t now_real)
{
	uint64_t st = frame_stamp(c->head, c->hlen);

	if (st != 0)
		hist_add(&H, (int64_t)(now_real - st));
	c->frames++;
	c->bytes += c->flen;
	total_frames++;
	total_bytes += c->flen;
	c->hlen = 0;
	c->hwant = 18;
	c->flen = 0;
	c->skip = 0;
}

/* Feed stream bytes; frames are whole when their last byte arrives. */
static void
feed(struct conn *c, const uint8_t *p, size_t n, uint64_t now_real)
{
	while (n > 0 && c->state == C_STREAM) {
		if (c->skip > 0) {
			size_t k = n < c->skip ? n : c->skip;
			p += k;
			n -= k;
			c->skip -= k;
			if (c->skip == 0)
				goto whole;
			continue;
		}
		if (c->hlen < c->hwant) {
			size_t k = c->hwant - c->hlen;
			if (k > n)
				k = n;
			memcpy(c->head + c->hlen, p, k);
			c->hlen += k;
			p += k;
			n -= k;
			if (c->hlen < c->hwant)
				continue;
		}
		if (c->flen == 0) {
			/* have the first 18 bytes (or 9: a frame is >= 13) */
			if (c->hlen < 9)
				continue;
			c->flen = 13 + (size_t)le32(c->head + 5);
			if (c->flen >= 18 && c->head[9] == 1 && !(c->head[4] & 1)) {
				size_t need = 9 + 25 + (size_t)le32(c->head + 10) + 8;
				if (need > HEAD_MAX)
					need = 18;
				c->hwant = need < c->flen ? need : c->flen;
			} else
				c->hwant = c->flen < 18 ? c->flen : 18;
			if (c->hlen < c->hwant)
				continue;
		}
		if (c->hlen > c->flen) {
			fprintf(stderr, "wrsub: bad frame length\n");
			exit(3);
		}
		c->skip = c->flen - c->hlen;
		if (c->skip > 0)
			continue;
whole:
		frame_done(c, now_real);
		if (c->frames >= want_count && want_count > 0) {
			c->state = C_DONE;
			ndone++;
		}
	}
}

static void
usage(void)
{
	fprintf(stderr, "usage: wrsub --addr HOST:PORT -n N --count FRAMES "
	    "[--proto sub|stock|raw] [--tls] [--stall K] [--timeout S] "
	    "[--ready FILE]\n");
	exit(3);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "count", required_argument, NULL, 'c' },
		{ "proto", required_argument, NULL, 'p' },
		{ "tls", no_argument, NULL, 'T' },
		{ "stall", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "ready", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 }
	};
	const char *addr = "127.0.0.1:7632", *proto = "sub", *ready = NULL;
	unsigned n = 1, stall = 0, nhs = 0, nread;
	double timeout = 60;
	int tls = 0, ch, ep;
	struct conn *cs;
	struct sockaddr_in sin;
	SSL_CTX *ctx = NULL;
	static uint8_t buf[256 * 1024];
	struct epoll_event evs[256];
	uint64_t deadline;
	char host[64], *colon;

	while ((ch = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
		switch (ch) {
		case 'a': addr = optarg; break;
		case 'n': n = (unsigned)atoi(optarg); break;
		case 'c': want_count = strtoull(optarg, NULL, 10); break;
		case 'p': proto = optarg; break;
		case 'T': tls = 1; break;
		case 's': stall = (unsigned)atoi(optarg); break;
		case 't': timeout = atof(optarg); break;
		case 'r': ready = optarg; break;
		default: usage();
		}
	}
	if (n == 0 || stall >= n)
		usage();
	signal(SIGPIPE, SIG_IGN);
	if (hist_init(&H) == -1)
		return 3;
	snprintf(host, sizeof(host), "%s", addr);
	if ((colon = strrchr(host, ':')) == NULL)
		usage();
	*colon = '\0';
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		usage();
	if (tls) {
		if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL)
			return 3;
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	if ((cs = calloc(n, sizeof(*cs))) == NULL ||
	    (ep = epoll_create1(EPOLL_CLOEXEC)) == -1)
		return 3;
	/* connect (blocking, one after the other), send the line */
	for (unsigned i = 0; i < n; i++) {
		struct conn *c = &cs[i];
		char line[128];
		int one = 1, tries = 0;

		for (;;) {
			c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (c->fd == -1) {
				perror("wrsub: socket");
				return 3;
			}
			if (connect(c->fd, (struct sockaddr *)&sin,
			    sizeof(sin)) == 0)
				break;
			if (++tries > 50) {
				fprintf(stderr, "wrsub: connect %s (conn %u): "
				    "%s\n", addr, i, strerror(errno));
				return 3;
			}
			close(c->fd);
			usleep(20000);
		}
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (tls) {
			c->ssl = SSL_new(ctx);
			SSL_set_fd(c->ssl, c->fd);
			if (SSL_connect(c->ssl) != 1) {
				fprintf(stderr, "wrsub: TLS handshake failed "
				    "(conn %u)\n", i);
				ERR_print_errors_fp(stderr);
				return 3;
			}
		}
		if (strcmp(proto, "sub") == 0)
			snprintf(line, sizeof(line), "FCWAL-SUB/1 - earliest\n");
		else if (strcmp(proto, "stock") == 0)
			snprintf(line, sizeof(line), "FCWAL-AUTH/1 -\n");
		else
			line[0] = '\0';
		if (line[0] != '\0') {
			int w = tls ? SSL_write(c->ssl, line, (int)strlen(line)) :
			    (int)send(c->fd, line, strlen(line), MSG_NOSIGNAL);
			if (w != (int)strlen(line)) {
				fprintf(stderr, "wrsub: cannot send the line\n");
				return 3;
			}
		}
		fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
		c->stalled = i < stall;
		c->hwant = 18;
		c->state = strcmp(proto, "sub") == 0 ? C_HS : C_STREAM;
		if (c->state == C_STREAM)
			nhs++;
		{
			struct epoll_event ev = { .events = EPOLLIN,
			    .data.u32 = i };
			epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
		}
	}
	nread = n - stall;
	deadline = mono_ns() + (uint64_t)(timeout * 1e9);
	if (nhs == n)
		signal_ready(ready);
	while (ndone < nread && mono_ns() < deadline) {
		int k = epoll_wait(ep, evs, 256, 100);
		uint64_t now_real = 0;

		for (int e = 0; e < k; e++) {
			struct conn *c = &cs[evs[e].data.u32];
			int more = 1;

			while (more) {
				ssize_t r;
				size_t off = 0;

				if (c->ssl != NULL) {
					r = SSL_read(c->ssl, buf, sizeof(buf));
					if (r <= 0) {
						int err = SSL_get_error(c->ssl,
						    (int)r);
						if (err == SSL_ERROR_WANT_READ ||
						    err == SSL_ERROR_WANT_WRITE)
							break;
						fprintf(stderr, "wrsub: conn %u "
						    "closed (TLS)\n",
						    evs[e].data.u32);
						return 1;
					}
				} else {
					r = recv(c->fd, buf, sizeof(buf), 0);
					more = 0;
					if (r == -1 && (errno == EAGAIN ||
					    errno == EINTR))
						break;
					if (r <= 0) {
						fprintf(stderr, "wrsub: conn %u "
						    "closed: %s\n",
						    evs[e].data.u32, r == 0 ?
						    "EOF" : strerror(errno));
						return 1;
					}
				}
				if (c->state == C_HS) {
					while (off < (size_t)r && buf[off] != '\n' &&
					    c->llen < sizeof(c->line) - 1)
						c->line[c->llen++] = (char)buf[off++];
					if (off == (size_t)r)
						continue;
					off++;
					c->line[c->llen] = '\0';
					if (strncmp(c->line, "FCWAL-OK/1 ", 11)) {
						fprintf(stderr, "wrsub: refused: "
						    "%s\n", c->line);
						return 2;
					}
					c->state = C_STREAM;
					if (++nhs == n)
						signal_ready(ready);
					if (c->stalled) {
						/* never read again */
						epoll_ctl(ep, EPOLL_CTL_DEL,
						    c->fd, NULL);
						break;
					}
				}
				if ((size_t)r > off && c->state == C_STREAM) {
					if (now_real == 0)
						now_real = real_ns();
					if (t_first == 0)
						t_first = mono_ns();
					feed(c, buf + off, (size_t)r - off,
					    now_real);
					t_last = mono_ns();
				}
				if (c->state == C_DONE) {
					epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
					break;
				}
			}
		}
	}
	report(stdout, total_frames, total_bytes,
	    t_last > t_first ? (double)(t_last - t_first) / 1e9 : 0, &H,
	    ndone, nread);
	return ndone == nread ? 0 : 1;
}
