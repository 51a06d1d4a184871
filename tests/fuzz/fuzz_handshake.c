/*
 * fuzz_handshake.c: libFuzzer target for the first-line accumulator and
 * the request and reply parsers.
 *
 * Input layout:
 *   byte 0        bits 0-3: number of split bytes that follow (0-15)
 *   split bytes   each gives the size of the next piece fed (1-256),
 *                 used in turn
 *   the rest      the bytes a peer sends
 *
 * Invariants: feeding the bytes whole, in the chosen pieces and one byte at
 * a time gives the same result, the same bytes consumed and the same line;
 * a complete line is what came before the first LF (one CR before it
 * dropped), at most HANDSHAKE_LINE_MAX bytes, and nothing after the LF is
 * consumed; a line is refused as too long exactly when 1024 bytes came
 * without a LF. A request or reply that parses is formatted again and
 * parses to the same fields.
 */
#include "autoconfig.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handshake.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

struct fuzz_run {
	int		 result;
	size_t		 consumed;
	struct handshake hs;
};

static void
fuzz_fail(const char *what)
{
	fprintf(stderr, "fuzz_handshake: invariant broken: %s\n", what);
	abort();
}

static void
fuzz_feed(const uint8_t *in, size_t len, const uint8_t *splits,
    size_t nsplits, int bytewise, struct fuzz_run *run)
{
	size_t done = 0, k = 0, piece, used;
	int rc = HANDSHAKE_NEED_MORE;

	handshake_init(&run->hs);
	while (done < len) {
		if (bytewise)
			piece = 1;
		else if (nsplits == 0)
			piece = len;
		else
			piece = (size_t)splits[k++ % nsplits] + 1;
		if (piece > len - done)
			piece = len - done;
		rc = handshake_feed(&run->hs, in + done, piece, &used);
		if (used > piece)
			fuzz_fail("consumed more than given");
		done += used;
		if (rc != HANDSHAKE_NEED_MORE)
			break;
		if (used != piece)
			fuzz_fail("needs more but did not take everything");
	}
	run->result = rc;
	run->consumed = done;
	if (rc != HANDSHAKE_NEED_MORE) {
		if (handshake_feed(&run->hs, "x\n", 2, &used) != rc || used != 0)
			fuzz_fail("result not sticky");
	}
}

static void
fuzz_check_line(const uint8_t *in, size_t len, const struct fuzz_run *run)
{
	const uint8_t *lf = memchr(in, '\n', len < HANDSHAKE_LINE_MAX + 1 ?
	    len : HANDSHAKE_LINE_MAX + 1);
	size_t n, linelen;
	const char *line = handshake_line(&run->hs, &linelen);

	switch (run->result) {
	case HANDSHAKE_LINE:
		if (lf == NULL)
			fuzz_fail("a line without a LF");
		n = (size_t)(lf - in);
		if (run->consumed != n + 1)
			fuzz_fail("consumed is not up to the LF");
		if (n > 0 && in[n - 1] == '\r')
			n--;
		if (linelen != n || memcmp(line, in, n) != 0)
			fuzz_fail("line differs from the bytes before the LF");
		if (linelen > HANDSHAKE_LINE_MAX || line[linelen] != '\0')
			fuzz_fail("line too long or not terminated");
		if (!handshake_done(&run->hs))
			fuzz_fail("line but not done");
		break;
	case HANDSHAKE_TOO_LONG:
		if (lf != NULL || len < HANDSHAKE_LINE_MAX + 1)
			fuzz_fail("refused a line that fits");
		if (run->consumed != HANDSHAKE_LINE_MAX + 1)
			fuzz_fail("too long after the wrong byte count");
		break;
	case HANDSHAKE_NEED_MORE:
		if (memchr(in, '\n', len) != NULL || len > HANDSHAKE_LINE_MAX)
			fuzz_fail("wants more after a LF or 1024 bytes");
		if (run->consumed != len)
			fuzz_fail("did not take everything");
		break;
	default:
		fuzz_fail("unknown result");
	}
}

static void
fuzz_compare(const struct fuzz_run *a, const struct fuzz_run *b)
{
	if (a->result != b->result || a->consumed != b->consumed ||
	    a->hs.hs_len != b->hs.hs_len ||
	    memcmp(a->hs.hs_line, b->hs.hs_line, a->hs.hs_len) != 0)
		fuzz_fail("result depends on the split");
}

static void
fuzz_request(const char *line, size_t len)
{
	struct handshake_req req, again;
	char err[256], buf[HANDSHAKE_LINE_MAX + 2];
	int n;

	if (handshake_parse_line(line, len, &req, err, sizeof(err)) == -1) {
		if (err[0] == '\0' || strlen(err) >= sizeof(err))
			fuzz_fail("error without a reason");
		return;
	}
	if (req.hr_token < line || req.hr_token + req.hr_token_len >
	    line + len)
		fuzz_fail("token outside the line");
	if (req.hr_kind == HANDSHAKE_AUTH) {
		n = handshake_format_auth(buf, sizeof(buf), req.hr_token,
		    req.hr_token_len);
		if (n == -1)
			return;	/* a token ending in CR cannot be sent */
	} else if (req.hr_kind == HANDSHAKE_SUB) {
		if (req.hr_token_len == 0 || memchr(req.hr_token, ' ',
		    req.hr_token_len) != NULL)
			fuzz_fail("bad SUB token accepted");
		n = handshake_format_sub(buf, sizeof(buf), req.hr_token,
		    req.hr_token_len, req.hr_from_kind, req.hr_from,
		    req.hr_has_epoch, req.hr_epoch, req.hr_compress);
		if (n == -1) {
			/* only a NUL in the token or a longer line */
			if (memchr(req.hr_token, '\0', req.hr_token_len) == NULL &&
			    len <= HANDSHAKE_LINE_MAX - 40)
				fuzz_fail("cannot format a parsed request");
			return;
		}
	} else {
		fuzz_fail("parsed without a kind");
		return;
	}
	if (n < 1 || buf[n - 1] != '\n' || n - 1 > HANDSHAKE_LINE_MAX)
		fuzz_fail("formatted request is not one line");
	if (handshake_parse_line(buf, (size_t)n - 1, &again, err,
	    sizeof(err)) == -1)
		fuzz_fail("formatted request does not parse");
	if (again.hr_kind != req.hr_kind ||
	    again.hr_token_len != req.hr_token_len ||
	    memcmp(again.hr_token, req.hr_token, req.hr_token_len) != 0 ||
	    again.hr_from_kind != req.hr_from_kind ||
	    again.hr_from != req.hr_from ||
	    again.hr_has_epoch != req.hr_has_epoch ||
	    again.hr_epoch != req.hr_epoch ||
	    again.hr_compress != req.hr_compress)
		fuzz_fail("request changed through format and parse");
}

static void
fuzz_reply(const char *line, size_t len)
{
	struct handshake_reply *rep, *again;
	char err[256], buf[HANDSHAKE_LINE_MAX + 2];
	int n;

	rep = malloc(sizeof(*rep));
	again = malloc(sizeof(*again));
	if (rep == NULL || again == NULL)
		fuzz_fail("out of memory");
	if (handshake_parse_reply_line(line, len, rep, err, sizeof(err)) == -1)
		goto out;
	if (rep->hp_ok)
		n = handshake_format_ok(buf, sizeof(buf), rep->hp_start,
		    rep->hp_earliest, rep->hp_next, rep->hp_epoch);
	else
		n = handshake_format_err(buf, sizeof(buf), rep->hp_code,
		    rep->hp_text);
	if (n < 1 || buf[n - 1] != '\n')
		fuzz_fail("cannot format a parsed reply");
	if (handshake_parse_reply_line(buf, (size_t)n - 1, again, err,
	    sizeof(err)) == -1)
		fuzz_fail("formatted reply does not parse");
	if (again->hp_ok != rep->hp_ok || (rep->hp_ok &&
	    (again->hp_start != rep->hp_start ||
	    again->hp_earliest != rep->hp_earliest ||
	    again->hp_next != rep->hp_next ||
	    again->hp_epoch != rep->hp_epoch)) || (!rep->hp_ok &&
	    (strcmp(again->hp_code, rep->hp_code) != 0 ||
	    strcmp(again->hp_text, rep->hp_text) != 0)))
		fuzz_fail("reply changed through format and parse");
out:
	free(rep);
	free(again);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_run *whole, *split, *bytes;
	const uint8_t *splits, *in;
	size_t nsplits, len, linelen;
	const char *line;

	if (size < 1)
		return 0;
	nsplits = data[0] & 0x0f;
	if (size < 1 + nsplits)
		return 0;
	splits = data + 1;
	in = data + 1 + nsplits;
	len = size - 1 - nsplits;

	whole = malloc(sizeof(*whole));
	split = malloc(sizeof(*split));
	bytes = malloc(sizeof(*bytes));
	if (whole == NULL || split == NULL || bytes == NULL)
		fuzz_fail("out of memory");
	fuzz_feed(in, len, NULL, 0, 0, whole);
	fuzz_check_line(in, len, whole);
	fuzz_feed(in, len, splits, nsplits, 0, split);
	fuzz_compare(whole, split);
	fuzz_feed(in, len, NULL, 0, 1, bytes);
	fuzz_compare(whole, bytes);

	if (whole->result == HANDSHAKE_LINE) {
		line = handshake_line(&whole->hs, &linelen);
		fuzz_request(line, linelen);
		fuzz_reply(line, linelen);
		if (handshake_is_sub(&whole->hs) != (linelen >= 10 &&
		    memcmp(line, "FCWAL-SUB/", 10) == 0))
			fuzz_fail("handshake_is_sub disagrees");
	}
	free(whole);
	free(split);
	free(bytes);
	return 0;
}
