/*
 * test_chunk.c: refcounted chunks: frame walking, cutting, live counters.
 */
#include "autoconfig.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "fcw2.h"
#include "chunk.h"

/* Fill ch with n SET frames whose values are i*7 bytes long. */
static struct chunk *
fill_chunk(struct chunk *ch, uint64_t seq, int n, size_t *offsets)
{
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

/* A chunk of n SET frames whose values are i*7 bytes long. */
static struct chunk *
make_chunk(uint64_t seq, int n, size_t *offsets)
{
	return fill_chunk(chunk_new(1 << 20), seq, n, offsets);
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

/* Every byte the list holds, in list order, copied to out. */
static size_t
list_bytes(struct chunk_list *l, uint8_t *out, size_t cap)
{
	struct chunk *ch;
	size_t n = 0;

	TAILQ_FOREACH(ch, l, ch_entry) {
		ck_assert_uint_le(n + ch->ch_len, cap);
		memcpy(out + n, ch->ch_data, ch->ch_len);
		n += ch->ch_len;
	}
	return n;
}

START_TEST(merge_joins_small_sendable_runs)
{
	static uint8_t before[1 << 20], after[1 << 20];
	struct chunk_list l;
	struct chunk *c[7], *ch, *kept;
	size_t off[65], nb, na;
	/* seq, frames: c3 is big, c6 lies past `to`, c0 before `from` */
	const uint64_t seq[7] = { 0, 10, 15, 20, 84, 89, 94 };
	const int nfr[7] = { 10, 5, 5, 64, 5, 5, 5 };
	long live0 = chunk_live_count();
	long long capdelta = 0, cap0 = 0, cap1 = 0;

	TAILQ_INIT(&l);
	for (int i = 0; i < 7; i++) {
		c[i] = make_chunk(seq[i], nfr[i], off);
		TAILQ_INSERT_TAIL(&l, c[i], ch_entry);
	}
	ck_assert_uint_gt(c[3]->ch_len, 4096);
	ck_assert_uint_lt(c[1]->ch_len, 4096);
	nb = list_bytes(&l, before, sizeof(before));
	TAILQ_FOREACH(ch, &l, ch_entry)
		cap0 += (long long)ch->ch_cap;
	/* somebody else (the segment writer) still holds c1 */
	kept = c[1];
	chunk_ref(kept);

	ck_assert_uint_eq(chunk_list_merge(&l, 10, 94, 4096, 1 << 20, &capdelta), 2);
	na = list_bytes(&l, after, sizeof(after));
	TAILQ_FOREACH(ch, &l, ch_entry)
		cap1 += (long long)ch->ch_cap;
	ck_assert_int_eq(capdelta, cap1 - cap0);	/* what the list's buffers changed by */
	ck_assert_int_lt(capdelta, 0);
	ck_assert_uint_eq(na, nb);
	ck_assert_int_eq(memcmp(before, after, nb), 0);

	ch = TAILQ_FIRST(&l);
	ck_assert_ptr_eq(ch, c[0]);			/* before from: as it was */
	ch = TAILQ_NEXT(ch, ch_entry);
	ck_assert_uint_eq(ch->ch_seq, 10);		/* c1 + c2 */
	ck_assert_uint_eq(ch->ch_nframes, 10);
	ck_assert_uint_eq(ch->ch_cap, chunk_buf_size(ch->ch_len));
	ck_assert_uint_eq(chunk_offset_of(ch, 15), kept->ch_len);
	ch = TAILQ_NEXT(ch, ch_entry);
	ck_assert_ptr_eq(ch, c[3]);			/* big: as it was */
	ch = TAILQ_NEXT(ch, ch_entry);
	ck_assert_uint_eq(ch->ch_seq, 84);		/* c4 + c5 */
	ck_assert_uint_eq(ch->ch_nframes, 10);
	ch = TAILQ_NEXT(ch, ch_entry);
	ck_assert_ptr_eq(ch, c[6]);			/* past to: as it was */
	ck_assert_ptr_null(TAILQ_NEXT(ch, ch_entry));

	/* c2, c4, c5 were freed; c1 lives on for its other holder */
	ck_assert_int_eq(chunk_live_count(), live0 + 6);
	ck_assert_uint_eq(kept->ch_seq, 10);
	chunk_unref(kept);
	ck_assert_int_eq(chunk_live_count(), live0 + 5);

	while ((ch = TAILQ_FIRST(&l)) != NULL) {
		TAILQ_REMOVE(&l, ch, ch_entry);
		chunk_unref(ch);
	}
	ck_assert_int_eq(chunk_live_count(), live0);
}
END_TEST

START_TEST(merge_respects_max_and_gaps)
{
	struct chunk_list l;
	struct chunk *ch;
	size_t off[65], one;
	/* a gap between 20 and 30: never joined across it */
	const uint64_t seq[5] = { 0, 5, 10, 15, 30 };
	int i = 0;

	TAILQ_INIT(&l);
	for (int k = 0; k < 5; k++) {
		ch = make_chunk(seq[k], 5, off);
		TAILQ_INSERT_TAIL(&l, ch, ch_entry);
	}
	one = TAILQ_FIRST(&l)->ch_len;
	/* at most two chunks fit in max: 0+5, 10+15, then 30 alone */
	ck_assert_uint_eq(chunk_list_merge(&l, 0, 35, 4096, 2 * one, NULL), 2);
	TAILQ_FOREACH(ch, &l, ch_entry) {
		const uint64_t want_seq[3] = { 0, 10, 30 };
		const uint32_t want_n[3] = { 10, 10, 5 };

		ck_assert_int_lt(i, 3);
		ck_assert_uint_eq(ch->ch_seq, want_seq[i]);
		ck_assert_uint_eq(ch->ch_nframes, want_n[i]);
		i++;
	}
	ck_assert_int_eq(i, 3);
	/* nothing new to merge: a second call changes nothing */
	ck_assert_uint_eq(chunk_list_merge(&l, 0, 35, 4096, 2 * one, NULL), 0);
	while ((ch = TAILQ_FIRST(&l)) != NULL) {
		TAILQ_REMOVE(&l, ch, ch_entry);
		chunk_unref(ch);
	}
}
END_TEST

/* A buffer for views holding exactly n frames (see make_chunk). */
static struct chunk *
make_buffer(int n, size_t *off)
{
	struct chunk *tmp = make_chunk(0, n, off), *buf;

	ck_assert_ptr_nonnull(buf = chunk_buffer_new(tmp->ch_len));
	ck_assert_uint_eq(buf->ch_cap, tmp->ch_len);
	memcpy(buf->ch_data, tmp->ch_data, tmp->ch_len);
	buf->ch_len = tmp->ch_len;
	chunk_unref(tmp);
	return buf;
}

/* Views of buf for frames [from[i], to[i]), sequence numbers as frames. */
static void
make_views(struct chunk_list *l, struct chunk *buf, const size_t *off,
    const int *from, const int *to, int n, struct chunk **v)
{
	for (int i = 0; i < n; i++) {
		ck_assert_ptr_nonnull(v[i] = chunk_view(buf, off[from[i]],
		    off[to[i]] - off[from[i]], (uint64_t)from[i],
		    (uint32_t)(to[i] - from[i])));
		ck_assert_ptr_eq(v[i]->ch_data, buf->ch_data + off[from[i]]);
		TAILQ_INSERT_TAIL(l, v[i], ch_entry);
	}
}

/*
 * The upstream publishes each read as a view of the buffer it read into:
 * views that follow each other in that buffer merge into one view of it,
 * without a copy, and the buffer lives while any view does. A view that
 * leaves more than a 16th of its buffer unused is copied into a chunk of
 * its size instead: a reference to it would hold the whole buffer.
 */
START_TEST(views_merge_without_a_copy)
{
	struct chunk_list l;
	struct chunk *buf, *v[3], *ch, *kept;
	size_t off[65];
	long live0 = chunk_live_count();
	long long bytes0 = chunk_live_bytes(), capdelta = 0;
	const int from[3] = { 0, 10, 30 }, to[3] = { 10, 30, 64 };

	buf = make_buffer(64, off);
	ck_assert_int_eq(chunk_live_count(), live0);	/* not a frame chunk */
	TAILQ_INIT(&l);
	make_views(&l, buf, off, from, to, 3, v);
	/* a view holds no buffer of its own */
	ck_assert_int_eq(chunk_live_bytes(), bytes0 + (long long)buf->ch_cap);
	kept = v[1];			/* the writer still holds one */
	chunk_ref(kept);
	chunk_unref(buf);		/* the upstream moved on */
	/* even big ones join: no copy */
	ck_assert_uint_eq(chunk_list_merge(&l, 0, 200, 16, 1 << 20,
	    &capdelta), 2);
	ck_assert_int_eq(capdelta, 0);
	ch = TAILQ_FIRST(&l);
	ck_assert_ptr_null(TAILQ_NEXT(ch, ch_entry));
	ck_assert_uint_eq(ch->ch_seq, 0);
	ck_assert_uint_eq(ch->ch_nframes, 64);
	ck_assert_uint_eq(ch->ch_len, off[64]);
	ck_assert_ptr_nonnull(ch->ch_parent);
	ck_assert_ptr_eq(ch->ch_data, kept->ch_data - off[10]);
	ck_assert_uint_eq(chunk_offset_of(ch, 30), off[30]);
	/* the merged view and kept (not the buffer they share) */
	ck_assert_int_eq(chunk_live_count(), live0 + 2);
	TAILQ_REMOVE(&l, ch, ch_entry);
	chunk_unref(ch);
	ck_assert_int_eq(chunk_live_count(), live0 + 1);
	ck_assert_uint_eq(chunk_offset_of(kept, 11), off[11] - off[10]);
	chunk_unref(kept);
	ck_assert_int_eq(chunk_live_count(), live0);
	ck_assert_int_eq(chunk_live_bytes(), bytes0);
}
END_TEST

START_TEST(small_views_are_compacted)
{
	struct chunk_list l;
	struct chunk *buf, *v[2], *ch;
	size_t off[65];
	long live0 = chunk_live_count();
	long long bytes0 = chunk_live_bytes(), capdelta = 0;
	const int from[2] = { 0, 10 }, to[2] = { 10, 40 };

	buf = make_buffer(64, off);
	TAILQ_INIT(&l);
	make_views(&l, buf, off, from, to, 2, v);
	ck_assert_uint_eq(chunk_list_merge(&l, 0, 200, 16, 1 << 20,
	    &capdelta), 1);
	ch = TAILQ_FIRST(&l);
	ck_assert_ptr_null(TAILQ_NEXT(ch, ch_entry));
	ck_assert_ptr_null(ch->ch_parent);	/* a chunk of its own */
	ck_assert_uint_eq(ch->ch_seq, 0);
	ck_assert_uint_eq(ch->ch_nframes, 40);
	ck_assert_uint_eq(ch->ch_len, off[40]);
	ck_assert_uint_eq(ch->ch_cap, chunk_buf_size(off[40]));
	ck_assert_int_eq(capdelta, (long long)ch->ch_cap - (long long)off[40]);
	ck_assert(memcmp(ch->ch_data, buf->ch_data, off[40]) == 0);
	chunk_unref(buf);		/* nothing else holds the buffer */
	ck_assert_int_eq(chunk_live_bytes(), bytes0 + (long long)ch->ch_cap);
	TAILQ_REMOVE(&l, ch, ch_entry);
	chunk_unref(ch);
	ck_assert_int_eq(chunk_live_count(), live0);
	ck_assert_int_eq(chunk_live_bytes(), bytes0);
}
END_TEST

START_TEST(grow_and_shrink_keep_the_bytes)
{
	size_t off[65];
	struct chunk *ch = make_chunk(7, 64, off);
	uint8_t copy[1 << 16];
	size_t len = ch->ch_len;

	ck_assert_uint_le(len, sizeof(copy));
	memcpy(copy, ch->ch_data, len);
	chunk_shrink(ch);
	ck_assert_uint_eq(ch->ch_cap, chunk_buf_size(len));
	ck_assert_uint_ge(ch->ch_cap, len);
	ck_assert_int_eq(memcmp(ch->ch_data, copy, len), 0);
	ck_assert_int_eq(chunk_grow(ch, 3 << 20), 0);
	ck_assert_uint_ge(ch->ch_cap, 3 << 20);
	ck_assert_uint_eq(ch->ch_len, len);
	ck_assert_int_eq(memcmp(ch->ch_data, copy, len), 0);
	ck_assert_int_eq(chunk_live_bytes(), (long long)ch->ch_cap);
	chunk_unref(ch);
	ck_assert_int_eq(chunk_live_bytes(), 0);
}
END_TEST

START_TEST(freed_buffers_are_reused_then_released)
{
	struct chunk *a, *b, *many[40];
	uint8_t *p;
	unsigned long r0;

	chunk_cache_clear();
	ck_assert_uint_eq(chunk_cache_bytes(), 0);
	/* sizes from 64 KiB up come in 16 KiB steps */
	ck_assert_uint_eq(chunk_buf_size(1000), 1000);
	ck_assert_uint_eq(chunk_buf_size(100 * 1024), 112 * 1024);
	ck_assert_uint_eq(chunk_buf_size(112 * 1024), 112 * 1024);

	a = chunk_new(100 * 1024);
	ck_assert_uint_eq(a->ch_cap, 112 * 1024);
	p = a->ch_data;
	chunk_unref(a);
	/* small buffers are never kept */
	chunk_unref(chunk_new(1000));
#ifdef WR_ASAN
	/* sanitizer builds keep nothing, so a use after free is caught */
	ck_assert_uint_eq(chunk_cache_bytes(), 0);
	(void)b; (void)many; (void)p; (void)r0;
#else
	ck_assert_uint_eq(chunk_cache_bytes(), 112 * 1024);
	r0 = chunk_cache_reused();
	b = chunk_new(97 * 1024);		/* the same size: the same buffer */
	ck_assert_ptr_eq(b->ch_data, p);
	ck_assert_uint_eq(chunk_cache_reused(), r0 + 1);
	ck_assert_uint_eq(chunk_cache_bytes(), 0);
	chunk_unref(b);
	ck_assert_uint_eq(chunk_cache_bytes(), 112 * 1024);
	chunk_cache_tick();			/* reused since the last tick */
	ck_assert_uint_eq(chunk_cache_bytes(), 112 * 1024);
	chunk_cache_tick();			/* a second without reuse */
	ck_assert_uint_eq(chunk_cache_bytes(), 0);

	/* at most 4 MiB is kept, however much is freed */
	for (int i = 0; i < 40; i++)
		ck_assert_ptr_nonnull(many[i] = chunk_new(1 << 20));
	for (int i = 0; i < 40; i++)
		chunk_unref(many[i]);
	ck_assert_uint_eq(chunk_cache_bytes(), 4u << 20);
	chunk_cache_clear();
	ck_assert_uint_eq(chunk_cache_bytes(), 0);
#endif
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("chunk");
	TCase *tc = tcase_create("chunk");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, offset_of_every_frame);
	tcase_add_test(tc, cut_fits_whole_frames);
	tcase_add_test(tc, references_hold_the_chunk);
	tcase_add_test(tc, merge_joins_small_sendable_runs);
	tcase_add_test(tc, merge_respects_max_and_gaps);
	tcase_add_test(tc, views_merge_without_a_copy);
	tcase_add_test(tc, small_views_are_compacted);
	tcase_add_test(tc, grow_and_shrink_keep_the_bytes);
	tcase_add_test(tc, freed_buffers_are_reused_then_released);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
