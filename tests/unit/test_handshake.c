/*
 * test_handshake.c: the first-line accumulator, the request and reply
 * parsers and the reply lines.
 */
#include "autoconfig.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "handshake.h"

static char err[256];

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t
rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Parse a line given without its LF. */
static int
parse(const char *line, struct handshake_req *req)
{
	err[0] = '\0';
	return handshake_parse_line(line, strlen(line), req, err, sizeof(err));
}

static void
assert_token(const struct handshake_req *req, const char *want)
{
	ck_assert_uint_eq(req->hr_token_len, strlen(want));
	ck_assert(memcmp(req->hr_token, want, strlen(want)) == 0);
}

START_TEST(auth_forms)
{
	struct handshake_req req;

	ck_assert_int_eq(parse("FCWAL-AUTH/1 tok", &req), 0);
	ck_assert_int_eq(req.hr_kind, HANDSHAKE_AUTH);
	assert_token(&req, "tok");
	/* everything after the one space, byte for byte */
	ck_assert_int_eq(parse("FCWAL-AUTH/1  a b\tc ", &req), 0);
	assert_token(&req, " a b\tc ");
	ck_assert_int_eq(parse("FCWAL-AUTH/1 earliest 5 epoch=zz", &req), 0);
	assert_token(&req, "earliest 5 epoch=zz");
	/* an empty token parses; it matches no configured token */
	ck_assert_int_eq(parse("FCWAL-AUTH/1 ", &req), 0);
	ck_assert_int_eq(req.hr_kind, HANDSHAKE_AUTH);
	ck_assert_uint_eq(req.hr_token_len, 0);
}
END_TEST

START_TEST(sub_forms)
{
	struct handshake_req req;

	ck_assert_int_eq(parse("FCWAL-SUB/1 tok 0", &req), 0);
	ck_assert_int_eq(req.hr_kind, HANDSHAKE_SUB);
	assert_token(&req, "tok");
	ck_assert_int_eq(req.hr_from_kind, HANDSHAKE_FROM_SEQ);
	ck_assert_uint_eq(req.hr_from, 0);
	ck_assert_int_eq(req.hr_has_epoch, 0);
	ck_assert_int_eq(req.hr_compress, HANDSHAKE_COMPRESS_NONE);

	ck_assert_int_eq(parse("FCWAL-SUB/1 t 18446744073709551615", &req), 0);
	ck_assert_uint_eq(req.hr_from, UINT64_MAX);
	ck_assert_int_eq(parse("FCWAL-SUB/1 t 007", &req), 0);
	ck_assert_uint_eq(req.hr_from, 7);

	ck_assert_int_eq(parse("FCWAL-SUB/1 t earliest", &req), 0);
	ck_assert_int_eq(req.hr_from_kind, HANDSHAKE_FROM_EARLIEST);
	ck_assert_int_eq(parse("FCWAL-SUB/1 t latest", &req), 0);
	ck_assert_int_eq(req.hr_from_kind, HANDSHAKE_FROM_LATEST);

	ck_assert_int_eq(parse("FCWAL-SUB/1 t 42 epoch=0123456789abcDEF",
	    &req), 0);
	ck_assert_uint_eq(req.hr_from, 42);
	ck_assert_int_eq(req.hr_has_epoch, 1);
	ck_assert_uint_eq(req.hr_epoch, 0x0123456789abcdefULL);
	ck_assert_int_eq(parse("FCWAL-SUB/1 t 42 epoch=f", &req), 0);
	ck_assert_uint_eq(req.hr_epoch, 0xf);
	ck_assert_int_eq(parse("FCWAL-SUB/1 t 42 epoch=0", &req), 0);
	ck_assert_int_eq(req.hr_has_epoch, 1);
	ck_assert_uint_eq(req.hr_epoch, 0);

	ck_assert_int_eq(parse("FCWAL-SUB/1 t latest compress=zstd", &req), 0);
	ck_assert_int_eq(req.hr_compress, HANDSHAKE_COMPRESS_ZSTD);
	ck_assert_int_eq(parse("FCWAL-SUB/1 t latest compress=none", &req), 0);
	ck_assert_int_eq(req.hr_compress, HANDSHAKE_COMPRESS_NONE);
	ck_assert_int_eq(parse("FCWAL-SUB/1 t 9 compress=zstd epoch=ab", &req),
	    0);
	ck_assert_int_eq(req.hr_compress, HANDSHAKE_COMPRESS_ZSTD);
	ck_assert_uint_eq(req.hr_epoch, 0xab);
	ck_assert_int_eq(parse("FCWAL-SUB/1 a=b 9", &req), 0);
	assert_token(&req, "a=b");
}
END_TEST

struct bad {
	const char	*line;
	int		 kind;
	const char	*want;
};

static const struct bad bads[] = {
	{ "FCWAL-SUB/1", HANDSHAKE_SUB, "missing token" },
	{ "FCWAL-SUB/1 ", HANDSHAKE_SUB, "missing token" },
	{ "FCWAL-SUB/1 tok", HANDSHAKE_SUB, "missing <from>" },
	{ "FCWAL-SUB/1 tok ", HANDSHAKE_SUB, "empty field" },
	{ "FCWAL-SUB/1  5", HANDSHAKE_SUB, "empty field" },
	{ "FCWAL-SUB/1 tok 5 ", HANDSHAKE_SUB, "empty field" },
	{ "FCWAL-SUB/1 tok 5  epoch=1", HANDSHAKE_SUB, "empty field" },
	{ "FCWAL-SUB/1 tok -1", HANDSHAKE_SUB, "bad <from> '-1'" },
	{ "FCWAL-SUB/1 tok +1", HANDSHAKE_SUB, "bad <from>" },
	{ "FCWAL-SUB/1 tok 18446744073709551616", HANDSHAKE_SUB,
	  "bad <from>" },
	{ "FCWAL-SUB/1 tok 12a", HANDSHAKE_SUB, "bad <from> '12a'" },
	{ "FCWAL-SUB/1 tok Earliest", HANDSHAKE_SUB, "bad <from>" },
	{ "FCWAL-SUB/1 tok 0x10", HANDSHAKE_SUB, "bad <from>" },
	{ "FCWAL-SUB/1 tok 5 epoch=", HANDSHAKE_SUB, "bad epoch ''" },
	{ "FCWAL-SUB/1 tok 5 epoch=12345678901234567", HANDSHAKE_SUB,
	  "bad epoch" },
	{ "FCWAL-SUB/1 tok 5 epoch=xyz", HANDSHAKE_SUB, "bad epoch 'xyz'" },
	{ "FCWAL-SUB/1 tok 5 epoch=0x12", HANDSHAKE_SUB, "bad epoch" },
	{ "FCWAL-SUB/1 tok 5 compress=gzip", HANDSHAKE_SUB,
	  "bad compress 'gzip'" },
	{ "FCWAL-SUB/1 tok 5 compress=", HANDSHAKE_SUB, "bad compress" },
	{ "FCWAL-SUB/1 tok 5 foo=bar", HANDSHAKE_SUB, "unknown option 'foo'" },
	{ "FCWAL-SUB/1 tok 5 =1", HANDSHAKE_SUB, "unknown option ''" },
	{ "FCWAL-SUB/1 tok 5 epoch", HANDSHAKE_SUB, "is not key=value" },
	{ "FCWAL-SUB/1 tok 5 epoch=1 epoch=2", HANDSHAKE_SUB,
	  "duplicate option epoch" },
	{ "FCWAL-SUB/1 tok 5 compress=zstd compress=none", HANDSHAKE_SUB,
	  "duplicate option compress" },
	{ "FCWAL-AUTH/1", HANDSHAKE_AUTH, "missing token" },
	{ "FCWAL-AUTH/2 tok", HANDSHAKE_NONE, "unsupported version "
	  "'FCWAL-AUTH/2'" },
	{ "FCWAL-SUB/2 t 1", HANDSHAKE_NONE, "unsupported version" },
	{ "FCWAL-AUTH/1tok", HANDSHAKE_NONE, "unsupported version" },
	{ "GET / HTTP/1.1", HANDSHAKE_NONE, "not an FCWAL-AUTH/1 or "
	  "FCWAL-SUB/1 line" },
	{ "", HANDSHAKE_NONE, "not an FCWAL" },
	{ "fcwal-auth/1 tok", HANDSHAKE_NONE, "not an FCWAL" },
	{ " FCWAL-AUTH/1 tok", HANDSHAKE_NONE, "not an FCWAL" },
	{ "FCW2", HANDSHAKE_NONE, "not an FCWAL" },
};

START_TEST(bad_requests)
{
	const struct bad *b = &bads[_i];
	struct handshake_req req;

	ck_assert_msg(parse(b->line, &req) == -1, "'%s' parsed", b->line);
	ck_assert_int_eq(req.hr_kind, b->kind);
	ck_assert_msg(strstr(err, b->want) != NULL, "'%s': error '%s' lacks "
	    "'%s'", b->line, err, b->want);
}
END_TEST

/* Untrusted bytes are not echoed raw into a message. */
START_TEST(bad_request_text_is_clean)
{
	struct handshake_req req;
	char line[600];

	snprintf(line, sizeof(line), "FCWAL-SUB/1 t \x1b[2J%0500d", 1);
	ck_assert_int_eq(parse(line, &req), -1);
	ck_assert_ptr_null(strchr(err, '\x1b'));
	ck_assert_uint_lt(strlen(err), 120);
}
END_TEST

static const char stream[] = "FCWAL-SUB/1 tok 5 epoch=ff\r\nFCW2\x01\x02";
#define LINE_END	28	/* bytes up to and including the LF */

START_TEST(feed_whole)
{
	struct handshake hs;
	struct handshake_req req;
	size_t used, len;
	const char *line;

	ck_assert_int_eq(stream[LINE_END - 1], '\n');
	handshake_init(&hs);
	ck_assert(!handshake_done(&hs));
	ck_assert_int_eq(handshake_feed(&hs, stream, sizeof(stream) - 1,
	    &used), HANDSHAKE_LINE);
	ck_assert_uint_eq(used, LINE_END);	/* "FCW2..." is left */
	ck_assert(handshake_done(&hs));
	ck_assert(handshake_is_sub(&hs));
	line = handshake_line(&hs, &len);
	ck_assert_uint_eq(len, LINE_END - 2);	/* CR LF dropped */
	ck_assert(memcmp(line, stream, len) == 0);
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), 0);
	ck_assert_uint_eq(req.hr_epoch, 0xff);
	/* done: nothing more is taken */
	ck_assert_int_eq(handshake_feed(&hs, "more\n", 5, &used),
	    HANDSHAKE_LINE);
	ck_assert_uint_eq(used, 0);
}
END_TEST

START_TEST(feed_bytewise)
{
	struct handshake hs;
	struct handshake_req req;
	size_t used, i;
	int rc;

	handshake_init(&hs);
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), -1);
	for (i = 0; i < LINE_END - 1; i++) {
		rc = handshake_feed(&hs, stream + i, 1, &used);
		ck_assert_int_eq(rc, HANDSHAKE_NEED_MORE);
		ck_assert_uint_eq(used, 1);
		ck_assert(!handshake_done(&hs));
	}
	ck_assert_int_eq(handshake_feed(&hs, stream + i, 1, &used),
	    HANDSHAKE_LINE);
	ck_assert_uint_eq(used, 1);
	ck_assert_uint_eq(hs.hs_len, LINE_END - 2);
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), 0);
	ck_assert_int_eq(req.hr_kind, HANDSHAKE_SUB);
	assert_token(&req, "tok");
	ck_assert_uint_eq(req.hr_from, 5);
}
END_TEST

START_TEST(feed_random_splits)
{
	for (int round = 0; round < 500; round++) {
		struct handshake hs;
		size_t done = 0, used, len;
		const char *line;
		int rc = HANDSHAKE_NEED_MORE;

		handshake_init(&hs);
		while (rc == HANDSHAKE_NEED_MORE) {
			size_t piece = 1 + rng() % 12;

			if (piece > sizeof(stream) - 1 - done)
				piece = sizeof(stream) - 1 - done;
			ck_assert_uint_gt(piece, 0);
			rc = handshake_feed(&hs, stream + done, piece, &used);
			ck_assert_uint_le(used, piece);
			if (rc == HANDSHAKE_NEED_MORE)
				ck_assert_uint_eq(used, piece);
			done += used;
		}
		ck_assert_int_eq(rc, HANDSHAKE_LINE);
		ck_assert_uint_eq(done, LINE_END);
		line = handshake_line(&hs, &len);
		ck_assert_uint_eq(len, LINE_END - 2);
		ck_assert(memcmp(line, stream, len) == 0);
	}
}
END_TEST

/* Feed n bytes of c then tail, one byte at a time; the last result. */
static int
feed_long(struct handshake *hs, size_t n, const char *tail, size_t *total)
{
	size_t used;
	int rc = HANDSHAKE_NEED_MORE;

	handshake_init(hs);
	*total = 0;
	for (size_t i = 0; i < n && rc == HANDSHAKE_NEED_MORE; i++) {
		rc = handshake_feed(hs, "x", 1, &used);
		*total += used;
	}
	for (; *tail != '\0' && rc == HANDSHAKE_NEED_MORE; tail++) {
		rc = handshake_feed(hs, tail, 1, &used);
		*total += used;
	}
	return rc;
}

START_TEST(line_length)
{
	struct handshake hs;
	char buf[1100];
	size_t total, used;

	/* 1023 bytes before the LF: fine */
	ck_assert_int_eq(feed_long(&hs, 1023, "\n", &total), HANDSHAKE_LINE);
	ck_assert_uint_eq(hs.hs_len, 1023);
	ck_assert_uint_eq(total, 1024);
	/* 1022 and a CR: the CR counts, and is dropped */
	ck_assert_int_eq(feed_long(&hs, 1022, "\r\n", &total), HANDSHAKE_LINE);
	ck_assert_uint_eq(hs.hs_len, 1022);
	/* the 1024th byte without a LF: refused at once */
	ck_assert_int_eq(feed_long(&hs, 1023, "y", &total), HANDSHAKE_TOO_LONG);
	ck_assert_uint_eq(total, 1024);
	ck_assert(!handshake_done(&hs));
	ck_assert_int_eq(feed_long(&hs, 1023, "\r\n", &total),
	    HANDSHAKE_TOO_LONG);
	ck_assert_int_eq(feed_long(&hs, 5000, "\n", &total),
	    HANDSHAKE_TOO_LONG);
	ck_assert_uint_eq(total, 1024);
	/* and it stays refused */
	ck_assert_int_eq(handshake_feed(&hs, "\n", 1, &used),
	    HANDSHAKE_TOO_LONG);
	ck_assert_uint_eq(used, 0);

	/* the same in one call */
	memset(buf, 'a', sizeof(buf));
	buf[1023] = '\n';
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, buf, sizeof(buf), &used),
	    HANDSHAKE_LINE);
	ck_assert_uint_eq(used, 1024);
	buf[1023] = 'a';
	buf[1024] = '\n';
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, buf, sizeof(buf), &used),
	    HANDSHAKE_TOO_LONG);
	/* split: 1000 + 23 bytes, then a LF or one more byte */
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, buf, 1000, &used),
	    HANDSHAKE_NEED_MORE);
	ck_assert_int_eq(handshake_feed(&hs, buf, 23, &used),
	    HANDSHAKE_NEED_MORE);
	ck_assert_int_eq(handshake_feed(&hs, "\nFCW2", 5, &used),
	    HANDSHAKE_LINE);
	ck_assert_uint_eq(used, 1);
	ck_assert_uint_eq(hs.hs_len, 1023);
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, buf, 1000, &used),
	    HANDSHAKE_NEED_MORE);
	ck_assert_int_eq(handshake_feed(&hs, buf, 23, &used),
	    HANDSHAKE_NEED_MORE);
	ck_assert_int_eq(handshake_feed(&hs, buf, 2, &used),
	    HANDSHAKE_TOO_LONG);
}
END_TEST

START_TEST(cr_handling)
{
	struct handshake hs;
	struct handshake_req req;
	size_t used, len;
	const char *line;

	/* only one CR, and only right before the LF */
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, "FCWAL-AUTH/1 a\rb\r\r\n", 19,
	    &used), HANDSHAKE_LINE);
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), 0);
	assert_token(&req, "a\rb\r");
	/* a bare LF */
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, "FCWAL-AUTH/1 a\n", 15, &used),
	    HANDSHAKE_LINE);
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), 0);
	assert_token(&req, "a");
	/* a CR split from its LF */
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, "FCWAL-AUTH/1 a\r", 15, &used),
	    HANDSHAKE_NEED_MORE);
	ck_assert_int_eq(handshake_feed(&hs, "\nrest", 5, &used),
	    HANDSHAKE_LINE);
	ck_assert_uint_eq(used, 1);
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), 0);
	assert_token(&req, "a");
	/* empty lines */
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, "\r\n", 2, &used),
	    HANDSHAKE_LINE);
	line = handshake_line(&hs, &len);
	ck_assert_uint_eq(len, 0);
	ck_assert_str_eq(line, "");
	ck_assert_int_eq(handshake_parse(&hs, &req, err, sizeof(err)), -1);
}
END_TEST

START_TEST(reply_format)
{
	char buf[HANDSHAKE_LINE_MAX + 2], big[2000], e[HANDSHAKE_EPOCH_LEN + 1];
	int n;

	handshake_format_epoch(e, 0xff);
	ck_assert_str_eq(e, "00000000000000ff");
	handshake_format_epoch(e, 0xFEDCBA9876543210ULL);
	ck_assert_str_eq(e, "fedcba9876543210");

	n = handshake_format_ok(buf, sizeof(buf), 5, 3, 10, 0xabc);
	ck_assert_str_eq(buf, "FCWAL-OK/1 start=5 earliest=3 next=10 "
	    "epoch=0000000000000abc\n");
	ck_assert_int_eq(n, (int)strlen(buf));
	n = handshake_format_ok(buf, sizeof(buf), UINT64_MAX, 0, UINT64_MAX,
	    UINT64_MAX);
	ck_assert_str_eq(buf, "FCWAL-OK/1 start=18446744073709551615 "
	    "earliest=0 next=18446744073709551615 epoch=ffffffffffffffff\n");
	ck_assert_int_eq(handshake_format_ok(buf, 20, 5, 3, 10, 1), -1);

	n = handshake_format_err(buf, sizeof(buf), HANDSHAKE_ERR_GONE,
	    "earliest=5");
	ck_assert_str_eq(buf, "FCWAL-ERR/1 gone earliest=5\n");
	ck_assert_int_eq(n, 28);
	handshake_format_err(buf, sizeof(buf), HANDSHAKE_ERR_BAD_REQUEST,
	    "bad\r\nline\tend");
	ck_assert_str_eq(buf, "FCWAL-ERR/1 bad-request bad  line end\n");
	handshake_format_err(buf, sizeof(buf), HANDSHAKE_ERR_AUTH, "");
	ck_assert_str_eq(buf, "FCWAL-ERR/1 auth \n");

	/* a long text is cut: the line stays within 1023 bytes + LF */
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	n = handshake_format_err(buf, sizeof(buf), HANDSHAKE_ERR_BUSY, big);
	ck_assert_int_eq(n, HANDSHAKE_LINE_MAX + 1);
	ck_assert_int_eq(buf[n - 1], '\n');
	ck_assert_uint_eq(strlen(buf), (size_t)n);
	/* and to a small buffer */
	n = handshake_format_err(buf, 24, HANDSHAKE_ERR_BUSY, big);
	ck_assert_int_eq(n, 23);
	ck_assert_str_eq(buf, "FCWAL-ERR/1 busy zzzzz\n");
	ck_assert_int_eq(handshake_format_err(buf, 10, HANDSHAKE_ERR_BUSY,
	    "x"), -1);
}
END_TEST

START_TEST(reply_parse)
{
	struct handshake hs;
	struct handshake_reply rep;
	char buf[HANDSHAKE_LINE_MAX + 2];
	const char *newer = "FCWAL-OK/1 start=1 earliest=0 next=2 epoch=1 "
	    "zstd=1";
	size_t used;

	handshake_format_ok(buf, sizeof(buf), 7, 2, 9, 0x1234);
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed(&hs, buf, strlen(buf), &used),
	    HANDSHAKE_LINE);
	ck_assert_int_eq(handshake_parse_reply(&hs, &rep, err, sizeof(err)), 0);
	ck_assert_int_eq(rep.hp_ok, 1);
	ck_assert_uint_eq(rep.hp_start, 7);
	ck_assert_uint_eq(rep.hp_earliest, 2);
	ck_assert_uint_eq(rep.hp_next, 9);
	ck_assert_uint_eq(rep.hp_epoch, 0x1234);

	handshake_format_err(buf, sizeof(buf), HANDSHAKE_ERR_FUTURE,
	    "next=9 and more");
	ck_assert_int_eq(handshake_parse_reply_line(buf, strlen(buf) - 1,
	    &rep, err, sizeof(err)), 0);
	ck_assert_int_eq(rep.hp_ok, 0);
	ck_assert_str_eq(rep.hp_code, "future");
	ck_assert_str_eq(rep.hp_text, "next=9 and more");

#define BADREPLY(s, w) do {						\
	ck_assert_int_eq(handshake_parse_reply_line(s, strlen(s), &rep, err, \
	    sizeof(err)), -1);						\
	ck_assert_msg(strstr(err, w) != NULL, "%s: %s", s, err);	\
} while (0)
	BADREPLY("FCWAL-OK/1 start=1 earliest=0 next=2", "without epoch=");
	BADREPLY("FCWAL-OK/1 start=1 start=1 earliest=0 next=2 epoch=1",
	    "start twice");
	BADREPLY("FCWAL-OK/1 start=x earliest=0 next=2 epoch=1", "bad start");
	BADREPLY("FCWAL-OK/1 start=1 earliest=0 next=2 epoch=1x", "bad epoch");
	BADREPLY("FCWAL-ERR/1 ", "without a code");
	BADREPLY("HTTP/1.1 400 Bad Request", "not an FCWAL-OK/1");
	/* a newer relay may add keys */
	ck_assert_int_eq(handshake_parse_reply_line(newer, strlen(newer), &rep,
	    err, sizeof(err)), 0);
	ck_assert_uint_eq(rep.hp_next, 2);
}
END_TEST

START_TEST(request_format)
{
	struct handshake_req req;
	char buf[HANDSHAKE_LINE_MAX + 2];
	int n;

	n = handshake_format_sub(buf, sizeof(buf), "tok", 3,
	    HANDSHAKE_FROM_SEQ, 12, 1, 0xbeef, HANDSHAKE_COMPRESS_ZSTD);
	ck_assert_str_eq(buf, "FCWAL-SUB/1 tok 12 epoch=000000000000beef "
	    "compress=zstd\n");
	ck_assert_int_eq(n, (int)strlen(buf));
	buf[n - 1] = '\0';
	ck_assert_int_eq(parse(buf, &req), 0);
	ck_assert_uint_eq(req.hr_from, 12);
	ck_assert_uint_eq(req.hr_epoch, 0xbeef);
	ck_assert_int_eq(req.hr_compress, HANDSHAKE_COMPRESS_ZSTD);

	handshake_format_sub(buf, sizeof(buf), "t", 1,
	    HANDSHAKE_FROM_EARLIEST, 0, 0, 0, HANDSHAKE_COMPRESS_NONE);
	ck_assert_str_eq(buf, "FCWAL-SUB/1 t earliest\n");
	ck_assert_int_eq(handshake_format_sub(buf, sizeof(buf), "a b", 3,
	    HANDSHAKE_FROM_LATEST, 0, 0, 0, 0), -1);
	ck_assert_int_eq(handshake_format_sub(buf, sizeof(buf), "", 0,
	    HANDSHAKE_FROM_LATEST, 0, 0, 0, 0), -1);

	/* stream=NAME, parsed back as the relay parses it */
	n = handshake_format_sub_stream(buf, sizeof(buf), "t", 1,
	    HANDSHAKE_FROM_LATEST, 0, 0, 0, HANDSHAKE_COMPRESS_NONE, "cache-a");
	ck_assert_str_eq(buf, "FCWAL-SUB/1 t latest stream=cache-a\n");
	buf[n - 1] = '\0';
	ck_assert_int_eq(parse(buf, &req), 0);
	ck_assert_str_eq(req.hr_stream, "cache-a");
	handshake_format_sub_stream(buf, sizeof(buf), "t", 1,
	    HANDSHAKE_FROM_LATEST, 0, 0, 0, HANDSHAKE_COMPRESS_NONE, "");
	ck_assert_str_eq(buf, "FCWAL-SUB/1 t latest\n");
	ck_assert_int_eq(handshake_format_sub_stream(buf, sizeof(buf), "t", 1,
	    HANDSHAKE_FROM_LATEST, 0, 0, 0, 0, "a b"), -1);

	ck_assert_int_eq(handshake_format_auth(buf, sizeof(buf), "a b", 3),
	    17);
	ck_assert_str_eq(buf, "FCWAL-AUTH/1 a b\n");
	ck_assert_int_eq(handshake_format_auth(buf, sizeof(buf), "a\nb", 3),
	    -1);
	/* byte for byte, even a NUL */
	ck_assert_int_eq(handshake_format_auth(buf, sizeof(buf), "a\0b", 3),
	    17);
	ck_assert(memcmp(buf, "FCWAL-AUTH/1 a\0b\n", 18) == 0);
}
END_TEST

/* The read loop of every connection: a line in pieces, the rest kept. */
START_TEST(feed_evbuffer)
{
	struct evbuffer *in = evbuffer_new();
	struct handshake hs;
	char big[HANDSHAKE_LINE_MAX + 10], rest[8];
	size_t len;

	ck_assert_ptr_nonnull(in);
	handshake_init(&hs);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_NEED_MORE);
	evbuffer_add(in, "FCWAL-AUTH/1 to", 15);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_NEED_MORE);
	ck_assert_uint_eq(evbuffer_get_length(in), 0);
	evbuffer_add(in, "k\r\nFCW2", 7);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_LINE);
	ck_assert_str_eq(handshake_line(&hs, &len), "FCWAL-AUTH/1 tok");
	/* the bytes after the LF stay for the caller, and stay there */
	ck_assert_uint_eq(evbuffer_get_length(in), 4);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_LINE);
	ck_assert_int_eq(evbuffer_remove(in, rest, sizeof(rest)), 4);
	ck_assert(memcmp(rest, "FCW2", 4) == 0);

	/* longer than a line: said once the limit is crossed, over any reads */
	handshake_init(&hs);
	memset(big, 'x', sizeof(big));
	evbuffer_add(in, big, 600);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_NEED_MORE);
	evbuffer_add(in, big, sizeof(big) - 600);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_TOO_LONG);
	ck_assert_int_eq(handshake_feed_evbuffer(&hs, in), HANDSHAKE_TOO_LONG);
	evbuffer_free(in);
}
END_TEST

static Suite *
handshake_suite(void)
{
	Suite *s = suite_create("handshake");
	TCase *tc = tcase_create("handshake");

	tcase_add_test(tc, auth_forms);
	tcase_add_test(tc, sub_forms);
	tcase_add_loop_test(tc, bad_requests, 0, sizeof(bads) / sizeof(bads[0]));
	tcase_add_test(tc, bad_request_text_is_clean);
	tcase_add_test(tc, feed_whole);
	tcase_add_test(tc, feed_bytewise);
	tcase_add_test(tc, feed_random_splits);
	tcase_add_test(tc, line_length);
	tcase_add_test(tc, cr_handling);
	tcase_add_test(tc, reply_format);
	tcase_add_test(tc, reply_parse);
	tcase_add_test(tc, request_format);
	tcase_add_test(tc, feed_evbuffer);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(handshake_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
