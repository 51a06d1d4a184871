/*
 * redisbench: the same workload through Redis Streams (Debian hiredis).
 *
 *   redisbench sub --port P -n N --count C [--timeout S] [--ready FILE]
 *        N connections in one libevent loop, each XREAD BLOCK COUNT 1024
 *        from its last id; prints RESULT
 *   redisbench pub --port P --count C --value-bytes V [--rate R]
 *        XADD of walcat produce's frames, pipelined (256 in flight, or one
 *        millisecond's worth when paced); prints INGEST
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "common.h"

#define KEY	"bench"

struct rsub {
	redisAsyncContext	*ac;
	char			 last[64];
	uint64_t		 frames, bytes;
	int			 done;
	int			 ready;
};

static struct hist H;
static uint64_t count, first_ns, last_ns, total_frames, total_bytes;
static unsigned n, ndone;
static struct event_base *base;
static const char *ready_path;

static void xread_cb(redisAsyncContext *, void *, void *);

static void
issue(struct rsub *s)
{
	redisAsyncCommand(s->ac, xread_cb, s,
	    "XREAD BLOCK 2000 COUNT 1024 STREAMS " KEY " %s", s->last);
}

static void
xread_cb(redisAsyncContext *ac, void *r, void *arg)
{
	redisReply *rep = r;
	struct rsub *s = arg;
	uint64_t now = 0;

	if (rep == NULL) {
		fprintf(stderr, "redisbench: connection lost\n");
		event_base_loopbreak(base);
		return;
	}
	if (rep->type == REDIS_REPLY_ERROR) {
		fprintf(stderr, "redisbench: %s\n", rep->str);
		event_base_loopbreak(base);
		return;
	}
	if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0) {
		redisReply *ents = rep->element[0]->element[1];

		now = real_ns();
		if (first_ns == 0)
			first_ns = mono_ns();
		for (size_t i = 0; i < ents->elements; i++) {
			redisReply *e = ents->element[i];
			redisReply *fv = e->element[1];
			redisReply *v = fv->element[1];
			uint64_t st = frame_stamp((const uint8_t *)v->str,
			    (size_t)v->len);

			if (st != 0)
				hist_add(&H, (int64_t)(now - st));
			s->frames++;
			s->bytes += (uint64_t)v->len;
			total_frames++;
			total_bytes += (uint64_t)v->len;
			if (i + 1 == ents->elements)
				snprintf(s->last, sizeof(s->last), "%s",
				    e->element[0]->str);
		}
		last_ns = mono_ns();
	}
	if (s->frames >= count) {
		if (!s->done) {
			s->done = 1;
			if (++ndone == n)
				event_base_loopbreak(base);
		}
		return;
	}
	issue(s);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "count", required_argument, NULL, 'c' },
		{ "value-bytes", required_argument, NULL, 'v' },
		{ "rate", required_argument, NULL, 'R' },
		{ "timeout", required_argument, NULL, 't' },
		{ "ready", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 }
	};
	const char *mode;
	int port = 6379, c;
	uint64_t rate = 0;
	size_t vbytes = 100;
	double timeout = 60;

	if (argc < 2)
		return 3;
	mode = argv[1];
	optind = 2;
	n = 1;
	count = 1000;
	while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
		switch (c) {
		case 'p': port = atoi(optarg); break;
		case 'n': n = (unsigned)atoi(optarg); break;
		case 'c': count = strtoull(optarg, NULL, 10); break;
		case 'v': vbytes = strtoull(optarg, NULL, 10); break;
		case 'R': rate = strtoull(optarg, NULL, 10); break;
		case 't': timeout = atof(optarg); break;
		case 'r': ready_path = optarg; break;
		default: return 3;
		}
	}
	if (strcmp(mode, "pub") == 0) {
		redisContext *rc = redisConnect("127.0.0.1", port);
		struct gen g;
		uint8_t *f;
		uint64_t t0, t1, inflight = 0;
		uint64_t window = rate ? rate / 1000 + 1 : 256;
		redisReply *rep;

		if (rc == NULL || rc->err || gen_init(&g, vbytes) == -1 ||
		    (f = malloc(g.maxf)) == NULL) {
			fprintf(stderr, "redisbench: connect failed\n");
			return 3;
		}
		t0 = mono_ns();
		for (uint64_t i = 0; i < count; i++) {
			size_t len = gen_next(&g, f);

			redisAppendCommand(rc, "XADD " KEY " * d %b", f, len);
			if (++inflight >= window || i + 1 == count) {
				while (inflight > 0) {
					if (redisGetReply(rc, (void **)&rep) !=
					    REDIS_OK || rep->type ==
					    REDIS_REPLY_ERROR) {
						fprintf(stderr, "redisbench: "
						    "XADD failed\n");
						return 3;
					}
					freeReplyObject(rep);
					inflight--;
				}
				pace(t0, i, rate);
			}
		}
		t1 = mono_ns();
		printf("INGEST frames=%llu secs=%.4f fps=%.1f\n",
		    (unsigned long long)count, (double)(t1 - t0) / 1e9,
		    (double)count / ((double)(t1 - t0) / 1e9));
		redisFree(rc);
		return 0;
	}
	if (strcmp(mode, "sub") == 0) {
		struct rsub *subs = calloc(n, sizeof(*subs));
		struct timeval tv = { (time_t)timeout,
		    (long)((timeout - (double)(time_t)timeout) * 1e6) };

		if (subs == NULL || hist_init(&H) == -1 ||
		    (base = event_base_new()) == NULL)
			return 3;
		for (unsigned i = 0; i < n; i++) {
			subs[i].ac = redisAsyncConnect("127.0.0.1", port);
			if (subs[i].ac == NULL || subs[i].ac->err) {
				fprintf(stderr, "redisbench: connect failed\n");
				return 3;
			}
			redisLibeventAttach(subs[i].ac, base);
			strcpy(subs[i].last, "0-0");
			issue(&subs[i]);
		}
		/* the readers are blocked in XREAD once the loop has run */
		{
			struct timeval t = { 0, 200000 };
			event_base_loopexit(base, &t);
			event_base_dispatch(base);
		}
		signal_ready(ready_path);
		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
		report(stdout, total_frames, total_bytes, last_ns > first_ns ?
		    (double)(last_ns - first_ns) / 1e9 : 0, &H, ndone, n);
		_exit(ndone == n ? 0 : 1);
	}
	return 3;
}
