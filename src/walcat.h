/*
 * walcat.h: what the subcommands of walcat share (walcat.c has main and
 * the subcommand table).
 */
#ifndef WALRELAY_WALCAT_H
#define WALRELAY_WALCAT_H

#include <stdint.h>
#include <stdio.h>

#include "fcw2.h"

/* Exit status of dump and verify, worst wins. */
#define WALCAT_EXIT_OK		0	/* intact */
#define WALCAT_EXIT_TORN	1	/* only a torn tail in the last file */
#define WALCAT_EXIT_CORRUPT	2	/* corruption */
#define WALCAT_EXIT_ERROR	3	/* usage or I/O error */
#define WALCAT_EXIT_EMPTY	4	/* no segment file at all */

/* The seq printed for a snapshot's SET frames (they have none). */
#define WALCAT_SEQ_SNAPSHOT	UINT64_MAX

/*
 * One record as a line: text ("seq op key value_len timestamp_ms expire",
 * key escaped with \xNN) or, with json set, a JSON object; file (NULL:
 * none) and offset are included in JSON only.
 */
void	walcat_print_record(FILE *, int json, uint64_t seq,
	    const struct fcw2_record *, const char *file, uint64_t offset);

/* Key escaping as dump prints it. */
void	walcat_put_text_key(FILE *, const uint8_t *, size_t);
void	walcat_put_json_string(FILE *, const uint8_t *, size_t);

int	walcat_dump(int, char **);
int	walcat_verify(int, char **);
int	walcat_produce(int, char **);	/* walcat_net.c */
int	walcat_tail(int, char **);
int	walcat_health(int, char **);
int	walcat_repair(int, char **);	/* walcat_repair.c */
int	walcat_restore(int, char **);	/* walcat_restore.c */
int	walcat_snapshot(int, char **);	/* walcat_snapshot.c */

/* --max-frame-bytes: parse, or print why not and return -1. */
int	walcat_max_frame_arg(const char *, size_t *);
/* Connect to host:port (says why not, -1); the first token of a file. */
int	walcat_net_dial(const char *addr);
int	walcat_net_token(const char *path, char *tok, size_t len);
struct tls_files;
struct tls_ctx;
/* The TLS client of a subcommand (cmd) that reads addr: *out NULL when
 * neither --tls nor a --tls-* option was given. 0, or -1 (said on stderr). */
int	walcat_net_tls(const char *cmd, const char *addr, struct tls_files *,
	    int want, struct tls_ctx **out);

#endif
