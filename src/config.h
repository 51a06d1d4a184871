/*
 * config.h: walrelay's settings, from the embedded defaults, a config file
 * (-c FILE, INI, section [walrelay]) and the command line, in that order.
 *
 * One declarative table in config.c describes every key: its name (the
 * long option without dashes, and the file key), type, target field,
 * default, limits and flags (reloadable on SIGHUP, secret). Parsing fills
 * a fresh struct wr_config; validation runs on the whole; only then does
 * it replace the running one, so a reload that fails keeps the old config.
 */
#ifndef WALRELAY_CONFIG_H
#define WALRELAY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct wr_config {
	/* addresses: "host:port", "[v6]:port", or NULL for "none" */
	char		*ingest;		/* --ingest, 127.0.0.1:7630 */
	char		*upstream;		/* --upstream, none */
	int		 upstream_protocol;	/* --upstream-protocol auth|sub|jetstream */
	char		*listen;		/* --listen, 127.0.0.1:7632 */
	char		*http;			/* --http, 127.0.0.1:7633 */
	char		*data_dir;		/* --data-dir, ./walrelay-data */

	int		 fsync_mode;		/* --fsync always|interval:MS|never */
	unsigned	 fsync_interval_ms;	/* interval:MS; 0 otherwise */

	char		*publish_token_file;	/* --publish-token-file */
	char		*subscribe_token_file;	/* --subscribe-token-file */
	char		*upstream_token_file;	/* --upstream-token-file */
	int		 allow_unauthenticated;	/* --allow-unauthenticated */

	uint64_t	 segment_bytes;		/* --segment-bytes, 64M */
	uint64_t	 segment_age_s;		/* --segment-age, 0 = off */
	uint64_t	 retain_bytes;		/* --retain-bytes, 0 = unlimited */
	uint64_t	 retain_age_s;		/* --retain-age, 0 = unlimited */
	uint64_t	 max_frame_bytes;	/* --max-frame-bytes, 64M */
	int		 verify_segments;	/* --verify-segments, off */
	uint64_t	 archive_after_s;	/* --archive-after, 0 = off */
	uint64_t	 archive_keep_raw;	/* --archive-keep-raw, 0 = off */
	unsigned	 archive_level;		/* --archive-level, 3 */
	int		 archive_long;		/* --archive-long, off */
	/* Test builds only (tests/walrelay-hooks): archive crash points. */
	void		(*archive_test_step)(int, const char *, void *);
	uint64_t	 snapshot_every_ms;	/* --snapshot-every, 0 = off */
	uint64_t	 snapshot_every_bytes;	/* --snapshot-every-bytes, 0 = off */
	int		 snapshot_compress;	/* --snapshot-compress lz4|none */
	uint64_t	 snapshot_memory;	/* --snapshot-memory, 256M */
	unsigned	 snapshot_keep;		/* --snapshot-keep, 2 */
	uint64_t	 snapshot_skew_ms;	/* --snapshot-skew MS, 10000 */

	char		*tls_cert;		/* --tls-cert */
	char		*tls_key;		/* --tls-key */
	char		*tls_ca;		/* --tls-ca */
	int		 tls_verify_client;	/* --tls-verify-client */
	int		 tls_ingest;		/* --tls-ingest: TLS on ingest too */
	int		 upstream_tls;		/* --upstream-tls */
	char		*upstream_tls_ca;	/* --upstream-tls-ca */
	char		*upstream_tls_cert;	/* --upstream-tls-cert */
	char		*upstream_tls_key;	/* --upstream-tls-key */
	char		*upstream_tls_server_name; /* --upstream-tls-server-name */

	/* NATS JetStream (jetstream.c): sink, and source credentials */
	char		*jetstream_sink;	/* --jetstream-sink URL[,URL...] */
	char		*jetstream_stream;	/* --jetstream-stream NAME */
	int		 jetstream_must_exist;	/* --jetstream-must-exist */
	unsigned	 jetstream_replicas;	/* --jetstream-replicas, 3 */
	unsigned	 jetstream_window;	/* --jetstream-window, 1024 */
	char		*jetstream_user_file;	/* --jetstream-user-file */
	char		*jetstream_token_file;	/* --jetstream-token-file */
	char		*jetstream_nkey;	/* --jetstream-nkey PUBLIC */
	char		*jetstream_nkey_seed_file; /* --jetstream-nkey-seed-file */
	char		*jetstream_creds_file;	/* --jetstream-creds-file */
	char		*jetstream_tls_ca;	/* --jetstream-tls-ca */
	char		*jetstream_tls_cert;	/* --jetstream-tls-cert */
	char		*jetstream_tls_key;	/* --jetstream-tls-key */

	unsigned	 auth_timeout_ms;	/* --auth-timeout SECONDS, 5 */
	unsigned	 subscriber_timeout_ms;	/* --subscriber-timeout SECONDS, 60 */
	unsigned	 max_subscribers;	/* --max-subscribers, 1024 */
	unsigned	 metrics_max_subscribers; /* --metrics-max-subscribers,
						   100 */
	unsigned	 max_conns_per_ip;	/* --max-conns-per-ip, 64
						   (subscriber port) */
	unsigned	 max_ingest_conns_per_ip; /* --max-ingest-conns-per-ip,
						   16 */
	/* over every listener of the process; 0: no limit */
	unsigned	 max_conns_per_ip_total; /* --max-conns-per-ip-total */
	unsigned	 max_ingest_conns_per_ip_total;
						/* --max-ingest-conns-per-ip-total */
	uint64_t	 max_lag_frames;	/* --max-lag FRAMES, 0 = no limit */
	uint64_t	 tail_memory;		/* --tail-memory, 64M */
	uint64_t	 subscriber_buffer;	/* --subscriber-buffer, 1M */
	uint64_t	 ingest_pause_bytes;	/* --ingest-pause-bytes, 32M */
	uint64_t	 ingest_resume_bytes;	/* --ingest-resume-bytes, 8M */
	unsigned	 upstream_backoff_min_ms; /* --upstream-backoff-min MS, 100 */
	unsigned	 upstream_backoff_max_ms; /* --upstream-backoff-max MS, 10000 */
	unsigned	 shutdown_timeout_ms;	/* --shutdown-timeout SECONDS, 5 */

	int		 log_level;		/* --log-level, info */
	int		 log_syslog;		/* --log-target stderr|syslog */

	/*
	 * Streams: a config with [stream NAME] sections has one full config
	 * per section in `streams` (linked by next_stream), each starting from
	 * this one ([walrelay] and the command line) with its section's keys
	 * on top. Without sections, this config is the stream "default".
	 */
	char		*stream_name;		/* NULL: "default" */
	struct wr_config *streams;
	struct wr_config *next_stream;

	/* not keys: how this config was made */
	char		*config_file;		/* -c FILE */
	int		 check_only;		/* --check-config */
	int		 print_config;		/* --print-config */
	unsigned	*src_line;		/* per key: its file line, 0: none */
	unsigned char	*src_argv;		/* per key: 1 when the command line set it,
						   CONFIG_SRC_SECTION when the
						   stream's own section did */
	int		 argc;			/* the command line, kept for reloads */
	char		**argv;
};

#define CONFIG_SRC_SECTION	2

enum upstream_protocol {
	UPSTREAM_PROTO_AUTH = 0,
	UPSTREAM_PROTO_SUB = 1,
	UPSTREAM_PROTO_JETSTREAM = 2,	/* --upstream is NATS URLs */
};

/*
 * Build a config from defaults, then -c FILE (if given), then the other
 * arguments (command line wins). Returns 0; or -1 with a message in
 * errbuf naming the file and line or the option; or 1 when --help,
 * --version or --print-config was printed (exit 0). On -1 and 1 the config is freed.
 */
int	config_load(int argc, char **argv, struct wr_config *, char *errbuf,
	    size_t errlen);

/*
 * config_load with the config file's text given in memory: read instead
 * of any -c FILE (text NULL: no file). Opens no file and prints nothing
 * (1: --help or --version was asked for). For tests and fuzzing.
 */
int	config_parse(int argc, char **argv, const char *text, size_t textlen,
	    struct wr_config *, char *errbuf, size_t errlen);

/*
 * Re-read the file named by cur->config_file (plus the original command
 * line, which still wins) into next. Every key that takes a restart to
 * change (not reloadable; or, for tls-cert and tls-key, set or removed)
 * and changed is logged as not applied and gets its running value in
 * next, and next is validated again with those: whatever the reload
 * builds from next (TLS contexts, tokens) is what runs. Returns how many
 * such keys changed, or -1 with errbuf (next is then freed).
 */
int	config_reload(const struct wr_config *cur, struct wr_config *next,
	    char *errbuf, size_t errlen);

/*
 * After a successful config_reload: move the changed reloadable keys of
 * next into cur (next then holds the old values: config_free it), logging
 * each. Returns how many were applied.
 */
int	config_apply_reload(struct wr_config *cur, struct wr_config *next);

void	config_free(struct wr_config *);
/* --help text, generated from the table. */
void	config_usage(FILE *);
/* Write the effective config as a [walrelay] file (secrets are file names). */
void	config_dump(const struct wr_config *, FILE *);
/*
 * --print-config: the effective config as a [walrelay] file, then one
 * [stream NAME] section per stream with its every key (process keys
 * excepted), each value followed by where it came from (default,
 * file:line, command line, environment; "inherited:" when a stream takes
 * it from [walrelay]); secret values are masked.
 */
void	config_print(const struct wr_config *, FILE *);

/* The key table, for tests and tools. */
size_t	config_key_count(void);
const char *config_key_name(size_t);
/* 1 reloadable, 0 not, -1 no such key. */
int	config_key_reloadable(const char *name);
/*
 * A size: decimal digits and an optional K, M, G or T (either case,
 * powers of 1024), nothing else; 0, or -1 (also on overflow).
 */
int	config_parse_size(const char *, uint64_t *);
/* A stream name: [A-Za-z0-9_.-]{1,64}. 1 or 0. */
int	config_stream_name_ok(const char *);
/* host:port or [v6]:port with a port 1-65535; 0, or -1 with err. */
int	config_addr_check(const char *, char *err, size_t errlen);
/*
 * Split host:port or [v6]:port (the brackets removed from host), with the
 * checks of config_addr_check. 0, or -1 with a message in err.
 */
/*
 * A list of NATS server URLs, comma-separated: nats://host:port,
 * tls://host:port or host:port each. 0, or -1 with err.
 */
int	config_nats_urls_check(const char *, char *err, size_t errlen);
int	config_addr_split(const char *, char *host, size_t hostlen,
	    uint16_t *port, char *err, size_t errlen);

#endif
