/*
 * segment.c: the durable segment store.
 *
 * The loop thread appends chunks (segstore_append) to a queue; the writer
 * thread takes them in order, writes runs of them with one pwritev(),
 * fdatasyncs according to the fsync mode (one fdatasync covers everything
 * written since the last: group commit) and publishes the durable
 * sequence. A chunk's reference is dropped once its frames are durable, so
 * after a failed write or fdatasync the writer still holds every frame it
 * has to write again.
 *
 * Start: the newest segment is checked frame by frame and a torn tail is
 * cut; a bad frame with valid ones after it is corruption (kept, not
 * served past), see segment_recover. Older segments are trusted for their extent (the
 * next file's base sequence) and are checked, and indexed, the first time
 * a reader needs them (or at open with verify_sealed). The first chunk
 * after a start always goes to a new segment file, as the cache does.
 *
 * Locking: ss_mtx protects the queue, the segment list, every segment's
 * size, end and index, and ss_st. The writer thread does its I/O without
 * the mutex. The loop thread alone changes seg_pins (under the mutex, so
 * that retention on the writer thread sees it) and owns seg_rfd.
 */
#include "autoconfig.h"

#include <sys/types.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "archive.h"
#include "clock.h"
#include "fcw2.h"
#include "chunk.h"
#include "log.h"
#include "scan.h"
#include "segment.h"

#ifndef IOV_MAX
#define IOV_MAX			1024
#endif

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
	char			*seg_zname;
	struct archive_index	 seg_zidx;
	int			 seg_compacted;	/* removed: a snapshot covers it */
};
TAILQ_HEAD(segment_list, segment);

/* A decompressed archive block, or one being decompressed (loop thread). */
enum { SB_FREE = 0, SB_PENDING, SB_READY };
struct segment_block {
	int			 sb_state;
	uint64_t		 sb_base;	/* its segment's base sequence */
	uint32_t		 sb_idx;	/* block number in the segment */
	struct segment		*sb_seg;	/* pinned while pending */
	struct chunk		*sb_chunk;	/* SB_READY */
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
};

/* 100 us to 10 s */
const uint64_t segstore_hist_bounds_us[SEGSTORE_HIST_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
	250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

/* Count n observations of us microseconds (with the mutex held). */
static void
segment_hist_add(struct segstore_hist *h, uint64_t us, uint64_t n)
{
	size_t i;

	for (i = 0; i < SEGSTORE_HIST_BUCKETS; i++)
		if (us <= segstore_hist_bounds_us[i])
			break;
	h->sh_count[i] += n;
	h->sh_total += n;
	h->sh_sum_us += us * n;
}

static const char *const segment_mode_names[] = { "always", "interval", "never" };

const char *
segment_fsync_name(int mode)
{
	if (mode < FSYNC_ALWAYS || mode > FSYNC_NEVER)
		return "unknown";
	return segment_mode_names[mode];
}

static uint64_t
segment_now_ms(void)
{
	return clock_wall_ms();
}

static uint64_t
segment_mono_ms(void)
{
	return clock_mono_ms();
}

static uint64_t
segment_new_epoch(void)
{
	uint64_t e = 0;
	ssize_t n;

	do {
		n = getrandom(&e, sizeof(e), 0);
	} while ((n == -1 && errno == EINTR) || (n == sizeof(e) && e == 0));
	if (n != sizeof(e))
		fatal("getrandom");
	return e;
}

static void
segment_free(struct segment *seg)
{
	if (seg == NULL)
		return;
	if (seg->seg_rfd != -1)
		close(seg->seg_rfd);
	free(seg->seg_index);
	free(seg->seg_name);
	free(seg->seg_zname);
	archive_index_free(&seg->seg_zidx);
	free(seg);
}

/* The file that holds the segment's frames now. */
static const char *
segment_file(const struct segment *seg)
{
	return seg->seg_archived ? seg->seg_zname : seg->seg_name;
}

static struct segment *
segment_new(const char *name, uint64_t base, uint64_t created_ms)
{
	struct segment *seg;

	if ((seg = calloc(1, sizeof(*seg))) == NULL)
		return NULL;
	if ((seg->seg_name = strdup(name)) == NULL) {
		free(seg);
		return NULL;
	}
	seg->seg_base = seg->seg_end = seg->seg_durable_end = base;
	seg->seg_created_ms = created_ms;
	seg->seg_rfd = -1;
	return seg;
}

/* Add an index point if far enough from the last one (mutex held). */
static void
segment_index_add(struct segment *seg, uint64_t seq, uint64_t off)
{
	struct segment_ipoint *ni;
	size_t cap;

	if (seg->seg_nindex > 0 &&
	    off < seg->seg_index[seg->seg_nindex - 1].ip_off +
	    SEGMENT_INDEX_STRIDE)
		return;
	if (seg->seg_nindex == seg->seg_capindex) {
		cap = seg->seg_capindex ? seg->seg_capindex * 2 : 64;
		if ((ni = realloc(seg->seg_index, cap * sizeof(*ni))) == NULL)
			return;		/* only a hint: locate walks further */
		seg->seg_index = ni;
		seg->seg_capindex = cap;
	}
	seg->seg_index[seg->seg_nindex].ip_seq = seq;
	seg->seg_index[seg->seg_nindex].ip_off = off;
	seg->seg_nindex++;
}

static int
segment_fsync_dir(struct segstore *ss)
{
	if (fsync(ss->ss_dirfd) == -1) {
		log_warn("%s: fsync of the directory", ss->ss_dir);
		return -1;
	}
	return 0;
}

/*
 * Metadata: a few text lines, the last one an XXH64 of everything before
 * it. Replaced atomically (temporary file, fsync, rename, fsync directory).
 */
static int	segment_meta_write_locked(struct segstore *,
		    const struct segment_meta *, char *, size_t);

/* Any thread: the snapshot line is always the store's current one. */
static int
segment_meta_write(struct segstore *ss, const struct segment_meta *m,
    char *errbuf, size_t errlen)
{
	struct segment_meta mm = *m;
	int rc;

	pthread_mutex_lock(&ss->ss_meta_mtx);
	mm.m_snap = ss->ss_snap;
	rc = segment_meta_write_locked(ss, &mm, errbuf, errlen);
	pthread_mutex_unlock(&ss->ss_meta_mtx);
	return rc;
}

static int
segment_meta_write_locked(struct segstore *ss, const struct segment_meta *m,
    char *errbuf, size_t errlen)
{
	char buf[768];
	int fd = -1, n, len;
	ssize_t w;

	len = snprintf(buf, sizeof(buf),
	    "# walrelay store metadata; checksummed, do not edit\n"
	    "version %d\n"
	    "epoch %016" PRIx64 "\n"
	    "base %" PRIu64 "\n"
	    "running %d\n"
	    "fsync %s\n",
	    SEGMENT_META_VERSION, m->m_epoch, m->m_base, m->m_running,
	    segment_mode_names[m->m_mode]);
	if (m->m_snap.sm_valid)
		len += snprintf(buf + len, sizeof(buf) - len,
		    "snapshot %" PRIu64 " %" PRIu64 " %" PRIu64 " %s\n",
		    m->m_snap.sm_covered, m->m_snap.sm_ts,
		    m->m_snap.sm_entries, m->m_snap.sm_name);
	n = snprintf(buf + len, sizeof(buf) - len, "xxh64 %016llx\n",
	    (unsigned long long)XXH64(buf, len, 0));
	len += n;

	fd = openat(ss->ss_dirfd, SEGMENT_META_TMP,
	    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		goto fail;
	for (n = 0; n < len; n += w) {
		if ((w = write(fd, buf + n, len - n)) == -1) {
			if (errno == EINTR) {
				w = 0;
				continue;
			}
			goto fail;
		}
		if (w == 0) {
			errno = EIO;
			goto fail;
		}
	}
	if (fsync(fd) == -1)
		goto fail;
	if (close(fd) == -1) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (renameat(ss->ss_dirfd, SEGMENT_META_TMP, ss->ss_dirfd,
	    SEGMENT_META) == -1)
		goto fail;
	if (fsync(ss->ss_dirfd) == -1)
		goto fail;
	return 0;
fail:
	snprintf(errbuf, errlen, "%s/%s: cannot write the metadata file: %s",
	    ss->ss_dir, SEGMENT_META, strerror(errno));
	if (fd != -1)
		close(fd);
	unlinkat(ss->ss_dirfd, SEGMENT_META_TMP, 0);
	return -1;
}

/* Returns 0, 1 when there is no metadata file, -1 with errbuf. */
static int
segment_meta_read(struct segstore *ss, struct segment_meta *m, char *errbuf,
    size_t errlen)
{
	char buf[SEGMENT_META_MAX + 1], mode[16], *sum, *line, *end;
	unsigned long long want;
	ssize_t n;
	size_t len = 0;
	int fd, version = -1, have = 0;

	if ((fd = openat(ss->ss_dirfd, SEGMENT_META, O_RDONLY | O_CLOEXEC)) ==
	    -1) {
		if (errno == ENOENT)
			return 1;
		snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir, SEGMENT_META,
		    strerror(errno));
		return -1;
	}
	while (len < sizeof(buf) - 1) {
		n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir,
			    SEGMENT_META, strerror(errno));
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		len += n;
	}
	close(fd);
	buf[len] = '\0';

	if (len == sizeof(buf) - 1 || memchr(buf, '\0', len) != NULL ||
	    (sum = strstr(buf, "\nxxh64 ")) == NULL)
		goto damaged;
	sum++;
	if (sscanf(sum, "xxh64 %16llx", &want) != 1 ||
	    want != (unsigned long long)XXH64(buf, sum - buf, 0))
		goto damaged;
	*sum = '\0';

	memset(m, 0, sizeof(*m));
	for (line = buf; *line != '\0'; line = end + 1) {
		unsigned long long v;
		int iv;

		if ((end = strchr(line, '\n')) == NULL)
			goto damaged;
		*end = '\0';
		if (sscanf(line, "version %d", &iv) == 1)
			version = iv;
		else if (sscanf(line, "epoch %16llx", &v) == 1) {
			m->m_epoch = v;
			have |= 1;
		} else if (sscanf(line, "base %llu", &v) == 1) {
			m->m_base = v;
			have |= 2;
		} else if (sscanf(line, "running %d", &iv) == 1) {
			m->m_running = iv != 0;
			have |= 4;
		} else if (strncmp(line, "snapshot ", 9) == 0) {
			unsigned long long c, t, e;
			char name[SEGSTORE_SNAPNAME_MAX];

			if (sscanf(line, "snapshot %llu %llu %llu %63s", &c, &t,
			    &e, name) != 4)
				goto damaged;
			m->m_snap.sm_valid = 1;
			m->m_snap.sm_covered = c;
			m->m_snap.sm_ts = t;
			m->m_snap.sm_entries = e;
			snprintf(m->m_snap.sm_name, sizeof(m->m_snap.sm_name),
			    "%s", name);
		} else if (sscanf(line, "fsync %15s", mode) == 1) {
			m->m_mode = -1;
			for (int i = 0; i < 3; i++)
				if (strcmp(mode, segment_mode_names[i]) == 0)
					m->m_mode = i;
			if (m->m_mode == -1)
				goto damaged;
			have |= 8;
		}
	}
	if (version != SEGMENT_META_VERSION) {
		snprintf(errbuf, errlen, "%s/%s: unsupported metadata version "
		    "%d (this walrelay reads version %d)", ss->ss_dir,
		    SEGMENT_META, version, SEGMENT_META_VERSION);
		return -1;
	}
	if (have != 15)
		goto damaged;
	return 0;
damaged:
	snprintf(errbuf, errlen, "%s/%s: the metadata file is damaged (bad "
	    "checksum or contents). Restore it from a backup, or move it "
	    "away to start the store under a new epoch (resuming subscribers "
	    "will then have to start over)", ss->ss_dir, SEGMENT_META);
	return -1;
}

/*
 * Read a segment from its start, checking every frame (records too) and
 * building its sparse index in seg. Stops at the first frame that is
 * incomplete or invalid, or after max frames. Returns 0 with the frame
 * count, the bytes of those whole valid frames and the status that ended
 * the scan (FCW2_OK at a clean end or at max), or -1 with errno.
 */
static int
segment_scan(struct segstore *ss, struct segment *seg, int fd, uint64_t max,
    uint64_t *frames, uint64_t *bytes, int *status)
{
	struct fcw2_checker chk;
	uint8_t *buf, *nb;
	size_t cap = SEGMENT_SCAN_BUF, have = 0, pos = 0, avail, flen = 0;
	uint64_t foff = 0, nframes = 0;
	ssize_t n;
	int st, eof = 0, save;

	if ((buf = malloc(cap)) == NULL)
		return -1;
	fcw2_checker_init(&chk, ss->ss_cf.max_frame_bytes, 1);
	for (;;) {
		avail = have - pos;
		if ((avail == 0 && eof) || nframes == max) {
			st = FCW2_OK;
			break;
		}
		st = fcw2_check(&chk, buf + pos, avail, &flen, NULL);
		if (st == FCW2_OK) {
			segment_index_add(seg, seg->seg_base + nframes,
			    foff + pos);
			nframes++;
			pos += flen;
			continue;
		}
		if (st != FCW2_NEED_MORE || eof)
			break;
		if (pos > 0) {
			memmove(buf, buf + pos, avail);
			foff += pos;
			have = avail;
			pos = 0;
		}
		if (flen > cap) {
			if ((nb = realloc(buf, flen)) == NULL)
				goto fail;
			buf = nb;
			cap = flen;
		}
		while (have < cap) {
			n = pread(fd, buf + have, cap - have, foff + have);
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1)
				goto fail;
			if (n == 0) {
				eof = 1;
				break;
			}
			have += n;
		}
	}
	fcw2_checker_free(&chk);
	free(buf);
	*frames = nframes;
	*bytes = foff + pos;
	*status = st;
	return 0;
fail:
	save = errno;
	fcw2_checker_free(&chk);
	free(buf);
	errno = save;
	return -1;
}

/*
 * Check a sealed segment that was trusted at open (loop thread, segment
 * pinned or store not started). A bad frame, or fewer frames than the next
 * file's base sequence says, stops serving at that frame.
 */
static int
segment_check_sealed(struct segstore *ss, struct segment *seg, int fd)
{
	struct segment tmp;
	uint64_t frames, bytes, expect, bad;
	int status;

	memset(&tmp, 0, sizeof(tmp));
	tmp.seg_base = seg->seg_base;
	expect = seg->seg_end - seg->seg_base;
	if (segment_scan(ss, &tmp, fd, expect, &frames, &bytes, &status) ==
	    -1) {
		log_warn("%s/%s: read", ss->ss_dir, seg->seg_name);
		free(tmp.seg_index);
		return -1;
	}

	pthread_mutex_lock(&ss->ss_mtx);
	if (seg->seg_archived) {
		/* archived meanwhile: its index and blocks are checked */
		pthread_mutex_unlock(&ss->ss_mtx);
		free(tmp.seg_index);
		return 0;
	}
	free(seg->seg_index);
	seg->seg_index = tmp.seg_index;
	seg->seg_nindex = tmp.seg_nindex;
	seg->seg_capindex = tmp.seg_capindex;
	seg->seg_checked = 1;
	seg->seg_durable_end = seg->seg_base + frames;
	seg->seg_durable_bytes = bytes;
	pthread_mutex_unlock(&ss->ss_mtx);

	if (frames < expect) {
		bad = seg->seg_base + frames;
		if (status != FCW2_OK)
			log_error("%s/%s: %s at offset %" PRIu64 " (sequence %"
			    PRIu64 ") in a sealed segment; frames %" PRIu64
			    " to %" PRIu64 " cannot be served and a reader "
			    "that reaches them is disconnected. Stop the relay "
			    "and run walcat repair with another relay of the "
			    "chain, or restore the file from a backup",
			    ss->ss_dir, seg->seg_name, status ==
			    FCW2_NEED_MORE ? "truncated frame" :
			    fcw2_strerror(status), bytes, bad, bad,
			    seg->seg_end - 1);
		else
			log_error("%s/%s: holds %" PRIu64 " frames where the "
			    "next segment's name implies %" PRIu64 "; frames %"
			    PRIu64 " to %" PRIu64 " cannot be served and a "
			    "reader that reaches them is disconnected. Stop "
			    "the relay and run walcat repair with another relay "
			    "of the chain, or restore the file from a backup",
			    ss->ss_dir, seg->seg_name, frames, expect, bad,
			    seg->seg_end - 1);
		if (bad < ss->ss_limit)
			ss->ss_limit = bad;
	} else if (bytes < seg->seg_bytes)
		log_warnx("%s/%s: %" PRIu64 " bytes after the last frame the "
		    "next segment's name implies (sequence %" PRIu64 ") are "
		    "ignored", ss->ss_dir, seg->seg_name,
		    seg->seg_bytes - bytes, seg->seg_end - 1);
	return 0;
}

/*
 * After the whole valid frames from the start of the newest segment, what
 * follows at offset bad? Reads from there with the resynchronising
 * scanner. A torn tail (an incomplete last frame, unwritten or zeroed
 * space, or anything else with no whole valid frame after it) leaves
 * *after at 0. Otherwise *after is the number of frames from the bad one
 * to the last whole valid frame (the bad ones counted), *end the offset
 * after that frame and *certain whether each bad stretch is exactly one
 * frame (its length field leads to the next valid frame), so that the
 * sequence numbers after it are known. Returns 0, or -1 with errbuf.
 */
static int
segment_recover_tail(struct segstore *ss, struct segment *seg, int fd,
    uint64_t bad, uint64_t *after, uint64_t *end, int *certain,
    char *errbuf, size_t errlen)
{
	struct scan sc;
	struct scan_event ev;
	uint8_t hdr[FCW2_HEADER_LEN];
	uint64_t n = 0;
	int rc = 0;

	*after = 0;
	*end = bad;
	*certain = 1;
	if (lseek(fd, (off_t)bad, SEEK_SET) == -1) {
		snprintf(errbuf, errlen, "%s/%s: recovery: %s", ss->ss_dir,
		    seg->seg_name, strerror(errno));
		return -1;
	}
	scan_init(&sc, ss->ss_cf.max_frame_bytes, 0, 1);
	scan_start(&sc, fd);
	for (;;) {
		if (scan_next(&sc, &ev, errbuf, errlen) == -1) {
			rc = -1;
			break;
		}
		if (ev.ev_type == SCAN_END || ev.ev_type == SCAN_INCOMPLETE)
			break;
		if (ev.ev_type == SCAN_FRAME) {
			n++;
			*after = n;
			*end = bad + ev.ev_offset + ev.ev_len;
			continue;
		}
		/* SCAN_BAD: nothing valid after it is a torn tail */
		if (!ev.ev_resumed)
			break;
		n++;
		if (pread(fd, hdr, sizeof(hdr), (off_t)(bad + ev.ev_offset)) !=
		    (ssize_t)sizeof(hdr) || fcw2_frame_len(hdr) != ev.ev_skipped)
			*certain = 0;
	}
	scan_free(&sc);
	return rc;
}

/*
 * Copy bytes [from, to) of a segment that recovery must cut but that hold
 * whole valid frames to NAME.damaged-MS next to it, for the operator.
 */
static void
segment_save_cut(struct segstore *ss, struct segment *seg, int fd,
    uint64_t from, uint64_t to)
{
	char name[PATH_MAX];
	uint8_t *buf;
	uint64_t off;
	ssize_t n;
	int out;

	snprintf(name, sizeof(name), "%s.damaged-%" PRIu64, seg->seg_name,
	    segment_now_ms());
	if ((buf = malloc(SEGMENT_SCAN_BUF)) == NULL)
		return;
	out = openat(ss->ss_dirfd, name, O_WRONLY | O_CREAT | O_EXCL |
	    O_CLOEXEC, 0644);
	if (out == -1)
		goto fail;
	for (off = from; off < to; off += n) {
		size_t want = to - off < SEGMENT_SCAN_BUF ? to - off :
		    SEGMENT_SCAN_BUF;

		if ((n = pread(fd, buf, want, (off_t)off)) <= 0 ||
		    write(out, buf, n) != n)
			goto fail;
	}
	if (fsync(out) == -1)
		goto fail;
	close(out);
	free(buf);
	log_warnx("%s/%s: the %" PRIu64 " bytes cut are kept in %s", ss->ss_dir,
	    seg->seg_name, to - from, name);
	return;
fail:
	log_warn("%s/%s: cannot keep the bytes cut in %s", ss->ss_dir,
	    seg->seg_name, name);
	if (out != -1) {
		close(out);
		unlinkat(ss->ss_dirfd, name, 0);
	}
	free(buf);
}

/*
 * Recover the newest segment: check every frame. A torn tail is cut back
 * to the last whole valid frame. A bad frame with whole valid frames after
 * it is corruption, not a crash: the frames stay, the store refuses to
 * serve from the bad frame on (ss_limit, as for a sealed segment) and only
 * a torn tail after the last valid frame is cut. When the bad stretch
 * hides how many frames it held, the sequence numbers after it are
 * unknown: it is cut from the bad frame on (the bytes are kept in a
 * .damaged file) and *newepoch is set. Returns 0 or -1 with errbuf.
 */
static int
segment_recover(struct segstore *ss, struct segment *seg, uint64_t *cut,
    int *newepoch, char *errbuf, size_t errlen)
{
	uint64_t frames, bytes, after = 0, end, keep, bad;
	int fd, status, certain = 1;

	*cut = 0;
	fd = openat(ss->ss_dirfd, seg->seg_name, O_RDWR | O_CLOEXEC);
	if (fd == -1)
		goto fail;
	if (segment_scan(ss, seg, fd, UINT64_MAX, &frames, &bytes, &status) ==
	    -1)
		goto fail;
	keep = bytes;
	bad = seg->seg_base + frames;
	if (bytes < seg->seg_bytes) {
		if (segment_recover_tail(ss, seg, fd, bytes, &after, &end,
		    &certain, errbuf, errlen) == -1) {
			close(fd);
			return -1;
		}
		if (after > 0 && certain) {
			keep = end;
			log_error("%s/%s: %s at offset %" PRIu64 " (sequence %"
			    PRIu64 ") with %" PRIu64 " whole valid frames "
			    "after it: corruption, not a torn tail. The frames "
			    "are kept and the relay does not serve from "
			    "sequence %" PRIu64 " on. Restore the file from a "
			    "backup or another relay, then restart",
			    ss->ss_dir, seg->seg_name,
			    status == FCW2_NEED_MORE ? "bad frame length" :
			    fcw2_strerror(status), bytes, bad, after - 1, bad);
			if (bad < ss->ss_limit)
				ss->ss_limit = bad;
		} else if (after > 0) {
			log_error("%s/%s: %s at offset %" PRIu64 " (sequence %"
			    PRIu64 ") with whole valid frames after it, but "
			    "how many frames the damaged bytes held is "
			    "unknown: cutting from there; the sequence numbers "
			    "from %" PRIu64 " on will name other frames, so "
			    "the store takes a new epoch", ss->ss_dir,
			    seg->seg_name, status == FCW2_NEED_MORE ?
			    "bad frame length" : fcw2_strerror(status), bytes,
			    bad, bad);
			segment_save_cut(ss, seg, fd, bytes, seg->seg_bytes);
			*newepoch = 1;
		}
	}
	if (keep < seg->seg_bytes) {
		*cut = seg->seg_bytes - keep;
		log_warnx("%s/%s: cutting %" PRIu64 " bytes at offset %" PRIu64
		    " (%s at sequence %" PRIu64 "); the segment keeps %"
		    PRIu64 " frames", ss->ss_dir, seg->seg_name, *cut, keep,
		    after > 0 && certain ? "torn frame after the last valid "
		    "one" : status == FCW2_NEED_MORE ? "torn frame" :
		    fcw2_strerror(status), seg->seg_base + frames +
		    (certain ? after : 0), frames + (certain ? after : 0));
		if (ftruncate(fd, keep) == -1)
			goto fail;
	}
	/* what a previous run wrote without fdatasync is durable from here */
	if (fdatasync(fd) == -1)
		goto fail;
	close(fd);
	seg->seg_checked = 1;
	seg->seg_bytes = keep;
	seg->seg_durable_bytes = bytes;
	seg->seg_durable_end = seg->seg_base + frames;
	seg->seg_end = seg->seg_base + frames + (certain ? after : 0);
	return 0;
fail:
	snprintf(errbuf, errlen, "%s/%s: recovery: %s", ss->ss_dir,
	    seg->seg_name, strerror(errno));
	if (fd != -1)
		close(fd);
	return -1;
}

/*
 * An archived segment found at open. Right after a raw segment of the same
 * base, it is the end of an archive step a stop interrupted: a .wal.zst is
 * only ever renamed into place once complete and durable, so it wins and
 * the raw file goes (unless its index is damaged: then the raw one stays).
 */
static int
segment_load_archived(struct segstore *ss, const char *name, uint64_t base,
    uint64_t created, int *removed, char *errbuf, size_t errlen)
{
	struct segment *prev = TAILQ_LAST(&ss->ss_segs, segment_list), *seg;
	struct archive_index idx;
	struct stat sb;
	char err[256], raw[128];
	int fd, haveraw;

	haveraw = prev != NULL && prev->seg_base == base && !prev->seg_archived;
	if ((fd = openat(ss->ss_dirfd, name, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &sb) == -1) {
		snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir, name,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	if (archive_index_read(fd, &idx, err, sizeof(err)) == -1 ||
	    idx.ai_base != base) {
		if (idx.ai_blocks != NULL) {
			snprintf(err, sizeof(err), "its index starts at "
			    "sequence %" PRIu64, idx.ai_base);
			archive_index_free(&idx);
		}
		close(fd);
		if (haveraw) {
			if (unlinkat(ss->ss_dirfd, name, 0) == -1) {
				snprintf(errbuf, errlen, "%s/%s: remove: %s",
				    ss->ss_dir, name, strerror(errno));
				return -1;
			}
			log_warnx("%s/%s: %s; removed it, the raw segment %s "
			    "is served", ss->ss_dir, name, err, prev->seg_name);
			*removed = 1;
			return 0;
		}
		snprintf(errbuf, errlen, "%s/%s: %s, and no raw segment holds "
		    "its frames; move it out of the directory (zstd -d may "
		    "still recover most of it) or restore it from a backup",
		    ss->ss_dir, name, err);
		return -1;
	}
	close(fd);
	if (haveraw) {
		if (unlinkat(ss->ss_dirfd, prev->seg_name, 0) == -1) {
			snprintf(errbuf, errlen, "%s/%s: remove: %s", ss->ss_dir,
			    prev->seg_name, strerror(errno));
			archive_index_free(&idx);
			return -1;
		}
		log_info("%s/%s: removed: an interrupted archive step left it "
		    "next to %s, which holds the same frames", ss->ss_dir,
		    prev->seg_name, name);
		*removed = 1;
		seg = prev;
	} else {
		if (prev != NULL && prev->seg_base == base) {
			snprintf(errbuf, errlen, "%s: %s and %s both start at "
			    "sequence %" PRIu64 "; move the one that does not "
			    "belong out of the directory", ss->ss_dir,
			    segment_file(prev), name, base);
			archive_index_free(&idx);
			return -1;
		}
		snprintf(raw, sizeof(raw), "%.*s", (int)(strlen(name) - 4),
		    name);
		if ((seg = segment_new(raw, base, created)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			archive_index_free(&idx);
			return -1;
		}
		if (prev != NULL && !prev->seg_archived)
			prev->seg_end = prev->seg_durable_end = base;
		TAILQ_INSERT_TAIL(&ss->ss_segs, seg, seg_entry);
	}
	if ((seg->seg_zname = strdup(name)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		archive_index_free(&idx);
		return -1;
	}
	seg->seg_archived = 1;
	seg->seg_zidx = idx;
	seg->seg_checked = 1;
	seg->seg_bytes = seg->seg_durable_bytes = (uint64_t)sb.st_size;
	seg->seg_end = seg->seg_durable_end = base + idx.ai_nframes;
	return 0;
}

/* Load the segment files of the directory into ss_segs. */
static int
segment_load(struct segstore *ss, uint64_t *cut, int *newepoch, char *errbuf,
    size_t errlen)
{
	struct segment *seg, *prev;
	struct stat sb;
	char **names = NULL;
	size_t n = 0;
	uint64_t base, created, c;
	int removed = 0;

	*cut = 0;
	if (segment_list_dir_all(ss->ss_dir, &names, &n, errbuf, errlen) == -1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(names[i]), tl = strlen(ARCHIVE_TMP_SUFFIX);

		if (nl > tl && strcmp(names[i] + nl - tl, ARCHIVE_TMP_SUFFIX) ==
		    0) {
			/* a stop while archiving: the raw segment serves */
			if (unlinkat(ss->ss_dirfd, names[i], 0) == -1) {
				snprintf(errbuf, errlen, "%s/%s: remove: %s",
				    ss->ss_dir, names[i], strerror(errno));
				goto fail;
			}
			log_info("%s/%s: removed an unfinished archive file",
			    ss->ss_dir, names[i]);
			removed = 1;
			continue;
		}
		if (archive_name_parse(names[i], &base, &created) == 0) {
			if (segment_load_archived(ss, names[i], base, created,
			    &removed, errbuf, errlen) == -1)
				goto fail;
			continue;
		}
		if (segment_name_parse(names[i], &base, &created) == -1) {
			log_warnx("%s/%s: not a segment name; ignored",
			    ss->ss_dir, names[i]);
			continue;
		}
		if (fstatat(ss->ss_dirfd, names[i], &sb, 0) == -1) {
			snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir,
			    names[i], strerror(errno));
			goto fail;
		}
		if (!S_ISREG(sb.st_mode)) {
			log_warnx("%s/%s: not a regular file; ignored",
			    ss->ss_dir, names[i]);
			continue;
		}
		if (sb.st_size == 0) {
			/* left by a stop right after the file was created */
			if (unlinkat(ss->ss_dirfd, names[i], 0) == -1) {
				snprintf(errbuf, errlen, "%s/%s: remove empty "
				    "segment: %s", ss->ss_dir, names[i],
				    strerror(errno));
				goto fail;
			}
			log_info("%s/%s: removed empty segment", ss->ss_dir,
			    names[i]);
			removed = 1;
			continue;
		}
		prev = TAILQ_LAST(&ss->ss_segs, segment_list);
		if (prev != NULL && prev->seg_base == base) {
			snprintf(errbuf, errlen, "%s: %s and %s both start at "
			    "sequence %" PRIu64 "; move the one that does not "
			    "belong out of the directory", ss->ss_dir,
			    segment_file(prev), names[i], base);
			goto fail;
		}
		if ((seg = segment_new(names[i], base, created)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			goto fail;
		}
		seg->seg_bytes = seg->seg_durable_bytes = sb.st_size;
		if (prev != NULL && !prev->seg_archived)
			prev->seg_end = prev->seg_durable_end = base;
		TAILQ_INSERT_TAIL(&ss->ss_segs, seg, seg_entry);
	}

	/* an all-torn newest segment goes, and the one before is recovered */
	while ((seg = TAILQ_LAST(&ss->ss_segs, segment_list)) != NULL) {
		if (seg->seg_archived)
			break;		/* whole by its index */
		if (segment_recover(ss, seg, &c, newepoch, errbuf, errlen) ==
		    -1)
			goto fail;
		*cut += c;
		if (seg->seg_bytes > 0)
			break;
		if (unlinkat(ss->ss_dirfd, seg->seg_name, 0) == -1) {
			snprintf(errbuf, errlen, "%s/%s: remove empty segment: "
			    "%s", ss->ss_dir, seg->seg_name, strerror(errno));
			goto fail;
		}
		log_info("%s/%s: removed segment left without a whole frame",
		    ss->ss_dir, seg->seg_name);
		removed = 1;
		TAILQ_REMOVE(&ss->ss_segs, seg, seg_entry);
		segment_free(seg);
	}
	if (removed && fsync(ss->ss_dirfd) == -1) {
		snprintf(errbuf, errlen, "%s: fsync: %s", ss->ss_dir,
		    strerror(errno));
		goto fail;
	}
	segment_list_free(names, n);
	return 0;
fail:
	segment_list_free(names, n);
	return -1;
}

struct segstore *
segstore_open(const struct segment_config *cf, char *errbuf, size_t errlen)
{
	struct segstore *ss;
	struct segment_meta m, old;
	struct segment *seg;
	pthread_condattr_t ca;
	char pid[32];
	uint64_t cut, end;
	int r, fresh = 0, why = 0, mtx = 0, cond = 0, lost = 0;

	if ((ss = calloc(1, sizeof(*ss))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	ss->ss_dirfd = ss->ss_lockfd = ss->ss_wfd = -1;
	ss->ss_limit = UINT64_MAX;
	if (pthread_mutex_init(&ss->ss_mtx, NULL) != 0) {
		snprintf(errbuf, errlen, "pthread_mutex_init failed");
		free(ss);
		return NULL;
	}
	mtx = 1;
	if (pthread_mutex_init(&ss->ss_meta_mtx, NULL) != 0) {
		snprintf(errbuf, errlen, "pthread_mutex_init failed");
		pthread_mutex_destroy(&ss->ss_mtx);
		free(ss);
		return NULL;
	}
	if (pthread_condattr_init(&ca) != 0) {
		snprintf(errbuf, errlen, "pthread_condattr_init failed");
		goto fail;
	}
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	r = pthread_cond_init(&ss->ss_cond, &ca);
	pthread_condattr_destroy(&ca);
	if (r != 0) {
		snprintf(errbuf, errlen, "pthread_cond_init failed");
		goto fail;
	}
	cond = 1;
	STAILQ_INIT(&ss->ss_queue);
	STAILQ_INIT(&ss->ss_todo);
	STAILQ_INIT(&ss->ss_unsynced);
	TAILQ_INIT(&ss->ss_segs);
	ss->ss_cf = *cf;
	if (ss->ss_cf.segment_bytes == 0)
		ss->ss_cf.segment_bytes = SEGMENT_DEFAULT_BYTES;
	if (ss->ss_cf.retry_ms == 0)
		ss->ss_cf.retry_ms = SEGMENT_DEFAULT_RETRY;
	if (ss->ss_cf.max_frame_bytes == 0)
		ss->ss_cf.max_frame_bytes = FCW2_DEFAULT_MAX_FRAME;
	if (ss->ss_cf.fsync_mode < FSYNC_ALWAYS ||
	    ss->ss_cf.fsync_mode > FSYNC_NEVER) {
		snprintf(errbuf, errlen, "bad fsync mode %d", cf->fsync_mode);
		goto fail;
	}
	if ((ss->ss_dir = strdup(cf->dir)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	ss->ss_cf.dir = ss->ss_dir;

	if (mkdir(ss->ss_dir, 0750) == -1 && errno != EEXIST) {
		snprintf(errbuf, errlen, "%s: cannot create the data directory: "
		    "%s", ss->ss_dir, strerror(errno));
		goto fail;
	}
	if ((ss->ss_dirfd = open(ss->ss_dir, O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1) {
		snprintf(errbuf, errlen, "%s: %s", ss->ss_dir, strerror(errno));
		goto fail;
	}
	if ((ss->ss_lockfd = openat(ss->ss_dirfd, SEGMENT_LOCK,
	    O_RDWR | O_CREAT | O_CLOEXEC, 0644)) == -1) {
		snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir, SEGMENT_LOCK,
		    strerror(errno));
		goto fail;
	}
	if (flock(ss->ss_lockfd, LOCK_EX | LOCK_NB) == -1) {
		if (errno == EWOULDBLOCK)
			snprintf(errbuf, errlen, "%s: the data directory is in "
			    "use by another walrelay (%s is locked); stop it or "
			    "choose another --data-dir", ss->ss_dir,
			    SEGMENT_LOCK);
		else
			snprintf(errbuf, errlen, "%s/%s: lock: %s", ss->ss_dir,
			    SEGMENT_LOCK, strerror(errno));
		goto fail;
	}
	r = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(ss->ss_lockfd, 0) == 0 &&
	    pwrite(ss->ss_lockfd, pid, r, 0) != r)
		log_debug("%s/%s: cannot record the pid", ss->ss_dir,
		    SEGMENT_LOCK);

	memset(&old, 0, sizeof(old));
	if ((r = segment_meta_read(ss, &old, errbuf, errlen)) == -1)
		goto fail;
	fresh = r == 1;
	if (segment_load(ss, &cut, &lost, errbuf, errlen) == -1)
		goto fail;
	ss->ss_st.ss_cut_bytes = cut;

	seg = TAILQ_LAST(&ss->ss_segs, segment_list);
	end = seg != NULL ? seg->seg_end : (fresh ? 0 : old.m_base);

	m.m_mode = ss->ss_cf.fsync_mode;
	m.m_running = 1;
	m.m_base = end;
	ss->ss_snap = old.m_snap;
	if (fresh) {
		m.m_epoch = segment_new_epoch();
		if (seg != NULL)
			log_warnx("%s: no %s next to the segments: new epoch "
			    "%016" PRIx64, ss->ss_dir, SEGMENT_META, m.m_epoch);
		else
			log_info("%s: new store, epoch %016" PRIx64, ss->ss_dir,
			    m.m_epoch);
	} else {
		m.m_epoch = old.m_epoch;
		if (old.m_running && old.m_mode == FSYNC_NEVER)
			why = 1;
		else if (cut > 0 && old.m_mode == FSYNC_NEVER)
			why = 2;
		else if (end < old.m_base)
			why = 3;
		else if (lost)
			why = 4;
		if (why != 0) {
			m.m_epoch = segment_new_epoch();
			log_warnx("%s: %s: frames subscribers may have seen are "
			    "lost; new epoch %016" PRIx64 " (was %016" PRIx64
			    "), resuming subscribers will start over",
			    ss->ss_dir, why == 1 ? "the last run stopped "
			    "uncleanly with fsync=never" : why == 2 ?
			    "recovery cut frames written with fsync=never" :
			    why == 3 ? "the store ends before the sequence "
			    "recorded at the last stop" : "recovery cut whole "
			    "frames after a corrupt one", m.m_epoch,
			    old.m_epoch);
		} else if (old.m_running)
			log_info("%s: the last run did not stop cleanly; "
			    "recovered up to sequence %" PRIu64, ss->ss_dir,
			    end);
	}
	if (segment_meta_write(ss, &m, errbuf, errlen) == -1)
		goto fail;

	ss->ss_epoch = m.m_epoch;
	ss->ss_meta_base = end;
	ss->ss_next = ss->ss_open_next = end;
	ss->ss_st.ss_next = ss->ss_st.ss_durable = ss->ss_st.ss_written = end;
	seg = TAILQ_FIRST(&ss->ss_segs);
	ss->ss_st.ss_earliest = seg != NULL ? seg->seg_base : end;
	TAILQ_FOREACH(seg, &ss->ss_segs, seg_entry) {
		ss->ss_st.ss_segments++;
		ss->ss_st.ss_store_bytes += seg->seg_bytes;
		if (seg->seg_archived) {
			ss->ss_st.ss_archived++;
			ss->ss_st.ss_archived_bytes += seg->seg_bytes;
			ss->ss_st.ss_archive_raw_bytes +=
			    seg->seg_zidx.ai_raw_bytes;
		}
	}

	if (ss->ss_cf.verify_sealed) {
		TAILQ_FOREACH(seg, &ss->ss_segs, seg_entry) {
			int fd;

			if (seg->seg_checked)
				continue;
			fd = openat(ss->ss_dirfd, seg->seg_name,
			    O_RDONLY | O_CLOEXEC);
			if (fd == -1 || segment_check_sealed(ss, seg, fd) == -1) {
				snprintf(errbuf, errlen, "%s/%s: %s",
				    ss->ss_dir, seg->seg_name, strerror(errno));
				if (fd != -1)
					close(fd);
				goto fail;
			}
			close(fd);
		}
	}

	log_info("%s: %" PRIu64 " segments, sequences %" PRIu64 " to %" PRIu64
	    ", epoch %016" PRIx64 ", fsync=%s", ss->ss_dir,
	    ss->ss_st.ss_segments, ss->ss_st.ss_earliest, end, ss->ss_epoch,
	    segment_mode_names[ss->ss_cf.fsync_mode]);
	return ss;
fail:
	if (cond)
		pthread_cond_destroy(&ss->ss_cond);
	if (mtx) {
		pthread_mutex_destroy(&ss->ss_mtx);
		pthread_mutex_destroy(&ss->ss_meta_mtx);
	}
	while ((seg = TAILQ_FIRST(&ss->ss_segs)) != NULL) {
		TAILQ_REMOVE(&ss->ss_segs, seg, seg_entry);
		segment_free(seg);
	}
	if (ss->ss_lockfd != -1)
		close(ss->ss_lockfd);
	if (ss->ss_dirfd != -1)
		close(ss->ss_dirfd);
	free(ss->ss_dir);
	free(ss);
	return NULL;
}

/*
 * Retention: any thread, one at a time (ss_retaining). Files are removed
 * without the mutex held, oldest first; when one cannot be removed, it
 * and every newer one taken go back into the list, so that the store
 * never has a gap (a gap would look like a segment missing frames at the
 * next start).
 */
void
segstore_retain(struct segstore *ss)
{
	struct segment_list gone = TAILQ_HEAD_INITIALIZER(gone);
	struct segment *seg, *next;
	uint64_t now, age_ms;
	int over, old, covered, removed = 0;

	if (ss->ss_cf.retain_bytes == 0 && ss->ss_cf.retain_age_s == 0 &&
	    !ss->ss_compact && ss->ss_covered == 0)
		return;
	age_ms = ss->ss_cf.retain_age_s * 1000;
	pthread_mutex_lock(&ss->ss_mtx);
	if (ss->ss_retaining) {
		ss->ss_retain_again = 1;
		pthread_mutex_unlock(&ss->ss_mtx);
		return;
	}
	ss->ss_retaining = 1;
again:
	ss->ss_retain_again = 0;
	ss->ss_retain_blocked = 0;
	now = segment_now_ms();
	/* never the newest: it holds the position the store continues from */
	while ((seg = TAILQ_FIRST(&ss->ss_segs)) != NULL &&
	    (next = TAILQ_NEXT(seg, seg_entry)) != NULL &&
	    seg != ss->ss_active) {
		over = ss->ss_cf.retain_bytes != 0 &&
		    ss->ss_st.ss_store_bytes > ss->ss_cf.retain_bytes;
		/* its last frame came before its successor was started */
		old = age_ms != 0 && now >= next->seg_created_ms + age_ms;
		covered = next->seg_base <= ss->ss_covered;
		/* with snapshots, only what a snapshot covers may go */
		if ((!over && !old && !covered) ||
		    (ss->ss_compact && !covered))
			break;
		if (seg->seg_pins > 0) {
			/* a reader needs it; newer ones stay too */
			ss->ss_retain_blocked = 1;
			break;
		}
		TAILQ_REMOVE(&ss->ss_segs, seg, seg_entry);
		seg->seg_compacted = covered;
		TAILQ_INSERT_TAIL(&gone, seg, seg_entry);
		ss->ss_st.ss_store_bytes -= seg->seg_bytes;
		ss->ss_st.ss_segments--;
		ss->ss_st.ss_deleted++;
		ss->ss_st.ss_earliest = next->seg_base;
	}
	pthread_mutex_unlock(&ss->ss_mtx);

	while ((seg = TAILQ_FIRST(&gone)) != NULL) {
		if (unlinkat(ss->ss_dirfd, segment_file(seg), 0) == -1 &&
		    errno != ENOENT) {
			log_warn("%s/%s: retention cannot remove the file; it "
			    "and the newer ones stay and are served, retrying "
			    "at the next rotation", ss->ss_dir,
			    segment_file(seg));
			break;
		}
		TAILQ_REMOVE(&gone, seg, seg_entry);
		log_info("%s/%s: removed %s (sequences %" PRIu64
		    " to %" PRIu64 ", %" PRIu64 " bytes)", ss->ss_dir,
		    segment_file(seg), seg->seg_compacted ? "as the snapshot "
		    "covers it" : "by retention", seg->seg_base, seg->seg_end,
		    seg->seg_bytes);
		if (seg->seg_archived) {
			pthread_mutex_lock(&ss->ss_mtx);
			ss->ss_st.ss_archived--;
			ss->ss_st.ss_archived_bytes -= seg->seg_bytes;
			ss->ss_st.ss_archive_raw_bytes -=
			    seg->seg_zidx.ai_raw_bytes;
			pthread_mutex_unlock(&ss->ss_mtx);
		}
		segment_free(seg);
		removed = 1;
	}

	pthread_mutex_lock(&ss->ss_mtx);
	if (!TAILQ_EMPTY(&gone)) {
		/* only retention takes from the head: it is still theirs */
		while ((seg = TAILQ_LAST(&gone, segment_list)) != NULL) {
			TAILQ_REMOVE(&gone, seg, seg_entry);
			TAILQ_INSERT_HEAD(&ss->ss_segs, seg, seg_entry);
			ss->ss_st.ss_store_bytes += seg->seg_bytes;
			ss->ss_st.ss_segments++;
			ss->ss_st.ss_deleted--;
		}
		ss->ss_st.ss_earliest = TAILQ_FIRST(&ss->ss_segs)->seg_base;
	} else if (ss->ss_retain_again)
		goto again;
	ss->ss_retaining = 0;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (removed)
		segment_fsync_dir(ss);
}

/* ---- writer thread ----------------------------------------------------- */

static int
writer_sync_fd(struct segstore *ss, int fd)
{
	int r;

	do {
		if (ss->ss_cf.sync_fn != NULL)
			r = ss->ss_cf.sync_fn(fd, ss->ss_cf.sync_arg);
		else
			r = fdatasync(fd);
	} while (r == -1 && errno == EINTR);
	return r;
}

/* Everything written so far is durable: release it. */
static void
writer_publish(struct segstore *ss)
{
	struct segment *seg = ss->ss_active;
	struct chunk *ch;
	size_t bytes = 0;
	uint64_t now = clock_mono_us();

	STAILQ_FOREACH(ch, &ss->ss_unsynced, ch_wentry)
		bytes += ch->ch_len;
	pthread_mutex_lock(&ss->ss_mtx);
	/* one clock read per commit; each chunk's frames share its time */
	STAILQ_FOREACH(ch, &ss->ss_unsynced, ch_wentry)
		if (ch->ch_recv_us != 0)
			segment_hist_add(&ss->ss_st.ss_durable_time,
			    now > ch->ch_recv_us ? now - ch->ch_recv_us : 0,
			    ch->ch_nframes);
	ss->ss_st.ss_durable = ss->ss_st.ss_written;
	if (seg != NULL) {
		seg->seg_durable_end = seg->seg_end;
		seg->seg_durable_bytes = seg->seg_bytes;
	}
	ss->ss_st.ss_pending_bytes -= bytes;
	pthread_mutex_unlock(&ss->ss_mtx);
	while ((ch = STAILQ_FIRST(&ss->ss_unsynced)) != NULL) {
		STAILQ_REMOVE_HEAD(&ss->ss_unsynced, ch_wentry);
		chunk_unref(ch);
	}
}

static int
writer_truncate(struct segstore *ss, uint64_t size)
{
	if (ftruncate(ss->ss_wfd, size) == -1) {
		ss->ss_wtrunc = 1;
		return errno;
	}
	ss->ss_wtrunc = 0;
	return 0;
}

/*
 * fdatasync the file being written. When it fails, nothing written since
 * the last good fdatasync is known to be on disk (the kernel may have
 * dropped the pages): cut the file back to the durable offset and queue
 * those chunks to be written again.
 */
static int
writer_sync(struct segstore *ss)
{
	struct segment *seg = ss->ss_active;
	uint64_t start, start_us;
	int err;

	if (seg == NULL || (!ss->ss_wdirty && STAILQ_EMPTY(&ss->ss_unsynced)))
		return 0;
	start = segment_mono_ms();
	start_us = clock_mono_us();
	if (writer_sync_fd(ss, ss->ss_wfd) == 0) {
		uint64_t us = clock_mono_us() - start_us;

		ss->ss_last_sync = start;
		ss->ss_wdirty = 0;
		pthread_mutex_lock(&ss->ss_mtx);
		ss->ss_st.ss_fsyncs++;
		segment_hist_add(&ss->ss_st.ss_fsync_time, us, 1);
		pthread_mutex_unlock(&ss->ss_mtx);
		writer_publish(ss);
		return 0;
	}
	err = errno;
	snprintf(ss->ss_werr, sizeof(ss->ss_werr), "fdatasync of %s/%s",
	    ss->ss_dir, seg->seg_name);
	writer_truncate(ss, seg->seg_durable_bytes);
	STAILQ_CONCAT(&ss->ss_unsynced, &ss->ss_todo);
	STAILQ_CONCAT(&ss->ss_todo, &ss->ss_unsynced);

	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_st.ss_fsync_errors++;
	ss->ss_st.ss_store_bytes -= seg->seg_bytes - seg->seg_durable_bytes;
	seg->seg_bytes = seg->seg_durable_bytes;
	seg->seg_end = seg->seg_durable_end;
	while (seg->seg_nindex > 0 &&
	    seg->seg_index[seg->seg_nindex - 1].ip_off >= seg->seg_bytes)
		seg->seg_nindex--;
	ss->ss_st.ss_written = ss->ss_st.ss_durable;
	pthread_mutex_unlock(&ss->ss_mtx);
	return err;
}

static void
writer_seal(struct segstore *ss)
{
	if (close(ss->ss_wfd) == -1)
		log_warn("%s/%s: close", ss->ss_dir, ss->ss_active->seg_name);
	ss->ss_wfd = -1;
	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_active = NULL;
	pthread_mutex_unlock(&ss->ss_mtx);
}

/* Make the active segment's directory entry durable, once. */
static int
writer_dirsync(struct segstore *ss)
{
	if (!ss->ss_wdirsync || ss->ss_active == NULL)
		return 0;
	if (fsync(ss->ss_dirfd) == -1) {
		snprintf(ss->ss_werr, sizeof(ss->ss_werr), "fsync of %s for "
		    "the new segment %s", ss->ss_dir, ss->ss_active->seg_name);
		return errno;
	}
	ss->ss_wdirsync = 0;
	return 0;
}

static int
writer_create(struct segstore *ss, uint64_t seq)
{
	struct segment *seg;
	char name[64];
	uint64_t now = segment_now_ms();
	int fd, err;

	snprintf(name, sizeof(name), "segment-%020" PRIu64 "-%" PRIu64 ".wal",
	    seq, now);
	snprintf(ss->ss_werr, sizeof(ss->ss_werr), "creating %s/%s",
	    ss->ss_dir, name);
	if ((seg = segment_new(name, seq, now)) == NULL)
		return ENOMEM;
	fd = openat(ss->ss_dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
	    0644);
	if (fd == -1) {
		err = errno;
		segment_free(seg);
		return err;
	}
	seg->seg_checked = 1;
	ss->ss_wfd = fd;
	ss->ss_wdirty = 0;
	ss->ss_wtrunc = 0;
	pthread_mutex_lock(&ss->ss_mtx);
	TAILQ_INSERT_TAIL(&ss->ss_segs, seg, seg_entry);
	ss->ss_active = seg;
	ss->ss_st.ss_segments++;
	pthread_mutex_unlock(&ss->ss_mtx);
	log_debug("%s/%s: new segment", ss->ss_dir, name);
	/*
	 * The file stays the active segment even when the directory fsync
	 * fails: removing it could fail as well and leave an empty file at
	 * this base sequence that the store no longer knows of (read as a
	 * gap once retention removed the segments around it). Nothing is
	 * written to it until its entry is durable (writer_dirsync).
	 */
	ss->ss_wdirsync = 1;
	return writer_dirsync(ss);
}

static int
writer_rotate_due(struct segstore *ss)
{
	struct segment *seg = ss->ss_active;

	if (seg->seg_bytes == 0)
		return 0;
	if (seg->seg_bytes >= ss->ss_cf.segment_bytes)
		return 1;
	return ss->ss_cf.segment_age_ms != 0 &&
	    segment_now_ms() >= seg->seg_created_ms + ss->ss_cf.segment_age_ms;
}

/*
 * Write a run of queued chunks to the active segment with one pwritev()
 * where the kernel takes it all. Only the chunks that reached the file
 * whole count as written; after any failure the file is cut back to the
 * end of the last of them, so that it never ends in a partial frame and
 * the next write continues right there. When that cut fails, ss_wtrunc
 * stays set and nothing more is written or published until a later cut
 * succeeds (writer_work).
 */
static int
writer_write_run(struct segstore *ss)
{
	struct segment *seg = ss->ss_active;
	struct iovec iov[IOV_MAX], *v;
	struct chunk *ch;
	uint64_t off = seg->seg_bytes, total = 0, done = 0, good = 0;
	uint64_t seq = seg->seg_end;
	ssize_t r;
	int n = 0, cnt, k, err = 0, terr;

	STAILQ_FOREACH(ch, &ss->ss_todo, ch_wentry) {
		if (n == IOV_MAX || (n > 0 &&
		    off + total >= ss->ss_cf.segment_bytes))
			break;
		iov[n].iov_base = ch->ch_data;
		iov[n].iov_len = ch->ch_len;
		total += ch->ch_len;
		n++;
	}
	v = iov;
	cnt = n;
	while (cnt > 0) {
		r = pwritev(ss->ss_wfd, v, cnt, off + done);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			err = errno;
			break;
		}
		if (r == 0) {
			err = EIO;
			break;
		}
		done += r;
		/* the retry starts inside v: iov no longer holds the lengths */
		while (cnt > 0 && (size_t)r >= v->iov_len) {
			r -= v->iov_len;
			v++;
			cnt--;
		}
		if (cnt > 0) {
			v->iov_base = (uint8_t *)v->iov_base + r;
			v->iov_len -= r;
		}
	}
	if (err != 0) {
		snprintf(ss->ss_werr, sizeof(ss->ss_werr), "write to %s/%s",
		    ss->ss_dir, seg->seg_name);
		/* the chunks' own lengths: which of them reached the file whole */
		k = 0;
		STAILQ_FOREACH(ch, &ss->ss_todo, ch_wentry) {
			if (k == n || good + ch->ch_len > done)
				break;
			good += ch->ch_len;
			k++;
		}
		n = k;
		/*
		 * Cut whatever the failed write left after them (a partial
		 * chunk, or blocks a failing file system kept), even when
		 * the count says nothing: the next write goes to off + good.
		 */
		if ((terr = writer_truncate(ss, off + good)) != 0) {
			errno = terr;
			log_warn("%s/%s: cannot cut the file back to its last "
			    "whole frame at offset %" PRIu64 "; nothing more is "
			    "written until that works", ss->ss_dir,
			    seg->seg_name, off + good);
		}
	} else
		good = total;

	pthread_mutex_lock(&ss->ss_mtx);
	for (k = 0; k < n; k++) {
		ch = STAILQ_FIRST(&ss->ss_todo);
		STAILQ_REMOVE_HEAD(&ss->ss_todo, ch_wentry);
		STAILQ_INSERT_TAIL(&ss->ss_unsynced, ch, ch_wentry);
		segment_index_add(seg, seq, off);
		seq += ch->ch_nframes;
		off += ch->ch_len;
	}
	seg->seg_bytes = off;
	seg->seg_end = seq;
	ss->ss_st.ss_written = seq;
	ss->ss_st.ss_bytes_written += good;
	ss->ss_st.ss_store_bytes += good;
	if (err != 0)
		ss->ss_st.ss_write_errors++;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (good > 0)
		ss->ss_wdirty = 1;
	if (seg->seg_wb_off > off)
		seg->seg_wb_off = off;	/* cut back by a failed fdatasync */
#ifdef HAVE_SYNC_FILE_RANGE
	/*
	 * Without an fdatasync after every write, dirty pages pile up until
	 * the kernel throttles this thread for tens of milliseconds at a
	 * time; start the writeback of every SEGMENT_WRITEBACK bytes as they
	 * are written (without waiting for it).
	 */
	if (ss->ss_cf.fsync_mode != FSYNC_ALWAYS &&
	    off - seg->seg_wb_off >= SEGMENT_WRITEBACK) {
		(void)sync_file_range(ss->ss_wfd, (off_t)seg->seg_wb_off,
		    (off_t)(off - seg->seg_wb_off), SYNC_FILE_RANGE_WRITE);
		seg->seg_wb_off = off;
	}
#endif
	return err;
}

/* One round: write what is queued, then fdatasync as the mode says. */
static int
writer_work(struct segstore *ss, int stopping)
{
	struct chunk *ch;
	int err, serr, mode = ss->ss_cf.fsync_mode;

	if (ss->ss_wtrunc && ss->ss_active != NULL &&
	    (err = writer_truncate(ss, ss->ss_active->seg_bytes)) != 0) {
		snprintf(ss->ss_werr, sizeof(ss->ss_werr), "truncating %s/%s",
		    ss->ss_dir, ss->ss_active->seg_name);
		pthread_mutex_lock(&ss->ss_mtx);
		ss->ss_st.ss_truncate_errors++;
		pthread_mutex_unlock(&ss->ss_mtx);
		return err;
	}
	if (ss->ss_wdirsync && ss->ss_active != NULL) {
		/* a rotation whose directory fsync failed: finish it */
		if ((err = writer_dirsync(ss)) != 0) {
			pthread_mutex_lock(&ss->ss_mtx);
			ss->ss_st.ss_create_errors++;
			pthread_mutex_unlock(&ss->ss_mtx);
			return err;
		}
		segstore_retain(ss);
		segstore_archive_kick(ss);
	}
	while ((ch = STAILQ_FIRST(&ss->ss_todo)) != NULL) {
		if (ss->ss_active != NULL && writer_rotate_due(ss)) {
			if ((err = writer_sync(ss)) != 0)
				return err;
			writer_seal(ss);
		}
		if (ss->ss_active == NULL) {
			if ((err = writer_create(ss, ch->ch_seq)) != 0) {
				pthread_mutex_lock(&ss->ss_mtx);
				ss->ss_st.ss_create_errors++;
				pthread_mutex_unlock(&ss->ss_mtx);
				return err;
			}
			segstore_retain(ss);
			segstore_archive_kick(ss);
		}
		if ((err = writer_write_run(ss)) != 0) {
			/*
			 * The whole chunks that did fit are made durable
			 * (always) or sendable (never) all the same, once
			 * the file ends right after them.
			 */
			if (ss->ss_wtrunc)
				return err;
			if (mode == FSYNC_ALWAYS && ss->ss_wdirty &&
			    (serr = writer_sync(ss)) != 0)
				return serr;
			if (mode == FSYNC_NEVER)
				writer_publish(ss);
			return err;
		}
		if (mode == FSYNC_NEVER)
			writer_publish(ss);
	}
	if (ss->ss_wdirty && (mode == FSYNC_ALWAYS || stopping ||
	    (mode == FSYNC_INTERVAL && segment_mono_ms() >=
	    ss->ss_last_sync + ss->ss_cf.fsync_interval_ms)))
		return writer_sync(ss);
	return 0;
}

static void
writer_wait(struct segstore *ss, uint64_t until)
{
	struct timespec ts;

	if (until == UINT64_MAX) {
		pthread_cond_wait(&ss->ss_cond, &ss->ss_mtx);
		return;
	}
	ts.tv_sec = until / 1000;
	ts.tv_nsec = (until % 1000) * 1000000;
	pthread_cond_timedwait(&ss->ss_cond, &ss->ss_mtx, &ts);
}

/* Called with the mutex held after a round. */
static void
writer_report(struct segstore *ss, int err)
{
	struct segstore_state *st = &ss->ss_st;

	if (err != 0) {
		ss->ss_failures++;
		if (st->ss_error != err)
			log_error("%s failed: %s; keeping %zu bytes of frames "
			    "from sequence %" PRIu64 " in memory, retrying "
			    "every %u ms", ss->ss_werr, strerror(err),
			    st->ss_pending_bytes, st->ss_durable,
			    ss->ss_cf.retry_ms);
		st->ss_error = err;
	} else if (st->ss_error != 0) {
		log_info("%s: disk writes work again after %" PRIu64 " failed "
		    "attempts; durable up to sequence %" PRIu64, ss->ss_dir,
		    ss->ss_failures, st->ss_durable);
		st->ss_error = 0;
		ss->ss_failures = 0;
	}
}

/* Stopping, and the disk keeps failing: the queued frames are lost. */
static void
writer_give_up(struct segstore *ss)
{
	struct chunk_queue lost;
	struct chunk *ch;
	uint64_t frames = 0;
	size_t bytes = 0;

	STAILQ_INIT(&lost);
	STAILQ_CONCAT(&lost, &ss->ss_unsynced);
	STAILQ_CONCAT(&lost, &ss->ss_todo);
	STAILQ_CONCAT(&lost, &ss->ss_queue);
	STAILQ_FOREACH(ch, &lost, ch_wentry) {
		frames += ch->ch_nframes;
		bytes += ch->ch_len;
	}
	ss->ss_st.ss_pending_bytes -= bytes;
	ss->ss_gave_up = 1;
	log_error("%s: stopping while %s keeps failing (%s): %" PRIu64
	    " frames (%zu bytes) from sequence %" PRIu64 " were never made "
	    "durable and are dropped", ss->ss_dir, ss->ss_werr,
	    strerror(ss->ss_st.ss_error), frames, bytes, ss->ss_st.ss_durable);
	pthread_mutex_unlock(&ss->ss_mtx);
	while ((ch = STAILQ_FIRST(&lost)) != NULL) {
		STAILQ_REMOVE_HEAD(&lost, ch_wentry);
		chunk_unref(ch);
	}
	pthread_mutex_lock(&ss->ss_mtx);
}

static void *
segstore_writer(void *arg)
{
	struct segstore *ss = arg;
	uint64_t now, wake, retry_at = 0;
	int err, stopping, stop_failures = 0;

	pthread_mutex_lock(&ss->ss_mtx);
	for (;;) {
		STAILQ_CONCAT(&ss->ss_todo, &ss->ss_queue);
		now = segment_mono_ms();
		if (ss->ss_st.ss_error != 0) {
			if (ss->ss_stop && stop_failures >= SEGMENT_STOP_TRIES) {
				writer_give_up(ss);
				break;
			}
			wake = retry_at;
			if ((ss->ss_stop && stop_failures == 0) ||
			    ss->ss_retry_now)
				wake = now;
			ss->ss_retry_now = 0;
		} else if (!STAILQ_EMPTY(&ss->ss_todo))
			wake = now;
		else if (ss->ss_wdirty) {
			if (ss->ss_stop)
				wake = now;
			else if (ss->ss_cf.fsync_mode == FSYNC_INTERVAL)
				wake = ss->ss_last_sync +
				    ss->ss_cf.fsync_interval_ms;
			else
				wake = UINT64_MAX;
		} else if (ss->ss_stop)
			break;
		else
			wake = UINT64_MAX;
		if (wake > now) {
			writer_wait(ss, wake);
			continue;
		}

		stopping = ss->ss_stop;
		pthread_mutex_unlock(&ss->ss_mtx);
		err = writer_work(ss, stopping);
		pthread_mutex_lock(&ss->ss_mtx);
		writer_report(ss, err);
		if (err != 0) {
			retry_at = segment_mono_ms() + ss->ss_cf.retry_ms;
			if (stopping)
				stop_failures++;
		}
		pthread_mutex_unlock(&ss->ss_mtx);
		if (ss->ss_notify != NULL)
			ss->ss_notify(ss->ss_notify_arg);
		pthread_mutex_lock(&ss->ss_mtx);
	}
	pthread_mutex_unlock(&ss->ss_mtx);

	if (ss->ss_wfd != -1) {
		if (close(ss->ss_wfd) == -1)
			log_warn("%s/%s: close", ss->ss_dir,
			    ss->ss_active->seg_name);
		ss->ss_wfd = -1;
	}
	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_active = NULL;
	pthread_mutex_unlock(&ss->ss_mtx);
	return NULL;
}

/* ---- loop thread ------------------------------------------------------- */

static int	segment_archive_start(struct segstore *);
static void	segment_archive_stop(struct segstore *);
static void	segment_blocks_reap(struct segstore *);

int
segstore_start(struct segstore *ss, void (*notify)(void *), void *arg)
{
	sigset_t all, old;
	int r;

	ss->ss_notify = notify;
	ss->ss_notify_arg = arg;
	ss->ss_last_sync = segment_mono_ms();
	/* signals are for the loop thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&ss->ss_thread, NULL, segstore_writer, ss);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		errno = r;
		log_warn("%s: cannot start the writer thread", ss->ss_dir);
		return -1;
	}
	ss->ss_started = 1;
	return segment_archive_start(ss);
}

int
segstore_close(struct segstore *ss)
{
	struct segment_meta m;
	struct segment *seg;
	char errbuf[PATH_MAX + 128];
	int rc;

	if (ss == NULL)
		return 0;
	segment_archive_stop(ss);
	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_stop = 1;
	pthread_cond_signal(&ss->ss_cond);
	pthread_mutex_unlock(&ss->ss_mtx);
	if (ss->ss_started)
		pthread_join(ss->ss_thread, NULL);
	else {
		ss->ss_last_sync = segment_mono_ms();
		segstore_writer(ss);
	}

	if (!ss->ss_gave_up) {
		m.m_epoch = ss->ss_epoch;
		m.m_base = ss->ss_next;
		m.m_running = 0;
		m.m_mode = ss->ss_cf.fsync_mode;
		if (segment_meta_write(ss, &m, errbuf, sizeof(errbuf)) == -1)
			log_warnx("%s; the next start will treat this stop as "
			    "unclean", errbuf);
	}
	while ((seg = TAILQ_FIRST(&ss->ss_segs)) != NULL) {
		TAILQ_REMOVE(&ss->ss_segs, seg, seg_entry);
		if (seg->seg_pins > 0)
			log_debug("%s/%s: still pinned at close", ss->ss_dir,
			    seg->seg_name);
		segment_free(seg);
	}
	rc = ss->ss_gave_up ? -1 : 0;
	pthread_cond_destroy(&ss->ss_cond);
	pthread_mutex_destroy(&ss->ss_mtx);
	pthread_mutex_destroy(&ss->ss_meta_mtx);
	close(ss->ss_lockfd);
	close(ss->ss_dirfd);
	free(ss->ss_dir);
	free(ss);
	return rc;
}

uint64_t
segstore_epoch(const struct segstore *ss)
{
	return ss->ss_epoch;
}

uint64_t
segstore_next(const struct segstore *ss)
{
	return ss->ss_next;
}

uint64_t
segstore_limit(const struct segstore *ss)
{
	return ss->ss_limit;
}

int
segstore_adopt(struct segstore *ss, uint64_t epoch, uint64_t next)
{
	struct segment_meta m;
	char errbuf[PATH_MAX + 128];
	int empty;

	pthread_mutex_lock(&ss->ss_mtx);
	empty = TAILQ_EMPTY(&ss->ss_segs) && ss->ss_next == ss->ss_open_next;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (!empty)
		return -1;
	m.m_epoch = epoch;
	m.m_base = next;
	m.m_running = 1;
	m.m_mode = ss->ss_cf.fsync_mode;
	if (segment_meta_write(ss, &m, errbuf, sizeof(errbuf)) == -1) {
		log_warnx("%s", errbuf);
		return -1;
	}
	log_info("%s: adopted epoch %016" PRIx64 " from sequence %" PRIu64,
	    ss->ss_dir, epoch, next);
	ss->ss_epoch = epoch;
	ss->ss_meta_base = next;
	ss->ss_next = ss->ss_open_next = next;
	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_st.ss_durable = ss->ss_st.ss_written = next;
	ss->ss_st.ss_earliest = next;
	pthread_mutex_unlock(&ss->ss_mtx);
	return 0;
}

int
segstore_append(struct segstore *ss, struct chunk *ch)
{
	ch->ch_seq = ss->ss_next;
	if (ch->ch_nframes == 0)
		return 0;
	ss->ss_next += ch->ch_nframes;
	chunk_ref(ch);
	pthread_mutex_lock(&ss->ss_mtx);
	STAILQ_INSERT_TAIL(&ss->ss_queue, ch, ch_wentry);
	ss->ss_st.ss_pending_bytes += ch->ch_len;
	pthread_cond_signal(&ss->ss_cond);
	pthread_mutex_unlock(&ss->ss_mtx);
	return 0;
}

void
segstore_retry(struct segstore *ss)
{
	pthread_mutex_lock(&ss->ss_mtx);
	if (ss->ss_st.ss_error != 0) {
		ss->ss_retry_now = 1;
		pthread_cond_signal(&ss->ss_cond);
	}
	pthread_mutex_unlock(&ss->ss_mtx);
}

void
segstore_poll(struct segstore *ss, struct segstore_state *st)
{
	segment_blocks_reap(ss);
	pthread_mutex_lock(&ss->ss_mtx);
	*st = ss->ss_st;
	pthread_mutex_unlock(&ss->ss_mtx);
	st->ss_next = ss->ss_next;
}

/* Walk frame headers from (seq, off) to target, within limit bytes. */
static int
segment_walk(int fd, uint64_t seq, uint64_t off, uint64_t target,
    uint64_t limit, uint64_t *out)
{
	uint8_t buf[SEGMENT_WALK_BUF];
	uint64_t boff = 0;
	size_t blen = 0;
	ssize_t n;

	while (seq < target) {
		if (off < boff || off + FCW2_HEADER_LEN > boff + blen) {
			n = pread(fd, buf, sizeof(buf), off);
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1)
				return -1;
			if ((size_t)n < FCW2_HEADER_LEN) {
				errno = EIO;
				return -1;
			}
			boff = off;
			blen = n;
		}
		if (memcmp(buf + (off - boff), FCW2_MAGIC, 4) != 0) {
			errno = EIO;
			return -1;
		}
		off += fcw2_frame_len(buf + (off - boff));
		seq++;
		if (off > limit) {
			errno = EIO;
			return -1;
		}
	}
	*out = off;
	return 0;
}

static int	segment_locate_archived(struct segstore *, struct segment *,
		    uint64_t, struct segment_span *);

int
segstore_locate(struct segstore *ss, uint64_t seq, struct segment_span *sp)
{
	struct segment *seg;
	uint64_t iseq, ioff, dbytes, dend, off;
	size_t lo, hi, mid;
	int checked, archived;

	pthread_mutex_lock(&ss->ss_mtx);
	if (seq < ss->ss_st.ss_earliest || seq >= ss->ss_st.ss_durable) {
		pthread_mutex_unlock(&ss->ss_mtx);
		return -1;
	}
	TAILQ_FOREACH_REVERSE(seg, &ss->ss_segs, segment_list, seg_entry)
		if (seg->seg_base <= seq)
			break;
	if (seg == NULL || seq >= seg->seg_durable_end) {
		pthread_mutex_unlock(&ss->ss_mtx);
		return -1;
	}
	seg->seg_pins++;
	checked = seg->seg_checked;
	archived = seg->seg_archived;
	pthread_mutex_unlock(&ss->ss_mtx);

	sp->sp_chunk = NULL;
	if (archived)
		return segment_locate_archived(ss, seg, seq, sp);
	if (seg->seg_rfd == -1 && (seg->seg_rfd = openat(ss->ss_dirfd,
	    seg->seg_name, O_RDONLY | O_CLOEXEC)) == -1) {
		int gone = errno == ENOENT;

		pthread_mutex_lock(&ss->ss_mtx);
		archived = seg->seg_archived;
		pthread_mutex_unlock(&ss->ss_mtx);
		/* archived meanwhile: the raw file was just removed */
		if (gone && archived)
			return segment_locate_archived(ss, seg, seq, sp);
		log_warn("%s/%s: open for reading", ss->ss_dir, seg->seg_name);
		goto fail;
	}
	if (!checked) {
		if (segment_check_sealed(ss, seg, seg->seg_rfd) == -1)
			goto fail;
	}

	pthread_mutex_lock(&ss->ss_mtx);
	if (seg->seg_archived) {
		/* archived since it was pinned: read the archive instead */
		pthread_mutex_unlock(&ss->ss_mtx);
		return segment_locate_archived(ss, seg, seq, sp);
	}
	iseq = seg->seg_base;
	ioff = 0;
	lo = 0;
	hi = seg->seg_nindex;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (seg->seg_index[mid].ip_seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0) {
		iseq = seg->seg_index[lo - 1].ip_seq;
		ioff = seg->seg_index[lo - 1].ip_off;
	}
	dbytes = seg->seg_durable_bytes;
	dend = seg->seg_durable_end;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (seq >= dend)
		goto fail;

	if (segment_walk(seg->seg_rfd, iseq, ioff, seq, dbytes, &off) == -1) {
		log_warn("%s/%s: looking for sequence %" PRIu64, ss->ss_dir,
		    seg->seg_name, seq);
		goto fail;
	}
	sp->sp_fd = seg->seg_rfd;
	sp->sp_offset = off;
	sp->sp_len = dbytes - off;
	sp->sp_seq = seq;
	sp->sp_end_seq = dend;
	sp->sp_pin = seg;
	return 0;
fail:
	segstore_unpin(ss, seg);
	return -1;
}

int
segstore_corrupt_at(struct segstore *ss, uint64_t seq,
    struct segstore_corrupt *c)
{
	struct segment *seg, *next;
	uint64_t end;
	int rc = 0;

	/* a segment's frames past a corrupt one are unreadable (not served) */
	if (seq < ss->ss_limit)
		return 0;
	pthread_mutex_lock(&ss->ss_mtx);
	TAILQ_FOREACH_REVERSE(seg, &ss->ss_segs, segment_list, seg_entry)
		if (seg->seg_base <= seq)
			break;
	if (seg == NULL || seg == ss->ss_active || seq < ss->ss_st.ss_earliest ||
	    seq < seg->seg_durable_end)
		goto out;
	/* up to the next file; the newest one holds everything up to durable */
	next = TAILQ_NEXT(seg, seg_entry);
	if (next != NULL)
		end = next->seg_base;
	else
		end = seg->seg_end > ss->ss_st.ss_durable ? seg->seg_end :
		    ss->ss_st.ss_durable;
	if (seq >= end)
		goto out;
	snprintf(c->sc_name, sizeof(c->sc_name), "%s", segment_file(seg));
	c->sc_offset = seg->seg_durable_bytes;
	c->sc_first = seg->seg_durable_end;
	c->sc_end = end;
	rc = 1;
out:
	pthread_mutex_unlock(&ss->ss_mtx);
	return rc;
}

void
segstore_unpin(struct segstore *ss, void *pin)
{
	struct segment *seg = pin;
	int retain;

	if (seg == NULL)
		return;		/* an archived span holds no pin */
	/* the loop thread alone changes pins and the read fd */
	if (seg->seg_pins == 1 && seg->seg_rfd != -1) {
		close(seg->seg_rfd);
		seg->seg_rfd = -1;
	}
	pthread_mutex_lock(&ss->ss_mtx);
	seg->seg_pins--;
	retain = seg->seg_pins == 0 && ss->ss_retain_blocked;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (retain)
		segstore_retain(ss);
}

void
segstore_foreach(struct segstore *ss, void (*fn)(void *, const char *,
    uint64_t, uint64_t, uint64_t), void *arg)
{
	struct segment *seg;

	pthread_mutex_lock(&ss->ss_mtx);
	TAILQ_FOREACH(seg, &ss->ss_segs, seg_entry)
		fn(arg, segment_file(seg), seg->seg_base, seg->seg_end,
		    seg->seg_bytes);
	pthread_mutex_unlock(&ss->ss_mtx);
}

void
segstore_span_release(struct segstore *ss, struct segment_span *sp)
{
	if (sp->sp_chunk != NULL) {
		chunk_unref(sp->sp_chunk);
		sp->sp_chunk = NULL;
	} else
		segstore_unpin(ss, sp->sp_pin);
	sp->sp_pin = NULL;
}

/* ---- the archive tier ------------------------------------------------- */

/* The reader thread finished a block: count it, wake the loop. */
static void
segment_reader_notify(void *arg)
{
	struct segstore *ss = arg;

	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_st.ss_archive_reads++;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (ss->ss_notify != NULL)
		ss->ss_notify(ss->ss_notify_arg);
}

static int
segment_archive_start(struct segstore *ss)
{
	char err[256];

	if ((ss->ss_reader = archive_reader_start(segment_reader_notify, ss,
	    err, sizeof(err))) == NULL) {
		log_warnx("%s: %s", ss->ss_dir, err);
		return -1;
	}
	if (!ss->ss_cf.archive.ac_enabled)
		return 0;
	if ((ss->ss_archiver = archiver_start(ss, &ss->ss_cf.archive,
	    ss->ss_cf.max_frame_bytes, err, sizeof(err))) == NULL) {
		log_warnx("%s: %s", ss->ss_dir, err);
		return -1;
	}
	log_info("%s: archive tier on: sealed segments %s%s%s become .wal.zst "
	    "(zstd level %d%s)", ss->ss_dir, ss->ss_cf.archive.ac_after_s > 0 ?
	    "older than archive-after" : "", ss->ss_cf.archive.ac_after_s > 0 &&
	    ss->ss_cf.archive.ac_keep_raw > 0 ? " and " : "",
	    ss->ss_cf.archive.ac_keep_raw > 0 ? "beyond the archive-keep-raw "
	    "newest" : "", ss->ss_cf.archive.ac_level != 0 ?
	    ss->ss_cf.archive.ac_level : ARCHIVE_DEFAULT_LEVEL,
	    ss->ss_cf.archive.ac_long ? ", long-distance matching" : "");
	return 0;
}

/* Loop thread, before the writer stops: no thread touches the store after. */
static void
segment_archive_stop(struct segstore *ss)
{
	struct segment_block *b;

	archiver_stop(ss->ss_archiver);
	ss->ss_archiver = NULL;
	archive_reader_stop(ss->ss_reader);
	ss->ss_reader = NULL;
	for (size_t i = 0; i < SEGMENT_BLOCKS; i++) {
		b = &ss->ss_blocks[i];
		if (b->sb_state == SB_PENDING) {
			if (b->sb_job.aj_chunk != NULL)
				chunk_unref(b->sb_job.aj_chunk);
			segstore_unpin(ss, b->sb_seg);
		} else if (b->sb_state == SB_READY)
			chunk_unref(b->sb_chunk);
		memset(b, 0, sizeof(*b));
	}
}

void
segstore_archive_kick(struct segstore *ss)
{
	archiver_kick(ss->ss_archiver);
}

const char *
segstore_dir(const struct segstore *ss)
{
	return ss->ss_dir;
}

int
segstore_dirfd(const struct segstore *ss)
{
	return ss->ss_dirfd;
}

int
segstore_archive_pick(struct segstore *ss, uint64_t after_s,
    uint64_t keep_raw, struct segstore_pick *pk)
{
	struct segment *seg, *next;
	uint64_t now = segment_now_ms(), newer;
	int rc = 1;

	pthread_mutex_lock(&ss->ss_mtx);
	TAILQ_FOREACH(seg, &ss->ss_segs, seg_entry) {
		/* sealed: a newer file exists, so its frames are all here */
		if ((next = TAILQ_NEXT(seg, seg_entry)) == NULL)
			break;
		if (seg->seg_archived || seg->seg_noarchive ||
		    seg == ss->ss_active || seg->seg_durable_end < seg->seg_end)
			continue;
		if (after_s > 0 && now < next->seg_created_ms + after_s * 1000)
			break;		/* newer ones were sealed later */
		if (keep_raw > 0) {
			newer = 0;
			for (struct segment *s = next; s != NULL &&
			    TAILQ_NEXT(s, seg_entry) != NULL;
			    s = TAILQ_NEXT(s, seg_entry))
				if (!s->seg_archived)
					newer++;
			if (newer < keep_raw)
				break;
		}
		snprintf(pk->pk_name, sizeof(pk->pk_name), "%s", seg->seg_name);
		pk->pk_base = seg->seg_base;
		pk->pk_end = seg->seg_end;
		pk->pk_bytes = seg->seg_bytes;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&ss->ss_mtx);
	return rc;
}

static struct segment *
segment_by_base(struct segstore *ss, uint64_t base)
{
	struct segment *seg;

	TAILQ_FOREACH(seg, &ss->ss_segs, seg_entry)
		if (seg->seg_base == base)
			return seg;
	return NULL;
}

void
segstore_archive_skip(struct segstore *ss, uint64_t base)
{
	struct segment *seg;

	pthread_mutex_lock(&ss->ss_mtx);
	if ((seg = segment_by_base(ss, base)) != NULL)
		seg->seg_noarchive = 1;
	pthread_mutex_unlock(&ss->ss_mtx);
}

int
segstore_archive_commit(struct segstore *ss, uint64_t base,
    const char *zname, struct archive_index *idx, uint64_t zbytes)
{
	struct segment *seg;
	char *name;

	if ((name = strdup(zname)) == NULL)
		return -1;
	pthread_mutex_lock(&ss->ss_mtx);
	if ((seg = segment_by_base(ss, base)) == NULL || seg->seg_archived ||
	    seg->seg_end != idx->ai_base + idx->ai_nframes) {
		pthread_mutex_unlock(&ss->ss_mtx);
		free(name);
		return -1;
	}
	ss->ss_st.ss_store_bytes -= seg->seg_bytes;
	ss->ss_st.ss_store_bytes += zbytes;
	ss->ss_st.ss_archived++;
	ss->ss_st.ss_archived_bytes += zbytes;
	ss->ss_st.ss_archive_raw_bytes += idx->ai_raw_bytes;
	seg->seg_zname = name;
	seg->seg_zidx = *idx;
	memset(idx, 0, sizeof(*idx));
	seg->seg_bytes = zbytes;
	seg->seg_durable_bytes = zbytes;
	seg->seg_archived = 1;
	pthread_mutex_unlock(&ss->ss_mtx);
	return 0;
}

/*
 * Blocks the reader thread finished: keep them (SB_READY) or, when one
 * failed its checks, stop serving the segment at its first frame (loop
 * thread).
 */
static void
segment_blocks_reap(struct segstore *ss)
{
	struct segment_block *b;
	struct segment *seg;

	if (ss->ss_reader == NULL)
		return;
	for (size_t i = 0; i < SEGMENT_BLOCKS; i++) {
		b = &ss->ss_blocks[i];
		if (b->sb_state != SB_PENDING ||
		    !archive_reader_done(ss->ss_reader, &b->sb_job))
			continue;
		seg = b->sb_seg;
		if (b->sb_job.aj_chunk != NULL) {
			b->sb_chunk = b->sb_job.aj_chunk;
			b->sb_job.aj_chunk = NULL;
			b->sb_state = SB_READY;
		} else {
			b->sb_state = SB_FREE;
			if (!b->sb_job.aj_enoent) {
				const struct archive_block *ab =
				    &b->sb_job.aj_blk;

				log_error("%s/%s; frames %" PRIu64 " to %" PRIu64
				    " cannot be served and a reader that "
				    "reaches them is disconnected. Stop the "
				    "relay and restore the file from a backup "
				    "or another relay of the chain", ss->ss_dir,
				    b->sb_job.aj_err, ab->ab_seq, seg->seg_end -
				    1);
				pthread_mutex_lock(&ss->ss_mtx);
				if (ab->ab_seq < seg->seg_durable_end) {
					seg->seg_durable_end = ab->ab_seq;
					seg->seg_durable_bytes = ab->ab_zoff;
				}
				pthread_mutex_unlock(&ss->ss_mtx);
				if (ab->ab_seq < ss->ss_limit)
					ss->ss_limit = ab->ab_seq;
			}
		}
		b->sb_seg = NULL;
		segstore_unpin(ss, seg);
	}
}

/* Queue block idx of seg (pinned by the caller: the entry keeps the pin). */
static int
segment_block_fetch(struct segstore *ss, struct segment *seg, uint32_t idx,
    const struct segment_block *keep)
{
	struct segment_block *b, *victim = NULL;

	for (size_t i = 0; i < SEGMENT_BLOCKS; i++) {
		b = &ss->ss_blocks[i];
		if (b->sb_state == SB_FREE) {
			victim = b;
			break;
		}
		if (b->sb_state == SB_READY && b != keep &&
		    (victim == NULL || b->sb_used < victim->sb_used))
			victim = b;
	}
	if (victim == NULL)
		return -1;	/* every entry is being read: ask again */
	if (victim->sb_state == SB_READY)
		chunk_unref(victim->sb_chunk);
	memset(victim, 0, sizeof(*victim));
	victim->sb_state = SB_PENDING;
	victim->sb_base = seg->seg_base;
	victim->sb_idx = idx;
	victim->sb_seg = seg;
	victim->sb_used = ++ss->ss_block_tick;
	victim->sb_job.aj_dirfd = ss->ss_dirfd;
	snprintf(victim->sb_job.aj_name, sizeof(victim->sb_job.aj_name), "%s",
	    seg->seg_zname);
	victim->sb_job.aj_blk = seg->seg_zidx.ai_blocks[idx];
	victim->sb_job.aj_max_frame = ss->ss_cf.max_frame_bytes;
	archive_reader_submit(ss->ss_reader, &victim->sb_job);
	return 0;
}

static struct segment_block *
segment_block_find(struct segstore *ss, uint64_t base, uint32_t idx)
{
	for (size_t i = 0; i < SEGMENT_BLOCKS; i++)
		if (ss->ss_blocks[i].sb_state != SB_FREE &&
		    ss->ss_blocks[i].sb_base == base &&
		    ss->ss_blocks[i].sb_idx == idx)
			return &ss->ss_blocks[i];
	return NULL;
}

/* segstore_locate in an archived segment, pinned by the caller. */
static int
segment_locate_archived(struct segstore *ss, struct segment *seg,
    uint64_t seq, struct segment_span *sp)
{
	struct segment_block *b;
	uint64_t dend;
	long idx;

	if (ss->ss_reader == NULL)
		goto fail;		/* not started */
	segment_blocks_reap(ss);
	pthread_mutex_lock(&ss->ss_mtx);
	dend = seg->seg_durable_end;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (seq >= dend || (idx = archive_index_find(&seg->seg_zidx, seq)) < 0)
		goto fail;
	if ((b = segment_block_find(ss, seg->seg_base, (uint32_t)idx)) == NULL) {
		if (segment_block_fetch(ss, seg, (uint32_t)idx, NULL) == -1)
			segstore_unpin(ss, seg);
		return SEGSTORE_PENDING;	/* the entry keeps the pin */
	}
	if (b->sb_state == SB_PENDING) {
		segstore_unpin(ss, seg);
		return SEGSTORE_PENDING;
	}
	b->sb_used = ++ss->ss_block_tick;
	chunk_ref(b->sb_chunk);
	sp->sp_chunk = b->sb_chunk;
	sp->sp_fd = -1;
	sp->sp_seq = seq;
	sp->sp_offset = chunk_offset_of(b->sb_chunk, seq);
	sp->sp_end_seq = CHUNK_END(b->sb_chunk);
	sp->sp_len = b->sb_chunk->ch_len - sp->sp_offset;
	sp->sp_pin = NULL;
	/* read ahead: a reader here wants the next blocks soon */
	for (uint32_t k = (uint32_t)idx + 1; k <= (uint32_t)idx +
	    SEGMENT_READ_AHEAD && k < seg->seg_zidx.ai_nblocks &&
	    seg->seg_zidx.ai_blocks[k].ab_seq < dend; k++) {
		if (segment_block_find(ss, seg->seg_base, k) != NULL)
			continue;
		pthread_mutex_lock(&ss->ss_mtx);
		seg->seg_pins++;	/* the new entry's pin */
		pthread_mutex_unlock(&ss->ss_mtx);
		if (segment_block_fetch(ss, seg, k, b) == -1) {
			segstore_unpin(ss, seg);
			break;
		}
	}
	segstore_unpin(ss, seg);
	return 0;
fail:
	segstore_unpin(ss, seg);
	return -1;
}

void
segstore_snapmeta(struct segstore *ss, struct segstore_snapmeta *sm)
{
	pthread_mutex_lock(&ss->ss_meta_mtx);
	*sm = ss->ss_snap;
	pthread_mutex_unlock(&ss->ss_meta_mtx);
}

int
segstore_record_snapshot(struct segstore *ss,
    const struct segstore_snapmeta *sm, char *errbuf, size_t errlen)
{
	struct segment_meta m;
	struct segstore_snapmeta prev;
	int rc;

	/* the same contents as the last write, but for the snapshot line */
	pthread_mutex_lock(&ss->ss_meta_mtx);
	m.m_epoch = ss->ss_epoch;
	m.m_base = ss->ss_meta_base;
	m.m_running = 1;
	m.m_mode = ss->ss_cf.fsync_mode;
	prev = ss->ss_snap;
	ss->ss_snap = *sm;
	m.m_snap = *sm;
	if ((rc = segment_meta_write_locked(ss, &m, errbuf, errlen)) == -1)
		ss->ss_snap = prev;
	pthread_mutex_unlock(&ss->ss_meta_mtx);
	return rc;
}

void
segstore_compact(struct segstore *ss, uint64_t covered, int hold)
{
	pthread_mutex_lock(&ss->ss_mtx);
	if (hold)
		ss->ss_compact = 1;
	if (covered > ss->ss_covered)
		ss->ss_covered = covered;
	pthread_mutex_unlock(&ss->ss_mtx);
	segstore_retain(ss);
}
