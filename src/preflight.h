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

#endif
