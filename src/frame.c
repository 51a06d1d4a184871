/*
 * frame.c: refcounted frame chunks and their bridge to libevent buffers.
 */
#include "autoconfig.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <zstd.h>

#include "fcw2.h"
#include "frame.h"

static atomic_long	chunks_live;
static atomic_llong	chunk_bytes_live;
static atomic_llong	chunks_compressed;

struct chunk *
chunk_new(size_t cap)
{
	struct chunk *ch;

	if ((ch = calloc(1, sizeof(*ch))) == NULL)
		return NULL;
	if ((ch->ch_data = malloc(cap ? cap : 1)) == NULL) {
		free(ch);
		return NULL;
	}
	ch->ch_cap = cap;
	atomic_init(&ch->ch_ref, 1);
	atomic_fetch_add(&chunks_live, 1);
	atomic_fetch_add(&chunk_bytes_live, (long long)cap);
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
	atomic_fetch_sub(&chunks_live, 1);
	atomic_fetch_sub(&chunk_bytes_live, (long long)(ch->ch_cap +
	    ch->ch_zlen));
	free(ch->ch_zdata);
#ifdef WR_DEBUG
	memset(ch->ch_data, 0xdb, ch->ch_cap);
#endif
	free(ch->ch_data);
	free(ch);
}

void
chunk_shrink(struct chunk *ch)
{
	uint8_t *nd;
	size_t len = ch->ch_len ? ch->ch_len : 1;

	if (ch->ch_cap <= len || (nd = realloc(ch->ch_data, len)) == NULL)
		return;
	atomic_fetch_sub(&chunk_bytes_live, (long long)(ch->ch_cap - len));
	ch->ch_data = nd;
	ch->ch_cap = len;
}

void
chunk_resized(struct chunk *ch, uint8_t *data, size_t cap)
{
	atomic_fetch_add(&chunk_bytes_live, (long long)cap -
	    (long long)ch->ch_cap);
	ch->ch_data = data;
	ch->ch_cap = cap;
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
	size_t end = off;
	uint32_t n = 0;

	while (end < ch->ch_len) {
		size_t flen = fcw2_frame_len(ch->ch_data + end);

		if (n > 0 && end - off + flen > room)
			break;
		end += flen;
		n++;
	}
	*nframes = n;
	return end - off;
}

size_t
chunk_offset_of(const struct chunk *ch, uint64_t seq)
{
	size_t off = 0;

	for (uint64_t s = ch->ch_seq; s < seq && off < ch->ch_len; s++)
		off += fcw2_frame_len(ch->ch_data + off);
	return off;
}

size_t
chunk_list_merge(struct chunk_list *list, uint64_t from, uint64_t to,
    size_t small, size_t max)
{
	struct chunk *ch, *first, *next, *m;
	size_t len, removed = 0;
	uint64_t end;
	int k;

	/* the chunks that start at `from` or later are the last ones */
	first = NULL;
	for (ch = TAILQ_LAST(list, chunk_list); ch != NULL && ch->ch_seq >= from;
	    ch = TAILQ_PREV(ch, chunk_list, ch_entry))
		first = ch;
	ch = first;
	while (ch != NULL && CHUNK_END(ch) <= to) {
		/* a run of small chunks, each starting where the last ended */
		first = ch;
		len = 0;
		end = ch->ch_seq;
		k = 0;
		while (ch != NULL && CHUNK_END(ch) <= to && ch->ch_len < small &&
		    len + ch->ch_len <= max && ch->ch_seq == end) {
			len += ch->ch_len;
			end = CHUNK_END(ch);
			k++;
			ch = TAILQ_NEXT(ch, ch_entry);
		}
		if (k == 0) {
			ch = TAILQ_NEXT(ch, ch_entry);
			continue;
		}
		if (k == 1 || (m = chunk_new(len)) == NULL)
			continue;	/* nothing to gain, or keep them apart */
		m->ch_seq = first->ch_seq;
		for (struct chunk *c = first; c != ch; c = next) {
			next = TAILQ_NEXT(c, ch_entry);
			memcpy(m->ch_data + m->ch_len, c->ch_data, c->ch_len);
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
	return removed;
}
