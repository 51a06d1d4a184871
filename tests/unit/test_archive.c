/*
 * test_archive.c: the archive tier: the .wal.zst format (blocks, index,
 * random access by sequence, damage detection) and the store serving
 * archived segments, completing or undoing an interrupted archive step at
 * open, and refusing to serve a corrupt block.
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "archive.h"
#include "fcw2.h"
#include "chunk.h"
#include "log.h"
#include "segment.h"
#include "storetest.h"

#define WAIT_MS		30000

/* One frame of about vlen value bytes (half of them compressible). */
static void
model_add(struct model *m, size_t vlen)
{
	struct fcw2_record rec;
	uint64_t seq = m->base + m->n;
	uint8_t key[32], *value, *out;
	size_t klen, cap = vlen + 256, n;

	REQUIRE((value = malloc(vlen + 1)) != NULL);
	REQUIRE((out = malloc(cap)) != NULL);
	klen = (size_t)snprintf((char *)key, sizeof(key), "user:%" PRIu64,
	    seq % 5000);
	for (size_t i = 0; i < vlen; i++)
		value[i] = i < vlen / 2 ? (uint8_t)('a' + (seq + i / 16) % 26) :
		    (uint8_t)((seq * 2654435761u + i * 40503u) >> 7);
	memset(&rec, 0, sizeof(rec));
	rec.op = FCW2_OP_SET;
	rec.key_len = (uint32_t)klen;
	rec.value_len = (uint32_t)vlen;
	rec.timestamp_ms = 1700000000000ull + seq;
	rec.expire_at_ms = -1;
	rec.key = key;
	rec.value = value;
	n = fcw2_encode(&rec, 0, out, cap);
	REQUIRE(n > 0);
	model_push(m, out, n);
	free(value);
	free(out);
}

static void
file_write(const char *path, const uint8_t *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	ck_assert_int_ne(fd, -1);
	ck_assert_int_eq(write(fd, p, len), (ssize_t)len);
	close(fd);
}

static uint8_t *
file_read(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *p;
	int fd = open(path, O_RDONLY);

	ck_assert_int_ne(fd, -1);
	ck_assert_int_eq(fstat(fd, &st), 0);
	REQUIRE((p = malloc((size_t)st.st_size + 1)) != NULL);
	ck_assert_int_eq(read(fd, p, (size_t)st.st_size), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return p;
}

/* Compress the model into dir/name; the index is left in *idx. */
static void
make_archive(const struct model *m, const char *dir, const char *name,
    size_t block, struct archive_index *idx, uint64_t *zbytes)
{
	struct archive_config ac;
	char raw[512], out[512], err[512];
	int rfd, ofd;

	memset(&ac, 0, sizeof(ac));
	ac.ac_block = block;
	snprintf(raw, sizeof(raw), "%s/raw.bin", dir);
	snprintf(out, sizeof(out), "%s/%s", dir, name);
	file_write(raw, m->buf, m->len);
	ck_assert_int_ne(rfd = open(raw, O_RDONLY), -1);
	ck_assert_int_ne(ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644),
	    -1);
	ck_assert_msg(archive_compress(rfd, ofd, m->base, m->n, &ac,
	    64 << 20, idx, zbytes, err, sizeof(err)) == 0, "compress: %s",
	    err);
	close(rfd);
	close(ofd);
	unlink(raw);
}

/* ---- the format -------------------------------------------------------- */

START_TEST(test_random_access)
{
	struct archive_index idx, idx2;
	struct chunk *ch;
	char *dir = tmpdir_new(), path[512], err[512];
	struct model m;
	uint64_t zbytes, seq;
	uint8_t *file;
	size_t flen;
	int fd;

	model_init(&m, 1000000);
	srandom(14);
	for (int i = 0; i < 20000; i++)
		model_add(&m, (size_t)(random() % 600));
	model_add(&m, 3 << 20);		/* one frame bigger than a block */
	for (int i = 0; i < 2000; i++)
		model_add(&m, (size_t)(random() % 2000));
	make_archive(&m, dir, "a.wal.zst", 0, &idx, &zbytes);
	ck_assert_uint_gt(idx.ai_nblocks, 5);
	ck_assert_uint_lt(zbytes, m.len);

	snprintf(path, sizeof(path), "%s/a.wal.zst", dir);
	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	ck_assert_msg(archive_index_read(fd, &idx2, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_uint_eq(idx2.ai_nblocks, idx.ai_nblocks);
	ck_assert_uint_eq(idx2.ai_base, m.base);
	ck_assert_uint_eq(idx2.ai_nframes, m.n);
	ck_assert_uint_eq(idx2.ai_raw_bytes, m.len);
	for (uint32_t i = 0; i < idx.ai_nblocks; i++) {
		ck_assert_int_eq(memcmp(&idx.ai_blocks[i], &idx2.ai_blocks[i],
		    sizeof(idx.ai_blocks[i])), 0);
		/* about a block of whole frames, or one frame alone */
		ck_assert(idx.ai_blocks[i].ab_raw_len <= ARCHIVE_BLOCK ||
		    idx.ai_blocks[i].ab_nframes == 1);
	}

	/* 1,000 random positions: one block each, exact bytes from there */
	for (int i = 0; i < 1000; i++) {
		long b;
		size_t off;

		seq = m.base + (uint64_t)random() % m.n;
		b = archive_index_find(&idx2, seq);
		ck_assert_int_ge(b, 0);
		ck_assert_msg(archive_read_block(fd, &idx2.ai_blocks[b],
		    64 << 20, &ch, err, sizeof(err)) == 0, "%s", err);
		ck_assert_uint_le(ch->ch_seq, seq);
		ck_assert_uint_gt(CHUNK_END(ch), seq);
		off = chunk_offset_of(ch, seq);
		ck_assert_uint_eq(ch->ch_len - off,
		    m.off[CHUNK_END(ch) - m.base] - m.off[seq - m.base]);
		ck_assert_int_eq(memcmp(ch->ch_data + off,
		    m.buf + m.off[seq - m.base], ch->ch_len - off), 0);
		chunk_unref(ch);
	}
	ck_assert_int_eq(archive_index_find(&idx2, m.base - 1), -1);
	ck_assert_int_eq(archive_index_find(&idx2, m.base + m.n), -1);
	close(fd);

	/* zstd -d of the whole file is the raw segment (index skipped) */
	file = file_read(path, &flen);
	{
		ZSTD_DCtx *dz = ZSTD_createDCtx();
		ZSTD_inBuffer in = { file, flen, 0 };
		uint8_t *out = malloc(m.len + 1);
		ZSTD_outBuffer ob = { out, m.len + 1, 0 };
		size_t r;

		do {
			r = ZSTD_decompressStream(dz, &ob, &in);
			ck_assert_msg(!ZSTD_isError(r), "%s",
			    ZSTD_getErrorName(r));
		} while (in.pos < in.size);
		ck_assert_uint_eq(ob.pos, m.len);
		ck_assert_int_eq(memcmp(out, m.buf, m.len), 0);
		free(out);
		ZSTD_freeDCtx(dz);
	}
	free(file);
	archive_index_free(&idx);
	archive_index_free(&idx2);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/*
 * A block decompressed into pieces: the same frames in order, each piece
 * whole frames within the piece size (a bigger frame alone), sequences
 * contiguous; a damaged block is refused with its offset.
 */
START_TEST(test_read_pieces)
{
	struct archive_index idx;
	struct chunk **pc;
	char *dir = tmpdir_new(), path[512], err[512], want[64];
	struct model m;
	uint64_t zbytes, seq, zoff;
	uint32_t np;
	size_t pos, piece = 5000;
	uint8_t *file;
	size_t flen;
	int fd;
	ZSTD_DCtx *dz = ZSTD_createDCtx();

	model_init(&m, 700);
	srandom(15);
	for (int i = 0; i < 3000; i++)
		model_add(&m, (size_t)(random() % 900));
	model_add(&m, 20000);		/* bigger than a piece */
	model_add(&m, piece - 60);	/* about a piece */
	for (int i = 0; i < 3000; i++)
		model_add(&m, (size_t)(random() % 3000));
	make_archive(&m, dir, "p.wal.zst", 256 * 1024, &idx, &zbytes);
	snprintf(path, sizeof(path), "%s/p.wal.zst", dir);
	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	for (uint32_t b = 0; b < idx.ai_nblocks; b++) {
		const struct archive_block *ab = &idx.ai_blocks[b];

		/* a context reused, or one made for the call */
		ck_assert_msg(archive_read_pieces(b % 2 ? NULL : dz, fd, ab,
		    64 << 20, piece, &pc, &np, err, sizeof(err)) == 0, "%s",
		    err);
		ck_assert_uint_gt(np, 1);
		seq = ab->ab_seq;
		pos = m.off[seq - m.base];
		for (uint32_t i = 0; i < np; i++) {
			ck_assert_uint_eq(pc[i]->ch_seq, seq);
			ck_assert_uint_gt(pc[i]->ch_nframes, 0);
			ck_assert(pc[i]->ch_len <= piece ||
			    pc[i]->ch_nframes == 1);
			ck_assert_uint_eq(pc[i]->ch_len, m.off[CHUNK_END(pc[i]) -
			    m.base] - pos);
			ck_assert_int_eq(memcmp(pc[i]->ch_data, m.buf + pos,
			    pc[i]->ch_len), 0);
			pos += pc[i]->ch_len;
			seq = CHUNK_END(pc[i]);
		}
		ck_assert_uint_eq(seq, ab->ab_seq + ab->ab_nframes);
		archive_pieces_free(pc, np);
	}
	ZSTD_freeDCtx(dz);
	close(fd);

	file = file_read(path, &flen);
	zoff = idx.ai_blocks[1].ab_zoff;
	file[zoff + idx.ai_blocks[1].ab_zlen / 2] ^= 0x5a;
	file_write(path, file, flen);
	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	ck_assert_int_eq(archive_read_pieces(NULL, fd, &idx.ai_blocks[1],
	    64 << 20, piece, &pc, &np, err, sizeof(err)), -1);
	ck_assert_ptr_null(pc);
	snprintf(want, sizeof(want), "offset %" PRIu64, zoff);
	ck_assert_msg(strstr(err, want) != NULL, "%s (want %s)", err, want);
	close(fd);
	free(file);
	archive_index_free(&idx);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/*
 * The block reader decompresses on more than one thread: a job whose
 * thread is held up (here: in the completion callback, as a thread would
 * be on a slow disk read) does not keep the next job from finishing.
 */
struct held {
	pthread_mutex_t	 h_mtx;
	pthread_cond_t	 h_cond;
	int		 h_calls;
	int		 h_release;
};

static void
held_notify(void *arg)
{
	struct held *h = arg;
	int first;

	pthread_mutex_lock(&h->h_mtx);
	first = h->h_calls++ == 0;
	pthread_cond_broadcast(&h->h_cond);
	while (first && !h->h_release)
		pthread_cond_wait(&h->h_cond, &h->h_mtx);
	pthread_mutex_unlock(&h->h_mtx);
}

START_TEST(test_reader_threads)
{
	struct archive_index idx;
	struct archive_reader *ar;
	struct archive_job jobs[2];
	struct held h;
	struct timespec dl;
	struct model m;
	char *dir = tmpdir_new(), err[256];
	uint64_t zbytes;
	int dirfd, calls;

	model_init(&m, 100);
	for (int i = 0; i < 2000; i++)
		model_add(&m, 300 + (size_t)(i * 7919 % 700));
	make_archive(&m, dir, "t.wal.zst", 128 * 1024, &idx, &zbytes);
	ck_assert_uint_ge(idx.ai_nblocks, 2);
	ck_assert_int_ne(dirfd = open(dir, O_RDONLY | O_DIRECTORY), -1);
	memset(&h, 0, sizeof(h));
	pthread_mutex_init(&h.h_mtx, NULL);
	pthread_cond_init(&h.h_cond, NULL);
	ar = archive_reader_start(held_notify, &h, err, sizeof(err));
	ck_assert_msg(ar != NULL, "%s", err);
	memset(jobs, 0, sizeof(jobs));
	for (int i = 0; i < 2; i++) {
		jobs[i].aj_dirfd = dirfd;
		snprintf(jobs[i].aj_name, sizeof(jobs[i].aj_name), "t.wal.zst");
		jobs[i].aj_blk = idx.ai_blocks[i];
		jobs[i].aj_max_frame = 64 << 20;
		archive_reader_submit(ar, &jobs[i]);
	}
	/* both finish while the first thread to finish is held */
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += WAIT_MS / 1000;
	pthread_mutex_lock(&h.h_mtx);
	while (h.h_calls < 2 &&
	    pthread_cond_timedwait(&h.h_cond, &h.h_mtx, &dl) == 0)
		;
	calls = h.h_calls;
	h.h_release = 1;
	pthread_cond_broadcast(&h.h_cond);
	pthread_mutex_unlock(&h.h_mtx);
	ck_assert_int_eq(calls, 2);
	for (int i = 0; i < 2; i++) {
		const struct archive_block *ab = &idx.ai_blocks[i];
		size_t pos = m.off[ab->ab_seq - m.base];

		ck_assert(archive_reader_done(ar, &jobs[i]));
		ck_assert_msg(jobs[i].aj_pieces != NULL, "%s", jobs[i].aj_err);
		for (uint32_t k = 0; k < jobs[i].aj_npieces; k++) {
			struct chunk *pc = jobs[i].aj_pieces[k];

			ck_assert_int_eq(memcmp(pc->ch_data, m.buf + pos,
			    pc->ch_len), 0);
			pos += pc->ch_len;
		}
		ck_assert_uint_eq(pos, m.off[ab->ab_seq + ab->ab_nframes -
		    m.base]);
		archive_pieces_free(jobs[i].aj_pieces, jobs[i].aj_npieces);
	}
	archive_reader_stop(ar);
	pthread_cond_destroy(&h.h_cond);
	pthread_mutex_destroy(&h.h_mtx);
	close(dirfd);
	archive_index_free(&idx);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(test_corrupt_block)
{
	struct archive_index idx;
	struct chunk *ch;
	char *dir = tmpdir_new(), path[512], err[512], want[64];
	struct model m;
	uint64_t zbytes, zoff;
	uint8_t *file;
	size_t flen;
	int fd;

	model_init(&m, 0);
	for (int i = 0; i < 3000; i++)
		model_add(&m, 300 + (size_t)(i % 500));
	make_archive(&m, dir, "c.wal.zst", 64 * 1024, &idx, &zbytes);
	ck_assert_uint_gt(idx.ai_nblocks, 4);
	snprintf(path, sizeof(path), "%s/c.wal.zst", dir);
	file = file_read(path, &flen);
	zoff = idx.ai_blocks[2].ab_zoff;
	file[zoff + idx.ai_blocks[2].ab_zlen / 2] ^= 0x5a;
	file_write(path, file, flen);

	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	/* the index is intact; block 2 is not, and says where */
	ck_assert_int_eq(archive_read_block(fd, &idx.ai_blocks[2], 64 << 20,
	    &ch, err, sizeof(err)), -1);
	ck_assert_ptr_null(ch);
	snprintf(want, sizeof(want), "offset %" PRIu64, zoff);
	ck_assert_msg(strstr(err, want) != NULL, "%s (want %s)", err, want);
	ck_assert_int_eq(archive_read_block(fd, &idx.ai_blocks[1], 64 << 20,
	    &ch, err, sizeof(err)), 0);
	chunk_unref(ch);
	ck_assert_int_eq(archive_read_block(fd, &idx.ai_blocks[3], 64 << 20,
	    &ch, err, sizeof(err)), 0);
	chunk_unref(ch);
	close(fd);

	/* a damaged index is refused as a whole */
	file[zoff + idx.ai_blocks[2].ab_zlen / 2] ^= 0x5a;
	file[idx.ai_index_off + 30] ^= 1;
	file_write(path, file, flen);
	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	{
		struct archive_index bad;

		ck_assert_int_eq(archive_index_read(fd, &bad, err,
		    sizeof(err)), -1);
		ck_assert_ptr_nonnull(strstr(err, "damaged"));
	}
	close(fd);
	/* and so is a file cut short (a copy interrupted) */
	file_write(path, file, flen - 5);
	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	{
		struct archive_index bad;

		ck_assert_int_eq(archive_index_read(fd, &bad, err,
		    sizeof(err)), -1);
	}
	close(fd);
	free(file);

	/*
	 * An index entry that states more raw bytes than its zstd frame can
	 * hold (a damaged index whose checksum still matches) is refused
	 * before that much memory is allocated.
	 */
	{
		struct archive_block b = idx.ai_blocks[1];

		b.ab_raw_len = UINT32_MAX;
		snprintf(path, sizeof(path), "%s/c.wal.zst", dir);
		ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
		ck_assert_int_eq(archive_read_block(fd, &b, 64 << 20, &ch, err,
		    sizeof(err)), -1);
		ck_assert_ptr_null(ch);
		ck_assert_msg(strstr(err, "states 4294967295 raw bytes, more "
		    "than its") != NULL, "%s", err);
		close(fd);
	}
	archive_index_free(&idx);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* ---- the store --------------------------------------------------------- */

static void
store_config(struct segment_config *cf, const char *dir)
{
	config_init(cf, dir);
	cf->segment_bytes = 256 * 1024;
}

/* Open and start the store. */
static struct segstore *
store_open_started(const struct segment_config *cf)
{
	struct segstore *ss = store_open(cf);

	store_start(ss);
	return ss;
}

/*
 * Locate seq, waiting for the reader thread as a subscriber does.
 * Returns what segstore_locate finally said (0 or -1).
 */
static int
locate_wait(struct segstore *ss, uint64_t seq, struct segment_span *sp)
{
	uint64_t deadline = mono_ms() + WAIT_MS;
	struct segstore_state st;
	unsigned long gen;
	int rc;

	for (;;) {
		gen = notify_gen();
		if ((rc = segstore_locate(ss, seq, sp)) != SEGSTORE_PENDING)
			return rc;
		REQUIRE(mono_ms() < deadline);
		wait_notify(gen);
		segstore_poll(ss, &st);
	}
}

/* Every frame from the store is the model's frame, byte for byte. */
static void
check_all(struct segstore *ss, const struct model *m, uint64_t step)
{
	struct segment_span sp;
	uint64_t seq;
	uint8_t *buf = NULL;

	for (seq = m->base; seq < m->base + m->n; seq += step) {
		size_t want = m->off[m->n] - m->off[seq - m->base], len;

		REQUIRE(locate_wait(ss, seq, &sp) == 0);
		REQUIRE(sp.sp_seq == seq && sp.sp_end_seq > seq);
		len = (size_t)sp.sp_len;
		REQUIRE(len <= want);
		REQUIRE(len == m->off[sp.sp_end_seq - m->base] -
		    m->off[seq - m->base]);
		if (sp.sp_chunk != NULL) {
			REQUIRE(sp.sp_fd == -1);
			REQUIRE(memcmp(sp.sp_chunk->ch_data + sp.sp_offset,
			    m->buf + m->off[seq - m->base], len) == 0);
		} else {
			REQUIRE((buf = realloc(buf, len + 1)) != NULL);
			REQUIRE(pread(sp.sp_fd, buf, len, (off_t)sp.sp_offset) ==
			    (ssize_t)len);
			REQUIRE(memcmp(buf, m->buf + m->off[seq - m->base],
			    len) == 0);
		}
		segstore_span_release(ss, &sp);
	}
	free(buf);
}

/* Append the model's frames from index from in chunks of 50. */
static void
append_model(struct segstore *ss, const struct model *m, uint64_t from)
{
	for (uint64_t i = from; i < m->n; i += 50) {
		uint64_t k = m->n - i < 50 ? m->n - i : 50;
		size_t len = m->off[i + k] - m->off[i];
		struct chunk *ch = chunk_new(len);

		REQUIRE(ch != NULL);
		memcpy(ch->ch_data, m->buf + m->off[i], len);
		ch->ch_len = len;
		ch->ch_nframes = (uint32_t)k;
		REQUIRE(segstore_append(ss, ch) == 0);
		REQUIRE(ch->ch_seq == m->base + i);
		chunk_unref(ch);
	}
}

static void
wait_archived(struct segstore *ss, uint64_t n, uint64_t durable)
{
	uint64_t deadline = mono_ms() + WAIT_MS;
	struct segstore_state st;

	for (;;) {
		unsigned long gen = notify_gen();

		segstore_poll(ss, &st);
		if (st.ss_archived >= n && st.ss_durable >= durable)
			return;
		ck_assert_msg(mono_ms() < deadline, "archived %" PRIu64
		    ", wanted %" PRIu64, st.ss_archived, n);
		wait_notify(gen);
	}
}

/* Files in dir whose names end in suffix. */
static int
count_suffix(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name), sl = strlen(suffix);

		if (l > sl && strcmp(de->d_name + l - sl, suffix) == 0)
			n++;
	}
	closedir(d);
	return n;
}

/* The name of the first file in dir ending in suffix. */
static void
first_suffix(const char *dir, const char *suffix, char *out, size_t len)
{
	char **names;
	size_t n;
	char err[256];

	ck_assert_int_eq(segment_list_dir_all(dir, &names, &n, err,
	    sizeof(err)), 0);
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(names[i]), sl = strlen(suffix);

		if (l > sl && strcmp(names[i] + l - sl, suffix) == 0) {
			snprintf(out, len, "%s", names[i]);
			break;
		}
	}
	segment_list_free(names, n);
	ck_assert_msg(out[0] != '\0', "no *%s in %s", suffix, dir);
}

static void
make_archived_store(const char *dir, struct model *m, unsigned nframes)
{
	struct segment_config cf;
	struct segstore *ss;

	model_init(m, 0);
	for (unsigned i = 0; i < nframes; i++)
		model_add(m, 200 + (size_t)(i * 7919 % 1400));
	store_config(&cf, dir);
	cf.archive.ac_enabled = 1;
	cf.archive.ac_keep_raw = 1;
	cf.archive.ac_block = 32 * 1024;
	ss = store_open_started(&cf);
	append_model(ss, m, 0);
	wait_archived(ss, 3, m->base + m->n);
	ck_assert_int_eq(segstore_close(ss), 0);
}

START_TEST(test_store_serves_archived)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();
	uint64_t before;

	model_init(&m, 0);
	for (int i = 0; i < 6000; i++)
		model_add(&m, 200 + (size_t)(i * 7919 % 1400));
	store_config(&cf, dir);
	cf.archive.ac_enabled = 1;
	cf.archive.ac_keep_raw = 1;
	cf.archive.ac_block = 32 * 1024;
	ss = store_open_started(&cf);
	append_model(ss, &m, 0);
	wait_archived(ss, 3, m.base + m.n);
	segstore_poll(ss, &st);
	/* every sealed segment but the newest one is compressed */
	ck_assert_uint_ge(st.ss_segments, 5);
	ck_assert_uint_lt(st.ss_archived_bytes, st.ss_archive_raw_bytes);
	check_all(ss, &m, 1);
	/*
	 * Retention and the status count compressed bytes. Once the archiver
	 * is done (every sealed segment but the newest archived, one file
	 * per segment) the files' sizes add up to the store's bytes.
	 */
	{
		struct stat sb;
		char **names, path[1024], err[256];
		size_t n;
		uint64_t total = 0, deadline = mono_ms() + WAIT_MS;

		for (;;) {
			unsigned long gen = notify_gen();

			ck_assert_int_eq(segment_list_dir_all(dir, &names, &n,
			    err, sizeof(err)), 0);
			segstore_poll(ss, &st);
			if (st.ss_archived + 2 == st.ss_segments &&
			    n == st.ss_segments)
				break;
			segment_list_free(names, n);
			ck_assert(mono_ms() < deadline);
			wait_notify(gen);
		}
		for (size_t i = 0; i < n; i++) {
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
			ck_assert_int_eq(stat(path, &sb), 0);
			total += (uint64_t)sb.st_size;
		}
		segment_list_free(names, n);
		segstore_poll(ss, &st);
		ck_assert_uint_eq(st.ss_store_bytes, total);
	}
	before = st.ss_archive_reads;
	ck_assert_uint_gt(before, 0);
	ck_assert_int_eq(segstore_close(ss), 0);
	ck_assert_int_eq(count_suffix(dir, ".wal.zst.tmp"), 0);

	/* after a restart: the same bytes at the same sequences */
	ss = store_open_started(&cf);
	check_all(ss, &m, 7);
	ck_assert_int_eq(segstore_close(ss), 0);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/*
 * What a kill -9 leaves at each step of archiving, and what the next
 * start makes of it: the frames are served from exactly one file.
 */
START_TEST(test_store_interrupted_steps)
{
	struct segment_config cf;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), zname[160], path[1024], raw[1024];
	uint8_t *zfile;
	size_t zlen;
	int nz;

	make_archived_store(dir, &m, 6000);
	store_config(&cf, dir);
	nz = count_suffix(dir, ".wal.zst");
	first_suffix(dir, ".wal.zst", zname, sizeof(zname));
	snprintf(path, sizeof(path), "%s/%s", dir, zname);
	snprintf(raw, sizeof(raw), "%s/%.*s", dir, (int)strlen(zname) - 4,
	    zname);
	zfile = file_read(path, &zlen);

	/* killed while writing the temporary file: it goes */
	file_write(raw, m.buf, 0);	/* placeholder, replaced below */
	unlink(raw);
	{
		char tmp[1100];

		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		file_write(tmp, zfile, zlen / 2);
		ss = store_open_started(&cf);
		ck_assert_int_eq(access(tmp, F_OK), -1);
		check_all(ss, &m, 3);
		ck_assert_int_eq(segstore_close(ss), 0);
	}

	/*
	 * Killed after the rename, before the raw file was removed: both
	 * exist; the complete .wal.zst wins.
	 */
	{
		struct archive_index idx;
		int fd = open(path, O_RDONLY);
		char err[256];

		ck_assert_int_eq(archive_index_read(fd, &idx, err, sizeof(err)),
		    0);
		close(fd);
		file_write(raw, m.buf + m.off[idx.ai_base - m.base],
		    idx.ai_raw_bytes);
		archive_index_free(&idx);
	}
	ss = store_open_started(&cf);
	ck_assert_int_eq(access(raw, F_OK), -1);
	ck_assert_int_eq(access(path, F_OK), 0);
	ck_assert_int_eq(count_suffix(dir, ".wal.zst"), nz);
	check_all(ss, &m, 3);
	ck_assert_int_eq(segstore_close(ss), 0);

	/*
	 * The same with a .wal.zst whose index is damaged (cannot happen
	 * after a clean rename, but a disk may do it): the raw file wins.
	 */
	{
		struct archive_index idx;
		int fd = open(path, O_RDONLY);
		char err[256];
		uint8_t *bad = malloc(zlen);

		ck_assert_int_eq(archive_index_read(fd, &idx, err, sizeof(err)),
		    0);
		close(fd);
		file_write(raw, m.buf + m.off[idx.ai_base - m.base],
		    idx.ai_raw_bytes);
		memcpy(bad, zfile, zlen);
		bad[zlen - 20] ^= 0xff;
		file_write(path, bad, zlen);
		archive_index_free(&idx);
		free(bad);
	}
	cf.archive.ac_enabled = 0;
	ss = store_open_started(&cf);
	ck_assert_int_eq(access(raw, F_OK), 0);
	ck_assert_int_eq(access(path, F_OK), -1);
	check_all(ss, &m, 3);
	ck_assert_int_eq(segstore_close(ss), 0);

	/* a damaged .wal.zst alone is refused at open, with its name */
	{
		struct segstore *bad;
		char err[1024];

		file_write(path, zfile, zlen - 3);
		unlink(raw);
		bad = segstore_open(&cf, err, sizeof(err));
		ck_assert_ptr_null(bad);
		ck_assert_msg(strstr(err, zname) != NULL, "%s", err);
	}
	free(zfile);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(test_store_corrupt_block)
{
	struct segment_config cf;
	struct segstore_corrupt c;
	struct segment_span sp;
	struct archive_index idx;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), zname[160], path[1024], err[256];
	uint8_t *zfile;
	size_t zlen;
	uint64_t bad;
	int fd;

	make_archived_store(dir, &m, 6000);
	store_config(&cf, dir);
	first_suffix(dir, ".wal.zst", zname, sizeof(zname));
	snprintf(path, sizeof(path), "%s/%s", dir, zname);
	ck_assert_int_ne(fd = open(path, O_RDONLY), -1);
	ck_assert_int_eq(archive_index_read(fd, &idx, err, sizeof(err)), 0);
	close(fd);
	ck_assert_uint_gt(idx.ai_nblocks, 3);
	zfile = file_read(path, &zlen);
	zfile[idx.ai_blocks[2].ab_zoff + idx.ai_blocks[2].ab_zlen / 2] ^= 0x40;
	file_write(path, zfile, zlen);
	bad = idx.ai_blocks[2].ab_seq;

	ss = store_open_started(&cf);
	/* before the bad block: served */
	ck_assert_int_eq(locate_wait(ss, bad - 1, &sp), 0);
	ck_assert_int_eq(memcmp(sp.sp_chunk->ch_data + sp.sp_offset,
	    m.buf + m.off[bad - 1 - m.base], (size_t)sp.sp_len), 0);
	segstore_span_release(ss, &sp);
	/* the bad block: not served, reported with the file and offset */
	ck_assert_int_eq(locate_wait(ss, bad + 1, &sp), -1);
	ck_assert_int_eq(segstore_corrupt_at(ss, bad + 1, &c), 1);
	ck_assert_str_eq(c.sc_name, zname);
	ck_assert_uint_eq(c.sc_offset, idx.ai_blocks[2].ab_zoff);
	ck_assert_uint_eq(c.sc_first, bad);
	ck_assert_uint_eq(segstore_limit(ss), bad);
	/* past it in the same segment: not served either */
	ck_assert_int_eq(locate_wait(ss, idx.ai_blocks[3].ab_seq, &sp), -1);
	/* later segments are */
	ck_assert_int_eq(locate_wait(ss, idx.ai_base + idx.ai_nframes, &sp),
	    0);
	segstore_span_release(ss, &sp);
	ck_assert_int_eq(segstore_close(ss), 0);
	free(zfile);
	archive_index_free(&idx);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

static Suite *
archive_suite(void)
{
	Suite *s = suite_create("archive");
	TCase *tc = tcase_create("format");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_random_access);
	tcase_add_test(tc, test_corrupt_block);
	tcase_add_test(tc, test_read_pieces);
	tcase_add_test(tc, test_reader_threads);
	suite_add_tcase(s, tc);
	tc = tcase_create("store");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_store_serves_archived);
	tcase_add_test(tc, test_store_interrupted_steps);
	tcase_add_test(tc, test_store_corrupt_block);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(archive_suite());
	int failed;

	log_init("test_archive", LOG_LEVEL_WARN, 0);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
