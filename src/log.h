/*
 * log.h: one line per event, level-filtered, to stderr or syslog.
 * Connection lines start with the connection's id ("up-3: ", "sub-42: ").
 */
#ifndef WALRELAY_LOG_H
#define WALRELAY_LOG_H

#include <stdarg.h>
#include <stdint.h>
#include <time.h>

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARN = 1,
	LOG_LEVEL_INFO = 2,
	LOG_LEVEL_DEBUG = 3,
};

#define WR_PRINTF(a, b) __attribute__((format(printf, a, b)))

void	log_init(const char *progname, int level, int use_syslog);
void	log_set_level(int level);
int	log_get_level(void);
int	log_level_parse(const char *, int *level);
const char *log_level_name(int level);

void	log_error(const char *, ...) WR_PRINTF(1, 2);
void	log_warn(const char *, ...) WR_PRINTF(1, 2);	/* appends strerror(errno) */
void	log_warnx(const char *, ...) WR_PRINTF(1, 2);
void	log_info(const char *, ...) WR_PRINTF(1, 2);
void	log_debug(const char *, ...) WR_PRINTF(1, 2);
void	fatal(const char *, ...) WR_PRINTF(1, 2) __attribute__((noreturn));
void	fatalx(const char *, ...) WR_PRINTF(1, 2) __attribute__((noreturn));

/*
 * An invariant the code relies on: checked in debug and sanitizer builds
 * (configure --enable-debug or --enable-asan, which the test suite and CI
 * run), compiled out otherwise. A failure logs where and aborts.
 */
#if defined(WR_DEBUG) || defined(WR_ASAN)
#define WR_ASSERT(cond) do {						\
	if (!(cond))							\
		log_assert_failed(#cond, __FILE__, __LINE__, __func__);	\
} while (0)
#else
#define WR_ASSERT(cond) do { } while (0)
#endif
void	log_assert_failed(const char *, const char *, int, const char *)
	    __attribute__((noreturn));

/*
 * Rate limit for lines an attacker can provoke: at most burst lines per
 * interval; the first line after a quiet spell says how many were dropped.
 */
struct log_ratelimit {
	time_t		 rl_start;
	unsigned	 rl_count;
	unsigned	 rl_dropped;
	unsigned	 rl_burst;
	unsigned	 rl_interval;
};
#define LOG_RATELIMIT_INIT(burst, interval) { 0, 0, 0, (burst), (interval) }

void	log_limited(struct log_ratelimit *, int level, const char *, ...)
	    WR_PRINTF(3, 4);

#endif
