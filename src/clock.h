/*
 * clock.h: the clocks walrelay and walcat read, in one place.
 *
 * Wall time (CLOCK_REALTIME) is for what is shown or stored: segment file
 * names, frame timestamps, "connected at". Monotonic time (CLOCK_MONOTONIC)
 * is for intervals and deadlines: fsync intervals, segment age, progress
 * lines, rates. Both are safe to call from any thread.
 */
#ifndef WALRELAY_CLOCK_H
#define WALRELAY_CLOCK_H

#include <stdint.h>

uint64_t	clock_wall_ms(void);
uint64_t	clock_wall_ns(void);
uint64_t	clock_mono_ms(void);
uint64_t	clock_mono_us(void);
uint64_t	clock_mono_ns(void);

#endif
