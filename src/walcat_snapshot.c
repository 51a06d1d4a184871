/*
 * walcat_snapshot.c: walcat snapshot show | verify | diff, for FCSNAP1
 * files (snapshot-{ts}.bin, .bin.lz4), the relay's or the cache's own.
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"
#include "walcat.h"

struct wsnap_ent {
	uint8_t		*key;
	uint32_t	 klen;
	uint8_t		*val;
	uint32_t	 vlen;
	uint64_t	 exp;
};

static const char *
wsnap_base(const char *path)
{
	const char *s = strrchr(path, '/');

	return s != NULL ? s + 1 : path;
}

static void
wsnap_put_expire(FILE *f, uint64_t exp)
{
	if (exp == SNAP_NO_EXPIRY)
		fputs("none", f);
	else
		fprintf(f, "%" PRIu64, exp);
}

static int
wsnap_show(const char *path, uint64_t nkeys)
{
	struct snap_reader *sr;
	struct snap_entry e;
	struct stat sb;
	uint64_t ts, count, n = 0, fts;
	char err[512];
	int r, lz4;

	if ((sr = snap_reader_open(path, 0, &ts, &count, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "walcat: snapshot: %s\n", err);
		return WALCAT_EXIT_CORRUPT;
	}
	printf("file: %s\n", path);
	if (stat(path, &sb) == 0)
		printf("bytes: %lld\n", (long long)sb.st_size);
	printf("format: FCSNAP1 version %d%s\n", SNAP_VERSION,
	    snap_name_parse(wsnap_base(path), &fts, &lz4) == 0 && lz4 ?
	    ", LZ4 block" : "");
	printf("timestamp_ms: %" PRIu64 "\n", ts);
	printf("entries: %" PRIu64 "\n", count);
	while (n < nkeys && (r = snap_reader_next(sr, &e, err,
	    sizeof(err))) == 1) {
		printf("key ");
		walcat_put_text_key(stdout, e.se_key, e.se_klen);
		printf(" value_len %" PRIu32 " expire ", e.se_vlen);
		wsnap_put_expire(stdout, e.se_expire);
		putchar('\n');
		n++;
	}
	snap_reader_close(sr);
	return WALCAT_EXIT_OK;
}

static int
wsnap_verify(const char *path)
{
	struct snap_reader *sr;
	struct snap_entry e;
	uint64_t ts, count, n = 0, fts, bytes = 0;
	uint8_t *prev = NULL;
	uint32_t prevlen = 0;
	char err[512];
	int r, lz4, sorted = 1, rc = WALCAT_EXIT_OK;

	if ((sr = snap_reader_open(path, 0, &ts, &count, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "walcat: snapshot: %s\n", err);
		return WALCAT_EXIT_CORRUPT;
	}
	while ((r = snap_reader_next(sr, &e, err, sizeof(err))) == 1) {
		if (n > 0 && sorted && snap_key_cmp(prev, prevlen, e.se_key,
		    e.se_klen) >= 0)
			sorted = 0;
		if (sorted) {
			uint8_t *np = realloc(prev, e.se_klen ? e.se_klen : 1);

			if (np == NULL) {
				fprintf(stderr, "walcat: out of memory\n");
				rc = WALCAT_EXIT_ERROR;
				goto out;
			}
			prev = np;
			memcpy(prev, e.se_key, e.se_klen);
			prevlen = e.se_klen;
		}
		bytes += SNAP_ENTRY_FIXED + (uint64_t)e.se_klen + e.se_vlen;
		n++;
	}
	if (r == -1) {
		printf("%s: corrupt: %s\n", path, err);
		rc = WALCAT_EXIT_CORRUPT;
		goto out;
	}
	if (snap_name_parse(wsnap_base(path), &fts, &lz4) == 0 && fts != ts) {
		printf("%s: the name says timestamp %" PRIu64 ", the header %"
		    PRIu64 "\n", path, fts, ts);
		rc = WALCAT_EXIT_CORRUPT;
		goto out;
	}
	printf("%s: intact, %" PRIu64 " entries, %" PRIu64 " bytes of "
	    "entries, timestamp %" PRIu64 "%s\n", path, n, bytes, ts, sorted ?
	    ", sorted by key" : "");
out:
	free(prev);
	snap_reader_close(sr);
	return rc;
}

static int
wsnap_ent_cmp(const void *a, const void *b)
{
	const struct wsnap_ent *x = a, *y = b;

	return snap_key_cmp(x->key, x->klen, y->key, y->klen);
}

static void
wsnap_free(struct wsnap_ent *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].key);
	free(v);
}

/* The whole file in memory, sorted by key. -1 (said) on an error. */
static int
wsnap_load(const char *path, struct wsnap_ent **out, size_t *nout)
{
	struct snap_reader *sr;
	struct snap_entry e;
	struct wsnap_ent *v = NULL, *nv;
	uint64_t ts, count;
	size_t n = 0, cap = 0;
	char err[512];
	int r;

	if ((sr = snap_reader_open(path, 0, &ts, &count, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "walcat: snapshot: %s\n", err);
		return -1;
	}
	while ((r = snap_reader_next(sr, &e, err, sizeof(err))) == 1) {
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL)
				goto oom;
			v = nv;
		}
		if ((v[n].key = malloc((size_t)e.se_klen + e.se_vlen + 1)) ==
		    NULL)
			goto oom;
		memcpy(v[n].key, e.se_key, e.se_klen);
		memcpy(v[n].key + e.se_klen, e.se_val, e.se_vlen);
		v[n].klen = e.se_klen;
		v[n].val = v[n].key + e.se_klen;
		v[n].vlen = e.se_vlen;
		v[n].exp = e.se_expire;
		n++;
	}
	snap_reader_close(sr);
	if (r == -1) {
		fprintf(stderr, "walcat: snapshot: %s: %s\n", path, err);
		wsnap_free(v, n);
		return -1;
	}
	if (n > 0)
		qsort(v, n, sizeof(*v), wsnap_ent_cmp);
	*out = v;
	*nout = n;
	return 0;
oom:
	snap_reader_close(sr);
	wsnap_free(v, n);
	fprintf(stderr, "walcat: out of memory\n");
	return -1;
}

static void
wsnap_line(char c, const struct wsnap_ent *e, const char *what)
{
	printf("%c ", c);
	walcat_put_text_key(stdout, e->key, e->klen);
	if (what != NULL)
		printf(" %s", what);
	putchar('\n');
}

static int
wsnap_diff(const char *pa, const char *pb)
{
	struct wsnap_ent *a = NULL, *b = NULL;
	size_t na = 0, nb = 0, i = 0, j = 0;
	uint64_t added = 0, removed = 0, changed = 0;

	if (wsnap_load(pa, &a, &na) == -1)
		return WALCAT_EXIT_ERROR;
	if (wsnap_load(pb, &b, &nb) == -1) {
		wsnap_free(a, na);
		return WALCAT_EXIT_ERROR;
	}
	while (i < na || j < nb) {
		int c = i == na ? 1 : j == nb ? -1 : snap_key_cmp(a[i].key,
		    a[i].klen, b[j].key, b[j].klen);

		if (c < 0) {
			wsnap_line('-', &a[i++], NULL);
			removed++;
		} else if (c > 0) {
			wsnap_line('+', &b[j++], NULL);
			added++;
		} else {
			int dv = a[i].vlen != b[j].vlen ||
			    memcmp(a[i].val, b[j].val, a[i].vlen) != 0;
			int de = a[i].exp != b[j].exp;

			if (dv || de) {
				wsnap_line('~', &b[j], dv && de ?
				    "value expiry" : dv ? "value" : "expiry");
				changed++;
			}
			i++;
			j++;
		}
	}
	fprintf(stderr, "walcat: snapshot diff: %" PRIu64 " added, %" PRIu64
	    " removed, %" PRIu64 " changed (%zu keys in %s, %zu in %s)\n",
	    added, removed, changed, na, pa, nb, pb);
	wsnap_free(a, na);
	wsnap_free(b, nb);
	return added + removed + changed > 0 ? 1 : 0;
}

static void
wsnap_usage(FILE *f)
{
	fprintf(f, "usage: walcat snapshot show [--keys N] FILE\n"
	    "       walcat snapshot verify FILE\n"
	    "       walcat snapshot diff A B\n\n"
	    "show: the header, the entry count and the first N keys (10).\n"
	    "verify: read every entry; exit 0 intact, 2 corrupt.\n"
	    "diff: keys added (+), removed (-) and changed (~) from A to B;\n"
	    "      exit 0 identical, 1 different (both files are held in\n"
	    "      memory).\n");
}

int
walcat_snapshot(int argc, char **argv)
{
	uint64_t nkeys = 10;
	int i = 1;

	/* argv[0] is "snapshot" */
	if (argc < 2 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "--help") == 0) {
		wsnap_usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? WALCAT_EXIT_ERROR : WALCAT_EXIT_OK;
	}
	if (strcmp(argv[i], "show") == 0) {
		i++;
		if (i + 1 < argc && strcmp(argv[i], "--keys") == 0) {
			char *end;

			errno = 0;
			nkeys = strtoull(argv[i + 1], &end, 10);
			if (errno != 0 || *end != '\0' || argv[i + 1][0] ==
			    '\0') {
				fprintf(stderr, "walcat: snapshot show: --keys "
				    "%s: not a number\n", argv[i + 1]);
				return WALCAT_EXIT_ERROR;
			}
			i += 2;
		}
		if (i + 1 != argc) {
			wsnap_usage(stderr);
			return WALCAT_EXIT_ERROR;
		}
		return wsnap_show(argv[i], nkeys);
	}
	if (strcmp(argv[i], "verify") == 0 && argc == 3)
		return wsnap_verify(argv[2]);
	if (strcmp(argv[i], "diff") == 0 && argc == 4)
		return wsnap_diff(argv[2], argv[3]);
	wsnap_usage(stderr);
	return WALCAT_EXIT_ERROR;
}
