/*
 * walcat_net.c: `walcat produce` (acts as the cache's exporter in connect
 * mode) and `walcat tail` (a subscriber that prints or saves frames).
 */
#include "autoconfig.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "auth.h"
#include "clock.h"
#include "config.h"
#include "fcw2.h"
#include "fdio.h"
#include "handshake.h"
#include "scan.h"
#include "segment.h"
#include "tls.h"
#include "walcat.h"

#define PRODUCE_BATCH	(256 * 1024)

/* Connect to host:port; -1 with a message on failure. */
static int
dial(const char *addr, int quiet)
{
	char host[256], port[8], err[300];
	struct addrinfo hints, *res, *ai;
	int fd = -1, rc, one = 1;
	uint16_t p;

	if (config_addr_split(addr, host, sizeof(host), &p, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "walcat: %s\n", err);
		return -1;
	}
	snprintf(port, sizeof(port), "%u", (unsigned)p);
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
		if (!quiet)
			fprintf(stderr, "walcat: %s: %s\n", addr,
			    gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (fd == -1)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	if (fd == -1 && !quiet)
		fprintf(stderr, "walcat: connect %s: %s\n", addr,
		    strerror(errno));
	freeaddrinfo(res);
	if (fd != -1)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
		    sizeof(one));
	return fd;
}

/* The first token of a token file, read as the relay reads them. */
static int
read_token(const char *path, char *tok, size_t len)
{
	struct tokenset ts;
	char err[512];
	int loose;

	tokenset_init(&ts);
	if (tokenset_load_file(&ts, path, &loose, err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: %s\n", err);
		return -1;
	}
	snprintf(tok, len, "%s", ts.ts_tokens[0].tk_data);
	tokenset_free(&ts);
	return 0;
}

int
walcat_net_dial(const char *addr)
{
	return dial(addr, 0);
}

int
walcat_net_tls(const char *cmd, const char *addr, struct tls_files *tf,
    int want, struct tls_ctx **out)
{
	char host[256], err[512];
	uint16_t port;

	*out = NULL;
	if (!want && tf->tf_ca == NULL && tf->tf_cert == NULL &&
	    tf->tf_key == NULL && tf->tf_server_name == NULL)
		return 0;
	if ((tf->tf_cert == NULL) != (tf->tf_key == NULL)) {
		fprintf(stderr, "walcat: %s: --tls-cert and --tls-key go "
		    "together\n", cmd);
		return -1;
	}
	if (tf->tf_server_name == NULL) {
		if (config_addr_split(addr, host, sizeof(host), &port, err,
		    sizeof(err)) == -1) {
			fprintf(stderr, "walcat: %s: %s\n", cmd, err);
			return -1;
		}
		tf->tf_server_name = host;
	}
	*out = tls_client_new(tf, err, sizeof(err));
	if (tf->tf_server_name == host)
		tf->tf_server_name = NULL;
	if (*out == NULL) {
		fprintf(stderr, "walcat: %s: %s\n", cmd, err);
		return -1;
	}
	return 0;
}

int
walcat_net_token(const char *path, char *tok, size_t len)
{
	return read_token(path, tok, len);
}

/* ---- produce ---------------------------------------------------------- */

/* Connections the relay closes at once, in a row, that mean "refused". */
#define PRODUCE_REFUSALS	3
/* After the last frame: how long the relay has to close its side. */
#define PRODUCE_CLOSE_WAIT_MS	30000
#define PRODUCE_PROGRESS_NS	200000000ull

struct producer {
	const char	*addr;
	char		 auth[HANDSHAKE_LINE_MAX + 2];	/* the line, or "" */
	size_t		 authlen;
	unsigned	 backoff_ms;
	int		 fd;
	uint64_t	 reconnects;
	uint64_t	 frames;
	uint64_t	 bytes;
	int		 quiet;
	uint64_t	 conn_writes;	/* batches written on this connection */
	unsigned	 early_closes;	/* closed by the relay at once, in a row */
	int		 progress;	/* stderr is a terminal */
	int		 progress_shown;
	uint64_t	 t0;
	uint64_t	 last_progress;
	uint64_t	 count;		/* frames to send, 0: unknown */
};

/* One line on the terminal, rewritten in place (stderr only). */
static void
producer_progress(struct producer *p, int force)
{
	uint64_t now = clock_mono_ns();
	double secs;

	if (!p->progress || (!force && now - p->last_progress <
	    PRODUCE_PROGRESS_NS))
		return;
	p->last_progress = now;
	secs = (double)(now - p->t0) / 1e9;
	fprintf(stderr, "\r\033[Kwalcat: produce: %" PRIu64, p->frames);
	if (p->count > 0)
		fprintf(stderr, "/%" PRIu64 " frames (%u%%)", p->count,
		    (unsigned)(p->frames * 100 / p->count));
	else
		fprintf(stderr, " frames");
	fprintf(stderr, ", %.1f MiB, %.0f frames/s, %" PRIu64 " reconnects",
	    (double)p->bytes / (1024.0 * 1024.0), secs > 0 ?
	    (double)p->frames / secs : 0.0, p->reconnects);
	fflush(stderr);
	p->progress_shown = 1;
}

static void
producer_progress_clear(struct producer *p)
{
	if (p->progress_shown) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
		p->progress_shown = 0;
	}
}

static void
produce_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static int
producer_connect(struct producer *p)
{
	for (;;) {
		if ((p->fd = dial(p->addr, p->reconnects > 0)) != -1) {
			p->conn_writes = 0;
			if (p->authlen == 0 || fdio_send_all(p->fd, p->auth,
			    p->authlen, NULL) == 0)
				return 0;
			close(p->fd);
			p->fd = -1;
		} else
			p->early_closes = 0;	/* down, not refusing */
		/* the cache's exporter: fixed backoff, then again */
		p->reconnects++;
		produce_sleep_ms(p->backoff_ms);
	}
}

/*
 * Send a batch of whole frames. On a write error: close, wait the fixed
 * backoff, reconnect, resend the auth line and then everything from the
 * frame that failed (the whole frame, as the cache does). A relay that
 * closes connection after connection right after accepting them refuses
 * this producer (a missing or wrong token): -1, said on stderr.
 */
static int
producer_send(struct producer *p, const uint8_t *buf, size_t len,
    uint64_t nframes)
{
	size_t off = 0, done;

	while (off < len) {
		if (p->fd == -1)
			(void)producer_connect(p);
		if (fdio_send_all(p->fd, buf + off, len - off, &done) == 0) {
			off = len;
			p->conn_writes++;
			break;
		}
		if (p->conn_writes <= 1 &&
		    ++p->early_closes >= PRODUCE_REFUSALS) {
			producer_progress_clear(p);
			fprintf(stderr, "walcat: produce: %s closed %d "
			    "connections in a row as soon as frames arrived: "
			    "it refuses this producer (a publish token is "
			    "needed? see --token-file and the relay's log)\n",
			    p->addr, PRODUCE_REFUSALS);
			close(p->fd);
			p->fd = -1;
			return -1;
		}
		if (p->conn_writes > 1)
			p->early_closes = 0;
		producer_progress_clear(p);
		if (!p->quiet)
			fprintf(stderr, "walcat: produce: write: %s; "
			    "reconnecting in %u ms\n", strerror(errno),
			    p->backoff_ms);
		/* back up to the start of the frame that failed */
		off = fcw2_walk(buf, off, off + done, UINT64_MAX, NULL);
		close(p->fd);
		p->fd = -1;
		p->reconnects++;
		produce_sleep_ms(p->backoff_ms);
	}
	p->frames += nframes;
	p->bytes += len;
	producer_progress(p, 0);
	return 0;
}

/*
 * The end: send our end of stream and wait for the relay's. A relay that
 * took everything closes its side once it has read our end (0); one that
 * refused the connection resets it (2); no answer in time is 1.
 */
static int
producer_finish(struct producer *p)
{
	struct pollfd pfd;
	uint64_t deadline = clock_mono_ns() + PRODUCE_CLOSE_WAIT_MS * 1000000ull;
	char buf[4096];
	ssize_t n;

	if (p->fd == -1)
		return 0;
	if (shutdown(p->fd, SHUT_WR) == -1 && errno != ENOTCONN) {
		fprintf(stderr, "walcat: produce: %s: %s: the relay closed "
		    "the connection before the end\n", p->addr,
		    strerror(errno));
		return 2;
	}
	for (;;) {
		uint64_t now = clock_mono_ns();
		int ms;

		if (now >= deadline) {
			fprintf(stderr, "walcat: produce: %s did not close the "
			    "connection within %d s of the last frame: not "
			    "known whether it took them all\n", p->addr,
			    PRODUCE_CLOSE_WAIT_MS / 1000);
			return 1;
		}
		ms = (int)((deadline - now) / 1000000ull) + 1;
		pfd.fd = p->fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, ms) == -1) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "walcat: produce: poll: %s\n",
			    strerror(errno));
			return 3;
		}
		if ((n = recv(p->fd, buf, sizeof(buf), MSG_DONTWAIT)) == 0)
			return 0;
		if (n > 0 || errno == EAGAIN || errno == EINTR)
			continue;
		if (errno == ECONNRESET || errno == EPIPE) {
			fprintf(stderr, "walcat: produce: %s reset the "
			    "connection instead of closing it: it refused the "
			    "frames (a publish token is needed? see "
			    "--token-file and the relay's log)\n", p->addr);
			return 2;
		}
		fprintf(stderr, "walcat: produce: %s: %s\n", p->addr,
		    strerror(errno));
		return 2;
	}
}

static void
produce_usage(FILE *f)
{
	fprintf(f,
"usage: walcat produce [options] ADDR\n"
"       walcat produce --config FILE --stream NAME [options] [ADDR]\n"
"  Act as the cache's WAL exporter in connect mode: connect to ADDR, send\n"
"  the auth line (with --token-file), then FCW2 frames. On a write error,\n"
"  wait a fixed backoff, reconnect and resend the whole frame that failed.\n"
"  A relay routes a publisher to the stream its publish token belongs to\n"
"  (FCWAL-AUTH/1 cannot name a stream).\n"
"options:\n"
"  --token-file FILE   send FCWAL-AUTH/1 with the first token in FILE\n"
"  --config FILE       the relay's config file, with --stream:\n"
"  --stream NAME       publish to stream NAME of that config: its\n"
"                      publish-token-file's first token, and its ingest\n"
"                      address when ADDR is not given\n"
"  --dir PATH          replay the frames of a segment file or directory\n"
"  --count N           synthetic records to send (default 1000; 0: forever)\n"
"  --value-bytes N     value size of synthetic SET records (default 100)\n"
"  --key-bytes N       key size (default 16)\n"
"  --rate N            frames per second (default 0: as fast as possible)\n"
"  --compress          LZ4 payloads when strictly smaller, as the cache does\n"
"  --random-values     incompressible values (default: compressible text)\n"
"  --stamp             put the send time (CLOCK_REALTIME ns) in the first 8\n"
"                      value bytes, for latency measurements\n"
"  --seed N            seed of the synthetic data (default 1)\n"
"  --backoff-ms N      reconnect backoff (default 100, as the cache)\n"
"  --quiet             no summary on stderr\n"
"On a terminal, a progress line on stderr. At the end, produce closes its\n"
"side and waits for the relay to close its own (the relay has then read\n"
"everything).\n"
"exit status: 0 sent, and the relay closed the connection after reading\n"
"  it all; 1 the relay did not close within 30 s of the end; 2 the relay\n"
"  refused: it reset the connection, or closed 3 connections in a row as\n"
"  soon as frames arrived (a missing or wrong publish token); 3 usage or\n"
"  I/O error.\n");
}

static int
produce_replay(struct producer *p, const char *path)
{
	struct stat st;
	char **names = NULL, err[512], file[4096];
	size_t n = 0;
	uint8_t *batch;
	int rc = 0;

	if (stat(path, &st) == -1) {
		fprintf(stderr, "walcat: %s: %s\n", path, strerror(errno));
		return 3;
	}
	if (S_ISDIR(st.st_mode)) {
		if (segment_list_dir(path, &names, &n, err, sizeof(err)) == -1) {
			fprintf(stderr, "walcat: %s\n", err);
			return 3;
		}
	} else {
		if ((names = calloc(1, sizeof(*names))) == NULL ||
		    (names[0] = strdup(path)) == NULL)
			return 3;
		n = 1;
	}
	if ((batch = malloc(PRODUCE_BATCH)) == NULL)
		return 3;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct scan sc;
		struct scan_event ev;
		size_t blen = 0;
		uint64_t bframes = 0;
		int fd;

		if (S_ISDIR(st.st_mode))
			snprintf(file, sizeof(file), "%s/%s", path, names[i]);
		else
			snprintf(file, sizeof(file), "%s", names[i]);
		if ((fd = open(file, O_RDONLY | O_CLOEXEC)) == -1) {
			fprintf(stderr, "walcat: %s: %s\n", file,
			    strerror(errno));
			rc = 3;
			break;
		}
		scan_init(&sc, FCW2_DEFAULT_MAX_FRAME, 0, 0);
		scan_start(&sc, fd);
		for (;;) {
			if (scan_next(&sc, &ev, err, sizeof(err)) == -1) {
				fprintf(stderr, "walcat: %s: %s\n", file, err);
				rc = 3;
				break;
			}
			if (ev.ev_type != SCAN_FRAME) {
				if (ev.ev_type != SCAN_END)
					fprintf(stderr, "walcat: %s: stopped "
					    "at byte %" PRIu64 ": not a whole "
					    "valid frame\n", file,
					    ev.ev_offset);
				break;
			}
			if (blen + ev.ev_len > PRODUCE_BATCH && blen > 0) {
				if (producer_send(p, batch, blen, bframes) ==
				    -1) {
					rc = 2;
					blen = 0;
					break;
				}
				blen = 0;
				bframes = 0;
			}
			if (ev.ev_len > PRODUCE_BATCH) {
				if (producer_send(p, ev.ev_data, ev.ev_len,
				    1) == -1) {
					rc = 2;
					break;
				}
				continue;
			}
			memcpy(batch + blen, ev.ev_data, ev.ev_len);
			blen += ev.ev_len;
			bframes++;
		}
		if (blen > 0 && rc == 0 &&
		    producer_send(p, batch, blen, bframes) == -1)
			rc = 2;
		scan_free(&sc);
		close(fd);
	}
	free(batch);
	segment_list_free(names, n);
	return rc;
}

/*
 * --config FILE --stream NAME: the stream's ingest address (when addr is
 * NULL) and publish token file, from the relay's own config. Strings
 * point into cfg (kept until the token is read), except the address,
 * which is copied. -1 (said) when the stream is not there or takes no
 * publishers.
 */
static int
produce_stream(const char *file, const char *name, struct wr_config *cfg,
    const char **addr, const char **tokfile)
{
	static char addrbuf[300];
	char *av[] = { "walrelay", "-c", (char *)file, NULL };
	char err[1024];
	struct wr_config *sc;

	if (!config_stream_name_ok(name)) {
		fprintf(stderr, "walcat: produce: --stream %s: not a stream "
		    "name (1 to 64 of A-Z a-z 0-9 _ . -)\n", name);
		return -1;
	}
	memset(cfg, 0, sizeof(*cfg));
	if (config_load(3, av, cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "walcat: produce: %s\n", err);
		return -1;
	}
	if (cfg->streams == NULL)
		sc = strcmp(name, "default") == 0 ? cfg : NULL;
	else
		for (sc = cfg->streams; sc != NULL; sc = sc->next_stream)
			if (strcmp(sc->stream_name, name) == 0)
				break;
	if (sc == NULL) {
		fprintf(stderr, "walcat: produce: %s defines no stream %s\n",
		    file, name);
		config_free(cfg);
		return -1;
	}
	if (sc->upstream != NULL || sc->ingest == NULL) {
		fprintf(stderr, "walcat: produce: stream %s of %s takes no "
		    "publishers: it %s\n", name, file, sc->upstream != NULL ?
		    "pulls from its upstream" : "has no ingest listener");
		config_free(cfg);
		return -1;
	}
	if (*addr == NULL) {
		snprintf(addrbuf, sizeof(addrbuf), "%s", sc->ingest);
		*addr = addrbuf;
	}
	*tokfile = sc->publish_token_file;
	return 0;
}

static uint64_t
xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

int
walcat_produce(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "token-file", required_argument, NULL, 't' },
		{ "dir", required_argument, NULL, 'd' },
		{ "count", required_argument, NULL, 'n' },
		{ "value-bytes", required_argument, NULL, 'v' },
		{ "key-bytes", required_argument, NULL, 'k' },
		{ "rate", required_argument, NULL, 'r' },
		{ "compress", no_argument, NULL, 'z' },
		{ "random-values", no_argument, NULL, 'R' },
		{ "stamp", no_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "backoff-ms", required_argument, NULL, 'b' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "config", required_argument, NULL, 'c' },
		{ "stream", required_argument, NULL, 'N' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct producer p;
	struct wr_config cfg;
	const char *dir = NULL, *tokfile = NULL, *cfgfile = NULL;
	const char *stream = NULL;
	int have_cfg = 0;
	uint64_t count = 1000, rate = 0, seed = 1;
	size_t vbytes = 100, kbytes = 16;
	int compress = 0, randomv = 0, stamp = 0, c, rc = 0;
	char token[1100];
	uint64_t t0, t1;

	memset(&p, 0, sizeof(p));
	p.backoff_ms = 100;
	p.fd = -1;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't': tokfile = optarg; break;
		case 'd': dir = optarg; break;
		case 'n': count = strtoull(optarg, NULL, 10); break;
		case 'v': vbytes = strtoull(optarg, NULL, 10); break;
		case 'k': kbytes = strtoull(optarg, NULL, 10); break;
		case 'r': rate = strtoull(optarg, NULL, 10); break;
		case 'z': compress = 1; break;
		case 'R': randomv = 1; break;
		case 's': stamp = 1; break;
		case 'S': seed = strtoull(optarg, NULL, 10); break;
		case 'b': p.backoff_ms = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'q': p.quiet = 1; break;
		case 'c': cfgfile = optarg; break;
		case 'N': stream = optarg; break;
		case 'h': produce_usage(stdout); return 0;
		default: produce_usage(stderr); return 3;
		}
	}
	if (optind + 1 < argc || (optind == argc && stream == NULL)) {
		produce_usage(stderr);
		return 3;
	}
	if ((stream == NULL) != (cfgfile == NULL)) {
		fprintf(stderr, "walcat: produce: --stream and --config go "
		    "together: a relay routes a publisher by its publish token "
		    "(FCWAL-AUTH/1 cannot name a stream), so produce takes the "
		    "stream's token from the relay's config\n");
		return 3;
	}
	if (stream != NULL && tokfile != NULL) {
		fprintf(stderr, "walcat: produce: --token-file or --stream: the "
		    "stream's token is its publish-token-file\n");
		return 3;
	}
	if (stamp && vbytes < 8)
		vbytes = 8;
	p.addr = optind < argc ? argv[optind] : NULL;
	if (stream != NULL) {
		if (produce_stream(cfgfile, stream, &cfg, &p.addr,
		    &tokfile) == -1)
			return 3;
		have_cfg = 1;
	}
	{
		char err[300];

		/* a bad address would fail every reconnection: say so now */
		if (config_addr_check(p.addr, err, sizeof(err)) == -1) {
			fprintf(stderr, "walcat: produce: %s\n", err);
			return 3;
		}
	}
	if (tokfile != NULL) {
		int n;

		if (read_token(tokfile, token, sizeof(token)) == -1) {
			if (have_cfg)
				config_free(&cfg);
			return 3;
		}
		if ((n = handshake_format_auth(p.auth, sizeof(p.auth), token,
		    strlen(token))) == -1) {
			fprintf(stderr, "walcat: produce: %s: the token does not "
			    "fit in an FCWAL-AUTH/1 line (over %d bytes)\n",
			    tokfile, HANDSHAKE_LINE_MAX - 13);
			return 3;
		}
		p.authlen = (size_t)n;
	}
	if (have_cfg)
		config_free(&cfg);	/* p.addr now in argv, or copied */
	signal(SIGPIPE, SIG_IGN);
	p.progress = !p.quiet && isatty(STDERR_FILENO);
	p.count = dir == NULL ? count : 0;
	(void)producer_connect(&p);
	t0 = p.t0 = clock_mono_ns();
	if (dir != NULL)
		rc = produce_replay(&p, dir);
	else {
		struct fcw2_record rec;
		uint8_t *key, *val, *batch;
		size_t blen = 0, maxf;
		uint64_t bframes = 0, s = seed ? seed : 1;
		uint64_t batch_frames = rate > 0 ? (rate / 1000 + 1) : UINT64_MAX;

		key = malloc(kbytes + 1);
		val = malloc(vbytes + 1);
		memset(&rec, 0, sizeof(rec));
		rec.key_len = (uint32_t)kbytes;
		rec.value_len = (uint32_t)vbytes;
		rec.key = key;
		rec.value = val;
		maxf = fcw2_encoded_max(&rec);
		batch = malloc(maxf > PRODUCE_BATCH ? maxf : PRODUCE_BATCH);
		if (key == NULL || val == NULL || batch == NULL)
			return 3;
		for (size_t i = 0; i < vbytes; i++)
			val[i] = randomv ? (uint8_t)xorshift(&s) :
			    (uint8_t)("abcdefgh"[i % 8]);
		for (uint64_t i = 0; count == 0 || i < count; i++) {
			uint64_t r = xorshift(&s);

			rec.op = r % 10 == 0 ? FCW2_OP_DEL : r % 10 == 1 ?
			    FCW2_OP_EXPIRE : FCW2_OP_SET;
			rec.value_len = rec.op == FCW2_OP_SET ? (uint32_t)vbytes : 0;
			rec.timestamp_ms = clock_wall_ms();
			rec.expire_at_ms = r % 3 == 0 ? (int64_t)rec.timestamp_ms +
			    60000 : -1;
			for (size_t j = 0; j < kbytes; j++)
				key[j] = (uint8_t)('a' + (i >> (j * 4 % 60)) % 26);
			if (randomv && vbytes > 0)
				val[i % vbytes] = (uint8_t)r;
			if (stamp && rec.op == FCW2_OP_SET) {
				uint64_t ns = clock_wall_ns();

				memcpy(val, &ns, 8);
			}
			if (blen + maxf > PRODUCE_BATCH && blen > 0) {
				if (producer_send(&p, batch, blen, bframes) ==
				    -1)
					goto refused;
				blen = 0;
				bframes = 0;
			}
			blen += fcw2_encode(&rec, compress, batch + blen, maxf);
			bframes++;
			if (bframes >= batch_frames) {
				if (producer_send(&p, batch, blen, bframes) ==
				    -1)
					goto refused;
				blen = 0;
				bframes = 0;
			}
			if (rate > 0) {
				/* pace: frame i is due at t0 + i/rate */
				uint64_t due = t0 + (i + 1) * 1000000000ull / rate;
				uint64_t now = clock_mono_ns();
				if (due > now + 1000000) {
					if (blen > 0) {
						if (producer_send(&p, batch,
						    blen, bframes) == -1)
							goto refused;
						blen = 0;
						bframes = 0;
					}
					struct timespec ts = {
					    (time_t)((due - now) / 1000000000ull),
					    (long)((due - now) % 1000000000ull) };
					nanosleep(&ts, NULL);
				}
			}
		}
		if (blen > 0 && producer_send(&p, batch, blen, bframes) == -1) {
refused:
			rc = 2;
		}
		free(key);
		free(val);
		free(batch);
	}
	t1 = clock_mono_ns();
	producer_progress(&p, 1);
	producer_progress_clear(&p);
	if (p.fd != -1) {
		int frc = rc == 0 ? producer_finish(&p) : 0;

		if (rc == 0)
			rc = frc;
		close(p.fd);
	}
	if (!p.quiet) {
		double secs = (double)(t1 - t0) / 1e9;
		fprintf(stderr, "walcat: produce: %" PRIu64 " frames, %" PRIu64
		    " bytes %sin %.3f s (%.0f frames/s, %.1f MB/s), %" PRIu64
		    " reconnects\n", p.frames, p.bytes, rc == 0 ? "" :
		    "written, not known to be taken, ", secs,
		    secs > 0 ? (double)p.frames / secs : 0.0,
		    secs > 0 ? (double)p.bytes / secs / 1e6 : 0.0, p.reconnects);
	}
	return rc;
}

/* ---- tail ------------------------------------------------------------- */

static void
tail_usage(FILE *f)
{
	fprintf(f,
"usage: walcat tail [options] ADDR\n"
"  Subscribe to a relay (FCWAL-SUB/1, resumable) or, with --stock, to a\n"
"  relay or cache in listen mode (FCWAL-AUTH/1, live), and print records.\n"
"options:\n"
"  --from SEQ|earliest|latest|snapshot   where to start (default latest;\n"
"                      snapshot: the relay's newest snapshot as SET frames,\n"
"                      then the stream after it)\n"
"  --token-file FILE   the subscribe token (first line of FILE)\n"
"  --position-file F   resume from the position and epoch saved in F and\n"
"                      keep it up to date (written atomically, after the\n"
"                      frames are written and, into a file, synced); append\n"
"                      the output to the same file (>>) to continue a copy\n"
"  --count N           stop after N frames\n"
"  --json              JSON lines instead of text\n"
"  --raw               write the frames' bytes to stdout, nothing else\n"
"  --zstd              ask for a zstd-compressed stream\n"
"  --stock             the cache's plain handshake (no reply, live only)\n"
"  --stream NAME       subscribe to stream NAME of a relay that serves\n"
"                      several on ADDR (stream=NAME in FCWAL-SUB/1); without\n"
"                      it the relay picks the stream by the token, or serves\n"
"                      its only one\n"
"SIGINT or SIGTERM: finish the frames read, save the position, exit 0 (a\n"
"  second signal exits at once).\n"
"exit status: 0 when --count frames arrived or after SIGINT/SIGTERM, 1 when\n"
"  the connection ended, 2 when the relay refused (its FCWAL-ERR/1 line is\n"
"  printed), 3 usage or I/O error, 4 a frame failed validation.\n");
}

struct tailer {
	int		 json;
	int		 raw;
	uint64_t	 pos;
	uint64_t	 epoch;
	uint64_t	 count;
	uint64_t	 got;
	const char	*posfile;
	struct fcw2_decoder dec;
	int		 positioned;	/* the reply gave pos and epoch */
	uint64_t	 snap_left;	/* snapshot SET frames still to come */
	int		 saved;		/* pos was saved since the last frame */
	/* standard output */
	int		 reg;		/* a regular file: sized, synced */
	uint64_t	 outoff;	/* its size after the last whole frame */
	uint64_t	 dev;
	uint64_t	 ino;
	uint8_t		*obuf;		/* --raw: whole frames not yet written */
	size_t		 olen;
	size_t		 ocap;
};

/* What a position file holds: "SEQ EPOCH" or "SEQ EPOCH BYTES DEV INO". */
struct tailpos {
	uint64_t	 seq;
	uint64_t	 epoch;
	int		 has_out;
	uint64_t	 bytes;
	uint64_t	 dev;
	uint64_t	 ino;
};

/* The first SIGINT or SIGTERM asks the loop to stop; a second one kills. */
static volatile sig_atomic_t tail_stop;
static int tail_sigpipe[2] = { -1, -1 };

static void
tail_signal(int sig)
{
	int saved = errno;

	if (tail_stop) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	tail_stop = sig;
	if (write(tail_sigpipe[1], "", 1) == -1) {
		/* the flag is set; the loop checks it after every read */
	}
	errno = saved;
}

static int
tail_signals(void)
{
	struct sigaction sa;

	if (pipe2(tail_sigpipe, O_CLOEXEC | O_NONBLOCK) == -1)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = tail_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: interrupt a blocked write */
	if (sigaction(SIGINT, &sa, NULL) == -1 ||
	    sigaction(SIGTERM, &sa, NULL) == -1)
		return -1;
	return 0;
}

/* 1 when read, 0 when the file does not exist, -1 (said) otherwise. */
static int
load_position(const char *path, struct tailpos *tp)
{
	char buf[256], end;
	unsigned long long seq, epoch, bytes, dev, ino;
	FILE *f;
	size_t n;
	int k;

	memset(tp, 0, sizeof(*tp));
	if ((f = fopen(path, "r")) == NULL) {
		if (errno == ENOENT)
			return 0;
		fprintf(stderr, "walcat: tail: %s: %s\n", path,
		    strerror(errno));
		return -1;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	k = sscanf(buf, "%llu %llx %llu %llu %llu%c", &seq, &epoch, &bytes,
	    &dev, &ino, &end);
	if (n == sizeof(buf) - 1 || (k != 2 && k != 6) ||
	    (k == 6 && end != '\n')) {
		fprintf(stderr, "walcat: tail: %s: not a position file (one "
		    "line: SEQ EPOCH, or SEQ EPOCH BYTES DEV INODE)\n", path);
		return -1;
	}
	tp->seq = seq;
	tp->epoch = epoch;
	if (k == 6) {
		tp->has_out = 1;
		tp->bytes = bytes;
		tp->dev = dev;
		tp->ino = ino;
	}
	return 1;
}

/*
 * Bring standard output in line with the saved position. A regular file
 * that grew past the size saved with the position holds frames written
 * after the last save (walcat was killed between its write and its save):
 * cut them, they are fetched again. One that is shorter lost frames the
 * position counts: refuse to resume into it.
 */
static int
tail_output_open(struct tailer *t, const struct tailpos *tp)
{
	struct stat st;
	off_t end;

	if (fstat(STDOUT_FILENO, &st) == -1) {
		fprintf(stderr, "walcat: tail: standard output: %s\n",
		    strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode))
		return 0;
	t->reg = 1;
	t->dev = (uint64_t)st.st_dev;
	t->ino = (uint64_t)st.st_ino;
	if (tp != NULL && tp->has_out && tp->dev == t->dev &&
	    tp->ino == t->ino) {
		if ((uint64_t)st.st_size < tp->bytes) {
			fprintf(stderr, "walcat: tail: standard output has %"
			    PRIu64 " bytes, fewer than the %" PRIu64 " that %s "
			    "says were written: frames before its position "
			    "are missing; append to the copy (>>), or remove "
			    "the position file to start over\n",
			    (uint64_t)st.st_size, tp->bytes, t->posfile);
			return -1;
		}
		if ((uint64_t)st.st_size > tp->bytes) {
			if (ftruncate(STDOUT_FILENO, (off_t)tp->bytes) == -1) {
				fprintf(stderr, "walcat: tail: standard output: "
				    "cannot cut it to the %" PRIu64 " bytes %s "
				    "records: %s\n", tp->bytes, t->posfile,
				    strerror(errno));
				return -1;
			}
			fprintf(stderr, "walcat: tail: cut %" PRIu64 " bytes "
			    "written after the saved position from standard "
			    "output; they are fetched again\n",
			    (uint64_t)st.st_size - tp->bytes);
		}
	}
	if ((end = lseek(STDOUT_FILENO, 0, SEEK_END)) == -1) {
		fprintf(stderr, "walcat: tail: standard output: %s\n",
		    strerror(errno));
		return -1;
	}
	t->outoff = (uint64_t)end;
	return 0;
}

static int
save_position(const struct tailer *t)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", t->posfile);
	if ((f = fopen(tmp, "w")) == NULL)
		return -1;
	if (t->reg)
		fprintf(f, "%" PRIu64 " %016" PRIx64 " %" PRIu64 " %" PRIu64
		    " %" PRIu64 "\n", t->pos, t->epoch, t->outoff, t->dev,
		    t->ino);
	else
		fprintf(f, "%" PRIu64 " %016" PRIx64 "\n", t->pos, t->epoch);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fclose(f);
		return -1;
	}
	if (fclose(f) != 0)
		return -1;
	return rename(tmp, t->posfile);
}

/*
 * Write out the whole frames decoded so far, then (with a position file)
 * make them durable when the output is a regular file, and only then
 * save the position: the position never counts a frame the output may not
 * hold. -1 (said) on an error.
 */
static int
tail_commit(struct tailer *t)
{
	if (fdio_write_all(STDOUT_FILENO, t->obuf, t->olen) == -1) {
		fprintf(stderr, "walcat: tail: standard output: %s\n",
		    strerror(errno));
		return -1;
	}
	t->outoff += t->olen;
	t->olen = 0;
	if (fflush(stdout) != 0) {
		fprintf(stderr, "walcat: tail: standard output: %s\n",
		    strerror(errno));
		return -1;
	}
	if (t->posfile == NULL || !t->positioned || t->saved)
		return 0;
	if (t->reg) {
		off_t end;

		if (!t->raw) {
			/* text through stdio: where its writes ended */
			if ((end = lseek(STDOUT_FILENO, 0, SEEK_CUR)) == -1) {
				fprintf(stderr, "walcat: tail: standard output: "
				    "%s\n", strerror(errno));
				return -1;
			}
			t->outoff = (uint64_t)end;
		}
		if (fdatasync(STDOUT_FILENO) == -1) {
			fprintf(stderr, "walcat: tail: standard output: "
			    "fdatasync: %s\n", strerror(errno));
			return -1;
		}
	}
	if (save_position(t) == -1) {
		fprintf(stderr, "walcat: tail: %s: %s\n", t->posfile,
		    strerror(errno));
		return -1;
	}
	t->saved = 1;
	return 0;
}

static int
tail_keep(struct tailer *t, const uint8_t *p, size_t len)
{
	if (t->ocap - t->olen < len) {
		size_t cap = t->ocap ? t->ocap : 65536;
		uint8_t *nb;

		while (cap - t->olen < len)
			cap *= 2;
		if ((nb = realloc(t->obuf, cap)) == NULL)
			return -1;
		t->obuf = nb;
		t->ocap = cap;
	}
	memcpy(t->obuf + t->olen, p, len);
	t->olen += len;
	return 0;
}

static int
tail_frames(struct tailer *t, const uint8_t *p, size_t len)
{
	struct fcw2_frame fr;
	int rc;

	if (fcw2_decoder_feed(&t->dec, p, len) == -1)
		return 3;
	while ((rc = fcw2_decoder_next(&t->dec, &fr)) == FCW2_OK) {
		if (t->raw) {
			if (tail_keep(t, fr.data, fr.len) == -1) {
				fprintf(stderr, "walcat: tail: out of memory\n");
				return 3;
			}
		} else
			walcat_print_record(stdout, t->json, t->snap_left > 0 ?
			    WALCAT_SEQ_SNAPSHOT : t->pos, &fr.rec, NULL, 0);
		if (t->snap_left > 0) {
			/* the position counts from start once it is over */
			if (--t->snap_left == 0)
				t->positioned = 1;
		} else
			t->pos++;
		t->got++;
		t->saved = 0;
		if (t->count && t->got >= t->count)
			return 0;
	}
	if (rc != FCW2_NEED_MORE) {
		fprintf(stderr, "walcat: tail: bad frame at stream byte %" PRIu64
		    ": %s\n", t->dec.offset, fcw2_strerror(rc));
		return 4;
	}
	return -1;	/* more */
}

int
walcat_tail(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "token-file", required_argument, NULL, 't' },
		{ "position-file", required_argument, NULL, 'p' },
		{ "count", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ "raw", no_argument, NULL, 'r' },
		{ "zstd", no_argument, NULL, 'z' },
		{ "stock", no_argument, NULL, 's' },
		{ "stream", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct handshake_reply hr;
	struct tailer t;
	struct tailpos tp;
	const char *from = "latest", *tokfile = NULL, *stream = NULL;
	char token[1100] = "-", line[2200], err[HANDSHAKE_LINE_MAX + 64];
	int stock = 0, zstd = 0, c, fd, rc = 1, linelen;
	int from_kind, has_epoch = 0;
	uint64_t from_seq = 0, epoch = 0;
	uint8_t buf[65536], zout[131072];
	ZSTD_DCtx *dz = NULL;
	size_t llen = 0;
	int have_reply, havepos = 0;

	memset(&t, 0, sizeof(t));
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'f': from = optarg; break;
		case 't': tokfile = optarg; break;
		case 'p': t.posfile = optarg; break;
		case 'n': t.count = strtoull(optarg, NULL, 10); break;
		case 'j': t.json = 1; break;
		case 'r': t.raw = 1; break;
		case 'z': zstd = 1; break;
		case 's': stock = 1; break;
		case 'S': stream = optarg; break;
		case 'h': tail_usage(stdout); return 0;
		default: tail_usage(stderr); return 3;
		}
	}
	if (optind + 1 != argc || (stock && (zstd || t.posfile))) {
		tail_usage(stderr);
		return 3;
	}
	if (stream != NULL && stock) {
		fprintf(stderr, "walcat: tail: --stream needs FCWAL-SUB/1: a "
		    "stock subscriber cannot name a stream (the relay routes it "
		    "by its subscribe token)\n");
		return 3;
	}
	if (stream != NULL && !config_stream_name_ok(stream)) {
		fprintf(stderr, "walcat: tail: --stream %s: not a stream name "
		    "(1 to 64 of A-Z a-z 0-9 _ . -)\n", stream);
		return 3;
	}
	if (tokfile != NULL && read_token(tokfile, token, sizeof(token)) == -1)
		return 3;
	if (handshake_parse_from(from, strlen(from), &from_kind,
	    &from_seq) == -1) {
		fprintf(stderr, "walcat: tail: --from %s: use a sequence "
		    "number, earliest, latest or snapshot\n", from);
		return 3;
	}
	if (t.posfile != NULL) {
		switch (load_position(t.posfile, &tp)) {
		case -1:
			return 3;
		case 1:
			havepos = 1;
			from_kind = HANDSHAKE_FROM_SEQ;
			from_seq = tp.seq;
			has_epoch = 1;
			epoch = tp.epoch;
			break;
		}
	}
	if (t.posfile != NULL && tail_output_open(&t, havepos ? &tp :
	    NULL) == -1)
		return 3;
	if (stock)
		linelen = handshake_format_auth(line, sizeof(line), token,
		    strlen(token));
	else
		linelen = handshake_format_sub_stream(line, sizeof(line),
		    token, strlen(token), from_kind, from_seq, has_epoch,
		    epoch, zstd ? HANDSHAKE_COMPRESS_ZSTD :
		    HANDSHAKE_COMPRESS_NONE, stream);
	if (linelen == -1) {
		fprintf(stderr, "walcat: tail: the token does not fit in a "
		    "handshake line (too long, or a space or line break in "
		    "it)\n");
		return 3;
	}
	signal(SIGPIPE, SIG_IGN);
	if ((fd = dial(argv[optind], 0)) == -1)
		return 3;
	if (fdio_send_all(fd, line, (size_t)linelen, NULL) == -1) {
		fprintf(stderr, "walcat: tail: %s\n", strerror(errno));
		close(fd);
		return 3;
	}
	if (tail_signals() == -1) {
		fprintf(stderr, "walcat: tail: signals: %s\n", strerror(errno));
		close(fd);
		return 3;
	}
	fcw2_decoder_init(&t.dec, FCW2_DEFAULT_MAX_FRAME, 1);
	if (zstd && (dz = ZSTD_createDCtx()) == NULL)
		return 3;
	have_reply = stock;
	for (;;) {
		struct pollfd pfd[2];
		ssize_t n;
		size_t off = 0;
		int r = -1;

		/* stop between reads only: every frame read is whole by now */
		if (tail_stop) {
			fprintf(stderr, "walcat: tail: %s: stopped after %"
			    PRIu64 " frames%s\n", strsignal(tail_stop), t.got,
			    t.positioned && t.posfile != NULL ?
			    ", position saved" : "");
			rc = 0;
			break;
		}
		pfd[0].fd = fd;
		pfd[0].events = POLLIN;
		pfd[1].fd = tail_sigpipe[0];
		pfd[1].events = POLLIN;
		if (poll(pfd, 2, -1) == -1 && errno != EINTR) {
			fprintf(stderr, "walcat: tail: poll: %s\n",
			    strerror(errno));
			rc = 3;
			break;
		}
		if (pfd[0].revents == 0)
			continue;	/* a signal: checked above */
		n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == -1 && (errno == EINTR || errno == EAGAIN ||
		    errno == EWOULDBLOCK))
			continue;
		if (n <= 0) {
			if (n == -1)
				fprintf(stderr, "walcat: tail: %s\n",
				    strerror(errno));
			else if (!have_reply)
				fprintf(stderr, "walcat: tail: closed before "
				    "a reply\n");
			else
				fprintf(stderr, "walcat: tail: connection "
				    "closed after %" PRIu64 " frames\n", t.got);
			rc = 1;
			break;
		}
		if (!have_reply) {
			while (off < (size_t)n && buf[off] != '\n' &&
			    llen < sizeof(line) - 1)
				line[llen++] = (char)buf[off++];
			if (off == (size_t)n)
				continue;
			off++;
			line[llen] = '\0';
			if (llen > 0 && line[llen - 1] == '\r')
				line[--llen] = '\0';
			if (handshake_parse_reply_line(line, llen, &hr, err,
			    sizeof(err)) == -1) {
				fprintf(stderr, "walcat: tail: bad reply: %s\n",
				    err);
				rc = 2;
				break;
			}
			if (!hr.hp_ok) {
				fprintf(stderr, "walcat: tail: %s\n", line);
				rc = 2;
				break;
			}
			t.pos = hr.hp_start;
			t.epoch = hr.hp_epoch;
			t.snap_left = hr.hp_has_snapshot ? hr.hp_snapshot : 0;
			t.positioned = t.snap_left == 0;
			if (!t.raw)
				fprintf(stderr, "walcat: tail: %s\n", line);
			have_reply = 1;
		}
		if (dz != NULL) {
			ZSTD_inBuffer in = { buf + off, (size_t)n - off, 0 };
			int full = 0;

			/* a full output buffer may leave output in the decoder */
			while ((in.pos < in.size || full) && r == -1) {
				ZSTD_outBuffer ob = { zout, sizeof(zout), 0 };
				size_t z = ZSTD_decompressStream(dz, &ob, &in);
				if (ZSTD_isError(z)) {
					fprintf(stderr, "walcat: tail: zstd: "
					    "%s\n", ZSTD_getErrorName(z));
					r = 4;
					break;
				}
				full = ob.pos == ob.size;
				r = tail_frames(&t, zout, ob.pos);
			}
		} else if ((size_t)n > off)
			r = tail_frames(&t, buf + off, (size_t)n - off);
		if (tail_commit(&t) == -1) {
			rc = 3;
			break;
		}
		if (r != -1) {
			rc = r;
			break;
		}
	}
	if (rc != 3 && tail_commit(&t) == -1)
		rc = 3;
	close(fd);
	fcw2_decoder_free(&t.dec);
	free(t.obuf);
	if (dz != NULL)
		ZSTD_freeDCtx(dz);
	return rc;
}

/* ---- health ----------------------------------------------------------- */

static void
health_usage(FILE *f)
{
	fprintf(f,
"usage: walcat health [--path P] [--timeout-ms N] ADDR\n"
"  Ask the relay's HTTP listener at ADDR for P (default /healthz), as a\n"
"  container's HEALTHCHECK does. Prints the status line.\n"
"options:\n"
"  --path P          the path to ask for (/healthz, /readyz)\n"
"  --timeout-ms N    give up after N ms (default 5000)\n"
"exit status: 0 the answer was 200, 1 any other answer or none in time,\n"
"  3 usage error.\n");
}

int
walcat_health(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "path", required_argument, NULL, 'p' },
		{ "timeout-ms", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *path = "/healthz", *addr;
	char req[512], resp[512], err[300];
	unsigned long timeout_ms = 5000;
	struct timeval tv;
	size_t len = 0;
	ssize_t n;
	char *end;
	int c, fd, code;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			path = optarg;
			break;
		case 't':
			timeout_ms = strtoul(optarg, &end, 10);
			if (*end != '\0' || timeout_ms == 0) {
				fprintf(stderr, "walcat: health: --timeout-ms "
				    "%s: not a number of milliseconds\n",
				    optarg);
				return 3;
			}
			break;
		case 'h':
			health_usage(stdout);
			return 0;
		default:
			health_usage(stderr);
			return 3;
		}
	}
	if (optind + 1 != argc || path[0] != '/' || strpbrk(path, " \r\n")) {
		health_usage(stderr);
		return 3;
	}
	addr = argv[optind];
	if (config_addr_check(addr, err, sizeof(err)) == -1) {
		fprintf(stderr, "walcat: health: %s\n", err);
		return 3;
	}
	signal(SIGPIPE, SIG_IGN);
	if ((fd = dial(addr, 0)) == -1)
		return 1;
	tv.tv_sec = (time_t)(timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000;
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n"
	    "Connection: close\r\n\r\n", path, addr);
	if (fdio_send_all(fd, req, strlen(req), NULL) == -1) {
		fprintf(stderr, "walcat: health: %s: %s\n", addr,
		    strerror(errno));
		close(fd);
		return 1;
	}
	while (len < sizeof(resp) - 1 && memchr(resp, '\n', len) == NULL) {
		if ((n = recv(fd, resp + len, sizeof(resp) - 1 - len, 0)) <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	resp[len] = '\0';
	resp[strcspn(resp, "\r\n")] = '\0';
	if (sscanf(resp, "HTTP/%*u.%*u %d", &code) != 1) {
		fprintf(stderr, "walcat: health: %s%s: no HTTP answer%s%s\n",
		    addr, path, len == 0 && errno != 0 ? ": " : "",
		    len == 0 && errno != 0 ? strerror(errno) : "");
		return 1;
	}
	printf("%s%s: %s\n", addr, path, resp);
	return code == 200 ? 0 : 1;
}
