/*
 * segment_writer.c: the writer thread.
 *
 * The loop thread appends chunks (segstore_append) to a queue; the writer
 * thread takes them in order, writes runs of them with one pwritev(),
 * fdatasyncs according to the fsync mode (one fdatasync covers everything
 * written since the last: group commit), rotates segment files and
 * publishes the durable sequence, which the loop reads with
 * segstore_poll. A chunk's reference is dropped once its frames are
 * durable, so after a failed write or fdatasync the writer still holds
 * every frame it has to write again. The writer does its I/O without
 * the store's mutex.
 */
#include "autoconfig.h"

#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "chunk.h"
#include "log.h"
#include "segment.h"
#include "segment_int.h"

#ifndef IOV_MAX
#define IOV_MAX			1024
#endif

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

void *
segstore_writer(void *arg)
{
	struct segstore *ss = arg;
	uint64_t now, wake, retry_at = 0;
	int err, stopping, stop_failures = 0;

	prctl(PR_SET_NAME, "wr-writer", 0, 0, 0);	/* top -H, tests/fault */
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
	pthread_mutex_unlock(&ss->ss_mtx);
	/*
	 * Woken after the unlock: a writer woken under the mutex would only
	 * block on it until this thread lets go (a second sleep and wake-up
	 * before its write). It checks the queue under the mutex before it
	 * waits, so no chunk is missed.
	 */
	pthread_cond_signal(&ss->ss_cond);
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
