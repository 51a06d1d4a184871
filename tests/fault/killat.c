/*
 * killat.c: an LD_PRELOAD library for the tests (never linked into
 * walrelay or walcat) that kills the process with SIGKILL at an exact
 * point: just before or just after the Nth rename or unlink whose name
 * matches a pattern. It stands in for a power cut or kill -9 at the worst
 * moment of a snapshot, a compaction or a metadata update.
 *
 *   WR_KILLAT="OP:PATTERN:N:WHEN"
 *     OP       rename (rename, renameat: either name) or unlink (unlink,
 *              unlinkat)
 *     PATTERN  fnmatch pattern for the file's last path component
 *     N        the Nth matching call (1 = the first)
 *     WHEN     before (the call is not made) or after (it is)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int	 ka_parsed;
static char	 ka_op[16];
static char	 ka_pat[256];
static long	 ka_nth;
static int	 ka_after;
static long	 ka_seen;

static void
ka_parse(void)
{
	const char *s = getenv("WR_KILLAT");
	char when[16];

	ka_parsed = 1;
	ka_nth = 0;
	if (s == NULL || sscanf(s, "%15[^:]:%255[^:]:%ld:%15s", ka_op, ka_pat,
	    &ka_nth, when) != 4)
		return;
	ka_after = strcmp(when, "after") == 0;
}

static int
ka_match(const char *op, const char *a, const char *b)
{
	const char *base;
	int hit = 0;

	if (!ka_parsed)
		ka_parse();
	if (ka_nth <= 0 || strcmp(op, ka_op) != 0)
		return 0;
	for (int i = 0; i < 2; i++) {
		const char *p = i == 0 ? a : b;

		if (p == NULL)
			continue;
		base = strrchr(p, '/');
		base = base != NULL ? base + 1 : p;
		if (fnmatch(ka_pat, base, 0) == 0)
			hit = 1;
	}
	return hit && ++ka_seen == ka_nth;
}

static void
ka_die(void)
{
	kill(getpid(), SIGKILL);
	for (;;)
		pause();
}

#define REAL(ret, name, args)						\
	static ret (*real_##name) args;					\
	if (real_##name == NULL)					\
		real_##name = (ret (*) args)dlsym(RTLD_NEXT, #name)

int
renameat(int od, const char *op, int nd, const char *np)
{
	int hit, rc;
	REAL(int, renameat, (int, const char *, int, const char *));

	hit = ka_match("rename", op, np);
	if (hit && !ka_after)
		ka_die();
	rc = real_renameat(od, op, nd, np);
	if (hit)
		ka_die();
	return rc;
}

int
rename(const char *op, const char *np)
{
	int hit, rc;
	REAL(int, rename, (const char *, const char *));

	hit = ka_match("rename", op, np);
	if (hit && !ka_after)
		ka_die();
	rc = real_rename(op, np);
	if (hit)
		ka_die();
	return rc;
}

int
unlinkat(int d, const char *p, int flags)
{
	int hit, rc;
	REAL(int, unlinkat, (int, const char *, int));

	hit = ka_match("unlink", p, NULL);
	if (hit && !ka_after)
		ka_die();
	rc = real_unlinkat(d, p, flags);
	if (hit)
		ka_die();
	return rc;
}

int
unlink(const char *p)
{
	int hit, rc;
	REAL(int, unlink, (const char *));

	hit = ka_match("unlink", p, NULL);
	if (hit && !ka_after)
		ka_die();
	rc = real_unlink(p);
	if (hit)
		ka_die();
	return rc;
}
