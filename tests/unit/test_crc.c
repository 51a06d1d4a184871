/*
 * test_crc.c: crc_update gives zlib's CRC-32, whichever implementation the
 * build uses; with ISA-L present both are compiled in and compared.
 */
#include "autoconfig.h"

#include <check.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "crc.h"
#include "fcw2.h"

#define TEST_SEED_DEFAULT	20261201u
#define MAX_LEN			70000
#define MAX_ALIGN		64

static uint64_t test_seed = TEST_SEED_DEFAULT;
static uint64_t rng_state;

static void
rng_seed(uint64_t salt)
{
	rng_state = test_seed ^ (salt * 0x9e3779b97f4a7c15ULL);
}

static uint64_t
rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void
rng_fill(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)rng_next();
}

/* zlib's crc32 itself, as the reference. */
static uint32_t
zlib_crc(uint32_t c, const uint8_t *p, size_t len)
{
	return (uint32_t)crc32_z(c, p, len);
}

/* Every implementation against the reference, from init, over p. */
static void
assert_all_agree(uint32_t init, const uint8_t *p, size_t len)
{
	uint32_t want = zlib_crc(init, p, len);

	ck_assert_msg(crc_update(init, p, len) == want,
	    "crc_update (%s) differs from zlib: init %08" PRIx32
	    " len %zu", crc_impl(), init, len);
	ck_assert_msg(crc_update_zlib(init, p, len) == want,
	    "crc_update_zlib differs from zlib: len %zu", len);
#ifdef HAVE_ISAL
	ck_assert_msg(crc_update_isal(init, p, len) == want,
	    "crc_update_isal differs from zlib: init %08" PRIx32
	    " len %zu", init, len);
#endif
}

START_TEST(known_values)
{
	const uint8_t *s = (const uint8_t *)"123456789";

	/* the CRC-32 check value, and nothing changes nothing */
	ck_assert_uint_eq(crc_update(0, s, 9), 0xcbf43926u);
	ck_assert_uint_eq(crc_update_zlib(0, s, 9), 0xcbf43926u);
	ck_assert_uint_eq(crc_update(0, NULL, 0), 0);
	ck_assert_uint_eq(crc_update(0x12345678u, s, 0), 0x12345678u);
	ck_assert_uint_eq(crc_update_zlib(0x12345678u, s, 0), 0x12345678u);
#ifdef HAVE_ISAL
	ck_assert_uint_eq(crc_update_isal(0, s, 9), 0xcbf43926u);
	ck_assert_uint_eq(crc_update_isal(0x12345678u, s, 0), 0x12345678u);
	ck_assert_str_eq(crc_impl(), "ISA-L");
#else
	ck_assert_str_eq(crc_impl(), "zlib");
#endif
}
END_TEST

/*
 * Random bytes of every length up to 1100 and of random lengths up to
 * 70000, at every alignment up to 64, from 0 and from random crcs.
 */
START_TEST(random_lengths_and_alignments)
{
	uint8_t *buf = malloc(MAX_LEN + MAX_ALIGN);
	size_t len, align;

	ck_assert_ptr_nonnull(buf);
	rng_seed(1);
	rng_fill(buf, MAX_LEN + MAX_ALIGN);
	for (len = 0; len <= 1100; len++) {
		align = (size_t)(rng_next() % MAX_ALIGN);
		assert_all_agree(0, buf + align, len);
		assert_all_agree((uint32_t)rng_next(), buf + align, len);
	}
	for (int i = 0; i < 600; i++) {
		len = (size_t)(rng_next() % (MAX_LEN + 1));
		align = (size_t)(rng_next() % MAX_ALIGN);
		assert_all_agree(i & 1 ? (uint32_t)rng_next() : 0,
		    buf + align, len);
	}
	assert_all_agree(0, buf, MAX_LEN);
	for (align = 0; align < MAX_ALIGN; align++)
		assert_all_agree(0, buf + align, MAX_LEN);
	free(buf);
}
END_TEST

/* A crc continued piece by piece equals the crc of the whole. */
START_TEST(incremental)
{
	uint8_t *buf = malloc(MAX_LEN);
	size_t len, done, piece;
	uint32_t want, c, cz;

	ck_assert_ptr_nonnull(buf);
	rng_seed(2);
	rng_fill(buf, MAX_LEN);
	for (int i = 0; i < 300; i++) {
		len = (size_t)(rng_next() % (MAX_LEN + 1));
		want = zlib_crc(0, buf, len);
		c = cz = 0;
		for (done = 0; done < len; done += piece) {
			/* pieces of 0 to 1/8 of the rest, often tiny */
			piece = (size_t)(rng_next() % ((i % 3 == 0 ? 17 :
			    (len - done) / 8 + 2)));
			if (piece > len - done)
				piece = len - done;
			c = crc_update(c, buf + done, piece);
			cz = crc_update_zlib(cz, buf + done, piece);
		}
		ck_assert_msg(c == want, "incremental crc_update (%s) "
		    "differs at len %zu", crc_impl(), len);
		ck_assert_uint_eq(cz, want);
#ifdef HAVE_ISAL
		c = 0;
		for (done = 0; done < len; done += piece) {
			piece = (size_t)(rng_next() % 4099);
			if (piece > len - done)
				piece = len - done;
			c = crc_update_isal(c, buf + done, piece);
		}
		ck_assert_uint_eq(c, want);
#endif
	}
	free(buf);
}
END_TEST

/* Any bytes followed by their own crc, little-endian, have one crc. */
START_TEST(residue)
{
	uint8_t buf[1024 + 4];
	uint32_t c;

	rng_seed(3);
	for (size_t len = 0; len <= 1024; len++) {
		rng_fill(buf, len);
		c = crc_update(0, buf, len);
		buf[len] = (uint8_t)c;
		buf[len + 1] = (uint8_t)(c >> 8);
		buf[len + 2] = (uint8_t)(c >> 16);
		buf[len + 3] = (uint8_t)(c >> 24);
		ck_assert_uint_eq(crc_update(0, buf, len + 4), CRC_RESIDUE);
		ck_assert_uint_eq(zlib_crc(0, buf, len + 4), CRC_RESIDUE);
		buf[rng_next() % (len + 4)] ^= (uint8_t)(1u << (rng_next() % 8));
		ck_assert_uint_ne(crc_update(0, buf, len + 4), CRC_RESIDUE);
	}
}
END_TEST

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

/*
 * Every frame of tests/vectors: its frame crc, and for an uncompressed
 * frame its record crc, are what every implementation computes, whole and
 * in two pieces at every split point.
 */
START_TEST(vectors)
{
	char path[1024], line[4096];
	uint8_t frame[512];
	size_t len, plen, nframes = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/fcw2-vectors.txt", WR_TEST_VECTORS);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	while (fgets(line, sizeof(line), f) != NULL) {
		char *p;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		len = 0;
		for (p = line; p[0] != ' ' && p[0] != '#' && p[1] != '\0';
		    p += 2) {
			unsigned b;

			ck_assert_int_eq(sscanf(p, "%2x", &b), 1);
			ck_assert_uint_lt(len, sizeof(frame));
			frame[len++] = (uint8_t)b;
		}
		ck_assert_uint_ge(len, FCW2_OVERHEAD);
		plen = fcw2_frame_len(frame) - FCW2_OVERHEAD;
		ck_assert_uint_eq(plen + FCW2_OVERHEAD, len);
		nframes++;

		assert_all_agree(0, frame, len - FCW2_CRC_LEN);
		ck_assert_uint_eq(crc_update(0, frame, len - FCW2_CRC_LEN),
		    get32(frame + len - FCW2_CRC_LEN));
		ck_assert_uint_eq(crc_update(0, frame, len), CRC_RESIDUE);
		for (size_t cut = 0; cut <= len - FCW2_CRC_LEN; cut++) {
			uint32_t c = crc_update(0, frame, cut);

			ck_assert_uint_eq(crc_update(c, frame + cut,
			    len - FCW2_CRC_LEN - cut),
			    get32(frame + len - FCW2_CRC_LEN));
#ifdef HAVE_ISAL
			c = crc_update_isal(0, frame, cut);
			ck_assert_uint_eq(crc_update_isal(c, frame + cut,
			    len - FCW2_CRC_LEN - cut),
			    get32(frame + len - FCW2_CRC_LEN));
#endif
		}
		if ((frame[4] & FCW2_FLAG_LZ4) == 0) {
			const uint8_t *r = frame + FCW2_HEADER_LEN;

			assert_all_agree(0, r, plen - 4);
			ck_assert_uint_eq(crc_update(0, r, plen - 4),
			    get32(r + plen - 4));
		}
	}
	fclose(f);
	ck_assert_uint_eq(nframes, 6);
}
END_TEST

static Suite *
crc_suite(void)
{
	Suite *s = suite_create("crc");
	TCase *tc = tcase_create("crc");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, known_values);
	tcase_add_test(tc, random_lengths_and_alignments);
	tcase_add_test(tc, incremental);
	tcase_add_test(tc, residue);
	tcase_add_test(tc, vectors);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	const char *env;
	int failed;

	if ((env = getenv("WALRELAY_TEST_SEED")) != NULL && *env != '\0')
		test_seed = strtoull(env, NULL, 0);
	printf("test_crc: %s, seed %" PRIu64 " (set WALRELAY_TEST_SEED to "
	    "change it)\n", crc_impl(), test_seed);
	fflush(stdout);
	sr = srunner_create(crc_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
