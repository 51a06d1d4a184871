/*
 * fcw2speed: how fast the relay validates FCW2 frames on one core.
 *
 *     bench/build/bin/fcw2speed [MB]
 *
 * For SET records of several value sizes (uncompressed, as a cache sends
 * values that LZ4 does not shrink), encodes about MB megabytes of frames
 * (default 64), then times fcw2_check over them with record checking on,
 * as walrelay's ingest does, and one plain crc pass over the same bytes
 * for reference (crc_update: ISA-L, or zlib in a build without it). Best
 * of 5 runs; prints a table.
 */
#include "autoconfig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crc.h"
#include "fcw2.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	static const size_t sizes[] = { 100, 600, 1000, 1600, 6000, 16000 };
	size_t mb = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;

	if (mb == 0 || mb > 4096) {
		fprintf(stderr, "usage: fcw2speed [MB, 1-4096]\n");
		return 2;
	}
	printf("CRC-32: %s\n\n", crc_impl());
	printf("| value bytes | frame bytes | fcw2_check, records checked | "
	    "one crc pass |\n|---|---|---|---|\n");
	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t vb = sizes[si], cap, len = 0, n, one;
		struct fcw2_record r = { FCW2_OP_SET, 16, 0, 1700000000000ull,
		    -1, (const uint8_t *)"key-0123456789ab", NULL };
		struct fcw2_checker chk;
		double best = 1e9, bestcrc = 1e9;
		uint8_t *val, *buf;
		volatile uint32_t sink = 0;	/* keeps the crc pass */

		if ((val = malloc(vb)) == NULL)
			return 1;
		for (size_t i = 0; i < vb; i++)
			val[i] = (uint8_t)(i * 131 + si);
		r.value_len = (uint32_t)vb;
		r.value = val;
		one = fcw2_encoded_max(&r);
		n = mb * 1000000 / one + 1;
		cap = one * n;
		if ((buf = malloc(cap)) == NULL)
			return 1;
		for (size_t i = 0; i < n; i++)
			len += fcw2_encode(&r, 0, buf + len, cap - len);
		fcw2_checker_init(&chk, FCW2_DEFAULT_MAX_FRAME, 1);
		for (int rep = 0; rep < 5; rep++) {
			size_t off = 0, flen;
			double t0 = now();

			while (off < len) {
				if (fcw2_check(&chk, buf + off, len - off, &flen,
				    NULL) != FCW2_OK) {
					fprintf(stderr, "fcw2speed: a frame did "
					    "not validate\n");
					return 1;
				}
				off += flen;
			}
			if (now() - t0 < best)
				best = now() - t0;
			t0 = now();
			sink ^= crc_update(0, buf, len);
			if (now() - t0 < bestcrc)
				bestcrc = now() - t0;
		}
		printf("| %zu | %zu | %.2f GB/s | %.2f GB/s |\n", vb, len / n,
		    (double)len / best / 1e9, (double)len / bestcrc / 1e9);
		fcw2_checker_free(&chk);
		free(buf);
		free(val);
	}
	return 0;
}
