/*
 * fcw2.h: the FCW2 frame and record codec (no I/O).
 *
 * Frame:  "FCW2" flags:u8 payload_len:u32le payload crc32:u32le
 * Record: op:u8 key_len:u32 value_len:u32 ts:u64 expire:i64 key value crc32
 * A compressed payload (flags bit 0) is u32le raw length + one LZ4 block.
 */
#ifndef WALRELAY_FCW2_H
#define WALRELAY_FCW2_H

#include <stddef.h>
#include <stdint.h>

#define FCW2_MAGIC		"FCW2"
#define FCW2_HEADER_LEN		9
#define FCW2_CRC_LEN		4
#define FCW2_OVERHEAD		(FCW2_HEADER_LEN + FCW2_CRC_LEN)
#define FCW2_FLAG_LZ4		0x01
#define FCW2_RECORD_FIXED	25	/* op..expire */
#define FCW2_RECORD_MIN		(FCW2_RECORD_FIXED + 4)
#define FCW2_DEFAULT_MAX_FRAME	(64u * 1024 * 1024)

enum fcw2_op {
	FCW2_OP_SET = 1,
	FCW2_OP_DEL = 2,
	FCW2_OP_EXPIRE = 3,
};

/* Result of a check: >0 need more, 0 a whole valid frame, <0 an error. */
enum fcw2_status {
	FCW2_NEED_MORE = 1,
	FCW2_OK = 0,
	FCW2_ERR_MAGIC = -1,		/* first four bytes are not "FCW2" */
	FCW2_ERR_TOO_LARGE = -2,	/* payload_len over the configured cap */
	FCW2_ERR_FRAME_CRC = -3,	/* frame crc mismatch */
	FCW2_ERR_RECORD_CRC = -4,	/* record crc mismatch */
	FCW2_ERR_OP = -5,		/* op not SET, DEL or EXPIRE */
	FCW2_ERR_LENGTHS = -6,		/* record lengths do not fill the payload */
	FCW2_ERR_LZ4 = -7,		/* LZ4 block does not decode */
	FCW2_ERR_LZ4_SIZE = -8,		/* LZ4 block decodes to the wrong size */
	FCW2_ERR_TRAILING = -9,		/* bytes after the last whole frame */
};

struct fcw2_record {
	uint8_t		 op;
	uint32_t	 key_len;
	uint32_t	 value_len;
	uint64_t	 timestamp_ms;
	int64_t		 expire_at_ms;	/* negative: no expiry */
	const uint8_t	*key;
	const uint8_t	*value;
};

/*
 * Validation context: the length cap and, when records are checked, a
 * scratch buffer for LZ4 payloads (grown on demand up to the cap, reused).
 */
#define FCW2_CRC_SLOTS		64

struct fcw2_checker {
	uint32_t	 max_payload;	/* payload_len cap (frame cap - 13) */
	int		 check_records;	/* decode and check the record inside */
	uint8_t		*scratch;
	size_t		 scratch_cap;
	/*
	 * By payload length, direct-mapped (flags 0 only): what the header
	 * adds to the crc of the record's bytes, crc(header || body) ^
	 * crc(body), so that one pass over a record gives both crcs.
	 */
	uint32_t	 hc_len[FCW2_CRC_SLOTS];	/* 0: empty */
	uint32_t	 hc_xor[FCW2_CRC_SLOTS];
};

const char	*fcw2_strerror(int status);
void		 fcw2_checker_init(struct fcw2_checker *, size_t max_frame_bytes,
		    int check_records);
void		 fcw2_checker_free(struct fcw2_checker *);

/*
 * Look at the frame that starts at buf. Returns FCW2_NEED_MORE with *need
 * set to the total bytes required, FCW2_OK with *frame_len set, or an error.
 * With rec non-NULL and records checked, *rec points into buf or scratch.
 */
int		 fcw2_check(struct fcw2_checker *, const uint8_t *buf, size_t len,
		    size_t *frame_len, struct fcw2_record *rec);

/* Frame length from a header of at least 4+1+4 bytes (no validation). */
static inline size_t
fcw2_frame_len(const uint8_t *hdr)
{
	return FCW2_OVERHEAD + ((size_t)hdr[5] | (size_t)hdr[6] << 8 |
	    (size_t)hdr[7] << 16 | (size_t)hdr[8] << 24);
}

/*
 * Walk the headers of whole frames already checked, back to back in buf
 * from off: pass at most max frames and stop before a frame that would
 * end after end or whose header lacks the magic. Returns the offset
 * reached (a frame boundary); *n, when not NULL, the frames passed. Reads
 * headers only, validates nothing else.
 */
size_t		 fcw2_walk(const uint8_t *buf, size_t off, size_t end,
		    uint64_t max, uint64_t *n);

/* Parse an uncompressed record that fills exactly len bytes. */
int		 fcw2_record_parse(const uint8_t *p, size_t len,
		    struct fcw2_record *rec);

/*
 * Encoder. fcw2_encode writes one frame to out (capacity outcap) and
 * returns its length, or 0 when it does not fit. With compress set the
 * payload is LZ4 when strictly shorter, as the cache does.
 */
size_t		 fcw2_encoded_max(const struct fcw2_record *);
size_t		 fcw2_encode(const struct fcw2_record *, int compress,
		    uint8_t *out, size_t outcap);

/*
 * Incremental decoder: bytes in any split, whole frames out, each with its
 * byte offset in the stream. Buffers at most one partial frame.
 */
struct fcw2_decoder {
	struct fcw2_checker	 chk;
	uint8_t			*buf;
	size_t			 len;	/* bytes held */
	size_t			 pos;	/* start of the next frame in buf */
	size_t			 cap;
	uint64_t		 offset; /* stream offset of buf[pos] */
	int			 error;	 /* sticky error */
};

struct fcw2_frame {
	const uint8_t		*data;
	size_t			 len;
	uint64_t		 offset;
	struct fcw2_record	 rec;	/* valid when records are checked */
};

void	fcw2_decoder_init(struct fcw2_decoder *, size_t max_frame_bytes,
	    int check_records);
void	fcw2_decoder_free(struct fcw2_decoder *);
/* Append bytes. Returns 0, or -1 when out of memory. */
int	fcw2_decoder_feed(struct fcw2_decoder *, const void *, size_t);
/*
 * Next frame: FCW2_OK (frame valid until the next feed or next call),
 * FCW2_NEED_MORE, or an error (sticky; the offset of the bad frame is in
 * dec->offset). The frame data stays valid until the next feed.
 */
int	fcw2_decoder_next(struct fcw2_decoder *, struct fcw2_frame *);
/* At end of input: FCW2_OK when nothing is pending, else FCW2_ERR_TRAILING. */
int	fcw2_decoder_finish(struct fcw2_decoder *);

#endif
