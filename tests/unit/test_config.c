/*
 * test_config.c: defaults, the file, the command line, validation, the
 * shipped etc/walrelay.conf, --help, the dump and reloads.
 */
#include "autoconfig.h"

#include <check.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "segment.h"
#include "log.h"
#include "segment.h"

#define ETC_CONF	WR_TEST_ETC "/walrelay.conf"
#define MAN_CONF	WR_TEST_MAN "/walrelay.conf.5"
#define MAXARGS		64

static char errbuf[1024];

/* A config file with these contents; the path stays valid until freed. */
static char *
tmpconf(const char *text)
{
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char *path;
	FILE *f;
	int fd;

	ck_assert(asprintf(&path, "%s/wrconf-XXXXXX", dir) > 0);
	ck_assert_int_ge(fd = mkstemp(path), 0);
	ck_assert_ptr_nonnull(f = fdopen(fd, "w"));
	ck_assert_int_ge(fputs(text, f), 0);
	ck_assert_int_eq(fclose(f), 0);
	return path;
}

static void
rmconf(char *path)
{
	unlink(path);
	free(path);
}

/* config_load with a NULL-terminated list of arguments after argv[0]. */
static int
load(struct wr_config *cfg, ...)
{
	char *argv[MAXARGS + 1];
	int argc = 0;
	va_list ap;
	char *a;

	argv[argc++] = "walrelay";
	va_start(ap, cfg);
	while ((a = va_arg(ap, char *)) != NULL) {
		ck_assert_int_lt(argc, MAXARGS);
		argv[argc++] = a;
	}
	va_end(ap);
	argv[argc] = NULL;
	errbuf[0] = '\0';
	return config_load(argc, argv, cfg, errbuf, sizeof(errbuf));
}

/* Load a file (after "[walrelay]\n" when section is set) plus no options. */
static int
load_file(struct wr_config *cfg, const char *text, char **pathp)
{
	char *path = tmpconf(text);
	int rc;

	rc = load(cfg, "-c", path, NULL);
	if (pathp != NULL)
		*pathp = path;
	else
		rmconf(path);
	return rc;
}

static void
assert_err(const char *want)
{
	ck_assert_msg(strstr(errbuf, want) != NULL, "error '%s' lacks '%s'",
	    errbuf, want);
}

/* The one size parser, used by walrelay's keys and walcat's options. */
START_TEST(size_parser)
{
	uint64_t v;

	ck_assert_int_eq(config_parse_size("0", &v), 0);
	ck_assert_uint_eq(v, 0);
	ck_assert_int_eq(config_parse_size("64M", &v), 0);
	ck_assert_uint_eq(v, 64ull << 20);
	ck_assert_int_eq(config_parse_size("3k", &v), 0);
	ck_assert_uint_eq(v, 3072);
	ck_assert_int_eq(config_parse_size("2T", &v), 0);
	ck_assert_uint_eq(v, 2ull << 40);
	ck_assert_int_eq(config_parse_size("18446744073709551615", &v), 0);
	ck_assert_uint_eq(v, UINT64_MAX);
	ck_assert_int_eq(config_parse_size("18446744073709551616", &v), -1);
	ck_assert_int_eq(config_parse_size("16777216T", &v), -1);
	ck_assert_int_eq(config_parse_size("", &v), -1);
	ck_assert_int_eq(config_parse_size("K", &v), -1);
	ck_assert_int_eq(config_parse_size("4KB", &v), -1);
	ck_assert_int_eq(config_parse_size("4 K", &v), -1);
	ck_assert_int_eq(config_parse_size("-4", &v), -1);
	ck_assert_int_eq(config_parse_size("+4", &v), -1);
	ck_assert_int_eq(config_parse_size("0x10", &v), -1);
}
END_TEST

START_TEST(defaults)
{
	struct wr_config cfg;

	ck_assert_int_eq(load(&cfg, NULL), 0);
	ck_assert_str_eq(cfg.ingest, "127.0.0.1:7630");
	ck_assert_ptr_null(cfg.upstream);
	ck_assert_int_eq(cfg.upstream_protocol, UPSTREAM_PROTO_AUTH);
	ck_assert_str_eq(cfg.listen, "127.0.0.1:7632");
	ck_assert_str_eq(cfg.http, "127.0.0.1:7633");
	ck_assert_str_eq(cfg.data_dir, "./walrelay-data");
	ck_assert_int_eq(cfg.fsync_mode, FSYNC_ALWAYS);
	ck_assert_ptr_null(cfg.publish_token_file);
	ck_assert_ptr_null(cfg.subscribe_token_file);
	ck_assert_ptr_null(cfg.upstream_token_file);
	ck_assert_int_eq(cfg.allow_unauthenticated, 0);
	ck_assert_uint_eq(cfg.segment_bytes, 64 * 1024 * 1024);
	ck_assert_uint_eq(cfg.segment_age_s, 0);
	ck_assert_uint_eq(cfg.retain_bytes, 0);
	ck_assert_uint_eq(cfg.retain_age_s, 0);
	ck_assert_uint_eq(cfg.max_frame_bytes, 64 * 1024 * 1024);
	ck_assert_ptr_null(cfg.tls_cert);
	ck_assert_ptr_null(cfg.tls_key);
	ck_assert_ptr_null(cfg.tls_ca);
	ck_assert_int_eq(cfg.tls_verify_client, 0);
	ck_assert_int_eq(cfg.tls_ingest, 0);
	ck_assert_int_eq(cfg.upstream_tls, 0);
	ck_assert_uint_eq(cfg.auth_timeout_ms, 5000);
	ck_assert_uint_eq(cfg.subscriber_timeout_ms, 60000);
	ck_assert_uint_eq(cfg.max_subscribers, 1024);
	ck_assert_uint_eq(cfg.max_conns_per_ip, 64);
	ck_assert_uint_eq(cfg.max_ingest_conns_per_ip, 16);
	ck_assert_uint_eq(cfg.max_lag_frames, 0);
	ck_assert_uint_eq(cfg.tail_memory, 64 * 1024 * 1024);
	ck_assert_uint_eq(cfg.subscriber_buffer, 1024 * 1024);
	ck_assert_uint_eq(cfg.ingest_pause_bytes, 32 * 1024 * 1024);
	ck_assert_uint_eq(cfg.ingest_resume_bytes, 8 * 1024 * 1024);
	ck_assert_uint_eq(cfg.upstream_backoff_min_ms, 100);
	ck_assert_uint_eq(cfg.upstream_backoff_max_ms, 10000);
	ck_assert_uint_eq(cfg.shutdown_timeout_ms, 5000);
	ck_assert_int_eq(cfg.log_level, LOG_LEVEL_INFO);
	ck_assert_int_eq(cfg.log_syslog, 0);
	ck_assert_ptr_null(cfg.config_file);
	ck_assert_int_eq(cfg.check_only, 0);
	config_free(&cfg);
}
END_TEST

START_TEST(precedence)
{
	struct wr_config cfg;
	char *path = tmpconf("[walrelay]\nsegment-bytes = 1M\n"
	    "log-level = debug\ndata-dir = /from/file\nmax-subscribers = 9\n");

	/* the command line wins, wherever -c is */
	ck_assert_int_eq(load(&cfg, "--segment-bytes", "2M", "-c", path,
	    "--data-dir=/from/cli", "--check-config", NULL), 0);
	ck_assert_uint_eq(cfg.segment_bytes, 2 * 1024 * 1024);
	ck_assert_str_eq(cfg.data_dir, "/from/cli");
	ck_assert_int_eq(cfg.log_level, LOG_LEVEL_DEBUG);	/* file */
	ck_assert_uint_eq(cfg.max_subscribers, 9);		/* file */
	ck_assert_uint_eq(cfg.max_lag_frames, 0);		/* default */
	ck_assert_str_eq(cfg.config_file, path);
	ck_assert_int_eq(cfg.check_only, 1);
	config_free(&cfg);

	ck_assert_int_eq(load(&cfg, "--config", path, "--log-level", "warn",
	    NULL), 0);
	ck_assert_int_eq(cfg.log_level, LOG_LEVEL_WARN);
	ck_assert_uint_eq(cfg.segment_bytes, 1024 * 1024);
	config_free(&cfg);
	rmconf(path);
}
END_TEST

/* A value read back from the field at off, of the field's size. */
struct good {
	const char	*key;
	const char	*value;
	size_t		 off;
	size_t		 size;
	uint64_t	 want;
};

#define F(f)	offsetof(struct wr_config, f), \
		sizeof(((struct wr_config *)0)->f)

static const struct good goods[] = {
	{ "segment-bytes", "4096", F(segment_bytes), 4096 },
	{ "segment-bytes", "4k", F(segment_bytes), 4096 },
	{ "segment-bytes", "4K", F(segment_bytes), 4096 },
	{ "segment-bytes", "64M", F(segment_bytes), 64ULL << 20 },
	{ "segment-bytes", "3G", F(segment_bytes), 3ULL << 30 },
	{ "segment-bytes", "1T", F(segment_bytes), 1ULL << 40 },
	{ "retain-bytes", "0", F(retain_bytes), 0 },
	{ "retain-bytes", "10T", F(retain_bytes), 10ULL << 40 },
	{ "max-lag", "512k", F(max_lag_frames), 512 * 1024 },
	{ "segment-age", "90", F(segment_age_s), 90 },
	{ "segment-age", "2m", F(segment_age_s), 120 },
	{ "segment-age", "1h", F(segment_age_s), 3600 },
	{ "segment-age", "5000ms", F(segment_age_s), 5 },
	{ "retain-age", "24h", F(retain_age_s), 86400 },
	{ "auth-timeout", "7", F(auth_timeout_ms), 7000 },
	{ "auth-timeout", "250ms", F(auth_timeout_ms), 250 },
	{ "auth-timeout", "2s", F(auth_timeout_ms), 2000 },
	{ "subscriber-timeout", "1m", F(subscriber_timeout_ms), 60000 },
	{ "subscriber-timeout", "0", F(subscriber_timeout_ms), 0 },
	{ "shutdown-timeout", "30", F(shutdown_timeout_ms), 30000 },
	{ "upstream-backoff-max", "250", F(upstream_backoff_max_ms), 250 },
	{ "upstream-backoff-max", "1m", F(upstream_backoff_max_ms), 60000 },
	{ "max-subscribers", "10", F(max_subscribers), 10 },
	{ "max-conns-per-ip", "1", F(max_conns_per_ip), 1 },
	{ "max-ingest-conns-per-ip", "3", F(max_ingest_conns_per_ip), 3 },
	{ "max-conns-per-ip-total", "100", F(max_conns_per_ip_total), 100 },
	{ "max-ingest-conns-per-ip-total", "5",
	    F(max_ingest_conns_per_ip_total), 5 },
	{ "allow-unauthenticated", "yes", F(allow_unauthenticated), 1 },
	{ "allow-unauthenticated", "on", F(allow_unauthenticated), 1 },
	{ "allow-unauthenticated", "1", F(allow_unauthenticated), 1 },
	{ "allow-unauthenticated", "TRUE", F(allow_unauthenticated), 1 },
	{ "allow-unauthenticated", "false", F(allow_unauthenticated), 0 },
	{ "allow-unauthenticated", "off", F(allow_unauthenticated), 0 },
	{ "allow-unauthenticated", "0", F(allow_unauthenticated), 0 },
	{ "log-level", "error", F(log_level), LOG_LEVEL_ERROR },
	{ "log-level", "warning", F(log_level), LOG_LEVEL_WARN },
	{ "log-level", "debug", F(log_level), LOG_LEVEL_DEBUG },
	{ "log-target", "syslog", F(log_syslog), 1 },
	{ "fsync", "never", F(fsync_mode), FSYNC_NEVER },
	{ "fsync", "interval:50", F(fsync_mode), FSYNC_INTERVAL },
	{ "fsync", "interval:50", F(fsync_interval_ms), 50 },
	{ "fsync", "interval:2s", F(fsync_interval_ms), 2000 },
};

/* Booleans are flags: their value only comes with --key=VALUE. */
static int
is_flag(const char *key)
{
	return strcmp(key, "allow-unauthenticated") == 0;
}

static uint64_t
field(const struct wr_config *cfg, size_t off, size_t size)
{
	const char *p = (const char *)cfg + off;

	if (size == sizeof(uint64_t))
		return *(const uint64_t *)p;
	if (size == sizeof(unsigned))
		return *(const unsigned *)p;
	ck_abort_msg("field size %zu", size);
	return 0;
}

START_TEST(good_values)
{
	const struct good *g = &goods[_i];
	struct wr_config cfg;
	char opt[64], text[256];

	/* as an option, --key VALUE and --key=VALUE */
	if (!is_flag(g->key)) {
		snprintf(opt, sizeof(opt), "--%s", g->key);
		ck_assert_msg(load(&cfg, opt, g->value, NULL) == 0, "%s %s: %s",
		    opt, g->value, errbuf);
		ck_assert_uint_eq(field(&cfg, g->off, g->size), g->want);
		config_free(&cfg);
	}
	snprintf(opt, sizeof(opt), "--%s=%s", g->key, g->value);
	ck_assert_msg(load(&cfg, opt, NULL) == 0, "%s: %s", opt, errbuf);
	ck_assert_uint_eq(field(&cfg, g->off, g->size), g->want);
	config_free(&cfg);
	/* in the file, with a comment after it */
	snprintf(text, sizeof(text), "[walrelay]\n%s = %s  # note\n", g->key,
	    g->value);
	ck_assert_msg(load_file(&cfg, text, NULL) == 0, "%s: %s", text,
	    errbuf);
	ck_assert_uint_eq(field(&cfg, g->off, g->size), g->want);
	config_free(&cfg);
}
END_TEST

START_TEST(strings_and_addresses)
{
	struct wr_config cfg;

	ck_assert_int_eq(load_file(&cfg, "; comment\n\n  [ walrelay ]  \n"
	    "  data-dir   =   \"/a b # c ; \\\"q\\\" \\\\\"   # comment\n"
	    "listen = [::1]:7000\n"
	    "ingest = none\n"
	    "upstream = relay-1.example:7632\n"
	    "upstream-protocol = sub\n"
	    "http = none\n"
	    "tls-cert = /etc/c.pem\t; comment\n"
	    "tls-key=/etc/k.pem\n", NULL), 0);
	ck_assert_str_eq(cfg.data_dir, "/a b # c ; \"q\" \\");
	ck_assert_str_eq(cfg.listen, "[::1]:7000");
	ck_assert_ptr_null(cfg.ingest);
	ck_assert_ptr_null(cfg.http);
	ck_assert_str_eq(cfg.upstream, "relay-1.example:7632");
	ck_assert_int_eq(cfg.upstream_protocol, UPSTREAM_PROTO_SUB);
	ck_assert_str_eq(cfg.tls_cert, "/etc/c.pem");
	ck_assert_str_eq(cfg.tls_key, "/etc/k.pem");
	config_free(&cfg);

	/* an empty value unsets a string; the command line can unset too */
	ck_assert_int_eq(load_file(&cfg, "[walrelay]\ntls-ca =\n", NULL), 0);
	ck_assert_ptr_null(cfg.tls_ca);
	config_free(&cfg);
	ck_assert_int_eq(load(&cfg, "--listen", "0.0.0.0:65535", "--ingest",
	    "localhost:1", NULL), 0);
	ck_assert_str_eq(cfg.listen, "0.0.0.0:65535");
	ck_assert_str_eq(cfg.ingest, "localhost:1");
	config_free(&cfg);
}
END_TEST

START_TEST(bool_flags)
{
	struct wr_config cfg;

	ck_assert_int_eq(load(&cfg, "--allow-unauthenticated", NULL), 0);
	ck_assert_int_eq(cfg.allow_unauthenticated, 1);
	config_free(&cfg);
	/* a flag does not take the next argument as its value */
	ck_assert_int_eq(load(&cfg, "--allow-unauthenticated", "--log-level",
	    "debug", NULL), 0);
	ck_assert_int_eq(cfg.allow_unauthenticated, 1);
	ck_assert_int_eq(cfg.log_level, LOG_LEVEL_DEBUG);
	config_free(&cfg);
	ck_assert_int_eq(load(&cfg, "--allow-unauthenticated",
	    "--no-allow-unauthenticated", NULL), 0);
	ck_assert_int_eq(cfg.allow_unauthenticated, 0);
	config_free(&cfg);
	ck_assert_int_eq(load(&cfg, "--allow-unauthenticated=off", NULL), 0);
	ck_assert_int_eq(cfg.allow_unauthenticated, 0);
	config_free(&cfg);
	/* --no-X turns off what the file turned on */
	{
		char *path = tmpconf("[walrelay]\nallow-unauthenticated = yes\n");

		ck_assert_int_eq(load(&cfg, "--no-allow-unauthenticated", "-c",
		    path, NULL), 0);
		ck_assert_int_eq(cfg.allow_unauthenticated, 0);
		config_free(&cfg);
		rmconf(path);
	}
}
END_TEST

struct bad {
	const char	*key;
	const char	*value;
	const char	*want;	/* in the message, after "KEY: " */
};

static const struct bad bads[] = {
	{ "segment-bytes", "64Q", "'64Q' is not a size (use a number with an "
	    "optional k, M, G or T suffix)" },
	{ "segment-bytes", "64MB", "'64MB' is not a size" },
	{ "segment-bytes", "1.5M", "'1.5M' is not a size" },
	{ "segment-bytes", "-1", "'-1' is not a size" },
	{ "segment-bytes", "5 5", "is not a size" },
	{ "segment-bytes", "99999999999999999999", "is not a size" },
	{ "segment-bytes", "1k", "'1k' is out of range (4k to 1T)" },
	{ "segment-bytes", "2T", "is out of range" },
	{ "max-frame-bytes", "2G", "'2G' is out of range (64 to 1G)" },
	{ "segment-age", "5x", "'5x' is not a duration" },
	{ "segment-age", "1500ms", "'1500ms' is not a whole number of seconds" },
	{ "auth-timeout", "1.5s", "'1.5s' is not a duration" },
	{ "auth-timeout", "2h", "'2h' is out of range (10ms to 1h)" },
	{ "auth-timeout", "s", "is not a duration" },
	{ "upstream-backoff-min", "0", "'0' is out of range (1ms to 1h)" },
	{ "max-subscribers", "ten", "'ten' is not a number" },
	{ "max-subscribers", "0", "'0' is out of range (1 to 1000000)" },
	{ "max-subscribers", "5000000000", "is out of range" },
	{ "allow-unauthenticated", "maybe", "'maybe' is not a boolean (true, "
	    "false, yes, no, on, off, 1 or 0)" },
	{ "fsync", "sometimes", "'sometimes' is not an fsync mode (always, "
	    "interval:MS or never)" },
	{ "fsync", "interval:", "is not an fsync mode" },
	{ "fsync", "interval:0", "the interval must be" },
	{ "fsync", "interval:x", "is not an fsync mode" },
	{ "fsync", "interval", "'interval' is not an fsync mode" },
	{ "fsync", "always:5", "'always:5' is not an fsync mode" },
	{ "fsync", "Never", "'Never' is not an fsync mode" },
	{ "upstream-protocol", "http", "'http' is not one of auth|sub" },
	{ "log-target", "file", "'file' is not one of stderr|syslog" },
	{ "log-level", "loud", "'loud' is not a log level (error, warn, info "
	    "or debug)" },
	{ "listen", "localhost", "'localhost' is not an address (use "
	    "host:port or [ipv6]:port)" },
	{ "listen", "none", "cannot be 'none'" },
	{ "listen", "host:0", "the port must be a number from 1 to 65535" },
	{ "listen", "host:65536", "the port must be a number from 1 to 65535" },
	{ "listen", "host:", "the port must be" },
	{ "listen", "host:http", "the port must be" },
	{ "listen", "::1:80", "put an IPv6 address in brackets" },
	{ "listen", "[::1]80", "write an IPv6 address as [addr]:port" },
	{ "listen", "[zz]:80", "is not an IPv6 address" },
	{ "listen", ":80", "has no host" },
	{ "ingest", "a b:80", "bad character in the host" },
	{ "data-dir", "", "may not be empty" },
};

START_TEST(bad_values)
{
	const struct bad *b = &bads[_i];
	struct wr_config cfg;
	char opt[64], want[512], text[256], *path;

	/* on the command line: "--key: ..." */
	if (is_flag(b->key)) {
		snprintf(opt, sizeof(opt), "--%s=%s", b->key, b->value);
		ck_assert_int_eq(load(&cfg, opt, NULL), -1);
	} else {
		snprintf(opt, sizeof(opt), "--%s", b->key);
		ck_assert_int_eq(load(&cfg, opt, b->value, NULL), -1);
	}
	snprintf(want, sizeof(want), "--%s: ", b->key);
	ck_assert_msg(strncmp(errbuf, want, strlen(want)) == 0,
	    "'%s' does not start with '%s'", errbuf, want);
	assert_err(b->want);

	/* in a file: "FILE:LINE: key: ..." */
	snprintf(text, sizeof(text), "# walrelay\n[walrelay]\n\n%s = %s\n",
	    b->key, b->value);
	ck_assert_int_eq(load_file(&cfg, text, &path), -1);
	snprintf(want, sizeof(want), "%s:4: %s: ", path, b->key);
	ck_assert_msg(strncmp(errbuf, want, strlen(want)) == 0,
	    "'%s' does not start with '%s'", errbuf, want);
	assert_err(b->want);
	rmconf(path);
}
END_TEST

START_TEST(file_errors)
{
	struct wr_config cfg;
	char *path, want[512];

	ck_assert_int_eq(load_file(&cfg, "[walrelay]\nsegment-byte = 1M\n",
	    &path), -1);
	snprintf(want, sizeof(want), "%s:2: unknown key 'segment-byte' (did "
	    "you mean 'segment-bytes'?)", path);
	ck_assert_str_eq(errbuf, want);
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "[walrelay]\nzzz = 1\n", &path), -1);
	snprintf(want, sizeof(want), "%s:2: unknown key 'zzz'", path);
	assert_err(want);
	ck_assert_ptr_null(strstr(errbuf, "did you mean"));
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "[walrelay]\nlisten = 127.0.0.1:1\n"
	    "[other]\nlisten = 127.0.0.1:2\n", &path), -1);
	snprintf(want, sizeof(want), "%s:3: unknown section [other]", path);
	assert_err(want);
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "listen = 127.0.0.1:1\n[walrelay]\n",
	    &path), -1);
	snprintf(want, sizeof(want), "%s:1: listen: outside the [walrelay] "
	    "section", path);
	assert_err(want);
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "[walrelay]\n\nfsync\n", &path), -1);
	snprintf(want, sizeof(want), "%s:3: expected 'key = value'", path);
	assert_err(want);
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "[walrelay\n", &path), -1);
	snprintf(want, sizeof(want), "%s:1: missing ']'", path);
	assert_err(want);
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "[walrelay]\ndata-dir = \"/x\n",
	    &path), -1);
	snprintf(want, sizeof(want), "%s:2: data-dir: missing closing", path);
	assert_err(want);
	rmconf(path);

	ck_assert_int_eq(load_file(&cfg, "[walrelay]\nlog-level = info\n"
	    "log-level = debug\n", &path), -1);
	snprintf(want, sizeof(want), "%s:3: log-level: already set on line 2",
	    path);
	assert_err(want);
	rmconf(path);

	ck_assert_int_eq(load(&cfg, "-c", "/nonexistent/walrelay.conf", NULL),
	    -1);
	assert_err("/nonexistent/walrelay.conf");
	assert_err("No such file");
}
END_TEST

START_TEST(option_errors)
{
	struct wr_config cfg;

	ck_assert_int_eq(load(&cfg, "--segment-byte", "1M", NULL), -1);
	ck_assert_str_eq(errbuf, "unknown option '--segment-byte' (did you "
	    "mean '--segment-bytes'?)");
	/* no abbreviations: options added later must not break scripts */
	ck_assert_int_eq(load(&cfg, "--data", "/x", NULL), -1);
	assert_err("unknown option '--data'");
	ck_assert_int_eq(load(&cfg, "--se", "1", NULL), -1);
	assert_err("unknown option '--se'");
	ck_assert_int_eq(load(&cfg, "--data-dir", NULL), -1);
	assert_err("option '--data-dir' needs a value");
	ck_assert_int_eq(load(&cfg, "--no-tls-ingest=yes", NULL), -1);
	assert_err("option '--no-tls-ingest' takes no value");
	ck_assert_int_eq(load(&cfg, "--no-data-dir", NULL), -1);
	assert_err("unknown option '--no-data-dir'");
	ck_assert_int_eq(load(&cfg, "-x", NULL), -1);
	assert_err("unknown option '-x'");
	ck_assert_int_eq(load(&cfg, "stray", NULL), -1);
	assert_err("unexpected argument 'stray'");
	ck_assert_int_eq(load(&cfg, "-c", NULL), -1);
	assert_err("needs a value");
}
END_TEST

static char *dump_string(const struct wr_config *);

/* The dump, kept until the next call (for comparisons in one line). */
static const char *
dump_string_of(const struct wr_config *cfg)
{
	static char *keep[2];
	static int n;

	free(keep[n & 1]);
	keep[n & 1] = dump_string(cfg);
	return keep[n++ & 1];
}

/* An option is never taken as the value of the option before it. */
START_TEST(option_not_a_value)
{
	struct wr_config cfg;

	ck_assert_int_eq(load(&cfg, "--data-dir", "--check-config", NULL), -1);
	assert_err("option '--data-dir' needs a value, but the next argument "
	    "'--check-config' is an option");
	ck_assert_int_eq(load(&cfg, "--listen", "--http", "127.0.0.1:1",
	    NULL), -1);
	assert_err("option '--listen' needs a value");
	ck_assert_int_eq(load(&cfg, "-c", "--print-config", NULL), -1);
	assert_err("option '-c' needs a value, but the next argument "
	    "'--print-config' is an option (for a value that starts with "
	    "'-', write --config=VALUE)");
	ck_assert_int_eq(load(&cfg, "--log-level", "-V", NULL), -1);
	assert_err("option '--log-level' needs a value");
	/* written with '=', a value may start with '-' */
	ck_assert_int_eq(load(&cfg, "--data-dir=--odd", NULL), 0);
	ck_assert_str_eq(cfg.data_dir, "--odd");
	config_free(&cfg);
	/* a negative number is a bad value, not an option */
	ck_assert_int_eq(load(&cfg, "--max-subscribers", "-1", NULL), -1);
	assert_err("--max-subscribers: '-1' is not");
	ck_assert_int_eq(load(&cfg, "--data-dir", "-", NULL), 0);
	ck_assert_str_eq(cfg.data_dir, "-");
	config_free(&cfg);
}
END_TEST

/* The output of --print-config, for these arguments. */
static char *
print_string(struct wr_config *cfg, ...)
{
	char *argv[MAXARGS + 1], *buf = NULL;
	size_t len = 0;
	int argc = 0;
	va_list ap;
	char *a;
	FILE *f;

	argv[argc++] = "walrelay";
	va_start(ap, cfg);
	while ((a = va_arg(ap, char *)) != NULL)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;
	ck_assert_int_eq(config_load(argc, argv, cfg, errbuf, sizeof(errbuf)),
	    0);
	ck_assert_ptr_nonnull(f = open_memstream(&buf, &len));
	config_print(cfg, f);
	ck_assert_int_eq(fclose(f), 0);
	return buf;
}

START_TEST(print_config_sources)
{
	struct wr_config cfg, again;
	char *path, *out, *want, *reparse;

	path = tmpconf("[walrelay]\n# a comment\nsegment-bytes = 1M\n"
	    "max-subscribers = 7\n");
	setenv("WALRELAY_SUBSCRIBE_TOKENS", "sekrit-token-1,sekrit-token-2", 1);
	out = print_string(&cfg, "-c", path, "--max-subscribers", "9", NULL);
	unsetenv("WALRELAY_SUBSCRIBE_TOKENS");
	ck_assert_ptr_nonnull(strstr(out, "\ningest = 127.0.0.1:7630  # "
	    "default\n"));
	ck_assert_int_gt(asprintf(&want, "\nsegment-bytes = 1M  # file %s:3\n",
	    path), 0);
	ck_assert_msg(strstr(out, want) != NULL, "%s lacks %s", out, want);
	free(want);
	ck_assert_ptr_nonnull(strstr(out, "\nmax-subscribers = 9  # command "
	    "line (--max-subscribers)\n"));
	ck_assert_ptr_nonnull(strstr(out, "#publish-token-file =  # not set: "
	    "default\n"));
	/* tokens from the environment: said to be there, never shown */
	ck_assert_ptr_nonnull(strstr(out, "# WALRELAY_SUBSCRIBE_TOKENS = "
	    "********  # environment"));
	ck_assert_ptr_null(strstr(out, "sekrit"));
	ck_assert_ptr_nonnull(strstr(out, "# WALRELAY_PUBLISH_TOKENS  # not "
	    "set\n"));
	/* and it reads back as the same configuration */
	reparse = tmpconf(out);
	ck_assert_msg(load(&again, "-c", reparse, NULL) == 0, "%s", errbuf);
	ck_assert_str_eq(dump_string_of(&cfg), dump_string_of(&again));
	config_free(&cfg);
	config_free(&again);
	free(out);
	rmconf(reparse);
	rmconf(path);

	/* --print-config prints and returns 1, as --help does */
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(load(&cfg, "--print-config", NULL), 1);
	ck_assert_int_eq(load(&cfg, "--print-config=yes", NULL), -1);
	assert_err("option '--print-config' takes no value");
}
END_TEST

struct rule {
	const char	*args[12];
	const char	*want;	/* NULL: valid */
};

static const struct rule rules[] = {
	{ { "--ingest-resume-bytes", "32M", NULL },
	  "ingest-resume-bytes (32M) must be less than ingest-pause-bytes (32M)" },
	{ { "--ingest-pause-bytes", "1M", "--ingest-resume-bytes", "1023k",
	    NULL }, NULL },
	{ { "--upstream", "h:1", "--upstream-backoff-min", "2s",
	    "--upstream-backoff-max", "1s", NULL },
	  "upstream-backoff-min (2s) must not be more than "
	  "upstream-backoff-max (1s)" },
	{ { "--upstream", "h:1", "--upstream-backoff-min", "1s",
	    "--upstream-backoff-max", "1s", NULL }, NULL },
	{ { "--tls-cert", "c.pem", NULL }, "tls-cert and tls-key go together" },
	{ { "--tls-key", "k.pem", NULL }, "tls-cert and tls-key go together" },
	{ { "--tls-cert", "c.pem", "--tls-key", "k.pem", NULL }, NULL },
	{ { "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-verify-client",
	    NULL }, "tls-verify-client needs tls-ca" },
	{ { "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-verify-client",
	    "--tls-ca", "ca.pem", NULL }, NULL },
	{ { "--tls-ingest", NULL }, "tls-ingest needs tls-cert" },
	{ { "--upstream-tls", NULL }, "upstream-tls is set but there is no "
	    "upstream" },
	{ { "--upstream", "h:1", "--upstream-tls-ca", "ca.pem", NULL },
	  "upstream-tls-ca needs upstream-tls" },
	{ { "--upstream", "h:1", "--upstream-tls-server-name", "h", NULL },
	  "upstream-tls-server-name needs upstream-tls" },
	{ { "--upstream", "h:1", "--upstream-tls", "--upstream-tls-cert",
	    "c.pem", NULL }, "upstream-tls-cert and upstream-tls-key go "
	    "together" },
	{ { "--upstream", "h:1", "--upstream-tls", "--upstream-tls-ca",
	    "ca.pem", "--upstream-tls-cert", "c.pem", "--upstream-tls-key",
	    "k.pem", NULL }, NULL },
	{ { "--upstream-protocol", "sub", NULL }, "upstream-protocol is set "
	    "but there is no upstream" },
	{ { "--upstream-protocol", "sub", "--upstream", "[::1]:7632", NULL },
	  NULL },
	{ { "--ingest", "none", NULL }, "nothing to relay" },
	{ { "--ingest", "none", "--upstream", "h:1", NULL }, NULL },
};

START_TEST(validation)
{
	const struct rule *r = &rules[_i];
	struct wr_config cfg;
	char *argv[14];
	int argc = 0, rc;

	argv[argc++] = "walrelay";
	for (int i = 0; r->args[i] != NULL; i++)
		argv[argc++] = (char *)r->args[i];
	argv[argc] = NULL;
	rc = config_load(argc, argv, &cfg, errbuf, sizeof(errbuf));
	if (r->want == NULL) {
		ck_assert_msg(rc == 0, "rule %d: %s", _i, errbuf);
		config_free(&cfg);
	} else {
		ck_assert_int_eq(rc, -1);
		assert_err(r->want);
	}
}
END_TEST

START_TEST(etc_conf_parses)
{
	struct wr_config cfg;

	ck_assert_msg(load(&cfg, "-c", ETC_CONF, NULL) == 0, "%s", errbuf);
	config_free(&cfg);
}
END_TEST

/* Every key appears in etc/walrelay.conf as "#key = ". */
START_TEST(etc_conf_covers_every_key)
{
	char line[1024], want[128];
	FILE *f;

	ck_assert_uint_gt(config_key_count(), 30);
	for (size_t i = 0; i < config_key_count(); i++) {
		int found = 0;

		ck_assert_ptr_nonnull(f = fopen(ETC_CONF, "r"));
		snprintf(want, sizeof(want), "#%s = ", config_key_name(i));
		while (fgets(line, sizeof(line), f) != NULL) {
			line[strcspn(line, "\n")] = ' ';
			if (strncmp(line, want, strlen(want)) == 0 ||
			    strncmp(line, want, strlen(want) - 1) == 0)
				found++;
		}
		fclose(f);
		ck_assert_msg(found == 1, "etc/walrelay.conf: key %s appears "
		    "%d times as '#%s = ...'", config_key_name(i), found,
		    config_key_name(i));
	}
}
END_TEST

/*
 * The shipped file keeps the data where the unit, tmpfiles.d, the
 * container and the docs say: /var/lib/walrelay. Nothing else is set.
 */
START_TEST(etc_conf_data_dir)
{
	struct wr_config cfg, def;
	char line[1024];
	int active = 0;
	FILE *f;

	ck_assert_int_eq(load(&cfg, "-c", ETC_CONF, NULL), 0);
	ck_assert_str_eq(cfg.data_dir, "/var/lib/walrelay");
	ck_assert_ptr_nonnull(f = fopen(ETC_CONF, "r"));
	while (fgets(line, sizeof(line), f) != NULL) {
		char key[128];

		snprintf(key, sizeof(key), "%.*s", (int)strcspn(line, " "),
		    line);
		if (config_key_reloadable(key) != -1)
			active++;
	}
	fclose(f);
	ck_assert_int_eq(active, 1);
	ck_assert_int_eq(load(&def, NULL), 0);
	ck_assert_str_eq(def.data_dir, "./walrelay-data");
	config_free(&def);
	config_free(&cfg);
}
END_TEST

/*
 * man/walrelay.conf.5 documents every key of the table, once, with the
 * default --help gives.
 */
START_TEST(man_page_covers_every_key)
{
	char *usage = NULL, *man = NULL, line[2048], want[600], def[256];
	char esc[256], *p, *q;
	size_t len = 0, mlen = 0;
	FILE *f, *m;

	ck_assert_ptr_nonnull(f = open_memstream(&usage, &len));
	config_usage(f);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_ptr_nonnull(m = open_memstream(&man, &mlen));
	ck_assert_ptr_nonnull(f = fopen(MAN_CONF, "r"));
	while (fgets(line, sizeof(line), f) != NULL)
		fputs(line, m);
	fclose(f);
	ck_assert_int_eq(fclose(m), 0);
	for (size_t i = 0; i < config_key_count(); i++) {
		const char *name = config_key_name(i);
		int found = 0;

		/* man escapes '-' as '\-' */
		q = esc;
		for (const char *c = name; *c != '\0'; c++) {
			if (*c == '-')
				*q++ = '\\';
			*q++ = *c;
		}
		*q = '\0';
		snprintf(want, sizeof(want), ".TP\n.BI \"%s = \"", esc);
		for (p = man; (p = strstr(p, want)) != NULL; p++) {
			found++;
			q = p;
		}
		ck_assert_msg(found == 1, "walrelay.conf(5): key %s appears %d "
		    "times", name, found);
		/* its default, as --help says it */
		snprintf(want, sizeof(want), "\n  --%s", name);
		ck_assert_ptr_nonnull(p = strstr(usage, want));
		ck_assert_ptr_nonnull(p = strstr(p, "\n        (default: "));
		p += strlen("\n        (default: ");
		snprintf(def, sizeof(def), "%.*s", (int)strcspn(p, ";)"), p);
		if (strcmp(def, "on") == 0 || strcmp(def, "off") == 0)
			snprintf(def, sizeof(def), "%s", strcmp(def, "on") == 0 ?
			    "true" : "false");
		p = esc;
		for (const char *c = def; *c != '\0'; c++) {
			if (*c == '-')
				*p++ = '\\';
			*p++ = *c;
		}
		*p = '\0';
		snprintf(want, sizeof(want), "Default:\n.BR \"%s\"", esc);
		p = strstr(q + 1, ".TP\n");
		ck_assert_msg(strstr(q, want) != NULL && (p == NULL ||
		    strstr(q, want) < p), "walrelay.conf(5): key %s lacks "
		    "'%s'", name, want);
	}
	free(usage);
	free(man);
}
END_TEST

static char *
dump_string(const struct wr_config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	ck_assert_ptr_nonnull(f = open_memstream(&buf, &len));
	config_dump(cfg, f);
	ck_assert_int_eq(fclose(f), 0);
	return buf;
}

/*
 * The defaults written in etc/walrelay.conf are the real defaults: with
 * every key line uncommented, the file gives the default config.
 */
START_TEST(etc_conf_defaults_are_true)
{
	struct wr_config def, cfg;
	char line[1024], *text = NULL, *path, *a, *b;
	size_t len = 0;
	FILE *in, *out;

	ck_assert_ptr_nonnull(in = fopen(ETC_CONF, "r"));
	ck_assert_ptr_nonnull(out = open_memstream(&text, &len));
	while (fgets(line, sizeof(line), in) != NULL) {
		size_t klen = strcspn(line + 1, " ");
		char key[128];

		snprintf(key, sizeof(key), "%.*s", (int)klen, line + 1);
		size_t alen = strcspn(line, " ");
		char akey[128];

		snprintf(akey, sizeof(akey), "%.*s", (int)alen, line);
		if (line[0] == '#' && config_key_reloadable(key) != -1 &&
		    strncmp(line + 1 + klen, " =", 2) == 0)
			fputs(line + 1, out);	/* uncommented */
		else if (config_key_reloadable(akey) != -1)
			continue;	/* a setting of the shipped file */
		else
			fputs(line, out);
	}
	fclose(in);
	ck_assert_int_eq(fclose(out), 0);
	path = tmpconf(text);
	free(text);

	/* upstream-protocol needs an upstream: the command line gives one */
	ck_assert_int_eq(load(&def, "--upstream", "h:1", NULL), 0);
	ck_assert_msg(load(&cfg, "-c", path, "--upstream", "h:1", NULL) == 0,
	    "%s", errbuf);
	a = dump_string(&def);
	b = dump_string(&cfg);
	ck_assert_str_eq(a, b);
	free(a);
	free(b);
	config_free(&def);
	config_free(&cfg);
	rmconf(path);
}
END_TEST

START_TEST(dump_reparses)
{
	struct wr_config cfg, again;
	char *first, *second, *path;

	ck_assert_int_eq(load(&cfg, "--ingest", "none", "--upstream",
	    "[::1]:7632", "--upstream-protocol", "sub", "--data-dir",
	    " /odd \"dir\" #1;\\x ", "--fsync", "interval:250",
	    "--segment-bytes", "5000", "--segment-age", "90",
	    "--retain-bytes", "3G", "--retain-age", "48h", "--auth-timeout",
	    "1500ms", "--log-level", "debug", "--log-target", "syslog",
	    "--allow-unauthenticated", "--upstream-tls", "--upstream-tls-ca",
	    "/ca.pem", "--subscribe-token-file", "/s.tokens", "--http", "none",
	    NULL), 0);
	first = dump_string(&cfg);
	path = tmpconf(first);
	ck_assert_msg(load(&again, "-c", path, NULL) == 0, "%s\n%s", errbuf,
	    first);
	second = dump_string(&again);
	ck_assert_str_eq(first, second);
	ck_assert_str_eq(again.data_dir, " /odd \"dir\" #1;\\x ");
	ck_assert_ptr_null(again.ingest);
	ck_assert_ptr_null(again.http);
	ck_assert_ptr_null(again.tls_cert);
	ck_assert_int_eq(again.fsync_mode, FSYNC_INTERVAL);
	ck_assert_uint_eq(again.fsync_interval_ms, 250);
	ck_assert_uint_eq(again.segment_bytes, 5000);
	ck_assert_uint_eq(again.retain_age_s, 48 * 3600);
	ck_assert_uint_eq(again.auth_timeout_ms, 1500);
	ck_assert_int_eq(again.allow_unauthenticated, 1);
	ck_assert_str_eq(again.subscribe_token_file, "/s.tokens");
	free(first);
	free(second);
	config_free(&cfg);
	config_free(&again);
	rmconf(path);

	/* and the defaults */
	ck_assert_int_eq(load(&cfg, NULL), 0);
	first = dump_string(&cfg);
	path = tmpconf(first);
	ck_assert_msg(load(&again, "-c", path, NULL) == 0, "%s", errbuf);
	second = dump_string(&again);
	ck_assert_str_eq(first, second);
	free(first);
	free(second);
	config_free(&cfg);
	config_free(&again);
	rmconf(path);
}
END_TEST

static void
rewrite(const char *path, const char *text)
{
	FILE *f;

	ck_assert_ptr_nonnull(f = fopen(path, "w"));
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

START_TEST(reload)
{
	struct wr_config cur, next;
	char *path = tmpconf("[walrelay]\nmax-subscribers = 5\n"
	    "segment-bytes = 1M\n");

	ck_assert_int_eq(load(&cur, "-c", path, "--max-lag", "1M", NULL),
	    0);
	ck_assert_uint_eq(cur.max_subscribers, 5);

	rewrite(path, "[walrelay]\nmax-subscribers = 6\nsegment-bytes = 2M\n"
	    "log-level = debug\nmax-lag = 7M\n"
	    "subscribe-token-file = /new.tokens\n");
	/* one changed key takes a restart: next keeps its running value */
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    1);
	ck_assert_uint_eq(next.max_subscribers, 6);
	ck_assert_uint_eq(next.segment_bytes, 1024 * 1024);
	ck_assert_int_eq(next.log_level, LOG_LEVEL_DEBUG);
	/* the original command line still wins */
	ck_assert_uint_eq(next.max_lag_frames, 1024 * 1024);

	/* reloadable keys move over, the others wait for a restart */
	ck_assert_int_eq(config_apply_reload(&cur, &next), 3);
	ck_assert_uint_eq(cur.max_subscribers, 6);
	ck_assert_int_eq(cur.log_level, LOG_LEVEL_DEBUG);
	ck_assert_str_eq(cur.subscribe_token_file, "/new.tokens");
	ck_assert_uint_eq(cur.segment_bytes, 1024 * 1024);
	config_free(&next);

	/* a broken file: an error, and cur is untouched */
	rewrite(path, "[walrelay]\nmax-subscribers = many\n");
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    -1);
	assert_err(":2: max-subscribers: 'many' is not a number");
	ck_assert_uint_eq(cur.max_subscribers, 6);
	ck_assert_ptr_null(next.argv);
	config_free(&next);	/* harmless after a failure */
	config_free(&cur);
	rmconf(path);
}
END_TEST

/*
 * TLS settings that take a restart keep their running values through a
 * reload, and what the reload builds is checked with them.
 */
START_TEST(reload_keeps_restart_keys)
{
	struct wr_config cur, next;
	char *path = tmpconf("[walrelay]\ntls-cert = /a.crt\n"
	    "tls-key = /a.key\ntls-ca = /ca.crt\ntls-verify-client = true\n"
	    "upstream = 127.0.0.1:9\nupstream-tls = true\n"
	    "upstream-tls-server-name = up.example.net\n");

	ck_assert_msg(load(&cur, "-c", path, NULL) == 0, "%s", errbuf);

	/* verify-client and the server name: not applied, running values */
	rewrite(path, "[walrelay]\ntls-cert = /a.crt\ntls-key = /a.key\n"
	    "tls-ca = /ca.crt\ntls-verify-client = false\n"
	    "upstream = 127.0.0.1:9\nupstream-tls = true\n"
	    "upstream-tls-server-name = other.example.net\n");
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    2);
	ck_assert_int_eq(next.tls_verify_client, 1);
	ck_assert_str_eq(next.upstream_tls_server_name, "up.example.net");
	ck_assert_int_eq(config_apply_reload(&cur, &next), 0);
	ck_assert_int_eq(cur.tls_verify_client, 1);
	config_free(&next);

	/* another certificate file: applied; no certificate: not */
	rewrite(path, "[walrelay]\ntls-cert = /b.crt\ntls-key = /b.key\n"
	    "tls-ca = /ca.crt\ntls-verify-client = true\n"
	    "upstream = 127.0.0.1:9\nupstream-tls = true\n"
	    "upstream-tls-server-name = up.example.net\n");
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    0);
	ck_assert_int_eq(config_apply_reload(&cur, &next), 2);
	ck_assert_str_eq(cur.tls_cert, "/b.crt");
	config_free(&next);
	rewrite(path, "[walrelay]\nupstream = 127.0.0.1:9\n"
	    "upstream-tls = true\n"
	    "upstream-tls-server-name = up.example.net\n");
	/* without tls-ca, the running tls-verify-client is refused */
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    -1);
	assert_err("with the running values of the keys that take a "
	    "restart: tls-verify-client needs tls-ca");
	config_free(&next);
	rewrite(path, "[walrelay]\ntls-ca = /ca.crt\n"
	    "upstream = 127.0.0.1:9\nupstream-tls = true\n"
	    "upstream-tls-server-name = up.example.net\n");
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    -1);	/* tls-ca needs tls-cert: the file alone is refused */
	config_free(&next);
	rewrite(path, "[walrelay]\ntls-cert = /b.crt\ntls-key = /b.key\n"
	    "tls-ca = /ca.crt\nupstream = 127.0.0.1:9\n"
	    "upstream-tls = true\n");
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    2);
	config_free(&next);
	config_free(&cur);

	/* removing the certificate would turn TLS off: not applied */
	rewrite(path, "[walrelay]\ntls-cert = /a.crt\ntls-key = /a.key\n");
	ck_assert_msg(load(&cur, "-c", path, NULL) == 0, "%s", errbuf);
	rewrite(path, "[walrelay]\n");
	ck_assert_int_eq(config_reload(&cur, &next, errbuf, sizeof(errbuf)),
	    2);
	ck_assert_str_eq(next.tls_cert, "/a.crt");
	ck_assert_str_eq(next.tls_key, "/a.key");
	ck_assert_int_eq(config_apply_reload(&cur, &next), 0);
	ck_assert_str_eq(cur.tls_cert, "/a.crt");
	config_free(&next);
	config_free(&cur);
	rmconf(path);
}
END_TEST

START_TEST(reloadable_keys)
{
	static const char *const yes[] = { "publish-token-file",
	    "subscribe-token-file", "upstream-token-file", "tls-cert",
	    "tls-key", "tls-ca", "upstream-tls-ca", "upstream-tls-cert",
	    "upstream-tls-key", "auth-timeout", "subscriber-timeout",
	    "max-subscribers", "max-conns-per-ip", "max-ingest-conns-per-ip",
	    "max-conns-per-ip-total", "max-ingest-conns-per-ip-total",
	    "max-lag", "metrics-max-subscribers",
	    "log-level", "allow-unauthenticated" };
	size_t nyes = 0;

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		ck_assert_msg(config_key_reloadable(yes[i]) == 1, "%s", yes[i]);
	for (size_t i = 0; i < config_key_count(); i++)
		nyes += config_key_reloadable(config_key_name(i)) == 1;
	ck_assert_uint_eq(nyes, sizeof(yes) / sizeof(yes[0]));
	ck_assert_int_eq(config_key_reloadable("data-dir"), 0);
	ck_assert_int_eq(config_key_reloadable("nope"), -1);
}
END_TEST

/* The fsync modes' one table: names, parsing and usage agree. */
START_TEST(fsync_names)
{
	char buf[64];

	for (int m = FSYNC_ALWAYS; m <= FSYNC_NEVER; m++) {
		const char *n = segment_fsync_name(m);

		ck_assert_int_eq(segment_fsync_parse(n, strlen(n)), m);
	}
	ck_assert_str_eq(segment_fsync_name(FSYNC_ALWAYS), "always");
	ck_assert_str_eq(segment_fsync_name(FSYNC_INTERVAL), "interval");
	ck_assert_str_eq(segment_fsync_name(FSYNC_NEVER), "never");
	ck_assert_str_eq(segment_fsync_name(3), "unknown");
	ck_assert_str_eq(segment_fsync_name(-1), "unknown");
	ck_assert_int_eq(segment_fsync_parse("alway", 5), -1);
	ck_assert_int_eq(segment_fsync_parse("always", 5), -1);
	ck_assert_int_eq(segment_fsync_parse("neverx", 5), FSYNC_NEVER);
	ck_assert_str_eq(segment_fsync_usage(buf, sizeof(buf), ", ", " or "),
	    "always, interval:MS or never");
	ck_assert_str_eq(segment_fsync_usage(buf, 10, "|", "|"), "always|in");
}
END_TEST

START_TEST(usage)
{
	struct wr_config cfg;
	char *text = NULL, want[128];
	size_t len = 0;
	FILE *f;

	ck_assert_ptr_nonnull(f = open_memstream(&text, &len));
	config_usage(f);
	ck_assert_int_eq(fclose(f), 0);
	for (size_t i = 0; i < config_key_count(); i++) {
		snprintf(want, sizeof(want), "  --%s", config_key_name(i));
		ck_assert_msg(strstr(text, want) != NULL, "--help lacks %s",
		    want);
	}
	ck_assert_ptr_nonnull(strstr(text, "--no-tls-verify-client"));
	ck_assert_ptr_nonnull(strstr(text, "--segment-bytes BYTES"));
	ck_assert_ptr_nonnull(strstr(text,
	    "--fsync always|interval:MS|never\n"));
	ck_assert_ptr_nonnull(strstr(text, "(default: 64M)"));
	ck_assert_ptr_nonnull(strstr(text, "(default: 127.0.0.1:7630)"));
	ck_assert_ptr_nonnull(strstr(text, "SIGHUP"));
	ck_assert_ptr_nonnull(strstr(text, "SIGTERM"));
	ck_assert_ptr_nonnull(strstr(text, "second signal"));
	ck_assert_ptr_nonnull(strstr(text, "also a config file key"));
	ck_assert_ptr_nonnull(strstr(text, "--check-config"));
	free(text);

	/* --help and --version print and return 1 */
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(load(&cfg, "--help", NULL), 1);
	ck_assert_int_eq(load(&cfg, "-V", NULL), 1);
}
END_TEST

/*
 * config_parse: the file's text from memory gives what config_load gives
 * with that file, opens no file (the -c path does not exist), reports
 * errors with the file's name and line, and prints nothing for --help.
 */
START_TEST(parse_from_memory)
{
	static const char text[] = "[walrelay]\nsegment-bytes = 1M\n"
	    "listen = 127.0.0.1:9000\n";
	char *argv[] = { "walrelay", "-c", "/nonexistent/walrelay.conf",
	    "--listen", "127.0.0.1:9001", NULL };
	char *help[] = { "walrelay", "--help", NULL };
	struct wr_config a, b;
	char *path, *da, *db;

	path = tmpconf(text);
	ck_assert_int_eq(load(&a, "-c", path, "--listen", "127.0.0.1:9001",
	    NULL), 0);
	ck_assert_int_eq(config_parse(5, argv, text, strlen(text), &b, errbuf,
	    sizeof(errbuf)), 0);
	ck_assert_uint_eq(b.segment_bytes, 1024 * 1024);
	ck_assert_str_eq(b.listen, "127.0.0.1:9001");	/* command line wins */
	free(a.config_file);
	a.config_file = strdup(b.config_file);
	da = dump_string(&a);
	db = dump_string(&b);
	ck_assert_str_eq(da, db);
	free(da);
	free(db);
	config_free(&a);
	config_free(&b);
	rmconf(path);

	ck_assert_int_eq(config_parse(5, argv, "[walrelay]\nbogus = 1\n", 22,
	    &b, errbuf, sizeof(errbuf)), -1);
	ck_assert_msg(strstr(errbuf, "/nonexistent/walrelay.conf:2: ") !=
	    NULL, "%s", errbuf);
	/* without text no file is read, even with -c */
	ck_assert_int_eq(config_parse(5, argv, NULL, 0, &b, errbuf,
	    sizeof(errbuf)), 0);
	ck_assert_uint_eq(b.segment_bytes, 64 * 1024 * 1024);
	config_free(&b);
	ck_assert_int_eq(config_parse(2, help, NULL, 0, &b, errbuf,
	    sizeof(errbuf)), 1);
}
END_TEST

/* A refused argument with a newline or an escape stays on one line. */
START_TEST(error_is_one_line)
{
	struct wr_config cfg;
	char *argv[] = { "walrelay", "--segment-bytes", "1\n2",
	    "stray\nline\x1b[2J", NULL };

	ck_assert_int_eq(load(&cfg, "stray\nline\x1b[2J", NULL), -1);
	ck_assert_msg(strchr(errbuf, '\n') == NULL &&
	    strchr(errbuf, '\x1b') == NULL, "%s", errbuf);
	ck_assert_msg(strstr(errbuf, "stray?line?[2J") != NULL, "%s", errbuf);
	ck_assert_int_eq(load(&cfg, "--segment-bytes", "1\n2", NULL), -1);
	ck_assert_msg(strchr(errbuf, '\n') == NULL, "%s", errbuf);
	ck_assert_int_eq(config_parse(3, argv, NULL, 0, &cfg, errbuf,
	    sizeof(errbuf)), -1);
	ck_assert_msg(strchr(errbuf, '\n') == NULL, "%s", errbuf);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");

	tcase_add_test(tc, defaults);
	tcase_add_test(tc, precedence);
	tcase_add_loop_test(tc, good_values, 0,
	    sizeof(goods) / sizeof(goods[0]));
	tcase_add_test(tc, strings_and_addresses);
	tcase_add_test(tc, bool_flags);
	tcase_add_loop_test(tc, bad_values, 0, sizeof(bads) / sizeof(bads[0]));
	tcase_add_test(tc, file_errors);
	tcase_add_test(tc, option_errors);
	tcase_add_test(tc, option_not_a_value);
	tcase_add_test(tc, print_config_sources);
	tcase_add_loop_test(tc, validation, 0,
	    sizeof(rules) / sizeof(rules[0]));
	tcase_add_test(tc, etc_conf_parses);
	tcase_add_test(tc, etc_conf_covers_every_key);
	tcase_add_test(tc, etc_conf_defaults_are_true);
	tcase_add_test(tc, etc_conf_data_dir);
	tcase_add_test(tc, man_page_covers_every_key);
	tcase_add_test(tc, dump_reparses);
	tcase_add_test(tc, parse_from_memory);
	tcase_add_test(tc, error_is_one_line);
	tcase_add_test(tc, reload);
	tcase_add_test(tc, reload_keeps_restart_keys);
	tcase_add_test(tc, reloadable_keys);
	tcase_add_test(tc, usage);
	tcase_add_test(tc, fsync_names);
	tcase_add_test(tc, size_parser);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
