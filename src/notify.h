/*
 * notify.h: tell the service manager what the relay is doing (systemd's
 * Type=notify protocol: READY=1, RELOADING=1, STOPPING=1, STATUS=, the
 * watchdog). Built on libsystemd's sd_notify; without it (configure
 * --without-systemd, or no libsystemd) every call does nothing. Without
 * NOTIFY_SOCKET in the environment, every call does nothing either.
 */
#ifndef WALRELAY_NOTIFY_H
#define WALRELAY_NOTIFY_H

#include <stddef.h>

struct event_base;

/*
 * Start the watchdog pings (WATCHDOG=1 every half of WATCHDOG_USEC, from
 * the event loop, when the manager asked for them) and the periodic
 * STATUS= line. 0, or -1 with a message in errbuf.
 */
int	notify_init(struct event_base *, char *errbuf, size_t errlen);
/* READY=1 with STATUS=: after recovery, every listener bound; after reload. */
void	notify_ready(void);
/* RELOADING=1 with MONOTONIC_USEC=now: at the start of a reload. */
void	notify_reloading(void);
/* STOPPING=1: shutdown has begun. */
void	notify_stopping(void);
void	notify_free(void);

/* The one-line STATUS= summary, for tests and the log. */
void	notify_status_line(char *buf, size_t len);

#endif
