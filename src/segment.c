/*
 * segment.c: the durable segment store, the store object.
 *
 * What the store is made of is in segment_int.h; this file holds its
 * lifetime (segstore_start, segstore_close), the positions, retention, the
 * status iterator and the hand-offs with the archive tier and snapshots.
 * The rest is split by what a reader needs to know:
 *   segment_meta.c     the checksummed metadata file (epoch, state)
 *   segment_recover.c  opening a store: scan, recover the newest segment,
 *                      check sealed ones
 *   segment_writer.c   the writer thread: write, group commit, rotate
 *   segment_read.c     locating frames for readers, archived blocks
 *
 * The first chunk after a start always goes to a new segment file, as the
 * cache does.
 */
#include "autoconfig.h"

#include <sys/types.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "archive.h"
#include "clock.h"
#include "chunk.h"
#include "log.h"
#include "segment.h"
#include "segment_int.h"

/* 100 us to 10 s */
const uint64_t segstore_hist_bounds_us[SEGSTORE_HIST_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
	250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

/* Count n observations of us microseconds (with the mutex held). */
void
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

static const struct {
	const char	*fm_name;
	const char	*fm_arg;	/* how a config writes it */
} segment_fsync_modes[] = {
	[FSYNC_ALWAYS] =	{ "always",	"always" },
	[FSYNC_INTERVAL] =	{ "interval",	"interval:MS" },
	[FSYNC_NEVER] =		{ "never",	"never" },
};
#define SEGMENT_NMODES	\
	(sizeof(segment_fsync_modes) / sizeof(segment_fsync_modes[0]))

const char *
segment_fsync_name(int mode)
{
	if (mode < 0 || (size_t)mode >= SEGMENT_NMODES)
		return "unknown";
	return segment_fsync_modes[mode].fm_name;
}

int
segment_fsync_parse(const char *s, size_t len)
{
	for (size_t i = 0; i < SEGMENT_NMODES; i++)
		if (strlen(segment_fsync_modes[i].fm_name) == len &&
		    memcmp(s, segment_fsync_modes[i].fm_name, len) == 0)
			return (int)i;
	return -1;
}

const char *
segment_fsync_usage(char *buf, size_t len, const char *sep,
    const char *last)
{
	size_t off = 0;
	int n;

	buf[0] = '\0';
	for (size_t i = 0; i < SEGMENT_NMODES && off < len; i++) {
		n = snprintf(buf + off, len - off, "%s%s", i == 0 ? "" :
		    i + 1 == SEGMENT_NMODES ? last : sep,
		    segment_fsync_modes[i].fm_arg);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	return buf;
}

uint64_t
segment_now_ms(void)
{
	return clock_wall_ms();
}

uint64_t
segment_mono_ms(void)
{
	return clock_mono_ms();
}

uint64_t
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

void
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
const char *
segment_file(const struct segment *seg)
{
	return seg->seg_archived ? seg->seg_zname : seg->seg_name;
}

struct segment *
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
void
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

/* Retention on a worker. */
static void
segment_retain_work(struct iopool_job *j)
{
	segment_retain_run((struct segstore *)((char *)j -
	    offsetof(struct segstore, ss_retain_job)));
}

/*
 * Loop thread: the run is over. Readers waiting at a removed position
 * learn that it is gone; a request that came meanwhile runs again (the
 * job is the store's one: it is submitted again only now).
 */
static void
segment_retain_done(struct iopool_job *j)
{
	struct segstore *ss = (struct segstore *)((char *)j -
	    offsetof(struct segstore, ss_retain_job));
	int again;

	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_st.ss_pool_done++;
	again = ss->ss_retain_more && !ss->ss_stop;
	ss->ss_retain_more = 0;
	ss->ss_retain_busy = again;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (again)
		iopool_submit(ss->ss_cf.iopool, &ss->ss_retain_job);
	if (ss->ss_notify != NULL)
		ss->ss_notify(ss->ss_notify_arg);
}

void
segstore_retain(struct segstore *ss)
{
	int queue;

	/* before the start nothing is served yet: finish it here */
	if (ss->ss_cf.iopool == NULL || !ss->ss_started) {
		segment_retain_run(ss);
		return;
	}
	if (ss->ss_cf.retain_bytes == 0 && ss->ss_cf.retain_age_s == 0 &&
	    !ss->ss_compact && ss->ss_covered == 0)
		return;
	pthread_mutex_lock(&ss->ss_mtx);
	queue = !ss->ss_retain_busy && !ss->ss_stop;
	if (queue)
		ss->ss_retain_busy = 1;
	else
		ss->ss_retain_more = 1;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (queue) {
		ss->ss_retain_job.ij_work = segment_retain_work;
		ss->ss_retain_job.ij_done = segment_retain_done;
		iopool_submit(ss->ss_cf.iopool, &ss->ss_retain_job);
	}
}

/*
 * Retention: a file the archive tier left next to the one the segment is
 * served from goes first (the served one still holds every frame if this
 * fails). 0, or -1 (logged).
 */
static int
segment_remove_left(struct segstore *ss, struct segment *seg)
{
	char zname[PATH_MAX];
	const char *name;

	if (seg->seg_archived && seg->seg_rawleft)
		name = seg->seg_name;
	else if (!seg->seg_archived && seg->seg_zleft) {
		snprintf(zname, sizeof(zname), "%s.zst", seg->seg_name);
		name = zname;
	} else
		return 0;
	if (unlinkat(ss->ss_dirfd, name, 0) == -1 && errno != ENOENT) {
		log_warn("%s/%s: retention cannot remove the file; it and the "
		    "newer segments stay and are served, retrying at the next "
		    "rotation", ss->ss_dir, name);
		return -1;
	}
	seg->seg_rawleft = seg->seg_zleft = 0;
	return 0;
}

/*
 * Retention: any thread, one at a time (ss_retaining). Files are removed
 * without the mutex held, oldest first; when one cannot be removed, it
 * and every newer one taken go back into the list, so that the store
 * never has a gap (a gap would look like a segment missing frames at the
 * next start).
 */
void
segment_retain_run(struct segstore *ss)
{
	struct segment_list gone = TAILQ_HEAD_INITIALIZER(gone);
	struct segment *seg, *next;
	uint64_t now, age_ms;
	int over, old, covered, removed = 0, taken;

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
	taken = 0;
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
		taken = 1;
		ss->ss_st.ss_store_bytes -= seg->seg_bytes;
		ss->ss_st.ss_segments--;
		ss->ss_st.ss_deleted++;
	}
	pthread_mutex_unlock(&ss->ss_mtx);

	while ((seg = TAILQ_FIRST(&gone)) != NULL) {
		if (segment_remove_left(ss, seg) == -1)
			break;
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
	}
	/*
	 * Earliest moves once the files are gone: a reader told it still
	 * finds them, and one that asks for a taken segment's frames is
	 * told to wait (not found), then that they are gone.
	 */
	if (taken)
		ss->ss_st.ss_earliest = TAILQ_FIRST(&ss->ss_segs)->seg_base;
	if (TAILQ_EMPTY(&gone) && ss->ss_retain_again)
		goto again;
	ss->ss_retaining = 0;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (removed)
		segment_fsync_dir(ss);
}

/* ---- loop thread ------------------------------------------------------- */

static int	segment_archive_start(struct segstore *);
static void	segment_archive_stop(struct segstore *);

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

void
segstore_set_iopool(struct segstore *ss, struct iopool *ip)
{
	ss->ss_cf.iopool = ip;
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
	/* retention the writer queued last: no job may outlive the store */
	iopool_drain(ss->ss_cf.iopool);

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
	uint64_t archived;

	/* a reader thread only where archived segments can be read */
	pthread_mutex_lock(&ss->ss_mtx);
	archived = ss->ss_st.ss_archived;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (!ss->ss_cf.archive.ac_enabled && archived == 0)
		return 0;
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
			archive_pieces_free(b->sb_job.aj_pieces,
			    b->sb_job.aj_npieces);
			segstore_unpin(ss, b->sb_seg);
		} else if (b->sb_state == SB_READY)
			archive_pieces_free(b->sb_pieces, b->sb_npieces);
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
	seg->seg_zleft = 0;
	pthread_mutex_unlock(&ss->ss_mtx);
	return 0;
}

void
segstore_archive_left(struct segstore *ss, uint64_t base, int what, int left)
{
	struct segment *seg;

	pthread_mutex_lock(&ss->ss_mtx);
	if ((seg = segment_by_base(ss, base)) != NULL) {
		if (what == SEGSTORE_LEFT_RAW)
			seg->seg_rawleft = left;
		else
			seg->seg_zleft = left;
	}
	pthread_mutex_unlock(&ss->ss_mtx);
}

int
segstore_archive_leftover(struct segstore *ss, char *name, size_t len,
    uint64_t *base, int *what)
{
	struct segment *seg;
	int rc = 1;

	pthread_mutex_lock(&ss->ss_mtx);
	TAILQ_FOREACH(seg, &ss->ss_segs, seg_entry) {
		if (seg->seg_rawleft)
			snprintf(name, len, "%s", seg->seg_name);
		else if (seg->seg_zleft)
			snprintf(name, len, "%s.zst", seg->seg_name);
		else
			continue;
		*base = seg->seg_base;
		*what = seg->seg_rawleft ? SEGSTORE_LEFT_RAW : SEGSTORE_LEFT_ZST;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&ss->ss_mtx);
	return rc;
}

void
segstore_archive_failed(struct segstore *ss)
{
	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_st.ss_archive_failures++;
	pthread_mutex_unlock(&ss->ss_mtx);
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
	if ((rc = segment_meta_write_locked(ss, &m, errbuf, errlen)) == -1) {
		ss->ss_snap = prev;
		if (ss->ss_meta_unsure)
			rc = -2;
	}
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
