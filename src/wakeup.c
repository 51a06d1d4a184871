/*
 * wakeup.c: wake the event loop from another thread through an eventfd
 * (wakeup.h).
 */
#include "autoconfig.h"

#include <sys/eventfd.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "wakeup.h"

struct wakeup {
	int		 w_fd;
	struct event	*w_ev;
	void		(*w_cb)(void *);
	void		*w_arg;
};

static void
wakeup_cb(evutil_socket_t fd, short what, void *arg)
{
	struct wakeup *w = arg;
	uint64_t n;

	/* nonblocking: EAGAIN when the callback was run for it already */
	(void)read(fd, &n, sizeof(n));
	w->w_cb(w->w_arg);
}

struct wakeup *
wakeup_new(struct event_base *base, void (*cb)(void *), void *arg,
    char *errbuf, size_t errlen)
{
	struct wakeup *w;

	if ((w = calloc(1, sizeof(*w))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	w->w_cb = cb;
	w->w_arg = arg;
	if ((w->w_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1) {
		snprintf(errbuf, errlen, "eventfd: %s", strerror(errno));
		free(w);
		return NULL;
	}
	if ((w->w_ev = event_new(base, w->w_fd, EV_READ | EV_PERSIST,
	    wakeup_cb, w)) == NULL || event_add(w->w_ev, NULL) == -1) {
		snprintf(errbuf, errlen, "out of memory");
		wakeup_free(w);
		return NULL;
	}
	return w;
}

void
wakeup_signal(struct wakeup *w)
{
	uint64_t one = 1;

	/* an eventfd write fails only when the counter would overflow: the
	 * loop has a wake-up pending then */
	while (write(w->w_fd, &one, sizeof(one)) == -1 && errno == EINTR)
		;
}

void
wakeup_free(struct wakeup *w)
{
	if (w == NULL)
		return;
	if (w->w_ev != NULL)
		event_free(w->w_ev);
	close(w->w_fd);
	free(w);
}
