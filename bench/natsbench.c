/*
 * natsbench: the same workload through NATS JetStream (Debian libnats).
 *
 *   natsbench sub --url nats://127.0.0.1:4222 -n N --count C [--timeout S]
 *                 [--ready FILE] [--replicas R]
 *                                    creates the stream (file storage),
 *                                    then N ordered consumers, one
 *                                    connection each; prints RESULT
 *   natsbench pub --url URL --count C --value-bytes V [--rate R]
 *                                    publishes the frames of walcat produce
 *                                    (async, acknowledged); prints INGEST
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nats/nats.h>

#include "common.h"

#define SUBJECT	"bench"
#define STREAM	"BENCH"

struct sub {
	natsConnection		*nc;
	jsCtx			*js;
	natsSubscription	*s;
	atomic_ullong		 frames, bytes;
	atomic_ullong		 last_ns;
};

static struct hist H;
static pthread_mutex_t hlock = PTHREAD_MUTEX_INITIALIZER;
static atomic_ullong first_ns;

static void
on_msg(natsConnection *nc, natsSubscription *s, natsMsg *m, void *arg)
{
	struct sub *sb = arg;
	const uint8_t *d = (const uint8_t *)natsMsg_GetData(m);
	int len = natsMsg_GetDataLength(m);
	uint64_t st = frame_stamp(d, (size_t)len), now = real_ns();
	unsigned long long z = 0;

	if (st != 0) {
		pthread_mutex_lock(&hlock);
		hist_add(&H, (int64_t)(now - st));
		pthread_mutex_unlock(&hlock);
	}
	atomic_compare_exchange_strong(&first_ns, &z, mono_ns());
	atomic_fetch_add(&sb->bytes, (unsigned long long)len);
	atomic_fetch_add(&sb->frames, 1);
	atomic_store(&sb->last_ns, mono_ns());
	natsMsg_Destroy(m);
}

static int
die(const char *what, natsStatus s, jsErrCode je)
{
	fprintf(stderr, "natsbench: %s: %s (%d)\n", what, natsStatus_GetText(s),
	    (int)je);
	return 3;
}

static int
connect_js(const char *url, natsConnection **nc, jsCtx **js, int pending)
{
	natsOptions *o;
	natsStatus s;
	jsOptions jo;

	if ((s = natsOptions_Create(&o)) != NATS_OK ||
	    (s = natsOptions_SetURL(o, url)) != NATS_OK ||
	    (s = natsOptions_UseGlobalMessageDelivery(o, true)) != NATS_OK ||
	    (s = natsOptions_SetMaxPendingMsgs(o, 1 << 20)) != NATS_OK ||
	    (s = natsConnection_Connect(nc, o)) != NATS_OK)
		return die("connect", s, 0);
	natsOptions_Destroy(o);
	jsOptions_Init(&jo);
	jo.PublishAsync.MaxPending = pending;
	jo.PublishAsync.StallWait = 60000;
	if ((s = natsConnection_JetStream(js, *nc, &jo)) != NATS_OK)
		return die("jetstream", s, 0);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "count", required_argument, NULL, 'c' },
		{ "value-bytes", required_argument, NULL, 'v' },
		{ "rate", required_argument, NULL, 'R' },
		{ "timeout", required_argument, NULL, 't' },
		{ "ready", required_argument, NULL, 'r' },
		{ "replicas", required_argument, NULL, 'P' },
		{ NULL, 0, NULL, 0 }
	};
	const char *url = "nats://127.0.0.1:4222", *ready = NULL, *mode;
	uint64_t count = 1000, rate = 0;
	size_t vbytes = 100;
	unsigned n = 1, replicas = 1;
	double timeout = 60;
	int c;
	natsStatus s;
	jsErrCode je = 0;

	if (argc < 2)
		return 3;
	mode = argv[1];
	optind = 2;
	while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
		switch (c) {
		case 'u': url = optarg; break;
		case 'n': n = (unsigned)atoi(optarg); break;
		case 'c': count = strtoull(optarg, NULL, 10); break;
		case 'v': vbytes = strtoull(optarg, NULL, 10); break;
		case 'R': rate = strtoull(optarg, NULL, 10); break;
		case 't': timeout = atof(optarg); break;
		case 'r': ready = optarg; break;
		case 'P': replicas = (unsigned)atoi(optarg); break;
		default: return 3;
		}
	}
	nats_Open(-1);
	nats_SetMessageDeliveryPoolSize(2);
	if (strcmp(mode, "pub") == 0) {
		natsConnection *nc;
		jsCtx *js;
		struct gen g;
		uint8_t *f;
		uint64_t t0, t1;

		if (connect_js(url, &nc, &js, 4096) != 0 ||
		    gen_init(&g, vbytes) == -1 || (f = malloc(g.maxf)) == NULL)
			return 3;
		t0 = mono_ns();
		for (uint64_t i = 0; i < count; i++) {
			size_t len = gen_next(&g, f);

			if ((s = js_PublishAsync(js, SUBJECT, f, (int)len, NULL))
			    != NATS_OK)
				return die("publish", s, 0);
			pace(t0, i, rate);
		}
		{
			jsPubOptions po;
			jsPubOptions_Init(&po);
			po.MaxWait = 120000;
			if ((s = js_PublishAsyncComplete(js, &po)) != NATS_OK)
				return die("publish complete", s, 0);
		}
		t1 = mono_ns();
		printf("INGEST frames=%llu secs=%.4f fps=%.1f\n",
		    (unsigned long long)count, (double)(t1 - t0) / 1e9,
		    (double)count / ((double)(t1 - t0) / 1e9));
		jsCtx_Destroy(js);
		natsConnection_Destroy(nc);
		return 0;
	}
	if (strcmp(mode, "sub") == 0) {
		struct sub *subs = calloc(n, sizeof(*subs));
		jsStreamConfig cfg;
		jsStreamInfo *si = NULL;
		const char *subjects[] = { SUBJECT };
		uint64_t deadline, frames = 0, bytes = 0, last = 0;
		unsigned done = 0;

		if (subs == NULL || hist_init(&H) == -1)
			return 3;
		for (unsigned i = 0; i < n; i++) {
			if (connect_js(url, &subs[i].nc, &subs[i].js, 4096) != 0)
				return 3;
		}
		jsStreamConfig_Init(&cfg);
		cfg.Name = STREAM;
		cfg.Subjects = subjects;
		cfg.SubjectsLen = 1;
		cfg.Storage = js_FileStorage;
		cfg.Replicas = replicas;
		if ((s = js_AddStream(&si, subs[0].js, &cfg, NULL, &je)) != NATS_OK)
			return die("add stream", s, je);
		jsStreamInfo_Destroy(si);
		for (unsigned i = 0; i < n; i++) {
			jsSubOptions so;

			jsSubOptions_Init(&so);
			so.Ordered = true;
			if ((s = js_Subscribe(&subs[i].s, subs[i].js, SUBJECT,
			    on_msg, &subs[i], NULL, &so, &je)) != NATS_OK)
				return die("subscribe", s, je);
			natsSubscription_SetPendingLimits(subs[i].s, -1, -1);
		}
		signal_ready(ready);
		deadline = mono_ns() + (uint64_t)(timeout * 1e9);
		while (mono_ns() < deadline) {
			done = 0;
			for (unsigned i = 0; i < n; i++)
				if (atomic_load(&subs[i].frames) >= count)
					done++;
			if (done == n)
				break;
			usleep(5000);
		}
		for (unsigned i = 0; i < n; i++) {
			frames += atomic_load(&subs[i].frames);
			bytes += atomic_load(&subs[i].bytes);
			if (atomic_load(&subs[i].last_ns) > last)
				last = atomic_load(&subs[i].last_ns);
		}
		pthread_mutex_lock(&hlock);
		report(stdout, frames, bytes, last > first_ns ?
		    (double)(last - first_ns) / 1e9 : 0, &H, done, n);
		pthread_mutex_unlock(&hlock);
		_exit(done == n ? 0 : 1);	/* no orderly teardown of N conns */
	}
	return 3;
}
