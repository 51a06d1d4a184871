/*
 * chunk.c: refcounted frame chunks and their bridge to libevent buffers.
 */
#include "autoconfig.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <zstd.h>

#include "fcw2.h"
#include "chunk.h"
#include "log.h"

static atomic_long	chunks_live;
static atomic_llong	chunk_bytes_live;
static atomic_llong	chunks_compressed;

/*
 * Buffers of 64 KiB and more come in 16 KiB steps and are kept for reuse
 * when freed, up to CBUF_KEEP bytes in all. glibc gives such buffers their
 * own mappings (main.c sets the threshold so that freed chunks go back to
 * the system and RSS follows the budgets); without this cache every chunk
 * paid an mmap, page faults, an munmap and a TLB shootdown on both cores.
 * Chunks come and go at the upstream's pace, so a kept buffer is reused
 * within milliseconds; after a second without reuse all of them are freed.
 * Sanitizer builds keep nothing, so a use after free is still caught.
 */
#define CBUF_MIN	(64 * 1024)
#define CBUF_STEP	(16 * 1024)
#define CBUF_MAX	(4 * 1024 * 1024)
#define CBUF_KEEP	(4 * 1024 * 1024)

struct cbuf_free {
	struct cbuf_free	*next;
};
static pthread_mutex_t	 cbuf_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct cbuf_free	*cbuf_list[CBUF_MAX / CBUF_STEP + 1];
static size_t		 cbuf_kept;
static unsigned long	 cbuf_reused, cbuf_reused_seen;

size_t
chunk_buf_size(size_t n)
{
	if (n < CBUF_MIN)
		return n ? n : 1;
	return (n + CBUF_STEP - 1) / CBUF_STEP * CBUF_STEP;
}

static int
cbuf_cacheable(size_t cap)
{
#ifdef WR_ASAN
	(void)cap;
	return 0;
#else
	return cap >= CBUF_MIN && cap <= CBUF_MAX && cap % CBUF_STEP == 0;
#endif
}

/* A buffer of cap bytes (a size from chunk_buf_size). */
static uint8_t *
cbuf_get(size_t cap)
{
	struct cbuf_free *f = NULL;

	if (cbuf_cacheable(cap)) {
		pthread_mutex_lock(&cbuf_mtx);
		if ((f = cbuf_list[cap / CBUF_STEP]) != NULL) {
			cbuf_list[cap / CBUF_STEP] = f->next;
			cbuf_kept -= cap;
			cbuf_reused++;
		}
		pthread_mutex_unlock(&cbuf_mtx);
		if (f != NULL)
			return (uint8_t *)f;
	}
	return malloc(cap);
}

static void
cbuf_put(uint8_t *p, size_t cap)
{
#ifdef WR_DEBUG
	memset(p, 0xdb, cap);
#endif
	if (cbuf_cacheable(cap)) {
		pthread_mutex_lock(&cbuf_mtx);
		if (cbuf_kept + cap <= CBUF_KEEP) {
			struct cbuf_free *f = (struct cbuf_free *)(void *)p;

			f->next = cbuf_list[cap / CBUF_STEP];
			cbuf_list[cap / CBUF_STEP] = f;
			cbuf_kept += cap;
			p = NULL;
		}
		pthread_mutex_unlock(&cbuf_mtx);
	}
	free(p);
}

static void
cbuf_free_all(void)
{
	struct cbuf_free *f;

	for (size_t i = 0; i < sizeof(cbuf_list) / sizeof(cbuf_list[0]); i++)
		while ((f = cbuf_list[i]) != NULL) {
			cbuf_list[i] = f->next;
			free(f);
		}
	cbuf_kept = 0;
}

void
chunk_cache_tick(void)
{
	pthread_mutex_lock(&cbuf_mtx);
	if (cbuf_reused == cbuf_reused_seen)
		cbuf_free_all();
	cbuf_reused_seen = cbuf_reused;
	pthread_mutex_unlock(&cbuf_mtx);
}

void
chunk_cache_clear(void)
{
	pthread_mutex_lock(&cbuf_mtx);
	cbuf_free_all();
	pthread_mutex_unlock(&cbuf_mtx);
}

size_t
chunk_cache_bytes(void)
{
	size_t n;

	pthread_mutex_lock(&cbuf_mtx);
	n = cbuf_kept;
	pthread_mutex_unlock(&cbuf_mtx);
	return n;
}

unsigned long
chunk_cache_reused(void)
{
	unsigned long n;

	pthread_mutex_lock(&cbuf_mtx);
	n = cbuf_reused;
	pthread_mutex_unlock(&cbuf_mtx);
	return n;
}

struct chunk *
chunk_new(size_t cap)
{
	struct chunk *ch;

	cap = chunk_buf_size(cap);
	if ((ch = calloc(1, sizeof(*ch))) == NULL)
		return NULL;
	if ((ch->ch_data = cbuf_get(cap)) == NULL) {
		free(ch);
		return NULL;
	}
	ch->ch_cap = cap;
	atomic_init(&ch->ch_ref, 1);
	atomic_fetch_add(&chunks_live, 1);
	atomic_fetch_add(&chunk_bytes_live, (long long)cap);
	return ch;
}

struct chunk *
chunk_buffer_new(size_t cap)
{
	struct chunk *ch;

	if ((ch = chunk_new(cap)) == NULL)
		return NULL;
	ch->ch_bufonly = 1;
	atomic_fetch_sub(&chunks_live, 1);
	return ch;
}

struct chunk *
chunk_view(struct chunk *parent, size_t off, size_t len, uint64_t seq,
    uint32_t nframes)
{
	struct chunk *ch;
	uint8_t *data = parent->ch_data + off;

	if (parent->ch_parent != NULL)
		parent = parent->ch_parent;	/* a view of a view: its buffer */
	if ((ch = calloc(1, sizeof(*ch))) == NULL)
		return NULL;
	chunk_ref(parent);
	ch->ch_parent = parent;
	ch->ch_data = data;
	ch->ch_len = ch->ch_cap = len;
	ch->ch_seq = seq;
	ch->ch_nframes = nframes;
	atomic_init(&ch->ch_ref, 1);
	atomic_fetch_add(&chunks_live, 1);
	return ch;
}

void
chunk_ref(struct chunk *ch)
{
	atomic_fetch_add_explicit(&ch->ch_ref, 1, memory_order_relaxed);
}

void
chunk_unref(struct chunk *ch)
{
	if (atomic_fetch_sub_explicit(&ch->ch_ref, 1, memory_order_acq_rel) != 1)
		return;
	if (!ch->ch_bufonly)
		atomic_fetch_sub(&chunks_live, 1);
	atomic_fetch_sub(&chunk_bytes_live, (long long)((ch->ch_parent ? 0 :
	    ch->ch_cap) + ch->ch_zlen));
	free(ch->ch_zdata);
	if (ch->ch_parent != NULL)
		chunk_unref(ch->ch_parent);
	else
		cbuf_put(ch->ch_data, ch->ch_cap);
	free(ch);
}

/* Move an unpublished chunk's bytes to a buffer of chunk_buf_size(cap). */
static int
chunk_rebuffer(struct chunk *ch, size_t cap)
{
	uint8_t *nd;

	WR_ASSERT(ch->ch_parent == NULL);
	cap = chunk_buf_size(cap);
	if ((nd = cbuf_get(cap)) == NULL)
		return -1;
	memcpy(nd, ch->ch_data, ch->ch_len);
	cbuf_put(ch->ch_data, ch->ch_cap);
	atomic_fetch_add(&chunk_bytes_live, (long long)cap -
	    (long long)ch->ch_cap);
	ch->ch_data = nd;
	ch->ch_cap = cap;
	return 0;
}

void
chunk_shrink(struct chunk *ch)
{
	if (chunk_buf_size(ch->ch_len) < ch->ch_cap)
		(void)chunk_rebuffer(ch, ch->ch_len);	/* else keep it */
}

int
chunk_grow(struct chunk *ch, size_t cap)
{
	if (cap <= ch->ch_cap)
		return 0;
	return chunk_rebuffer(ch, cap);
}

long
chunk_live_count(void)
{
	return atomic_load(&chunks_live);
}

long long
chunk_live_bytes(void)
{
	return atomic_load(&chunk_bytes_live);
}

static void
chunk_evbuffer_cleanup(const void *data, size_t len, void *arg)
{
	chunk_unref(arg);
}

int
chunk_add_to_evbuffer(struct evbuffer *buf, struct chunk *ch, size_t off,
    size_t len)
{
	if (len <= CHUNK_COPY_MAX)
		return evbuffer_add(buf, ch->ch_data + off, len);
	chunk_ref(ch);
	if (evbuffer_add_reference(buf, ch->ch_data + off, len,
	    chunk_evbuffer_cleanup, ch) == -1) {
		/* libevent does not call the cleanup when the add fails */
		chunk_unref(ch);
		return -1;
	}
	return 0;
}

int
chunk_zstd(struct chunk *ch, int level)
{
	size_t bound, n;
	uint8_t *z, *shrunk;

	if (ch->ch_zdata != NULL)
		return 0;
	bound = ZSTD_compressBound(ch->ch_len);
	if ((z = malloc(bound)) == NULL)
		return -1;
	n = ZSTD_compress(z, bound, ch->ch_data, ch->ch_len, level);
	if (ZSTD_isError(n)) {
		free(z);
		return -1;
	}
	if ((shrunk = realloc(z, n ? n : 1)) != NULL)
		z = shrunk;
	ch->ch_zdata = z;
	ch->ch_zlen = n;
	atomic_fetch_add(&chunk_bytes_live, (long long)n);
	atomic_fetch_add(&chunks_compressed, 1);
	return 0;
}

int
chunk_add_zstd_to_evbuffer(struct evbuffer *buf, struct chunk *ch)
{
	if (ch->ch_zlen <= CHUNK_COPY_MAX)
		return evbuffer_add(buf, ch->ch_zdata, ch->ch_zlen);
	chunk_ref(ch);
	if (evbuffer_add_reference(buf, ch->ch_zdata, ch->ch_zlen,
	    chunk_evbuffer_cleanup, ch) == -1) {
		chunk_unref(ch);
		return -1;
	}
	return 0;
}

long long
chunk_zstd_count(void)
{
	return atomic_load(&chunks_compressed);
}

size_t
chunk_cut(const struct chunk *ch, size_t off, size_t room, uint32_t *nframes)
{
	size_t end, limit;
	uint64_t n;

	limit = ch->ch_len - off > room ? off + room : ch->ch_len;
	end = fcw2_walk(ch->ch_data, off, limit, UINT32_MAX, &n);
	if (n == 0 && off < ch->ch_len) {
		/* a frame longer than room goes alone */
		end = off + fcw2_frame_len(ch->ch_data + off);
		n = 1;
	}
	*nframes = (uint32_t)n;
	return end - off;
}

size_t
chunk_offset_of(const struct chunk *ch, uint64_t seq)
{
	if (seq <= ch->ch_seq)
		return 0;
	return fcw2_walk(ch->ch_data, 0, ch->ch_len, seq - ch->ch_seq, NULL);
}

/*
 * Views in [from, to) that leave more than a 16th of their buffer
 * unused become chunks of their own size (a copy): whoever holds one
 * would hold the whole buffer, and a subscriber must not hold more than
 * its own buffer's worth (the rule chunk_shrink kept for whole chunks).
 */
static void
chunk_list_compact(struct chunk_list *list, uint64_t from, uint64_t to,
    long long *capdelta)
{
	struct chunk *ch, *first = NULL, *next, *m;
	size_t cap;

	for (ch = TAILQ_LAST(list, chunk_list); ch != NULL && ch->ch_seq >= from;
	    ch = TAILQ_PREV(ch, chunk_list, ch_entry))
		first = ch;
	for (ch = first; ch != NULL && CHUNK_END(ch) <= to; ch = next) {
		next = TAILQ_NEXT(ch, ch_entry);
		if (ch->ch_parent == NULL)
			continue;
		cap = ch->ch_parent->ch_cap;
		if (cap - ch->ch_len <= cap / 16 || (m = chunk_new(ch->ch_len)) ==
		    NULL)
			continue;
		memcpy(m->ch_data, ch->ch_data, ch->ch_len);
		m->ch_len = ch->ch_len;
		m->ch_seq = ch->ch_seq;
		m->ch_nframes = ch->ch_nframes;
		m->ch_recv_us = ch->ch_recv_us;
		if (capdelta != NULL)
			*capdelta += (long long)m->ch_cap - (long long)ch->ch_cap;
		TAILQ_INSERT_BEFORE(ch, m, ch_entry);
		TAILQ_REMOVE(list, ch, ch_entry);
		chunk_unref(ch);
	}
}

/* b follows a in the same buffer: both are views of it. */
static int
chunk_adjacent(const struct chunk *a, const struct chunk *b)
{
	return a->ch_parent != NULL && a->ch_parent == b->ch_parent &&
	    a->ch_data + a->ch_len == b->ch_data;
}

size_t
chunk_list_merge(struct chunk_list *list, uint64_t from, uint64_t to,
    size_t small, size_t max, long long *capdelta)
{
	struct chunk *ch, *first, *next, *prev, *m;
	size_t len, removed = 0;
	uint64_t end;
	int k, view;

	/* the chunks that start at `from` or later are the last ones */
	first = NULL;
	for (ch = TAILQ_LAST(list, chunk_list); ch != NULL && ch->ch_seq >= from;
	    ch = TAILQ_PREV(ch, chunk_list, ch_entry))
		first = ch;
	ch = first;
	while (ch != NULL && CHUNK_END(ch) <= to) {
		/*
		 * A run of views that follow each other in one buffer (joined
		 * without a copy), else of small chunks (copied), each chunk
		 * starting where the last ended.
		 */
		first = ch;
		next = TAILQ_NEXT(ch, ch_entry);
		view = next != NULL && chunk_adjacent(ch, next);
		len = 0;
		end = ch->ch_seq;
		k = 0;
		prev = NULL;
		while (ch != NULL && CHUNK_END(ch) <= to &&
		    len + ch->ch_len <= max && ch->ch_seq == end &&
		    (view ? prev == NULL || chunk_adjacent(prev, ch) :
		    ch->ch_len < small)) {
			len += ch->ch_len;
			end = CHUNK_END(ch);
			k++;
			prev = ch;
			ch = TAILQ_NEXT(ch, ch_entry);
		}
		if (k == 0) {
			ch = TAILQ_NEXT(ch, ch_entry);
			continue;
		}
		if (k == 1)
			continue;	/* nothing to gain */
		if (view)
			m = chunk_view(first, 0, len, first->ch_seq, 0);
		else
			m = chunk_new(len);
		if (m == NULL)
			continue;	/* keep them apart */
		m->ch_len = 0;		/* counted up below */
		m->ch_seq = first->ch_seq;
		m->ch_recv_us = first->ch_recv_us;	/* the oldest frame's */
		if (capdelta != NULL)
			*capdelta += (long long)m->ch_cap;
		for (struct chunk *c = first; c != ch; c = next) {
			next = TAILQ_NEXT(c, ch_entry);
			if (capdelta != NULL)
				*capdelta -= (long long)c->ch_cap;
			if (!view)
				memcpy(m->ch_data + m->ch_len, c->ch_data,
				    c->ch_len);
			m->ch_len += c->ch_len;
			m->ch_nframes += c->ch_nframes;
			TAILQ_REMOVE(list, c, ch_entry);
			chunk_unref(c);
			removed++;
		}
		if (ch != NULL)
			TAILQ_INSERT_BEFORE(ch, m, ch_entry);
		else
			TAILQ_INSERT_TAIL(list, m, ch_entry);
		removed--;
	}
	chunk_list_compact(list, from, to, capdelta);
	return removed;
}
