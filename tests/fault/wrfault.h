/*
 * wrfault.h: fault injection for the tests (never linked into walrelay or
 * walcat). wrfault.c wraps the file system calls the store makes and fails
 * the ones a rule matches; see tests/fault/README.md for the rule syntax.
 *
 * A unit test links wrfault.c into its program and calls wrfault_set; an
 * integration test preloads wrfault.so into the daemon (LD_PRELOAD) and
 * controls it through the file named by WRFAULT_FILE.
 */
#ifndef WALRELAY_WRFAULT_H
#define WALRELAY_WRFAULT_H

/*
 * Replace the rules (NULL or "" clears them) and reset their counters.
 * Returns 0, or -1 when spec does not parse (the old rules stay).
 */
int		 wrfault_set(const char *spec);
void		 wrfault_clear(void);
/* Faults injected so far (short writes and failed calls). */
unsigned long	 wrfault_hits(void);

#endif
