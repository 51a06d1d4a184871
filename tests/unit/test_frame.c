/*
 * test_frame.c: refcounted chunks: frame walking, cutting, live counters.
 */
#include "autoconfig.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "fcw2.h"
#include "frame.h"

/* A chunk of n SET frames whose values are i*7 bytes long. */
static struct chunk *
make_chunk(uint64_t seq, int n, size_t *offsets)
{
	struct chunk *ch = chunk_new(1 << 20);
	uint8_t val[4096];

	ck_assert_ptr_nonnull(ch);
	memset(val, 'v', sizeof(val));
	for (int i = 0; i < n; i++) {
		struct fcw2_record r = { FCW2_OP_SET, 3, (uint32_t)(i * 7), 1, -1,
		    (const uint8_t *)"key", val };
		offsets[i] = ch->ch_len;
		ch->ch_len += fcw2_encode(&r, 0, ch->ch_data + ch->ch_len,
		    ch->ch_cap - ch->ch_len);
	}
	offsets[n] = ch->ch_len;
	ch->ch_seq = seq;
	ch->ch_nframes = (uint32_t)n;
	return ch;
}

START_TEST(offset_of_every_frame)
{
	size_t off[65];
	struct chunk *ch = make_chunk(1000, 64, off);

	for (int i = 0; i <= 64; i++)
		ck_assert_uint_eq(chunk_offset_of(ch, 1000 + (uint64_t)i), off[i]);
	chunk_unref(ch);
}
END_TEST

START_TEST(cut_fits_whole_frames)
{
	size_t off[65];
	struct chunk *ch = make_chunk(0, 64, off);
	uint32_t n;

	for (int from = 0; from < 64; from += 5) {
		for (size_t room = 0; room < 3000; room += 37) {
			size_t len = chunk_cut(ch, off[from], room, &n);
			int k = from;

			/* the most whole frames that fit, at least one */
			while (k < 64 && (off[k + 1] - off[from] <= room ||
			    k == from))
				k++;
			ck_assert_uint_eq(n, (uint32_t)(k - from));
			ck_assert_uint_eq(len, off[k] - off[from]);
			ck_assert(len <= room || n == 1);
		}
	}
	/* the rest of the chunk when it all fits */
	ck_assert_uint_eq(chunk_cut(ch, off[10], 1 << 20, &n), off[64] - off[10]);
	ck_assert_uint_eq(n, 54);
	chunk_unref(ch);
}
END_TEST

START_TEST(references_hold_the_chunk)
{
	long before = chunk_live_count();
	size_t off[65];
	struct chunk *ch = make_chunk(0, 64, off);
	struct evbuffer *b = evbuffer_new();

	ck_assert_int_eq(chunk_live_count(), before + 1);
	/* a small span is copied, a large one referenced */
	ck_assert_int_eq(chunk_add_to_evbuffer(b, ch, 0, 10), 0);
	ck_assert_int_eq(chunk_add_to_evbuffer(b, ch, 0, ch->ch_len), 0);
	ck_assert_uint_gt(ch->ch_len, CHUNK_COPY_MAX);
	chunk_unref(ch);
	/* the buffer's reference keeps it alive until the bytes are gone */
	ck_assert_int_eq(chunk_live_count(), before + 1);
	evbuffer_drain(b, 10 + off[64] / 2);
	ck_assert_int_eq(chunk_live_count(), before + 1);
	evbuffer_free(b);
	ck_assert_int_eq(chunk_live_count(), before);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("frame");
	TCase *tc = tcase_create("chunk");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, offset_of_every_frame);
	tcase_add_test(tc, cut_fits_whole_frames);
	tcase_add_test(tc, references_hold_the_chunk);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
