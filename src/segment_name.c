/*
 * segment_name.c: segment file names and directory listings, in the cache's
 * naming and sort order (every name ending in .wal or .wal.lz4, by name).
 */
#include "autoconfig.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

static int
has_suffix(const char *s, const char *suffix)
{
	size_t ls = strlen(s), lx = strlen(suffix);

	return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

int
segment_is_wal_name(const char *name)
{
	return has_suffix(name, ".wal") || has_suffix(name, ".wal.lz4");
}

int
segment_name_parse(const char *name, uint64_t *base_seq, uint64_t *created_ms)
{
	char rest[16];
	unsigned long long seq, ms;
	int n = 0;

	if (strncmp(name, "segment-", 8) != 0 || strlen(name) < 8 + 20 + 1)
		return -1;
	for (int i = 0; i < 20; i++)
		if (name[8 + i] < '0' || name[8 + i] > '9')
			return -1;
	if (sscanf(name, "segment-%20llu-%llu%n", &seq, &ms, &n) != 2)
		return -1;
	snprintf(rest, sizeof(rest), "%s", name + n);
	if (strcmp(rest, ".wal") != 0 && strcmp(rest, ".wal.lz4") != 0)
		return -1;
	*base_seq = seq;
	if (created_ms != NULL)
		*created_ms = ms;
	return 0;
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
list_dir_once(const char *dir, char ***names, size_t *n, char *errbuf,
    size_t errlen, int all)
{
	DIR *d;
	struct dirent *de;
	char **v = NULL;
	size_t len = 0, cap = 0;

	if ((d = opendir(dir)) == NULL) {
		snprintf(errbuf, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || (!segment_is_wal_name(de->d_name) &&
		    (!all || (!has_suffix(de->d_name, ".wal.zst") &&
		    !has_suffix(de->d_name, ".wal.zst.tmp")))))
			continue;
		if (len == cap) {
			char **nv;
			cap = cap ? cap * 2 : 64;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL)
				goto nomem;
			v = nv;
		}
		if ((v[len] = strdup(de->d_name)) == NULL)
			goto nomem;
		len++;
	}
	closedir(d);
	if (len > 0)
		qsort(v, len, sizeof(*v), cmp_names);
	*names = v;
	*n = len;
	return 0;
nomem:
	closedir(d);
	segment_list_free(v, len);
	snprintf(errbuf, errlen, "%s: out of memory", dir);
	return -1;
}

/* Most listings of a changing directory before two are merged. */
#define LIST_TRIES	16

/* The sorted union of two sorted listings; frees both. NULL: no memory. */
static char **
list_union(char **a, size_t na, char **b, size_t nb, size_t *n)
{
	char **v;
	size_t i = 0, j = 0, k = 0;
	int c;

	if ((v = calloc(na + nb + 1, sizeof(*v))) == NULL) {
		segment_list_free(a, na);
		segment_list_free(b, nb);
		return NULL;
	}
	while (i < na || j < nb) {
		c = i == na ? 1 : j == nb ? -1 : strcmp(a[i], b[j]);
		if (c < 0)
			v[k++] = a[i++];
		else if (c > 0)
			v[k++] = b[j++];
		else {
			v[k++] = a[i++];
			free(b[j++]);
		}
	}
	free(a);
	free(b);
	*n = k;
	return v;
}

/*
 * readdir reads a large directory in several getdents calls; an archive
 * step that renames X.wal.zst into place and then removes X.wal between
 * two of them can leave both names out of one listing (a gap in a store
 * that has none). Two listings in a row that agree hold every segment: a
 * step completed during the first changes the second. A store that a
 * running relay changes (walcat on a live data directory) is listed again
 * until two agree; a directory that changes at every listing gets the
 * union of the last two, which misses no segment that was there all along
 * (a step keeps one of its names in place at every moment) and may name a
 * raw file just archived (its .wal.zst is listed too) or a file just
 * removed by retention.
 */
static int
list_dir(const char *dir, char ***names, size_t *n, char *errbuf,
    size_t errlen, int all)
{
	char **v, **w;
	size_t nv, nw, i;

	if (list_dir_once(dir, &v, &nv, errbuf, errlen, all) == -1)
		return -1;
	for (int tries = 1; ; tries++) {
		if (list_dir_once(dir, &w, &nw, errbuf, errlen, all) == -1) {
			segment_list_free(v, nv);
			return -1;
		}
		for (i = 0; nw == nv && i < nv; i++)
			if (strcmp(v[i], w[i]) != 0)
				break;
		if (nw == nv && i == nv) {
			segment_list_free(v, nv);
			v = w;
			break;
		}
		if (tries == LIST_TRIES - 1) {
			if ((v = list_union(v, nv, w, nw, &nv)) == NULL) {
				snprintf(errbuf, errlen, "%s: out of memory",
				    dir);
				return -1;
			}
			break;
		}
		segment_list_free(v, nv);
		v = w;
		nv = nw;
	}
	*names = v;
	*n = nv;
	return 0;
}

int
segment_list_dir(const char *dir, char ***names, size_t *n, char *errbuf,
    size_t errlen)
{
	return list_dir(dir, names, n, errbuf, errlen, 0);
}

int
segment_list_dir_all(const char *dir, char ***names, size_t *n, char *errbuf,
    size_t errlen)
{
	return list_dir(dir, names, n, errbuf, errlen, 1);
}

void
segment_list_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}
