/*
 * archive.h: the archive tier: sealed segments compressed with zstd and
 * still served.
 *
 * An archived segment is one file, segment-{base:020}-{ms}.wal.zst:
 *
 *   block 0 .. block n-1   independent zstd frames (content size and
 *                          checksum set), each holding about ARCHIVE_BLOCK
 *                          bytes of whole FCW2 frames, in order
 *   index                  a zstd skippable frame: for every block its
 *                          first sequence, frame count, raw offset and
 *                          length, compressed offset and length; an XXH64
 *                          of it; and an 8-byte trailer (its length and
 *                          "WRAZ") so that a reader finds it from the end
 *
 * `zstd -d` turns the file back into the raw segment (it skips the index).
 * A reader that wants frame S decompresses exactly one block: the one
 * whose range holds S.
 *
 * Nothing here touches a global: the store (segment.c) owns an archiver
 * (the thread that compresses sealed segments) and a block reader (two
 * threads that decompress blocks for subscribers), and every function
 * takes its context explicitly.
 */
#ifndef WALRELAY_ARCHIVE_H
#define WALRELAY_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "chunk.h"

#define ARCHIVE_SUFFIX		".wal.zst"
#define ARCHIVE_TMP_SUFFIX	".wal.zst.tmp"
#define ARCHIVE_BLOCK		(1024 * 1024)	/* raw bytes per block */
#define ARCHIVE_DEFAULT_LEVEL	3

struct segstore;

/* What the archiver does (part of the store's configuration). */
struct archive_config {
	int		 ac_enabled;	/* archive at all */
	uint64_t	 ac_after_s;	/* sealed at least this long ago ... */
	uint64_t	 ac_keep_raw;	/* ... and not among the N newest sealed */
	int		 ac_level;	/* zstd level; 0: ARCHIVE_DEFAULT_LEVEL */
	int		 ac_long;	/* long-distance matching */
	size_t		 ac_block;	/* raw bytes per block; 0: ARCHIVE_BLOCK */
	/*
	 * Tests only: called at each step of archiving a segment (enum
	 * archive_step), e.g. to kill the process there.
	 */
	void		(*ac_test_step)(int step, const char *name, void *arg);
	void		*ac_test_arg;
};

/* The steps of archiving one segment, in order (for crash tests). */
enum archive_step {
	ARCHIVE_STEP_WRITTEN = 1,	/* temporary file written */
	ARCHIVE_STEP_SYNCED,		/* ... and fdatasynced */
	ARCHIVE_STEP_RENAMED,		/* renamed to .wal.zst */
	ARCHIVE_STEP_DIRSYNCED,		/* directory fsynced */
	ARCHIVE_STEP_SWAPPED,		/* the store serves the .wal.zst */
	ARCHIVE_STEP_UNLINKED,		/* raw file removed */
	ARCHIVE_STEP_DONE,		/* directory fsynced again */
};

struct archive_block {
	uint64_t	 ab_seq;	/* first frame */
	uint32_t	 ab_nframes;
	uint32_t	 ab_raw_len;
	uint64_t	 ab_raw_off;	/* offset in the raw segment */
	uint64_t	 ab_zoff;	/* offset of its zstd frame in the file */
	uint32_t	 ab_zlen;
};

struct archive_index {
	uint64_t		 ai_base;	/* first sequence */
	uint64_t		 ai_nframes;
	uint64_t		 ai_raw_bytes;
	uint64_t		 ai_index_off;	/* where the index frame starts */
	uint32_t		 ai_nblocks;
	struct archive_block	*ai_blocks;
};

/* Is this the name of an archived segment? Its base sequence (or -1). */
int	archive_name_parse(const char *, uint64_t *base, uint64_t *created_ms);

/*
 * Compress the frames [base, base + nframes) of the raw segment rawfd
 * (from offset 0; every frame's crc checked) into outfd as blocks plus the
 * index. No fsync. Returns 0 with *idx filled (free with
 * archive_index_free), or -1 with errbuf (a bad frame says its offset).
 */
int	archive_compress(int rawfd, int outfd, uint64_t base,
	    uint64_t nframes, const struct archive_config *, size_t max_frame,
	    struct archive_index *idx, uint64_t *zbytes, char *errbuf,
	    size_t errlen);

/* Read and check the index at the end of an archived file. 0 or -1. */
int	archive_index_read(int fd, struct archive_index *, char *errbuf,
	    size_t errlen);
void	archive_index_free(struct archive_index *);
/* The block that holds frame seq, or -1. */
long	archive_index_find(const struct archive_index *, uint64_t seq);

/*
 * Decompress one block into a new chunk (ch_seq, ch_nframes set; one
 * reference for the caller): zstd checks the content's XXH64, then the
 * frame headers must add up to exactly the frames the index says. Returns 0, or -1 with
 * errbuf saying what is wrong at which file offset.
 */
int	archive_read_block(int fd, const struct archive_block *,
	    size_t max_frame, struct chunk **, char *errbuf, size_t errlen);

/*
 * Decompress block b of the archived file fd into dst (dstcap bytes, at
 * least ab_raw_len) in one call with dctx, so that zstd writes straight
 * into dst; *zbuf (*zcap bytes, grown as needed: free it when done) takes
 * the compressed bytes. zstd checks the content's XXH64, unless
 * frames_checked: the caller then checks every frame's crc in dst itself.
 * Returns 0, or -1 with errbuf ("corrupt block at offset N (sequences A
 * to B): why" for bad content).
 */
struct ZSTD_DCtx_s;
int	archive_block_decompress(struct ZSTD_DCtx_s *dctx, int fd,
	    const struct archive_block *b, int frames_checked, uint8_t *dst,
	    size_t dstcap, uint8_t **zbuf, size_t *zcap, char *errbuf,
	    size_t errlen);

/*
 * The same, cut into pieces: views (chunk_view) of whole frames of at
 * most piece bytes each (a larger frame alone in its own) into the one
 * chunk the block is decompressed into, so that a subscriber queues whole
 * pieces by reference instead of copying parts of a block bigger than its
 * buffer, and no byte is copied after zstd. dctx: a context to reuse, or
 * NULL.
 * Returns 0 with *pieces (an array of *npieces chunks, one reference each:
 * free with archive_pieces_free), or -1 with errbuf as above.
 */
#define ARCHIVE_PIECE		(64 * 1024)
int	archive_read_pieces(struct ZSTD_DCtx_s *dctx, int fd,
	    const struct archive_block *, size_t max_frame, size_t piece,
	    struct chunk ***pieces, uint32_t *npieces, char *errbuf,
	    size_t errlen);
void	archive_pieces_free(struct chunk **pieces, uint32_t npieces);

/* ---- the block reader: decompression off the event loop -------------- */

struct archive_job {
	/* set by the submitter; the file is opened relative to aj_dirfd */
	int			 aj_dirfd;
	char			 aj_name[128];
	struct archive_block	 aj_blk;
	size_t			 aj_max_frame;
	/* set by the reader thread once aj_done */
	int			 aj_done;
	struct chunk		**aj_pieces;	/* NULL: failed, see aj_err */
	uint32_t		 aj_npieces;
	int			 aj_enoent;	/* the file was gone */
	char			 aj_err[448];
	STAILQ_ENTRY(archive_job) aj_entry;
};

struct archive_reader;

/*
 * notify(arg) is called on the reader thread that finished a job, after
 * each one. Jobs are taken in order by whichever of the threads is free,
 * so they may finish out of order.
 */
struct archive_reader *archive_reader_start(void (*notify)(void *),
	    void *arg, char *errbuf, size_t errlen);
/* Queue a job (it must stay allocated until it is done or the reader stopped). */
void	archive_reader_submit(struct archive_reader *, struct archive_job *);
/* Has the job finished? (Its result fields may be read after 1.) */
int	archive_reader_done(struct archive_reader *, struct archive_job *);
/* Stop the thread; queued jobs that never ran are marked done, failed. */
void	archive_reader_stop(struct archive_reader *);

/* ---- the archiver: compression off the event loop -------------------- */

struct archiver;

/* Start the thread that archives the store's eligible sealed segments. */
struct archiver	*archiver_start(struct segstore *,
		    const struct archive_config *, size_t max_frame,
		    char *errbuf, size_t errlen);
/* Look for work now (a segment was sealed). Any thread. */
void		 archiver_kick(struct archiver *);
/* Finish the segment being archived (or undo it) and stop. */
void		 archiver_stop(struct archiver *);

#endif
