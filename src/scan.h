/*
 * scan.h: a streaming scanner for files of FCW2 frames (segment files).
 *
 * Reads a file descriptor in large blocks, never the whole file: the
 * buffer holds one block (1 MiB), growing only for a frame larger than
 * that, up to the frame cap. Every frame is checked (frame crc and, when
 * asked, the record inside, LZ4 included).
 *
 * After a bad frame the scanner resynchronises: it looks for the next
 * "FCW2" that starts a whole valid frame and reports how many bytes it
 * skipped. An incomplete frame at the end of the file is reported as such
 * (a torn tail after a crash), unless a whole valid frame starts inside
 * it, in which case its length was corrupt and it is reported as bad.
 */
#ifndef WALRELAY_SCAN_H
#define WALRELAY_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "fcw2.h"

#define SCAN_BLOCK	(1024 * 1024)

enum scan_event_type {
	SCAN_FRAME = 0,		/* a whole valid frame */
	SCAN_BAD = 1,		/* a bad frame, then bytes skipped */
	SCAN_INCOMPLETE = 2,	/* an incomplete frame ends the file */
	SCAN_END = 3,		/* end of the file */
};

struct scan_event {
	int			 ev_type;	/* enum scan_event_type */
	uint64_t		 ev_offset;	/* file offset of the frame */
	/*
	 * SCAN_FRAME: the frame (valid until the next scan_next) and its
	 * record when records are checked.
	 */
	const uint8_t		*ev_data;
	size_t			 ev_len;
	struct fcw2_record	 ev_rec;
	/*
	 * SCAN_BAD: what is wrong (an fcw2 status; FCW2_NEED_MORE when the
	 * frame's length runs past the end of the file although a valid
	 * frame starts inside it), the bytes skipped from ev_offset and
	 * where scanning resumed (ev_resume, the file size if nothing valid
	 * followed).
	 */
	int			 ev_status;
	uint64_t		 ev_skipped;
	uint64_t		 ev_resume;
	int			 ev_resumed;	/* a valid frame follows */
	/*
	 * SCAN_INCOMPLETE: bytes present from ev_offset to the end of the
	 * file and the frame length they need (ev_need is 0 when fewer
	 * than 9 bytes give no length).
	 */
	uint64_t		 ev_have;
	uint64_t		 ev_need;
};

struct scan {
	struct fcw2_checker	 sc_chk;
	size_t			 sc_max_frame;
	size_t			 sc_block;
	int			 sc_fd;
	int			 sc_eof;
	uint8_t			*sc_buf;
	size_t			 sc_cap;
	size_t			 sc_len;	/* bytes held */
	size_t			 sc_pos;	/* next byte to look at */
	uint64_t		 sc_base;	/* file offset of sc_buf[0] */
	uint64_t		 sc_read;	/* bytes read from the file */
	/* an archived segment (.wal.zst): the file is decompressed */
	void			*sc_zd;		/* ZSTD_DCtx, or NULL */
	uint8_t			*sc_zin;
	size_t			 sc_zlen;	/* compressed bytes held */
	size_t			 sc_zpos;
	uint64_t		 sc_zoff;	/* file offset of sc_zin[0] */
	uint64_t		 sc_zframe;	/* file offset of the zstd frame */
	int			 sc_zeof;
	int			 sc_zmid;	/* inside a zstd frame */
	int			 sc_corrupt;	/* a compressed block is bad */
};

/* Does the name end in .wal.zst (an archived segment)? */
int	scan_is_zstd_name(const char *);
/*
 * max_frame_bytes: the frame cap (a larger length is corruption); block:
 * the read size (0: SCAN_BLOCK); check_records: decode the record inside
 * every frame as well.
 */
void	scan_init(struct scan *, size_t max_frame_bytes, size_t block,
	    int check_records);
void	scan_free(struct scan *);
/* Start scanning fd (not owned) from its current position, as offset 0. */
void	scan_start(struct scan *, int fd);
/*
 * The same for an archived segment (.wal.zst): offsets are those of the
 * raw segment it holds. A block that does not decompress makes scan_next
 * fail with its file offset in errbuf and scan_corrupt() true.
 * Returns 0, or -1 when out of memory.
 */
int	scan_start_zstd(struct scan *, int fd);
int	scan_corrupt(const struct scan *);
/* File bytes read so far (compressed ones for .wal.zst): progress. */
uint64_t scan_input_read(const struct scan *);
/*
 * The next event. Returns 0, or -1 on a read error or when out of memory
 * (errbuf says which); after SCAN_END it keeps returning SCAN_END.
 */
int	scan_next(struct scan *, struct scan_event *, char *errbuf,
	    size_t errlen);
/* Bytes read so far (progress). */
uint64_t scan_bytes_read(const struct scan *);

#endif
