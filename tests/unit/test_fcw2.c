/*
 * test_fcw2.c: the FCW2 codec against the reference vectors and random data.
 */
#include "autoconfig.h"

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zlib.h>

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

/* Walking headers: frame boundaries only, never past end. */
START_TEST(walk_headers)
{
	struct fcw2_record rec;
	uint8_t buf[4096], key[8] = "k", val[300];
	size_t off[6], len = 0;
	uint64_t n;

	memset(&rec, 0, sizeof(rec));
	memset(val, 'v', sizeof(val));
	rec.op = FCW2_OP_SET;
	rec.key = key;
	rec.key_len = 1;
	rec.value = val;
	rec.expire_at_ms = -1;
	for (int i = 0; i < 5; i++) {
		off[i] = len;
		rec.value_len = (uint32_t)(i * 50);
		len += fcw2_encode(&rec, 0, buf + len, sizeof(buf) - len);
	}
	off[5] = len;
	ck_assert_uint_eq(fcw2_walk(buf, 0, len, UINT64_MAX, &n), len);
	ck_assert_uint_eq(n, 5);
	ck_assert_uint_eq(fcw2_walk(buf, 0, len, 2, &n), off[2]);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(fcw2_walk(buf, off[1], len, 0, &n), off[1]);
	ck_assert_uint_eq(n, 0);
	/* an end inside a frame, or inside a header: the boundary before */
	ck_assert_uint_eq(fcw2_walk(buf, 0, off[3] + 5, UINT64_MAX, &n), off[3]);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(fcw2_walk(buf, 0, off[4] - 1, UINT64_MAX, &n), off[3]);
	ck_assert_uint_eq(fcw2_walk(buf, off[2], off[2] + 4, UINT64_MAX, &n),
	    off[2]);
	ck_assert_uint_eq(n, 0);
	ck_assert_uint_eq(fcw2_walk(buf, len, len, UINT64_MAX, NULL), len);
	/* a header without the magic is not passed: the boundary before it */
	buf[off[3]] ^= 0xff;
	ck_assert_uint_eq(fcw2_walk(buf, 0, len, UINT64_MAX, &n), off[3]);
	ck_assert_uint_eq(n, 3);
}
END_TEST

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

/*
 * Random data: a fixed seed, printed by main, overridable with
 * WALRELAY_TEST_SEED. Every test reseeds from it, so a failure is
 * reproduced by running with the printed seed.
 */
#define TEST_SEED_DEFAULT	20261124u
#define MAX_VALUE		(1024 * 1024)

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

static uint32_t
rng_below(uint32_t n)
{
	return (uint32_t)(rng_next() % n);
}

static void
rng_fill(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)rng_next();
}

/* A record with owned key and value buffers. */
struct trec {
	struct fcw2_record	 rec;
	uint8_t			*key;
	uint8_t			*val;
};

/*
 * Random op, key of 0-300 bytes, value (SET only) of 0 bytes up to
 * max_value, either compressible (a short pattern repeated) or random.
 */
static void
trec_random(struct trec *t, uint32_t max_value)
{
	uint32_t klen, vlen = 0, r;

	memset(t, 0, sizeof(*t));
	t->rec.op = (uint8_t)(FCW2_OP_SET + rng_below(3));
	klen = rng_below(8) == 0 ? 0 : rng_below(301);
	if (t->rec.op == FCW2_OP_SET) {
		r = rng_below(20);
		if (r < 3)
			vlen = 0;
		else if (r < 12)
			vlen = rng_below(200);
		else if (r < 18)
			vlen = rng_below(8192);
		else
			vlen = rng_below(max_value + 1);
		if (vlen > max_value)
			vlen = max_value;
	}
	t->key = malloc(klen + 1);
	t->val = malloc(vlen + 1);
	ck_assert(t->key != NULL && t->val != NULL);
	rng_fill(t->key, klen);
	if (rng_below(2) == 0) {
		uint8_t pat[16];
		uint32_t plen = 1 + rng_below(sizeof(pat));

		rng_fill(pat, plen);
		for (uint32_t i = 0; i < vlen; i++)
			t->val[i] = pat[i % plen];
	} else
		rng_fill(t->val, vlen);
	t->rec.key = t->key;
	t->rec.key_len = klen;
	t->rec.value = t->val;
	t->rec.value_len = vlen;
	t->rec.timestamp_ms = rng_next();
	switch (rng_below(3)) {
	case 0:
		t->rec.expire_at_ms = -1;
		break;
	case 1:
		t->rec.expire_at_ms = (int64_t)(rng_next() >> 1);
		break;
	default:
		t->rec.expire_at_ms = -(int64_t)(rng_next() >> 1) - 1;
		break;
	}
}

static void
trec_free(struct trec *t)
{
	free(t->key);
	free(t->val);
}

/* Encode into a fresh buffer; returns it and its length. */
static uint8_t *
trec_encode(const struct trec *t, int compress, size_t *len)
{
	size_t max = fcw2_encoded_max(&t->rec);
	uint8_t *out = malloc(max);

	ck_assert_ptr_nonnull(out);
	*len = fcw2_encode(&t->rec, compress, out, max);
	ck_assert_uint_gt(*len, 0);
	ck_assert_uint_le(*len, max);
	return out;
}

static void
assert_same_record(const struct fcw2_record *got, const struct fcw2_record *want)
{
	ck_assert_uint_eq(got->op, want->op);
	ck_assert_uint_eq(got->key_len, want->key_len);
	ck_assert_uint_eq(got->value_len, want->value_len);
	ck_assert_uint_eq(got->timestamp_ms, want->timestamp_ms);
	ck_assert_int_eq(got->expire_at_ms, want->expire_at_ms);
	ck_assert(got->key_len == 0 ||
	    memcmp(got->key, want->key, got->key_len) == 0);
	ck_assert(got->value_len == 0 ||
	    memcmp(got->value, want->value, got->value_len) == 0);
}

static void
put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t
zcrc(const uint8_t *p, size_t len)
{
	return (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)len);
}

START_TEST(random_roundtrip)
{
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	struct trec t;
	size_t len;
	int nlz4 = 0, nlarge = 0, nempty_key = 0, nempty_val = 0;

	rng_seed(1);
	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
	for (int i = 0; i < 400; i++) {
		trec_random(&t, MAX_VALUE);
		nempty_key += t.rec.key_len == 0;
		nempty_val += t.rec.value_len == 0;
		nlarge += t.rec.value_len > 65536;
		for (int compress = 0; compress < 2; compress++) {
			uint8_t *out = trec_encode(&t, compress, &len);
			size_t raw = FCW2_OVERHEAD + FCW2_RECORD_MIN +
			    t.rec.key_len + t.rec.value_len;

			if (!compress || out[4] == 0) {
				ck_assert_uint_eq(out[4], 0);
				ck_assert_uint_eq(len, raw);
			} else {
				ck_assert_uint_eq(out[4], FCW2_FLAG_LZ4);
				ck_assert_uint_lt(len, raw);
				nlz4++;
			}
			ck_assert_int_eq(fcw2_decoder_feed(&dec, out, len), 0);
			ck_assert_int_eq(fcw2_decoder_next(&dec, &fr), FCW2_OK);
			ck_assert_uint_eq(fr.len, len);
			ck_assert(memcmp(fr.data, out, len) == 0);
			assert_same_record(&fr.rec, &t.rec);
			ck_assert_int_eq(fcw2_decoder_next(&dec, &fr),
			    FCW2_NEED_MORE);
			ck_assert_int_eq(fcw2_decoder_finish(&dec), FCW2_OK);
			free(out);
		}
		trec_free(&t);
	}
	fcw2_decoder_free(&dec);
	/* the random mix covered what it is meant to */
	ck_assert_int_gt(nlz4, 50);
	ck_assert_int_gt(nlarge, 3);
	ck_assert_int_gt(nempty_key, 10);
	ck_assert_int_gt(nempty_val, 10);
}
END_TEST

/*
 * Decode a frame with one bit flipped: it must never come out as a valid
 * frame; either an error at once, or an incomplete frame that finish
 * reports as trailing bytes.
 */
static void
assert_flip_rejected(const uint8_t *frame, size_t len, size_t bit,
    int records)
{
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	uint8_t *copy = malloc(len);
	int rc, fin;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, frame, len);
	copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, records);
	ck_assert_int_eq(fcw2_decoder_feed(&dec, copy, len), 0);
	rc = fcw2_decoder_next(&dec, &fr);
	fin = fcw2_decoder_finish(&dec);
	ck_assert_msg(rc != FCW2_OK,
	    "bit %zu of a %zu-byte frame flipped: decoded as valid", bit, len);
	if (rc == FCW2_NEED_MORE)
		ck_assert_msg(fin == FCW2_ERR_TRAILING,
		    "bit %zu flipped: incomplete, finish says %d", bit, fin);
	else
		ck_assert_msg(rc < 0 && fin == rc,
		    "bit %zu flipped: %d then finish %d", bit, rc, fin);
	fcw2_decoder_free(&dec);
	free(copy);
}

START_TEST(bitflip_vectors)
{
	const struct vector *v;

	load_vectors();
	v = &vectors[_i];
	for (size_t bit = 0; bit < v->len * 8; bit++) {
		assert_flip_rejected(v->bytes, v->len, bit, 1);
		assert_flip_rejected(v->bytes, v->len, bit, 0);
	}
}
END_TEST

START_TEST(bitflip_random)
{
	struct trec t;
	uint8_t *out;
	size_t len;
	int compressed = 0;

	rng_seed(2);
	for (int i = 0; i < 16; i++) {
		trec_random(&t, 600);
		out = trec_encode(&t, i & 1, &len);
		compressed += out[4] != 0;
		for (size_t bit = 0; bit < len * 8; bit++)
			assert_flip_rejected(out, len, bit, 1);
		free(out);
		trec_free(&t);
	}
	ck_assert_int_gt(compressed, 0);
}
END_TEST

/* A stream of whole frames: the vectors, then random frames. */
struct tstream {
	uint8_t		*buf;
	size_t		 len;
	size_t		 cap;
	size_t		 bounds[512];	/* end offset of each frame */
	size_t		 nframes;
};

static void
tstream_add(struct tstream *ts, const uint8_t *p, size_t len)
{
	if (ts->len + len > ts->cap) {
		while (ts->len + len > ts->cap)
			ts->cap = ts->cap ? ts->cap * 2 : 4096;
		ts->buf = realloc(ts->buf, ts->cap);
		ck_assert_ptr_nonnull(ts->buf);
	}
	memcpy(ts->buf + ts->len, p, len);
	ts->len += len;
	ck_assert_uint_lt(ts->nframes, 512);
	ts->bounds[ts->nframes++] = ts->len;
}

static void
tstream_build(struct tstream *ts, int nrandom, uint32_t max_value)
{
	struct trec t;
	uint8_t *out;
	size_t len;

	memset(ts, 0, sizeof(*ts));
	load_vectors();
	for (int i = 0; i < nvectors; i++)
		tstream_add(ts, vectors[i].bytes, vectors[i].len);
	for (int i = 0; i < nrandom; i++) {
		trec_random(&t, max_value);
		out = trec_encode(&t, rng_below(2), &len);
		tstream_add(ts, out, len);
		free(out);
		trec_free(&t);
	}
}

START_TEST(truncation)
{
	struct tstream ts;
	struct fcw2_decoder dec;
	struct fcw2_frame fr;

	rng_seed(3);
	tstream_build(&ts, 20, 300);
	for (size_t cut = 0; cut <= ts.len; cut++) {
		size_t whole = 0, n = 0;
		int at_bound = cut == 0;

		for (size_t i = 0; i < ts.nframes; i++) {
			if (ts.bounds[i] <= cut)
				whole = i + 1;
			if (ts.bounds[i] == cut)
				at_bound = 1;
		}
		fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
		ck_assert_int_eq(fcw2_decoder_feed(&dec, ts.buf, cut), 0);
		while (fcw2_decoder_next(&dec, &fr) == FCW2_OK)
			n++;
		ck_assert_uint_eq(n, whole);
		ck_assert_int_eq(fcw2_decoder_next(&dec, &fr), FCW2_NEED_MORE);
		ck_assert_int_eq(fcw2_decoder_finish(&dec),
		    at_bound ? FCW2_OK : FCW2_ERR_TRAILING);
		fcw2_decoder_free(&dec);
	}
	free(ts.buf);
}
END_TEST

struct tresult {
	size_t		 offsets[512];
	size_t		 lens[512];
	size_t		 n;
	int		 result;	/* error, or finish */
};

/* Feed buf in pieces of random size up to maxpiece (0: whole). */
static void
decode_split(const uint8_t *buf, size_t len, size_t maxpiece,
    struct tresult *res)
{
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	size_t done = 0, piece;
	int rc = FCW2_NEED_MORE;

	memset(res, 0, sizeof(*res));
	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
	while (done < len && rc >= 0) {
		piece = maxpiece == 0 ? len : 1 + rng_below((uint32_t)maxpiece);
		if (piece > len - done)
			piece = len - done;
		ck_assert_int_eq(fcw2_decoder_feed(&dec, buf + done, piece), 0);
		done += piece;
		while ((rc = fcw2_decoder_next(&dec, &fr)) == FCW2_OK) {
			ck_assert_uint_lt(res->n, 512);
			ck_assert(memcmp(fr.data, buf + fr.offset, fr.len) == 0);
			res->offsets[res->n] = fr.offset;
			res->lens[res->n] = fr.len;
			res->n++;
		}
	}
	res->result = rc < 0 ? rc : fcw2_decoder_finish(&dec);
	fcw2_decoder_free(&dec);
}

static void
assert_split_invariant(const uint8_t *buf, size_t len, size_t nexpect,
    int expect)
{
	static const size_t pieces[] = { 1, 2, 3, 7, 13, 64, 1000, 70000 };
	struct tresult whole, split;

	decode_split(buf, len, 0, &whole);
	ck_assert_uint_eq(whole.n, nexpect);
	ck_assert_int_eq(whole.result, expect);
	for (size_t p = 0; p < sizeof(pieces) / sizeof(pieces[0]); p++) {
		for (int round = 0; round < (pieces[p] == 1 ? 1 : 8); round++) {
			decode_split(buf, len, pieces[p], &split);
			ck_assert_int_eq(split.result, whole.result);
			ck_assert_uint_eq(split.n, whole.n);
			for (size_t i = 0; i < whole.n; i++) {
				ck_assert_uint_eq(split.offsets[i],
				    whole.offsets[i]);
				ck_assert_uint_eq(split.lens[i], whole.lens[i]);
			}
		}
	}
}

START_TEST(random_splits)
{
	struct tstream ts;
	size_t mid;

	rng_seed(4);
	tstream_build(&ts, 60, 100000);
	/* whole frames */
	assert_split_invariant(ts.buf, ts.len, ts.nframes, FCW2_OK);
	/* a torn tail */
	assert_split_invariant(ts.buf, ts.len - 5, ts.nframes - 1,
	    FCW2_ERR_TRAILING);
	/* a bad frame in the middle: everything before it, then its error */
	mid = ts.nframes / 2;
	ts.buf[ts.bounds[mid - 1] + 10] ^= 0x40;
	assert_split_invariant(ts.buf, ts.len, mid, FCW2_ERR_FRAME_CRC);
	free(ts.buf);
}
END_TEST

/*
 * Uncompressed records are checked in one pass with what the header adds
 * to the crc kept per record length in a small direct-mapped table: lengths
 * that share a slot, taking turns, must each be checked with their own.
 */
START_TEST(one_pass_lengths_sharing_a_slot)
{
	static uint8_t val[4096], frame[8192];
	struct fcw2_checker chk;
	struct fcw2_record rec;
	size_t flen, n;

	memset(val, 'q', sizeof(val));
	fcw2_checker_init(&chk, FCW2_DEFAULT_MAX_FRAME, 1);
	for (int round = 0; round < 3; round++) {
		for (uint32_t v = 600; v <= 600 + 5 * FCW2_CRC_SLOTS;
		    v += FCW2_CRC_SLOTS) {
			struct fcw2_record r = { FCW2_OP_SET, 3, v, 7, -1,
			    (const uint8_t *)"key", val };

			n = fcw2_encode(&r, 0, frame, sizeof(frame));
			ck_assert_uint_gt(n, 0);
			ck_assert_int_eq(fcw2_check(&chk, frame, n, &flen, &rec),
			    FCW2_OK);
			ck_assert_uint_eq(flen, n);
			ck_assert_uint_eq(rec.value_len, v);
			/* a flipped value byte: the frame crc no longer holds */
			frame[FCW2_HEADER_LEN + 40] ^= 0x10;
			ck_assert_int_eq(fcw2_check(&chk, frame, n, &flen, NULL),
			    FCW2_ERR_FRAME_CRC);
			frame[FCW2_HEADER_LEN + 40] ^= 0x10;
			/* a wrong stored frame crc, value intact */
			frame[n - 1] ^= 0x01;
			ck_assert_int_eq(fcw2_check(&chk, frame, n, &flen, NULL),
			    FCW2_ERR_FRAME_CRC);
		}
	}
	fcw2_checker_free(&chk);
}
END_TEST

/*
 * The one-pass check of uncompressed records against a two-pass reference
 * (zlib, both crcs from scratch, in the order the spec gives the errors),
 * with a checker that has seen each length before and one that has not:
 * record bytes changed with the frame crc fixed up (so the record crc, the
 * lengths or the op are what is wrong), and with it left alone.
 */
static int
reference_status(const uint8_t *f, size_t flen)
{
	const uint8_t *r = f + FCW2_HEADER_LEN;
	size_t plen = flen - FCW2_OVERHEAD;
	uint32_t klen, vlen;

	if (zcrc(f, flen - FCW2_CRC_LEN) != ((uint32_t)f[flen - 4] |
	    (uint32_t)f[flen - 3] << 8 | (uint32_t)f[flen - 2] << 16 |
	    (uint32_t)f[flen - 1] << 24))
		return FCW2_ERR_FRAME_CRC;
	if (plen < FCW2_RECORD_MIN)
		return FCW2_ERR_LENGTHS;
	klen = (uint32_t)r[1] | (uint32_t)r[2] << 8 | (uint32_t)r[3] << 16 |
	    (uint32_t)r[4] << 24;
	vlen = (uint32_t)r[5] | (uint32_t)r[6] << 8 | (uint32_t)r[7] << 16 |
	    (uint32_t)r[8] << 24;
	if ((uint64_t)FCW2_RECORD_MIN + klen + vlen != plen)
		return FCW2_ERR_LENGTHS;
	if (zcrc(r, plen - 4) != ((uint32_t)r[plen - 4] |
	    (uint32_t)r[plen - 3] << 8 | (uint32_t)r[plen - 2] << 16 |
	    (uint32_t)r[plen - 1] << 24))
		return FCW2_ERR_RECORD_CRC;
	if (r[0] < FCW2_OP_SET || r[0] > FCW2_OP_EXPIRE)
		return FCW2_ERR_OP;
	return FCW2_OK;
}

START_TEST(one_pass_matches_two_passes)
{
	struct fcw2_checker warm, cold;
	struct trec t;
	uint8_t *out;
	size_t len, flen, pos;
	int want, seen[16] = { 0 };

	rng_seed(7);
	fcw2_checker_init(&warm, FCW2_DEFAULT_MAX_FRAME, 1);
	for (int i = 0; i < 1500; i++) {
		/* few distinct lengths, so most checks find theirs kept */
		trec_random(&t, i % 5 == 0 ? 2000 : 40);
		out = trec_encode(&t, 0, &len);
		for (int k = 0; k < 4; k++) {
			if (k == 3) {
				/* any op, both crcs right */
				out[FCW2_HEADER_LEN] = (uint8_t)rng_below(5);
				put32(out + len - FCW2_CRC_LEN - 4,
				    zcrc(out + FCW2_HEADER_LEN,
				    len - FCW2_OVERHEAD - 4));
				put32(out + len - FCW2_CRC_LEN,
				    zcrc(out, len - FCW2_CRC_LEN));
			} else if (k > 0) {
				pos = FCW2_HEADER_LEN + rng_below((uint32_t)(len -
				    FCW2_HEADER_LEN));
				out[pos] ^= (uint8_t)(1 + rng_below(255));
				if (k == 2 && pos < len - FCW2_CRC_LEN)
					put32(out + len - FCW2_CRC_LEN,
					    zcrc(out, len - FCW2_CRC_LEN));
			}
			want = reference_status(out, len);
			seen[-want]++;
			ck_assert_msg(fcw2_check(&warm, out, len, &flen, NULL) ==
			    want, "frame %d/%d (%zu bytes): want %d", i, k, len,
			    want);
			fcw2_checker_init(&cold, FCW2_DEFAULT_MAX_FRAME, 1);
			ck_assert_int_eq(fcw2_check(&cold, out, len, &flen, NULL),
			    want);
			fcw2_checker_free(&cold);
		}
		free(out);
		trec_free(&t);
	}
	fcw2_checker_free(&warm);
	/* every outcome was reached */
	ck_assert_int_gt(seen[-FCW2_OK], 50);
	ck_assert_int_gt(seen[-FCW2_ERR_FRAME_CRC], 50);
	ck_assert_int_gt(seen[-FCW2_ERR_RECORD_CRC], 50);
	ck_assert_int_gt(seen[-FCW2_ERR_LENGTHS], 5);
	ck_assert_int_gt(seen[-FCW2_ERR_OP], 50);
}
END_TEST

START_TEST(over_cap)
{
	static const uint8_t huge[9] = { 'F', 'C', 'W', '2', 0,
	    0xff, 0xff, 0xff, 0xff };
	struct fcw2_checker chk;
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	const struct vector *d;
	size_t flen = 0;

	/* the header alone is enough: nothing past it is buffered */
	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
	ck_assert_int_eq(fcw2_decoder_feed(&dec, huge, sizeof(huge)), 0);
	ck_assert_int_eq(fcw2_decoder_next(&dec, &fr), FCW2_ERR_TOO_LARGE);
	ck_assert_int_eq(fcw2_decoder_finish(&dec), FCW2_ERR_TOO_LARGE);
	ck_assert_uint_eq(dec.offset, 0);
	fcw2_decoder_free(&dec);

	/* the cap counts whole frame bytes, inclusive */
	load_vectors();
	d = vector('D');
	fcw2_checker_init(&chk, d->len - 1, 1);
	ck_assert_int_eq(fcw2_check(&chk, d->bytes, d->len, &flen, NULL),
	    FCW2_ERR_TOO_LARGE);
	ck_assert_int_eq(fcw2_check(&chk, d->bytes, FCW2_HEADER_LEN, &flen,
	    NULL), FCW2_ERR_TOO_LARGE);
	fcw2_checker_free(&chk);
	fcw2_checker_init(&chk, d->len, 1);
	ck_assert_int_eq(fcw2_check(&chk, d->bytes, d->len, &flen, NULL),
	    FCW2_OK);
	ck_assert_uint_eq(flen, d->len);
	fcw2_checker_free(&chk);
}
END_TEST

/*
 * Frames built by hand with a correct frame crc, so that the check of the
 * payload inside is what fails.
 */
static size_t
build_record(uint8_t *p, uint8_t op, const char *key, const char *val)
{
	size_t klen = strlen(key), vlen = strlen(val);
	size_t body = FCW2_RECORD_FIXED + klen + vlen;

	memset(p, 0, FCW2_RECORD_FIXED);
	p[0] = op;
	put32(p + 1, (uint32_t)klen);
	put32(p + 5, (uint32_t)vlen);
	p[9] = 42;		/* timestamp 42 */
	memset(p + 17, 0xff, 8);	/* no expiry */
	memcpy(p + FCW2_RECORD_FIXED, key, klen);
	memcpy(p + FCW2_RECORD_FIXED + klen, val, vlen);
	put32(p + body, zcrc(p, body));
	return body + 4;
}

static size_t
build_frame(uint8_t *out, uint8_t flags, const uint8_t *payload, size_t plen)
{
	memcpy(out, FCW2_MAGIC, 4);
	out[4] = flags;
	put32(out + 5, (uint32_t)plen);
	memmove(out + FCW2_HEADER_LEN, payload, plen);
	put32(out + FCW2_HEADER_LEN + plen,
	    zcrc(out, FCW2_HEADER_LEN + plen));
	return FCW2_OVERHEAD + plen;
}

/* Compressed payload: stated raw length, then the LZ4 block of rec. */
static size_t
build_lz4(uint8_t *out, uint32_t stated, const uint8_t *rec, size_t rlen)
{
	int n = LZ4_compress_default((const char *)rec, (char *)out + 4,
	    (int)rlen, LZ4_compressBound((int)rlen));

	ck_assert_int_gt(n, 0);
	put32(out, stated);
	return (size_t)n + 4;
}

static int
check_frame(const uint8_t *frame, size_t len)
{
	struct fcw2_checker chk;
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	size_t flen = 0;
	int rc, rc2;

	fcw2_checker_init(&chk, FCW2_DEFAULT_MAX_FRAME, 1);
	rc = fcw2_check(&chk, frame, len, &flen, NULL);
	fcw2_checker_free(&chk);
	/* the decoder says the same, at offset 0 */
	fcw2_decoder_init(&dec, FCW2_DEFAULT_MAX_FRAME, 1);
	ck_assert_int_eq(fcw2_decoder_feed(&dec, frame, len), 0);
	rc2 = fcw2_decoder_next(&dec, &fr);
	ck_assert_int_eq(rc2, rc);
	if (rc < 0)
		ck_assert_uint_eq(dec.offset, 0);
	fcw2_decoder_free(&dec);
	/* with records not checked the frame itself is fine */
	fcw2_checker_init(&chk, FCW2_DEFAULT_MAX_FRAME, 0);
	ck_assert_int_eq(fcw2_check(&chk, frame, len, &flen, NULL), FCW2_OK);
	ck_assert_uint_eq(flen, len);
	fcw2_checker_free(&chk);
	return rc;
}

START_TEST(precise_errors)
{
	uint8_t rec[512], pay[1024], frame[1200];
	char val[200];
	size_t rlen, plen, flen;

	memset(val, 'v', sizeof(val) - 1);
	val[sizeof(val) - 1] = '\0';

	/* sanity: the builders make a valid frame */
	rlen = build_record(rec, FCW2_OP_SET, "key", "value");
	flen = build_frame(frame, 0, rec, rlen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_OK);

	/* an op other than 1, 2, 3 with a correct record crc */
	for (int op = 0; op < 256; op++) {
		if (op >= FCW2_OP_SET && op <= FCW2_OP_EXPIRE)
			continue;
		rlen = build_record(rec, (uint8_t)op, "key", "");
		flen = build_frame(frame, 0, rec, rlen);
		ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_OP);
	}

	/* lengths that do not fill the payload exactly */
	rlen = build_record(rec, FCW2_OP_SET, "key", "value");
	put32(rec + 1, 4);
	put32(rec + rlen - 4, zcrc(rec, rlen - 4));
	flen = build_frame(frame, 0, rec, rlen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LENGTHS);
	put32(rec + 1, 3);
	put32(rec + 5, 0xffffffffu);
	flen = build_frame(frame, 0, rec, rlen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LENGTHS);
	flen = build_frame(frame, 0, rec, FCW2_RECORD_MIN - 1);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LENGTHS);
	flen = build_frame(frame, 0, rec, 0);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LENGTHS);

	/* a record crc that does not match */
	rlen = build_record(rec, FCW2_OP_SET, "key", "value");
	rec[FCW2_RECORD_FIXED] ^= 1;
	flen = build_frame(frame, 0, rec, rlen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_RECORD_CRC);

	/* the same, inside a valid LZ4 block */
	rlen = build_record(rec, FCW2_OP_SET, "key", val);
	rec[rlen - 1] ^= 0x80;
	plen = build_lz4(pay, (uint32_t)rlen, rec, rlen);
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, plen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_RECORD_CRC);
	rec[rlen - 1] ^= 0x80;

	/* a valid LZ4 payload of a valid record, for reference */
	plen = build_lz4(pay, (uint32_t)rlen, rec, rlen);
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, plen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_OK);

	/* an LZ4 block cut short does not decode */
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, plen - 3);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LZ4);
	/* nor does a lone token asking for more literals than follow */
	put32(pay, (uint32_t)rlen);
	pay[4] = 0xf0;
	pay[5] = 0xff;
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, 6);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LZ4);

	/* a block that decodes to fewer or more bytes than stated */
	plen = build_lz4(pay, (uint32_t)rlen + 1, rec, rlen);
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, plen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LZ4_SIZE);
	plen = build_lz4(pay, (uint32_t)rlen - 1, rec, rlen);
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, plen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LZ4_SIZE);
	/* a stated size over the frame cap is never decoded */
	plen = build_lz4(pay, 0xffffffffu, rec, rlen);
	flen = build_frame(frame, FCW2_FLAG_LZ4, pay, plen);
	ck_assert_int_eq(check_frame(frame, flen), FCW2_ERR_LZ4_SIZE);
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

	tc = tcase_create("random");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, random_roundtrip);
	tcase_add_loop_test(tc, bitflip_vectors, 0, 6);
	tcase_add_test(tc, bitflip_random);
	tcase_add_test(tc, truncation);
	tcase_add_test(tc, random_splits);
	tcase_add_test(tc, one_pass_matches_two_passes);
	suite_add_tcase(s, tc);

	tc = tcase_create("errors");
	tcase_add_test(tc, one_pass_lengths_sharing_a_slot);
	tcase_add_test(tc, over_cap);
	tcase_add_test(tc, precise_errors);
	tcase_add_test(tc, walk_headers);
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
	printf("test_fcw2: seed %" PRIu64 " (set WALRELAY_TEST_SEED to "
	    "change it)\n", test_seed);
	fflush(stdout);
	sr = srunner_create(fcw2_suite());

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
