/*
 * clock.c: wall and monotonic time in ms, us and ns.
 */
#include "autoconfig.h"

#include <time.h>

#include "clock.h"

static uint64_t
clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t
clock_wall_ms(void)
{
	return clock_ns(CLOCK_REALTIME) / 1000000;
}

uint64_t
clock_wall_ns(void)
{
	return clock_ns(CLOCK_REALTIME);
}

uint64_t
clock_mono_ms(void)
{
	return clock_ns(CLOCK_MONOTONIC) / 1000000;
}

uint64_t
clock_mono_us(void)
{
	return clock_ns(CLOCK_MONOTONIC) / 1000;
}

uint64_t
clock_mono_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}
