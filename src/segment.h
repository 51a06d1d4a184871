/*
 * segment.h: the durable segment store.
 *
 * Files in the data directory:
 *   segment-{base_seq:020}-{created_ms}.wal  FCW2 frames exactly as received
 *   walrelay.meta                           epoch and state (checksummed)
 *   walrelay.lock                           held with flock while running
 *
 * Threads: every function here is called from the event loop thread, except
 * that the writer thread (started by segstore_start) does the writes and
 * fsyncs and calls the notify callback when something changed. The loop then
 * calls segstore_poll to learn the new durable position and state.
 *
 * The segment list and the positions are shared with the writer thread
 * under the store's mutex; the writer creates segments (rotation), and
 * retention deletes the oldest ones from either thread.
 *
 * Disk full: the process must ignore SIGXFSZ (signal(SIGXFSZ, SIG_IGN)) so
 * that a file size limit (RLIMIT_FSIZE) makes write() fail with EFBIG, which
 * the writer handles like ENOSPC, instead of killing the daemon.
 */
#ifndef WALRELAY_SEGMENT_H
#define WALRELAY_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "archive.h"
#include "chunk.h"

enum fsync_mode {
	FSYNC_ALWAYS = 0,
	FSYNC_INTERVAL = 1,
	FSYNC_NEVER = 2,
};
/*
 * The fsync modes' names: one table (segment.c) for the config parser, the
 * metadata file, --help, the log and /v1/status.
 * segment_fsync_name: "always", "interval" or "never" ("unknown" for
 * anything else). segment_fsync_parse: the mode named by the len bytes at
 * s, or -1. segment_fsync_usage: every mode as a config value, the interval
 * with ":MS", joined by sep and, before the last one, by last (e.g. "|"
 * and "|", or ", " and " or "); returns buf.
 */
const char	*segment_fsync_name(int);
int		 segment_fsync_parse(const char *s, size_t len);
const char	*segment_fsync_usage(char *buf, size_t len, const char *sep,
		    const char *last);

struct segment_config {
	const char	*dir;
	int		 fsync_mode;		/* enum fsync_mode */
	unsigned	 fsync_interval_ms;	/* FSYNC_INTERVAL */
	uint64_t	 segment_bytes;		/* rotate at this size */
	uint64_t	 segment_age_ms;	/* rotate at this age; 0: never */
	uint64_t	 retain_bytes;		/* 0: no byte limit */
	uint64_t	 retain_age_s;		/* 0: no age limit */
	size_t		 max_frame_bytes;	/* recovery's frame cap */
	unsigned	 retry_ms;		/* disk error retry period */
	int		 verify_sealed;		/* check every sealed segment at
						   open, not on first read */
	/* Tests only: replaces fdatasync() on segment files when set. */
	int		(*sync_fn)(int fd, void *arg);
	void		*sync_arg;
	/* The archive tier (archive.h); off unless ac_enabled. */
	struct archive_config archive;
	/*
	 * Worker threads for the file work the loop's calls would otherwise
	 * do (retention's unlink and directory fsync, the first read of a
	 * sealed segment, finding a frame's offset); their results come back
	 * on the loop. NULL (walcat, some tests): done in the call.
	 */
	struct iopool	*iopool;
};

/*
 * A latency histogram: counts per bucket (not cumulative), the last one
 * for everything over the largest bound of segstore_hist_bounds_us.
 */
#define SEGSTORE_HIST_BUCKETS	16
extern const uint64_t segstore_hist_bounds_us[SEGSTORE_HIST_BUCKETS];
struct segstore_hist {
	uint64_t	 sh_count[SEGSTORE_HIST_BUCKETS + 1];
	uint64_t	 sh_total;
	uint64_t	 sh_sum_us;
};

/* What segstore_poll reports (a snapshot; loop thread). */
struct segstore_state {
	uint64_t	 ss_durable;	/* frames [earliest, durable) are durable */
	uint64_t	 ss_written;	/* frames handed to write() so far */
	uint64_t	 ss_next;	/* next sequence to be assigned */
	uint64_t	 ss_earliest;	/* first retained sequence */
	size_t		 ss_pending_bytes; /* appended, not yet durable */
	int		 ss_error;	/* 0, or the errno of the current disk trouble */
	uint64_t	 ss_fsyncs;
	uint64_t	 ss_write_errors;
	uint64_t	 ss_fsync_errors;
	uint64_t	 ss_create_errors;	/* creating a segment file */
	uint64_t	 ss_truncate_errors;	/* cutting a file back */
	/* fdatasync calls that succeeded, by duration */
	struct segstore_hist ss_fsync_time;
	/*
	 * Frames by the time from their read from the upstream (ch_recv_us)
	 * to durable (fsync always, interval) or written (never).
	 */
	struct segstore_hist ss_durable_time;
	uint64_t	 ss_bytes_written;
	uint64_t	 ss_segments;	/* files in the store */
	uint64_t	 ss_store_bytes;	/* their total size */
	uint64_t	 ss_deleted;	/* segments deleted by retention */
	uint64_t	 ss_cut_bytes;	/* torn tail (or damage) cut at open */
	uint64_t	 ss_archived;	/* segments held as .wal.zst */
	uint64_t	 ss_archived_bytes; /* their compressed size */
	uint64_t	 ss_archive_raw_bytes; /* their frames' raw size */
	uint64_t	 ss_archive_reads; /* blocks decompressed for readers */
	uint64_t	 ss_archive_failures; /* archive attempts the disk failed */
	/*
	 * Jobs done on the I/O pool that a waiting reader may want: frames
	 * located (a sealed segment's first read), retention passes.
	 */
	uint64_t	 ss_pool_done;
};

/*
 * A byte range of one segment file, ending at a frame boundary; or, for an
 * archived segment, of one decompressed block (sp_chunk set, sp_fd -1,
 * sp_offset inside the chunk, no pin: the reference keeps the bytes).
 */
struct segment_span {
	int		 sp_fd;		/* owned by the store; valid while pinned */
	struct chunk	*sp_chunk;	/* archived: a reference, or NULL */
	uint64_t	 sp_offset;	/* file offset of the frame with sp_seq */
	uint64_t	 sp_len;	/* durable bytes from sp_offset in this file */
	uint64_t	 sp_seq;	/* first frame of the span */
	uint64_t	 sp_end_seq;	/* first frame after the span */
	void		*sp_pin;	/* pass to segstore_unpin */
};

struct segstore;
struct iopool;

/* The newest snapshot as recorded in the metadata (snapshot.c). */
#define SEGSTORE_SNAPNAME_MAX	64
struct segstore_snapmeta {
	int		 sm_valid;
	uint64_t	 sm_covered;	/* frames [0, covered) are in it */
	uint64_t	 sm_ts;		/* its timestamp_ms */
	uint64_t	 sm_entries;
	char		 sm_name[SEGSTORE_SNAPNAME_MAX];
};

/*
 * Open the store: create the directory if needed, take the lock, load or
 * create the metadata (a new random epoch), scan the segments, cut a torn
 * tail of the newest one (an incomplete last frame, or bytes with no whole
 * valid frame after them) back to its last whole valid frame (logged). A
 * bad frame in the newest one with whole valid frames after it is
 * corruption: the frames are kept and the store refuses to serve from the
 * bad frame on (segstore_limit), unless the damage hides how many frames
 * it held: then it is cut (the bytes kept in NAME.damaged-MS) under a new
 * epoch. Older segments are trusted to end where the next one starts
 * and are checked frame by frame when first read (segstore_locate), or
 * here with verify_sealed: a corrupt frame inside one makes the store
 * refuse to serve past it (segstore_limit). The next frame appended goes
 * to a new segment file. Returns NULL with errbuf filled.
 */
struct segstore	*segstore_open(const struct segment_config *, char *errbuf,
		    size_t errlen);
/* The I/O pool for the loop's file work (segment_config's iopool), before
 * segstore_start. */
void		 segstore_set_iopool(struct segstore *, struct iopool *);
/* Start the writer thread; notify(arg) is called on it after each change. */
int		 segstore_start(struct segstore *, void (*notify)(void *),
		    void *arg);
/*
 * Make everything appended durable, stop the writer, mark a clean stop.
 * Returns 0, or -1 when the disk kept failing and frames that were never
 * made durable were dropped (logged).
 */
int		 segstore_close(struct segstore *);

uint64_t	 segstore_epoch(const struct segstore *);
uint64_t	 segstore_next(const struct segstore *);

/*
 * On an empty store only: the first frame will be sequence `next` under
 * `epoch` (a relay that pulls from another relay adopts its positions).
 * Returns 0, or -1 when the store already holds frames.
 */
int		 segstore_adopt(struct segstore *, uint64_t epoch, uint64_t next);

/*
 * Hand a chunk of whole validated frames to the writer. Sets ch->ch_seq to
 * the next sequence and takes a reference (dropped once durable). Never
 * blocks. Returns 0.
 */
int		 segstore_append(struct segstore *, struct chunk *);

/*
 * Under disk trouble (ss_error set), retry now instead of at the next
 * retry_ms tick, e.g. once the operator has freed space. No effect
 * otherwise.
 */
void		 segstore_retry(struct segstore *);

/* Snapshot of positions and counters. */
void		 segstore_poll(struct segstore *, struct segstore_state *);

/*
 * Find where frame seq is on disk. Returns 0 and pins the segment (it will
 * not be deleted until segstore_unpin), -1 when seq is older than what is
 * retained or not durable yet. Reads frame headers to find the offset; the
 * span ends at the durable end of that segment.
 *
 * In an archived segment the span is the rest of the decompressed block
 * that holds seq (sp_chunk). Blocks are decompressed on the store's reader
 * thread: when the block is not in memory yet, returns SEGSTORE_PENDING
 * and calls the notify callback once it is (ss_archive_reads moves); ask
 * again then. A block that fails its checks is reported (file, offset)
 * and made a corrupt range (segstore_corrupt_at).
 */
#define SEGSTORE_PENDING	1
/*
 * The segment file could not be read (errno says why): the reader cannot
 * be served from here now; asking again tries the file again.
 */
#define SEGSTORE_READERR	(-2)
int		 segstore_locate(struct segstore *, uint64_t seq,
		    struct segment_span *);
void		 segstore_unpin(struct segstore *, void *pin);
/* Done with a span: unpin it or drop its chunk reference. */
void		 segstore_span_release(struct segstore *, struct segment_span *);

/*
 * Apply retention now (also run by the store after each rotation). With
 * an I/O pool, once the store is started, the files are removed there:
 * the call returns at once.
 */
void		 segstore_retain(struct segstore *);

/*
 * Snapshots (snapshot.c). segstore_snapmeta: the snapshot recorded in the
 * metadata. segstore_record_snapshot: record a new one (rewrites the
 * checksummed metadata; 0, -1 with errbuf, or -2 with errbuf when the
 * file was renamed into place but its directory fsync failed: the file on
 * disk may name the new snapshot, or, after a power loss, the previous
 * one; the store keeps the previous one). segstore_compact: frames
 * before covered are in a durable snapshot: remove the segments that end
 * there (a pinned one once unpinned); with hold, from now on retention
 * removes nothing a snapshot does not cover. Any thread.
 *
 * An archive tier hooks here: a covered segment is then kept only as its
 * archived .wal.zst copy (the cache reads .wal and .wal.lz4 only), the raw
 * file removed once that copy is durable.
 */
void		 segstore_snapmeta(struct segstore *, struct segstore_snapmeta *);
int		 segstore_record_snapshot(struct segstore *,
		    const struct segstore_snapmeta *, char *errbuf, size_t errlen);
void		 segstore_compact(struct segstore *, uint64_t covered,
		    int hold);

/*
 * The first sequence the store cannot serve because a segment holds a
 * corrupt frame there (the lowest one found so far), or UINT64_MAX. Frames
 * after the corrupt range (later segments, the live stream) are served.
 */
uint64_t	 segstore_limit(const struct segstore *);

/* A range of frames a corrupt frame makes unreadable. */
struct segstore_corrupt {
	char		 sc_name[128];	/* the segment file */
	uint64_t	 sc_offset;	/* file offset of the first bad byte */
	uint64_t	 sc_first;	/* sequence of the corrupt frame */
	uint64_t	 sc_end;	/* first sequence after the range */
};

/*
 * Is frame seq unreadable because of a corrupt frame recorded in the
 * store (a sealed segment checked by segstore_locate or at open)? Returns
 * 1 and fills *c, or 0. Loop thread.
 */
int		 segstore_corrupt_at(struct segstore *, uint64_t seq,
		    struct segstore_corrupt *c);

/*
 * For /v1/status: call fn once per segment, oldest first. fn runs with the
 * store's mutex held: it must not call back into the store.
 */
void		 segstore_foreach(struct segstore *, void (*fn)(void *arg,
		    const char *name, uint64_t base_seq, uint64_t end_seq,
		    uint64_t bytes), void *arg);

/*
 * The archive tier's side of the store (archive.c calls these on the
 * archiver thread). pick: the oldest sealed raw segment the rules make due
 * (0), or 1 when none is. commit: serve the segment from zname (already
 * durable under that name) and take idx; -1 when the segment is gone.
 * skip: never try that segment again in this run.
 */
struct segstore_pick {
	char		 pk_name[128];
	uint64_t	 pk_base;
	uint64_t	 pk_end;
	uint64_t	 pk_bytes;
};
int		 segstore_archive_pick(struct segstore *, uint64_t after_s,
		    uint64_t keep_raw, struct segstore_pick *);
int		 segstore_archive_commit(struct segstore *, uint64_t base,
		    const char *zname, struct archive_index *idx,
		    uint64_t zbytes);
void		 segstore_archive_skip(struct segstore *, uint64_t base);
/*
 * left: the archiver could not remove a file of the segment at base (what:
 * SEGSTORE_LEFT_RAW, the raw file after commit; SEGSTORE_LEFT_ZST, the
 * .wal.zst after a failed directory fsync) (left 1), or removed it later
 * (left 0). leftover: the name of one such file still there (0), or 1.
 * failed: count a failed attempt (walrelay_archive_failures_total).
 */
#define SEGSTORE_LEFT_RAW	1
#define SEGSTORE_LEFT_ZST	2
void		 segstore_archive_left(struct segstore *, uint64_t base,
		    int what, int left);
int		 segstore_archive_leftover(struct segstore *, char *name,
		    size_t len, uint64_t *base, int *what);
void		 segstore_archive_failed(struct segstore *);
/* Look for segments to archive now (the janitor, after a rotation). */
void		 segstore_archive_kick(struct segstore *);
const char	*segstore_dir(const struct segstore *);
int		 segstore_dirfd(const struct segstore *);

/*
 * segment_name.c, shared with walcat: the segment files of a directory (names
 * ending in .wal or .wal.lz4), sorted by name as the cache's reader does.
 * A directory a running relay changes is listed until two listings in a
 * row agree, so that no segment is missed while it is archived.
 */
int		 segment_is_wal_name(const char *name);
int		 segment_list_dir(const char *dir, char ***names, size_t *n,
		    char *errbuf, size_t errlen);
void		 segment_list_free(char **names, size_t n);
/*
 * The same with archived segments (.wal.zst) and the archiver's
 * temporary files (.wal.zst.tmp) too: what the relay and walcat read.
 */
int		 segment_list_dir_all(const char *dir, char ***names,
		    size_t *n, char *errbuf, size_t errlen);
/* Parse a segment file name; returns 0 and the base sequence, or -1. */
int		 segment_name_parse(const char *name, uint64_t *base_seq,
		    uint64_t *created_ms);

#endif
