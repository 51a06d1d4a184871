/*
 * segment_int.h: the segment store's internals, shared by segment.c (the
 * store object, retention, archive and snapshot hand-offs), segment_meta.c
 * (the metadata file), segment_recover.c (opening and recovering a store,
 * checking sealed segments), segment_writer.c (the writer thread) and
 * segment_read.c (locating and serving frames). No other file includes it:
 * everything else uses segment.h.
 *
 * Locking: ss_mtx protects the queue, the segment list, every segment's
 * size, end and index, and ss_st. The writer thread does its I/O without
 * the mutex. The loop thread alone changes seg_pins (under the mutex, so
 * that retention on the writer thread sees it) and owns seg_rfd.
 */
#ifndef WALRELAY_SEGMENT_INT_H
#define WALRELAY_SEGMENT_INT_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "archive.h"
#include "chunk.h"
#include "iopool.h"
#include "segment.h"

#define SEGMENT_WRITEBACK	(2u << 20)	/* bytes between writeback kicks */
#define SEGMENT_META		"walrelay.meta"
#define SEGMENT_META_TMP	"walrelay.meta.tmp"
#define SEGMENT_LOCK		"walrelay.lock"
#define SEGMENT_META_MAX	4096
#define SEGMENT_META_VERSION	1

#define SEGMENT_DEFAULT_BYTES	(64ull * 1024 * 1024)
#define SEGMENT_DEFAULT_RETRY	1000
#define SEGMENT_INDEX_STRIDE	(32 * 1024)	/* bytes between index points */
#define SEGMENT_SCAN_BUF	(1024 * 1024)
#define SEGMENT_WALK_BUF	(64 * 1024)
#define SEGMENT_STOP_TRIES	3	/* write attempts at close under errors */
#define SEGMENT_BLOCKS		8	/* decompressed archive blocks kept */
#define SEGMENT_READ_AHEAD	2	/* blocks decompressed ahead of a reader */

struct segment_ipoint {
	uint64_t		 ip_seq;
	uint64_t		 ip_off;
};

struct segment {
	TAILQ_ENTRY(segment)	 seg_entry;
	char			*seg_name;
	uint64_t		 seg_base;
	uint64_t		 seg_end;	/* first sequence after the file */
	uint64_t		 seg_created_ms;
	uint64_t		 seg_bytes;	/* whole frames in the file */
	uint64_t		 seg_wb_off;	/* writeback started below this */
	uint64_t		 seg_durable_end; /* servable frames end here */
	uint64_t		 seg_durable_bytes;
	int			 seg_checked;	/* frames checked, index built */
	struct segment_ipoint	*seg_index;
	size_t			 seg_nindex;
	size_t			 seg_capindex;
	unsigned		 seg_pins;
	int			 seg_rfd;	/* read fd while pinned */
	/*
	 * Archived: served from seg_zname by blocks (seg_zidx, fixed once
	 * set). seg_name stays the raw file's name: a reader that pinned it
	 * before keeps reading its open file.
	 */
	int			 seg_archived;
	int			 seg_noarchive;	/* archiving failed: keep raw */
	/*
	 * A file the archive tier could not remove: the raw one after the
	 * .wal.zst took over (seg_rawleft), or a .wal.zst whose rename was
	 * not made durable (seg_zleft). The archiver removes it later;
	 * retention removes it with the segment, before the file it serves.
	 */
	int			 seg_rawleft;
	int			 seg_zleft;
	char			*seg_zname;
	struct archive_index	 seg_zidx;
	int			 seg_compacted;	/* removed: a snapshot covers it */
	/*
	 * Loop thread: a find job (segment_read.c) is in flight, and the
	 * offset of one frame the last one found (no walk on the loop).
	 */
	int			 seg_finding;
	int			 seg_has_hint;
	uint64_t		 seg_hint_seq;
	uint64_t		 seg_hint_off;
	/*
	 * Loop thread: the last find job could not read the file (errno),
	 * looking for seg_find_err_seq; the next locate of that sequence
	 * reports it once (SEGSTORE_READERR) instead of starting another.
	 */
	int			 seg_find_err;
	uint64_t		 seg_find_err_seq;
};
TAILQ_HEAD(segment_list, segment);

/* A decompressed archive block, or one being decompressed (loop thread). */
enum { SB_FREE = 0, SB_PENDING, SB_READY };
struct segment_block {
	int			 sb_state;
	uint64_t		 sb_base;	/* its segment's base sequence */
	uint32_t		 sb_idx;	/* block number in the segment */
	struct segment		*sb_seg;	/* pinned while pending */
	struct chunk		**sb_pieces;	/* SB_READY: the block's frames */
	uint32_t		 sb_npieces;
	uint64_t		 sb_used;
	struct archive_job	 sb_job;
};

struct segment_meta {
	uint64_t		 m_epoch;
	uint64_t		 m_base;
	int			 m_running;
	int			 m_mode;
	/* the newest snapshot (optional line; older files have none) */
	struct segstore_snapmeta m_snap;
};

struct segstore {
	struct segment_config	 ss_cf;
	char			*ss_dir;
	int			 ss_dirfd;
	int			 ss_lockfd;
	uint64_t		 ss_epoch;	/* loop thread */
	uint64_t		 ss_next;	/* loop thread */
	uint64_t		 ss_open_next;
	uint64_t		 ss_limit;	/* loop thread */
	/* Serialises metadata writes (loop and snapshot threads). */
	pthread_mutex_t		 ss_meta_mtx;
	struct segstore_snapmeta ss_snap;	/* under ss_meta_mtx */
	/*
	 * Compaction (snapshots on): segments ending at or before
	 * ss_covered are removed, and retention removes nothing newer.
	 */
	int			 ss_compact;
	uint64_t		 ss_covered;
	uint64_t		 ss_meta_base;	/* m_base of the last write */
	/* the last failed write renamed the file (its dir fsync failed) */
	int			 ss_meta_unsure;	/* under ss_meta_mtx */

	pthread_mutex_t		 ss_mtx;
	pthread_cond_t		 ss_cond;
	pthread_t		 ss_thread;
	int			 ss_started;
	int			 ss_stop;
	int			 ss_gave_up;
	int			 ss_retain_blocked;
	int			 ss_retaining;	/* a retention pass runs */
	int			 ss_retain_again; /* asked for meanwhile */
	int			 ss_retry_now;
	struct chunk_queue	 ss_queue;	/* appended, not yet taken */
	struct segment_list	 ss_segs;
	struct segment		*ss_active;	/* the file being written */
	struct segstore_state	 ss_st;
	void			(*ss_notify)(void *);
	void			*ss_notify_arg;

	/* Writer thread only. */
	struct chunk_queue	 ss_todo;	/* taken, not yet written */
	struct chunk_queue	 ss_unsynced;	/* written, not yet durable */
	int			 ss_wfd;
	int			 ss_wdirty;	/* written since the last sync */
	int			 ss_wtrunc;	/* a partial frame may be on disk */
	int			 ss_wdirsync;	/* the active file's entry not durable */
	uint64_t		 ss_last_sync;	/* monotonic ms */
	uint64_t		 ss_failures;	/* attempts since the last success */
	char			 ss_werr[PATH_MAX + 64];

	/* The archive tier. */
	struct archiver		*ss_archiver;
	struct archive_reader	*ss_reader;
	struct segment_block	 ss_blocks[SEGMENT_BLOCKS];	/* loop thread */
	uint64_t		 ss_block_tick;

	/*
	 * Retention on the I/O pool (under ss_mtx): the job is submitted and
	 * its done callback has not run yet; asked for again meanwhile.
	 */
	struct iopool_job	 ss_retain_job;
	int			 ss_retain_busy;
	int			 ss_retain_more;
};

/* segment.c */
void		 segment_hist_add(struct segstore_hist *, uint64_t us,
		    uint64_t n);
uint64_t	 segment_now_ms(void);
uint64_t	 segment_mono_ms(void);
uint64_t	 segment_new_epoch(void);
struct segment	*segment_new(const char *name, uint64_t base,
		    uint64_t created_ms);
void		 segment_free(struct segment *);
const char	*segment_file(const struct segment *);
void		 segment_index_add(struct segment *, uint64_t seq,
		    uint64_t off);

/* retention itself, on the calling thread (the writer's, a worker's) */
void		 segment_retain_run(struct segstore *);
/* segment_meta.c; returns 0 or -1 with errbuf (read: 1 when absent) */
int		 segment_meta_write(struct segstore *,
		    const struct segment_meta *, char *errbuf, size_t errlen);
int		 segment_meta_write_locked(struct segstore *,
		    const struct segment_meta *, char *errbuf, size_t errlen);
int		 segment_meta_read(struct segstore *, struct segment_meta *,
		    char *errbuf, size_t errlen);

/* segment_recover.c */
int		 segment_check_sealed(struct segstore *, struct segment *,
		    int fd, uint64_t *bad);

/* segment_writer.c: the writer thread's body */
void		*segstore_writer(void *);

/* segment_read.c */
void		 segment_blocks_reap(struct segstore *);

#endif
