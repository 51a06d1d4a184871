/*
 * log.c: logging to stderr (with a UTC timestamp) or syslog.
 */
#include "autoconfig.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <syslog.h>

#include "log.h"

static int		 log_lvl = LOG_LEVEL_INFO;
static int		 log_syslog;
static const char	*log_prog = "walrelay";

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const int syslog_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

void
log_init(const char *progname, int level, int use_syslog)
{
	log_prog = progname;
	log_lvl = level;
	log_syslog = use_syslog;
	if (use_syslog)
		openlog(progname, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
log_set_level(int level)
{
	log_lvl = level;
}

int
log_get_level(void)
{
	return log_lvl;
}

int
log_level_parse(const char *s, int *level)
{
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*level = i;
			return 0;
		}
	}
	if (strcasecmp(s, "warning") == 0) {
		*level = LOG_LEVEL_WARN;
		return 0;
	}
	return -1;
}

const char *
log_level_name(int level)
{
	if (level < 0 || level > 3)
		return "?";
	return level_names[level];
}

static void	vlog(int, const char *, const char *, va_list) WR_PRINTF(3, 0);

static void
vlog(int level, const char *errstr, const char *fmt, va_list ap)
{
	char msg[2048];
	int n;

	if (level > log_lvl)
		return;
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (n < 0)
		return;
	if (errstr != NULL && (size_t)n < sizeof(msg))
		snprintf(msg + n, sizeof(msg) - n, ": %s", errstr);

	if (log_syslog) {
		syslog(syslog_prio[level], "%s", msg);
	} else {
		struct timeval tv;
		struct tm tm;
		char ts[32];

		gettimeofday(&tv, NULL);
		gmtime_r(&tv.tv_sec, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03dZ %s %s: %s\n", ts,
		    (int)(tv.tv_usec / 1000), log_prog, level_names[level], msg);
	}
}

#define LOGFN(name, level)						\
void									\
name(const char *fmt, ...)						\
{									\
	va_list ap;							\
	va_start(ap, fmt);						\
	vlog(level, NULL, fmt, ap);					\
	va_end(ap);							\
}

LOGFN(log_error, LOG_LEVEL_ERROR)
LOGFN(log_warnx, LOG_LEVEL_WARN)
LOGFN(log_info, LOG_LEVEL_INFO)
LOGFN(log_debug, LOG_LEVEL_DEBUG)

void
log_warn(const char *fmt, ...)
{
	const char *e = strerror(errno);
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_WARN, e, fmt, ap);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	const char *e = strerror(errno);
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_ERROR, e, fmt, ap);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_ERROR, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}

void
log_assert_failed(const char *cond, const char *file, int line,
    const char *func)
{
	log_error("assertion failed: %s (%s:%d, %s)", cond, file, line, func);
	abort();
}

void
log_limited(struct log_ratelimit *rl, int level, const char *fmt, ...)
{
	time_t now = time(NULL);
	va_list ap;

	if (now - rl->rl_start >= (time_t)rl->rl_interval) {
		if (rl->rl_dropped > 0)
			log_info("%u similar lines suppressed in the last %us",
			    rl->rl_dropped, rl->rl_interval);
		rl->rl_start = now;
		rl->rl_count = 0;
		rl->rl_dropped = 0;
	}
	if (rl->rl_count >= rl->rl_burst) {
		rl->rl_dropped++;
		return;
	}
	rl->rl_count++;
	va_start(ap, fmt);
	vlog(level, NULL, fmt, ap);
	va_end(ap);
}
