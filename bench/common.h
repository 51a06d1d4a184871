/*
 * common.h: shared by the benchmark drivers: the synthetic FCW2 records of
 * `walcat produce --stamp` (same op mix, key and value sizes), a latency
 * histogram, clocks and the one-line report every driver prints.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

uint64_t	mono_ns(void);
uint64_t	real_ns(void);

/* Frame generator: walcat produce's records, stamped with CLOCK_REALTIME. */
struct gen {
	uint64_t	 seed;
	uint64_t	 i;
	size_t		 kbytes, vbytes, maxf;
	uint8_t		*key, *val;
};
int		gen_init(struct gen *, size_t value_bytes);
/* Encode the next frame into out (at least g->maxf bytes); its length. */
size_t		gen_next(struct gen *, uint8_t *out);

/* The send stamp of a frame, 0 when it carries none (DEL, EXPIRE, LZ4). */
uint64_t	frame_stamp(const uint8_t *f, size_t len);

/* Latency histogram: 1 us buckets up to 1 s, then one overflow bucket. */
#define HIST_BUCKETS	1000000
struct hist {
	uint64_t	*b;
	uint64_t	 n, over, max_ns;
};
int		hist_init(struct hist *);
void		hist_add(struct hist *, int64_t ns);
double		hist_pct_us(const struct hist *, double pct);

/* Paces a sender at `rate` items/s (0: no pacing). */
void		pace(uint64_t t0, uint64_t i, uint64_t rate);

void		report(FILE *, uint64_t frames, uint64_t bytes, double secs,
		    const struct hist *, unsigned complete, unsigned n);

/* Writes "ready" to path (atomically), for bench.py to wait on. */
void		signal_ready(const char *path);

#endif
