/*
 * wakeup.h: wake the event loop from another thread through an eventfd
 * (not event_active, which holds the loop's base lock while it wakes the
 * loop: the woken loop then blocks on the lock until the caller lets go).
 * Signals that come before the loop runs the callback are merged into one
 * call.
 */
#ifndef WALRELAY_WAKEUP_H
#define WALRELAY_WAKEUP_H

#include <stddef.h>

struct event_base;
struct wakeup;

/* cb(arg) runs on the loop after wakeup_signal. NULL with errbuf. */
struct wakeup	*wakeup_new(struct event_base *, void (*cb)(void *),
		    void *arg, char *errbuf, size_t errlen);
/* Any thread. */
void		 wakeup_signal(struct wakeup *);
/* Loop thread; NULL is fine. */
void		 wakeup_free(struct wakeup *);

#endif
