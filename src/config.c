/*
 * config.c: walrelay's settings.
 *
 * Every key is one line of config_keys[]: its name (the long option without
 * dashes and the file key), type, target field, flags, group, default (as
 * it would be written in the file), limits, and its --help line. The
 * command line options, the file parser, --help, the dump and the reload
 * all walk that table.
 *
 * Order: defaults, then the -c file, then the other options (the command
 * line wins; -c is read first wherever it appears). The result is checked
 * as a whole before anyone sees it.
 */
#include "autoconfig.h"

#include <sys/types.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "segment.h"

enum config_type {
	CT_STRING,	/* text; empty: not set */
	CT_ADDR,	/* host:port, [v6]:port, or none */
	CT_BOOL,
	CT_UINT,	/* a count */
	CT_SIZE,	/* bytes, with k, M, G or T */
	CT_SEC_S,	/* duration, plain numbers are seconds; stored in s */
	CT_SEC_MS,	/* duration, plain numbers are seconds; stored in ms */
	CT_MS_MS,	/* duration, plain numbers are ms; stored in ms */
	CT_FSYNC,	/* always | interval:MS | never */
	CT_ENUM,
	CT_LOGLEVEL,
};

#define CF_RELOAD	0x01	/* applied on SIGHUP */
#define CF_SECRET	0x02	/* never printed */
#define CF_NONE		0x04	/* address: "none" allowed */
#define CF_NOEMPTY	0x08	/* string: may not be empty */
#define CF_PRESENCE	0x10	/* CF_RELOAD while set; setting or removing
				   it takes a restart (it turns a feature
				   on or off) */
#define CF_URLS		0x20	/* address: or NATS URLs (checked as a whole) */

enum config_group {
	CG_LISTEN,
	CG_STORAGE,
	CG_SECURITY,
	CG_LIMITS,
	CG_LOGGING,
};

static const char *const config_groups[] = {
	"Listeners", "Storage", "Security", "Limits", "Logging"
};

struct config_key {
	const char		*ck_name;
	int			 ck_type;
	size_t			 ck_off;
	size_t			 ck_size;
	int			 ck_flags;
	int			 ck_group;
	const char		*ck_default;	/* file syntax; NULL: not set */
	uint64_t		 ck_min;
	uint64_t		 ck_max;
	const char *const	*ck_names;	/* CT_ENUM */
	const char		*ck_arg;	/* --help: the argument */
	const char		*ck_help;
};

#define FIELD(f)	offsetof(struct wr_config, f), \
			sizeof(((struct wr_config *)0)->f)
#define KIB		((uint64_t)1024)
#define MIB		(1024ULL * KIB)
#define GIB		(1024ULL * MIB)
#define TIB		(1024ULL * GIB)
#define HOUR_MS		((uint64_t)3600000)
#define DAY_S		((uint64_t)86400)

static const char *const protocol_names[] = { "auth", "sub", "jetstream",
    NULL };
static const char *const target_names[] = { "stderr", "syslog", NULL };
static const char *const compress_names[] = { "lz4", "none", NULL };

static const struct config_key config_keys[] = {
	/* listeners */
	{ "ingest", CT_ADDR, FIELD(ingest), CF_NONE, CG_LISTEN,
	  "127.0.0.1:7630", 0, 0, NULL, "ADDR",
	  "ingest listener, the cache connects here ('none' to disable)" },
	{ "upstream", CT_ADDR, FIELD(upstream), CF_NONE | CF_URLS, CG_LISTEN,
	  "none", 0, 0, NULL, "ADDR",
	  "pull from a cache in listen mode or another relay instead (NATS "
	  "URLs with upstream-protocol jetstream)" },
	{ "upstream-protocol", CT_ENUM, FIELD(upstream_protocol), 0, CG_LISTEN,
	  "auth", 0, 0, protocol_names, "auth|sub|jetstream",
	  "auth: a cache (FCWAL-AUTH/1, live); sub: a relay (FCWAL-SUB/1, "
	  "resumes); jetstream: a NATS JetStream stream (resumes)" },
	{ "listen", CT_ADDR, FIELD(listen), 0, CG_LISTEN,
	  "127.0.0.1:7632", 0, 0, NULL, "ADDR",
	  "subscriber listener" },
	{ "http", CT_ADDR, FIELD(http), CF_NONE, CG_LISTEN,
	  "127.0.0.1:7633", 0, 0, NULL, "ADDR",
	  "metrics, health and status over HTTP ('none' to disable)" },

	/* storage */
	{ "data-dir", CT_STRING, FIELD(data_dir), CF_NOEMPTY, CG_STORAGE,
	  "./walrelay-data", 0, 0, NULL, "DIR",
	  "segments and metadata" },
	{ "fsync", CT_FSYNC, FIELD(fsync_mode), 0, CG_STORAGE,
	  "always", 1, HOUR_MS, NULL, NULL,	/* segment_fsync_usage */
	  "durability: subscribers only see frames on disk unless 'never'" },
	{ "segment-bytes", CT_SIZE, FIELD(segment_bytes), 0, CG_STORAGE,
	  "64M", 4 * KIB, TIB, NULL, "BYTES",
	  "start a new segment file at this size" },
	{ "segment-age", CT_SEC_S, FIELD(segment_age_s), 0, CG_STORAGE,
	  "0", 0, 365 * DAY_S, NULL, "SECONDS",
	  "also start a new segment file at this age (0: never)" },
	{ "retain-bytes", CT_SIZE, FIELD(retain_bytes), 0, CG_STORAGE,
	  "0", 0, UINT64_MAX, NULL, "BYTES",
	  "delete the oldest segments above this total (0: no limit)" },
	{ "retain-age", CT_SEC_S, FIELD(retain_age_s), 0, CG_STORAGE,
	  "0", 0, 100 * 365 * DAY_S, NULL, "SECONDS",
	  "delete segments older than this (0: no limit)" },
	{ "max-frame-bytes", CT_SIZE, FIELD(max_frame_bytes), 0, CG_STORAGE,
	  "64M", 64, GIB, NULL, "BYTES",
	  "largest FCW2 frame accepted from the upstream" },
	{ "verify-segments", CT_BOOL, FIELD(verify_segments), 0, CG_STORAGE,
	  "false", 0, 0, NULL, NULL,
	  "check every sealed segment at start, not when first read" },
	{ "archive-after", CT_SEC_S, FIELD(archive_after_s), 0, CG_STORAGE,
	  "0", 0, 100 * 365 * DAY_S, NULL, "SECONDS",
	  "compress sealed segments this old into .wal.zst, still served "
	  "(0: off)" },
	{ "archive-keep-raw", CT_UINT, FIELD(archive_keep_raw), 0, CG_STORAGE,
	  "0", 0, 1000000, NULL, "N",
	  "keep the N newest sealed segments raw, compress older ones (0: off)" },
	{ "archive-level", CT_UINT, FIELD(archive_level), 0, CG_STORAGE,
	  "3", 1, 19, NULL, "LEVEL",
	  "zstd level of the archive tier" },
	{ "archive-long", CT_BOOL, FIELD(archive_long), 0, CG_STORAGE,
	  "false", 0, 0, NULL, NULL,
	  "zstd long-distance matching in the archive tier (within a 1 MiB "
	  "block)" },
	{ "snapshot-every", CT_SEC_MS, FIELD(snapshot_every_ms), 0,
	  CG_STORAGE, "0", 0, 365 * DAY_S * 1000, NULL, "SECONDS",
	  "fold the stream into a snapshot this often, then delete the "
	  "segments it covers (0: not by time)" },
	{ "snapshot-every-bytes", CT_SIZE, FIELD(snapshot_every_bytes), 0,
	  CG_STORAGE, "0", 0, UINT64_MAX, NULL, "BYTES",
	  "also snapshot once this much is in sealed segments after the last "
	  "one (0: not by size)" },
	{ "snapshot-compress", CT_ENUM, FIELD(snapshot_compress), 0,
	  CG_STORAGE, "lz4", 0, 0, compress_names, "lz4|none",
	  "snapshot-{ts}.bin.lz4 or snapshot-{ts}.bin" },
	{ "snapshot-memory", CT_SIZE, FIELD(snapshot_memory), 0, CG_STORAGE,
	  "256M", MIB, TIB, NULL, "BYTES",
	  "memory a snapshot may use; more goes through sorted runs on disk" },
	{ "snapshot-keep", CT_UINT, FIELD(snapshot_keep), 0, CG_STORAGE,
	  "2", 1, 1000, NULL, "N",
	  "snapshot files kept, the newest included" },
	{ "snapshot-skew", CT_MS_MS, FIELD(snapshot_skew_ms), 0, CG_STORAGE,
	  "10000", 0, HOUR_MS, NULL, "MS",
	  "how much older than their neighbours records may arrive: the "
	  "snapshot's timestamp is set this far back" },

	/* security */
	{ "publish-token-file", CT_STRING, FIELD(publish_token_file),
	  CF_RELOAD, CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "tokens the upstream may publish with, one per line" },
	{ "subscribe-token-file", CT_STRING, FIELD(subscribe_token_file),
	  CF_RELOAD, CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "tokens subscribers may connect with, one per line" },
	{ "upstream-token-file", CT_STRING, FIELD(upstream_token_file),
	  CF_RELOAD, CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "the token sent to the upstream when pulling" },
	{ "allow-unauthenticated", CT_BOOL, FIELD(allow_unauthenticated),
	  CF_RELOAD, CG_SECURITY, "false", 0, 0, NULL, NULL,
	  "serve listeners without tokens on non-loopback addresses" },
	{ "tls-cert", CT_STRING, FIELD(tls_cert), CF_RELOAD | CF_PRESENCE,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "certificate chain (PEM): TLS on the subscriber listener" },
	{ "tls-key", CT_STRING, FIELD(tls_key), CF_RELOAD | CF_PRESENCE,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "private key (PEM) of tls-cert" },
	{ "tls-ca", CT_STRING, FIELD(tls_ca), CF_RELOAD, CG_SECURITY,
	  NULL, 0, 0, NULL, "FILE",
	  "CA certificates (PEM) that client certificates must chain to" },
	{ "tls-verify-client", CT_BOOL, FIELD(tls_verify_client), 0,
	  CG_SECURITY, "false", 0, 0, NULL, NULL,
	  "require a client certificate signed by tls-ca (mTLS)" },
	{ "tls-ingest", CT_BOOL, FIELD(tls_ingest), 0, CG_SECURITY,
	  "false", 0, 0, NULL, NULL,
	  "TLS on the ingest listener too" },
	{ "upstream-tls", CT_BOOL, FIELD(upstream_tls), 0, CG_SECURITY,
	  "false", 0, 0, NULL, NULL,
	  "TLS on the pull connection to the upstream" },
	{ "upstream-tls-ca", CT_STRING, FIELD(upstream_tls_ca), CF_RELOAD,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "CA certificates (PEM) for the upstream (default: the system's)" },
	{ "upstream-tls-cert", CT_STRING, FIELD(upstream_tls_cert), CF_RELOAD,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "client certificate (PEM) presented to the upstream" },
	{ "upstream-tls-key", CT_STRING, FIELD(upstream_tls_key), CF_RELOAD,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "private key (PEM) of upstream-tls-cert" },
	{ "upstream-tls-server-name", CT_STRING,
	  FIELD(upstream_tls_server_name), 0, CG_SECURITY, NULL, 0, 0, NULL,
	  "NAME", "name checked in the upstream's certificate (default: its "
	  "host)" },

	/* NATS JetStream */
	{ "jetstream-sink", CT_STRING, FIELD(jetstream_sink), 0, CG_LISTEN,
	  NULL, 0, 0, NULL, "URL[,URL...]",
	  "publish every stored frame to this NATS JetStream cluster" },
	{ "jetstream-stream", CT_STRING, FIELD(jetstream_stream), 0,
	  CG_LISTEN, NULL, 0, 0, NULL, "NAME",
	  "the JetStream stream (subject walrelay.NAME) of jetstream-sink or "
	  "upstream-protocol jetstream" },
	{ "jetstream-must-exist", CT_BOOL, FIELD(jetstream_must_exist), 0,
	  CG_LISTEN, "false", 0, 0, NULL, NULL,
	  "the sink's stream must exist (default: created if absent)" },
	{ "jetstream-replicas", CT_UINT, FIELD(jetstream_replicas), 0,
	  CG_LISTEN, "3", 1, 5, NULL, "N",
	  "replicas of a stream the sink creates (file storage)" },
	{ "jetstream-window", CT_UINT, FIELD(jetstream_window), 0,
	  CG_LIMITS, "1024", 1, 65536, NULL, "FRAMES",
	  "frames the sink publishes ahead of JetStream's acknowledgements" },
	{ "jetstream-user-file", CT_STRING, FIELD(jetstream_user_file),
	  0, CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "NATS user and password, one line 'user:password'" },
	{ "jetstream-token-file", CT_STRING, FIELD(jetstream_token_file),
	  0, CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "NATS token, one line" },
	{ "jetstream-nkey", CT_STRING, FIELD(jetstream_nkey), 0,
	  CG_SECURITY, NULL, 0, 0, NULL, "PUBLIC",
	  "NATS user NKey (public key U...), with jetstream-nkey-seed-file" },
	{ "jetstream-nkey-seed-file", CT_STRING,
	  FIELD(jetstream_nkey_seed_file), 0, CG_SECURITY, NULL, 0, 0, NULL,
	  "FILE", "the seed (SU...) of jetstream-nkey" },
	{ "jetstream-creds-file", CT_STRING, FIELD(jetstream_creds_file),
	  0, CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "NATS credentials file (user JWT and NKey seed)" },
	{ "jetstream-tls-ca", CT_STRING, FIELD(jetstream_tls_ca), 0,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "CA certificates (PEM) of the NATS servers: TLS to NATS" },
	{ "jetstream-tls-cert", CT_STRING, FIELD(jetstream_tls_cert), 0,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "client certificate (PEM) presented to the NATS servers" },
	{ "jetstream-tls-key", CT_STRING, FIELD(jetstream_tls_key), 0,
	  CG_SECURITY, NULL, 0, 0, NULL, "FILE",
	  "private key (PEM) of jetstream-tls-cert" },

	/* limits */
	{ "auth-timeout", CT_SEC_MS, FIELD(auth_timeout_ms), CF_RELOAD,
	  CG_LIMITS, "5s", 10, HOUR_MS, NULL, "SECONDS",
	  "time a new connection has to send its first line" },
	{ "subscriber-timeout", CT_SEC_MS, FIELD(subscriber_timeout_ms),
	  CF_RELOAD, CG_LIMITS, "60s", 0, 24 * HOUR_MS, NULL, "SECONDS",
	  "drop a subscriber that accepts no byte for this long (0: never)" },
	{ "max-subscribers", CT_UINT, FIELD(max_subscribers), CF_RELOAD,
	  CG_LIMITS, "1024", 1, 1000000, NULL, "N",
	  "subscribers at once; more are refused with 'busy'" },
	{ "metrics-max-subscribers", CT_UINT, FIELD(metrics_max_subscribers),
	  CF_RELOAD, CG_LIMITS, "100", 0, 1000000, NULL, "N",
	  "subscribers with their own series on /metrics; the others are "
	  "reported together as id=\"other\"" },
	{ "max-conns-per-ip", CT_UINT, FIELD(max_conns_per_ip), CF_RELOAD,
	  CG_LIMITS, "64", 1, 1000000, NULL, "N",
	  "connections at once from one source address to one subscriber "
	  "listener" },
	{ "max-ingest-conns-per-ip", CT_UINT, FIELD(max_ingest_conns_per_ip),
	  CF_RELOAD, CG_LIMITS, "16", 1, 1000000, NULL, "N",
	  "connections at once from one source address to one ingest "
	  "listener" },
	{ "max-conns-per-ip-total", CT_UINT, FIELD(max_conns_per_ip_total),
	  CF_RELOAD, CG_LIMITS, "0", 0, 1000000, NULL, "N",
	  "connections at once from one source address to all subscriber "
	  "listeners together (0: no limit)" },
	{ "max-ingest-conns-per-ip-total", CT_UINT,
	  FIELD(max_ingest_conns_per_ip_total), CF_RELOAD, CG_LIMITS, "0", 0,
	  1000000, NULL, "N",
	  "connections at once from one source address to all ingest "
	  "listeners together (0: no limit)" },
	{ "max-lag", CT_SIZE, FIELD(max_lag_frames), CF_RELOAD,
	  CG_LIMITS, "0", 0, UINT64_MAX, NULL, "FRAMES",
	  "disconnect a subscriber this many frames behind (0: no limit)" },
	{ "tail-memory", CT_SIZE, FIELD(tail_memory), 0, CG_LIMITS,
	  "64M", MIB, TIB, NULL, "BYTES",
	  "recent frames kept in memory for subscribers" },
	{ "subscriber-buffer", CT_SIZE, FIELD(subscriber_buffer), 0,
	  CG_LIMITS, "1M", 4 * KIB, GIB, NULL, "BYTES",
	  "bytes queued to one subscriber's socket at most" },
	{ "ingest-pause-bytes", CT_SIZE, FIELD(ingest_pause_bytes), 0,
	  CG_LIMITS, "32M", 64 * KIB, TIB, NULL, "BYTES",
	  "stop reading the upstream with this much not yet on disk" },
	{ "ingest-resume-bytes", CT_SIZE, FIELD(ingest_resume_bytes), 0,
	  CG_LIMITS, "8M", 0, TIB, NULL, "BYTES",
	  "read the upstream again below this (less than ingest-pause-bytes)" },
	{ "upstream-backoff-min", CT_MS_MS, FIELD(upstream_backoff_min_ms), 0,
	  CG_LIMITS, "100", 1, HOUR_MS, NULL, "MS",
	  "first delay before reconnecting to the upstream" },
	{ "upstream-backoff-max", CT_MS_MS, FIELD(upstream_backoff_max_ms), 0,
	  CG_LIMITS, "10000", 1, HOUR_MS, NULL, "MS",
	  "longest delay between reconnects (doubling, with jitter)" },
	{ "shutdown-timeout", CT_SEC_MS, FIELD(shutdown_timeout_ms), 0,
	  CG_LIMITS, "5s", 0, HOUR_MS, NULL, "SECONDS",
	  "on SIGTERM, time subscribers get to drain before exit" },

	/* logging */
	{ "log-level", CT_LOGLEVEL, FIELD(log_level), CF_RELOAD, CG_LOGGING,
	  "info", 0, 0, NULL, "LEVEL",
	  "error, warn, info or debug" },
	{ "log-target", CT_ENUM, FIELD(log_syslog), 0, CG_LOGGING,
	  "stderr", 0, 0, target_names, "stderr|syslog",
	  "where log lines go" },
};

#define NKEYS	(sizeof(config_keys) / sizeof(config_keys[0]))

/* Option values for getopt_long beyond the short options. */
#define OPT_CHECK	0x100
#define OPT_PRINT	0x101
#define OPT_KEY		0x1000
#define OPT_NOKEY	0x2000

/* One [stream NAME] section: its keys, applied on top of [walrelay]. */
struct config_section {
	char			 cs_name[65];
	unsigned		 cs_line;
	char			*cs_val[NKEYS];	/* NULL: inherited */
	unsigned		 cs_vline[NKEYS];
	struct config_section	*cs_next;
};

/* What one load saw: where each key was set. */
struct config_ctx {
	const char	*file;
	unsigned	 line[NKEYS];	/* file line, 0: not in the file */
	int		 set[NKEYS];	/* set by the file or the command line */
	int		 argv_set[NKEYS]; /* set by the command line */
	struct config_section *sections;	/* in file order */
};

/*
 * Keys of the whole process: a [stream NAME] section may not set them
 * (one HTTP port, one log, one certificate for the listeners, the
 * per-address limits over all listeners). The per-listener limits
 * (max-conns-per-ip, max-ingest-conns-per-ip) are a stream's: they apply
 * to its own listeners.
 */
static const char *const config_process_keys[] = {
	"http", "log-level", "log-target", "tls-cert", "tls-key", "tls-ca",
	"tls-verify-client", "tls-ingest", "max-conns-per-ip-total",
	"max-ingest-conns-per-ip-total", "shutdown-timeout", NULL
};

static int
config_is_process_key(const char *name)
{
	for (size_t i = 0; config_process_keys[i] != NULL; i++)
		if (strcmp(config_process_keys[i], name) == 0)
			return 1;
	return 0;
}

static void
config_sections_free(struct config_ctx *ctx)
{
	struct config_section *cs;

	while ((cs = ctx->sections) != NULL) {
		ctx->sections = cs->cs_next;
		for (size_t i = 0; i < NKEYS; i++)
			free(cs->cs_val[i]);
		free(cs);
	}
}

/* [A-Za-z0-9_.-]{1,64} */
int
config_stream_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 64)
		return 0;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789_.-") == n;
}

static const char *
config_typename(const struct config_key *k)
{
	switch (k->ck_type) {
	case CT_ADDR:
		return k->ck_flags & CF_NONE ? "an address (host:port, "
		    "[ipv6]:port or none)" : "an address (host:port or "
		    "[ipv6]:port)";
	case CT_BOOL:
		return "a boolean (true, false, yes, no, on, off, 1 or 0)";
	case CT_UINT:
		return "a number";
	case CT_SIZE:
		return "a size (use a number with an optional k, M, G or T "
		    "suffix)";
	case CT_SEC_S:
	case CT_SEC_MS:
		return "a duration (seconds, or a number with ms, s, m or h)";
	case CT_MS_MS:
		return "a duration (milliseconds, or a number with ms, s, m "
		    "or h)";
	case CT_FSYNC: {
		static char t[96];
		char modes[64];

		snprintf(t, sizeof(t), "an fsync mode (%s)",
		    segment_fsync_usage(modes, sizeof(modes), ", ", " or "));
		return t;
	}
	case CT_LOGLEVEL:
		return "a log level (error, warn, info or debug)";
	}
	return "a value";
}

static void *
config_field(struct wr_config *cfg, const struct config_key *k)
{
	return (char *)cfg + k->ck_off;
}

static const void *
config_cfield(const struct wr_config *cfg, const struct config_key *k)
{
	return (const char *)cfg + k->ck_off;
}

static void
config_set_uint(struct wr_config *cfg, const struct config_key *k,
    uint64_t v)
{
	if (k->ck_size == sizeof(uint64_t))
		*(uint64_t *)config_field(cfg, k) = v;
	else
		*(unsigned *)config_field(cfg, k) = (unsigned)v;
}

static uint64_t
config_get_uint(const struct wr_config *cfg, const struct config_key *k)
{
	if (k->ck_size == sizeof(uint64_t))
		return *(const uint64_t *)config_cfield(cfg, k);
	return *(const unsigned *)config_cfield(cfg, k);
}

/* Decimal digits only: no sign, no spaces. Returns the end, or NULL. */
static const char *
config_digits(const char *s, uint64_t *v)
{
	uint64_t n = 0;

	if (*s < '0' || *s > '9')
		return NULL;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (n > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return NULL;
		n = n * 10 + (uint64_t)(*s - '0');
	}
	*v = n;
	return s;
}

int
config_parse_size(const char *s, uint64_t *v)
{
	const char *end;
	uint64_t n, mult = 1;

	if ((end = config_digits(s, &n)) == NULL)
		return -1;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		mult = KIB;
		break;
	case 'm':
	case 'M':
		mult = MIB;
		break;
	case 'g':
	case 'G':
		mult = GIB;
		break;
	case 't':
	case 'T':
		mult = TIB;
		break;
	default:
		return -1;
	}
	if (*end != '\0' && end[1] != '\0')
		return -1;
	if (n > UINT64_MAX / mult)
		return -1;
	*v = n * mult;
	return 0;
}

/* A duration in ms; plain numbers are worth plain_ms each. */
static int
config_parse_duration(const char *s, uint64_t plain_ms, uint64_t *ms)
{
	const char *end;
	uint64_t n, mult;

	if ((end = config_digits(s, &n)) == NULL)
		return -1;
	if (*end == '\0')
		mult = plain_ms;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "m") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = HOUR_MS;
	else
		return -1;
	if (n > UINT64_MAX / mult)
		return -1;
	*ms = n * mult;
	return 0;
}

static int
config_parse_bool(const char *s, int *v)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*v = 1;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*v = 0;
			return 0;
		}
	}
	return -1;
}

/*
 * host:port or [v6]:port, port 1-65535. Names are checked for their
 * characters only: they are resolved when the listener opens or the
 * connection is made.
 */
int
config_addr_split(const char *s, char *host, size_t hostlen, uint16_t *portp,
    char *err, size_t errlen)
{
	const char *port;
	struct in6_addr a6;
	uint64_t p;
	size_t hl;

	if (s[0] == '[') {
		const char *end = strchr(s, ']');

		if (end == NULL || end[1] != ':') {
			snprintf(err, errlen, "'%s' is not an address: write "
			    "an IPv6 address as [addr]:port", s);
			return -1;
		}
		hl = (size_t)(end - s - 1);
		if (hl == 0 || hl >= hostlen) {
			snprintf(err, errlen, "'%s' is not an IPv6 address", s);
			return -1;
		}
		memcpy(host, s + 1, hl);
		host[hl] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1) {
			snprintf(err, errlen, "'%s' is not an IPv6 address "
			    "(in [addr]:port)", s);
			return -1;
		}
		port = end + 2;
	} else {
		const char *colon = strrchr(s, ':');

		if (colon == NULL) {
			snprintf(err, errlen, "'%s' is not an address (use "
			    "host:port or [ipv6]:port)", s);
			return -1;
		}
		hl = (size_t)(colon - s);
		if (memchr(s, ':', hl) != NULL) {
			snprintf(err, errlen, "'%s': put an IPv6 address in "
			    "brackets, as [addr]:port", s);
			return -1;
		}
		if (hl == 0 || hl >= hostlen) {
			snprintf(err, errlen, "'%s' has no host (use host:port, "
			    "0.0.0.0:port for every address)", s);
			return -1;
		}
		for (size_t i = 0; i < hl; i++) {
			char c = s[i];

			if (!((c >= 'a' && c <= 'z') || (c >= 'A' &&
			    c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
			    c == '-' || c == '_')) {
				snprintf(err, errlen, "'%s' is not an address "
				    "(bad character in the host)", s);
				return -1;
			}
		}
		memcpy(host, s, hl);
		host[hl] = '\0';
		port = colon + 1;
	}
	if (config_digits(port, &p) == NULL || *config_digits(port, &p) !=
	    '\0' || p < 1 || p > 65535) {
		snprintf(err, errlen, "'%s': the port must be a number from 1 "
		    "to 65535", s);
		return -1;
	}
	if (portp != NULL)
		*portp = (uint16_t)p;
	return 0;
}

int
config_addr_check(const char *s, char *err, size_t errlen)
{
	char host[256];

	return config_addr_split(s, host, sizeof(host), NULL, err, errlen);
}

int
config_nats_urls_check(const char *s, char *err, size_t errlen)
{
	char one[512], e[256];
	const char *p = s, *end, *hp;
	size_t n;

	do {
		end = strchr(p, ',');
		n = end != NULL ? (size_t)(end - p) : strlen(p);
		if (n == 0 || n >= sizeof(one)) {
			snprintf(err, errlen, "'%s': an empty or overlong URL in "
			    "the list", s);
			return -1;
		}
		memcpy(one, p, n);
		one[n] = '\0';
		hp = one;
		if (strncmp(one, "nats://", 7) == 0)
			hp = one + 7;
		else if (strncmp(one, "tls://", 6) == 0)
			hp = one + 6;
		else if (strstr(one, "://") != NULL) {
			snprintf(err, errlen, "'%s': a NATS URL is nats://HOST:"
			    "PORT, tls://HOST:PORT or HOST:PORT", one);
			return -1;
		}
		if (config_addr_check(hp, e, sizeof(e)) == -1) {
			snprintf(err, errlen, "'%s': %s", one, e);
			return -1;
		}
		p = end != NULL ? end + 1 : NULL;
	} while (p != NULL);
	return 0;
}

/* Format a size with the largest suffix that keeps it exact. */
static void
config_fmt_size(uint64_t v, char *buf, size_t len)
{
	static const char suffix[] = "kMGT";
	int i = -1;

	while (v != 0 && v % 1024 == 0 && i < 3) {
		v /= 1024;
		i++;
	}
	if (i < 0)
		snprintf(buf, len, "%" PRIu64, v);
	else
		snprintf(buf, len, "%" PRIu64 "%c", v, suffix[i]);
}

/* Format ms with the largest unit that keeps it exact. */
static void
config_fmt_ms(uint64_t ms, char *buf, size_t len)
{
	if (ms == 0)
		snprintf(buf, len, "0");
	else if (ms % HOUR_MS == 0)
		snprintf(buf, len, "%" PRIu64 "h", ms / HOUR_MS);
	else if (ms % 60000 == 0)
		snprintf(buf, len, "%" PRIu64 "m", ms / 60000);
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%" PRIu64 "s", ms / 1000);
	else
		snprintf(buf, len, "%" PRIu64 "ms", ms);
}

/* A number of the key's stored unit, as the user would write it. */
static void
config_fmt_num(const struct config_key *k, uint64_t v, char *buf, size_t len)
{
	switch (k->ck_type) {
	case CT_SIZE:
		config_fmt_size(v, buf, len);
		break;
	case CT_SEC_S:
		config_fmt_ms(v * 1000, buf, len);
		break;
	case CT_SEC_MS:
	case CT_MS_MS:
		config_fmt_ms(v, buf, len);
		break;
	default:
		snprintf(buf, len, "%" PRIu64, v);
		break;
	}
}

static int
config_range(const struct config_key *k, const char *s, uint64_t v,
    char *err, size_t errlen)
{
	char lo[32], hi[32];

	if (v >= k->ck_min && v <= k->ck_max)
		return 0;
	config_fmt_num(k, k->ck_min, lo, sizeof(lo));
	config_fmt_num(k, k->ck_max, hi, sizeof(hi));
	snprintf(err, errlen, "'%s' is out of range (%s to %s)", s, lo, hi);
	return -1;
}

/*
 * Parse s as the value of k into cfg. On error, err says what is wrong
 * with the value (the caller adds where it came from).
 */
static int
config_set(struct wr_config *cfg, const struct config_key *k, const char *s,
    char *err, size_t errlen)
{
	void *p = config_field(cfg, k);
	char **sp = p;
	const char *c;
	uint64_t v, ms;
	int b;

	/*
	 * A config file value is one line: a value from the command line
	 * that holds a line break or another control character could not be
	 * written back (--print-config) as the same value, and is a mistake.
	 */
	for (c = s; *c != '\0'; c++) {
		if ((*c > 0 && *c < 0x20 && *c != '\t') || *c == 0x7f) {
			snprintf(err, errlen, "contains a control character "
			    "(0x%02x)", (unsigned)*c);
			return -1;
		}
	}

	switch (k->ck_type) {
	case CT_STRING:
		if (*s == '\0' && (k->ck_flags & CF_NOEMPTY)) {
			snprintf(err, errlen, "may not be empty");
			return -1;
		}
		free(*sp);
		*sp = NULL;
		if (*s != '\0' && (*sp = strdup(s)) == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		return 0;
	case CT_ADDR:
		if (strcmp(s, "none") == 0) {
			if (!(k->ck_flags & CF_NONE)) {
				snprintf(err, errlen, "cannot be 'none' (give "
				    "host:port or [ipv6]:port)");
				return -1;
			}
			free(*sp);
			*sp = NULL;
			return 0;
		}
		/* NATS URLs: checked with upstream-protocol (validate) */
		if (!((k->ck_flags & CF_URLS) && (strchr(s, ',') != NULL ||
		    strstr(s, "://") != NULL)) &&
		    config_addr_check(s, err, errlen) == -1)
			return -1;
		free(*sp);
		if ((*sp = strdup(s)) == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		return 0;
	case CT_BOOL:
		if (config_parse_bool(s, &b) == -1)
			goto bad;
		*(int *)p = b;
		return 0;
	case CT_UINT:
		if (config_digits(s, &v) == NULL || *config_digits(s, &v) != '\0')
			goto bad;
		if (config_range(k, s, v, err, errlen) == -1)
			return -1;
		config_set_uint(cfg, k, v);
		return 0;
	case CT_SIZE:
		if (config_parse_size(s, &v) == -1)
			goto bad;
		if (config_range(k, s, v, err, errlen) == -1)
			return -1;
		config_set_uint(cfg, k, v);
		return 0;
	case CT_SEC_S:
		if (config_parse_duration(s, 1000, &ms) == -1)
			goto bad;
		if (ms % 1000 != 0) {
			snprintf(err, errlen, "'%s' is not a whole number of "
			    "seconds", s);
			return -1;
		}
		if (config_range(k, s, ms / 1000, err, errlen) == -1)
			return -1;
		config_set_uint(cfg, k, ms / 1000);
		return 0;
	case CT_SEC_MS:
	case CT_MS_MS:
		if (config_parse_duration(s, k->ck_type == CT_SEC_MS ? 1000 : 1,
		    &ms) == -1)
			goto bad;
		if (config_range(k, s, ms, err, errlen) == -1)
			return -1;
		config_set_uint(cfg, k, ms);
		return 0;
	case CT_FSYNC: {
		const char *colon = strchr(s, ':');
		int mode;

		mode = segment_fsync_parse(s, colon != NULL ?
		    (size_t)(colon - s) : strlen(s));
		if (mode == -1 || (mode == FSYNC_INTERVAL) != (colon != NULL))
			goto bad;
		*(int *)p = mode;
		if (mode == FSYNC_INTERVAL) {
			if (config_parse_duration(colon + 1, 1, &ms) == -1)
				goto bad;
			if (ms < k->ck_min || ms > k->ck_max) {
				snprintf(err, errlen, "'%s': the interval must "
				    "be 1ms to 1h", s);
				return -1;
			}
			cfg->fsync_interval_ms = (unsigned)ms;
		} else
			cfg->fsync_interval_ms = 0;
		return 0;
	}
	case CT_ENUM:
		for (int i = 0; k->ck_names[i] != NULL; i++) {
			if (strcmp(s, k->ck_names[i]) == 0) {
				*(int *)p = i;
				return 0;
			}
		}
		snprintf(err, errlen, "'%s' is not one of %s", s, k->ck_arg);
		return -1;
	case CT_LOGLEVEL:
		if (log_level_parse(s, &b) == -1)
			goto bad;
		*(int *)p = b;
		return 0;
	}
bad:
	snprintf(err, errlen, "'%s' is not %s", s, config_typename(k));
	return -1;
}

/* The value of k in cfg as the file would say it; 0, or -1: not set. */
static int
config_format(const struct wr_config *cfg, const struct config_key *k,
    char *buf, size_t len)
{
	const void *p = config_cfield(cfg, k);
	const char *s;
	int v;

	switch (k->ck_type) {
	case CT_STRING:
	case CT_ADDR:
		s = *(char *const *)p;
		if (s == NULL) {
			if (k->ck_type == CT_ADDR && (k->ck_flags & CF_NONE)) {
				snprintf(buf, len, "none");
				return 0;
			}
			buf[0] = '\0';
			return -1;
		}
		snprintf(buf, len, "%s", s);
		return 0;
	case CT_BOOL:
		snprintf(buf, len, "%s", *(const int *)p ? "true" : "false");
		return 0;
	case CT_UINT:
	case CT_SIZE:
	case CT_SEC_S:
	case CT_SEC_MS:
	case CT_MS_MS:
		config_fmt_num(k, config_get_uint(cfg, k), buf, len);
		return 0;
	case CT_FSYNC:
		v = *(const int *)p;
		if (v == FSYNC_INTERVAL)
			snprintf(buf, len, "%s:%u", segment_fsync_name(v),
			    cfg->fsync_interval_ms);
		else
			snprintf(buf, len, "%s", segment_fsync_name(v));
		return 0;
	case CT_ENUM:
		v = *(const int *)p;
		snprintf(buf, len, "%s", k->ck_names[v]);
		return 0;
	case CT_LOGLEVEL:
		snprintf(buf, len, "%s", log_level_name(*(const int *)p));
		return 0;
	}
	return -1;
}

static const struct config_key *
config_find(const char *name, size_t len)
{
	for (size_t i = 0; i < NKEYS; i++) {
		if (strlen(config_keys[i].ck_name) == len &&
		    strncmp(config_keys[i].ck_name, name, len) == 0)
			return &config_keys[i];
	}
	return NULL;
}

static size_t
config_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[64], prev, tmp;

	if (la >= 64 || lb >= 64)
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t best = prev + (a[i - 1] != b[j - 1]);

			tmp = row[j];
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			prev = tmp;
		}
	}
	return row[lb];
}

/* The key closest to name, if close enough to be a typo. */
static const char *
config_suggest(const char *name)
{
	const char *best = NULL;
	size_t d, bestd = SIZE_MAX;

	for (size_t i = 0; i < NKEYS; i++) {
		d = config_distance(name, config_keys[i].ck_name);
		if (d < bestd) {
			bestd = d;
			best = config_keys[i].ck_name;
		}
	}
	if (best != NULL && (bestd <= 2 || (bestd <= 3 && strlen(name) > 8)))
		return best;
	return NULL;
}

static void
config_unknown(const char *what, const char *prefix, const char *name,
    char *err, size_t errlen)
{
	const char *near = config_suggest(name);

	if (near != NULL)
		snprintf(err, errlen, "%s '%s%s' (did you mean '%s%s'?)", what,
		    prefix, name, prefix, near);
	else
		snprintf(err, errlen, "%s '%s%s' (see walrelay --help)", what,
		    prefix, name);
}

static char *
config_trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' ||
	    e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/*
 * The value part of a line: a double-quoted string (\" and \\ escaped), or
 * text up to a comment (# or ; after whitespace). Rewrites in place.
 */
static int
config_value(char *s, char **out, char *err, size_t errlen)
{
	char *r, *w;

	s = config_trim(s);
	if (*s != '"') {
		for (r = s; *r != '\0'; r++) {
			if ((*r == '#' || *r == ';') && (r == s ||
			    r[-1] == ' ' || r[-1] == '\t')) {
				*r = '\0';
				break;
			}
		}
		*out = config_trim(s);
		return 0;
	}
	for (r = w = s + 1; *r != '"'; r++) {
		if (*r == '\0') {
			snprintf(err, errlen, "missing closing '\"'");
			return -1;
		}
		if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
			r++;
		*w++ = *r;
	}
	*w = '\0';
	r = config_trim(r + 1);
	if (*r != '\0' && *r != '#' && *r != ';') {
		snprintf(err, errlen, "text after the closing '\"'");
		return -1;
	}
	*out = s + 1;
	return 0;
}

static int
config_read_stream(struct wr_config *cfg, struct config_ctx *ctx, FILE *f,
    const char *path, char *errbuf, size_t errlen)
{
	char *line = NULL, *s, *eq, *key, *val, err[512];
	const struct config_key *k;
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	int in_section = 0, rc = -1;
	struct config_section *sec = NULL, **tailp = &ctx->sections;

	while (*tailp != NULL)
		tailp = &(*tailp)->cs_next;
	while ((n = getline(&line, &cap, f)) != -1) {
		lineno++;
		if ((size_t)n != strlen(line)) {
			snprintf(errbuf, errlen, "%s:%u: NUL byte in the line",
			    path, lineno);
			goto out;
		}
		s = line;
		if (lineno == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
			s += 3;	/* UTF-8 byte order mark */
		s = config_trim(s);
		if (*s == '\0' || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			char *end = strchr(s, ']'), *rest;

			if (end == NULL) {
				snprintf(errbuf, errlen, "%s:%u: missing ']' "
				    "after the section name", path, lineno);
				goto out;
			}
			*end = '\0';
			rest = config_trim(end + 1);
			if (*rest != '\0' && *rest != '#' && *rest != ';') {
				snprintf(errbuf, errlen, "%s:%u: text after "
				    "the section name", path, lineno);
				goto out;
			}
			s = config_trim(s + 1);
			if (strncmp(s, "stream", 6) == 0 && (s[6] == ' ' ||
			    s[6] == '\t' || s[6] == '\0')) {
				struct config_section *cs;
				char *name = config_trim(s + 6);

				if (!config_stream_name_ok(name)) {
					snprintf(errbuf, errlen, "%s:%u: bad "
					    "stream name '%.64s' (1 to 64 of "
					    "A-Z a-z 0-9 _ . -)", path, lineno,
					    name);
					goto out;
				}
				for (cs = ctx->sections; cs != NULL;
				    cs = cs->cs_next)
					if (strcmp(cs->cs_name, name) == 0) {
						snprintf(errbuf, errlen, "%s:%u: "
						    "[stream %s] already on "
						    "line %u", path, lineno,
						    name, cs->cs_line);
						goto out;
					}
				if ((sec = calloc(1, sizeof(*sec))) == NULL) {
					snprintf(errbuf, errlen, "out of memory");
					goto out;
				}
				snprintf(sec->cs_name, sizeof(sec->cs_name),
				    "%s", name);
				sec->cs_line = lineno;
				*tailp = sec;
				tailp = &sec->cs_next;
				in_section = 2;
				continue;
			}
			if (strcmp(s, "walrelay") != 0) {
				snprintf(errbuf, errlen, "%s:%u: unknown "
				    "section [%s] (walrelay reads [walrelay] "
				    "and [stream NAME])", path, lineno, s);
				goto out;
			}
			in_section = 1;
			continue;
		}
		if ((eq = strchr(s, '=')) == NULL) {
			snprintf(errbuf, errlen, "%s:%u: expected 'key = value' "
			    "or [walrelay]", path, lineno);
			goto out;
		}
		*eq = '\0';
		key = config_trim(s);
		if (!in_section) {
			snprintf(errbuf, errlen, "%s:%u: %s: outside the "
			    "[walrelay] section (put [walrelay] before the "
			    "keys)", path, lineno, key);
			goto out;
		}
		if ((k = config_find(key, strlen(key))) == NULL) {
			config_unknown("unknown key", "", key, err,
			    sizeof(err));
			snprintf(errbuf, errlen, "%s:%u: %s", path, lineno, err);
			goto out;
		}
		if (in_section == 2) {
			size_t i = (size_t)(k - config_keys);

			if (config_is_process_key(key)) {
				snprintf(errbuf, errlen, "%s:%u: %s: a setting "
				    "of the whole process, not of one stream: "
				    "set it in [walrelay]", path, lineno, key);
				goto out;
			}
			if (sec->cs_val[i] != NULL) {
				snprintf(errbuf, errlen, "%s:%u: %s: already "
				    "set on line %u", path, lineno, key,
				    sec->cs_vline[i]);
				goto out;
			}
			if (config_value(eq + 1, &val, err, sizeof(err)) == -1) {
				snprintf(errbuf, errlen, "%s:%u: %s: %s", path,
				    lineno, key, err);
				goto out;
			}
			if ((sec->cs_val[i] = strdup(val)) == NULL) {
				snprintf(errbuf, errlen, "out of memory");
				goto out;
			}
			sec->cs_vline[i] = lineno;
			continue;
		}
		if (ctx->line[k - config_keys] != 0) {
			snprintf(errbuf, errlen, "%s:%u: %s: already set on "
			    "line %u", path, lineno, key,
			    ctx->line[k - config_keys]);
			goto out;
		}
		if (config_value(eq + 1, &val, err, sizeof(err)) == -1 ||
		    config_set(cfg, k, val, err, sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "%s:%u: %s: %s", path, lineno,
			    key, err);
			goto out;
		}
		ctx->line[k - config_keys] = lineno;
		ctx->set[k - config_keys] = 1;
	}
	if (ferror(f)) {
		snprintf(errbuf, errlen, "%s: read error", path);
		goto out;
	}
	rc = 0;
out:
	free(line);
	return rc;
}

static int
config_read_file(struct wr_config *cfg, struct config_ctx *ctx,
    const char *path, char *errbuf, size_t errlen)
{
	FILE *f;
	int rc;

	if ((f = fopen(path, "r")) == NULL) {
		snprintf(errbuf, errlen, "cannot open the config file %s: %s",
		    path, strerror(errno));
		return -1;
	}
	rc = config_read_stream(cfg, ctx, f, path, errbuf, errlen);
	fclose(f);
	return rc;
}

/* The text of a config file given in memory (no file is opened). */
static int
config_read_text(struct wr_config *cfg, struct config_ctx *ctx,
    const char *text, size_t len, char *errbuf, size_t errlen)
{
	const char *name = cfg->config_file ? cfg->config_file : "(text)";
	FILE *f;
	int rc;

	if (len == 0)
		return 0;
	if ((f = fmemopen((void *)(uintptr_t)text, len, "r")) == NULL) {
		snprintf(errbuf, errlen, "%s: %s", name, strerror(errno));
		return -1;
	}
	rc = config_read_stream(cfg, ctx, f, name, errbuf, errlen);
	fclose(f);
	return rc;
}

static struct option *
config_options(void)
{
	struct option *o;
	size_t n = 0;
	static char nonames[NKEYS][64];

	if ((o = calloc(2 * NKEYS + 6, sizeof(*o))) == NULL)
		return NULL;
	o[n++] = (struct option){ "config", required_argument, NULL, 'c' };
	o[n++] = (struct option){ "check-config", no_argument, NULL,
	    OPT_CHECK };
	o[n++] = (struct option){ "print-config", no_argument, NULL,
	    OPT_PRINT };
	o[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	o[n++] = (struct option){ "version", no_argument, NULL, 'V' };
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->ck_type != CT_BOOL) {
			o[n++] = (struct option){ k->ck_name,
			    required_argument, NULL, OPT_KEY + (int)i };
			continue;
		}
		o[n++] = (struct option){ k->ck_name, optional_argument, NULL,
		    OPT_KEY + (int)i };
		snprintf(nonames[i], sizeof(nonames[i]), "no-%s", k->ck_name);
		o[n++] = (struct option){ nonames[i], no_argument, NULL,
		    OPT_NOKEY + (int)i };
	}
	return o;
}

/* Is name an option that takes no value? */
static int
config_noarg(const char *name)
{
	const struct config_key *k;

	if (strcmp(name, "help") == 0 || strcmp(name, "version") == 0 ||
	    strcmp(name, "check-config") == 0 ||
	    strcmp(name, "print-config") == 0)
		return 1;
	if (strncmp(name, "no-", 3) != 0)
		return 0;
	k = config_find(name + 3, strlen(name + 3));
	return k != NULL && k->ck_type == CT_BOOL;
}

/* The argument getopt just returned, as typed (for messages). */
static const char *
config_argtext(int argc, char **argv)
{
	int i = optind - 1;

	if (optarg != NULL && i >= 1 && optarg == argv[i])
		i--;
	if (i < 1 || i >= argc)
		return "?";
	return argv[i];
}

/*
 * One walk over the command line. Pass 0 checks it and takes -c, --help,
 * --version and --check-config; pass 1 applies the keys.
 */
static int
config_argv(struct wr_config *cfg, struct config_ctx *ctx, int pass,
    int *printed, char *errbuf, size_t errlen)
{
	struct option *opts;
	const struct config_key *k;
	const char *text;
	char err[512], name[64];
	int c, rc = -1;

	if ((opts = config_options()) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	optind = 0;	/* glibc: start over */
	opterr = 0;
	while ((c = getopt_long(cfg->argc, cfg->argv, "+:c:hV", opts,
	    NULL)) != -1) {
		text = config_argtext(cfg->argc, cfg->argv);
		if (c == '?') {
			size_t len;

			if (strncmp(text, "--", 2) != 0) {
				snprintf(errbuf, errlen, "unknown option '-%c'",
				    optopt);
				goto out;
			}
			len = strcspn(text + 2, "=");
			snprintf(name, sizeof(name), "%.*s", (int)len,
			    text + 2);
			if (text[2 + len] == '=' && config_noarg(name)) {
				snprintf(errbuf, errlen, "option '--%s' takes "
				    "no value", name);
				goto out;
			}
			config_unknown("unknown option", "--", name, errbuf,
			    errlen);
			goto out;
		}
		if (c == ':') {
			snprintf(errbuf, errlen, "option '%s' needs a value",
			    text);
			goto out;
		}
		/*
		 * A value in the next argument that looks like an option is
		 * a missing value: "--data-dir --check-config" must not make
		 * a directory named --check-config.
		 */
		if (optarg != NULL && optind >= 2 &&
		    optarg == cfg->argv[optind - 1] && optarg[0] == '-' &&
		    (optarg[1] == '-' || isalpha((unsigned char)optarg[1]))) {
			snprintf(errbuf, errlen, "option '%s' needs a value, but "
			    "the next argument '%s' is an option (for a value "
			    "that starts with '-', write %s=VALUE)", text,
			    optarg, c == 'c' ? "--config" : text);
			goto out;
		}
		/* getopt_long takes unique abbreviations: we do not */
		if (c >= OPT_KEY || c == OPT_CHECK || c == OPT_PRINT ||
		    (strncmp(text, "--", 2) == 0)) {
			const char *want = NULL;
			size_t len = strcspn(text + 2, "=");

			if (c >= OPT_NOKEY)
				want = config_keys[c - OPT_NOKEY].ck_name;
			else if (c >= OPT_KEY)
				want = config_keys[c - OPT_KEY].ck_name;
			if (want != NULL && c >= OPT_NOKEY)
				snprintf(name, sizeof(name), "no-%s", want);
			else if (want != NULL)
				snprintf(name, sizeof(name), "%s", want);
			else
				snprintf(name, sizeof(name), "%s", c == 'c' ?
				    "config" : c == 'h' ? "help" : c == 'V' ?
				    "version" : c == OPT_CHECK ? "check-config" :
				    "print-config");
			if (strlen(name) != len || strncmp(text + 2, name,
			    len) != 0) {
				snprintf(errbuf, errlen, "unknown option "
				    "'%.*s' (did you mean '--%s'?)",
				    (int)len + 2, text, name);
				goto out;
			}
		}
		switch (c) {
		case 'c':
			if (pass == 0) {
				free(cfg->config_file);
				if ((cfg->config_file = strdup(optarg)) == NULL) {
					snprintf(errbuf, errlen, "out of memory");
					goto out;
				}
			}
			continue;
		case 'h':
			if (pass == 0 && *printed == 0)
				*printed = 'h';
			continue;
		case 'V':
			if (pass == 0 && *printed == 0)
				*printed = 'V';
			continue;
		case OPT_CHECK:
			cfg->check_only = 1;
			continue;
		case OPT_PRINT:
			cfg->print_config = 1;
			continue;
		}
		if (pass == 0)
			continue;
		if (c >= OPT_NOKEY) {
			k = &config_keys[c - OPT_NOKEY];
			*(int *)config_field(cfg, k) = 0;
		} else {
			k = &config_keys[c - OPT_KEY];
			if (config_set(cfg, k, k->ck_type == CT_BOOL &&
			    optarg == NULL ? "true" : optarg, err,
			    sizeof(err)) == -1) {
				snprintf(errbuf, errlen, "--%s: %s", k->ck_name,
				    err);
				goto out;
			}
		}
		ctx->set[k - config_keys] = 1;
		ctx->argv_set[k - config_keys] = 1;
	}
	if (optind < cfg->argc) {
		snprintf(errbuf, errlen, "unexpected argument '%s' (options "
		    "are --name VALUE)", cfg->argv[optind]);
		goto out;
	}
	rc = 0;
out:
	free(opts);
	return rc;
}

static int
config_isset(const struct config_ctx *ctx, const char *name)
{
	const struct config_key *k = config_find(name, strlen(name));

	return k != NULL && ctx->set[k - config_keys];
}

/* The NATS JetStream keys (jetstream.c). */
static int
config_validate_jetstream(const struct wr_config *cfg, char *errbuf,
    size_t errlen)
{
	int source = cfg->upstream != NULL &&
	    cfg->upstream_protocol == UPSTREAM_PROTO_JETSTREAM;
	const char *opt[] = { cfg->jetstream_user_file,
	    cfg->jetstream_token_file, cfg->jetstream_nkey,
	    cfg->jetstream_nkey_seed_file, cfg->jetstream_creds_file,
	    cfg->jetstream_tls_ca, cfg->jetstream_tls_cert,
	    cfg->jetstream_tls_key };
	size_t nset = 0;
	char err[512];

	for (size_t i = 0; i < sizeof(opt) / sizeof(opt[0]); i++)
		nset += opt[i] != NULL;
	if (cfg->jetstream_sink == NULL && !source) {
		if (cfg->jetstream_stream != NULL || nset > 0) {
			snprintf(errbuf, errlen, "the jetstream-* keys need "
			    "jetstream-sink or upstream-protocol jetstream");
			return -1;
		}
	} else {
#ifndef HAVE_NATS
		snprintf(errbuf, errlen, "%s: this walrelay was built without "
		    "NATS support (install libnats-dev and run configure "
		    "again, without --without-nats)", source ?
		    "upstream-protocol jetstream" : "jetstream-sink");
		return -1;
#endif
		if (cfg->jetstream_stream == NULL) {
			snprintf(errbuf, errlen, "%s needs jetstream-stream "
			    "NAME (the JetStream stream)", source ?
			    "upstream-protocol jetstream" : "jetstream-sink");
			return -1;
		}
		if (strlen(cfg->jetstream_stream) > 64 ||
		    strspn(cfg->jetstream_stream, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "abcdefghijklmnopqrstuvwxyz0123456789_-") !=
		    strlen(cfg->jetstream_stream)) {
			snprintf(errbuf, errlen, "jetstream-stream '%s': 1 to "
			    "64 of A-Z a-z 0-9 _ -", cfg->jetstream_stream);
			return -1;
		}
	}
	if (cfg->jetstream_sink != NULL && config_nats_urls_check(
	    cfg->jetstream_sink, err, sizeof(err)) == -1) {
		snprintf(errbuf, errlen, "jetstream-sink: %s", err);
		return -1;
	}
	if (cfg->jetstream_sink != NULL && source) {
		snprintf(errbuf, errlen, "jetstream-sink and upstream-protocol "
		    "jetstream together would publish the stream back into "
		    "itself: a relay is either a sink or an edge");
		return -1;
	}
	if (cfg->upstream != NULL && !source && (strchr(cfg->upstream, ',') !=
	    NULL || strstr(cfg->upstream, "://") != NULL)) {
		snprintf(errbuf, errlen, "upstream '%s': NATS URLs need "
		    "upstream-protocol jetstream (otherwise give HOST:PORT)",
		    cfg->upstream);
		return -1;
	}
	if (source) {
		if (config_nats_urls_check(cfg->upstream, err,
		    sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "upstream: %s", err);
			return -1;
		}
		if (cfg->upstream_tls) {
			snprintf(errbuf, errlen, "upstream-tls is for relays "
			    "and caches: TLS to NATS is jetstream-tls-ca "
			    "(and tls:// URLs)");
			return -1;
		}
	}
	if ((cfg->jetstream_nkey == NULL) !=
	    (cfg->jetstream_nkey_seed_file == NULL)) {
		snprintf(errbuf, errlen, "jetstream-nkey and "
		    "jetstream-nkey-seed-file go together");
		return -1;
	}
	if ((cfg->jetstream_tls_cert == NULL) !=
	    (cfg->jetstream_tls_key == NULL)) {
		snprintf(errbuf, errlen, "jetstream-tls-cert and "
		    "jetstream-tls-key go together");
		return -1;
	}
	if ((cfg->jetstream_user_file != NULL) + (cfg->jetstream_token_file !=
	    NULL) + (cfg->jetstream_nkey != NULL) + (cfg->jetstream_creds_file !=
	    NULL) > 1) {
		snprintf(errbuf, errlen, "give one NATS credential: "
		    "jetstream-user-file, jetstream-token-file, jetstream-nkey "
		    "or jetstream-creds-file");
		return -1;
	}
	return 0;
}

/* Rules that take more than one key. */
static int
config_validate(const struct wr_config *cfg, const struct config_ctx *ctx,
    char *errbuf, size_t errlen)
{
	char a[32], b[32];
	static const char *const up_tls[] = { "upstream-tls-ca",
	    "upstream-tls-cert", "upstream-tls-key",
	    "upstream-tls-server-name" };
	const char *const up_tls_val[] = { cfg->upstream_tls_ca,
	    cfg->upstream_tls_cert, cfg->upstream_tls_key,
	    cfg->upstream_tls_server_name };

	if (cfg->ingest == NULL && cfg->upstream == NULL &&
	    ctx->sections == NULL) {
		snprintf(errbuf, errlen, "nothing to relay: ingest is 'none' "
		    "and there is no upstream (set --ingest or --upstream)");
		return -1;
	}
	if (cfg->ingest_resume_bytes >= cfg->ingest_pause_bytes) {
		config_fmt_size(cfg->ingest_resume_bytes, a, sizeof(a));
		config_fmt_size(cfg->ingest_pause_bytes, b, sizeof(b));
		snprintf(errbuf, errlen, "ingest-resume-bytes (%s) must be "
		    "less than ingest-pause-bytes (%s)", a, b);
		return -1;
	}
	if (cfg->upstream_backoff_min_ms > cfg->upstream_backoff_max_ms) {
		config_fmt_ms(cfg->upstream_backoff_min_ms, a, sizeof(a));
		config_fmt_ms(cfg->upstream_backoff_max_ms, b, sizeof(b));
		snprintf(errbuf, errlen, "upstream-backoff-min (%s) must not "
		    "be more than upstream-backoff-max (%s)", a, b);
		return -1;
	}
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
		snprintf(errbuf, errlen, "tls-cert and tls-key go together: "
		    "%s is set, %s is not", cfg->tls_cert ? "tls-cert" :
		    "tls-key", cfg->tls_cert ? "tls-key" : "tls-cert");
		return -1;
	}
	if (cfg->tls_verify_client && cfg->tls_ca == NULL) {
		snprintf(errbuf, errlen, "tls-verify-client needs tls-ca (the "
		    "CA that client certificates must chain to)");
		return -1;
	}
	if (cfg->tls_ca != NULL && cfg->tls_cert == NULL) {
		snprintf(errbuf, errlen, "tls-ca needs tls-cert and tls-key "
		    "(TLS on the listeners)");
		return -1;
	}
	if (cfg->tls_ingest && cfg->tls_cert == NULL) {
		snprintf(errbuf, errlen, "tls-ingest needs tls-cert and "
		    "tls-key");
		return -1;
	}
	if (cfg->upstream_tls && cfg->upstream == NULL) {
		snprintf(errbuf, errlen, "upstream-tls is set but there is no "
		    "upstream (set --upstream)");
		return -1;
	}
	for (size_t i = 0; i < 4; i++) {
		if (up_tls_val[i] != NULL && !cfg->upstream_tls) {
			snprintf(errbuf, errlen, "%s needs upstream-tls (and "
			    "an upstream)", up_tls[i]);
			return -1;
		}
	}
	if ((cfg->upstream_tls_cert == NULL) != (cfg->upstream_tls_key ==
	    NULL)) {
		snprintf(errbuf, errlen, "upstream-tls-cert and "
		    "upstream-tls-key go together");
		return -1;
	}
	if (cfg->upstream == NULL && config_isset(ctx, "upstream-protocol")) {
		snprintf(errbuf, errlen, "upstream-protocol is set but there "
		    "is no upstream (set --upstream)");
		return -1;
	}
	return config_validate_jetstream(cfg, errbuf, errlen);
}

/* A copy of cfg's keys (not its streams nor how it was made). */
static int
config_copy_keys(struct wr_config *dst, const struct wr_config *src)
{
	*dst = *src;
	dst->config_file = NULL;
	dst->argc = 0;
	dst->argv = NULL;
	dst->stream_name = NULL;
	dst->streams = NULL;
	dst->next_stream = NULL;
	dst->src_line = NULL;
	dst->src_argv = NULL;
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		char **sp;

		if (k->ck_type != CT_STRING && k->ck_type != CT_ADDR)
			continue;
		sp = config_field(dst, k);
		if (*sp != NULL && (*sp = strdup(*sp)) == NULL)
			return -1;
	}
	return 0;
}

/*
 * Two streams may share a listener only when each connection on it can
 * be routed: ingest by publish token (each sharing stream has its own
 * publish tokens), subscribers by stream= or by subscribe token (each has
 * its own subscribe tokens, for stock subscribers).
 */
static int
config_routing_check(const struct wr_config *cfg, char *errbuf, size_t errlen)
{
	const struct wr_config *a, *b;

	for (a = cfg->streams; a != NULL; a = a->next_stream) {
		for (b = a->next_stream; b != NULL; b = b->next_stream) {
			if (a->upstream == NULL && b->upstream == NULL &&
			    a->ingest != NULL && b->ingest != NULL &&
			    strcmp(a->ingest, b->ingest) == 0 &&
			    (a->publish_token_file == NULL ||
			    b->publish_token_file == NULL)) {
				snprintf(errbuf, errlen, "streams %s and %s "
				    "share the ingest listener %s, but stream "
				    "%s has no publish-token-file: its "
				    "publishers could not be told apart (give "
				    "each stream its own ingest address, or "
				    "each its own publish tokens)",
				    a->stream_name, b->stream_name, a->ingest,
				    a->publish_token_file == NULL ?
				    a->stream_name : b->stream_name);
				return -1;
			}
			if (a->listen != NULL && b->listen != NULL &&
			    strcmp(a->listen, b->listen) == 0 &&
			    (a->subscribe_token_file == NULL ||
			    b->subscribe_token_file == NULL)) {
				snprintf(errbuf, errlen, "streams %s and %s "
				    "share the subscriber listener %s (listen), "
				    "but stream %s has no subscribe-token-file: "
				    "a stock subscriber could not be routed "
				    "(give each stream its own listen address, "
				    "or each its own subscribe tokens; "
				    "FCWAL-SUB/1 subscribers may also say "
				    "stream=NAME)", a->stream_name,
				    b->stream_name, a->listen,
				    a->subscribe_token_file == NULL ?
				    a->stream_name : b->stream_name);
				return -1;
			}
			/* a shared listener has one per-address limit */
			if (a->upstream == NULL && b->upstream == NULL &&
			    a->ingest != NULL && b->ingest != NULL &&
			    strcmp(a->ingest, b->ingest) == 0 &&
			    a->max_ingest_conns_per_ip !=
			    b->max_ingest_conns_per_ip) {
				snprintf(errbuf, errlen, "streams %s and %s "
				    "share the ingest listener %s but set "
				    "max-ingest-conns-per-ip to %u and %u: a "
				    "listener has one limit (set the same "
				    "value in both sections)", a->stream_name,
				    b->stream_name, a->ingest,
				    a->max_ingest_conns_per_ip,
				    b->max_ingest_conns_per_ip);
				return -1;
			}
			if (a->listen != NULL && b->listen != NULL &&
			    strcmp(a->listen, b->listen) == 0 &&
			    a->max_conns_per_ip != b->max_conns_per_ip) {
				snprintf(errbuf, errlen, "streams %s and %s "
				    "share the subscriber listener %s but set "
				    "max-conns-per-ip to %u and %u: a listener "
				    "has one limit (set the same value in both "
				    "sections)", a->stream_name, b->stream_name,
				    a->listen, a->max_conns_per_ip,
				    b->max_conns_per_ip);
				return -1;
			}
		}
	}
	for (a = cfg->streams; a != NULL; a = a->next_stream)
		for (b = a->next_stream; b != NULL; b = b->next_stream)
			if (strcmp(a->data_dir, b->data_dir) == 0) {
				snprintf(errbuf, errlen, "streams %s and %s "
				    "have the same data-dir %s", a->stream_name,
				    b->stream_name, a->data_dir);
				return -1;
			} else if (a->jetstream_sink != NULL &&
			    b->jetstream_sink != NULL &&
			    strcmp(a->jetstream_stream, b->jetstream_stream) ==
			    0) {
				/* one writer per JetStream stream */
				snprintf(errbuf, errlen, "streams %s and %s "
				    "both publish to JetStream stream %s: give "
				    "each its own jetstream-stream",
				    a->stream_name, b->stream_name,
				    a->jetstream_stream);
				return -1;
			}
	return 0;
}

/* One config per [stream NAME] section: [walrelay], then its keys. */
static int
config_streams(struct wr_config *cfg, struct config_ctx *ctx, char *errbuf,
    size_t errlen)
{
	struct wr_config **tailp = &cfg->streams;
	struct config_section *cs;
	char err[512];

	for (cs = ctx->sections; cs != NULL; cs = cs->cs_next) {
		struct config_ctx sctx;
		struct wr_config *sc;
		size_t dd;

		if ((sc = calloc(1, sizeof(*sc))) == NULL ||
		    config_copy_keys(sc, cfg) == -1) {
			if (sc != NULL) {
				config_free(sc);
				free(sc);
			}
			snprintf(errbuf, errlen, "out of memory");
			return -1;
		}
		*tailp = sc;
		tailp = &sc->next_stream;
		if ((sc->stream_name = strdup(cs->cs_name)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return -1;
		}
		memcpy(&sctx, ctx, sizeof(sctx));
		sctx.sections = NULL;
		for (size_t i = 0; i < NKEYS; i++) {
			const struct config_key *k = &config_keys[i];

			if (cs->cs_val[i] == NULL)
				continue;
			if (config_set(sc, k, cs->cs_val[i], err,
			    sizeof(err)) == -1) {
				snprintf(errbuf, errlen, "%s:%u: %s: %s",
				    ctx->file ? ctx->file : "(config)",
				    cs->cs_vline[i], k->ck_name, err);
				return -1;
			}
			sctx.set[i] = 1;
			sctx.line[i] = cs->cs_vline[i];
		}
		if (cs->cs_val[config_find("data-dir", 8) - config_keys] ==
		    NULL) {
			/* <data-dir>/<NAME> */
			size_t n = strlen(cfg->data_dir) + strlen(cs->cs_name) +
			    2;
			char *d;

			if ((d = malloc(n)) == NULL) {
				snprintf(errbuf, errlen, "out of memory");
				return -1;
			}
			snprintf(d, n, "%s/%s", cfg->data_dir, cs->cs_name);
			free(sc->data_dir);
			sc->data_dir = d;
		}
		if (config_validate(sc, &sctx, err, sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "[stream %s]: %s", cs->cs_name,
			    err);
			return -1;
		}
		/* where each value came from, for --print-config */
		sc->src_line = calloc(NKEYS, sizeof(*sc->src_line));
		sc->src_argv = calloc(NKEYS, sizeof(*sc->src_argv));
		if (sc->src_line == NULL || sc->src_argv == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return -1;
		}
		for (size_t i = 0; i < NKEYS; i++) {
			sc->src_line[i] = sctx.line[i];
			sc->src_argv[i] = cs->cs_val[i] != NULL ?
			    CONFIG_SRC_SECTION : ctx->argv_set[i] != 0;
		}
		dd = (size_t)(config_find("data-dir", 8) - config_keys);
		if (cs->cs_val[dd] == NULL) {
			/* <data-dir>/<NAME>: said as such */
			sc->src_line[dd] = 0;
			sc->src_argv[dd] = 0;
		}
	}
	return config_routing_check(cfg, errbuf, errlen);
}

static int
config_copy_argv(struct wr_config *cfg, int argc, char *const *argv)
{
	cfg->argc = 0;
	if ((cfg->argv = calloc((size_t)argc + 1, sizeof(char *))) == NULL)
		return -1;
	for (int i = 0; i < argc; i++) {
		if ((cfg->argv[i] = strdup(argv[i])) == NULL)
			return -1;
		cfg->argc++;
	}
	return 0;
}

/*
 * An error names the argument or value it refuses, which may hold a
 * newline or a terminal escape: keep the message one printable line.
 */
static void
config_errclean(char *errbuf, size_t errlen)
{
	for (size_t i = 0; i < errlen && errbuf[i] != '\0'; i++)
		if ((unsigned char)errbuf[i] < 0x20 ||
		    (unsigned char)errbuf[i] == 0x7f)
			errbuf[i] = '?';
}

/*
 * Fill cfg (argc/argv set) from scratch. With text non-NULL, it is the
 * config file's contents, read instead of any -c FILE.
 */
static int
config_build(struct wr_config *cfg, int *printed, const char *text,
    size_t textlen, char *errbuf, size_t errlen)
{
	struct config_ctx ctx;
	char err[512];

	memset(&ctx, 0, sizeof(ctx));
	*printed = 0;
	if (config_argv(cfg, &ctx, 0, printed, errbuf, errlen) == -1)
		return -1;
	if (*printed)
		return 0;
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->ck_default == NULL)
			continue;
		if (config_set(cfg, k, k->ck_default, err, sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "default of %s: %s",
			    k->ck_name, err);
			return -1;
		}
	}
	if (text != NULL) {
		if (config_read_text(cfg, &ctx, text, textlen, errbuf,
		    errlen) == -1)
			goto fail;
	} else if (cfg->config_file != NULL && config_read_file(cfg, &ctx,
	    cfg->config_file, errbuf, errlen) == -1)
		goto fail;
	if (config_argv(cfg, &ctx, 1, printed, errbuf, errlen) == -1)
		goto fail;
	if (config_validate(cfg, &ctx, errbuf, errlen) == -1 ||
	    config_streams(cfg, &ctx, errbuf, errlen) == -1)
		goto fail;
	/* where each value came from, for --print-config */
	free(cfg->src_line);
	free(cfg->src_argv);
	cfg->src_line = calloc(NKEYS, sizeof(*cfg->src_line));
	cfg->src_argv = calloc(NKEYS, sizeof(*cfg->src_argv));
	if (cfg->src_line == NULL || cfg->src_argv == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < NKEYS; i++) {
		cfg->src_line[i] = ctx.line[i];
		cfg->src_argv[i] = ctx.argv_set[i] != 0;
	}
	config_sections_free(&ctx);
	return 0;
fail:
	config_sections_free(&ctx);
	return -1;
}

/*
 * Build cfg from argv and, when text is set, that text instead of the
 * file the command line names: 0, *printed set when --help ('h') or
 * --version ('V') was asked for; -1: cfg was freed, errbuf says why.
 */
static int
config_start(int argc, char **argv, const char *text, size_t textlen,
    struct wr_config *cfg, int *printed, char *errbuf, size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	if (config_copy_argv(cfg, argc, argv) == -1) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if (config_build(cfg, printed, text, textlen, errbuf, errlen) == -1)
		goto fail;
	return 0;
fail:
	config_errclean(errbuf, errlen);
	config_free(cfg);
	return -1;
}

int
config_load(int argc, char **argv, struct wr_config *cfg, char *errbuf,
    size_t errlen)
{
	int printed;

	if (config_start(argc, argv, NULL, 0, cfg, &printed, errbuf,
	    errlen) == -1)
		return -1;
	if (printed == 0 && !cfg->print_config)
		return 0;
	if (printed == 'h')
		config_usage(stdout);
	else if (printed == 'V')
		printf("walrelay %s\n", PACKAGE_VERSION);
	else if (cfg->print_config)
		config_print(cfg, stdout);
	config_free(cfg);
	return 1;
}

int
config_parse(int argc, char **argv, const char *text, size_t textlen,
    struct wr_config *cfg, char *errbuf, size_t errlen)
{
	int printed;

	if (config_start(argc, argv, text != NULL ? text : "",
	    text != NULL ? textlen : 0, cfg, &printed, errbuf, errlen) == -1)
		return -1;
	if (printed == 0)
		return 0;
	config_free(cfg);
	return 1;
}

/* A key's value in file syntax for a log line: "not set", never a secret. */
static void
config_logvalue(const struct wr_config *cfg, const struct config_key *k,
    char *buf, size_t len)
{
	if (k->ck_flags & CF_SECRET)
		snprintf(buf, len, "(secret)");
	else if (config_format(cfg, k, buf, len) == -1)
		snprintf(buf, len, "not set");
}

static int
config_same(const struct wr_config *a, const struct wr_config *b,
    const struct config_key *k)
{
	char va[512], vb[512];
	int ra, rb;

	ra = config_format(a, k, va, sizeof(va));
	rb = config_format(b, k, vb, sizeof(vb));
	return ra == rb && strcmp(va, vb) == 0;
}

/* From cur's value to next's (they differ): only with a restart? */
static int
config_takes_restart(const struct config_key *k, const struct wr_config *cur,
    const struct wr_config *next)
{
	if (!(k->ck_flags & CF_RELOAD))
		return 1;
	if (k->ck_flags & CF_PRESENCE)
		return (*(char *const *)config_cfield(cur, k) == NULL) !=
		    (*(char *const *)config_cfield(next, k) == NULL);
	return 0;
}

int
config_reload(const struct wr_config *cur, struct wr_config *next,
    char *errbuf, size_t errlen)
{
	struct config_ctx ctx;
	char was[512], now[512], err[512];
	int printed, restart = 0;

	memset(next, 0, sizeof(*next));
	if (config_copy_argv(next, cur->argc, cur->argv) == -1) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if (config_build(next, &printed, NULL, 0, errbuf, errlen) == -1)
		goto fail;
	/*
	 * A key that takes a restart keeps its running value in next, so
	 * that what the reload builds from next (TLS contexts, tokens) and
	 * every later comparison see what runs, not what the file says.
	 */
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];

		if (config_same(cur, next, k) ||
		    !config_takes_restart(k, cur, next))
			continue;
		config_logvalue(cur, k, was, sizeof(was));
		config_logvalue(next, k, now, sizeof(now));
		log_warnx("reload: %s changed from %s to %s; %s takes a "
		    "restart to apply: not applied, %s stays %s", k->ck_name,
		    was, now, (k->ck_flags & CF_PRESENCE) ? "setting or "
		    "removing it" : "it", k->ck_name, was);
		if (config_format(cur, k, was, sizeof(was)) == -1)
			was[0] = '\0';
		if (config_set(next, k, was, err, sizeof(err)) == -1) {
			snprintf(errbuf, errlen, "%s: %s", k->ck_name, err);
			goto fail;
		}
		restart++;
	}
	memset(&ctx, 0, sizeof(ctx));
	if (restart > 0 && config_validate(next, &ctx, err, sizeof(err)) ==
	    -1) {
		snprintf(errbuf, errlen, "with the running values of the keys "
		    "that take a restart: %s", err);
		goto fail;
	}
	return restart;
fail:
	config_errclean(errbuf, errlen);
	config_free(next);
	return -1;
}

int
config_apply_reload(struct wr_config *cur, struct wr_config *next)
{
	char was[512], now[512];
	int applied = 0;

	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		void *cp = config_field(cur, k), *np = config_field(next, k);
		char tmp[sizeof(uint64_t)];

		if (config_same(cur, next, k))
			continue;
		config_logvalue(cur, k, was, sizeof(was));
		config_logvalue(next, k, now, sizeof(now));
		/* config_reload gave next the running value of these */
		if (config_takes_restart(k, cur, next)) {
			log_warnx("reload: %s changed from %s to %s; it takes "
			    "a restart to apply: not applied", k->ck_name, was,
			    now);
			continue;
		}
		log_info("reload: %s changed from %s to %s: applied",
		    k->ck_name, was, now);
		/* swap: next now holds the old value, freed with it */
		memcpy(tmp, cp, k->ck_size);
		memcpy(cp, np, k->ck_size);
		memcpy(np, tmp, k->ck_size);
		applied++;
	}
	return applied;
}

void
config_free(struct wr_config *cfg)
{
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		char **sp;

		if (k->ck_type != CT_STRING && k->ck_type != CT_ADDR)
			continue;
		sp = config_field(cfg, k);
		free(*sp);
		*sp = NULL;
	}
	free(cfg->config_file);
	cfg->config_file = NULL;
	free(cfg->src_line);
	cfg->src_line = NULL;
	free(cfg->src_argv);
	cfg->src_argv = NULL;
	if (cfg->argv != NULL) {
		for (int i = 0; i < cfg->argc; i++)
			free(cfg->argv[i]);
		free(cfg->argv);
	}
	cfg->argv = NULL;
	cfg->argc = 0;
	while (cfg->streams != NULL) {
		struct wr_config *sc = cfg->streams;

		cfg->streams = sc->next_stream;
		config_free(sc);
		free(sc);
	}
	free(cfg->stream_name);
	cfg->stream_name = NULL;
}

size_t
config_key_count(void)
{
	return NKEYS;
}

const char *
config_key_name(size_t i)
{
	return i < NKEYS ? config_keys[i].ck_name : NULL;
}

int
config_key_reloadable(const char *name)
{
	const struct config_key *k = config_find(name, strlen(name));

	if (k == NULL)
		return -1;
	return (k->ck_flags & CF_RELOAD) != 0;
}

void
config_usage(FILE *f)
{
	char arg[96], def[64], modes[64];
	int group = -1;

	fprintf(f,
"usage: walrelay [-c FILE] [--check-config | --print-config] [--OPTION VALUE ...]\n"
"\n"
"Relays the FCW2 write-ahead-log stream of a cache server: takes it from the\n"
"cache (or pulls it from a cache or another relay), stores it in segment\n"
"files and serves it to subscribers, live or from any retained position.\n"
"\n"
"  -c, --config FILE\n"
"        read settings from FILE (INI, section [walrelay], and one\n"
"        [stream NAME] section per stream, see docs/streams.md); the command line\n"
"        wins over the file\n"
"  --check-config\n"
"        check what a start would find, change nothing, then exit: the\n"
"        configuration, token files, certificates, the data directory\n"
"        (a writable directory, or one that can be created) and the\n"
"        listeners' addresses (bound and closed at once)\n"
"  --print-config\n"
"        print the effective configuration, each value with where it\n"
"        comes from (default, file:line, command line, environment),\n"
"        secrets masked, then exit\n"
"  -h, --help\n"
"        print this help and exit\n"
"  -V, --version\n"
"        print the version and exit\n");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->ck_group != group) {
			group = k->ck_group;
			fprintf(f, "\n%s:\n", config_groups[group]);
		}
		if (k->ck_type == CT_BOOL)
			snprintf(arg, sizeof(arg), "--%s, --no-%s", k->ck_name,
			    k->ck_name);
		else if (k->ck_type == CT_FSYNC)
			snprintf(arg, sizeof(arg), "--%s %s", k->ck_name,
			    segment_fsync_usage(modes, sizeof(modes), "|", "|"));
		else
			snprintf(arg, sizeof(arg), "--%s %s", k->ck_name,
			    k->ck_arg);
		if (k->ck_default == NULL)
			snprintf(def, sizeof(def), "not set");
		else if (k->ck_type == CT_BOOL)
			snprintf(def, sizeof(def), "%s", strcmp(k->ck_default,
			    "true") == 0 ? "on" : "off");
		else
			snprintf(def, sizeof(def), "%s", k->ck_default);
		fprintf(f, "  %s\n        %s\n        (default: %s%s)\n", arg,
		    k->ck_help, def, (k->ck_flags & CF_PRESENCE) ?
		    "; reloaded on SIGHUP, set or unset only by a restart" :
		    (k->ck_flags & CF_RELOAD) ?
		    "; reloaded on SIGHUP" : "");
	}
	fprintf(f,
"\n"
"Every option is also a config file key: the option name without the\n"
"dashes, in the [walrelay] section ('segment-bytes = 64M'; booleans take\n"
"true or false). Addresses are host:port or [ipv6]:port. Sizes take k, M,\n"
"G or T (powers of 1024). Durations take ms, s, m or h.\n"
"Tokens can also come from the environment: WALRELAY_PUBLISH_TOKENS and\n"
"WALRELAY_SUBSCRIBE_TOKENS (comma- or newline-separated) and\n"
"WALRELAY_UPSTREAM_TOKEN.\n"
"\n"
"Signals:\n"
"  SIGHUP           reload the config file: tokens, TLS certificates and\n"
"                   limits (a reload that fails keeps the running config;\n"
"                   other keys keep their running values until a restart)\n"
"  SIGTERM, SIGINT  stop gracefully: stop accepting, make everything\n"
"                   durable, let subscribers drain (shutdown-timeout),\n"
"                   exit 0; a second signal exits at once\n");
}

/* A value that would not read back as itself unquoted gets quotes. */
static void
config_put_value(FILE *f, const char *v)
{
	int quote = *v == '\0' || *v == ' ' || *v == '\t' || *v == '"' ||
	    v[strlen(v) - 1] == ' ' || v[strlen(v) - 1] == '\t' ||
	    strpbrk(v, "#;\\") != NULL;

	if (!quote) {
		fputs(v, f);
		return;
	}
	fputc('"', f);
	for (; *v != '\0'; v++) {
		if (*v == '"' || *v == '\\')
			fputc('\\', f);
		fputc(*v, f);
	}
	fputc('"', f);
}

static void
config_dump_value(FILE *f, const char *v)
{
	config_put_value(f, v);
	fputc('\n', f);
}

void
config_dump(const struct wr_config *cfg, FILE *f)
{
	char buf[4096];
	int group = -1;

	fprintf(f, "# walrelay %s: the effective configuration\n",
	    PACKAGE_VERSION);
	fprintf(f, "[walrelay]\n");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->ck_group != group) {
			group = k->ck_group;
			fprintf(f, "\n# %s\n", config_groups[group]);
		}
		if (config_format(cfg, k, buf, sizeof(buf)) == -1) {
			fprintf(f, "#%s =\n", k->ck_name);
			continue;
		}
		/* meaningless without an upstream, and refused */
		if (k->ck_off == offsetof(struct wr_config,
		    upstream_protocol) && cfg->upstream == NULL) {
			fprintf(f, "#%s = %s\n", k->ck_name, buf);
			continue;
		}
		if (k->ck_flags & CF_SECRET) {
			fprintf(f, "#%s = (secret, not shown)\n", k->ck_name);
			continue;
		}
		fprintf(f, "%s = ", k->ck_name);
		config_dump_value(f, buf);
	}
}

/*
 * Where the value of key i came from; file names the config file. In a
 * stream's config, a value not from its own section is inherited.
 */
static void
config_source(const struct wr_config *cfg, const char *file, size_t i,
    char *buf, size_t len)
{
	const char *inh = cfg->stream_name != NULL ? "inherited: " : "";

	if (cfg->src_argv != NULL && cfg->src_argv[i] == CONFIG_SRC_SECTION)
		snprintf(buf, len, "file %s:%u", file, cfg->src_line[i]);
	else if (cfg->src_argv != NULL && cfg->src_argv[i])
		snprintf(buf, len, "%scommand line (--%s)", inh,
		    config_keys[i].ck_name);
	else if (cfg->src_line != NULL && cfg->src_line[i] != 0)
		snprintf(buf, len, "%sfile %s:%u", inh, file,
		    cfg->src_line[i]);
	else if (cfg->stream_name != NULL && config_keys[i].ck_off ==
	    offsetof(struct wr_config, data_dir))
		snprintf(buf, len, "default: <data-dir>/%s",
		    cfg->stream_name);
	else
		snprintf(buf, len, "%sdefault", inh);
}

/* One key of --print-config. */
static void
config_print_key(const struct wr_config *cfg, const char *file, size_t i,
    FILE *f)
{
	const struct config_key *k = &config_keys[i];
	char buf[4096], src[4200];

	config_source(cfg, file, i, src, sizeof(src));
	if (config_format(cfg, k, buf, sizeof(buf)) == -1) {
		fprintf(f, "#%s =  # not set: %s\n", k->ck_name, src);
		return;
	}
	if (k->ck_off == offsetof(struct wr_config, upstream_protocol) &&
	    cfg->upstream == NULL) {
		fprintf(f, "#%s = %s  # %s; unused without an upstream\n",
		    k->ck_name, buf, src);
		return;
	}
	if (k->ck_flags & CF_SECRET) {
		fprintf(f, "#%s = ********  # %s; secret, not shown\n",
		    k->ck_name, src);
		return;
	}
	fprintf(f, "%s = ", k->ck_name);
	config_put_value(f, buf);
	fprintf(f, "  # %s\n", src);
}

void
config_print(const struct wr_config *cfg, FILE *f)
{
	static const char *const envs[] = { AUTH_ENV_PUBLISH,
	    AUTH_ENV_SUBSCRIBE, AUTH_ENV_UPSTREAM };
	const struct wr_config *sc;
	int group = -1;

	fprintf(f, "# walrelay %s: the effective configuration; after each "
	    "value, where it comes\n# from (default, file:line, command "
	    "line, environment)\n", PACKAGE_VERSION);
	fprintf(f, "[walrelay]\n");
	for (size_t i = 0; i < NKEYS; i++) {
		if (config_keys[i].ck_group != group) {
			group = config_keys[i].ck_group;
			fprintf(f, "\n# %s\n", config_groups[group]);
		}
		config_print_key(cfg, cfg->config_file, i, f);
	}
	/* each stream's every key but the process's: set here or inherited */
	for (sc = cfg->streams; sc != NULL; sc = sc->next_stream) {
		fprintf(f, "\n[stream %s]\n", sc->stream_name);
		for (size_t i = 0; i < NKEYS; i++)
			if (!config_is_process_key(config_keys[i].ck_name))
				config_print_key(sc, cfg->config_file, i, f);
	}
	fprintf(f, "\n# Environment\n");
	for (size_t i = 0; i < sizeof(envs) / sizeof(envs[0]); i++) {
		if (getenv(envs[i]) != NULL)
			fprintf(f, "# %s = ********  # environment; tokens, "
			    "not shown\n", envs[i]);
		else
			fprintf(f, "# %s  # not set\n", envs[i]);
	}
}
