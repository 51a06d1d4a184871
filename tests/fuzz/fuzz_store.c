/*
 * fuzz_store.c: libFuzzer target for recovery: the store opened
 * (segstore_open) on a data directory holding arbitrary segment bytes and,
 * optionally, an arbitrary metadata file. Recovery is private to
 * segment_recover.c; this drives it the way a restart does, in a temporary
 * directory (under /dev/shm when it exists, else $TMPDIR or /tmp).
 *
 * Input layout:
 *   byte 0     bit 0: two segment files (an older one, then the newest)
 *              bit 1: frame cap of 4096 bytes instead of the default
 *              bit 2: rewrite the crcs of the leading whole frames (and
 *              the record crcs of uncompressed ones) so that recovery
 *              gets past them
 *              bit 3: a metadata file
 *              bit 4: end the metadata with its correct checksum line
 *              bit 5: verify sealed segments at open
 *              bits 6-7: fsync mode (always, interval, never, never)
 *   two files: bytes 1-2 where the older file ends in the segment bytes
 *              (u16le), byte 3 the newest file's base sequence (the
 *              older one's is 0; 0 too makes two files at one sequence,
 *              which open must refuse when both hold bytes)
 *   metadata:  one length byte, then that many bytes of text
 *   the rest   the segment bytes
 *
 * Invariants: with no metadata file, open succeeds unless both files start
 * at the same sequence (then it fails); an open that fails says why and changes no
 * segment file; the newest segment is cut exactly to its longest prefix of
 * whole valid frames (an independent fcw2_check walk), or, where whole
 * valid frames follow a bad one, kept with the store's corruption limit at
 * the bad frame (not a torn tail: docs/storage.md), or removed when that
 * is empty and the one before recovered the same way (cut to its prefix,
 * or kept as corruption, or removed); older segments are
 * not changed, except that an empty one is removed; the next sequence follows the last frame kept; the bytes
 * cut are reported; closing and opening again cuts nothing and keeps the
 * sequence and the epoch.
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "crc.h"
#include "fcw2.h"
#include "log.h"
#include "segment.h"
#define FUZZ_NAME "fuzz_store"
#include "fuzzutil.h"

#define FUZZ_SMALL_CAP	4096
#define FUZZ_OLD_NAME	"segment-00000000000000000000-0.wal"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static char	fuzz_root[4096];	/* this process's temporary directory */
static char	fuzz_dir[4200];		/* the data directory inside it */

static void
fuzz_exit(void)
{
	fuzz_empty_dir(fuzz_dir);
	rmdir(fuzz_dir);
	rmdir(fuzz_root);
}

static void
fuzz_setup(void)
{
	fuzz_tmproot(fuzz_root, sizeof(fuzz_root));
	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/store", fuzz_root);
	atexit(fuzz_exit);
	log_set_level(-1);	/* recovery logs every cut: keep stderr quiet */
}

/* Write a file of the store. */
static void
fuzz_put_file(const char *name, const void *p, size_t len)
{
	char path[8400];

	snprintf(path, sizeof(path), "%s/%s", fuzz_dir, name);
	fuzz_write(path, p, len);
}

/* Size of a file of the store, or -1 when it is gone. */
static long long
fuzz_size(const char *name)
{
	char path[8400];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/%s", fuzz_dir, name);
	if (stat(path, &sb) == -1) {
		if (errno != ENOENT)
			fuzz_fail("stat", strerror(errno));
		return -1;
	}
	return (long long)sb.st_size;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	struct segment_config cf;
	struct segstore *ss;
	struct segstore_state st, st2;
	const uint8_t *in = data + 1;
	uint8_t *segs = NULL;
	char errbuf[8600], newname[64], meta[600];
	size_t left, split = 0, len, cap, p_new, p_old, metalen = 0;
	uint64_t base_new = 0, n_new, n_old, epoch, cut;
	long long old_size, new_size, old_kept;
	int two, has_meta, dup;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	if (size < 1)
		return 0;
	left = size - 1;
	two = data[0] & 0x01;
	has_meta = (data[0] & 0x08) != 0;
	cap = (data[0] & 0x02) ? FUZZ_SMALL_CAP : FCW2_DEFAULT_MAX_FRAME;
	if (two) {
		if (left < 3)
			return 0;
		split = (size_t)in[0] | (size_t)in[1] << 8;
		base_new = in[2];
		in += 3;
		left -= 3;
	}
	if (has_meta) {
		if (left < 1 || left - 1 < in[0])
			return 0;
		metalen = in[0];
		memcpy(meta, in + 1, metalen);
		in += 1 + metalen;
		left -= 1 + metalen;
		if (data[0] & 0x10)
			metalen += (size_t)snprintf(meta + metalen,
			    sizeof(meta) - metalen, "xxh64 %016llx\n",
			    (unsigned long long)XXH64(meta, metalen, 0));
	}
	len = left;
	if ((segs = malloc(len + 1)) == NULL)
		fuzz_fail("out of memory", NULL);
	memcpy(segs, in, len);
	if (split > len)
		split = len;
	if (!two)
		split = 0;
	if (data[0] & 0x04) {
		fuzz_fix_crcs(segs, split);
		fuzz_fix_crcs(segs + split, len - split);
	}

	if (mkdir(fuzz_dir, 0700) == -1)
		fuzz_fail("mkdir", strerror(errno));
	/* created 1: sorts after the older file even at the same sequence */
	snprintf(newname, sizeof(newname), "segment-%020" PRIu64 "-1.wal",
	    base_new);
	dup = two && base_new == 0 && split > 0 && len - split > 0;
	if (two)
		fuzz_put_file(FUZZ_OLD_NAME, segs, split);
	fuzz_put_file(newname, segs + split, len - split);
	if (has_meta)
		fuzz_put_file("walrelay.meta", meta, metalen);

	memset(&cf, 0, sizeof(cf));
	cf.dir = fuzz_dir;
	cf.fsync_mode = (data[0] >> 6) > FSYNC_NEVER ? FSYNC_NEVER :
	    (data[0] >> 6);
	cf.fsync_interval_ms = 100;
	cf.max_frame_bytes = cap;
	cf.verify_sealed = (data[0] & 0x20) != 0;

	errbuf[0] = '\0';
	ss = segstore_open(&cf, errbuf, sizeof(errbuf));
	if (ss == NULL) {
		if (errbuf[0] == '\0')
			fuzz_fail("open failed without a reason", NULL);
		if (!has_meta && !dup)
			fuzz_fail("open failed without a metadata file", errbuf);
		/* nothing was cut on the way */
		if ((two && fuzz_size(FUZZ_OLD_NAME) != (long long)split) ||
		    fuzz_size(newname) != (long long)(len - split))
			fuzz_fail("a failed open changed a segment", errbuf);
		goto out;
	}

	/* what recovery must have kept */
	p_new = fuzz_prefix(segs + split, len - split, cap, 1, &n_new);
	p_old = two ? fuzz_prefix(segs, split, cap, 1, &n_old) : 0;
	if (!two)
		n_old = 0;
	new_size = fuzz_size(newname);
	old_size = two ? fuzz_size(FUZZ_OLD_NAME) : -1;
	/* an empty older file holds no frame: recovery removes it */
	old_kept = split == 0 ? -1 : (long long)split;
	segstore_poll(ss, &st);
	if (dup)
		fuzz_fail("two files at one sequence were accepted", NULL);
	if (new_size > (long long)p_new) {
		/*
		 * Whole valid frames after a bad one: corruption, not a torn
		 * tail. They are kept and nothing is served from the bad
		 * frame on (docs/storage.md).
		 */
		if (new_size > (long long)(len - split))
			fuzz_fail("newest segment grew", NULL);
		/*
		 * At the bad frame, or lower: at the first bad frame of an
		 * older segment checked at open (verify_sealed).
		 */
		if (segstore_limit(ss) != base_new + n_new &&
		    !(cf.verify_sealed && two && p_old < split &&
		    segstore_limit(ss) == n_old))
			fuzz_fail("frames kept after a bad frame, but the "
			    "corruption limit is not at it", NULL);
		if (two && old_size != old_kept)
			fuzz_fail("an older segment changed", NULL);
		if (st.ss_next < base_new + n_new)
			fuzz_fail("next sequence is before the last frame",
			    NULL);
		cut = len - split - (uint64_t)new_size;
	} else if (p_new > 0) {
		if (new_size != (long long)p_new)
			fuzz_fail("newest segment not cut to its valid prefix",
			    NULL);
		if (two && old_size != old_kept)
			fuzz_fail("an older segment changed", NULL);
		if (st.ss_next != base_new + n_new)
			fuzz_fail("next sequence is not after the last frame",
			    NULL);
		cut = len - split - p_new;
	} else {
		if (new_size != -1)
			fuzz_fail("a newest segment without a whole frame kept",
			    NULL);
		cut = len - split;
		if (two && old_size > (long long)p_old) {
			/*
			 * The older segment is now the newest: whole valid
			 * frames after a bad one in it are kept as
			 * corruption too.
			 */
			if (old_size > (long long)split)
				fuzz_fail("older segment grew", NULL);
			if (segstore_limit(ss) != n_old)
				fuzz_fail("frames kept after a bad frame in the "
				    "older segment, but the corruption limit "
				    "is not at it", NULL);
			if (st.ss_next < n_old)
				fuzz_fail("next sequence is before the last "
				    "frame", NULL);
			cut += split - (uint64_t)old_size;
		} else if (two && p_old > 0) {
			if (old_size != (long long)p_old)
				fuzz_fail("older segment not cut to its valid "
				    "prefix", NULL);
			if (st.ss_next != n_old)
				fuzz_fail("next sequence is not after the last "
				    "frame", NULL);
			cut += split - p_old;
		} else if (two) {
			if (old_size != -1)
				fuzz_fail("a segment without a whole frame kept",
				    NULL);
			cut += split;
		}
	}
	if (st.ss_cut_bytes != cut)
		fuzz_fail("cut bytes misreported", NULL);
	if (st.ss_earliest > st.ss_next)
		fuzz_fail("earliest after next", NULL);
	epoch = segstore_epoch(ss);
	if (segstore_close(ss) != 0)
		fuzz_fail("close failed", NULL);

	/* a clean stop, then a start: nothing to cut, same place */
	if ((ss = segstore_open(&cf, errbuf, sizeof(errbuf))) == NULL)
		fuzz_fail("reopen failed", errbuf);
	segstore_poll(ss, &st2);
	if (st2.ss_cut_bytes != 0 || st2.ss_next != st.ss_next ||
	    segstore_epoch(ss) != epoch)
		fuzz_fail("reopen after a clean stop moved", NULL);
	segstore_close(ss);
out:
	fuzz_empty_dir(fuzz_dir);
	rmdir(fuzz_dir);
	free(segs);
	return 0;
}
