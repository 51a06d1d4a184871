/*
 * segment_meta.c: the store's metadata file (walrelay.meta).
 *
 * A few text lines, the last one an XXH64 of everything before it,
 * replaced atomically (temporary file, fsync, rename, fsync directory).
 * It holds the epoch, the sequence the store continues from, whether the
 * last run stopped cleanly, its fsync mode and the newest snapshot.
 */
#include "autoconfig.h"

#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "fdio.h"
#include "segment.h"
#include "segment_int.h"

/* Any thread: the snapshot line is always the store's current one. */
int
segment_meta_write(struct segstore *ss, const struct segment_meta *m,
    char *errbuf, size_t errlen)
{
	struct segment_meta mm = *m;
	int rc;

	pthread_mutex_lock(&ss->ss_meta_mtx);
	mm.m_snap = ss->ss_snap;
	rc = segment_meta_write_locked(ss, &mm, errbuf, errlen);
	pthread_mutex_unlock(&ss->ss_meta_mtx);
	return rc;
}

int
segment_meta_write_locked(struct segstore *ss, const struct segment_meta *m,
    char *errbuf, size_t errlen)
{
	char buf[768];
	int fd = -1, n, len;

	len = snprintf(buf, sizeof(buf),
	    "# walrelay store metadata; checksummed, do not edit\n"
	    "version %d\n"
	    "epoch %016" PRIx64 "\n"
	    "base %" PRIu64 "\n"
	    "running %d\n"
	    "fsync %s\n",
	    SEGMENT_META_VERSION, m->m_epoch, m->m_base, m->m_running,
	    segment_fsync_name(m->m_mode));
	if (m->m_snap.sm_valid)
		len += snprintf(buf + len, sizeof(buf) - len,
		    "snapshot %" PRIu64 " %" PRIu64 " %" PRIu64 " %s\n",
		    m->m_snap.sm_covered, m->m_snap.sm_ts,
		    m->m_snap.sm_entries, m->m_snap.sm_name);
	n = snprintf(buf + len, sizeof(buf) - len, "xxh64 %016llx\n",
	    (unsigned long long)XXH64(buf, len, 0));
	len += n;

	ss->ss_meta_unsure = 0;
	fd = openat(ss->ss_dirfd, SEGMENT_META_TMP,
	    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		goto fail;
	if (fdio_write_all(fd, buf, (size_t)len) == -1)
		goto fail;
	if (fsync(fd) == -1)
		goto fail;
	if (close(fd) == -1) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (renameat(ss->ss_dirfd, SEGMENT_META_TMP, ss->ss_dirfd,
	    SEGMENT_META) == -1)
		goto fail;
	if (fsync(ss->ss_dirfd) == -1) {
		ss->ss_meta_unsure = 1;
		goto fail;
	}
	return 0;
fail:
	snprintf(errbuf, errlen, "%s/%s: cannot write the metadata file: %s",
	    ss->ss_dir, SEGMENT_META, strerror(errno));
	if (fd != -1)
		close(fd);
	unlinkat(ss->ss_dirfd, SEGMENT_META_TMP, 0);
	return -1;
}

/* Returns 0, 1 when there is no metadata file, -1 with errbuf. */
int
segment_meta_read(struct segstore *ss, struct segment_meta *m, char *errbuf,
    size_t errlen)
{
	char buf[SEGMENT_META_MAX + 1], mode[16], *sum, *line, *end;
	unsigned long long want;
	ssize_t n;
	size_t len = 0;
	int fd, version = -1, have = 0;

	if ((fd = openat(ss->ss_dirfd, SEGMENT_META, O_RDONLY | O_CLOEXEC)) ==
	    -1) {
		if (errno == ENOENT)
			return 1;
		snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir, SEGMENT_META,
		    strerror(errno));
		return -1;
	}
	while (len < sizeof(buf) - 1) {
		n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(errbuf, errlen, "%s/%s: %s", ss->ss_dir,
			    SEGMENT_META, strerror(errno));
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		len += n;
	}
	close(fd);
	buf[len] = '\0';

	if (len == sizeof(buf) - 1 || memchr(buf, '\0', len) != NULL ||
	    (sum = strstr(buf, "\nxxh64 ")) == NULL)
		goto damaged;
	sum++;
	if (sscanf(sum, "xxh64 %16llx", &want) != 1 ||
	    want != (unsigned long long)XXH64(buf, sum - buf, 0))
		goto damaged;
	*sum = '\0';

	memset(m, 0, sizeof(*m));
	for (line = buf; *line != '\0'; line = end + 1) {
		unsigned long long v;
		int iv;

		if ((end = strchr(line, '\n')) == NULL)
			goto damaged;
		*end = '\0';
		if (sscanf(line, "version %d", &iv) == 1)
			version = iv;
		else if (sscanf(line, "epoch %16llx", &v) == 1) {
			m->m_epoch = v;
			have |= 1;
		} else if (sscanf(line, "base %llu", &v) == 1) {
			m->m_base = v;
			have |= 2;
		} else if (sscanf(line, "running %d", &iv) == 1) {
			m->m_running = iv != 0;
			have |= 4;
		} else if (strncmp(line, "snapshot ", 9) == 0) {
			unsigned long long c, t, e;
			char name[SEGSTORE_SNAPNAME_MAX];

			if (sscanf(line, "snapshot %llu %llu %llu %63s", &c, &t,
			    &e, name) != 4)
				goto damaged;
			m->m_snap.sm_valid = 1;
			m->m_snap.sm_covered = c;
			m->m_snap.sm_ts = t;
			m->m_snap.sm_entries = e;
			snprintf(m->m_snap.sm_name, sizeof(m->m_snap.sm_name),
			    "%s", name);
		} else if (sscanf(line, "fsync %15s", mode) == 1) {
			m->m_mode = segment_fsync_parse(mode, strlen(mode));
			if (m->m_mode == -1)
				goto damaged;
			have |= 8;
		}
	}
	if (version != SEGMENT_META_VERSION) {
		snprintf(errbuf, errlen, "%s/%s: unsupported metadata version "
		    "%d (this walrelay reads version %d)", ss->ss_dir,
		    SEGMENT_META, version, SEGMENT_META_VERSION);
		return -1;
	}
	if (have != 15)
		goto damaged;
	return 0;
damaged:
	snprintf(errbuf, errlen, "%s/%s: the metadata file is damaged (bad "
	    "checksum or contents). Restore it from a backup, or move it "
	    "away to start the store under a new epoch (resuming subscribers "
	    "will then have to start over)", ss->ss_dir, SEGMENT_META);
	return -1;
}
