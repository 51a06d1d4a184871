/*
 * fuzzutil.h: pieces the libFuzzer targets share: little-endian fields and
 * rewriting the crcs of a run of FCW2 frames so that a mutated input gets
 * past them. Header-only: each target is one program.
 */
#ifndef WALRELAY_FUZZUTIL_H
#define WALRELAY_FUZZUTIL_H

#include <stdint.h>
#include <string.h>

#include "crc.h"
#include "fcw2.h"

static inline void
fuzz_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t
fuzz_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

/*
 * Rewrite the frame crc of every whole frame at the start of p (and the
 * record crc of uncompressed ones), up to the first header without the
 * magic or a frame that does not fit.
 */
static inline void
fuzz_fix_crcs(uint8_t *p, size_t len)
{
	size_t pos = 0, flen, plen;

	while (len - pos >= FCW2_HEADER_LEN &&
	    memcmp(p + pos, FCW2_MAGIC, 4) == 0) {
		flen = fcw2_frame_len(p + pos);
		if (flen > len - pos)
			break;
		plen = flen - FCW2_OVERHEAD;
		if ((p[pos + 4] & FCW2_FLAG_LZ4) == 0 && plen >= 4)
			fuzz_put32(p + pos + FCW2_HEADER_LEN + plen - 4,
			    crc_update(0, p + pos + FCW2_HEADER_LEN, plen - 4));
		fuzz_put32(p + pos + flen - FCW2_CRC_LEN,
		    crc_update(0, p + pos, flen - FCW2_CRC_LEN));
		pos += flen;
	}
}

#ifdef FUZZ_NAME
/*
 * For the targets that work on files (define FUZZ_NAME, the target's name,
 * before including this): failing an invariant, a temporary directory of
 * the process, and whole-file writes and reads.
 */
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void
fuzz_fail(const char *what, const char *detail)
{
	fprintf(stderr, FUZZ_NAME ": invariant broken: %s%s%s\n", what,
	    detail ? ": " : "", detail ? detail : "");
	abort();
}

/* Make root (size len) a new directory in /dev/shm when writable, else in
 * $TMPDIR or /tmp: the targets write files at every input. */
static inline void
fuzz_tmproot(char *root, size_t len)
{
	const char *base = getenv("TMPDIR");
	struct stat sb;

	if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) &&
	    access("/dev/shm", W_OK) == 0)
		base = "/dev/shm";
	else if (base == NULL || *base == '\0')
		base = "/tmp";
	snprintf(root, len, "%s/" FUZZ_NAME "-XXXXXX", base);
	if (mkdtemp(root) == NULL)
		fuzz_fail("mkdtemp", strerror(errno));
}

/* Remove the files in dir (not dir itself). */
static inline void
fuzz_empty_dir(const char *dir)
{
	char path[8400];
	struct dirent *de;
	DIR *d;

	if ((d = opendir(dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
}

static inline void
fuzz_write(const char *path, const void *p, size_t len)
{
	int fd;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0644)) == -1)
		fuzz_fail("create", strerror(errno));
	if (len > 0 && write(fd, p, len) != (ssize_t)len)
		fuzz_fail("write", strerror(errno));
	close(fd);
}

static inline uint8_t *
fuzz_slurp(const char *path, size_t *len)
{
	struct stat sb;
	uint8_t *buf;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &sb) == -1)
		fuzz_fail("open", strerror(errno));
	if ((buf = malloc((size_t)sb.st_size + 1)) == NULL)
		fuzz_fail("out of memory", NULL);
	if (sb.st_size > 0 && read(fd, buf, (size_t)sb.st_size) !=
	    (ssize_t)sb.st_size)
		fuzz_fail("read", strerror(errno));
	close(fd);
	*len = (size_t)sb.st_size;
	return buf;
}

/* Longest prefix of whole valid frames (their records checked when
 * records is set): its bytes, and its frames in *frames. */
static inline size_t
fuzz_prefix(const uint8_t *p, size_t len, size_t cap, int records,
    uint64_t *frames)
{
	struct fcw2_checker chk;
	size_t pos = 0, flen;

	*frames = 0;
	fcw2_checker_init(&chk, cap, records);
	while (pos < len && fcw2_check(&chk, p + pos, len - pos, &flen,
	    NULL) == FCW2_OK) {
		pos += flen;
		(*frames)++;
	}
	fcw2_checker_free(&chk);
	return pos;
}
#endif /* FUZZ_NAME */

#endif
