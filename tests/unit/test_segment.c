/*
 * test_segment.c: the segment store on a real file system: append and
 * rotation, recovery, epochs, locking, locate, retention, disk trouble and
 * the fsync modes.
 */
#include "autoconfig.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <check.h>
#include <dirent.h>
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

#include <zlib.h>

#include "fcw2.h"
#include "archive.h"
#include "chunk.h"
#include "log.h"
#include "segment.h"
#include "storetest.h"
#include "wrfault.h"

#define WAIT_MS		20000	/* deadline for anything the writer does */

/* ---- helpers ----------------------------------------------------------- */

static uint64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Wait until pred holds for the store's state, re-checking after each
 * notification (or every 50 ms), for at most ms. Returns whether it held.
 */
static int
wait_state(struct segstore *ss, int (*pred)(const struct segstore_state *,
    uint64_t), uint64_t arg, unsigned ms, struct segstore_state *out)
{
	struct segstore_state st;
	uint64_t deadline = mono_ms() + ms;
	unsigned long gen;

	for (;;) {
		gen = notify_gen();
		segstore_poll(ss, &st);
		if (out != NULL)
			*out = st;
		if (pred(&st, arg))
			return 1;
		if (mono_ms() >= deadline)
			return 0;
		wait_notify(gen);
	}
}

static int
p_durable(const struct segstore_state *st, uint64_t seq)
{
	return st->ss_durable >= seq && st->ss_error == 0;
}

static int
p_written(const struct segstore_state *st, uint64_t seq)
{
	return st->ss_written >= seq;
}

static int
p_error(const struct segstore_state *st, uint64_t err)
{
	return st->ss_error == (int)err;
}

static int
p_write_errors(const struct segstore_state *st, uint64_t n)
{
	return st->ss_write_errors >= n;
}

static void
wait_durable(struct segstore *ss, uint64_t seq)
{
	struct segstore_state st;

	ck_assert_msg(wait_state(ss, p_durable, seq, WAIT_MS, &st),
	    "durable %" PRIu64 " (error %d), wanted %" PRIu64, st.ss_durable,
	    st.ss_error, seq);
}

static uint64_t
model_end(const struct model *m)
{
	return m->base + m->n;
}

static size_t
frame_make(uint64_t seq, uint8_t *out, size_t cap)
{
	struct fcw2_record rec;
	uint8_t key[32], value[256];
	size_t klen, vlen, n;

	klen = (size_t)snprintf((char *)key, sizeof(key), "key-%" PRIu64, seq);
	vlen = (seq * 37) % 200;
	/* runs of one byte: every third frame compresses (LZ4 payload) */
	memset(value, 'a' + (int)(seq % 26), vlen);
	if (seq % 3 != 0)
		for (size_t i = 0; i < vlen; i++)
			value[i] = (uint8_t)(seq * 131 + i * 7);
	memset(&rec, 0, sizeof(rec));
	rec.op = vlen == 0 ? FCW2_OP_DEL : FCW2_OP_SET;
	rec.key_len = (uint32_t)klen;
	rec.value_len = (uint32_t)vlen;
	rec.timestamp_ms = 1700000000000ull + seq;
	rec.expire_at_ms = -1;
	rec.key = key;
	rec.value = value;
	n = fcw2_encode(&rec, seq % 3 == 0, out, cap);
	REQUIRE(n > 0);
	return n;
}

/* A chunk of nframes new frames (one reference, the caller's). */
static struct chunk *
model_chunk(struct model *m, unsigned nframes)
{
	uint8_t frame[1024];
	struct chunk *ch;
	size_t n;

	ch = chunk_new(nframes * sizeof(frame));
	REQUIRE(ch != NULL);
	for (unsigned i = 0; i < nframes; i++) {
		n = frame_make(model_end(m), frame, sizeof(frame));
		memcpy(ch->ch_data + ch->ch_len, frame, n);
		ch->ch_len += n;
		model_push(m, frame, n);
	}
	ch->ch_nframes = nframes;
	return ch;
}

/* Append nchunks chunks of 1..maxframes frames. */
static void
append_chunks(struct segstore *ss, struct model *m, unsigned nchunks,
    unsigned maxframes)
{
	for (unsigned i = 0; i < nchunks; i++) {
		unsigned nf = 1 + (unsigned)((model_end(m) + i) % maxframes);
		uint64_t seq = model_end(m);
		struct chunk *ch = model_chunk(m, nf);

		REQUIRE(segstore_append(ss, ch) == 0);
		REQUIRE(ch->ch_seq == seq);
		REQUIRE(segstore_next(ss) == seq + nf);
		chunk_unref(ch);
	}
}

/* A segment file as found on disk, checked frame by frame. */
struct dfile {
	char		 name[128];
	uint64_t	 base;
	uint64_t	 created;
	uint64_t	 nframes;
	uint8_t		*data;
	size_t		 len;
};

static size_t
read_dir(const char *dir, struct dfile **out)
{
	struct fcw2_checker chk;
	struct dfile *v;
	struct stat sb;
	char **names, err[512], path[PATH_MAX];
	size_t n;
	int fd;

	ck_assert_msg(segment_list_dir(dir, &names, &n, err, sizeof(err)) == 0,
	    "%s", err);
	v = calloc(n + 1, sizeof(*v));
	ck_assert_ptr_nonnull(v);
	fcw2_checker_init(&chk, 1024 * 1024, 1);
	for (size_t i = 0; i < n; i++) {
		size_t off = 0, flen;

		snprintf(v[i].name, sizeof(v[i].name), "%s", names[i]);
		ck_assert_int_eq(segment_name_parse(names[i], &v[i].base,
		    &v[i].created), 0);
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		ck_assert_int_ge(fd = open(path, O_RDONLY), 0);
		ck_assert_int_eq(fstat(fd, &sb), 0);
		v[i].len = (size_t)sb.st_size;
		v[i].data = malloc(v[i].len + 1);
		ck_assert_ptr_nonnull(v[i].data);
		ck_assert_int_eq(read(fd, v[i].data, v[i].len),
		    (ssize_t)v[i].len);
		close(fd);
		/* whole valid frames only: nothing partial on disk */
		while (off < v[i].len) {
			int st = fcw2_check(&chk, v[i].data + off,
			    v[i].len - off, &flen, NULL);
			if (st != FCW2_OK)
				ck_abort_msg("%s: offset %zu: %s", names[i],
				    off, fcw2_strerror(st));
			off += flen;
			v[i].nframes++;
		}
	}
	fcw2_checker_free(&chk);
	segment_list_free(names, n);
	*out = v;
	return n;
}

static void
dfiles_free(struct dfile *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].data);
	free(v);
}

/*
 * The files hold exactly the model's frames from `from` to its end,
 * contiguous and byte for byte.
 */
static void
check_files(const char *dir, const struct model *m, uint64_t from)
{
	struct dfile *v;
	size_t n = read_dir(dir, &v);
	uint64_t seq = from;

	ck_assert_uint_gt(n, 0);
	for (size_t i = 0; i < n; i++) {
		uint64_t k = v[i].base - m->base;

		ck_assert_msg(v[i].base == seq, "%s: base %" PRIu64 ", expected "
		    "%" PRIu64, v[i].name, v[i].base, seq);
		ck_assert_uint_le(k + v[i].nframes, m->n);
		ck_assert_uint_eq(v[i].len, m->off[k + v[i].nframes] - m->off[k]);
		ck_assert_msg(memcmp(v[i].data, m->buf + m->off[k], v[i].len) ==
		    0, "%s: bytes differ", v[i].name);
		seq += v[i].nframes;
	}
	ck_assert_uint_eq(seq, model_end(m));
	dfiles_free(v, n);
}

static void
path_of(char *buf, size_t len, const char *dir, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
}

static void
file_write(const char *path, const uint8_t *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static uint64_t
file_size(const char *path)
{
	struct stat sb;

	ck_assert_int_eq(stat(path, &sb), 0);
	return (uint64_t)sb.st_size;
}

static int
file_exists(const char *dir, const char *name)
{
	char path[PATH_MAX];

	path_of(path, sizeof(path), dir, name);
	return access(path, F_OK) == 0;
}

/* ---- append, rotation, reopen ------------------------------------------ */

START_TEST(append_rotate)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new();
	uint64_t t0 = wall_ms(), t1;
	size_t n, maxchunk = 8 * 1024;

	config_init(&cf, dir);
	cf.segment_bytes = 4096;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 300, 7);
	wait_durable(ss, model_end(&m));
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_durable, model_end(&m));
	ck_assert_uint_eq(st.ss_written, model_end(&m));
	ck_assert_uint_eq(st.ss_next, model_end(&m));
	ck_assert_uint_eq(st.ss_earliest, 0);
	ck_assert_uint_eq(st.ss_pending_bytes, 0);
	ck_assert_uint_eq(st.ss_bytes_written, m.len);
	ck_assert_uint_eq(st.ss_store_bytes, m.len);
	ck_assert_uint_ge(st.ss_fsyncs, 1);
	segstore_close(ss);
	t1 = wall_ms();

	check_files(dir, &m, 0);
	n = read_dir(dir, &v);
	ck_assert_uint_ge(n, 5);
	ck_assert_uint_eq(n, st.ss_segments);
	for (size_t i = 0; i < n; i++) {
		ck_assert_uint_ge(v[i].created, t0);
		ck_assert_uint_le(v[i].created, t1);
		if (i > 0)
			ck_assert_uint_ge(v[i].created, v[i - 1].created);
		/* rotated at the first chunk boundary past segment_bytes */
		ck_assert_uint_lt(v[i].len, cf.segment_bytes + maxchunk);
		if (i + 1 < n)
			ck_assert_uint_ge(v[i].len, cf.segment_bytes);
	}
	dfiles_free(v, n);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(reopen_continues)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), name[128];
	uint64_t epoch, mid;

	config_init(&cf, dir);
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 20, 5);
	wait_durable(ss, model_end(&m));
	epoch = segstore_epoch(ss);
	segstore_close(ss);

	ss = store_open(&cf);
	mid = model_end(&m);
	ck_assert_uint_eq(segstore_next(ss), mid);
	ck_assert_uint_eq(segstore_epoch(ss), epoch);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_durable, mid);
	ck_assert_uint_eq(st.ss_earliest, 0);
	ck_assert_uint_eq(st.ss_cut_bytes, 0);
	store_start(ss);
	append_chunks(ss, &m, 20, 5);
	wait_durable(ss, model_end(&m));
	segstore_close(ss);

	/* a start always begins a new segment, named by its first frame */
	check_files(dir, &m, 0);
	snprintf(name, sizeof(name), "segment-%020" PRIu64 "-", mid);
	{
		struct dfile *v;
		size_t n = read_dir(dir, &v);

		ck_assert_uint_eq(n, 2);
		ck_assert(strncmp(v[1].name, name, strlen(name)) == 0);
		dfiles_free(v, n);
	}
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(rotate_by_age)
{
	struct segment_config cf;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new();
	uint64_t t, starts[3];
	size_t n, found = 0;

	config_init(&cf, dir);
	cf.segment_age_ms = 5;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	for (int i = 0; i < 3; i++) {
		starts[i] = model_end(&m);
		append_chunks(ss, &m, 2, 3);
		wait_durable(ss, model_end(&m));
		/* let the segment grow older than segment_age_ms */
		for (t = wall_ms(); wall_ms() < t + 2 * cf.segment_age_ms;)
			;
	}
	segstore_close(ss);
	check_files(dir, &m, 0);
	/* a chunk after the age passed starts a new file */
	n = read_dir(dir, &v);
	for (size_t i = 0; i < n; i++)
		for (int k = 0; k < 3; k++)
			if (v[i].base == starts[k])
				found++;
	ck_assert_uint_eq(found, 3);
	dfiles_free(v, n);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(close_without_start_drains)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();

	config_init(&cf, dir);
	ss = store_open(&cf);
	model_init(&m, 0);
	append_chunks(ss, &m, 10, 3);
	segstore_close(ss);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* ---- recovery ----------------------------------------------------------- */

/*
 * In a child process: open, append 30 frames, wait until they are durable,
 * then exit without closing (an unclean stop). The frames' bytes follow
 * from their sequences, so the model here gets the same ones. Returns the
 * new end.
 */
static uint64_t
run_unclean_child(const struct segment_config *cf, struct model *m)
{
	uint64_t from = model_end(m);
	pid_t pid;
	int status;

	for (unsigned i = 0; i < 10; i++)
		chunk_unref(model_chunk(m, 3));
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct segstore_state st;
		struct segstore *ss;
		struct model cm;
		char err[1024];

		if ((ss = segstore_open(cf, err, sizeof(err))) == NULL ||
		    segstore_start(ss, notify_cb, NULL) != 0)
			_exit(2);
		if (segstore_next(ss) != from)
			_exit(3);
		model_init(&cm, from);
		for (unsigned i = 0; i < 10; i++) {
			struct chunk *ch = model_chunk(&cm, 3);

			segstore_append(ss, ch);
			chunk_unref(ch);
		}
		if (!wait_state(ss, p_durable, model_end(&cm), WAIT_MS, &st))
			_exit(4);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	return model_end(m);
}


/* A store holding one segment of the model's frames; returns its path. */
static void
make_store(struct segment_config *cf, struct model *m, unsigned nchunks,
    unsigned maxframes, char *path, size_t pathlen)
{
	struct segstore *ss = store_open(cf);
	struct dfile *v;
	size_t n;

	store_start(ss);
	append_chunks(ss, m, nchunks, maxframes);
	wait_durable(ss, model_end(m));
	segstore_close(ss);
	n = read_dir(cf->dir, &v);
	ck_assert_uint_eq(n, 1);
	path_of(path, pathlen, cf->dir, v[0].name);
	dfiles_free(v, n);
}

START_TEST(recover_torn_tail_every_byte)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), path[PATH_MAX];
	uint64_t epoch, last, flen;

	config_init(&cf, dir);
	model_init(&m, 0);
	ss = store_open(&cf);
	epoch = segstore_epoch(ss);
	segstore_close(ss);
	/* a crash: the stop is unclean, and the tail is torn below */
	run_unclean_child(&cf, &m);
	{
		struct dfile *v;
		size_t n = read_dir(dir, &v);

		ck_assert_uint_eq(n, 1);
		path_of(path, sizeof(path), dir, v[0].name);
		dfiles_free(v, n);
	}
	last = m.n - 1;
	flen = m.off[m.n] - m.off[last];
	ck_assert_uint_gt(flen, FCW2_OVERHEAD);

	for (uint64_t k = 0; k < flen; k++) {
		/* the last frame cut short after k of its bytes */
		file_write(path, m.buf, m.off[last] + k);
		ss = store_open(&cf);
		segstore_poll(ss, &st);
		ck_assert_uint_eq(segstore_next(ss), last);
		ck_assert_uint_eq(st.ss_durable, last);
		ck_assert_uint_eq(st.ss_cut_bytes, k);
		ck_assert_uint_eq(file_size(path), m.off[last]);
		/* fsync=always: nothing a subscriber saw was lost */
		ck_assert_uint_eq(segstore_epoch(ss), epoch);
		segstore_close(ss);
	}
	m.n = last;
	m.len = m.off[last];
	check_files(dir, &m, 0);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/*
 * A bad frame in the newest segment with whole valid frames after it is
 * corruption, not a torn tail: the frames stay under the same epoch and
 * the store does not serve from the bad frame on (variant 0: a flipped
 * bit; 1: a record crc wrong inside a right frame crc; 2: a torn last
 * frame after them is still cut). When the damaged bytes hide how many
 * frames they held (3: a length field off by one), they are cut from the
 * bad frame on, kept in a .damaged file, and the store takes a new epoch.
 * Unwritten space at the end (4: zeros) and a whole-length last frame
 * that is bad with nothing after it (5) are torn tails: cut, same epoch.
 */
START_TEST(recover_corrupt_middle_of_newest)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segment_span sp;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), path[PATH_MAX], name[128];
	uint8_t *bad;
	uint64_t epoch, want_limit = UINT64_MAX, want_next, want_len;
	size_t len, zeros = 4096;
	int variant = _i, newepoch = 0;
	struct dfile *v;

	config_init(&cf, dir);
	model_init(&m, 0);
	ss = store_open(&cf);
	epoch = segstore_epoch(ss);
	segstore_close(ss);
	/* a crash (unclean stop) left the file; then its bytes change */
	run_unclean_child(&cf, &m);
	ck_assert_uint_ge(m.n, 12);
	ck_assert_uint_eq(read_dir(dir, &v), 1);
	snprintf(name, sizeof(name), "%s", v[0].name);
	path_of(path, sizeof(path), dir, name);
	dfiles_free(v, 1);

	bad = calloc(1, m.len + zeros);
	memcpy(bad, m.buf, m.len);
	len = m.len;
	want_next = m.n;
	want_len = m.len;
	switch (variant) {
	case 0:
	case 2:
		/* a flipped bit: the frame crc no longer matches */
		bad[m.off[5] + FCW2_HEADER_LEN] ^= 0x10;
		want_limit = 5;
		if (variant == 2) {
			/* and the last frame torn */
			len = m.off[m.n - 1] + 7;
			want_next = m.n - 1;
			want_len = m.off[m.n - 1];
		}
		break;
	case 1: {
		/*
		 * A record whose own crc is wrong inside a frame whose crc
		 * is right: only a check of the record finds it. Frame 4 is
		 * stored uncompressed (seq % 3 != 0).
		 */
		uint8_t *f = bad + m.off[4];
		size_t flen = m.off[5] - m.off[4];
		uint32_t c;

		ck_assert_int_eq(f[4] & FCW2_FLAG_LZ4, 0);
		f[flen - FCW2_CRC_LEN - 1] ^= 0x01;	/* record crc */
		c = (uint32_t)crc32(0, f, (unsigned)(flen - FCW2_CRC_LEN));
		f[flen - 4] = (uint8_t)c;
		f[flen - 3] = (uint8_t)(c >> 8);
		f[flen - 2] = (uint8_t)(c >> 16);
		f[flen - 1] = (uint8_t)(c >> 24);
		want_limit = 4;
		break;
	}
	case 3:
		bad[m.off[5] + 5] ^= 0x01;		/* payload length */
		want_next = 5;
		want_len = m.off[5];
		newepoch = 1;
		break;
	case 4:
		len = m.len + zeros;			/* unwritten space */
		break;
	case 5:
		bad[m.off[m.n - 1] + FCW2_HEADER_LEN] ^= 0x10;
		want_next = m.n - 1;
		want_len = m.off[m.n - 1];
		break;
	}
	file_write(path, bad, len);

	ss = store_open(&cf);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(segstore_next(ss), want_next);
	ck_assert_uint_eq(st.ss_cut_bytes, len - want_len);
	ck_assert_uint_eq(segstore_limit(ss), want_limit);
	if (newepoch)
		ck_assert_uint_ne(segstore_epoch(ss), epoch);
	else
		ck_assert_uint_eq(segstore_epoch(ss), epoch);
	if (want_limit != UINT64_MAX) {
		/* served up to the bad frame, not from it on */
		ck_assert_int_eq(segstore_locate(ss, 0, &sp), 0);
		ck_assert_uint_eq(sp.sp_end_seq, want_limit);
		ck_assert_uint_eq(sp.sp_len, m.off[want_limit]);
		segstore_unpin(ss, sp.sp_pin);
		ck_assert_int_eq(segstore_locate(ss, want_limit, &sp), -1);
		ck_assert_int_eq(segstore_locate(ss, want_next - 1, &sp), -1);
	} else {
		ck_assert_int_eq(segstore_locate(ss, want_next - 1, &sp), 0);
		ck_assert_uint_eq(sp.sp_end_seq, want_next);
		segstore_unpin(ss, sp.sp_pin);
	}
	segstore_close(ss);

	/* the file keeps exactly want_len bytes; nothing else was touched */
	ck_assert_uint_eq(file_size(path), want_len);
	{
		uint8_t *now = malloc(want_len + 1);
		int fd = open(path, O_RDONLY);

		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(read(fd, now, want_len), (ssize_t)want_len);
		close(fd);
		ck_assert(memcmp(now, bad, want_len) == 0);
		free(now);
	}
	if (newepoch) {
		/* the bytes cut are kept next to it, not as a segment */
		DIR *d = opendir(dir);
		struct dirent *de;
		int found = 0;

		ck_assert_ptr_nonnull(d);
		while ((de = readdir(d)) != NULL)
			if (strncmp(de->d_name, name, strlen(name)) == 0 &&
			    strstr(de->d_name, ".damaged-") != NULL) {
				char p2[PATH_MAX];

				path_of(p2, sizeof(p2), dir, de->d_name);
				ck_assert_uint_eq(file_size(p2), len - want_len);
				found = 1;
			}
		closedir(d);
		ck_assert(found);
	}
	{
		char **names, err[512];
		size_t n;

		ck_assert_int_eq(segment_list_dir(dir, &names, &n, err,
		    sizeof(err)), 0);
		ck_assert_uint_eq(n, 1);
		segment_list_free(names, n);
	}
	free(bad);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(recover_empty_newest)
{
	struct segment_config cf;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), path[PATH_MAX], name[128];

	config_init(&cf, dir);
	model_init(&m, 0);
	make_store(&cf, &m, 4, 3, path, sizeof(path));
	/* a stop right after creating the next file, and a torn header */
	snprintf(name, sizeof(name), "segment-%020" PRIu64 "-%" PRIu64 ".wal",
	    model_end(&m), wall_ms());
	path_of(path, sizeof(path), dir, name);
	file_write(path, NULL, 0);
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_next(ss), model_end(&m));
	ck_assert(!file_exists(dir, name));
	segstore_close(ss);
	file_write(path, (const uint8_t *)"FCW", 3);
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_next(ss), model_end(&m));
	ck_assert(!file_exists(dir, name));
	segstore_close(ss);
	check_files(dir, &m, 0);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(corrupt_sealed_sets_limit)
{
	struct segment_config cf;
	struct segment_span sp;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new(), path[PATH_MAX];
	uint64_t bad, next;
	size_t n, k;
	int verify = _i;

	config_init(&cf, dir);
	cf.segment_bytes = 2048;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 60, 3);
	wait_durable(ss, model_end(&m));
	segstore_close(ss);

	n = read_dir(dir, &v);
	ck_assert_uint_ge(n, 4);
	/* damage a frame in the middle of the second file */
	k = v[1].nframes / 2;
	bad = v[1].base + k;
	path_of(path, sizeof(path), dir, v[1].name);
	v[1].data[m.off[bad] - m.off[v[1].base] + FCW2_HEADER_LEN + 2] ^= 0xff;
	file_write(path, v[1].data, v[1].len);

	cf.verify_sealed = verify;
	ss = store_open(&cf);
	next = segstore_next(ss);
	ck_assert_uint_eq(next, model_end(&m));
	if (verify) {
		ck_assert_uint_eq(segstore_limit(ss), bad);
	} else {
		/* found by the first read of that segment */
		ck_assert_uint_eq(segstore_limit(ss), UINT64_MAX);
		ck_assert_int_eq(segstore_locate(ss, v[1].base, &sp), 0);
		ck_assert_uint_eq(sp.sp_end_seq, bad);
		ck_assert_uint_eq(sp.sp_len, m.off[bad] - m.off[v[1].base]);
		segstore_unpin(ss, sp.sp_pin);
		ck_assert_uint_eq(segstore_limit(ss), bad);
	}
	/*
	 * Served up to the bad frame, not the rest of its file, nothing
	 * deleted; the next files are served.
	 */
	ck_assert_int_eq(segstore_locate(ss, bad - 1, &sp), 0);
	ck_assert_uint_eq(sp.sp_end_seq, bad);
	segstore_unpin(ss, sp.sp_pin);
	ck_assert_int_eq(segstore_locate(ss, 0, &sp), 0);
	segstore_unpin(ss, sp.sp_pin);
	ck_assert_int_eq(segstore_locate(ss, bad, &sp), -1);
	ck_assert_int_eq(segstore_locate(ss, v[2].base - 1, &sp), -1);
	ck_assert_int_eq(segstore_locate(ss, v[2].base, &sp), 0);
	segstore_unpin(ss, sp.sp_pin);
	ck_assert_int_eq(segstore_locate(ss, next - 1, &sp), 0);
	segstore_unpin(ss, sp.sp_pin);
	/* the unreadable range: [bad, the next file's first frame) */
	{
		struct segstore_corrupt c;

		ck_assert_int_eq(segstore_corrupt_at(ss, bad - 1, &c), 0);
		ck_assert_int_eq(segstore_corrupt_at(ss, v[2].base, &c), 0);
		ck_assert_int_eq(segstore_corrupt_at(ss, next - 1, &c), 0);
		for (uint64_t q = bad; q < v[2].base; q++) {
			memset(&c, 0, sizeof(c));
			ck_assert_int_eq(segstore_corrupt_at(ss, q, &c), 1);
			ck_assert_str_eq(c.sc_name, v[1].name);
			ck_assert_uint_eq(c.sc_first, bad);
			ck_assert_uint_eq(c.sc_end, v[2].base);
			ck_assert_uint_eq(c.sc_offset, m.off[bad] -
			    m.off[v[1].base]);
		}
	}
	segstore_close(ss);
	for (size_t i = 0; i < n; i++)
		ck_assert(file_exists(dir, v[i].name));
	dfiles_free(v, n);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* ---- epoch, metadata, lock ---------------------------------------------- */

START_TEST(epoch_rules)
{
	struct segment_config cf;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();
	uint64_t e0, e1, end;

	config_init(&cf, dir);
	model_init(&m, 0);
	ss = store_open(&cf);
	e0 = segstore_epoch(ss);
	ck_assert_uint_ne(e0, 0);
	store_start(ss);
	append_chunks(ss, &m, 5, 3);
	segstore_close(ss);

	/* a clean stop keeps the epoch */
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_epoch(ss), e0);
	ck_assert_uint_eq(segstore_next(ss), model_end(&m));
	segstore_close(ss);

	/* an unclean stop under fsync=always keeps it too */
	end = run_unclean_child(&cf, &m);
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_epoch(ss), e0);
	ck_assert_uint_eq(segstore_next(ss), end);
	segstore_close(ss);

	/* under fsync=never, an unclean stop may have lost seen frames */
	cf.fsync_mode = FSYNC_NEVER;
	end = run_unclean_child(&cf, &m);
	cf.fsync_mode = FSYNC_ALWAYS;
	ss = store_open(&cf);
	e1 = segstore_epoch(ss);
	ck_assert_uint_ne(e1, e0);
	ck_assert_uint_eq(segstore_next(ss), end);
	segstore_close(ss);
	/* and the new epoch is kept from then on */
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_epoch(ss), e1);
	segstore_close(ss);

	/* a clean stop under fsync=never keeps it */
	cf.fsync_mode = FSYNC_NEVER;
	ss = store_open(&cf);
	store_start(ss);
	append_chunks(ss, &m, 5, 3);
	segstore_close(ss);
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_epoch(ss), e1);
	ck_assert_uint_eq(segstore_next(ss), model_end(&m));
	segstore_close(ss);

	check_files(dir, &m, 0);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(adopt_empty_store)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segment_span sp;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();

	config_init(&cf, dir);
	ss = store_open(&cf);
	ck_assert_int_eq(segstore_adopt(ss, 0x1234abcdULL, 5000), 0);
	ck_assert_uint_eq(segstore_next(ss), 5000);
	ck_assert_uint_eq(segstore_epoch(ss), 0x1234abcdULL);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_earliest, 5000);
	ck_assert_uint_eq(st.ss_durable, 5000);
	ck_assert_int_eq(segstore_locate(ss, 4999, &sp), -1);
	segstore_close(ss);

	/* kept across a restart before any frame arrived */
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_next(ss), 5000);
	ck_assert_uint_eq(segstore_epoch(ss), 0x1234abcdULL);
	store_start(ss);
	model_init(&m, 5000);
	append_chunks(ss, &m, 3, 2);
	ck_assert_int_eq(segstore_adopt(ss, 1, 0), -1);
	wait_durable(ss, model_end(&m));
	segstore_close(ss);
	check_files(dir, &m, 5000);
	ss = store_open(&cf);
	ck_assert_int_eq(segstore_adopt(ss, 1, 0), -1);
	ck_assert_uint_eq(segstore_epoch(ss), 0x1234abcdULL);
	segstore_close(ss);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(meta_bad_checksum_refused)
{
	struct segment_config cf;
	struct segstore *ss;
	char *dir = tmpdir_new(), path[PATH_MAX], err[1024], buf[1024];
	char *p;
	ssize_t n;
	int fd;

	config_init(&cf, dir);
	ss = store_open(&cf);
	segstore_close(ss);
	path_of(path, sizeof(path), dir, "walrelay.meta");
	ck_assert_int_ge(fd = open(path, O_RDONLY), 0);
	ck_assert_int_gt(n = read(fd, buf, sizeof(buf) - 1), 0);
	close(fd);
	buf[n] = '\0';
	ck_assert_ptr_nonnull(p = strstr(buf, "epoch "));
	p[6] = p[6] == '0' ? '1' : '0';
	file_write(path, (uint8_t *)buf, (size_t)n);

	ss = segstore_open(&cf, err, sizeof(err));
	ck_assert_ptr_null(ss);
	ck_assert_msg(strstr(err, "walrelay.meta") != NULL, "%s", err);
	ck_assert_msg(strstr(err, "damaged") != NULL, "%s", err);
	/* not silently replaced */
	ck_assert_int_ge(fd = open(path, O_RDONLY), 0);
	ck_assert_int_eq(read(fd, buf + 512, 511), n);
	close(fd);
	ck_assert(memcmp(buf, buf + 512, (size_t)n) == 0);
	/* moving it away is the documented way out */
	ck_assert_int_eq(unlink(path), 0);
	ss = store_open(&cf);
	segstore_close(ss);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(lock_excludes_second_open)
{
	struct segment_config cf;
	struct segstore *a, *b;
	char *dir = tmpdir_new(), err[1024];

	config_init(&cf, dir);
	a = store_open(&cf);
	b = segstore_open(&cf, err, sizeof(err));
	ck_assert_ptr_null(b);
	ck_assert_msg(strstr(err, "in use") != NULL, "%s", err);
	segstore_close(a);
	b = store_open(&cf);
	segstore_close(b);
	tmpdir_rm(dir);
}
END_TEST

/* ---- locate ------------------------------------------------------------- */

static void
check_locate_all(struct segstore *ss, const struct model *m, const char *dir)
{
	struct segment_span sp;
	struct segstore_state st;
	struct dfile *v;
	uint8_t buf[1024];
	size_t n = read_dir(dir, &v), f = 0;

	segstore_poll(ss, &st);
	for (uint64_t seq = st.ss_earliest; seq < st.ss_durable; seq++) {
		uint64_t k = seq - m->base, flen = m->off[k + 1] - m->off[k];
		uint64_t fend;

		while (f + 1 < n && v[f + 1].base <= seq)
			f++;
		fend = v[f].base + v[f].nframes;
		ck_assert_msg(segstore_locate(ss, seq, &sp) == 0, "locate %"
		    PRIu64, seq);
		ck_assert_uint_eq(sp.sp_seq, seq);
		ck_assert_uint_eq(sp.sp_offset, m->off[k] - m->off[v[f].base -
		    m->base]);
		ck_assert_uint_eq(sp.sp_end_seq, fend);
		ck_assert_uint_eq(sp.sp_offset + sp.sp_len, v[f].len);
		ck_assert_int_eq(pread(sp.sp_fd, buf, flen,
		    (off_t)sp.sp_offset), (ssize_t)flen);
		ck_assert(memcmp(buf, m->buf + m->off[k], flen) == 0);
		segstore_unpin(ss, sp.sp_pin);
	}
	ck_assert_int_eq(segstore_locate(ss, st.ss_durable, &sp), -1);
	ck_assert_int_eq(segstore_locate(ss, st.ss_durable + 1000, &sp), -1);
	if (st.ss_earliest > 0)
		ck_assert_int_eq(segstore_locate(ss, st.ss_earliest - 1, &sp),
		    -1);
	dfiles_free(v, n);
}

START_TEST(locate_spans)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();

	config_init(&cf, dir);
	cf.segment_bytes = 64 * 1024;	/* several index points a file */
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 400, 6);
	wait_durable(ss, model_end(&m));
	check_locate_all(ss, &m, dir);	/* index built while writing */
	segstore_close(ss);

	ss = store_open(&cf);
	check_locate_all(ss, &m, dir);	/* index built on first read */
	segstore_close(ss);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* ---- retention ---------------------------------------------------------- */

START_TEST(retain_by_bytes)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segment_span sp;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new();
	size_t n;

	config_init(&cf, dir);
	cf.segment_bytes = 1024;
	cf.retain_bytes = 4096;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 200, 3);
	wait_durable(ss, model_end(&m));
	segstore_retain(ss);
	segstore_poll(ss, &st);
	ck_assert_uint_gt(st.ss_deleted, 0);
	ck_assert_uint_gt(st.ss_earliest, 0);
	/* removing one more file would have gone under the limit */
	ck_assert_uint_le(st.ss_store_bytes, cf.retain_bytes);

	n = read_dir(dir, &v);
	ck_assert_uint_eq(n, st.ss_segments);
	ck_assert_uint_eq(v[0].base, st.ss_earliest);
	ck_assert_int_eq(segstore_locate(ss, st.ss_earliest - 1, &sp), -1);
	ck_assert_int_eq(segstore_locate(ss, st.ss_earliest, &sp), 0);
	segstore_unpin(ss, sp.sp_pin);
	check_files(dir, &m, st.ss_earliest);
	dfiles_free(v, n);
	segstore_close(ss);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(retain_never_the_active)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new();
	size_t n;

	config_init(&cf, dir);
	cf.segment_bytes = 1024;
	cf.retain_bytes = 1;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 100, 3);
	wait_durable(ss, model_end(&m));
	segstore_retain(ss);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_segments, 1);
	n = read_dir(dir, &v);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(v[0].base, st.ss_earliest);
	ck_assert_uint_eq(v[0].base + v[0].nframes, model_end(&m));
	dfiles_free(v, n);
	/* the active segment keeps taking frames */
	append_chunks(ss, &m, 1, 1);
	wait_durable(ss, model_end(&m));
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_segments, 1);
	segstore_close(ss);
	check_files(dir, &m, st.ss_earliest);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(retain_skips_pinned)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segment_span sp;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new();
	size_t n;

	config_init(&cf, dir);
	cf.segment_bytes = 1024;
	cf.retain_bytes = 3000;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 4, 2);
	wait_durable(ss, model_end(&m));
	n = read_dir(dir, &v);
	ck_assert_int_eq(segstore_locate(ss, 1, &sp), 0);	/* a reader */

	append_chunks(ss, &m, 200, 3);
	wait_durable(ss, model_end(&m));
	segstore_retain(ss);
	segstore_poll(ss, &st);
	/* the pinned oldest stays, and so does everything after it */
	ck_assert_uint_eq(st.ss_deleted, 0);
	ck_assert_uint_eq(st.ss_earliest, 0);
	ck_assert(file_exists(dir, v[0].name));
	ck_assert_uint_gt(st.ss_store_bytes, cf.retain_bytes);
	/* still readable through the pin */
	{
		uint8_t buf[1024];
		size_t flen = m.off[2] - m.off[1];

		ck_assert_int_eq(pread(sp.sp_fd, buf, flen,
		    (off_t)sp.sp_offset), (ssize_t)flen);
		ck_assert(memcmp(buf, m.buf + m.off[1], flen) == 0);
	}

	segstore_unpin(ss, sp.sp_pin);
	segstore_poll(ss, &st);
	ck_assert_uint_gt(st.ss_deleted, 0);
	ck_assert_uint_gt(st.ss_earliest, 0);
	ck_assert(!file_exists(dir, v[0].name));
	ck_assert_uint_le(st.ss_store_bytes, cf.retain_bytes);
	check_files(dir, &m, st.ss_earliest);
	dfiles_free(v, n);
	segstore_close(ss);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* Segment files written by hand, created at the given times. */
static void
write_aged_segments(const char *dir, struct model *m, const uint64_t *ages_ms,
    size_t n, char names[][128])
{
	uint64_t now = wall_ms();
	char path[PATH_MAX];

	for (size_t i = 0; i < n; i++) {
		uint64_t base = model_end(m);
		struct chunk *ch = model_chunk(m, 4);

		snprintf(names[i], 128, "segment-%020" PRIu64 "-%" PRIu64
		    ".wal", base, now - ages_ms[i]);
		path_of(path, sizeof(path), dir, names[i]);
		file_write(path, ch->ch_data, ch->ch_len);
		chunk_unref(ch);
	}
}

START_TEST(retain_by_age)
{
	static const uint64_t ages[] = { 5 * 3600000, 4 * 3600000,
	    3 * 3600000, 10 * 60000, 60000 };
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new(), names[5][128];

	model_init(&m, 0);
	write_aged_segments(dir, &m, ages, 5, names);
	config_init(&cf, dir);
	cf.retain_age_s = 3 * 3600 - 60;
	ss = store_open(&cf);
	segstore_retain(ss);
	segstore_poll(ss, &st);
	/*
	 * A segment's last frame is older than its successor's start: the
	 * first two were complete 3 h ago or earlier and go; the third was
	 * being written until 10 min ago and stays.
	 */
	ck_assert_uint_eq(st.ss_deleted, 2);
	ck_assert(!file_exists(dir, names[0]));
	ck_assert(!file_exists(dir, names[1]));
	ck_assert(file_exists(dir, names[2]));
	ck_assert_uint_eq(st.ss_earliest, 8);
	segstore_close(ss);

	/* everything is old: all but the newest go */
	cf.retain_age_s = 1;
	ss = store_open(&cf);
	segstore_retain(ss);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_segments, 1);
	ck_assert(file_exists(dir, names[4]));
	ck_assert_uint_eq(st.ss_earliest, 16);
	ck_assert_uint_eq(segstore_next(ss), 20);
	segstore_close(ss);
	check_files(dir, &m, 16);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* ---- disk full ---------------------------------------------------------- */

/*
 * RLIMIT_FSIZE makes the writes past the limit fail with EFBIG (SIGXFSZ
 * ignored, as the daemon does). Check runs each test in its own process;
 * the limit is restored anyway.
 */
static void
disk_full(int kick)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct rlimit old, lim;
	char *dir = tmpdir_new();
	uint64_t stuck_bytes, errors;

	ck_assert(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	config_init(&cf, dir);
	/* kick: no timed retry during the test, segstore_retry instead */
	cf.retry_ms = kick ? 3600 * 1000 : 20;
	ss = store_open(&cf);
	store_start(ss);

	/*
	 * Check records every passing assertion in a file of its own: keep
	 * the limit well above what that file reaches.
	 */
	lim = old;
	lim.rlim_cur = 1024 * 1024 + 100;	/* not on a frame boundary */
	ck_assert(old.rlim_cur == RLIM_INFINITY || old.rlim_cur > lim.rlim_cur);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	model_init(&m, 0);
	append_chunks(ss, &m, 1600, 60);
	ck_assert_uint_gt(m.len, 2 * lim.rlim_cur);
	ck_assert_msg(wait_state(ss, p_error, EFBIG, WAIT_MS, &st),
	    "error %d", st.ss_error);
	ck_assert_uint_lt(st.ss_durable, model_end(&m));
	ck_assert_uint_gt(st.ss_pending_bytes, 0);
	ck_assert_uint_ge(st.ss_write_errors, 1);

	if (kick) {
		/* the writer waits to retry: look at the disk now */
		struct dfile *v;
		size_t n = read_dir(dir, &v);	/* whole valid frames only */

		ck_assert_uint_eq(n, 1);
		ck_assert_uint_le(v[0].len, lim.rlim_cur);
		ck_assert_uint_eq(v[0].nframes, st.ss_written);
		ck_assert(memcmp(v[0].data, m.buf, v[0].len) == 0);
		stuck_bytes = v[0].len;
		dfiles_free(v, n);
		/* more frames queue up in memory, none are lost */
		append_chunks(ss, &m, 10, 4);
		segstore_poll(ss, &st);
		/* what fit was made durable */
		ck_assert_uint_eq(st.ss_durable, st.ss_written);
		ck_assert_uint_eq(st.ss_pending_bytes, m.len - stuck_bytes);
		ck_assert_int_eq(st.ss_error, EFBIG);
	} else {
		/* retried on its own, still failing */
		errors = st.ss_write_errors;
		ck_assert(wait_state(ss, p_write_errors, errors + 2, WAIT_MS,
		    &st));
		ck_assert_int_eq(st.ss_error, EFBIG);
	}

	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	if (kick)
		segstore_retry(ss);
	wait_durable(ss, model_end(&m));
	segstore_poll(ss, &st);
	ck_assert_int_eq(st.ss_error, 0);
	ck_assert_uint_eq(st.ss_pending_bytes, 0);
	segstore_close(ss);
	signal(SIGXFSZ, SIG_DFL);

	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}

START_TEST(disk_full_retry_timer)
{
	disk_full(0);
}
END_TEST

START_TEST(disk_full_nothing_partial)
{
	disk_full(1);
}
END_TEST

/* ---- fsync modes -------------------------------------------------------- */

/*
 * A stand-in for fdatasync: counts calls, records when they happened and
 * how big the file was, holds calls past sh_open_until until released and
 * fails call number sh_fail_at (1-based) with EIO.
 */
struct synchook {
	pthread_mutex_t	 sh_mtx;
	pthread_cond_t	 sh_cond;
	unsigned	 sh_open_until;
	unsigned	 sh_fail_at;
	unsigned	 sh_calls;	/* entered */
	uint64_t	 sh_when[64];	/* monotonic ms at each call */
	uint64_t	 sh_size[64];	/* file size at each call */
};

static struct synchook hook = {
	PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, UINT_MAX, 0, 0,
	{0}, {0}
};

static int
hook_sync(int fd, void *arg)
{
	struct synchook *h = arg;
	struct stat sb;
	uint64_t deadline = mono_ms() + WAIT_MS;
	unsigned call;

	fstat(fd, &sb);
	pthread_mutex_lock(&h->sh_mtx);
	call = ++h->sh_calls;
	if (call <= 64) {
		h->sh_when[call - 1] = mono_ms();
		h->sh_size[call - 1] = (uint64_t)sb.st_size;
	}
	pthread_cond_broadcast(&h->sh_cond);
	while (call > h->sh_open_until && mono_ms() < deadline) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec++;
		pthread_cond_timedwait(&h->sh_cond, &h->sh_mtx, &ts);
	}
	pthread_mutex_unlock(&h->sh_mtx);
	if (call == h->sh_fail_at) {
		errno = EIO;
		return -1;
	}
	return fdatasync(fd);
}

static void
hook_set(unsigned open_until, unsigned fail_at)
{
	pthread_mutex_lock(&hook.sh_mtx);
	hook.sh_open_until = open_until;
	hook.sh_fail_at = fail_at;
	pthread_cond_broadcast(&hook.sh_cond);
	pthread_mutex_unlock(&hook.sh_mtx);
}

static unsigned
hook_calls(void)
{
	unsigned n;

	pthread_mutex_lock(&hook.sh_mtx);
	n = hook.sh_calls;
	pthread_mutex_unlock(&hook.sh_mtx);
	return n;
}

static void
hook_wait_calls(unsigned n)
{
	uint64_t deadline = mono_ms() + WAIT_MS;

	pthread_mutex_lock(&hook.sh_mtx);
	while (hook.sh_calls < n && mono_ms() < deadline) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec++;
		pthread_cond_timedwait(&hook.sh_cond, &hook.sh_mtx, &ts);
	}
	ck_assert_uint_ge(hook.sh_calls, n);
	pthread_mutex_unlock(&hook.sh_mtx);
}

static void
hook_config(struct segment_config *cf)
{
	hook.sh_calls = 0;
	hook_set(UINT_MAX, 0);
	cf->sync_fn = hook_sync;
	cf->sync_arg = &hook;
}

START_TEST(fsync_always_group_commit)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segment_span sp;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();
	uint64_t a_end;

	config_init(&cf, dir);
	hook_config(&cf);
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);

	hook_set(0, 0);			/* hold the first fdatasync */
	append_chunks(ss, &m, 1, 3);
	a_end = model_end(&m);
	hook_wait_calls(1);
	segstore_poll(ss, &st);
	/* written, but not durable until the fdatasync returns */
	ck_assert_uint_eq(st.ss_written, a_end);
	ck_assert_uint_eq(st.ss_durable, 0);
	ck_assert_uint_gt(st.ss_pending_bytes, 0);
	ck_assert_int_eq(segstore_locate(ss, 0, &sp), -1);

	append_chunks(ss, &m, 40, 5);	/* queued behind the held sync */
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_durable, 0);
	hook_set(UINT_MAX, 0);
	wait_durable(ss, model_end(&m));
	segstore_poll(ss, &st);
	/* one fdatasync for the first chunk, one for all the others */
	ck_assert_uint_eq(hook_calls(), 2);
	ck_assert_uint_eq(st.ss_fsyncs, 2);
	ck_assert_uint_eq(hook.sh_size[1], m.len);
	ck_assert_int_eq(segstore_locate(ss, 0, &sp), 0);
	segstore_unpin(ss, sp.sp_pin);
	segstore_close(ss);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(fsync_failure_rewrites)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();
	uint64_t durable;
	unsigned k;

	config_init(&cf, dir);
	hook_config(&cf);
	hook_set(UINT_MAX, 0);
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 3, 3);
	wait_durable(ss, model_end(&m));
	/* the writer may have taken those in one round or several */
	k = hook_calls();
	ck_assert_uint_ge(k, 1);
	durable = model_end(&m);
	hook_set(k, k + 1);	/* the next fdatasync fails, hold the rest */

	append_chunks(ss, &m, 5, 3);
	hook_wait_calls(k + 1);
	hook_set(k + 1, k + 1);	/* let it fail */
	hook_wait_calls(k + 2);	/* the retry reached its fdatasync: held */
	segstore_poll(ss, &st);
	ck_assert_int_eq(st.ss_error, EIO);
	ck_assert_uint_eq(st.ss_fsync_errors, 1);
	ck_assert_uint_eq(st.ss_durable, durable);
	ck_assert_uint_eq(st.ss_written, model_end(&m));
	/* cut back to the durable offset and written again, once */
	ck_assert_uint_eq(hook.sh_size[k + 1], m.len);

	hook_set(UINT_MAX, k + 1);
	wait_durable(ss, model_end(&m));
	segstore_poll(ss, &st);
	ck_assert_int_eq(st.ss_error, 0);
	ck_assert_uint_eq(st.ss_pending_bytes, 0);
	segstore_close(ss);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(fsync_interval)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();
	uint64_t t0, t1, end1;
	unsigned interval = 300;

	config_init(&cf, dir);
	hook_config(&cf);
	cf.fsync_mode = FSYNC_INTERVAL;
	cf.fsync_interval_ms = interval;
	ss = store_open(&cf);
	t0 = mono_ms();
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 5, 3);
	end1 = model_end(&m);
	ck_assert(wait_state(ss, p_written, end1, WAIT_MS, &st));
	ck_assert(wait_state(ss, p_durable, end1, WAIT_MS, &st));
	t1 = mono_ms();
	/* not before an interval has passed since the start */
	ck_assert_uint_ge(t1 - t0, interval);
	ck_assert_uint_eq(hook_calls(), 1);
	ck_assert_uint_ge(hook.sh_when[0] - t0, interval);

	append_chunks(ss, &m, 5, 3);
	ck_assert(wait_state(ss, p_written, model_end(&m), WAIT_MS, &st));
	wait_durable(ss, model_end(&m));
	ck_assert_uint_eq(hook_calls(), 2);
	/*
	 * The next one waited for the interval rather than following the
	 * write (the hook's clock runs a little after the writer's, so only
	 * half the interval is certain).
	 */
	ck_assert_uint_ge(hook.sh_when[1] - hook.sh_when[0], interval / 2);
	segstore_close(ss);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

START_TEST(fsync_never)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	char *dir = tmpdir_new();

	config_init(&cf, dir);
	hook_config(&cf);
	cf.fsync_mode = FSYNC_NEVER;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	for (int i = 0; i < 20; i++) {
		append_chunks(ss, &m, 5, 3);
		/*
		 * never runs ahead of the file; the writer publishes right
		 * after each write (a poll between the two sees it behind)
		 */
		segstore_poll(ss, &st);
		ck_assert_uint_le(st.ss_durable, st.ss_written);
	}
	ck_assert(wait_state(ss, p_written, model_end(&m), WAIT_MS, &st));
	ck_assert(wait_state(ss, p_durable, model_end(&m), WAIT_MS, &st));
	ck_assert_uint_eq(st.ss_durable, model_end(&m));
	ck_assert_uint_eq(st.ss_pending_bytes, 0);
	ck_assert_uint_eq(hook_calls(), 0);
	segstore_close(ss);
	/* a clean stop still makes it durable */
	ck_assert_uint_eq(hook_calls(), 1);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST


/* ---- write faults (tests/fault/wrfault.c) -------------------------------- */

/*
 * The sweep below appends copies of one chunk of TPL_FRAMES frames after a
 * first chunk of FIRST_FRAMES, so where each sequence lies in the file is
 * known in advance: the writer thread checks it after every round (wt_*
 * are set before the store starts and only read afterwards).
 */
#define TPL_FRAMES	4
#define FIRST_FRAMES	3

static uint8_t		 tpl[4096];
static size_t		 tpl_off[TPL_FRAMES + 1];
static size_t		 wt_first_len;
static struct segstore	*wt_store;
static char		 wt_path[PATH_MAX];
static volatile int	 wt_bad;
static char		 wt_msg[PATH_MAX + 256];

static uint64_t
wt_offset(uint64_t seq)
{
	uint64_t k;

	if (seq <= FIRST_FRAMES)
		return seq == FIRST_FRAMES ? wt_first_len : 0;
	k = seq - FIRST_FRAMES;
	return wt_first_len + (k / TPL_FRAMES) * tpl_off[TPL_FRAMES] +
	    tpl_off[k % TPL_FRAMES];
}

/*
 * After every writer round: each frame published as durable is whole in
 * the file (the last one is compared byte for byte).
 */
static void
wt_watch(void)
{
	struct segstore_state st;
	struct stat sb;
	uint8_t buf[1024];
	uint64_t d, off, len;
	int fd;

	segstore_poll(wt_store, &st);
	d = st.ss_durable;
	if (d <= FIRST_FRAMES || wt_bad)
		return;
	if ((fd = open(wt_path, O_RDONLY)) == -1 || fstat(fd, &sb) == -1) {
		snprintf(wt_msg, sizeof(wt_msg), "%s: %s", wt_path,
		    strerror(errno));
		wt_bad = 1;
		if (fd != -1)
			close(fd);
		return;
	}
	off = wt_offset(d - 1);
	len = wt_offset(d) - off;
	if ((uint64_t)sb.st_size < off + len || len > sizeof(buf) ||
	    pread(fd, buf, len, off) != (ssize_t)len ||
	    memcmp(buf, tpl + tpl_off[(d - 1 - FIRST_FRAMES) % TPL_FRAMES],
	    len) != 0) {
		snprintf(wt_msg, sizeof(wt_msg), "durable up to %" PRIu64
		    " but the file (%jd bytes) does not hold frame %" PRIu64
		    " whole at offset %" PRIu64, d, (intmax_t)sb.st_size,
		    d - 1, off);
		wt_bad = 1;
	}
	close(fd);
}

/* Append one copy of the template chunk (the model gets the same bytes). */
static void
append_tpl(struct segstore *ss, struct model *m)
{
	struct chunk *ch = chunk_new(tpl_off[TPL_FRAMES]);

	REQUIRE(ch != NULL);
	memcpy(ch->ch_data, tpl, tpl_off[TPL_FRAMES]);
	ch->ch_len = tpl_off[TPL_FRAMES];
	ch->ch_nframes = TPL_FRAMES;
	for (unsigned i = 0; i < TPL_FRAMES; i++) {
		size_t n = tpl_off[i + 1] - tpl_off[i];

		model_push(m, tpl + tpl_off[i], n);
	}
	REQUIRE(segstore_append(ss, ch) == 0);
	chunk_unref(ch);
}

static void
file_copy(const char *from, const char *to)
{
	uint8_t buf[65536];
	ssize_t n;
	int in = open(from, O_RDONLY), out;

	REQUIRE(in >= 0);
	out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(out >= 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		REQUIRE(write(out, buf, n) == n);
	REQUIRE(n == 0);
	close(in);
	close(out);
}

/*
 * A crash now: a copy of the store (segment and metadata) opens with the
 * same epoch, cuts nothing and holds exactly the frames [0, end) of m.
 */
static void
crash_copy_check(const char *dir, const char *segname, const struct model *m,
    uint64_t end, uint64_t epoch)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	char *cdir = tmpdir_new(), a[PATH_MAX], b[PATH_MAX], err[1024];
	uint8_t *data;
	int fd;

	path_of(a, sizeof(a), dir, segname);
	path_of(b, sizeof(b), cdir, segname);
	file_copy(a, b);
	path_of(a, sizeof(a), dir, "walrelay.meta");
	path_of(b, sizeof(b), cdir, "walrelay.meta");
	file_copy(a, b);
	config_init(&cf, cdir);
	ss = segstore_open(&cf, err, sizeof(err));
	REQUIRE(ss != NULL);
	segstore_poll(ss, &st);
	REQUIRE(segstore_epoch(ss) == epoch);
	REQUIRE(st.ss_cut_bytes == 0);
	REQUIRE(segstore_next(ss) == end);
	REQUIRE(segstore_limit(ss) == UINT64_MAX);
	segstore_close(ss);
	path_of(b, sizeof(b), cdir, segname);
	REQUIRE(file_size(b) == m->off[end]);
	data = malloc(m->off[end] + 1);
	REQUIRE(data != NULL);
	REQUIRE((fd = open(b, O_RDONLY)) >= 0);
	REQUIRE(read(fd, data, m->off[end]) == (ssize_t)m->off[end]);
	close(fd);
	REQUIRE(memcmp(data, m->buf, m->off[end]) == 0);
	free(data);
	tmpdir_rm(cdir);
}

static int
p_error_any(const struct segstore_state *st, uint64_t unused)
{
	return st->ss_error != 0;
}

/*
 * Every split point of a chunk of several frames: the write of the chunk
 * stops after k of its bytes (a short write; k = 0: the first call fails)
 * and every later write fails with err, until the fault is cleared. Then:
 * the file ends at the last whole chunk, no hole, nothing not in the file
 * was published as durable, a crash at that moment recovers exactly the
 * durable frames under the same epoch, and once the fault is cleared the
 * held frames follow at the right offsets with contiguous sequences.
 */
static const struct {
	int	err;
	int	mode;
} sweep_cases[] = {
	{ EIO, FSYNC_ALWAYS },
	{ ENOSPC, FSYNC_ALWAYS },
	{ EFBIG, FSYNC_ALWAYS },
	{ ENOSPC, FSYNC_INTERVAL },
	{ EIO, FSYNC_NEVER },
};

START_TEST(write_fault_every_split)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new(), spec[PATH_MAX + 128], segname[128];
	uint64_t epoch, before, written;
	size_t n, len, k;
	int err = sweep_cases[_i].err, mode = sweep_cases[_i].mode;

	/* four frames of different sizes, two of them LZ4 */
	len = 0;
	for (unsigned i = 0; i < TPL_FRAMES; i++) {
		tpl_off[i] = len;
		len += frame_make(1000 + i, tpl + len, sizeof(tpl) - len);
	}
	tpl_off[TPL_FRAMES] = len;

	config_init(&cf, dir);
	cf.fsync_mode = mode;
	cf.fsync_interval_ms = 5;
	cf.retry_ms = 3600 * 1000;	/* segstore_retry clears it */
	ss = store_open(&cf);
	epoch = segstore_epoch(ss);
	store_start(ss);
	model_init(&m, 0);
	{
		struct chunk *ch = model_chunk(&m, FIRST_FRAMES);

		REQUIRE(segstore_append(ss, ch) == 0);
		chunk_unref(ch);
	}
	wait_durable(ss, FIRST_FRAMES);
	wt_first_len = m.len;
	n = read_dir(dir, &v);
	ck_assert_uint_eq(n, 1);
	snprintf(segname, sizeof(segname), "%s", v[0].name);
	path_of(wt_path, sizeof(wt_path), dir, segname);
	dfiles_free(v, n);
	wt_store = ss;
	wt_bad = 0;
	nt_watch = wt_watch;

	for (k = 0; k < len; k++) {
		before = model_end(&m);
		snprintf(spec, sizeof(spec), "op=write,path=%s/*.wal,"
		    "after=%zu,err=%d", dir, k, err);
		REQUIRE(wrfault_set(spec) == 0);
		append_tpl(ss, &m);
		if (!wait_state(ss, p_error_any, 0, WAIT_MS, &st))
			ck_abort_msg("split %zu: no error", k);
		REQUIRE(st.ss_error == err);
		/* the writer waits for segstore_retry: look at the disk */
		written = st.ss_written;
		if (written != before || st.ss_durable > written ||
		    file_size(wt_path) != m.off[written])
			ck_abort_msg("split %zu: written %" PRIu64 " (expected "
			    "%" PRIu64 "), durable %" PRIu64 ", file %" PRIu64
			    " bytes (expected %zu)", k, written, before,
			    st.ss_durable, file_size(wt_path), m.off[before]);
		if (mode != FSYNC_INTERVAL)
			REQUIRE(st.ss_durable == written);
		if (wt_bad)
			ck_abort_msg("split %zu: %s", k, wt_msg);
		if (mode == FSYNC_ALWAYS)
			crash_copy_check(dir, segname, &m, st.ss_durable,
			    epoch);
		/* more frames wait in memory meanwhile */
		append_tpl(ss, &m);
		wrfault_clear();
		segstore_retry(ss);
		if (!wait_state(ss, p_durable, model_end(&m), WAIT_MS, &st))
			ck_abort_msg("split %zu: durable %" PRIu64 ", error %d",
			    k, st.ss_durable, st.ss_error);
		if (file_size(wt_path) != m.len)
			ck_abort_msg("split %zu: file %" PRIu64 " bytes, "
			    "expected %zu", k, file_size(wt_path), m.len);
		if (wt_bad)
			ck_abort_msg("split %zu: %s", k, wt_msg);
	}
	nt_watch = NULL;
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_pending_bytes, 0);
	ck_assert_uint_eq(st.ss_write_errors, len);
	segstore_close(ss);
	check_files(dir, &m, 0);

	/* a restart continues with the same frames and epoch */
	ss = store_open(&cf);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(segstore_next(ss), model_end(&m));
	ck_assert_uint_eq(segstore_epoch(ss), epoch);
	ck_assert_uint_eq(st.ss_cut_bytes, 0);
	segstore_close(ss);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* Wait until the writer has finished a round after generation gen. */
static void
wait_round(unsigned long gen)
{
	uint64_t deadline = mono_ms() + WAIT_MS;
	struct timespec ts;

	pthread_mutex_lock(&nt_mtx);
	while (nt_gen == gen && mono_ms() < deadline) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&nt_cond, &nt_mtx, &ts);
	}
	ck_assert_uint_ne(nt_gen, gen);
	pthread_mutex_unlock(&nt_mtx);
}

/*
 * A write stops one byte short of the end of a chunk and the cut that
 * should remove the partial chunk fails too: while the cut keeps failing,
 * nothing more is written, synced or published, even once writes work.
 */
START_TEST(write_fault_cut_fails)
{
	long live = chunk_live_count();
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new(), spec[2 * PATH_MAX], path[PATH_MAX];
	uint64_t d, size;
	unsigned long gen;
	struct chunk *ch;
	size_t n;

	config_init(&cf, dir);
	cf.retry_ms = 3600 * 1000;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 1, 3);
	wait_durable(ss, model_end(&m));
	d = model_end(&m);
	size = m.len;
	n = read_dir(dir, &v);
	path_of(path, sizeof(path), dir, v[0].name);
	dfiles_free(v, n);

	ch = model_chunk(&m, 4);
	snprintf(spec, sizeof(spec), "op=write,path=%s/*.wal,after=%zu;"
	    "op=truncate,path=%s/*.wal", dir, ch->ch_len - 1, dir);
	ck_assert_int_eq(wrfault_set(spec), 0);
	segstore_append(ss, ch);
	chunk_unref(ch);
	ck_assert(wait_state(ss, p_error, EIO, WAIT_MS, &st));
	ck_assert_uint_eq(st.ss_durable, d);
	ck_assert_uint_eq(st.ss_written, d);
	ck_assert_uint_eq(file_size(path), m.len - 1);

	/* writes work again, the cut still fails */
	snprintf(spec, sizeof(spec), "op=truncate,path=%s/*.wal", dir);
	ck_assert_int_eq(wrfault_set(spec), 0);
	append_chunks(ss, &m, 2, 3);
	for (int i = 0; i < 3; i++) {
		gen = notify_gen();
		segstore_retry(ss);
		wait_round(gen);
		segstore_poll(ss, &st);
		ck_assert_int_eq(st.ss_error, EIO);
		ck_assert_uint_eq(st.ss_durable, d);
		ck_assert_uint_eq(st.ss_written, d);
		ck_assert_uint_eq(file_size(path), size + (m.off[d + 4] -
		    m.off[d]) - 1);
	}

	wrfault_clear();
	segstore_retry(ss);
	wait_durable(ss, model_end(&m));
	segstore_close(ss);
	check_files(dir, &m, 0);
	ck_assert_int_eq(chunk_live_count(), live);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/*
 * Retention cannot remove the oldest segment: it and every newer one stay
 * (a gap would read as a damaged segment at the next start); once the
 * fault clears, retention catches up and the store stays contiguous.
 */
START_TEST(retain_unlink_failure)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new(), spec[2 * PATH_MAX];
	uint64_t oldest, seq, first;
	size_t n;

	config_init(&cf, dir);
	cf.segment_bytes = 2048;
	cf.retain_bytes = 8192;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 10, 3);
	wait_durable(ss, model_end(&m));
	n = read_dir(dir, &v);
	oldest = v[0].base;
	snprintf(spec, sizeof(spec), "op=unlink,path=%s/%s,err=EACCES", dir,
	    v[0].name);
	dfiles_free(v, n);
	ck_assert_int_eq(wrfault_set(spec), 0);

	append_chunks(ss, &m, 80, 3);
	wait_durable(ss, model_end(&m));
	ck_assert_uint_ge(wrfault_hits(), 1);
	segstore_poll(ss, &st);
	ck_assert_uint_eq(st.ss_earliest, oldest);
	n = read_dir(dir, &v);
	ck_assert_uint_eq(v[0].base, oldest);
	for (size_t i = 1; i < n; i++)
		ck_assert_uint_eq(v[i].base, v[i - 1].base + v[i - 1].nframes);
	ck_assert_uint_eq(st.ss_segments, n);
	dfiles_free(v, n);

	wrfault_clear();
	append_chunks(ss, &m, 20, 3);
	wait_durable(ss, model_end(&m));
	segstore_poll(ss, &st);
	ck_assert_uint_gt(st.ss_earliest, oldest);
	segstore_close(ss);

	n = read_dir(dir, &v);
	seq = first = v[0].base;
	for (size_t i = 0; i < n; i++) {
		ck_assert_uint_eq(v[i].base, seq);
		seq += v[i].nframes;
	}
	ck_assert_uint_eq(seq, model_end(&m));
	dfiles_free(v, n);
	cf.verify_sealed = 1;
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_limit(ss), UINT64_MAX);
	segstore_close(ss);
	check_files(dir, &m, first);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/*
 * The directory fsync that makes a new segment durable fails, and so does
 * any removal: the store keeps the new file as its active segment and
 * writes nothing to it until that fsync works, so that no empty file the
 * store does not know of stays behind (it would read as a gap once
 * retention removed the segments around it).
 */
START_TEST(rotate_dirsync_failure)
{
	struct segment_config cf;
	struct segstore_state st;
	struct segstore *ss;
	struct model m;
	struct dfile *v;
	char *dir = tmpdir_new(), spec[2 * PATH_MAX];
	uint64_t first;
	size_t n;

	config_init(&cf, dir);
	cf.segment_bytes = 2048;
	cf.retain_bytes = 8192;
	cf.retry_ms = 3600 * 1000;
	ss = store_open(&cf);
	store_start(ss);
	model_init(&m, 0);
	append_chunks(ss, &m, 10, 3);
	wait_durable(ss, model_end(&m));

	snprintf(spec, sizeof(spec), "op=sync,path=%s,dir=1;"
	    "op=unlink,path=%s/*.wal", dir, dir);
	ck_assert_int_eq(wrfault_set(spec), 0);
	append_chunks(ss, &m, 20, 3);
	ck_assert(wait_state(ss, p_error, EIO, WAIT_MS, &st));
	ck_assert_uint_lt(st.ss_durable, model_end(&m));
	/* the new file is there, empty, at the next sequence */
	n = read_dir(dir, &v);
	ck_assert_uint_eq(v[n - 1].len, 0);
	ck_assert_uint_eq(v[n - 1].base, st.ss_durable);
	dfiles_free(v, n);

	wrfault_clear();
	segstore_retry(ss);
	wait_durable(ss, model_end(&m));
	/* retention removes the segments around that sequence */
	append_chunks(ss, &m, 80, 3);
	wait_durable(ss, model_end(&m));
	segstore_close(ss);

	n = read_dir(dir, &v);
	first = v[0].base;
	dfiles_free(v, n);
	cf.verify_sealed = 1;
	ss = store_open(&cf);
	ck_assert_uint_eq(segstore_limit(ss), UINT64_MAX);
	segstore_close(ss);
	check_files(dir, &m, first);
	model_free(&m);
	tmpdir_rm(dir);
}
END_TEST

/* ---- listing a directory a running relay changes ----------------------- */

#define LIST_SEGS	3000

struct archiver {
	const char	*dir;
	volatile int	 stop;
	long		 steps;
};

/*
 * Archive steps as the relay's archive thread makes them, X.wal.zst.tmp
 * written, renamed to X.wal.zst, then X.wal removed, and the same back
 * (X.wal.tmp renamed to X.wal, then X.wal.zst removed), over and over:
 * one of the two names is in place at every moment.
 */
static void *
list_archiver(void *arg)
{
	struct archiver *a = arg;
	char raw[PATH_MAX], zst[PATH_MAX + 8], tmp[PATH_MAX + 16];
	const char *have, *want;
	int fd;

	while (!a->stop) {
		for (int i = 0; i < LIST_SEGS && !a->stop; i++) {
			snprintf(raw, sizeof(raw), "%s/segment-%020d-1.wal",
			    a->dir, i);
			snprintf(zst, sizeof(zst), "%s.zst", raw);
			if (access(raw, F_OK) == 0) {
				have = raw;
				want = zst;
			} else {
				have = zst;
				want = raw;
			}
			snprintf(tmp, sizeof(tmp), "%s.tmp", want);
			if ((fd = open(tmp, O_WRONLY | O_CREAT, 0644)) == -1)
				return NULL;
			close(fd);
			if (rename(tmp, want) == -1 || unlink(have) == -1)
				return NULL;
			a->steps++;
		}
	}
	return NULL;
}

/*
 * A listing of a store that is being archived holds every segment, raw
 * or archived: readdir reads a directory this size in several getdents
 * calls, and one step between two of them could leave both of a
 * segment's names out (walcat verify or restore on a live data directory
 * then saw a gap the store does not have).
 */
START_TEST(list_dir_while_archiving)
{
	char *dir = tmpdir_new(), path[PATH_MAX], err[256], **names;
	struct archiver a = { dir, 0, 0 };
	uint64_t base;
	size_t n, segs;
	pthread_t t;
	int fd, listings = 0;
	static unsigned char seen[LIST_SEGS];

	for (int i = 0; i < LIST_SEGS; i++) {
		snprintf(path, sizeof(path), "%s/segment-%020d-1.wal", dir, i);
		fd = open(path, O_WRONLY | O_CREAT, 0644);
		ck_assert_int_ne(fd, -1);
		close(fd);
	}
	ck_assert_int_eq(pthread_create(&t, NULL, list_archiver, &a), 0);
	while (listings < 20) {
		ck_assert_int_eq(segment_list_dir_all(dir, &names, &n, err,
		    sizeof(err)), 0);
		memset(seen, 0, sizeof(seen));
		for (size_t i = 0; i < n; i++)
			if (segment_name_parse(names[i], &base, NULL) == 0 ||
			    archive_name_parse(names[i], &base, NULL) == 0)
				seen[base] = 1;
		segment_list_free(names, n);
		segs = 0;
		for (int i = 0; i < LIST_SEGS; i++)
			segs += seen[i];
		ck_assert_msg(segs == LIST_SEGS, "listing %d (after %ld archive "
		    "steps) holds %zu of the %d segments", listings, a.steps,
		    segs, LIST_SEGS);
		listings++;
	}
	a.stop = 1;
	pthread_join(t, NULL);
	ck_assert_int_gt(a.steps, 0);
	tmpdir_rm(dir);
}
END_TEST

static Suite *
segment_suite(void)
{
	Suite *s = suite_create("segment");
	TCase *tc;

	tc = tcase_create("append");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, append_rotate);
	tcase_add_test(tc, reopen_continues);
	tcase_add_test(tc, rotate_by_age);
	tcase_add_test(tc, close_without_start_drains);
	suite_add_tcase(s, tc);

	tc = tcase_create("recovery");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, recover_torn_tail_every_byte);
	tcase_add_loop_test(tc, recover_corrupt_middle_of_newest, 0, 6);
	tcase_add_test(tc, recover_empty_newest);
	tcase_add_loop_test(tc, corrupt_sealed_sets_limit, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("meta");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, epoch_rules);
	tcase_add_test(tc, adopt_empty_store);
	tcase_add_test(tc, meta_bad_checksum_refused);
	tcase_add_test(tc, lock_excludes_second_open);
	suite_add_tcase(s, tc);

	tc = tcase_create("read");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, locate_spans);
	tcase_add_test(tc, retain_by_bytes);
	tcase_add_test(tc, retain_never_the_active);
	tcase_add_test(tc, retain_skips_pinned);
	tcase_add_test(tc, retain_by_age);
	tcase_add_test(tc, list_dir_while_archiving);
	suite_add_tcase(s, tc);

	tc = tcase_create("disk");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, disk_full_retry_timer);
	tcase_add_test(tc, disk_full_nothing_partial);
	tcase_add_test(tc, fsync_always_group_commit);
	tcase_add_test(tc, fsync_failure_rewrites);
	tcase_add_test(tc, fsync_interval);
	tcase_add_test(tc, fsync_never);
	suite_add_tcase(s, tc);

	tc = tcase_create("faults");
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, write_fault_cut_fails);
	tcase_add_test(tc, retain_unlink_failure);
	tcase_add_test(tc, rotate_dirsync_failure);
	tcase_add_loop_test(tc, write_fault_every_split, 0,
	    (int)(sizeof(sweep_cases) / sizeof(sweep_cases[0])));
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(segment_suite());
	int failed;

	log_init("test_segment", LOG_LEVEL_WARN, 0);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
