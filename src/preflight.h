/*
 * preflight.h: what a start would find, checked without changing anything
 * (--check-config, and before a start creates a store): the data
 * directory and the listeners' addresses.
 */
#ifndef WALRELAY_PREFLIGHT_H
#define WALRELAY_PREFLIGHT_H

#include <stddef.h>

struct wr_config;

/*
 * The data directory exists and is a writable directory, or can be
 * created (its parent is a writable directory); then, unless a running
 * walrelay holds the directory's lock, every listener's address can be
 * bound (bound and closed at once). 0, or -1 with a message in errbuf.
 * *note (may be NULL) is set to a line worth printing, or "".
 */
int	preflight_start(const struct wr_config *, char *note, size_t notelen,
	    char *errbuf, size_t errlen);
/*
 * The same for stream sc of top (a config with [stream] sections, or top
 * itself without): a start creates top's data directory first, so a
 * stream's directory inside it may be missing together with it; top's
 * data directory must then be creatable (its parent a writable directory).
 */
int	preflight_stream(const struct wr_config *top,
	    const struct wr_config *sc, char *note, size_t notelen,
	    char *errbuf, size_t errlen);

#endif
