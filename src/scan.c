/*
 * scan.c: streaming scanner for files of FCW2 frames, with
 * resynchronisation after a bad frame. Reads in blocks; holds at most one
 * block or one frame (up to the cap) at a time.
 */
#include "autoconfig.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zstd.h>

#include "scan.h"

#define SCAN_ZIN	(128 * 1024)

void
scan_init(struct scan *sc, size_t max_frame_bytes, size_t block,
    int check_records)
{
	memset(sc, 0, sizeof(*sc));
	fcw2_checker_init(&sc->sc_chk, max_frame_bytes, check_records);
	sc->sc_max_frame = max_frame_bytes;
	sc->sc_block = block > 0 ? block : SCAN_BLOCK;
	sc->sc_fd = -1;
}

void
scan_free(struct scan *sc)
{
	fcw2_checker_free(&sc->sc_chk);
	free(sc->sc_buf);
	sc->sc_buf = NULL;
	sc->sc_cap = sc->sc_len = sc->sc_pos = 0;
	ZSTD_freeDCtx(sc->sc_zd);
	sc->sc_zd = NULL;
	free(sc->sc_zin);
	sc->sc_zin = NULL;
}

void
scan_start(struct scan *sc, int fd)
{
	sc->sc_fd = fd;
	sc->sc_eof = 0;
	sc->sc_len = sc->sc_pos = 0;
	sc->sc_base = 0;
	sc->sc_read = 0;
	ZSTD_freeDCtx(sc->sc_zd);
	sc->sc_zd = NULL;
	sc->sc_corrupt = 0;
}

int
scan_is_zstd_name(const char *name)
{
	size_t l = strlen(name);

	return l > 8 && strcmp(name + l - 8, ".wal.zst") == 0;
}

int
scan_start_zstd(struct scan *sc, int fd)
{
	scan_start(sc, fd);
	if ((sc->sc_zd = ZSTD_createDCtx()) == NULL)
		return -1;
	if (sc->sc_zin == NULL && (sc->sc_zin = malloc(SCAN_ZIN)) == NULL)
		return -1;
	sc->sc_zlen = sc->sc_zpos = 0;
	sc->sc_zoff = sc->sc_zframe = 0;
	sc->sc_zeof = sc->sc_zmid = 0;
	return 0;
}

int
scan_corrupt(const struct scan *sc)
{
	return sc->sc_corrupt;
}

uint64_t
scan_input_read(const struct scan *sc)
{
	return sc->sc_zd != NULL ? sc->sc_zoff + sc->sc_zpos : sc->sc_read;
}

/*
 * Read up to len bytes of the segment: from the file, or decompressed
 * from it. Returns the count, 0 at the end, or -1 (errbuf says why).
 */
static ssize_t
scan_read(struct scan *sc, uint8_t *buf, size_t len, char *errbuf,
    size_t errlen)
{
	ZSTD_outBuffer out = { buf, len, 0 };
	ssize_t n;
	size_t r;

	if (sc->sc_zd == NULL) {
		while ((n = read(sc->sc_fd, buf, len)) == -1 && errno == EINTR)
			;
		if (n == -1)
			snprintf(errbuf, errlen, "read at offset %llu: %s",
			    (unsigned long long)(sc->sc_base + sc->sc_len),
			    strerror(errno));
		return n;
	}
	while (out.pos == 0) {
		if (sc->sc_zpos == sc->sc_zlen) {
			if (sc->sc_zeof) {
				if (sc->sc_zmid) {
					sc->sc_corrupt = 1;
					snprintf(errbuf, errlen, "corrupt block "
					    "at offset %llu: the file ends "
					    "inside it",
					    (unsigned long long)sc->sc_zframe);
					return -1;
				}
				return 0;
			}
			sc->sc_zoff += sc->sc_zlen;
			sc->sc_zlen = sc->sc_zpos = 0;
			while ((n = read(sc->sc_fd, sc->sc_zin, SCAN_ZIN)) ==
			    -1 && errno == EINTR)
				;
			if (n == -1) {
				snprintf(errbuf, errlen, "read at offset %llu: "
				    "%s", (unsigned long long)sc->sc_zoff,
				    strerror(errno));
				return -1;
			}
			if (n == 0)
				sc->sc_zeof = 1;
			sc->sc_zlen = (size_t)n;
			continue;
		}
		{
			ZSTD_inBuffer in = { sc->sc_zin, sc->sc_zlen,
			    sc->sc_zpos };

			if (!sc->sc_zmid)
				sc->sc_zframe = sc->sc_zoff + sc->sc_zpos;
			sc->sc_zmid = 1;
			r = ZSTD_decompressStream(sc->sc_zd, &out, &in);
			sc->sc_zpos = in.pos;
			if (ZSTD_isError(r)) {
				sc->sc_corrupt = 1;
				snprintf(errbuf, errlen, "corrupt block at "
				    "offset %llu: %s",
				    (unsigned long long)sc->sc_zframe,
				    ZSTD_getErrorName(r));
				return -1;
			}
			if (r == 0)
				sc->sc_zmid = 0;	/* a frame ended */
		}
	}
	return (ssize_t)out.pos;
}

uint64_t
scan_bytes_read(const struct scan *sc)
{
	return sc->sc_read;
}

/*
 * Have at least want bytes from sc_pos in the buffer, reading blocks as
 * needed. Returns 0 (fewer bytes only at end of file), or -1.
 */
static int
scan_fill(struct scan *sc, size_t want, char *errbuf, size_t errlen)
{
	ssize_t n;

	while (sc->sc_len - sc->sc_pos < want && !sc->sc_eof) {
		if (sc->sc_pos > 0) {
			memmove(sc->sc_buf, sc->sc_buf + sc->sc_pos,
			    sc->sc_len - sc->sc_pos);
			sc->sc_base += sc->sc_pos;
			sc->sc_len -= sc->sc_pos;
			sc->sc_pos = 0;
		}
		/* grow in blocks for a large frame; shrink back after it */
		if (sc->sc_cap < want || sc->sc_cap == 0 ||
		    (sc->sc_cap > 2 * sc->sc_block && want <= sc->sc_block &&
		    sc->sc_len < sc->sc_block)) {
			size_t cap = sc->sc_block;
			uint8_t *nb;

			while (cap < want)
				cap += sc->sc_block;
			if ((nb = realloc(sc->sc_buf, cap)) == NULL) {
				snprintf(errbuf, errlen,
				    "out of memory for a %zu-byte buffer", cap);
				return -1;
			}
			sc->sc_buf = nb;
			sc->sc_cap = cap;
		}
		n = scan_read(sc, sc->sc_buf + sc->sc_len,
		    sc->sc_cap - sc->sc_len, errbuf, errlen);
		if (n == -1)
			return -1;
		if (n == 0) {
			sc->sc_eof = 1;
			break;
		}
		sc->sc_len += (size_t)n;
		sc->sc_read += (uint64_t)n;
	}
	return 0;
}

/*
 * Skip from the byte after sc_pos to the next "FCW2" that starts a whole
 * valid frame, or to the end of the file. Fills in the event's skip fields
 * for a bad frame that started at file offset from.
 */
static int
scan_resync(struct scan *sc, uint64_t from, struct scan_event *ev,
    char *errbuf, size_t errlen)
{
	const uint8_t *p;
	size_t avail, flen, keep;
	int rc;

	sc->sc_pos++;
	ev->ev_resumed = 0;
	for (;;) {
		avail = sc->sc_len - sc->sc_pos;
		if (avail < 4 && !sc->sc_eof) {
			if (scan_fill(sc, 4, errbuf, errlen) == -1)
				return -1;
			continue;
		}
		p = NULL;
		if (avail >= 4)
			p = memmem(sc->sc_buf + sc->sc_pos, avail, FCW2_MAGIC, 4);
		if (p == NULL) {
			if (sc->sc_eof) {
				sc->sc_pos = sc->sc_len;
				break;
			}
			/* keep what could be the start of a magic */
			keep = avail < 3 ? avail : 3;
			sc->sc_pos = sc->sc_len - keep;
			if (scan_fill(sc, keep + 1, errbuf, errlen) == -1)
				return -1;
			continue;
		}
		sc->sc_pos = (size_t)(p - sc->sc_buf);
		flen = 0;
		rc = fcw2_check(&sc->sc_chk, p, sc->sc_len - sc->sc_pos, &flen,
		    NULL);
		if (rc == FCW2_NEED_MORE && !sc->sc_eof) {
			if (scan_fill(sc, flen, errbuf, errlen) == -1)
				return -1;
			continue;	/* the same candidate, with more bytes */
		}
		if (rc == FCW2_OK) {
			ev->ev_resumed = 1;
			break;
		}
		sc->sc_pos++;
	}
	ev->ev_resume = sc->sc_base + sc->sc_pos;
	ev->ev_skipped = ev->ev_resume - from;
	return 0;
}

int
scan_next(struct scan *sc, struct scan_event *ev, char *errbuf, size_t errlen)
{
	size_t avail, flen;
	uint64_t off;
	int rc;

	memset(ev, 0, sizeof(*ev));
	for (;;) {
		avail = sc->sc_len - sc->sc_pos;
		if (avail == 0 && !sc->sc_eof) {
			if (scan_fill(sc, 1, errbuf, errlen) == -1)
				return -1;
			continue;
		}
		off = sc->sc_base + sc->sc_pos;
		ev->ev_offset = off;
		if (avail == 0) {
			ev->ev_type = SCAN_END;
			return 0;
		}
		flen = 0;
		rc = fcw2_check(&sc->sc_chk, sc->sc_buf + sc->sc_pos, avail,
		    &flen, &ev->ev_rec);
		if (rc == FCW2_NEED_MORE && !sc->sc_eof) {
			if (scan_fill(sc, flen, errbuf, errlen) == -1)
				return -1;
			continue;
		}
		break;
	}

	if (rc == FCW2_OK) {
		ev->ev_type = SCAN_FRAME;
		ev->ev_data = sc->sc_buf + sc->sc_pos;
		ev->ev_len = flen;
		sc->sc_pos += flen;
		return 0;
	}
	if (rc == FCW2_NEED_MORE) {
		/*
		 * An incomplete frame at the end of the file: a torn tail,
		 * unless a valid frame starts inside it (a corrupt length).
		 */
		ev->ev_have = avail;
		ev->ev_need = avail >= FCW2_HEADER_LEN ? flen : 0;
		if (scan_resync(sc, off, ev, errbuf, errlen) == -1)
			return -1;
		if (ev->ev_resumed) {
			ev->ev_type = SCAN_BAD;
			ev->ev_status = FCW2_NEED_MORE;
		} else
			ev->ev_type = SCAN_INCOMPLETE;
		return 0;
	}
	ev->ev_type = SCAN_BAD;
	ev->ev_status = rc;
	memset(&ev->ev_rec, 0, sizeof(ev->ev_rec));
	return scan_resync(sc, off, ev, errbuf, errlen);
}
