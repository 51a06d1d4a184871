/*
 * segment_recover.c: opening a store.
 *
 * segstore_open takes the directory's lock, reads the metadata, lists
 * the segment files and recovers the newest one: every frame is checked,
 * a torn tail is cut, a bad frame with valid ones after it is corruption
 * (kept, not served past), see segment_recover. Older segments are
 * trusted for their extent (the next file's base sequence) and checked,
 * and indexed, by segment_check_sealed the first time a reader needs
 * them (or at open with verify_sealed). Frames are read with the scanner
 * that walcat verify and repair use (scan.c), so that all three agree on
 * where a segment's valid frames end.
 */
#include "autoconfig.h"

#include <sys/types.h>
#include <sys/file.h>
#include <sys/stat.h>

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

#include "archive.h"
#include "fcw2.h"
#include "chunk.h"
#include "log.h"
#include "scan.h"
#include "segment.h"
#include "segment_int.h"

/*
 * Read a segment from its start with the shared scanner (scan.c), checking
 * every frame (records too) and building its sparse index in seg. Stops at
 * the first event that is not a whole valid frame, or after max frames.
 * Returns 0 with the frame count, the bytes of those whole valid frames and
 * the status that ended the scan (FCW2_OK at a clean end or at max;
 * FCW2_NEED_MORE for an incomplete frame), with *ev the event that ended
 * it and sc ready to go on from there; or -1 with errbuf (errno set).
 */
static int
segment_scan(struct segstore *ss, struct segment *seg, struct scan *sc,
    int fd, uint64_t max, uint64_t *frames, uint64_t *bytes, int *status,
    struct scan_event *ev, char *errbuf, size_t errlen)
{
	uint64_t nframes = 0, end = 0;
	int st = FCW2_OK;

	if (lseek(fd, 0, SEEK_SET) == -1) {
		snprintf(errbuf, errlen, "seek: %s", strerror(errno));
		return -1;
	}
	scan_start(sc, fd);
	memset(ev, 0, sizeof(*ev));
	while (nframes < max) {
		if (scan_next(sc, ev, errbuf, errlen) == -1)
			return -1;
		if (ev->ev_type == SCAN_FRAME) {
			segment_index_add(seg, seg->seg_base + nframes,
			    ev->ev_offset);
			nframes++;
			end = ev->ev_offset + ev->ev_len;
			continue;
		}
		if (ev->ev_type == SCAN_INCOMPLETE)
			st = FCW2_NEED_MORE;
		else if (ev->ev_type == SCAN_BAD)
			st = ev->ev_status;
		break;
	}
	*frames = nframes;
	*bytes = end;
	*status = st;
	return 0;
}

/*
 * Check a sealed segment that was trusted at open (loop thread, segment
 * pinned or store not started). A bad frame, or fewer frames than the next
 * file's base sequence says, stops serving at that frame.
 */
int
segment_check_sealed(struct segstore *ss, struct segment *seg, int fd)
{
	struct segment tmp;
	struct scan sc;
	struct scan_event ev;
	char err[256];
	uint64_t frames, bytes, expect, bad;
	int status, rc, save;

	memset(&tmp, 0, sizeof(tmp));
	tmp.seg_base = seg->seg_base;
	expect = seg->seg_end - seg->seg_base;
	scan_init(&sc, ss->ss_cf.max_frame_bytes, 0, 1);
	rc = segment_scan(ss, &tmp, &sc, fd, expect, &frames, &bytes, &status,
	    &ev, err, sizeof(err));
	save = errno;
	scan_free(&sc);
	if (rc == -1) {
		log_warnx("%s/%s: %s", ss->ss_dir, seg->seg_name, err);
		free(tmp.seg_index);
		errno = save;
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
 * follows at offset bad? Goes on with the scanner that stopped there, *ev
 * being the event it stopped at (scan.c resynchronises after a bad
 * frame). A torn tail (an incomplete last frame, unwritten or zeroed
 * space, or anything else with no whole valid frame after it) leaves
 * *after at 0. Otherwise *after is the number of frames from the bad one
 * to the last whole valid frame (the bad ones counted), *end the offset
 * after that frame and *certain whether each bad stretch is exactly one
 * frame (its length field leads to the next valid frame), so that the
 * sequence numbers after it are known. Returns 0, or -1 with errbuf.
 */
static int
segment_recover_tail(struct segstore *ss, struct segment *seg,
    struct scan *sc, struct scan_event *ev, int fd, uint64_t bad,
    uint64_t *after, uint64_t *end, int *certain, char *errbuf,
    size_t errlen)
{
	uint8_t hdr[FCW2_HEADER_LEN];
	char err[256];
	uint64_t n = 0;

	*after = 0;
	*end = bad;
	*certain = 1;
	for (;;) {
		if (ev->ev_type == SCAN_END || ev->ev_type == SCAN_INCOMPLETE)
			break;
		if (ev->ev_type == SCAN_FRAME) {
			n++;
			*after = n;
			*end = ev->ev_offset + ev->ev_len;
		} else {
			/* SCAN_BAD: nothing valid after it is a torn tail */
			if (!ev->ev_resumed)
				break;
			n++;
			if (pread(fd, hdr, sizeof(hdr), (off_t)ev->ev_offset) !=
			    (ssize_t)sizeof(hdr) ||
			    fcw2_frame_len(hdr) != ev->ev_skipped)
				*certain = 0;
		}
		if (scan_next(sc, ev, err, sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "%s/%s: recovery: %s",
			    ss->ss_dir, seg->seg_name, err);
			return -1;
		}
	}
	return 0;
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
	struct scan sc;
	struct scan_event ev;
	char err[256];
	uint64_t frames, bytes, after = 0, end, keep, bad;
	int fd, status, certain = 1;

	*cut = 0;
	scan_init(&sc, ss->ss_cf.max_frame_bytes, 0, 1);
	fd = openat(ss->ss_dirfd, seg->seg_name, O_RDWR | O_CLOEXEC);
	if (fd == -1)
		goto fail;
	if (segment_scan(ss, seg, &sc, fd, UINT64_MAX, &frames, &bytes,
	    &status, &ev, err, sizeof(err)) == -1) {
		snprintf(errbuf, errlen, "%s/%s: recovery: %s", ss->ss_dir,
		    seg->seg_name, err);
		goto fail_err;
	}
	keep = bytes;
	bad = seg->seg_base + frames;
	if (bytes < seg->seg_bytes) {
		if (segment_recover_tail(ss, seg, &sc, &ev, fd, bytes, &after,
		    &end, &certain, errbuf, errlen) == -1)
			goto fail_err;
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
	scan_free(&sc);
	seg->seg_checked = 1;
	seg->seg_bytes = keep;
	seg->seg_durable_bytes = bytes;
	seg->seg_durable_end = seg->seg_base + frames;
	seg->seg_end = seg->seg_base + frames + (certain ? after : 0);
	return 0;
fail:
	snprintf(errbuf, errlen, "%s/%s: recovery: %s", ss->ss_dir,
	    seg->seg_name, strerror(errno));
fail_err:
	scan_free(&sc);
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
	    segment_fsync_name(ss->ss_cf.fsync_mode));
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
