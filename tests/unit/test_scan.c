/*
 * test_scan.c: the streaming segment scanner: frames, resynchronisation
 * after corruption, torn tails, bounded buffering. Every case runs with
 * several block sizes so that frames straddle reads.
 */
#include "autoconfig.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fcw2.h"
#include "scan.h"

static const size_t block_sizes[] = { 5, 64, 4096, 0 };
#define NBLOCKS (sizeof(block_sizes) / sizeof(block_sizes[0]))

struct tfile {
	uint8_t		*buf;
	size_t		 len;
	size_t		 cap;
	size_t		 offs[64];	/* offset of each valid frame */
	size_t		 nframes;
};

static void
tfile_raw(struct tfile *tf, const void *p, size_t len)
{
	while (tf->len + len > tf->cap) {
		tf->cap = tf->cap ? tf->cap * 2 : 4096;
		tf->buf = realloc(tf->buf, tf->cap);
		ck_assert_ptr_nonnull(tf->buf);
	}
	memcpy(tf->buf + tf->len, p, len);
	tf->len += len;
}

/* Append a valid frame with a value of vlen bytes; returns its offset. */
static size_t
tfile_frame(struct tfile *tf, uint32_t vlen, int compress)
{
	struct fcw2_record rec;
	uint8_t *val, *out;
	size_t max, n, off = tf->len;
	char key[32];

	val = malloc(vlen + 1);
	ck_assert_ptr_nonnull(val);
	for (uint32_t i = 0; i < vlen; i++)
		val[i] = (uint8_t)(i * 7 + tf->nframes);
	memset(&rec, 0, sizeof(rec));
	snprintf(key, sizeof(key), "key-%zu", tf->nframes);
	rec.op = FCW2_OP_SET;
	rec.key = (const uint8_t *)key;
	rec.key_len = (uint32_t)strlen(key);
	rec.value = val;
	rec.value_len = vlen;
	rec.timestamp_ms = 1000 + tf->nframes;
	rec.expire_at_ms = -1;
	max = fcw2_encoded_max(&rec);
	out = malloc(max);
	ck_assert_ptr_nonnull(out);
	n = fcw2_encode(&rec, compress, out, max);
	ck_assert_uint_gt(n, 0);
	tfile_raw(tf, out, n);
	ck_assert_uint_lt(tf->nframes, 64);
	tf->offs[tf->nframes++] = off;
	free(out);
	free(val);
	return off;
}

static int
tfile_fd(const struct tfile *tf)
{
	FILE *f = tmpfile();
	int fd;

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(tf->buf, 1, tf->len, f), tf->len);
	ck_assert_int_eq(fflush(f), 0);
	fd = dup(fileno(f));
	fclose(f);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

struct tevents {
	struct scan_event	 ev[128];
	size_t			 n;
	size_t			 max_cap;	/* largest buffer seen */
};

static void
scan_all(const struct tfile *tf, size_t block, size_t max_frame,
    struct tevents *te)
{
	struct scan sc;
	char errbuf[256];
	int fd = tfile_fd(tf);

	memset(te, 0, sizeof(*te));
	scan_init(&sc, max_frame, block, 1);
	scan_start(&sc, fd);
	for (;;) {
		struct scan_event *ev;

		ck_assert_uint_lt(te->n, 128);
		ev = &te->ev[te->n++];
		ck_assert_int_eq(scan_next(&sc, ev, errbuf, sizeof(errbuf)), 0);
		if (sc.sc_cap > te->max_cap)
			te->max_cap = sc.sc_cap;
		if (ev->ev_type == SCAN_FRAME) {
			/* the frame is where the file has it */
			ck_assert(memcmp(ev->ev_data, tf->buf + ev->ev_offset,
			    ev->ev_len) == 0);
			ev->ev_data = NULL;
		}
		if (ev->ev_type == SCAN_END)
			break;
	}
	ck_assert_uint_eq(scan_bytes_read(&sc), tf->len);
	/* it stays at the end */
	ck_assert_int_eq(scan_next(&sc, &te->ev[te->n - 1], errbuf,
	    sizeof(errbuf)), 0);
	ck_assert_int_eq(te->ev[te->n - 1].ev_type, SCAN_END);
	scan_free(&sc);
	close(fd);
}

static void
assert_frame(const struct tevents *te, size_t i, size_t off)
{
	ck_assert_uint_lt(i, te->n);
	ck_assert_int_eq(te->ev[i].ev_type, SCAN_FRAME);
	ck_assert_uint_eq(te->ev[i].ev_offset, off);
}

static void
assert_end(const struct tevents *te, size_t i, size_t len)
{
	ck_assert_uint_eq(te->n, i + 1);
	ck_assert_int_eq(te->ev[i].ev_type, SCAN_END);
	ck_assert_uint_eq(te->ev[i].ev_offset, len);
}

START_TEST(scan_intact)
{
	struct tfile tf;
	struct tevents te;

	memset(&tf, 0, sizeof(tf));
	for (int i = 0; i < 20; i++)
		tfile_frame(&tf, (uint32_t)(i * 37), i & 1);
	scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
	for (size_t i = 0; i < tf.nframes; i++) {
		assert_frame(&te, i, tf.offs[i]);
		ck_assert_uint_eq(te.ev[i].ev_rec.timestamp_ms, 1000 + i);
	}
	assert_end(&te, tf.nframes, tf.len);

	/* an empty file is just the end */
	tf.len = 0;
	scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
	assert_end(&te, 0, 0);
	free(tf.buf);
}
END_TEST

START_TEST(scan_large_frame)
{
	struct tfile tf;
	struct tevents te;
	size_t block = block_sizes[_i] ? block_sizes[_i] : SCAN_BLOCK;

	memset(&tf, 0, sizeof(tf));
	tfile_frame(&tf, 10, 0);
	tfile_frame(&tf, 3 * 1024 * 1024, 0);	/* larger than a block */
	tfile_frame(&tf, 10, 0);
	scan_all(&tf, block_sizes[_i], 8 * 1024 * 1024, &te);
	for (size_t i = 0; i < 3; i++)
		assert_frame(&te, i, tf.offs[i]);
	assert_end(&te, 3, tf.len);
	/* the buffer grew for the frame, not for the file */
	ck_assert_uint_le(te.max_cap, tf.offs[2] - tf.offs[1] + block);
	free(tf.buf);
}
END_TEST

START_TEST(scan_bad_frame_resync)
{
	struct tfile tf;
	struct tevents te;

	memset(&tf, 0, sizeof(tf));
	for (int i = 0; i < 6; i++)
		tfile_frame(&tf, 100, 0);
	tf.buf[tf.offs[2] + 30] ^= 0x10;		/* frame 2: bad crc */
	scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
	assert_frame(&te, 0, tf.offs[0]);
	assert_frame(&te, 1, tf.offs[1]);
	ck_assert_int_eq(te.ev[2].ev_type, SCAN_BAD);
	ck_assert_uint_eq(te.ev[2].ev_offset, tf.offs[2]);
	ck_assert_int_eq(te.ev[2].ev_status, FCW2_ERR_FRAME_CRC);
	ck_assert_int_eq(te.ev[2].ev_resumed, 1);
	ck_assert_uint_eq(te.ev[2].ev_resume, tf.offs[3]);
	ck_assert_uint_eq(te.ev[2].ev_skipped, tf.offs[3] - tf.offs[2]);
	assert_frame(&te, 3, tf.offs[3]);
	assert_frame(&te, 4, tf.offs[4]);
	assert_frame(&te, 5, tf.offs[5]);
	assert_end(&te, 6, tf.len);
	free(tf.buf);
}
END_TEST

START_TEST(scan_garbage_between)
{
	static const char junk[] = "xxFCW2\001\002\003FCWFCW2\377\377\377\377junk";
	struct tfile tf;
	struct tevents te;
	size_t junk_off;

	memset(&tf, 0, sizeof(tf));
	tfile_frame(&tf, 50, 0);
	junk_off = tf.len;
	tfile_raw(&tf, junk, sizeof(junk) - 1);
	tfile_frame(&tf, 50, 1);
	/* a second bad region, a huge length */
	tfile_raw(&tf, "FCW2\000\377\377\377\177", 9);
	tfile_frame(&tf, 60, 0);
	scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
	assert_frame(&te, 0, tf.offs[0]);
	ck_assert_int_eq(te.ev[1].ev_type, SCAN_BAD);
	ck_assert_uint_eq(te.ev[1].ev_offset, junk_off);
	ck_assert_int_eq(te.ev[1].ev_status, FCW2_ERR_MAGIC);
	ck_assert_uint_eq(te.ev[1].ev_skipped, sizeof(junk) - 1);
	assert_frame(&te, 2, tf.offs[1]);
	ck_assert_int_eq(te.ev[3].ev_type, SCAN_BAD);
	ck_assert_uint_eq(te.ev[3].ev_offset, tf.offs[2] - 9);
	ck_assert_int_eq(te.ev[3].ev_status, FCW2_ERR_TOO_LARGE);
	ck_assert_uint_eq(te.ev[3].ev_skipped, 9);
	assert_frame(&te, 4, tf.offs[2]);
	assert_end(&te, 5, tf.len);
	free(tf.buf);
}
END_TEST

START_TEST(scan_torn_tail)
{
	struct tfile tf;
	struct tevents te;
	size_t full;

	memset(&tf, 0, sizeof(tf));
	tfile_frame(&tf, 40, 0);
	tfile_frame(&tf, 40, 0);
	full = tf.len - tf.offs[1];
	/* every cut inside the last frame, header included */
	for (size_t cut = 1; cut < full; cut++) {
		tf.len = tf.offs[1] + cut;
		scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
		assert_frame(&te, 0, tf.offs[0]);
		ck_assert_int_eq(te.ev[1].ev_type, SCAN_INCOMPLETE);
		ck_assert_uint_eq(te.ev[1].ev_offset, tf.offs[1]);
		ck_assert_uint_eq(te.ev[1].ev_have, cut);
		ck_assert_uint_eq(te.ev[1].ev_need,
		    cut >= FCW2_HEADER_LEN ? full : 0);
		assert_end(&te, 2, tf.len);
	}
	free(tf.buf);
}
END_TEST

START_TEST(scan_length_past_end)
{
	struct tfile tf;
	struct tevents te;

	/* frame 1's length is corrupt and runs past the end of the file */
	memset(&tf, 0, sizeof(tf));
	tfile_frame(&tf, 40, 0);
	tfile_frame(&tf, 40, 0);
	tfile_frame(&tf, 40, 0);
	tf.buf[tf.offs[1] + 7] = 0x10;
	scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
	assert_frame(&te, 0, tf.offs[0]);
	ck_assert_int_eq(te.ev[1].ev_type, SCAN_BAD);
	ck_assert_int_eq(te.ev[1].ev_status, FCW2_NEED_MORE);
	ck_assert_uint_eq(te.ev[1].ev_offset, tf.offs[1]);
	ck_assert_uint_eq(te.ev[1].ev_resume, tf.offs[2]);
	assert_frame(&te, 2, tf.offs[2]);
	assert_end(&te, 3, tf.len);
	free(tf.buf);
}
END_TEST

START_TEST(scan_bad_to_end)
{
	struct tfile tf;
	struct tevents te;

	memset(&tf, 0, sizeof(tf));
	tfile_frame(&tf, 40, 0);
	tfile_frame(&tf, 40, 0);
	tf.buf[tf.offs[1] + 20] ^= 1;
	scan_all(&tf, block_sizes[_i], FCW2_DEFAULT_MAX_FRAME, &te);
	assert_frame(&te, 0, tf.offs[0]);
	ck_assert_int_eq(te.ev[1].ev_type, SCAN_BAD);
	ck_assert_int_eq(te.ev[1].ev_resumed, 0);
	ck_assert_uint_eq(te.ev[1].ev_skipped, tf.len - tf.offs[1]);
	ck_assert_uint_eq(te.ev[1].ev_resume, tf.len);
	assert_end(&te, 2, tf.len);
	free(tf.buf);
}
END_TEST

static Suite *
scan_suite(void)
{
	Suite *s = suite_create("scan");
	TCase *tc = tcase_create("scan");

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, scan_intact, 0, NBLOCKS);
	tcase_add_loop_test(tc, scan_large_frame, 0, NBLOCKS);
	tcase_add_loop_test(tc, scan_bad_frame_resync, 0, NBLOCKS);
	tcase_add_loop_test(tc, scan_garbage_between, 0, NBLOCKS);
	tcase_add_loop_test(tc, scan_torn_tail, 0, NBLOCKS);
	tcase_add_loop_test(tc, scan_length_past_end, 0, NBLOCKS);
	tcase_add_loop_test(tc, scan_bad_to_end, 0, NBLOCKS);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(scan_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
