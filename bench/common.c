/* common.c: see common.h. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fcw2.h"
#include "common.h"

uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t
real_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
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
gen_init(struct gen *g, size_t vbytes)
{
	struct fcw2_record rec;

	memset(g, 0, sizeof(*g));
	g->seed = 1;
	g->kbytes = 16;
	g->vbytes = vbytes < 8 ? 8 : vbytes;
	g->key = malloc(g->kbytes);
	g->val = malloc(g->vbytes);
	if (g->key == NULL || g->val == NULL)
		return -1;
	for (size_t i = 0; i < g->vbytes; i++)
		g->val[i] = (uint8_t)("abcdefgh"[i % 8]);
	memset(&rec, 0, sizeof(rec));
	rec.op = FCW2_OP_SET;
	rec.key_len = (uint32_t)g->kbytes;
	rec.value_len = (uint32_t)g->vbytes;
	g->maxf = fcw2_encoded_max(&rec);
	return 0;
}

/* The same records as walcat produce --stamp (without --compress). */
size_t
gen_next(struct gen *g, uint8_t *out)
{
	struct fcw2_record rec;
	uint64_t r = xorshift(&g->seed), i = g->i++, ns;

	memset(&rec, 0, sizeof(rec));
	rec.op = r % 10 == 0 ? FCW2_OP_DEL : r % 10 == 1 ? FCW2_OP_EXPIRE :
	    FCW2_OP_SET;
	rec.key_len = (uint32_t)g->kbytes;
	rec.value_len = rec.op == FCW2_OP_SET ? (uint32_t)g->vbytes : 0;
	rec.timestamp_ms = real_ns() / 1000000;
	rec.expire_at_ms = r % 3 == 0 ? (int64_t)rec.timestamp_ms + 60000 : -1;
	for (size_t j = 0; j < g->kbytes; j++)
		g->key[j] = (uint8_t)('a' + (i >> (j * 4 % 60)) % 26);
	rec.key = g->key;
	rec.value = g->val;
	if (rec.op == FCW2_OP_SET) {
		ns = real_ns();
		memcpy(g->val, &ns, 8);
	}
	return fcw2_encode(&rec, 0, out, g->maxf);
}

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

uint64_t
frame_stamp(const uint8_t *f, size_t len)
{
	uint32_t klen, vlen;
	uint64_t ns;

	if (len < 9 + 25 || (f[4] & 1) || f[9] != FCW2_OP_SET)
		return 0;
	klen = le32(f + 10);
	vlen = le32(f + 14);
	if (vlen < 8 || 9 + 25 + (size_t)klen + 8 > len)
		return 0;
	memcpy(&ns, f + 9 + 25 + klen, 8);
	return ns;
}

int
hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
	h->b = calloc(HIST_BUCKETS, sizeof(*h->b));
	return h->b == NULL ? -1 : 0;
}

void
hist_add(struct hist *h, int64_t ns)
{
	uint64_t us;

	if (ns < 0)
		ns = 0;
	if ((uint64_t)ns > h->max_ns)
		h->max_ns = (uint64_t)ns;
	us = (uint64_t)ns / 1000;
	h->n++;
	if (us >= HIST_BUCKETS)
		h->over++;
	else
		h->b[us]++;
}

double
hist_pct_us(const struct hist *h, double pct)
{
	uint64_t want, seen = 0;

	if (h->n == 0)
		return -1;
	want = (uint64_t)((double)h->n * pct / 100.0);
	if (want >= h->n)
		want = h->n - 1;
	for (size_t i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen > want)
			return (double)i + 0.5;
	}
	return (double)h->max_ns / 1000.0;
}

void
pace(uint64_t t0, uint64_t i, uint64_t rate)
{
	uint64_t due, now;

	if (rate == 0)
		return;
	due = t0 + (i + 1) * 1000000000ull / rate;
	now = mono_ns();
	if (due > now + 200000) {
		struct timespec ts = { (time_t)((due - now) / 1000000000ull),
		    (long)((due - now) % 1000000000ull) };
		nanosleep(&ts, NULL);
	}
}

void
report(FILE *f, uint64_t frames, uint64_t bytes, double secs,
    const struct hist *h, unsigned complete, unsigned n)
{
	fprintf(f, "RESULT frames=%llu bytes=%llu secs=%.4f fps=%.1f bps=%.1f "
	    "lat_n=%llu p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
	    "complete=%u n=%u\n", (unsigned long long)frames,
	    (unsigned long long)bytes, secs,
	    secs > 0 ? (double)frames / secs : 0.0,
	    secs > 0 ? (double)bytes / secs : 0.0,
	    (unsigned long long)(h ? h->n : 0),
	    h ? hist_pct_us(h, 50) : -1, h ? hist_pct_us(h, 99) : -1,
	    h ? hist_pct_us(h, 99.9) : -1,
	    h ? (double)h->max_ns / 1000.0 : -1, complete, n);
	fflush(f);
}

void
signal_ready(const char *path)
{
	char tmp[4096];
	FILE *f;

	if (path == NULL)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if ((f = fopen(tmp, "w")) != NULL) {
		fputs("ready\n", f);
		fclose(f);
		rename(tmp, path);
	}
}
