/*
 * subscriber.c: downstream connections.
 *
 * A subscriber sends one line (FCWAL-AUTH/1 for a stock subscriber, live
 * and silent; FCWAL-SUB/1 for a resuming one, with a reply), then only
 * receives. Its cursor is a sequence number. Each refill queues frames
 * from the shared tail (references to chunk bytes, no copy) or, when the
 * cursor is older than the tail, from the segment files (sendfile on plain
 * TCP), up to the subscriber's own high watermark; libevent calls back
 * when the socket has taken enough of it. Nothing a subscriber does can
 * make another wait or make the relay buffer more than its own cap.
 */
#include "autoconfig.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <zstd.h>

#include "auth.h"
#include "clock.h"
#include "fanout.h"
#include "handshake.h"
#include "iopool.h"
#include "segment.h"
#include "log.h"
#include "net.h"
#include "relay.h"
#include "snapshot.h"
#include "stream.h"
#include "subscriber.h"
#include "tls.h"

struct subscriber {
	uint64_t		 sub_id;
	char			 sub_name[24];	/* "sub-42" */
	char			 sub_peer[64];
	struct fanout		*sub_fan;	/* its stream's */
	struct bufferevent	*sub_bev;
	struct net_conn		*sub_src;	/* per-address count */
	int			 sub_state;
	int			 sub_resuming;	/* FCWAL-SUB/1 */
	int			 sub_zstd;
	void			*sub_zc;	/* ZSTD_CCtx */
	int			 sub_zopen;	/* sub_zc has an unfinished frame */
	int			 sub_tls;	/* SUBSCRIBER_TLS_* */
	int			 sub_direct;	/* a refill writes the socket */
	struct handshake	 sub_hs;
	struct event		*sub_timer;	/* auth deadline, flush deadline */
	uint64_t		 sub_start;	/* first frame it asked for */
	uint64_t		 sub_pos;	/* next frame to queue */
	uint64_t		 sub_bytes_queued;
	uint64_t		 sub_connected_ms;
	/*
	 * Reached a frame the store cannot serve: nothing more is queued,
	 * it is closed once what is queued has been written.
	 */
	int			 sub_ending;
	int			 sub_on_disk;	/* reading segment files */
	/* a segment span being read piecewise (TLS, zstd) */
	struct segment_span	 sub_span;
	uint64_t		 sub_span_done;	/* bytes of the span queued */
	int			 sub_has_span;
	/* a full resync: the snapshot's SET frames, sent before sub_pos */
	int			 sub_resync;	/* the reply says snapshot= */
	int			 sub_hs_wait;	/* the store reads its start */
	int			 sub_snap_fd;	/* -1: none (left) */
	uint64_t		 sub_snap_off;
	uint64_t		 sub_snap_len;
	uint64_t		 sub_snap_entries;
	/*
	 * File bytes are never read on the loop: a read (TLS, zstd) or a
	 * warm-up of the page cache (sendfile) runs on the stream's I/O
	 * pool, and nothing more is queued until it is back.
	 */
	struct sub_read		*sub_read;	/* in flight, or NULL */
	struct sub_hold		*sub_hold;	/* read, not all queued yet */
	struct evbuffer_file_segment *sub_fseg;	/* the span's, for sendfile */
	struct evbuffer_file_segment *sub_snap_fseg; /* the snapshot's */
	struct fanout_link	 sub_link;	/* its place in sub_fan's lists */
};

#define SUB_FLUSH_TIMEOUT_MS	2000		/* to write an error reply */
#define SUB_MAX_WRITE		(1024 * 1024)	/* bytes per write callback */
/*
 * ... while it reads segment files: one loop serves the live subscribers
 * and the catching-up ones, and a live frame waits for every write
 * callback the loop runs before its own (a sendfile of 1 MiB, or 1 MiB
 * encrypted for TLS, each).
 */
#define SUB_DISK_MAX_WRITE	(64 * 1024)
#define SUBSCRIBER_ZSTD_LEVEL	1		/* fast: the link is rarely slower */

static struct log_ratelimit sub_refusals = LOG_RATELIMIT_INIT(10, 10);

static void	subscriber_read_cb(struct bufferevent *, void *);
static void	subscriber_write_cb(struct bufferevent *, void *);
static void	subscriber_event_cb(struct bufferevent *, short, void *);

/*
 * The subscriber starts (on) or stops reading segment files: a catching-up
 * subscriber (and one sent a snapshot) writes at most SUB_DISK_MAX_WRITE
 * per write callback.
 */
static void
sub_set_on_disk(struct subscriber *sub, int on)
{
	sub->sub_on_disk = on;
	bufferevent_set_max_single_write(sub->sub_bev, on ?
	    SUB_DISK_MAX_WRITE : SUB_MAX_WRITE);
}

/* The subscriber's stream. */
static struct stream *
sub_stream(const struct subscriber *sub)
{
	return fanout_stream(sub->sub_fan);
}

uint64_t
subscriber_lag(const struct subscriber *sub)
{
	uint64_t s = fanout_sendable(sub->sub_fan);

	return sub->sub_pos < s ? s - sub->sub_pos : 0;
}

/* ---- output: plain, or through one zstd stream ------------------------ */

static int
zstd_push(struct subscriber *sub, const void *data, size_t len,
    ZSTD_EndDirective mode)
{
	struct evbuffer *out = bufferevent_get_output(sub->sub_bev);
	ZSTD_inBuffer in = { data, len, 0 };
	struct evbuffer_iovec v;
	size_t rem;

	do {
		ZSTD_outBuffer ob;

		if (evbuffer_reserve_space(out, 64 * 1024, &v, 1) < 1)
			return -1;
		ob.dst = v.iov_base;
		ob.size = v.iov_len;
		ob.pos = 0;
		rem = ZSTD_compressStream2(sub->sub_zc, &ob, &in, mode);
		if (ZSTD_isError(rem))
			return -1;
		v.iov_len = ob.pos;
		if (evbuffer_commit_space(out, &v, 1) == -1)
			return -1;
	} while (in.pos < in.size || (mode != ZSTD_e_continue && rem != 0));
	sub->sub_zopen = mode != ZSTD_e_end;
	return 0;
}

/*
 * Small spans (a chunk from a small read holds a few frames) are copied
 * into one staging block and queued together: one 16 KiB buffer per
 * block instead of one per span, so TLS writes full records and plain
 * TCP fewer iovecs. Larger spans are referenced, never copied.
 *
 * The block belongs to one refill of one subscriber: subscriber_refill
 * makes it on its stack, bound to that subscriber, and flushes it (or
 * drops it with the subscriber) on its one way out, so staged bytes can
 * never reach another subscriber nor outlive the call.
 *
 * libevent rounds a buffer (its data plus a header of under 128 bytes) up
 * to a power of two: a block of exactly 16 KiB would take 32 KiB, twice
 * over for every subscriber. This size keeps it in one 16 KiB allocation.
 */
#define SUB_STAGE	(16384 - 128)

struct sub_stage {
	struct subscriber	*st_sub;	/* whose bytes these are */
	size_t			 st_len;
	uint8_t			 st_buf[SUB_STAGE];
};

static int
sub_stage_flush(struct sub_stage *st)
{
	int rc;

	if (st->st_len == 0)
		return 0;
	rc = evbuffer_add(bufferevent_get_output(st->st_sub->sub_bev),
	    st->st_buf, st->st_len);
	st->st_len = 0;
	return rc;
}

/* Bytes queued to the subscriber, staged ones included. */
static size_t
sub_queued(const struct sub_stage *st)
{
	return evbuffer_get_length(bufferevent_get_output(
	    st->st_sub->sub_bev)) + st->st_len;
}

/* Queue bytes of a tail chunk. */
static int
sub_emit_chunk(struct sub_stage *st, struct chunk *ch, size_t off,
    size_t len)
{
	struct subscriber *sub = st->st_sub;

	sub->sub_bytes_queued += len;
	sub_stream(sub)->st_stats.sub_bytes_sent += len;
	if (sub->sub_zstd && off == 0 && len == ch->ch_len) {
		/*
		 * A whole chunk: its zstd frame is made once and shared by
		 * every compressing subscriber. The stream stays valid: zstd
		 * streams are frames back to back, so end our own first.
		 */
		if (sub->sub_zopen &&
		    zstd_push(sub, NULL, 0, ZSTD_e_end) == -1)
			return -1;
		if (chunk_zstd(ch, SUBSCRIBER_ZSTD_LEVEL) == -1)
			return -1;
		return chunk_add_zstd_to_evbuffer(
		    bufferevent_get_output(sub->sub_bev), ch);
	}
	if (sub->sub_zstd)
		return zstd_push(sub, ch->ch_data + off, len, ZSTD_e_continue);
	/*
	 * Only while the subscriber's queue is nearly empty: copies are per
	 * subscriber, references are shared. Copying whatever a backlogged
	 * subscriber is owed made 16 x 1 KiB frames 35% slower and 10,000
	 * subscribers take 3.2 GiB instead of 1 GiB (bench/run).
	 */
	if (len < SUB_STAGE &&
	    evbuffer_get_length(bufferevent_get_output(sub->sub_bev)) < 4096) {
		if (st->st_len + len > SUB_STAGE && sub_stage_flush(st) == -1)
			return -1;
		memcpy(st->st_buf + st->st_len, ch->ch_data + off, len);
		st->st_len += len;
		return 0;
	}
	if (sub_stage_flush(st) == -1)
		return -1;
	if ((off > 0 || len < ch->ch_len) && len > CHUNK_COPY_MAX) {
		/*
		 * A reference to part of a chunk would hold all of it: queue
		 * a copy of the part instead, so that a subscriber never holds
		 * more than it has queued. Only a subscriber that starts in
		 * the middle of a chunk, or meets a chunk bigger than its
		 * whole buffer, gets here.
		 */
		struct chunk *part;
		int rc;

		if ((part = chunk_new(len)) == NULL)
			return -1;
		memcpy(part->ch_data, ch->ch_data + off, len);
		part->ch_len = len;
		rc = chunk_add_to_evbuffer(bufferevent_get_output(sub->sub_bev),
		    part, 0, len);
		chunk_unref(part);
		return rc;
	}
	return chunk_add_to_evbuffer(bufferevent_get_output(sub->sub_bev), ch,
	    off, len);
}

/* A segment pinned while a file span is queued, and whose it is. */
struct sub_pin {
	struct stream	*sp_stream;
	void		*sp_pin;
};

static void
sub_unpin_cb(struct evbuffer_file_segment const *seg, int flags, void *arg)
{
	struct sub_pin *p = arg;

	/* the store may be closed at shutdown: it unpins everything itself */
	if (p->sp_stream->st_store != NULL)
		segstore_unpin(p->sp_stream->st_store, p->sp_pin);
	free(p);
}

/*
 * Queue an archived span (a piece of a block the store decompressed on its
 * reader thread) by reference, like a tail chunk: the rest of the piece
 * whole when it fits the room left under the high watermark, with its
 * frame count known from the span, so no frame header is read on the loop
 * (they were walked on the reader thread, and reading them here again
 * cost a cache miss per frame). When it does not fit and bytes are still
 * queued, nothing is cut or copied: returns 1 and the write callback
 * refills once the queue has drained to the low watermark (half the
 * buffer, more than a piece). Only an empty queue with a piece larger
 * than the whole buffer takes whole frames of it.
 */
static int
sub_emit_block(struct sub_stage *st)
{
	struct subscriber *sub = st->st_sub;
	struct segment_span *sp = &sub->sub_span;
	size_t off = sp->sp_offset + sub->sub_span_done, len, q, room;
	size_t hiwat = sub_stream(sub)->st_cfg->subscriber_buffer;
	uint32_t nf;

	q = sub_queued(st);
	room = hiwat > q ? hiwat - q : 1;
	len = sp->sp_len - sub->sub_span_done;
	if (len <= room)
		nf = (uint32_t)(sp->sp_end_seq - sub->sub_pos);
	else if (q > 0)
		return 1;
	else
		len = chunk_cut(sp->sp_chunk, off, room, &nf);
	if (sub_emit_chunk(st, sp->sp_chunk, off, len) == -1)
		return -1;
	sub->sub_span_done += len;
	sub->sub_pos += nf;
	sub_stream(sub)->st_stats.sub_frames_sent += nf;
	if (sub->sub_span_done >= sp->sp_len) {
		segstore_span_release(sub_stream(sub)->st_store, sp);
		sub->sub_has_span = 0;
	}
	return 0;
}

/* ---- file bytes: read or warmed on the I/O pool ----------------------- */

/*
 * One job on the stream's I/O pool for one subscriber. The job owns a
 * duplicate of the file descriptor (closed on the worker), so that the
 * subscriber may go (and unpin its segment) while the job runs: sr_sub is
 * then NULL and the completion only frees the job.
 */
enum { SUB_READ_SPAN = 1, SUB_READ_SNAP };

struct sub_read {
	struct iopool_job	 sr_job;	/* first: the pool's view */
	struct subscriber	*sr_sub;	/* NULL: the subscriber went */
	int			 sr_what;	/* SUB_READ_SPAN, SUB_READ_SNAP */
	int			 sr_warm;	/* sendfile follows: warm only */
	int			 sr_fd;
	uint64_t		 sr_off;
	size_t			 sr_len;
	uint8_t			*sr_buf;	/* the bytes read (!sr_warm) */
	ssize_t			 sr_got;	/* bytes read or warmed, or -1 */
	int			 sr_errno;
};

#define SUB_WARM_WINDOW	(1024 * 1024)	/* sendfile bytes per warm-up */
#define SUB_WARM_PIECE	(256 * 1024)

/*
 * Bring [off, off + len) into the page cache, so that the loop's sendfile
 * of it does not wait on the disk (sendfile reads uncached pages
 * synchronously). Every page of the range is read through the page cache
 * here, resident or not: a resident page may carry the kernel's readahead
 * mark, and the first read that meets it starts the next readahead, whose
 * disk reads that reader then submits (and waits for when the disk's
 * queue is full). Read here, the mark is spent on the worker. The pages
 * go to /dev/null with sendfile (no copy); where the kernel refuses that,
 * they are read with pread into a scratch buffer. Either reports a bad
 * sector as an error, where touching a mapping would raise SIGBUS.
 */
static ssize_t
sub_warm(int fd, uint64_t off, size_t len, int *err)
{
	uint64_t a = off, b = off + len;
	uint8_t *scratch = NULL;
	off_t o;
	ssize_t n;
	int null;

	if ((null = open("/dev/null", O_WRONLY | O_CLOEXEC)) != -1) {
		o = (off_t)a;
		while ((uint64_t)o < b) {
			n = sendfile(null, fd, &o, (size_t)(b - (uint64_t)o));
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1 && (errno == EINVAL || errno == ENOSYS))
				break;		/* pread below */
			if (n <= 0) {
				*err = n == 0 ? EIO : errno;
				close(null);
				return -1;
			}
		}
		close(null);
		a = (uint64_t)o;
	}
	if (a < b && (scratch = malloc(SUB_WARM_PIECE)) == NULL) {
		*err = ENOMEM;
		return -1;
	}
	while (a < b) {
		n = pread(fd, scratch, (size_t)(b - a > SUB_WARM_PIECE ?
		    SUB_WARM_PIECE : b - a), (off_t)a);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			*err = n == 0 ? EIO : errno;
			free(scratch);
			return -1;
		}
		a += (uint64_t)n;
	}
	free(scratch);
	return (ssize_t)len;
}

/* Worker thread: read (or warm) the range. Touches nothing but the job. */
static void
sub_read_work(struct iopool_job *j)
{
	struct sub_read *r = (struct sub_read *)j;
	size_t have = 0;
	ssize_t n;

	r->sr_errno = 0;
	if (r->sr_warm)
		r->sr_got = sub_warm(r->sr_fd, r->sr_off, r->sr_len,
		    &r->sr_errno);
	else {
		while (have < r->sr_len) {
			n = pread(r->sr_fd, r->sr_buf + have, r->sr_len - have,
			    (off_t)(r->sr_off + have));
			if (n == -1 && errno == EINTR)
				continue;
			if (n <= 0) {
				r->sr_errno = n == 0 ? EIO : errno;
				break;
			}
			have += (size_t)n;
		}
		r->sr_got = r->sr_errno != 0 ? -1 : (ssize_t)have;
	}
	close(r->sr_fd);
	r->sr_fd = -1;
}

static void
sub_read_free(struct sub_read *r)
{
	if (r->sr_fd != -1)
		close(r->sr_fd);
	free(r->sr_buf);
	free(r);
}

static void	sub_read_done(struct iopool_job *);

/*
 * Read (or, for sendfile, warm) [off, off + len) of fd on the I/O pool.
 * The subscriber waits for it: 0 once queued, -1 with errno.
 */
static int
sub_read_start(struct subscriber *sub, int what, int warm, int fd,
    uint64_t off, size_t len)
{
	struct sub_read *r;

	WR_ASSERT(sub->sub_read == NULL);
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return -1;
	r->sr_job.ij_work = sub_read_work;
	r->sr_job.ij_done = sub_read_done;
	r->sr_sub = sub;
	r->sr_what = what;
	r->sr_warm = warm;
	r->sr_off = off;
	r->sr_len = len;
	r->sr_fd = -1;
	if ((!warm && (r->sr_buf = malloc(len)) == NULL) ||
	    (r->sr_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) == -1) {
		sub_read_free(r);
		return -1;
	}
	sub->sub_read = r;
	iopool_submit(sub_stream(sub)->st_io, &r->sr_job);
	return 0;
}

/* n more bytes of the span are queued: count them, finish the span. */
static void
sub_span_queued(struct subscriber *sub, uint64_t n)
{
	struct segment_span *sp = &sub->sub_span;

	sub->sub_span_done += n;
	sub->sub_bytes_queued += n;
	sub_stream(sub)->st_stats.sub_bytes_sent += n;
	if (sub->sub_span_done < sp->sp_len)
		return;
	if (sub->sub_fseg != NULL) {
		/* the buffer's references keep the pin until sent */
		evbuffer_file_segment_free(sub->sub_fseg);
		sub->sub_fseg = NULL;
	} else
		segstore_unpin(sub_stream(sub)->st_store, sp->sp_pin);
	sp->sp_pin = NULL;
	sub->sub_has_span = 0;
	sub_stream(sub)->st_stats.sub_frames_sent += sp->sp_end_seq -
	    sub->sub_pos;
	sub->sub_pos = sp->sp_end_seq;
}

/* n more bytes of the snapshot are queued: count them, finish it. */
static void
sub_snap_queued(struct subscriber *sub, uint64_t n)
{
	sub->sub_snap_off += n;
	sub->sub_bytes_queued += n;
	sub_stream(sub)->st_stats.sub_bytes_sent += n;
	if (sub->sub_snap_off < sub->sub_snap_len)
		return;
	if (sub->sub_snap_fseg != NULL) {
		evbuffer_file_segment_free(sub->sub_snap_fseg);
		sub->sub_snap_fseg = NULL;
	}
	if (sub->sub_snap_fd != -1)
		close(sub->sub_snap_fd);
	sub->sub_snap_fd = -1;
	sub_set_on_disk(sub, sub->sub_on_disk);
	sub_stream(sub)->st_stats.sub_frames_sent += sub->sub_snap_entries;
	log_info("%s: snapshot queued (%" PRIu64 " SET frames, %" PRIu64
	    " bytes); the stream follows from sequence %" PRIu64,
	    sub->sub_name, sub->sub_snap_entries, sub->sub_snap_len,
	    sub->sub_pos);
	sub->sub_snap_len = 0;
}

/*
 * Bytes a read brought (TLS, zstd), queued a piece per write callback:
 * encrypting or compressing a whole read at once would hold the loop, and
 * every live frame behind it, for 256 KiB of work per subscriber. Pieces
 * are queued by reference; the buffer goes with the last one.
 */
struct sub_hold {
	unsigned	 sh_refs;	/* the subscriber's, and each piece's */
	uint8_t		*sh_buf;
	size_t		 sh_len;
	size_t		 sh_off;	/* queued so far */
};

static void
sub_hold_unref(struct sub_hold *h)
{
	if (--h->sh_refs > 0)
		return;
	free(h->sh_buf);
	free(h);
}

static void
sub_hold_cleanup_cb(const void *data, size_t len, void *arg)
{
	sub_hold_unref(arg);
}

/* Queue the next piece of the held bytes: 0, or -1 with errno. */
static int
sub_feed(struct subscriber *sub)
{
	struct sub_hold *h = sub->sub_hold;
	size_t n = h->sh_len - h->sh_off;

	if (n > SUB_DISK_MAX_WRITE)
		n = SUB_DISK_MAX_WRITE;
	if (sub->sub_zstd) {
		if (zstd_push(sub, h->sh_buf + h->sh_off, n,
		    ZSTD_e_continue) == -1)
			return -1;
	} else {
		h->sh_refs++;
		if (evbuffer_add_reference(bufferevent_get_output(sub->sub_bev),
		    h->sh_buf + h->sh_off, n, sub_hold_cleanup_cb, h) == -1) {
			h->sh_refs--;
			return -1;
		}
	}
	h->sh_off += n;
	if (h->sh_off == h->sh_len) {
		sub->sub_hold = NULL;
		sub_hold_unref(h);
	}
	return 0;
}

/* Queue what a finished job brought: 0, or -1 with errno. */
static int
sub_read_apply(struct subscriber *sub, struct sub_read *r)
{
	struct evbuffer *out = bufferevent_get_output(sub->sub_bev);
	struct evbuffer_file_segment *seg;
	struct sub_hold *h;
	uint64_t segoff;
	size_t done, n;

	if (r->sr_got < 0 || (size_t)r->sr_got != r->sr_len) {
		errno = r->sr_got < 0 ? r->sr_errno : EIO;
		return -1;
	}
	if (r->sr_warm) {
		/* the pages are cached now: sendfile them from the loop */
		if (r->sr_what == SUB_READ_SPAN) {
			seg = sub->sub_fseg;
			segoff = sub->sub_span_done;
		} else {
			seg = sub->sub_snap_fseg;
			segoff = sub->sub_snap_off;
		}
		/*
		 * libevent sends a file chain whole, whatever the write
		 * limit: in pieces, one sendfile per write callback stays
		 * within SUB_DISK_MAX_WRITE.
		 */
		for (done = 0; done < r->sr_len; done += n) {
			n = r->sr_len - done > SUB_DISK_MAX_WRITE ?
			    SUB_DISK_MAX_WRITE : r->sr_len - done;
			if (evbuffer_add_file_segment(out, seg,
			    (ev_off_t)(segoff + done), (ev_off_t)n) == -1)
				return -1;
		}
	} else {
		/* queued from sub_fill, a piece at a time, with no copy */
		WR_ASSERT(sub->sub_hold == NULL);
		if ((h = malloc(sizeof(*h))) == NULL)
			return -1;
		h->sh_refs = 1;
		h->sh_buf = r->sr_buf;
		h->sh_len = r->sr_len;
		h->sh_off = 0;
		r->sr_buf = NULL;
		sub->sub_hold = h;
	}
	if (r->sr_what == SUB_READ_SPAN)
		sub_span_queued(sub, r->sr_len);
	else
		sub_snap_queued(sub, r->sr_len);
	return 0;
}

/* Loop thread: a read or warm-up is back. */
static void
sub_read_done(struct iopool_job *j)
{
	struct sub_read *r = (struct sub_read *)j;
	struct subscriber *sub = r->sr_sub;

	if (sub == NULL) {
		sub_read_free(r);	/* its subscriber is gone */
		return;
	}
	WR_ASSERT(sub->sub_read == r);
	sub->sub_read = NULL;
	if (sub->sub_state != SUB_STREAM) {
		sub_read_free(r);
		return;
	}
	if (sub_read_apply(sub, r) == -1) {
		if (r->sr_what == SUB_READ_SNAP)
			subscriber_close(sub, "cannot read the snapshot at "
			    "offset %" PRIu64 ": %s; disconnected", r->sr_off,
			    strerror(errno));
		else
			subscriber_close(sub, "cannot read the segment file "
			    "of sequence %" PRIu64 " at offset %" PRIu64 ": %s; "
			    "disconnected", sub->sub_span.sp_seq, r->sr_off,
			    strerror(errno));
		sub_read_free(r);
		return;
	}
	sub_read_free(r);
	subscriber_refill(sub);
}

/*
 * Queue the next part of the current segment span, or start reading it.
 * Plain TCP sends it with sendfile, a window at a time, each window first
 * warmed into the page cache on the I/O pool; TLS and zstd read it there
 * piecewise. Returns 0 when bytes were queued, 1 while a job is in flight
 * (its completion refills) or an archived piece waits for room (the write
 * callback refills), -1 with errno.
 */
static int
sub_emit_span(struct sub_stage *st)
{
	struct subscriber *sub = st->st_sub;
	struct segment_span *sp = &sub->sub_span;
	uint64_t left = sp->sp_len - sub->sub_span_done;
	size_t n;

	if (sp->sp_chunk != NULL)
		return sub_emit_block(st);
	if (sub->sub_read != NULL)
		return 1;
	/* what was staged comes first */
	if (sub_stage_flush(st) == -1)
		return -1;
	if (!sub->sub_zstd && !net_bev_is_tls(sub->sub_bev)) {
		if (sub->sub_fseg == NULL) {
			struct evbuffer_file_segment *seg;
			struct sub_pin *pin;

			if ((pin = malloc(sizeof(*pin))) == NULL)
				return -1;
			pin->sp_stream = sub_stream(sub);
			pin->sp_pin = sp->sp_pin;
			seg = evbuffer_file_segment_new(sp->sp_fd,
			    (ev_off_t)sp->sp_offset, (ev_off_t)sp->sp_len,
			    EVBUF_FS_DISABLE_LOCKING);
			if (seg == NULL) {
				free(pin);
				return -1;
			}
			/* the pin lives as long as a buffer holds the bytes */
			evbuffer_file_segment_add_cleanup_cb(seg, sub_unpin_cb,
			    pin);
			sub->sub_fseg = seg;
		}
		n = left > SUB_WARM_WINDOW ? SUB_WARM_WINDOW : (size_t)left;
		if (sub_read_start(sub, SUB_READ_SPAN, 1, sp->sp_fd,
		    sp->sp_offset + sub->sub_span_done, n) == -1)
			return -1;
		return 1;
	}
	n = left > FANOUT_PIECE ? FANOUT_PIECE : (size_t)left;
	if (sub_read_start(sub, SUB_READ_SPAN, 0, sp->sp_fd, sp->sp_offset +
	    sub->sub_span_done, n) == -1)
		return -1;
	return 1;
}

/*
 * A reader that reached a frame the store cannot serve (a corrupt frame in
 * a segment file): it gets every frame before it, then is disconnected at
 * that frame boundary. Everyone else keeps streaming.
 */
static void
sub_corrupt(struct subscriber *sub, const struct segstore_corrupt *c)
{
	sub_stream(sub)->st_stats.sub_disconnected_corrupt++;
	log_warnx("%s: %s subscriber %s reached sequence %" PRIu64 ", which "
	    "cannot be served: %s is corrupt at offset %" PRIu64 " (frames %"
	    PRIu64 " to %" PRIu64 " unreadable); disconnecting it once the "
	    "frames before it are sent", sub->sub_name, sub->sub_resuming ?
	    "resuming" : "stock", sub->sub_peer, sub->sub_pos, c->sc_name,
	    c->sc_offset, c->sc_first, c->sc_end - 1);
	sub->sub_ending = 1;
}

/*
 * Queue the snapshot's SET frames (a full resync), before anything at
 * sub_pos, the way sub_emit_span queues a span: sendfile of windows
 * warmed on the I/O pool for plain TCP, reads there for TLS and zstd.
 * Returns 0, 1 while a job is in flight, or -1 with errno.
 */
static int
sub_emit_snapshot(struct sub_stage *st)
{
	struct subscriber *sub = st->st_sub;
	uint64_t left = sub->sub_snap_len - sub->sub_snap_off;
	size_t n;
	int fd;

	if (sub->sub_read != NULL)
		return 1;
	if (sub_stage_flush(st) == -1)
		return -1;
	if (left == 0) {
		sub_snap_queued(sub, 0);	/* an empty snapshot */
		return 0;
	}
	/* a snapshot's bytes are file bytes too: the same share of the loop */
	bufferevent_set_max_single_write(sub->sub_bev, SUB_DISK_MAX_WRITE);
	if (!sub->sub_zstd && !net_bev_is_tls(sub->sub_bev)) {
		if (sub->sub_snap_fseg == NULL) {
			/* the segment owns a descriptor of its own */
			if ((fd = fcntl(sub->sub_snap_fd, F_DUPFD_CLOEXEC,
			    0)) == -1)
				return -1;
			sub->sub_snap_fseg = evbuffer_file_segment_new(fd, 0,
			    (ev_off_t)sub->sub_snap_len,
			    EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_LOCKING);
			if (sub->sub_snap_fseg == NULL) {
				close(fd);
				return -1;
			}
		}
		n = left > SUB_WARM_WINDOW ? SUB_WARM_WINDOW : (size_t)left;
		if (sub_read_start(sub, SUB_READ_SNAP, 1, sub->sub_snap_fd,
		    sub->sub_snap_off, n) == -1)
			return -1;
		return 1;
	}
	n = left > FANOUT_PIECE ? FANOUT_PIECE : (size_t)left;
	if (sub_read_start(sub, SUB_READ_SNAP, 0, sub->sub_snap_fd,
	    sub->sub_snap_off, n) == -1)
		return -1;
	return 1;
}

/* What sub_fill did. */
#define SUB_FILL_OK	0
#define SUB_FILL_ERROR	(-1)	/* errno set: close the subscriber */
#define SUB_FILL_CLOSED	1	/* closed it (position gone, file unreadable) */

/* Stage and queue frames for st->st_sub up to its high watermark. */
static int
sub_fill(struct sub_stage *st, int *full)
{
	struct subscriber *sub = st->st_sub;
	uint64_t limit = fanout_sendable(sub->sub_fan);
	size_t hiwat = sub_stream(sub)->st_cfg->subscriber_buffer;
	int fed = 0, rc;

	*full = 0;
	while (!*full && sub_queued(st) < hiwat &&
	    (sub->sub_pos < limit || sub->sub_has_span ||
	    sub->sub_snap_len > 0 || sub->sub_hold != NULL)) {
		struct segstore_state ss;
		struct segstore_corrupt bad;
		struct chunk *ch;

		if (sub->sub_hold != NULL) {
			/* read bytes first, one piece per write callback */
			if (fed)
				break;
			if (sub_stage_flush(st) == -1 || sub_feed(sub) == -1)
				return SUB_FILL_ERROR;
			fed = 1;
			continue;
		}
		if (sub->sub_snap_len > 0) {
			if ((rc = sub_emit_snapshot(st)) == -1)
				return SUB_FILL_ERROR;
			if (rc == 1)
				break;	/* its read completes on the loop */
			continue;
		}
		if (sub->sub_has_span) {
			if ((rc = sub_emit_span(st)) == -1)
				return SUB_FILL_ERROR;
			if (rc == 1) {
				/* its read completes on the loop, or no room */
				*full = sub->sub_span.sp_chunk != NULL;
				break;
			}
			continue;
		}
		if ((ch = fanout_find(sub->sub_fan, sub->sub_pos)) != NULL) {
			size_t off = chunk_offset_of(ch, sub->sub_pos);

			if (sub->sub_on_disk) {
				sub_set_on_disk(sub, 0);
				log_info("%s: caught up with the in-memory tail "
				    "at sequence %" PRIu64, sub->sub_name,
				    sub->sub_pos);
			}
			while (ch != NULL && CHUNK_END(ch) <= limit &&
			    sub_queued(st) < hiwat) {
				size_t len = ch->ch_len - off;
				size_t room = hiwat - sub_queued(st);
				uint64_t nf = CHUNK_END(ch) - sub->sub_pos;

				/*
				 * A reference to part of a chunk holds all of
				 * it: while the queue holds anything, only the
				 * rest of a chunk that fits is queued, so what a
				 * stalled subscriber holds stays within its cap.
				 * An empty queue takes the whole frames that fit
				 * (at least one) of a chunk bigger than the room.
				 */
				if (len > room) {
					uint32_t k;

					if (sub_queued(st) > 0) {
						*full = 1;
						break;
					}
					len = chunk_cut(ch, off, room, &k);
					nf = k;
				}
				if (sub_emit_chunk(st, ch, off, len) == -1)
					return SUB_FILL_ERROR;
				sub_stream(sub)->st_stats.sub_frames_sent += nf;
				sub->sub_pos += nf;
				if (sub->sub_pos < CHUNK_END(ch)) {
					off += len;
					continue;
				}
				off = 0;
				ch = TAILQ_NEXT(ch, ch_entry);
			}
			if (*full)
				break;	/* the write callback refills */
			if (ch != NULL && CHUNK_END(ch) > limit &&
			    ch->ch_seq < limit) {
				/* durability ends inside a chunk: wait */
				break;
			}
			continue;
		}
		/* older than the tail: the segment files */
		rc = segstore_locate(sub_stream(sub)->st_store, sub->sub_pos,
		    &sub->sub_span);
		if (rc == SEGSTORE_PENDING)
			break;	/* an archived block: woken once it is read */
		if (rc == SEGSTORE_READERR) {
			/* it resumes from here once the disk reads again */
			subscriber_close(sub, "cannot read the segment file of "
			    "sequence %" PRIu64 ": %s; disconnected",
			    sub->sub_pos, strerror(errno));
			return SUB_FILL_CLOSED;
		}
		if (rc == -1) {
			segstore_poll(sub_stream(sub)->st_store, &ss);
			if (sub->sub_pos < ss.ss_earliest) {
				sub_stream(sub)->st_stats.sub_disconnected_gone++;
				subscriber_close(sub, "its position %" PRIu64
				    " was deleted by retention (earliest is now %"
				    PRIu64 ")", sub->sub_pos, ss.ss_earliest);
				return SUB_FILL_CLOSED;
			}
			if (segstore_corrupt_at(sub_stream(sub)->st_store, sub->sub_pos,
			    &bad) == 1)
				sub_corrupt(sub, &bad);
			break;
		}
		if (!sub->sub_on_disk) {
			sub_set_on_disk(sub, 1);
			log_info("%s: behind the in-memory tail, reading "
			    "segment files from sequence %" PRIu64,
			    sub->sub_name, sub->sub_pos);
		}
		sub_stream(sub)->st_stats.sub_disk_reads++;
		sub->sub_has_span = 1;
		sub->sub_span_done = 0;
	}
	return SUB_FILL_OK;
}

/* A subscriber being disconnected at a corrupt frame: is all sent? */
static void
sub_end_if_sent(struct subscriber *sub)
{
	if (evbuffer_get_length(bufferevent_get_output(sub->sub_bev)) == 0)
		subscriber_close(sub, "disconnected: every frame before the "
		    "corrupt one was sent");
}

/*
 * A plain TCP subscriber's refill writes what it queued to the socket
 * itself, in the loop pass that made the frames sendable. Left to
 * libevent, the bytes would wait for the next pass (an epoll_wait that
 * reports the socket writable, after whatever else is ready: the
 * upstream's next read, the other subscribers), and cost two epoll_ctl
 * to add and drop the write event. The write event is on only while
 * bytes are left over (the socket is full): 1 when the refill writes
 * the socket itself, 0 when libevent does.
 */
static int
sub_direct_begin(struct subscriber *sub)
{
	struct bufferevent *bev = sub->sub_bev;

	if (!sub->sub_direct)
		return 0;
	/* an empty output has no write event pending: no system call */
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
	    (bufferevent_get_enabled(bev) & EV_WRITE))
		bufferevent_disable(bev, EV_WRITE);
	return !(bufferevent_get_enabled(bev) & EV_WRITE);
}

/*
 * Write the queued bytes now, as much as a write callback would (its
 * max_single_write: less while reading segment files). What the socket
 * does not take is left to libevent (the write event, whose callback
 * refills). When everything went and there is more to queue (more), the
 * next refill comes from the write callback, run from the loop as
 * libevent would after a write. 0, or -1 with errno set (the connection
 * failed).
 */
static int
sub_direct_write(struct subscriber *sub, int more)
{
	struct bufferevent *bev = sub->sub_bev;
	struct evbuffer *out = bufferevent_get_output(bev);
	int n, err = 0;

	if (evbuffer_get_length(out) > 0) {
		/* libevent keeps its start frozen but while it writes */
		evbuffer_unfreeze(out, 1);
		if ((n = evbuffer_write_atmost(out, bufferevent_getfd(bev),
		    bufferevent_get_max_single_write(bev))) == -1)
			err = errno;
		evbuffer_freeze(out, 1);
		if (n == -1 && err != EAGAIN && err != EWOULDBLOCK &&
		    err != EINTR) {
			errno = err;
			return -1;
		}
	}
	if (evbuffer_get_length(out) > 0)
		return bufferevent_enable(bev, EV_WRITE);
	if (more)
		bufferevent_trigger(bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
	return 0;
}

void
subscriber_refill(struct subscriber *sub)
{
	struct sub_stage st;
	size_t queued, hiwat;
	int full, more, rc, direct;

	if (sub->sub_state != SUB_STREAM || sub->sub_ending)
		return;
	direct = sub_direct_begin(sub);
	st.st_sub = sub;
	st.st_len = 0;
	rc = sub_fill(&st, &full);
	/* the one way out: the staged bytes are queued or die with sub */
	if (rc == SUB_FILL_CLOSED)
		return;
	if (rc == SUB_FILL_OK && (sub_stage_flush(&st) == -1 ||
	    (sub->sub_zstd && sub->sub_zopen &&
	    zstd_push(sub, NULL, 0, ZSTD_e_flush) == -1)))
		rc = SUB_FILL_ERROR;
	if (rc == SUB_FILL_ERROR) {
		subscriber_close(sub, "cannot queue data: %s", strerror(errno));
		return;
	}
	WR_ASSERT(st.st_len == 0);
	queued = evbuffer_get_length(bufferevent_get_output(sub->sub_bev));
	hiwat = sub_stream(sub)->st_cfg->subscriber_buffer;
	/*
	 * More to queue once this is written: its write callback refills
	 * (a read in flight refills when it is back).
	 */
	more = full || queued >= hiwat || sub->sub_hold != NULL ||
	    ((sub->sub_has_span || sub->sub_snap_len > 0) &&
	    sub->sub_read == NULL);
	if (direct && sub_direct_write(sub, more) == -1) {
		subscriber_close(sub, "connection error: %s", strerror(errno));
		return;
	}
	if (sub->sub_ending) {
		sub_end_if_sent(sub);
		return;
	}
	/*
	 * Not held back by its own buffer: nothing more can be queued until
	 * new frames become sendable, so wait for fanout_advance.
	 */
	if (!full && queued < hiwat && !sub->sub_has_span &&
	    sub->sub_snap_len == 0 && sub->sub_hold == NULL &&
	    !fanout_waiting(&sub->sub_link))
		fanout_wait(sub->sub_fan, &sub->sub_link);
}

/* ---- handshake ------------------------------------------------------- */

static void
sub_arm_timer(struct subscriber *sub, unsigned ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	if (sub->sub_timer != NULL)
		evtimer_add(sub->sub_timer, &tv);
}

static void	sub_refuse(struct subscriber *, const char *, const char *, ...)
		    __attribute__((__format__(__printf__, 3, 4)));

/* Reply with an error line, then close once it is written. */
static void
sub_refuse(struct subscriber *sub, const char *code, const char *fmt, ...)
{
	char text[256], line[HANDSHAKE_LINE_MAX + 2];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused %s: %s %s",
	    sub->sub_name, sub->sub_peer, code, text);
	handshake_format_err(line, sizeof(line), code, text);
	bufferevent_write(sub->sub_bev, line, strlen(line));
	bufferevent_disable(sub->sub_bev, EV_READ);
	sub->sub_state = SUB_FLUSH;
	sub_arm_timer(sub, SUB_FLUSH_TIMEOUT_MS);
}

static int
subscribe_required(const struct stream *st)
{
	return st->st_tokens != NULL &&
	    st->st_tokens->at_subscribe.ts_count > 0;
}

/*
 * Who encrypts a TLS subscriber's bytes, known once the handshake is done:
 * the kernel (kTLS) or OpenSSL. Counted, and said once per stream and
 * path, so that an operator sees which one the listener uses.
 */
static void
sub_tls_path(struct subscriber *sub)
{
	struct stream *st = sub_stream(sub);
	const char *cipher = tls_bev_cipher(sub->sub_bev);

	if (tls_bev_ktls_send(sub->sub_bev)) {
		sub->sub_tls = SUBSCRIBER_TLS_KTLS;
		st->st_stats.sub_tls_ktls++;
	} else {
		sub->sub_tls = SUBSCRIBER_TLS_OPENSSL;
		st->st_stats.sub_tls_openssl++;
	}
	if (st->st_tls_logged & (1 << sub->sub_tls))
		return;
	st->st_tls_logged |= 1 << sub->sub_tls;
	if (sub->sub_tls == SUBSCRIBER_TLS_KTLS)
		log_info("%s: TLS subscribers of stream %s are sent with kernel "
		    "TLS (kTLS, %s): the kernel frames and encrypts what the "
		    "relay writes", sub->sub_name, st->st_name,
		    cipher ? cipher : "?");
	else
		log_info("%s: TLS subscribers of stream %s are encrypted by "
		    "OpenSSL in the relay (%s); kTLS is not in use: %s",
		    sub->sub_name, st->st_name, cipher ? cipher : "?",
		    tls_ktls_missing());
}

static void
sub_start(struct subscriber *sub, uint64_t start)
{
	fanout_start(sub->sub_fan, &sub->sub_link);
	sub_stream(sub)->st_stats.sub_accepted++;
	evtimer_del(sub->sub_timer);
	sub->sub_state = SUB_STREAM;
	sub->sub_start = sub->sub_pos = start;
	if (net_bev_is_tls(sub->sub_bev))
		sub_tls_path(sub);
	log_info("%s: %s subscriber %s from sequence %" PRIu64 "%s",
	    sub->sub_name, sub->sub_resuming ? "resuming" : "stock",
	    sub->sub_peer, start, sub->sub_zstd ? " (zstd)" : "");
	if (sub_stream(sub)->st_cfg->subscriber_timeout_ms > 0) {
		struct timeval tv = {
			sub_stream(sub)->st_cfg->subscriber_timeout_ms / 1000,
			(sub_stream(sub)->st_cfg->subscriber_timeout_ms % 1000) * 1000
		};
		bufferevent_set_timeouts(sub->sub_bev, NULL, &tv);
	}
	bufferevent_setwatermark(sub->sub_bev, EV_WRITE,
	    sub_stream(sub)->st_cfg->subscriber_buffer / 2, 0);
	sub->sub_direct = !net_bev_is_tls(sub->sub_bev) &&
	    bufferevent_getfd(sub->sub_bev) != -1;
	bufferevent_enable(sub->sub_bev, EV_WRITE);
	subscriber_refill(sub);
}

/*
 * Is the first frame a resuming subscriber asked for unreadable? A sealed
 * segment is checked the first time it is read: have it read now, so that
 * the reply can say so instead of an OK followed by a disconnection.
 * 1 (and *bad) when it is, 0 when not; SUB_START_PENDING: the check
 * runs on the I/O pool, the handshake is taken up again once it is done
 * (subscriber_handshake_resume).
 */
#define SUB_START_PENDING	2
static int
sub_start_corrupt(struct subscriber *sub, uint64_t start,
    struct segstore_corrupt *bad)
{
	struct segment_span sp;
	int rc;

	if (start >= fanout_sendable(sub->sub_fan) ||
	    fanout_find(sub->sub_fan, start) != NULL)
		return 0;
	rc = segstore_locate(sub_stream(sub)->st_store, start, &sp);
	if (rc == 0) {
		segstore_span_release(sub_stream(sub)->st_store, &sp);
		return 0;
	}
	if (rc == SEGSTORE_PENDING)
		return SUB_START_PENDING;
	if (rc == SEGSTORE_READERR)
		return 0;	/* streaming finds it again and says so */
	return segstore_corrupt_at(sub_stream(sub)->st_store, start, bad);
}

/*
 * Pick the stream: FCWAL-SUB/1 stream=NAME names it (a stream served on
 * this listener); on a listener several streams share, a line without it
 * goes to the stream whose subscribe tokens hold its token. The
 * subscriber then moves to that stream's fan-out. -1: refused.
 */
static int
sub_route(struct subscriber *sub, const struct handshake_req *req)
{
	const char *addr = sub_stream(sub)->st_cfg->listen;
	struct stream *st, *to = NULL;

	if (req->hr_stream[0] != '\0') {
		to = relay_stream(req->hr_stream);
		if (to == NULL || to->st_fan == NULL || to->st_cfg->listen ==
		    NULL || addr == NULL || strcmp(to->st_cfg->listen,
		    addr) != 0) {
			sub_stream(sub)->st_stats.sub_rejected_request++;
			sub_refuse(sub, "bad-request", "unknown stream");
			return -1;
		}
	} else if (fanout_routed(sub->sub_fan)) {
		TAILQ_FOREACH(st, &relay->r_streams, st_entry)
			if (st->st_fan != NULL && st->st_cfg->listen != NULL &&
			    strcmp(st->st_cfg->listen, addr) == 0 &&
			    subscribe_required(st) && tokenset_match(
			    &st->st_tokens->at_subscribe, req->hr_token,
			    req->hr_token_len)) {
				to = st;
				break;
			}
		if (to == NULL) {
			sub_stream(sub)->st_stats.sub_rejected_auth++;
			if (sub->sub_resuming)
				sub_refuse(sub, "auth", "not a subscribe token "
				    "of any stream here (or say stream=NAME)");
			else {
				log_limited(&sub_refusals, LOG_LEVEL_WARN,
				    "%s: refused %s: not a subscribe token of "
				    "any stream on this listener", sub->sub_name,
				    sub->sub_peer);
				subscriber_close(sub, NULL);
			}
			return -1;
		}
	}
	if (to != NULL && to->st_fan != sub->sub_fan) {
		fanout_move(sub->sub_fan, to->st_fan, &sub->sub_link);
		sub->sub_fan = to->st_fan;
		log_debug("%s: routed to stream %s", sub->sub_name,
		    to->st_name);
	}
	return 0;
}

/*
 * A full resync: the newest snapshot's SET frames, then the stream from
 * the sequence after it. With no snapshot, a store that still holds the
 * stream from sequence 0 serves it whole (an empty snapshot). 0 with
 * *start, or -1 after refusing the subscriber.
 */
static int
sub_snapshot_open(struct subscriber *sub, const struct segstore_state *st,
    uint64_t *start)
{
	struct stream *strm = sub_stream(sub);
	struct snapshot_info si;
	struct stat sb;
	char path[PATH_MAX];
	int fd;

	sub->sub_resync = 1;
	if (!snapshotter_current(strm->st_snap, &si)) {
		if (st->ss_earliest == 0) {
			*start = 0;
			return 0;
		}
		strm->st_stats.sub_rejected_request++;
		sub_refuse(sub, "gone", "earliest=%" PRIu64 " and no snapshot "
		    "covers the frames before it", st->ss_earliest);
		return -1;
	}
	if (si.si_covered < st->ss_earliest) {
		strm->st_stats.sub_rejected_request++;
		sub_refuse(sub, "gone", "earliest=%" PRIu64 " and the newest "
		    "snapshot ends at %" PRIu64 " (snapshots are off; "
		    "retention went past it)", st->ss_earliest,
		    si.si_covered);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/%s", strm->st_cfg->data_dir,
	    si.si_frames);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &sb) == -1) {
		log_warn("%s: %s", sub->sub_name, path);
		if (fd != -1)
			close(fd);
		strm->st_stats.sub_rejected_busy++;
		sub_refuse(sub, "busy", "the snapshot is being replaced; try "
		    "again");
		return -1;
	}
	sub->sub_snap_fd = fd;
	sub->sub_snap_off = 0;
	sub->sub_snap_len = (uint64_t)sb.st_size;
	sub->sub_snap_entries = si.si_entries;
	*start = si.si_covered;
	log_info("%s: full resync from %s (%" PRIu64 " keys, timestamp %"
	    PRIu64 "), then the stream from sequence %" PRIu64, sub->sub_name,
	    si.si_name, si.si_entries, si.si_ts, si.si_covered);
	return 0;
}

static void
sub_handshake(struct subscriber *sub)
{
	struct evbuffer *in = bufferevent_get_input(sub->sub_bev);
	struct handshake_req req;
	struct segstore_state sst, *st = &sst;
	struct segstore_corrupt bad;
	struct fanout_status fs;
	char err[160], line[HANDSHAKE_LINE_MAX + 2];
	uint64_t start;
	int rc;

	rc = handshake_feed_evbuffer(&sub->sub_hs, in);
	if (rc == HANDSHAKE_TOO_LONG) {
		sub_stream(sub)->st_stats.sub_rejected_request++;
		log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused %s: "
		    "line longer than 1023 bytes", sub->sub_name, sub->sub_peer);
		subscriber_close(sub, NULL);
		return;
	}
	if (!handshake_done(&sub->sub_hs))
		return;
	if (handshake_parse(&sub->sub_hs, &req, err, sizeof(err)) == -1) {
		sub_stream(sub)->st_stats.sub_rejected_request++;
		if (handshake_is_sub(&sub->sub_hs))
			sub_refuse(sub, "bad-request", "%s", err);
		else {
			log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused "
			    "%s: %s", sub->sub_name, sub->sub_peer, err);
			subscriber_close(sub, NULL);
		}
		return;
	}
	sub->sub_resuming = req.hr_kind == HANDSHAKE_SUB;
	if (sub_route(sub, &req) == -1)
		return;
	if (subscribe_required(sub_stream(sub)) && !tokenset_match(
	    &sub_stream(sub)->st_tokens->at_subscribe, req.hr_token, req.hr_token_len)) {
		sub_stream(sub)->st_stats.sub_rejected_auth++;
		if (sub->sub_resuming)
			sub_refuse(sub, "auth", "not a subscribe token");
		else {
			/* the cache closes without a word: so do we */
			log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused "
			    "%s: not a subscribe token", sub->sub_name,
			    sub->sub_peer);
			subscriber_close(sub, NULL);
		}
		return;
	}
	fanout_status(sub->sub_fan, &fs);
	if (fs.fs_subscribers >= sub_stream(sub)->st_cfg->max_subscribers) {
		sub_stream(sub)->st_stats.sub_rejected_busy++;
		if (sub->sub_resuming)
			sub_refuse(sub, "busy", "%u subscribers connected, the "
			    "limit", fs.fs_subscribers);
		else {
			log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused "
			    "%s: %u subscribers connected, the limit",
			    sub->sub_name, sub->sub_peer, fs.fs_subscribers);
			subscriber_close(sub, NULL);
		}
		return;
	}
	if (!sub_stream(sub)->st_positioned) {
		/* its numbers would change when it adopts the upstream's */
		sub_stream(sub)->st_stats.sub_rejected_busy++;
		if (sub->sub_resuming)
			sub_refuse(sub, "busy", "this relay has not yet taken "
			    "its positions from its upstream");
		else {
			log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused "
			    "%s: not yet positioned by the upstream",
			    sub->sub_name, sub->sub_peer);
			subscriber_close(sub, NULL);
		}
		return;
	}
	segstore_poll(sub_stream(sub)->st_store, st);
	if (!sub->sub_resuming) {
		sub_start(sub, st->ss_next);
		return;
	}
	if (req.hr_has_epoch && req.hr_epoch != segstore_epoch(sub_stream(sub)->st_store)) {
		sub_stream(sub)->st_stats.sub_rejected_request++;
		sub_refuse(sub, "epoch", "epoch is %016" PRIx64 ", not %016" PRIx64
		    ": sequence numbers no longer name the same frames",
		    segstore_epoch(sub_stream(sub)->st_store), req.hr_epoch);
		return;
	}
	switch (req.hr_from_kind) {
	case HANDSHAKE_FROM_EARLIEST:
		start = st->ss_earliest;
		break;
	case HANDSHAKE_FROM_LATEST:
		start = st->ss_next;
		break;
	case HANDSHAKE_FROM_SNAPSHOT:
		if (sub_snapshot_open(sub, st, &start) == -1)
			return;
		break;
	default:
		start = req.hr_from;
		if (start < st->ss_earliest && req.hr_resync) {
			log_info("%s: %s asked for sequence %" PRIu64 ", which "
			    "is gone (earliest is %" PRIu64 "): full resync",
			    sub->sub_name, sub->sub_peer, start,
			    st->ss_earliest);
			if (sub_snapshot_open(sub, st, &start) == -1)
				return;
			break;
		}
		if (start < st->ss_earliest) {
			sub_stream(sub)->st_stats.sub_rejected_request++;
			sub_refuse(sub, "gone", "earliest=%" PRIu64,
			    st->ss_earliest);
			return;
		}
		if (start > st->ss_next) {
			sub_stream(sub)->st_stats.sub_rejected_request++;
			sub_refuse(sub, "future", "next=%" PRIu64, st->ss_next);
			return;
		}
	}
	if ((rc = sub_start_corrupt(sub, start, &bad)) == SUB_START_PENDING) {
		/* asked again from the top once the store has read it */
		if (sub->sub_snap_fd != -1)
			close(sub->sub_snap_fd);
		sub->sub_snap_fd = -1;
		sub->sub_snap_len = 0;
		sub->sub_resync = 0;
		sub->sub_hs_wait = 1;
		/* its line came in time: the wait is the store's, not its */
		evtimer_del(sub->sub_timer);
		return;
	}
	if (rc) {
		sub_stream(sub)->st_stats.sub_rejected_corrupt++;
		log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: resuming "
		    "subscriber %s asked for sequence %" PRIu64 ", which cannot "
		    "be served: %s is corrupt at offset %" PRIu64 " (frames %"
		    PRIu64 " to %" PRIu64 " unreadable)", sub->sub_name,
		    sub->sub_peer, start, bad.sc_name, bad.sc_offset,
		    bad.sc_first, bad.sc_end - 1);
		sub_refuse(sub, "corrupt", "first=%" PRIu64 " end=%" PRIu64
		    " frames %" PRIu64 " to %" PRIu64 " are corrupt in this "
		    "relay's store; read them from another relay of the chain",
		    bad.sc_first, bad.sc_end, bad.sc_first, bad.sc_end - 1);
		return;
	}
	if (req.hr_compress == HANDSHAKE_COMPRESS_ZSTD) {
		if ((sub->sub_zc = ZSTD_createCCtx()) == NULL) {
			subscriber_close(sub, "out of memory");
			return;
		}
		ZSTD_CCtx_setParameter(sub->sub_zc, ZSTD_c_compressionLevel,
		    SUBSCRIBER_ZSTD_LEVEL);
		sub->sub_zstd = 1;
	}
	if (sub->sub_resync)
		handshake_format_ok_snapshot(line, sizeof(line), start,
		    st->ss_earliest, st->ss_next,
		    segstore_epoch(sub_stream(sub)->st_store),
		    sub->sub_snap_entries);
	else
		handshake_format_ok(line, sizeof(line), start,
		    st->ss_earliest, st->ss_next,
		    segstore_epoch(sub_stream(sub)->st_store));
	bufferevent_write(sub->sub_bev, line, strlen(line));
	sub_start(sub, start);
}

void
subscriber_handshake_resume(struct subscriber *sub)
{
	if (sub->sub_state != SUB_HANDSHAKE || !sub->sub_hs_wait)
		return;
	sub->sub_hs_wait = 0;
	sub_handshake(sub);
}

/* ---- callbacks ------------------------------------------------------- */

static void
subscriber_read_cb(struct bufferevent *bev, void *arg)
{
	struct subscriber *sub = arg;

	if (sub->sub_state == SUB_HANDSHAKE) {
		if (!sub->sub_hs_wait)
			sub_handshake(sub);
		return;
	}
	/* subscribers have nothing more to say: ignore what they send */
	evbuffer_drain(bufferevent_get_input(bev),
	    evbuffer_get_length(bufferevent_get_input(bev)));
}

static void
subscriber_write_cb(struct bufferevent *bev, void *arg)
{
	struct subscriber *sub = arg;

	if (sub->sub_state == SUB_FLUSH) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			subscriber_close(sub, NULL);
		return;
	}
	if (sub->sub_ending) {
		sub_end_if_sent(sub);
		return;
	}
	subscriber_refill(sub);
}

static void
subscriber_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct subscriber *sub = arg;

	if (what & BEV_EVENT_TIMEOUT) {
		sub_stream(sub)->st_stats.sub_disconnected_timeout++;
		subscriber_close(sub, "accepted no byte for %u ms, disconnected "
		    "at sequence %" PRIu64 " (%" PRIu64 " frames behind)",
		    sub_stream(sub)->st_cfg->subscriber_timeout_ms, sub->sub_pos,
		    subscriber_lag(sub));
	} else if (what & BEV_EVENT_EOF)
		subscriber_close(sub, sub->sub_state == SUB_HANDSHAKE ?
		    NULL : "closed by the subscriber");
	else if (what & BEV_EVENT_ERROR) {
		if (sub->sub_state == SUB_HANDSHAKE && net_bev_is_tls(bev))
			sub_stream(sub)->st_stats.sub_rejected_tls++;
		subscriber_close(sub, "connection error: %s",
		    net_bev_error(bev));
	}
}

static void
subscriber_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct subscriber *sub = arg;

	if (sub->sub_state == SUB_HANDSHAKE) {
		sub_stream(sub)->st_stats.sub_rejected_timeout++;
		log_limited(&sub_refusals, LOG_LEVEL_WARN, "%s: refused %s: no "
		    "handshake line within %u ms", sub->sub_name, sub->sub_peer,
		    sub_stream(sub)->st_cfg->auth_timeout_ms);
	}
	subscriber_close(sub, NULL);
}

struct subscriber *
subscriber_accept(struct fanout *fo, int fd, struct sockaddr *sa, int salen)
{
	struct stream *st = fanout_stream(fo);
	struct subscriber *sub;
	struct bufferevent *bev;
	struct net_conn *src;
	char peer[64];
	int over;

	if (fanout_stopped(fo)) {
		evutil_closesocket(fd);
		return NULL;
	}
	/* the listener's own limit (its stream's), and the process's */
	if ((src = net_conn_acquire(NET_PORT_SUBSCRIBER, fo, sa,
	    st->st_cfg->max_conns_per_ip, relay->r_cfg->max_conns_per_ip_total,
	    &over)) == NULL) {
		st->st_stats.sub_rejected_limit++;
		relay_addr_str(sa, peer, sizeof(peer));
		if (over == NET_OVER_TOTAL)
			log_limited(&sub_refusals, LOG_LEVEL_WARN, "subscriber: "
			    "refused %s on the listener of stream %s: %u "
			    "connections from that address on all subscriber "
			    "listeners, the limit (max-conns-per-ip-total)",
			    peer, st->st_name,
			    relay->r_cfg->max_conns_per_ip_total);
		else
			log_limited(&sub_refusals, LOG_LEVEL_WARN, "subscriber: "
			    "refused %s: %u connections from that address on "
			    "the listener of stream %s, the limit "
			    "(max-conns-per-ip)", peer,
			    st->st_cfg->max_conns_per_ip, st->st_name);
		evutil_closesocket(fd);
		return NULL;
	}
	if ((bev = net_bev_accepted(fd, relay->r_tls)) == NULL) {
		net_conn_release(src);
		evutil_closesocket(fd);
		return NULL;
	}
	if ((sub = calloc(1, sizeof(*sub))) == NULL) {
		net_conn_release(src);
		bufferevent_free(bev);
		return NULL;
	}
	sub->sub_fan = fo;
	sub->sub_src = src;
	sub->sub_id = relay_conn_id();
	sub->sub_snap_fd = -1;
	snprintf(sub->sub_name, sizeof(sub->sub_name), "sub-%" PRIu64,
	    sub->sub_id);
	relay_addr_str(sa, sub->sub_peer, sizeof(sub->sub_peer));
	sub->sub_bev = bev;
	sub->sub_state = SUB_HANDSHAKE;
	sub->sub_connected_ms = clock_wall_ms();
	handshake_init(&sub->sub_hs);
	if ((sub->sub_timer = evtimer_new(relay->r_base, subscriber_timer_cb,
	    sub)) == NULL) {
		net_conn_release(src);
		bufferevent_free(bev);
		free(sub);
		return NULL;
	}
	fanout_join(fo, &sub->sub_link, sub);
	bufferevent_setcb(bev, subscriber_read_cb, subscriber_write_cb,
	    subscriber_event_cb, sub);
	/*
	 * libevent writes at most 16 KiB per callback unless told otherwise:
	 * a system call, and a wake-up of the reader, per 16 KiB. Let one
	 * write take whatever the socket accepts, up to SUB_MAX_WRITE.
	 */
	bufferevent_set_max_single_write(bev, SUB_MAX_WRITE);
	sub_arm_timer(sub, st->st_cfg->auth_timeout_ms);
	bufferevent_enable(bev, EV_READ);
	log_debug("%s: accepted %s on the subscriber port", sub->sub_name,
	    sub->sub_peer);
	return sub;
}

void
subscriber_close(struct subscriber *sub, const char *fmt, ...)
{
	char why[512];
	va_list ap;

	if (sub->sub_state == SUB_DEAD)
		return;
	if (fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(why, sizeof(why), fmt, ap);
		va_end(ap);
		if (sub->sub_state == SUB_STREAM)
			log_info("%s: %s (peer %s, at sequence %" PRIu64 ", %"
			    PRIu64 " bytes queued)", sub->sub_name, why,
			    sub->sub_peer, sub->sub_pos, sub->sub_bytes_queued);
		else
			log_limited(&sub_refusals, LOG_LEVEL_INFO, "%s: %s "
			    "(peer %s)", sub->sub_name, why, sub->sub_peer);
	}
	sub->sub_state = SUB_DEAD;
	bufferevent_disable(sub->sub_bev, EV_READ | EV_WRITE);
	fanout_leave(sub->sub_fan, &sub->sub_link);
}

int
subscriber_drained(const struct subscriber *sub)
{
	return sub->sub_pos >= fanout_sendable(sub->sub_fan) &&
	    sub->sub_hold == NULL &&
	    evbuffer_get_length(bufferevent_get_output(sub->sub_bev)) == 0;
}

void
subscriber_enforce_lag(struct subscriber *sub, uint64_t max)
{
	uint64_t lag = subscriber_lag(sub);

	/* one stopped at a corrupt frame is closing already */
	if (lag <= max || sub->sub_ending || sub->sub_state != SUB_STREAM)
		return;
	sub_stream(sub)->st_stats.sub_disconnected_lag++;
	subscriber_close(sub, "%" PRIu64 " frames behind, over the limit of %"
	    PRIu64 " (max-lag): disconnected", lag, max);
}

void
subscriber_status(const struct subscriber *sub, struct subscriber_status *ss)
{
	memset(ss, 0, sizeof(*ss));
	snprintf(ss->ss_name, sizeof(ss->ss_name), "%s", sub->sub_name);
	snprintf(ss->ss_peer, sizeof(ss->ss_peer), "%s", sub->sub_peer);
	ss->ss_state = sub->sub_state;
	ss->ss_resuming = sub->sub_resuming;
	ss->ss_zstd = sub->sub_zstd;
	ss->ss_on_disk = sub->sub_on_disk;
	ss->ss_tls = sub->sub_tls;
	ss->ss_waiting = fanout_waiting(&sub->sub_link);
	ss->ss_start = sub->sub_start;
	ss->ss_pos = sub->sub_pos;
	ss->ss_lag = subscriber_lag(sub);
	ss->ss_bytes_queued = sub->sub_bytes_queued;
	ss->ss_buffered = evbuffer_get_length(bufferevent_get_output(
	    sub->sub_bev));
	ss->ss_connected_ms = sub->sub_connected_ms;
}

struct evbuffer *
subscriber_output(struct subscriber *sub)
{
	return bufferevent_get_output(sub->sub_bev);
}

void
subscriber_free(struct subscriber *sub)
{
	/* a job in flight holds its own descriptor: let it finish alone */
	if (sub->sub_read != NULL)
		sub->sub_read->sr_sub = NULL;
	if (sub->sub_hold != NULL)
		sub_hold_unref(sub->sub_hold);	/* queued pieces keep it */
	if (sub->sub_snap_fseg != NULL)
		evbuffer_file_segment_free(sub->sub_snap_fseg);
	if (sub->sub_snap_fd != -1)
		close(sub->sub_snap_fd);
	if (sub->sub_fseg != NULL)
		evbuffer_file_segment_free(sub->sub_fseg);	/* unpins */
	else if (sub->sub_has_span)
		segstore_span_release(sub_stream(sub)->st_store,
		    &sub->sub_span);
	if (sub->sub_timer != NULL)
		event_free(sub->sub_timer);
	if (sub->sub_bev != NULL)
		bufferevent_free(sub->sub_bev);
	if (sub->sub_zc != NULL)
		ZSTD_freeCCtx(sub->sub_zc);
	net_conn_release(sub->sub_src);
	free(sub);
}
