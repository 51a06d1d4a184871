/*
 * handshake.c: the line accumulator, the request and reply parsers and the
 * reply formatting. See handshake.h for the grammar.
 */
#include "autoconfig.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "handshake.h"

#define MAGIC_AUTH	"FCWAL-AUTH/1 "
#define MAGIC_SUB	"FCWAL-SUB/1 "
#define MAGIC_OK	"FCWAL-OK/1 "
#define MAGIC_ERR	"FCWAL-ERR/1 "

void
handshake_init(struct handshake *hs)
{
	hs->hs_len = 0;
	hs->hs_line[0] = '\0';
	hs->hs_state = HANDSHAKE_NEED_MORE;
}

int
handshake_feed(struct handshake *hs, const void *buf, size_t len,
    size_t *used)
{
	const char *p = buf, *lf;
	size_t room, n;

	*used = 0;
	if (hs->hs_state != HANDSHAKE_NEED_MORE)
		return hs->hs_state;
	/* at most room more bytes may come before the LF */
	room = HANDSHAKE_LINE_MAX - hs->hs_len;
	n = len < room + 1 ? len : room + 1;
	if ((lf = memchr(p, '\n', n)) != NULL) {
		n = (size_t)(lf - p);
		memcpy(hs->hs_line + hs->hs_len, p, n);
		hs->hs_len += n;
		if (hs->hs_len > 0 && hs->hs_line[hs->hs_len - 1] == '\r')
			hs->hs_len--;
		hs->hs_line[hs->hs_len] = '\0';
		*used = n + 1;
		return hs->hs_state = HANDSHAKE_LINE;
	}
	if (len > room) {
		memcpy(hs->hs_line + hs->hs_len, p, room);
		hs->hs_len += room;
		hs->hs_line[hs->hs_len] = '\0';
		*used = room + 1;
		return hs->hs_state = HANDSHAKE_TOO_LONG;
	}
	memcpy(hs->hs_line + hs->hs_len, p, len);
	hs->hs_len += len;
	hs->hs_line[hs->hs_len] = '\0';
	*used = len;
	return HANDSHAKE_NEED_MORE;
}

int
handshake_done(const struct handshake *hs)
{
	return hs->hs_state == HANDSHAKE_LINE;
}

const char *
handshake_line(const struct handshake *hs, size_t *len)
{
	*len = hs->hs_len;
	return hs->hs_line;
}

int
handshake_is_sub(const struct handshake *hs)
{
	return hs->hs_len >= 10 && memcmp(hs->hs_line, "FCWAL-SUB/", 10) == 0;
}

/* A printable excerpt of untrusted bytes for a message. */
static const char *
hs_excerpt(const char *s, size_t len, char *buf, size_t buflen)
{
	size_t i, n = len < 32 ? len : 32;

	if (n > buflen - 4)
		n = buflen - 4;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
	}
	if (n < len) {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

static int
hs_prefix(const char *s, size_t len, const char *magic)
{
	size_t n = strlen(magic);

	return len >= n && memcmp(s, magic, n) == 0;
}

static int
hs_equal(const char *s, size_t len, const char *word)
{
	return strlen(word) == len && memcmp(s, word, len) == 0;
}

/* Decimal u64, exactly len bytes. */
static int
hs_parse_u64(const char *s, size_t len, uint64_t *v)
{
	uint64_t n = 0;

	if (len == 0)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return -1;
		d = (unsigned)(s[i] - '0');
		if (n > (UINT64_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	*v = n;
	return 0;
}

int
handshake_parse_from(const char *s, size_t len, int *kind, uint64_t *seq)
{
	if (hs_equal(s, len, "earliest"))
		*kind = HANDSHAKE_FROM_EARLIEST;
	else if (hs_equal(s, len, "latest"))
		*kind = HANDSHAKE_FROM_LATEST;
	else if (hs_equal(s, len, "snapshot"))
		*kind = HANDSHAKE_FROM_SNAPSHOT;
	else if (hs_parse_u64(s, len, seq) == 0)
		*kind = HANDSHAKE_FROM_SEQ;
	else
		return -1;
	return 0;
}

int
handshake_parse_epoch(const char *s, size_t len, uint64_t *epoch)
{
	uint64_t v = 0;

	if (len == 0 || len > HANDSHAKE_EPOCH_LEN)
		return -1;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		unsigned d;

		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return -1;
		v = (v << 4) | d;
	}
	*epoch = v;
	return 0;
}

void
handshake_format_epoch(char *buf, uint64_t epoch)
{
	snprintf(buf, HANDSHAKE_EPOCH_LEN + 1, "%016" PRIx64, epoch);
}

/* The next space-separated field of [*s, end); -1 if none is left. */
static int
hs_field(const char **s, const char *end, const char **f, size_t *flen)
{
	const char *sp;

	if (*s == NULL)
		return -1;
	*f = *s;
	if ((sp = memchr(*s, ' ', (size_t)(end - *s))) == NULL) {
		*flen = (size_t)(end - *s);
		*s = NULL;
	} else {
		*flen = (size_t)(sp - *s);
		*s = sp + 1;
	}
	return 0;
}

static int
hs_parse_sub(const char *p, const char *end, struct handshake_req *req,
    char *err, size_t errlen)
{
	const char *f, *eq;
	size_t flen = 0;
	char x[40];
	int seen_epoch = 0, seen_compress = 0, seen_stream = 0;
	int seen_resync = 0;

	if (hs_field(&p, end, &f, &flen) == -1 || flen == 0) {
		snprintf(err, errlen, flen == 0 && p != NULL ? "empty field "
		    "(fields are separated by one space)" : "missing token");
		return -1;
	}
	req->hr_token = f;
	req->hr_token_len = flen;
	if (hs_field(&p, end, &f, &flen) == -1) {
		snprintf(err, errlen, "missing <from> (a sequence number, "
		    "earliest, latest or snapshot)");
		return -1;
	}
	if (flen == 0) {
		snprintf(err, errlen, "empty field (fields are separated by "
		    "one space)");
		return -1;
	}
	if (handshake_parse_from(f, flen, &req->hr_from_kind,
	    &req->hr_from) == -1) {
		snprintf(err, errlen, "bad <from> '%s' (a sequence number, "
		    "earliest, latest or snapshot)", hs_excerpt(f, flen, x,
		    sizeof(x)));
		return -1;
	}
	while (hs_field(&p, end, &f, &flen) == 0) {
		const char *v;
		size_t klen, vlen;

		if (flen == 0) {
			snprintf(err, errlen, "empty field (fields are "
			    "separated by one space)");
			return -1;
		}
		if ((eq = memchr(f, '=', flen)) == NULL) {
			snprintf(err, errlen, "option '%s' is not key=value",
			    hs_excerpt(f, flen, x, sizeof(x)));
			return -1;
		}
		klen = (size_t)(eq - f);
		v = eq + 1;
		vlen = flen - klen - 1;
		if (hs_equal(f, klen, "epoch")) {
			if (seen_epoch++) {
				snprintf(err, errlen, "duplicate option epoch");
				return -1;
			}
			if (handshake_parse_epoch(v, vlen, &req->hr_epoch) ==
			    -1) {
				snprintf(err, errlen, "bad epoch '%s' (1 to 16 "
				    "hex digits)", hs_excerpt(v, vlen, x,
				    sizeof(x)));
				return -1;
			}
			req->hr_has_epoch = 1;
		} else if (hs_equal(f, klen, "compress")) {
			if (seen_compress++) {
				snprintf(err, errlen, "duplicate option "
				    "compress");
				return -1;
			}
			if (hs_equal(v, vlen, "zstd"))
				req->hr_compress = HANDSHAKE_COMPRESS_ZSTD;
			else if (hs_equal(v, vlen, "none"))
				req->hr_compress = HANDSHAKE_COMPRESS_NONE;
			else {
				snprintf(err, errlen, "bad compress '%s' (zstd "
				    "or none)", hs_excerpt(v, vlen, x,
				    sizeof(x)));
				return -1;
			}
		} else if (hs_equal(f, klen, "stream")) {
			if (seen_stream++) {
				snprintf(err, errlen, "duplicate option "
				    "stream");
				return -1;
			}
			if (vlen == 0 || vlen >= sizeof(req->hr_stream)) {
				snprintf(err, errlen, "bad stream name '%s' "
				    "(1 to %zu characters)", hs_excerpt(v, vlen,
				    x, sizeof(x)), sizeof(req->hr_stream) - 1);
				return -1;
			}
			memcpy(req->hr_stream, v, vlen);
			req->hr_stream[vlen] = '\0';
		} else if (hs_equal(f, klen, "resync")) {
			if (seen_resync++) {
				snprintf(err, errlen, "duplicate option "
				    "resync");
				return -1;
			}
			if (hs_equal(v, vlen, "1"))
				req->hr_resync = 1;
			else if (hs_equal(v, vlen, "0"))
				req->hr_resync = 0;
			else {
				snprintf(err, errlen, "bad resync '%s' (1 or "
				    "0)", hs_excerpt(v, vlen, x, sizeof(x)));
				return -1;
			}
		} else {
			snprintf(err, errlen, "unknown option '%s' (known: "
			    "epoch, compress, stream, resync)", hs_excerpt(f,
			    klen, x, sizeof(x)));
			return -1;
		}
	}
	return 0;
}

int
handshake_parse_line(const char *line, size_t len, struct handshake_req *req,
    char *err, size_t errlen)
{
	const char *sp;
	char x[40];

	memset(req, 0, sizeof(*req));
	if (hs_prefix(line, len, MAGIC_AUTH)) {
		req->hr_kind = HANDSHAKE_AUTH;
		req->hr_token = line + strlen(MAGIC_AUTH);
		req->hr_token_len = len - strlen(MAGIC_AUTH);
		return 0;
	}
	if (hs_prefix(line, len, MAGIC_SUB)) {
		req->hr_kind = HANDSHAKE_SUB;
		return hs_parse_sub(line + strlen(MAGIC_SUB), line + len, req,
		    err, errlen);
	}
	if (hs_equal(line, len, "FCWAL-AUTH/1")) {
		req->hr_kind = HANDSHAKE_AUTH;
		snprintf(err, errlen, "missing token after FCWAL-AUTH/1");
		return -1;
	}
	if (hs_equal(line, len, "FCWAL-SUB/1")) {
		req->hr_kind = HANDSHAKE_SUB;
		snprintf(err, errlen, "missing token");
		return -1;
	}
	if (hs_prefix(line, len, "FCWAL-AUTH/") || hs_prefix(line, len,
	    "FCWAL-SUB/")) {
		if ((sp = memchr(line, ' ', len)) == NULL)
			sp = line + len;
		snprintf(err, errlen, "unsupported version '%s' (this relay "
		    "speaks FCWAL-AUTH/1 and FCWAL-SUB/1)",
		    hs_excerpt(line, (size_t)(sp - line), x, sizeof(x)));
		return -1;
	}
	snprintf(err, errlen, "not an FCWAL-AUTH/1 or FCWAL-SUB/1 line");
	return -1;
}

int
handshake_parse(const struct handshake *hs, struct handshake_req *req,
    char *err, size_t errlen)
{
	if (!handshake_done(hs)) {
		memset(req, 0, sizeof(*req));
		snprintf(err, errlen, "incomplete line");
		return -1;
	}
	return handshake_parse_line(hs->hs_line, hs->hs_len, req, err, errlen);
}

/* Copy [s, s + len) as a C string, control characters as spaces. */
static void
hs_copy(char *dst, size_t dstlen, const char *s, size_t len)
{
	if (len >= dstlen)
		len = dstlen - 1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		dst[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	dst[len] = '\0';
}

int
handshake_parse_reply_line(const char *line, size_t len,
    struct handshake_reply *rep, char *err, size_t errlen)
{
	static const char *const keys[] = { "start", "earliest", "next",
	    "epoch" };
	uint64_t *vals[] = { &rep->hp_start, &rep->hp_earliest, &rep->hp_next,
	    &rep->hp_epoch };
	const char *p, *end = line + len, *f, *eq;
	size_t flen;
	char x[40];
	int seen = 0;

	memset(rep, 0, sizeof(*rep));
	if (hs_prefix(line, len, MAGIC_ERR)) {
		p = line + strlen(MAGIC_ERR);
		hs_field(&p, end, &f, &flen);
		if (flen == 0) {
			snprintf(err, errlen, "FCWAL-ERR/1 without a code");
			return -1;
		}
		if (flen >= sizeof(rep->hp_code)) {
			snprintf(err, errlen, "FCWAL-ERR/1 with a code longer "
			    "than %zu bytes", sizeof(rep->hp_code) - 1);
			return -1;
		}
		for (size_t i = 0; i < flen; i++) {
			unsigned char c = (unsigned char)f[i];

			if (c <= 0x20 || c >= 0x7f) {
				snprintf(err, errlen, "FCWAL-ERR/1 with a bad "
				    "code '%s'", hs_excerpt(f, flen, x,
				    sizeof(x)));
				return -1;
			}
		}
		hs_copy(rep->hp_code, sizeof(rep->hp_code), f, flen);
		if (p != NULL)
			hs_copy(rep->hp_text, sizeof(rep->hp_text), p,
			    (size_t)(end - p));
		return 0;
	}
	if (!hs_prefix(line, len, MAGIC_OK)) {
		snprintf(err, errlen, "not an FCWAL-OK/1 or FCWAL-ERR/1 line: "
		    "'%s'", hs_excerpt(line, len, x, sizeof(x)));
		return -1;
	}
	rep->hp_ok = 1;
	p = line + strlen(MAGIC_OK);
	while (hs_field(&p, end, &f, &flen) == 0) {
		size_t klen;
		int i;

		if ((eq = memchr(f, '=', flen)) == NULL) {
			snprintf(err, errlen, "FCWAL-OK/1: '%s' is not "
			    "key=value", hs_excerpt(f, flen, x, sizeof(x)));
			return -1;
		}
		klen = (size_t)(eq - f);
		if (hs_equal(f, klen, "snapshot")) {
			if (rep->hp_has_snapshot || hs_parse_u64(eq + 1,
			    flen - klen - 1, &rep->hp_snapshot) == -1) {
				snprintf(err, errlen, "FCWAL-OK/1: bad or "
				    "repeated snapshot=");
				return -1;
			}
			rep->hp_has_snapshot = 1;
			continue;
		}
		for (i = 0; i < 4; i++)
			if (hs_equal(f, klen, keys[i]))
				break;
		if (i == 4)
			continue;	/* a newer relay may say more */
		if (seen & (1 << i)) {
			snprintf(err, errlen, "FCWAL-OK/1: %s twice", keys[i]);
			return -1;
		}
		seen |= 1 << i;
		if ((i == 3 ? handshake_parse_epoch(eq + 1, flen - klen - 1,
		    vals[i]) : hs_parse_u64(eq + 1, flen - klen - 1,
		    vals[i])) == -1) {
			snprintf(err, errlen, "FCWAL-OK/1: bad %s '%s'",
			    keys[i], hs_excerpt(eq + 1, flen - klen - 1, x,
			    sizeof(x)));
			return -1;
		}
	}
	for (int i = 0; i < 4; i++) {
		if (!(seen & (1 << i))) {
			snprintf(err, errlen, "FCWAL-OK/1 without %s=",
			    keys[i]);
			return -1;
		}
	}
	return 0;
}

int
handshake_parse_reply(const struct handshake *hs,
    struct handshake_reply *rep, char *err, size_t errlen)
{
	if (!handshake_done(hs)) {
		memset(rep, 0, sizeof(*rep));
		snprintf(err, errlen, "incomplete line");
		return -1;
	}
	return handshake_parse_reply_line(hs->hs_line, hs->hs_len, rep, err,
	    errlen);
}

static int
hs_result(int n, size_t len)
{
	if (n < 0 || (size_t)n >= len || n > HANDSHAKE_LINE_MAX + 1)
		return -1;
	return n;
}

int
handshake_format_ok(char *buf, size_t len, uint64_t start,
    uint64_t earliest, uint64_t next, uint64_t epoch)
{
	char e[HANDSHAKE_EPOCH_LEN + 1];

	handshake_format_epoch(e, epoch);
	return hs_result(snprintf(buf, len, "FCWAL-OK/1 start=%" PRIu64
	    " earliest=%" PRIu64 " next=%" PRIu64 " epoch=%s\n", start,
	    earliest, next, e), len);
}

int
handshake_format_ok_snapshot(char *buf, size_t len, uint64_t start,
    uint64_t earliest, uint64_t next, uint64_t epoch, uint64_t entries)
{
	char e[HANDSHAKE_EPOCH_LEN + 1];

	handshake_format_epoch(e, epoch);
	return hs_result(snprintf(buf, len, "FCWAL-OK/1 start=%" PRIu64
	    " earliest=%" PRIu64 " next=%" PRIu64 " epoch=%s snapshot=%"
	    PRIu64 "\n", start, earliest, next, e, entries), len);
}

int
handshake_format_err(char *buf, size_t len, const char *code,
    const char *text)
{
	size_t n, tlen = strlen(text), room;
	int hl;

	hl = snprintf(buf, len, "FCWAL-ERR/1 %s ", code);
	if (hl < 0 || (size_t)hl + 2 > len || hl > HANDSHAKE_LINE_MAX)
		return -1;
	n = (size_t)hl;
	/* room for the text: before the LF, within the line and buffer */
	room = HANDSHAKE_LINE_MAX - n;
	if (room > len - n - 2)
		room = len - n - 2;
	if (tlen > room)
		tlen = room;
	hs_copy(buf + n, tlen + 1, text, tlen);
	n += tlen;
	buf[n++] = '\n';
	buf[n] = '\0';
	return (int)n;
}

int
handshake_format_auth(char *buf, size_t len, const char *token,
    size_t toklen)
{
	size_t n;

	if (memchr(token, '\n', toklen) != NULL ||
	    (toklen > 0 && token[toklen - 1] == '\r') ||
	    strlen(MAGIC_AUTH) + toklen > HANDSHAKE_LINE_MAX ||
	    strlen(MAGIC_AUTH) + toklen + 2 > len)
		return -1;
	/* byte for byte: the token may hold any byte but LF */
	memcpy(buf, MAGIC_AUTH, strlen(MAGIC_AUTH));
	memcpy(buf + strlen(MAGIC_AUTH), token, toklen);
	n = strlen(MAGIC_AUTH) + toklen;
	buf[n++] = '\n';
	buf[n] = '\0';
	return (int)n;
}

int
handshake_format_sub(char *buf, size_t len, const char *token,
    size_t toklen, int from_kind, uint64_t from, int has_epoch,
    uint64_t epoch, int compress)
{
	char f[24], e[HANDSHAKE_EPOCH_LEN + 8];
	int n;

	if (toklen == 0 || toklen > HANDSHAKE_LINE_MAX ||
	    memchr(token, ' ', toklen) != NULL ||
	    memchr(token, '\n', toklen) != NULL ||
	    memchr(token, '\0', toklen) != NULL)
		return -1;
	if (from_kind == HANDSHAKE_FROM_EARLIEST)
		snprintf(f, sizeof(f), "earliest");
	else if (from_kind == HANDSHAKE_FROM_LATEST)
		snprintf(f, sizeof(f), "latest");
	else if (from_kind == HANDSHAKE_FROM_SNAPSHOT)
		snprintf(f, sizeof(f), "snapshot");
	else
		snprintf(f, sizeof(f), "%" PRIu64, from);
	e[0] = '\0';
	if (has_epoch) {
		memcpy(e, " epoch=", 7);
		handshake_format_epoch(e + 7, epoch);
	}
	n = snprintf(buf, len, "%s%.*s %s%s%s\n", MAGIC_SUB, (int)toklen,
	    token, f, e, compress == HANDSHAKE_COMPRESS_ZSTD ?
	    " compress=zstd" : "");
	if (n < 0 || n - 1 > HANDSHAKE_LINE_MAX)
		return -1;
	return hs_result(n, len);
}
