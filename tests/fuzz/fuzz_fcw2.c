/*
 * fuzz_fcw2.c: libFuzzer target for the FCW2 incremental decoder.
 *
 * Input layout:
 *   byte 0        bits 0-3: number of split bytes that follow (0-15)
 *                 bit 4: small frame cap (256 bytes) instead of the default
 *                 bit 5: frame checks only (records not decoded)
 *                 bit 6: rewrite the frame crcs (and, with bit 7 too,
 *                 the record crcs of uncompressed frames) so that the
 *                 checks behind them are reached
 *   split bytes   each gives the size of the next piece fed (1-256),
 *                 used in turn until the stream is consumed
 *   the rest      the byte stream
 *
 * Invariants: feeding the stream whole, in the chosen pieces and one byte
 * at a time gives the same frames at the same offsets and the same final
 * result; frames are contiguous from offset 0; every frame returned checks
 * as one whole valid frame again with fcw2_check; a record decoded from a
 * frame with flags 0 encodes back to the same bytes.
 */
#include "autoconfig.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "fcw2.h"

#define FUZZ_SMALL_CAP		256
#define FUZZ_BYTEWISE_MAX	65536

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

struct fuzz_run {
	size_t		*offsets;	/* frame offsets (and lengths) */
	size_t		*lengths;
	size_t		 nframes;
	size_t		 maxframes;
	int		 result;	/* error, or fcw2_decoder_finish */
	uint64_t	 end;		/* dec.offset at the end */
};

static void
fuzz_fail(const char *what)
{
	fprintf(stderr, "fuzz_fcw2: invariant broken: %s\n", what);
	abort();
}

static void
fuzz_check_frame(const struct fcw2_frame *fr, const uint8_t *stream,
    size_t cap, int records)
{
	struct fcw2_checker chk;
	struct fcw2_record rec;
	size_t flen = 0;
	int rc;

	if (fr->len < FCW2_OVERHEAD || fr->len > cap)
		fuzz_fail("frame length out of range");
	if (memcmp(fr->data, stream + fr->offset, fr->len) != 0)
		fuzz_fail("frame bytes differ from the stream");
	if (fcw2_frame_len(fr->data) != fr->len)
		fuzz_fail("frame length differs from its header");

	fcw2_checker_init(&chk, cap, records);
	rc = fcw2_check(&chk, fr->data, fr->len, &flen, &rec);
	if (rc != FCW2_OK || flen != fr->len)
		fuzz_fail("returned frame does not check again");
	if (records) {
		if (rec.op != fr->rec.op || rec.key_len != fr->rec.key_len ||
		    rec.value_len != fr->rec.value_len ||
		    rec.timestamp_ms != fr->rec.timestamp_ms ||
		    rec.expire_at_ms != fr->rec.expire_at_ms)
			fuzz_fail("record differs on the second check");
		if (rec.op < FCW2_OP_SET || rec.op > FCW2_OP_EXPIRE)
			fuzz_fail("record with a bad op accepted");
	}
	/* with records checked the decoded record is still valid */
	if (records && memcmp(rec.key, fr->rec.key, rec.key_len) != 0)
		fuzz_fail("record key differs on the second check");
	if (records && fr->data[4] == 0) {
		uint8_t *out;
		size_t max = fcw2_encoded_max(&rec), n;

		if ((out = malloc(max)) == NULL)
			fuzz_fail("out of memory");
		n = fcw2_encode(&rec, 0, out, max);
		if (n != fr->len || memcmp(out, fr->data, n) != 0)
			fuzz_fail("raw record does not encode to the same bytes");
		free(out);
	}
	fcw2_checker_free(&chk);
}

/*
 * Feed stream in pieces (sizes from splits, or 1 byte at a time with
 * nsplits 0 and bytewise set, or whole) and record what comes out.
 */
static void
fuzz_decode(const uint8_t *stream, size_t len, const uint8_t *splits,
    size_t nsplits, int bytewise, size_t cap, int records,
    struct fuzz_run *run)
{
	struct fcw2_decoder dec;
	struct fcw2_frame fr;
	size_t done = 0, k = 0, piece;
	uint64_t expect = 0;
	int rc = FCW2_NEED_MORE;

	fcw2_decoder_init(&dec, cap, records);
	run->nframes = 0;
	while (done < len) {
		if (bytewise)
			piece = 1;
		else if (nsplits == 0)
			piece = len;
		else
			piece = (size_t)splits[k++ % nsplits] + 1;
		if (piece > len - done)
			piece = len - done;
		if (fcw2_decoder_feed(&dec, stream + done, piece) != 0)
			fuzz_fail("out of memory");
		done += piece;
		while ((rc = fcw2_decoder_next(&dec, &fr)) == FCW2_OK) {
			if (fr.offset != expect)
				fuzz_fail("frames not contiguous");
			expect += fr.len;
			fuzz_check_frame(&fr, stream, cap, records);
			if (run->nframes == run->maxframes)
				fuzz_fail("more frames than possible");
			run->offsets[run->nframes] = fr.offset;
			run->lengths[run->nframes] = fr.len;
			run->nframes++;
		}
		if (rc < 0)
			break;
		if (rc != FCW2_NEED_MORE)
			fuzz_fail("unexpected decoder status");
	}
	if (rc < 0) {
		run->result = rc;
		if (fcw2_decoder_finish(&dec) != rc)
			fuzz_fail("error not sticky");
		if (fcw2_decoder_next(&dec, &fr) != rc)
			fuzz_fail("error not sticky in next");
	} else {
		run->result = fcw2_decoder_finish(&dec);
		if (run->result != FCW2_OK && run->result != FCW2_ERR_TRAILING)
			fuzz_fail("finish returned an unexpected status");
		if ((run->result == FCW2_OK) != (expect == len))
			fuzz_fail("finish disagrees with the bytes consumed");
	}
	if (dec.offset != expect)
		fuzz_fail("decoder offset is not the end of the last frame");
	run->end = dec.offset;
	fcw2_decoder_free(&dec);
}

static void
fuzz_compare(const struct fuzz_run *a, const struct fuzz_run *b)
{
	if (a->result != b->result)
		fuzz_fail("result depends on the split");
	if (a->nframes != b->nframes || a->end != b->end)
		fuzz_fail("frames depend on the split");
	for (size_t i = 0; i < a->nframes; i++) {
		if (a->offsets[i] != b->offsets[i] ||
		    a->lengths[i] != b->lengths[i])
			fuzz_fail("frame offsets depend on the split");
	}
}

static uint32_t
fuzz_crc(const uint8_t *p, size_t len)
{
	return (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)len);
}

static void
fuzz_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* Give every whole frame of the stream a correct crc, front to back. */
static void
fuzz_fix_crcs(uint8_t *p, size_t len, int records)
{
	size_t pos = 0, flen, plen;

	while (len - pos >= FCW2_HEADER_LEN &&
	    memcmp(p + pos, FCW2_MAGIC, 4) == 0) {
		flen = fcw2_frame_len(p + pos);
		if (flen > len - pos)
			break;
		plen = flen - FCW2_OVERHEAD;
		if (records && (p[pos + 4] & FCW2_FLAG_LZ4) == 0 && plen >= 4)
			fuzz_put32(p + pos + FCW2_HEADER_LEN + plen - 4,
			    fuzz_crc(p + pos + FCW2_HEADER_LEN, plen - 4));
		fuzz_put32(p + pos + flen - FCW2_CRC_LEN,
		    fuzz_crc(p + pos, flen - FCW2_CRC_LEN));
		pos += flen;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *fixed = NULL;
	struct fuzz_run whole, split, bytes;
	const uint8_t *splits, *stream;
	size_t nsplits, len, cap, maxframes;
	int records;

	if (size < 1)
		return 0;
	nsplits = data[0] & 0x0f;
	cap = (data[0] & 0x10) ? FUZZ_SMALL_CAP : FCW2_DEFAULT_MAX_FRAME;
	records = (data[0] & 0x20) == 0;
	if (size < 1 + nsplits)
		return 0;
	splits = data + 1;
	stream = data + 1 + nsplits;
	len = size - 1 - nsplits;
	if (data[0] & 0x40) {
		if ((fixed = malloc(len + 1)) == NULL)
			fuzz_fail("out of memory");
		memcpy(fixed, stream, len);
		fuzz_fix_crcs(fixed, len, (data[0] & 0x80) != 0);
		stream = fixed;
	}

	maxframes = len / FCW2_OVERHEAD + 1;
	memset(&whole, 0, sizeof(whole));
	whole.maxframes = maxframes;
	whole.offsets = calloc(maxframes, sizeof(size_t));
	whole.lengths = calloc(maxframes, sizeof(size_t));
	split = bytes = whole;
	split.offsets = calloc(maxframes, sizeof(size_t));
	split.lengths = calloc(maxframes, sizeof(size_t));
	bytes.offsets = calloc(maxframes, sizeof(size_t));
	bytes.lengths = calloc(maxframes, sizeof(size_t));
	if (whole.offsets == NULL || whole.lengths == NULL ||
	    split.offsets == NULL || split.lengths == NULL ||
	    bytes.offsets == NULL || bytes.lengths == NULL)
		fuzz_fail("out of memory");

	fuzz_decode(stream, len, NULL, 0, 0, cap, records, &whole);
	fuzz_decode(stream, len, splits, nsplits, 0, cap, records, &split);
	fuzz_compare(&whole, &split);
	if (len <= FUZZ_BYTEWISE_MAX) {
		fuzz_decode(stream, len, NULL, 0, 1, cap, records, &bytes);
		fuzz_compare(&whole, &bytes);
	}

	free(whole.offsets);
	free(whole.lengths);
	free(split.offsets);
	free(split.lengths);
	free(bytes.offsets);
	free(bytes.lengths);
	free(fixed);
	return 0;
}
