/*
 * test_fcw2.c: the FCW2 codec against the reference vectors and random data.
 */
#include "autoconfig.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fcw2.h"

#define MAX_VECTORS 32

struct vector {
	uint8_t		 bytes[512];
	size_t		 len;
	char		 label;
	char		 desc[256];
};

static struct vector vectors[MAX_VECTORS];
static int nvectors;

static void
load_vectors(void)
{
	char path[1024], line[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/fcw2-vectors.txt", WR_TEST_VECTORS);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	nvectors = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		struct vector *v;
		char *hash, *p;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		ck_assert_int_lt(nvectors, MAX_VECTORS);
		v = &vectors[nvectors++];
		hash = strchr(line, '#');
		ck_assert_ptr_nonnull(hash);
		snprintf(v->desc, sizeof(v->desc), "%s", hash + 2);
		v->desc[strcspn(v->desc, "\n")] = '\0';
		v->label = v->desc[0];
		v->len = 0;
		for (p = line; p + 1 < hash && p[0] != ' '; p += 2) {
			unsigned b;
			ck_assert_int_eq(sscanf(p, "%2x", &b), 1);
			v->bytes[v->len++] = (uint8_t)b;
		}
	}
	fclose(f);
	ck_assert_int_eq(nvectors, 6);
}

static const struct vector *
vector(char label)
{
	for (int i = 0; i < nvectors; i++)
		if (vectors[i].label == label)
			return &vectors[i];
	ck_abort_msg("no vector %c", label);
	return NULL;
}

struct expect {
	char		 label;
	uint8_t		 op;
	const char	*key;
	const char	*value;	/* NULL: 64 'x' */
	uint64_t	 ts;
	int64_t		 expire;
};

static const struct expect expected[] = {
	{ 'A', FCW2_OP_SET, "alpha", "one", 42, -1 },
	{ 'B', FCW2_OP_DEL, "beta", "", 43, -1 },
	{ 'C', FCW2_OP_EXPIRE, "alpha", "", 44, 99 },
	{ 'D', FCW2_OP_SET, "alpha", "xxxxxxxx", 42, 99 },
	{ 'E', FCW2_OP_SET, "alpha", NULL, 42, 99 },
	{ 'F', FCW2_OP_SET, "alpha", NULL, 42, 99 },
};

START_TEST(vectors_decode)
{
	const struct expect *e = &expected[_i];
	const struct vector *v;
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	char x64[65];
	const char *val;

	load_vectors();
	v = vector(e->label);
	memset(x64, 'x', 64);
	x64[64] = '\0';
	val = e->value ? e->value : x64;

	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
	ck_assert_int_eq(fcw2_decoder_feed(&dec, v->bytes, v->len), 0);
	ck_assert_int_eq(fcw2_decoder_next(&dec, &fr), FCW2_OK);
	ck_assert_uint_eq(fr.len, v->len);
	ck_assert_uint_eq(fr.offset, 0);
	ck_assert_uint_eq(fr.rec.op, e->op);
	ck_assert_uint_eq(fr.rec.key_len, strlen(e->key));
	ck_assert(memcmp(fr.rec.key, e->key, fr.rec.key_len) == 0);
	ck_assert_uint_eq(fr.rec.value_len, strlen(val));
	ck_assert(memcmp(fr.rec.value, val, fr.rec.value_len) == 0);
	ck_assert_uint_eq(fr.rec.timestamp_ms, e->ts);
	ck_assert_int_eq(fr.rec.expire_at_ms, e->expire);
	ck_assert_int_eq(fcw2_decoder_next(&dec, &fr), FCW2_NEED_MORE);
	ck_assert_int_eq(fcw2_decoder_finish(&dec), FCW2_OK);
	fcw2_decoder_free(&dec);
}
END_TEST

START_TEST(vectors_reencode)
{
	const struct expect *e = &expected[_i];	/* A-D only */
	const struct vector *v;
	struct fcw2_record rec;
	uint8_t out[1024];
	size_t n;

	load_vectors();
	v = vector(e->label);
	memset(&rec, 0, sizeof(rec));
	rec.op = e->op;
	rec.key = (const uint8_t *)e->key;
	rec.key_len = strlen(e->key);
	rec.value = (const uint8_t *)e->value;
	rec.value_len = strlen(e->value);
	rec.timestamp_ms = e->ts;
	rec.expire_at_ms = e->expire;
	ck_assert_uint_le(fcw2_encoded_max(&rec), sizeof(out));
	/* the cache's exporter with compression off: byte for byte */
	n = fcw2_encode(&rec, 0, out, sizeof(out));
	ck_assert_uint_eq(n, v->len);
	ck_assert(memcmp(out, v->bytes, n) == 0);
}
END_TEST

static Suite *
fcw2_suite(void)
{
	Suite *s = suite_create("fcw2");
	TCase *tc = tcase_create("vectors");

	tcase_add_loop_test(tc, vectors_decode, 0, 6);
	tcase_add_loop_test(tc, vectors_reencode, 0, 4);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(fcw2_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
