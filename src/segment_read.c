/*
 * segment_read.c: serving frames from the store (loop thread).
 *
 * segstore_locate finds where a frame is: a byte range of a raw segment
 * file (pinned until segstore_unpin, so that retention keeps it), or a
 * block of an archived segment decompressed on the archive reader thread
 * into a small cache of blocks. A sealed segment is checked frame by
 * frame the first time it is read (segment_check_sealed); a corrupt
 * frame makes the rest of it a corrupt range (segstore_corrupt_at).
 */
#include "autoconfig.h"

#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "archive.h"
#include "fcw2.h"
#include "chunk.h"
#include "log.h"
#include "segment.h"
#include "segment_int.h"

/* Walk frame headers from (seq, off) to target, within limit bytes. */
static int
segment_walk(int fd, uint64_t seq, uint64_t off, uint64_t target,
    uint64_t limit, uint64_t *out)
{
	uint8_t buf[SEGMENT_WALK_BUF];
	uint64_t k;
	size_t end;
	ssize_t n;

	while (seq < target) {
		if (off > limit) {
			errno = EIO;
			return -1;
		}
		n = pread(fd, buf, sizeof(buf), off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		if ((size_t)n < FCW2_HEADER_LEN ||
		    memcmp(buf, FCW2_MAGIC, 4) != 0) {
			errno = EIO;
			return -1;
		}
		if ((uint64_t)n > limit - off)	/* off <= limit here */
			n = (ssize_t)(limit - off);
		end = fcw2_walk(buf, 0, (size_t)n, target - seq, &k);
		if (k == 0) {
			/* a frame longer than the buffer: skip it whole */
			end = fcw2_frame_len(buf);
			k = 1;
		} else if (end < (size_t)n && end + FCW2_HEADER_LEN <=
		    (size_t)n && seq + k < target &&
		    memcmp(buf + end, FCW2_MAGIC, 4) != 0) {
			errno = EIO;	/* not a frame where one should start */
			return -1;
		}
		off += end;
		seq += k;
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

/* The index point at or before seq (ss_mtx held). */
static void
segment_index_find(const struct segment *seg, uint64_t seq, uint64_t *iseq,
    uint64_t *ioff)
{
	size_t lo = 0, hi = seg->seg_nindex, mid;

	*iseq = seg->seg_base;
	*ioff = 0;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (seg->seg_index[mid].ip_seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0) {
		*iseq = seg->seg_index[lo - 1].ip_seq;
		*ioff = seg->seg_index[lo - 1].ip_off;
	}
}

/*
 * Finding a frame on the I/O pool: the first read of a sealed segment
 * checks it whole (segment_check_sealed), and a frame between two index
 * points is found by walking frame headers; both read the file, so
 * neither runs on the loop. The job holds a pin on the segment and a
 * descriptor of its own.
 */
struct segment_find {
	struct iopool_job	 sf_job;	/* first: the pool's view */
	struct segstore		*sf_ss;
	struct segment		*sf_seg;
	uint64_t		 sf_seq;
	int			 sf_check;
	int			 sf_rc;		/* 0: sf_off found */
	int			 sf_errno;	/* the file could not be read */
	uint64_t		 sf_off;
	uint64_t		 sf_bad;	/* from the check */
};

static void
segment_find_work(struct iopool_job *j)
{
	struct segment_find *f = (struct segment_find *)j;
	struct segstore *ss = f->sf_ss;
	struct segment *seg = f->sf_seg;
	uint64_t iseq, ioff, dbytes, dend;
	int fd;

	f->sf_rc = -1;
	f->sf_errno = 0;
	f->sf_bad = UINT64_MAX;
	if ((fd = openat(ss->ss_dirfd, seg->seg_name, O_RDONLY |
	    O_CLOEXEC)) == -1) {
		if (errno != ENOENT) {	/* ENOENT: archived meanwhile */
			f->sf_errno = errno;
			log_warn("%s/%s: open for reading", ss->ss_dir,
			    seg->seg_name);
		}
		return;
	}
	if (f->sf_check && segment_check_sealed(ss, seg, fd, &f->sf_bad) ==
	    -1) {
		f->sf_errno = errno != 0 ? errno : EIO;
		goto out;
	}
	pthread_mutex_lock(&ss->ss_mtx);
	segment_index_find(seg, f->sf_seq, &iseq, &ioff);
	dbytes = seg->seg_durable_bytes;
	dend = seg->seg_durable_end;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (f->sf_seq >= dend)
		goto out;
	if (segment_walk(fd, iseq, ioff, f->sf_seq, dbytes, &f->sf_off) == -1) {
		f->sf_errno = errno;
		log_warn("%s/%s: looking for sequence %" PRIu64, ss->ss_dir,
		    seg->seg_name, f->sf_seq);
		goto out;
	}
	f->sf_rc = 0;
out:
	close(fd);
}

/* Loop thread: keep what the job found, wake the readers that wait. */
static void
segment_find_done(struct iopool_job *j)
{
	struct segment_find *f = (struct segment_find *)j;
	struct segstore *ss = f->sf_ss;
	struct segment *seg = f->sf_seg;

	seg->seg_finding = 0;
	if (f->sf_bad < ss->ss_limit)
		ss->ss_limit = f->sf_bad;
	if (f->sf_rc == 0) {
		seg->seg_has_hint = 1;
		seg->seg_hint_seq = f->sf_seq;
		seg->seg_hint_off = f->sf_off;
	} else if (f->sf_errno != 0) {
		seg->seg_find_err = f->sf_errno;
		seg->seg_find_err_seq = f->sf_seq;
	}
	pthread_mutex_lock(&ss->ss_mtx);
	ss->ss_st.ss_pool_done++;
	pthread_mutex_unlock(&ss->ss_mtx);
	segstore_unpin(ss, seg);
	free(f);
	if (ss->ss_notify != NULL)
		ss->ss_notify(ss->ss_notify_arg);
}

/* Find seq in seg (pinned: the job takes the pin) on the I/O pool. */
static int
segment_find_start(struct segstore *ss, struct segment *seg, uint64_t seq,
    int check)
{
	struct segment_find *f;

	if ((f = calloc(1, sizeof(*f))) == NULL) {
		segstore_unpin(ss, seg);
		return -1;
	}
	f->sf_job.ij_work = segment_find_work;
	f->sf_job.ij_done = segment_find_done;
	f->sf_ss = ss;
	f->sf_seg = seg;
	f->sf_seq = seq;
	f->sf_check = check;
	seg->seg_finding = 1;
	iopool_submit(ss->ss_cf.iopool, &f->sf_job);
	return SEGSTORE_PENDING;
}

int
segstore_locate(struct segstore *ss, uint64_t seq, struct segment_span *sp)
{
	struct segment *seg;
	uint64_t iseq, ioff, dbytes, dend, off;
	int checked, archived, pool = ss->ss_cf.iopool != NULL;
	uint64_t bad;

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
	if (pool && seg->seg_finding) {
		segstore_unpin(ss, seg);
		return SEGSTORE_PENDING;	/* woken when it is done */
	}
	if (seg->seg_find_err != 0 && seg->seg_find_err_seq == seq) {
		/* the find job for it failed: say so once, not again and again */
		errno = seg->seg_find_err;
		seg->seg_find_err = 0;
		segstore_unpin(ss, seg);
		return SEGSTORE_READERR;
	}
	if (pool && !checked)
		return segment_find_start(ss, seg, seq, 1);
	if (seg->seg_rfd == -1 && (seg->seg_rfd = openat(ss->ss_dirfd,
	    seg->seg_name, O_RDONLY | O_CLOEXEC)) == -1) {
		int gone = errno == ENOENT;

		pthread_mutex_lock(&ss->ss_mtx);
		archived = seg->seg_archived;
		pthread_mutex_unlock(&ss->ss_mtx);
		/* archived meanwhile: the raw file was just removed */
		if (gone && archived)
			return segment_locate_archived(ss, seg, seq, sp);
		gone = errno;
		log_warn("%s/%s: open for reading", ss->ss_dir, seg->seg_name);
		segstore_unpin(ss, seg);
		errno = gone;
		return SEGSTORE_READERR;
	}
	if (!checked) {
		/* no pool (walcat, tests): check it here */
		if (segment_check_sealed(ss, seg, seg->seg_rfd, &bad) == -1)
			goto fail;
		if (bad < ss->ss_limit)
			ss->ss_limit = bad;
	}

	pthread_mutex_lock(&ss->ss_mtx);
	if (seg->seg_archived) {
		/* archived since it was pinned: read the archive instead */
		pthread_mutex_unlock(&ss->ss_mtx);
		return segment_locate_archived(ss, seg, seq, sp);
	}
	segment_index_find(seg, seq, &iseq, &ioff);
	dbytes = seg->seg_durable_bytes;
	dend = seg->seg_durable_end;
	pthread_mutex_unlock(&ss->ss_mtx);
	if (seq >= dend)
		goto fail;

	if (seq == iseq)
		off = ioff;
	else if (seg->seg_has_hint && seg->seg_hint_seq == seq)
		off = seg->seg_hint_off;
	else if (pool)
		return segment_find_start(ss, seg, seq, 0);
	else if (segment_walk(seg->seg_rfd, iseq, ioff, seq, dbytes,
	    &off) == -1) {
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
segstore_span_release(struct segstore *ss, struct segment_span *sp)
{
	if (sp->sp_chunk != NULL) {
		chunk_unref(sp->sp_chunk);
		sp->sp_chunk = NULL;
	} else
		segstore_unpin(ss, sp->sp_pin);
	sp->sp_pin = NULL;
}

/*
 * Blocks the reader thread finished: keep them (SB_READY) or, when one
 * failed its checks, stop serving the segment at its first frame (loop
 * thread).
 */
void
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
		if (b->sb_job.aj_pieces != NULL) {
			b->sb_pieces = b->sb_job.aj_pieces;
			b->sb_npieces = b->sb_job.aj_npieces;
			b->sb_job.aj_pieces = NULL;
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
		archive_pieces_free(victim->sb_pieces, victim->sb_npieces);
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
	struct chunk *ch;
	uint64_t dend;
	uint32_t lo, hi;
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
	/* the piece that holds seq: a reader takes it whole, by reference */
	lo = 0;
	hi = b->sb_npieces;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (b->sb_pieces[mid]->ch_seq <= seq)
			lo = mid;
		else
			hi = mid;
	}
	ch = b->sb_pieces[lo];
	chunk_ref(ch);
	sp->sp_chunk = ch;
	sp->sp_fd = -1;
	sp->sp_seq = seq;
	sp->sp_offset = chunk_offset_of(ch, seq);
	sp->sp_end_seq = CHUNK_END(ch);
	sp->sp_len = ch->ch_len - sp->sp_offset;
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
