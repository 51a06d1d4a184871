/*
 * snapshot.h: the stream folded into the cache's own snapshot format.
 *
 * FCSNAP1 (the cache's snapshot file, FCW2.md section 6):
 *   "FCSNAP1\0" version:u32 timestamp_ms:u64 entry_count:u64
 *   entries: key_len:u32 value_len:u32 expire_at_ms:u64 key value
 * expire_at_ms UINT64_MAX means no expiry. snapshot-{ts}.bin holds the
 * body as is; snapshot-{ts}.bin.lz4 holds u32 LE body length then one LZ4
 * block of the whole body.
 *
 * The relay writes its entries sorted by key (bytewise, a shorter key
 * before its extensions), so that the previous snapshot is itself a
 * sorted run the next one merges with: a snapshot is made from the
 * previous one plus the segments after it, never from the whole history.
 *
 * Next to each snapshot the relay keeps walrelay-frames-{ts}.fcw2, the
 * same entries as FCW2 SET frames (record timestamp = the snapshot's,
 * expiry kept), which is what a subscriber that asks for a full resync is
 * sent. Temporary files are named walrelay-snap-*.tmp: nothing the relay
 * writes besides the snapshot itself starts with "snapshot-" (the cache
 * loads the last such name) or ends in .wal or .wal.lz4.
 *
 * Threads: the snap_* functions do I/O and are called on a job thread (or
 * by walcat). The snapshotter_* functions run on the event loop thread;
 * the snapshotter starts one job at a time on its own thread, which hands
 * its result back through an event.
 */
#ifndef WALRELAY_SNAPSHOT_H
#define WALRELAY_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "fcw2.h"

#define SNAP_MAGIC		"FCSNAP1"	/* and a NUL: 8 bytes */
#define SNAP_VERSION		1
#define SNAP_HEADER_LEN		28
#define SNAP_ENTRY_FIXED	16
#define SNAP_NO_EXPIRY		UINT64_MAX
#define SNAP_NAME_MAX		64

enum snap_compress {
	SNAP_COMPRESS_LZ4 = 0,
	SNAP_COMPRESS_NONE = 1,
};

/* One entry of a snapshot (pointers valid until the next read). */
struct snap_entry {
	const uint8_t	*se_key;
	uint32_t	 se_klen;
	const uint8_t	*se_val;
	uint32_t	 se_vlen;
	uint64_t	 se_expire;	/* SNAP_NO_EXPIRY: none */
};

/* ---- reading a snapshot file ------------------------------------------ */

struct snap_reader;

/*
 * Open a snapshot file (.bin and .bin.lz4 both streamed, in constant
 * memory; max_body is not used). Fills the header's timestamp and
 * entry count. Returns NULL with errbuf.
 */
struct snap_reader *snap_reader_open(const char *path, uint64_t max_body,
		    uint64_t *ts, uint64_t *count, char *errbuf, size_t errlen);
/* 1 and the next entry, 0 after the last one, -1 with errbuf. */
int		 snap_reader_next(struct snap_reader *, struct snap_entry *,
		    char *errbuf, size_t errlen);
void		 snap_reader_close(struct snap_reader *);

/* Key order of the relay's snapshots: <0, 0, >0. */
int		 snap_key_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b,
		    uint32_t blen);

/* ---- folding records --------------------------------------------------- */

/*
 * The changes a run of records makes, per key: SET (value and expiry),
 * DEL, or an EXPIRE alone (applies only if the key exists before). Held
 * in memory up to mem_limit bytes, then written as a sorted run to a
 * temporary file in dir.
 */
struct snap_fold;

struct snap_fold *snap_fold_new(const char *dir, uint64_t mem_limit,
		    char *errbuf, size_t errlen);
/* Apply one record, as the cache's recovery does. 0, or -1 with errbuf. */
int		 snap_fold_apply(struct snap_fold *, const struct fcw2_record *,
		    char *errbuf, size_t errlen);
/* Keys changed so far (in memory and runs), and runs written. */
uint64_t	 snap_fold_records(const struct snap_fold *);
unsigned	 snap_fold_runs(const struct snap_fold *);
/* Free, removing the run files. */
void		 snap_fold_free(struct snap_fold *);

/* ---- writing ----------------------------------------------------------- */

struct snap_write_result {
	uint64_t	 wr_entries;
	uint64_t	 wr_dropped_expired;	/* expiry before the snapshot's time */
	uint64_t	 wr_body_bytes;		/* uncompressed FCSNAP1 body */
	uint64_t	 wr_file_bytes;		/* the snapshot file */
	uint64_t	 wr_frames_bytes;
	int		 wr_compressed;		/* .bin.lz4 written */
};

/*
 * Merge the previous snapshot (base, sorted by key, or NULL) with the
 * fold, drop keys whose expiry is before ts, and write
 *   dir/walrelay-snap-body.tmp (the FCSNAP1 body),
 *   dir/walrelay-snap-frames.tmp (SET frames, compressed as the cache
 *     does when compress_frames is set),
 *   and, with SNAP_COMPRESS_LZ4, dir/walrelay-snap-lz4.tmp (one LZ4
 *   block made in pieces; not when the body is over LZ4's limit or holds
 *   a long run LZ4 cannot compress: then .bin). max_lz4 is not used.
 * All fdatasynced. *cancel (if not NULL) is checked as it goes. 0, or -1
 * with errbuf (temporaries removed).
 */
int		 snap_write(const char *dir, const char *base,
		    struct snap_fold *, uint64_t ts, int compress,
		    uint64_t max_lz4, const volatile int *cancel,
		    struct snap_write_result *, char *errbuf, size_t errlen);

/* ---- names ------------------------------------------------------------ */

/* snapshot-{ts}.bin or .bin.lz4: 0 and ts, -1 for anything else. */
int		 snap_name_parse(const char *name, uint64_t *ts, int *lz4);
void		 snap_name_format(char *buf, size_t len, uint64_t ts, int lz4);
void		 snap_frames_name(char *buf, size_t len, uint64_t ts);

/* ---- the relay's snapshotter (event loop thread) ----------------------- */

struct event_base;
struct segstore;

struct snapshot_config {
	const char	*sc_dir;
	uint64_t	 sc_every_ms;	/* 0: not by time */
	uint64_t	 sc_every_bytes; /* 0: not by size */
	int		 sc_compress;	/* enum snap_compress */
	uint64_t	 sc_memory;	/* state held in memory at most */
	unsigned	 sc_keep;	/* snapshots kept (>= 1) */
	uint64_t	 sc_skew_ms;	/* timestamp margin, see snapshots.md */
	size_t		 sc_max_frame;
};

/* The newest durable snapshot, for subscribers and /v1/status. */
struct snapshot_info {
	uint64_t	 si_covered;	/* frames [0, covered) are in it */
	uint64_t	 si_ts;
	uint64_t	 si_entries;
	char		 si_name[SNAP_NAME_MAX];
	char		 si_frames[SNAP_NAME_MAX];
};

struct snapshotter_status {
	int		 st_enabled;
	int		 st_running;	/* a job is running */
	int		 st_have;	/* a snapshot exists */
	struct snapshot_info st_info;
	uint64_t	 st_taken;	/* snapshots written by this process */
	uint64_t	 st_failed;
	uint64_t	 st_late_records; /* older than their snapshot's time */
	uint64_t	 st_last_ms;	/* duration of the last job */
};

struct snapshotter;

/*
 * Open at start, after the store and before anything is served: complete
 * or undo what a crash left (temporaries, a snapshot never recorded in the
 * metadata, covered segments not yet removed, snapshots beyond the keep
 * count). With neither every_ms nor every_bytes set, nothing is written
 * but an existing snapshot is still served. NULL with errbuf.
 */
struct snapshotter *snapshotter_open(const struct snapshot_config *,
		    struct segstore *, struct event_base *, char *errbuf,
		    size_t errlen);
/* Periodic (the janitor): start a job if one is due. */
void		 snapshotter_tick(struct snapshotter *);
/* Start a job now if there is anything new to cover. 0, or -1 if not. */
int		 snapshotter_run(struct snapshotter *);
/* The newest snapshot: 1 and *si, or 0 when there is none. */
int		 snapshotter_current(const struct snapshotter *,
		    struct snapshot_info *si);
void		 snapshotter_status(const struct snapshotter *,
		    struct snapshotter_status *);
/* Stop (a running job is cancelled and joined) and free. */
void		 snapshotter_close(struct snapshotter *);

#endif
