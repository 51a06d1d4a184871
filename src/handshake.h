/*
 * handshake.h: the first line a peer sends, and the reply lines.
 *
 *   FCWAL-AUTH/1 <token>
 *   FCWAL-SUB/1 <token> <from> [key=value ...]
 *   FCWAL-OK/1 start=<seq> earliest=<seq> next=<seq> epoch=<hex>
 *   FCWAL-ERR/1 <code> <text>
 *
 * A line is at most HANDSHAKE_LINE_MAX bytes before its LF (a CR right
 * before the LF counts, and is dropped). In FCWAL-AUTH/1 the token is every
 * byte after the one space, spaces included; FCWAL-SUB/1 separates its
 * fields with single spaces. <from> is a decimal sequence number, earliest,
 * latest or snapshot; options are epoch=<1 to 16 hex digits>,
 * compress=zstd|none and resync=1|0. A reply to snapshot (or to a gone
 * position with resync=1) adds snapshot=<entries>.
 *
 * Epochs are written as 16 lowercase hex digits (zero-padded, no 0x);
 * parsing accepts 1 to 16 hex digits in either case.
 *
 * Pure code, no I/O: the accumulator takes bytes in any split and leaves
 * the bytes after the LF to the caller (on an ingest connection they are
 * the start of the FCW2 stream).
 */
#ifndef WALRELAY_HANDSHAKE_H
#define WALRELAY_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#define HANDSHAKE_LINE_MAX	1023
#define HANDSHAKE_EPOCH_LEN	16

/* handshake_feed results */
#define HANDSHAKE_NEED_MORE	0
#define HANDSHAKE_LINE		1
#define HANDSHAKE_TOO_LONG	(-1)

struct handshake {
	char		 hs_line[HANDSHAKE_LINE_MAX + 1]; /* NUL-terminated */
	size_t		 hs_len;	/* bytes so far; the line once done */
	int		 hs_state;	/* the last handshake_feed result */
};

enum handshake_kind {
	HANDSHAKE_NONE = 0,	/* not recognised */
	HANDSHAKE_AUTH = 1,
	HANDSHAKE_SUB = 2,
};

enum handshake_from {
	HANDSHAKE_FROM_SEQ = 0,
	HANDSHAKE_FROM_EARLIEST = 1,
	HANDSHAKE_FROM_LATEST = 2,
	HANDSHAKE_FROM_SNAPSHOT = 3,	/* full resync: snapshot, then stream */
};

enum handshake_compress {
	HANDSHAKE_COMPRESS_NONE = 0,
	HANDSHAKE_COMPRESS_ZSTD = 1,
};

struct handshake_req {
	int		 hr_kind;	/* set as soon as the magic is known */
	const char	*hr_token;	/* points into the line */
	size_t		 hr_token_len;
	int		 hr_from_kind;	/* SUB: enum handshake_from */
	uint64_t	 hr_from;	/* SUB, HANDSHAKE_FROM_SEQ */
	int		 hr_has_epoch;
	uint64_t	 hr_epoch;
	int		 hr_compress;	/* enum handshake_compress */
	char		 hr_stream[65];	/* SUB: stream=NAME, or "" */
	int		 hr_resync;	/* resync=1: gone falls back to snapshot */
};

struct handshake_reply {
	int		 hp_ok;		/* FCWAL-OK/1, else FCWAL-ERR/1 */
	uint64_t	 hp_start;
	uint64_t	 hp_earliest;
	uint64_t	 hp_next;
	uint64_t	 hp_epoch;
	int		 hp_has_snapshot;
	uint64_t	 hp_snapshot;	/* snapshot=: SET frames before start */
	char		 hp_code[32];	/* FCWAL-ERR/1 */
	char		 hp_text[HANDSHAKE_LINE_MAX + 1];
};

/* Error codes of FCWAL-ERR/1. */
#define HANDSHAKE_ERR_AUTH		"auth"
#define HANDSHAKE_ERR_GONE		"gone"
#define HANDSHAKE_ERR_FUTURE		"future"
#define HANDSHAKE_ERR_EPOCH		"epoch"
#define HANDSHAKE_ERR_BUSY		"busy"
#define HANDSHAKE_ERR_BAD_REQUEST	"bad-request"

void	handshake_init(struct handshake *);
/*
 * Take up to len bytes. Returns HANDSHAKE_NEED_MORE (all taken),
 * HANDSHAKE_LINE (the line is complete: *used counts the bytes up to and
 * including the LF, the rest is not taken) or HANDSHAKE_TOO_LONG (more
 * than HANDSHAKE_LINE_MAX bytes without a LF). Once a line is complete or
 * too long, later calls take nothing and return the same.
 */
int	handshake_feed(struct handshake *, const void *buf, size_t len,
	    size_t *used);
int	handshake_done(const struct handshake *);
/* The complete line (CR LF stripped) and its length. */
const char *handshake_line(const struct handshake *, size_t *len);
/* Does what arrived so far start with "FCWAL-SUB/"? (A reply is due.) */
int	handshake_is_sub(const struct handshake *);

/*
 * Parse a complete request line. 0, or -1 with a short reason in err (to
 * send as bad-request text); hr_kind says what the line claimed to be.
 * hr_token points into the line: the handshake must outlive req.
 */
int	handshake_parse(const struct handshake *, struct handshake_req *,
	    char *err, size_t errlen);
int	handshake_parse_line(const char *line, size_t len,
	    struct handshake_req *, char *err, size_t errlen);
/* Parse an FCWAL-OK/1 or FCWAL-ERR/1 reply (the pull client). */
int	handshake_parse_reply(const struct handshake *,
	    struct handshake_reply *, char *err, size_t errlen);
int	handshake_parse_reply_line(const char *line, size_t len,
	    struct handshake_reply *, char *err, size_t errlen);

/*
 * Reply and request lines, LF-terminated, NUL-terminated, into buf.
 * Return the length without the NUL, or -1 when it does not fit (or, for
 * requests, when the token cannot be sent in that line). Error texts have
 * control characters replaced by spaces and are cut to keep the line within
 * HANDSHAKE_LINE_MAX; a buffer of HANDSHAKE_LINE_MAX + 2 always fits.
 */
int	handshake_format_ok(char *buf, size_t len, uint64_t start,
	    uint64_t earliest, uint64_t next, uint64_t epoch);
/* The same with snapshot=<entries> (a full resync). */
int	handshake_format_ok_snapshot(char *buf, size_t len, uint64_t start,
	    uint64_t earliest, uint64_t next, uint64_t epoch, uint64_t entries);
int	handshake_format_err(char *buf, size_t len, const char *code,
	    const char *text);
int	handshake_format_auth(char *buf, size_t len, const char *token,
	    size_t toklen);
int	handshake_format_sub(char *buf, size_t len, const char *token,
	    size_t toklen, int from_kind, uint64_t from, int has_epoch,
	    uint64_t epoch, int compress);
/* 16 lowercase hex digits and a NUL: buf holds HANDSHAKE_EPOCH_LEN + 1. */
void	handshake_format_epoch(char *buf, uint64_t epoch);
/* <from>: earliest, latest, snapshot or a decimal sequence, exactly len bytes. 0, or -1. */
int	handshake_parse_from(const char *s, size_t len, int *kind,
	    uint64_t *seq);
/* 1 to 16 hex digits, exactly len bytes. 0, or -1. */
int	handshake_parse_epoch(const char *s, size_t len, uint64_t *epoch);

#endif
