/*
 * chunk.h: refcounted, immutable chunks of whole FCW2 frames.
 *
 * The upstream fills a chunk with validated frames, gives it sequence
 * numbers and publishes it once: the segment writer and every subscriber
 * hold references to the same bytes. A chunk is freed when the last
 * reference goes, whichever thread drops it.
 */
#ifndef WALRELAY_CHUNK_H
#define WALRELAY_CHUNK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

struct evbuffer;

struct chunk {
	atomic_int		 ch_ref;
	uint64_t		 ch_seq;	/* sequence of the first frame */
	uint32_t		 ch_nframes;
	size_t			 ch_len;	/* bytes of whole frames */
	size_t			 ch_cap;
	uint64_t		 ch_recv_us;	/* read from the upstream (monotonic) */
	TAILQ_ENTRY(chunk)	 ch_entry;	/* the shared tail (loop thread) */
	STAILQ_ENTRY(chunk)	 ch_wentry;	/* the writer's queue */
	uint8_t			*ch_data;
	/*
	 * The whole chunk as one zstd frame, made once for every subscriber
	 * with compress=zstd (loop thread), or NULL.
	 */
	uint8_t			*ch_zdata;
	size_t			 ch_zlen;
	/*
	 * A view (chunk_view): ch_data lies in the buffer of ch_parent, which
	 * the view holds a reference to (its bytes are counted there), and
	 * ch_cap is ch_len; NULL when the chunk owns its buffer.
	 */
	struct chunk		*ch_parent;
	int			 ch_bufonly;	/* chunk_buffer_new */
};
TAILQ_HEAD(chunk_list, chunk);
STAILQ_HEAD(chunk_queue, chunk);

/* End sequence (exclusive). */
#define CHUNK_END(ch)	((ch)->ch_seq + (ch)->ch_nframes)

/* Spans up to this many bytes are copied into evbuffers, larger referenced. */
#define CHUNK_COPY_MAX	2048

/* A chunk of at least cap bytes (chunk_buf_size(cap)): one reference, or NULL. */
struct chunk	*chunk_new(size_t cap);
/*
 * A buffer for views (chunk_view), not a chunk of frames itself: its
 * bytes count in chunk_live_bytes, it does not count in chunk_live_count.
 */
struct chunk	*chunk_buffer_new(size_t cap);
/*
 * A chunk of len bytes at off in parent (whole frames: seq, nframes),
 * sharing its memory: it holds a reference to the buffer's owner (parent,
 * or parent's own parent for a view of a view) until it is freed; one
 * reference, or NULL. Nothing may be appended to a view. The upstream
 * reads into one buffer and publishes each read's frames as a view of
 * it, so that the writer, the tail and every subscriber share the bytes
 * the socket was read into; archive blocks are cut into views too.
 */
struct chunk	*chunk_view(struct chunk *parent, size_t off, size_t len,
		    uint64_t seq, uint32_t nframes);
void		 chunk_ref(struct chunk *);
void		 chunk_unref(struct chunk *);
/* Shrink an unpublished chunk's allocation towards its length. */
void		 chunk_shrink(struct chunk *);
/* Grow an unpublished chunk's buffer to at least cap bytes. 0 or -1. */
int		 chunk_grow(struct chunk *, size_t cap);
/* The size of the buffer a chunk of n bytes gets. */
size_t		 chunk_buf_size(size_t n);
/*
 * Freed buffers of 64 KiB and more are kept for reuse (4 MiB at most):
 * chunk_cache_tick, once a second, frees them all when none was reused
 * since the last tick; chunk_cache_clear frees them at exit.
 */
void		 chunk_cache_tick(void);
void		 chunk_cache_clear(void);
size_t		 chunk_cache_bytes(void);
unsigned long	 chunk_cache_reused(void);
/*
 * Chunks of frames alive now (views included, buffers for views not) and
 * the bytes of the buffers they hold (the live-buffer counters).
 */
long		 chunk_live_count(void);
long long	 chunk_live_bytes(void);

/*
 * Append bytes [off, off+len) of ch to buf: a reference that holds the
 * chunk until libevent has sent the bytes, or a copy for small spans.
 * Returns 0 or -1 (nothing added, no reference kept).
 */
int		 chunk_add_to_evbuffer(struct evbuffer *, struct chunk *,
		    size_t off, size_t len);

/*
 * The chunk compressed as one independent zstd frame, made on first use
 * and shared by every subscriber that wants it. Returns 0 or -1.
 */
int		 chunk_zstd(struct chunk *, int level);
/* Append a reference to the chunk's zstd frame to buf. 0 or -1. */
int		 chunk_add_zstd_to_evbuffer(struct evbuffer *, struct chunk *);
/* Chunks compressed so far (for /metrics). */
long long	 chunk_zstd_count(void);

/*
 * Bytes of the whole frames from offset off that fit in room (at least
 * one frame), and their count in *nframes.
 */
size_t		 chunk_cut(const struct chunk *, size_t off, size_t room,
		    uint32_t *nframes);

/*
 * Merge runs of consecutive chunks of the list that lie wholly in
 * [from, to) into single chunks of at most `max` bytes: views of one
 * buffer that follow each other in it become one view (no copy), other
 * runs of chunks each under `small` bytes are copied into a new chunk (the
 * list's own references move to the new chunks; holders of other
 * references keep the old ones). A view that then leaves more than a 16th
 * of its buffer unused is replaced by a copy of its size: a reference to
 * it would hold the whole buffer. Returns how many fewer chunks the list
 * holds, and adds the change in buffer bytes to *capdelta (if not NULL).
 * Only for chunks nobody reads through the list yet.
 */
size_t		 chunk_list_merge(struct chunk_list *, uint64_t from,
		    uint64_t to, size_t small, size_t max, long long *capdelta);

/* Byte offset in ch of the frame with sequence seq (walks frame headers). */
size_t		 chunk_offset_of(const struct chunk *, uint64_t seq);

#endif
