/*
 * fcw2.c: FCW2 frame and record codec. Pure: no I/O, no logging.
 */
#include "autoconfig.h"

#include <stdlib.h>
#include <string.h>

#include <lz4.h>

#include "crc.h"
#include "fcw2.h"

static inline uint32_t
rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

static inline uint64_t
rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static inline void
wr32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static inline void
wr64(uint8_t *p, uint64_t v)
{
	wr32(p, (uint32_t)v);
	wr32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t
crc(const uint8_t *p, size_t len)
{
	return crc_update(0, p, len);
}

const char *
fcw2_strerror(int status)
{
	switch (status) {
	case FCW2_NEED_MORE:
		return "incomplete frame";
	case FCW2_OK:
		return "ok";
	case FCW2_ERR_MAGIC:
		return "bad magic";
	case FCW2_ERR_TOO_LARGE:
		return "frame length over the cap";
	case FCW2_ERR_FRAME_CRC:
		return "frame crc mismatch";
	case FCW2_ERR_RECORD_CRC:
		return "record crc mismatch";
	case FCW2_ERR_OP:
		return "unknown op";
	case FCW2_ERR_LENGTHS:
		return "record lengths inconsistent with payload";
	case FCW2_ERR_LZ4:
		return "LZ4 block does not decode";
	case FCW2_ERR_LZ4_SIZE:
		return "LZ4 block decodes to the wrong size";
	case FCW2_ERR_TRAILING:
		return "trailing bytes after the last whole frame";
	}
	return "unknown error";
}

void
fcw2_checker_init(struct fcw2_checker *chk, size_t max_frame_bytes,
    int check_records)
{
	memset(chk, 0, sizeof(*chk));
	if (max_frame_bytes < FCW2_OVERHEAD)
		max_frame_bytes = FCW2_OVERHEAD;
	if (max_frame_bytes - FCW2_OVERHEAD > UINT32_MAX)
		chk->max_payload = UINT32_MAX;
	else
		chk->max_payload = (uint32_t)(max_frame_bytes - FCW2_OVERHEAD);
	chk->check_records = check_records;
}

void
fcw2_checker_free(struct fcw2_checker *chk)
{
	free(chk->scratch);
	chk->scratch = NULL;
	chk->scratch_cap = 0;
}

/*
 * Parse a record. crc_ok: whether its crc holds when the caller already
 * knows, or -1 to check it here.
 */
static int
record_parse(const uint8_t *p, size_t len, struct fcw2_record *rec,
    int crc_ok)
{
	uint64_t need;

	if (len < FCW2_RECORD_MIN)
		return FCW2_ERR_LENGTHS;
	rec->op = p[0];
	rec->key_len = rd32(p + 1);
	rec->value_len = rd32(p + 5);
	rec->timestamp_ms = rd64(p + 9);
	rec->expire_at_ms = (int64_t)rd64(p + 17);
	need = (uint64_t)FCW2_RECORD_MIN + rec->key_len + rec->value_len;
	if (need != len)
		return FCW2_ERR_LENGTHS;
	if (crc_ok < 0)
		crc_ok = crc(p, len - 4) == rd32(p + len - 4);
	if (!crc_ok)
		return FCW2_ERR_RECORD_CRC;
	if (rec->op < FCW2_OP_SET || rec->op > FCW2_OP_EXPIRE)
		return FCW2_ERR_OP;
	rec->key = p + FCW2_RECORD_FIXED;
	rec->value = rec->key + rec->key_len;
	return FCW2_OK;
}

int
fcw2_record_parse(const uint8_t *p, size_t len, struct fcw2_record *rec)
{
	return record_parse(p, len, rec, -1);
}

static int
check_payload(struct fcw2_checker *chk, const uint8_t *payload, size_t plen,
    int lz4, struct fcw2_record *rec)
{
	struct fcw2_record tmp;
	uint32_t rawlen;
	int n;

	if (rec == NULL)
		rec = &tmp;
	if (!lz4)
		return fcw2_record_parse(payload, plen, rec);

	if (plen < 4)
		return FCW2_ERR_LENGTHS;
	rawlen = rd32(payload);
	if (rawlen < FCW2_RECORD_MIN)
		return FCW2_ERR_LENGTHS;
	/* a record never decodes larger than the frame cap allows */
	if (rawlen > chk->max_payload || rawlen > (uint32_t)LZ4_MAX_INPUT_SIZE)
		return FCW2_ERR_LZ4_SIZE;
	if (plen - 4 > (size_t)LZ4_MAX_INPUT_SIZE)
		return FCW2_ERR_LZ4;
	if (chk->scratch_cap < rawlen) {
		size_t cap = chk->scratch_cap ? chk->scratch_cap : 4096;
		uint8_t *nb;

		while (cap < rawlen)
			cap *= 2;
		if ((nb = realloc(chk->scratch, cap)) == NULL)
			return FCW2_ERR_LZ4;
		chk->scratch = nb;
		chk->scratch_cap = cap;
	}
	n = LZ4_decompress_safe((const char *)payload + 4, (char *)chk->scratch,
	    (int)(plen - 4), (int)rawlen);
	if (n < 0) {
		/*
		 * Either a malformed block or one that decodes longer than
		 * stated. Tell them apart only on this error path: a block
		 * whose first rawlen bytes decode cleanly was cut short by
		 * the stated size.
		 */
		n = LZ4_decompress_safe_partial((const char *)payload + 4,
		    (char *)chk->scratch, (int)(plen - 4), (int)rawlen,
		    (int)rawlen);
		if (n >= 0 && (uint32_t)n == rawlen)
			return FCW2_ERR_LZ4_SIZE;
		return FCW2_ERR_LZ4;
	}
	if ((uint32_t)n != rawlen)
		return FCW2_ERR_LZ4_SIZE;
	return fcw2_record_parse(chk->scratch, rawlen, rec);
}

int
fcw2_check(struct fcw2_checker *chk, const uint8_t *buf, size_t len,
    size_t *frame_len, struct fcw2_record *rec)
{
	uint32_t plen;
	size_t flen;
	size_t m;

	/* reject a bad magic as soon as its first wrong byte is seen */
	m = len < 4 ? len : 4;
	if (memcmp(buf, FCW2_MAGIC, m) != 0)
		return FCW2_ERR_MAGIC;
	if (len < FCW2_HEADER_LEN) {
		*frame_len = FCW2_HEADER_LEN;
		return FCW2_NEED_MORE;
	}
	plen = rd32(buf + 5);
	if (plen > chk->max_payload)
		return FCW2_ERR_TOO_LARGE;
	flen = FCW2_OVERHEAD + (size_t)plen;
	*frame_len = flen;
	if (len < flen)
		return FCW2_NEED_MORE;
	if (chk->check_records && buf[4] == 0 && plen >= FCW2_RECORD_MIN) {
		/*
		 * An uncompressed record: one crc pass over it, its own crc
		 * included, checks both crcs. The record's holds when that
		 * crc is the CRC-32 residue. CRC-32 is linear: crc(header ||
		 * record) = crc(record) ^ d, where d depends only on the
		 * header, here on plen alone (flags 0). Most streams repeat
		 * a few record sizes, so d is kept per length; a length not
		 * seen before costs the second pass that finds its d.
		 */
		const uint8_t *p = buf + FCW2_HEADER_LEN;
		struct fcw2_record tmp;
		uint32_t rc = crc(p, plen), fc;
		unsigned slot = plen % FCW2_CRC_SLOTS;

		if (chk->hc_len[slot] == plen)
			fc = rc ^ chk->hc_xor[slot];
		else {
			fc = crc(buf, flen - FCW2_CRC_LEN);
			chk->hc_len[slot] = plen;
			chk->hc_xor[slot] = fc ^ rc;
		}
		if (fc != rd32(buf + flen - FCW2_CRC_LEN))
			return FCW2_ERR_FRAME_CRC;
		return record_parse(p, plen, rec ? rec : &tmp,
		    rc == CRC_RESIDUE);
	}
	if (crc(buf, flen - FCW2_CRC_LEN) != rd32(buf + flen - FCW2_CRC_LEN))
		return FCW2_ERR_FRAME_CRC;
	if (!chk->check_records)
		return FCW2_OK;
	return check_payload(chk, buf + FCW2_HEADER_LEN, plen,
	    buf[4] & FCW2_FLAG_LZ4, rec);
}

size_t
fcw2_encoded_max(const struct fcw2_record *rec)
{
	size_t raw = FCW2_RECORD_MIN + (size_t)rec->key_len + rec->value_len;

	/* room for the raw record and, after it, its compressed form */
	if (raw > LZ4_MAX_INPUT_SIZE)
		return FCW2_OVERHEAD + raw;
	return FCW2_OVERHEAD + raw + 4 + (size_t)LZ4_compressBound((int)raw);
}

static void
write_record(const struct fcw2_record *rec, uint8_t *p)
{
	size_t body = FCW2_RECORD_FIXED + (size_t)rec->key_len + rec->value_len;

	p[0] = rec->op;
	wr32(p + 1, rec->key_len);
	wr32(p + 5, rec->value_len);
	wr64(p + 9, rec->timestamp_ms);
	wr64(p + 17, (uint64_t)rec->expire_at_ms);
	if (rec->key_len)
		memcpy(p + FCW2_RECORD_FIXED, rec->key, rec->key_len);
	if (rec->value_len)
		memcpy(p + FCW2_RECORD_FIXED + rec->key_len, rec->value,
		    rec->value_len);
	wr32(p + body, crc(p, body));
}

size_t
fcw2_encode(const struct fcw2_record *rec, int compress, uint8_t *out,
    size_t outcap)
{
	size_t raw = FCW2_RECORD_MIN + (size_t)rec->key_len + rec->value_len;
	size_t plen = raw;
	uint8_t flags = 0;

	if (raw > UINT32_MAX || outcap < FCW2_OVERHEAD + raw)
		return 0;
	write_record(rec, out + FCW2_HEADER_LEN);
	if (compress && raw <= LZ4_MAX_INPUT_SIZE &&
	    outcap >= FCW2_OVERHEAD + raw + 4 + (size_t)LZ4_compressBound((int)raw)) {
		/*
		 * Compress into the space after the raw record, then move it
		 * into place; keep it only when strictly shorter, as the
		 * cache does.
		 */
		uint8_t *tmp = out + FCW2_HEADER_LEN + raw;
		int n = LZ4_compress_default((const char *)out +
		    FCW2_HEADER_LEN, (char *)tmp + 4, (int)raw,
		    LZ4_compressBound((int)raw));

		if (n > 0 && (size_t)n + 4 < raw) {
			wr32(tmp, (uint32_t)raw);
			plen = (size_t)n + 4;
			memmove(out + FCW2_HEADER_LEN, tmp, plen);
			flags = FCW2_FLAG_LZ4;
		}
	}
	memcpy(out, FCW2_MAGIC, 4);
	out[4] = flags;
	wr32(out + 5, (uint32_t)plen);
	wr32(out + FCW2_HEADER_LEN + plen, crc(out, FCW2_HEADER_LEN + plen));
	return FCW2_OVERHEAD + plen;
}

void
fcw2_decoder_init(struct fcw2_decoder *dec, size_t max_frame_bytes,
    int check_records)
{
	memset(dec, 0, sizeof(*dec));
	fcw2_checker_init(&dec->chk, max_frame_bytes, check_records);
}

void
fcw2_decoder_free(struct fcw2_decoder *dec)
{
	fcw2_checker_free(&dec->chk);
	free(dec->buf);
	dec->buf = NULL;
	dec->len = dec->pos = dec->cap = 0;
}

int
fcw2_decoder_feed(struct fcw2_decoder *dec, const void *data, size_t len)
{
	if (len == 0)
		return 0;
	/* drop consumed bytes first so the buffer holds one partial frame */
	if (dec->pos > 0) {
		memmove(dec->buf, dec->buf + dec->pos, dec->len - dec->pos);
		dec->len -= dec->pos;
		dec->pos = 0;
	}
	if (dec->len + len > dec->cap) {
		size_t cap = dec->cap ? dec->cap : 65536;
		uint8_t *nb;

		while (cap < dec->len + len)
			cap *= 2;
		if ((nb = realloc(dec->buf, cap)) == NULL)
			return -1;
		dec->buf = nb;
		dec->cap = cap;
	}
	memcpy(dec->buf + dec->len, data, len);
	dec->len += len;
	return 0;
}

int
fcw2_decoder_next(struct fcw2_decoder *dec, struct fcw2_frame *fr)
{
	size_t flen = 0;
	int rc;

	if (dec->error)
		return dec->error;
	if (dec->pos == dec->len)
		return FCW2_NEED_MORE;
	rc = fcw2_check(&dec->chk, dec->buf + dec->pos, dec->len - dec->pos,
	    &flen, fr ? &fr->rec : NULL);
	if (rc == FCW2_NEED_MORE)
		return rc;
	if (rc < 0) {
		dec->error = rc;
		return rc;
	}
	if (fr != NULL) {
		fr->data = dec->buf + dec->pos;
		fr->len = flen;
		fr->offset = dec->offset;
	}
	dec->pos += flen;
	dec->offset += flen;
	return FCW2_OK;
}

int
fcw2_decoder_finish(struct fcw2_decoder *dec)
{
	if (dec->error)
		return dec->error;
	return dec->pos == dec->len ? FCW2_OK : FCW2_ERR_TRAILING;
}

size_t
fcw2_walk(const uint8_t *buf, size_t off, size_t end, uint64_t max,
    uint64_t *n)
{
	uint64_t k = 0;
	size_t flen;

	while (k < max && off < end && end - off >= FCW2_HEADER_LEN &&
	    memcmp(buf + off, FCW2_MAGIC, 4) == 0) {
		flen = fcw2_frame_len(buf + off);
		if (flen > end - off)
			break;
		off += flen;
		k++;
	}
	if (n != NULL)
		*n = k;
	return off;
}
