/*
 * auth.h: tokens by role, compared in constant time.
 *
 * Roles: publish (the upstream that sends frames), subscribe (subscribers),
 * upstream (the one token this relay sends when it pulls). Several publish
 * and subscribe tokens may be valid at once, for rotation.
 *
 * Token files: one token per line. Surrounding spaces and tabs and the line
 * end (LF or CRLF) are stripped; blank lines and lines starting with '#' are
 * ignored, so a token cannot start with '#' or begin or end with
 * whitespace. A token is at most AUTH_TOKEN_MAX bytes (what fits in an
 * FCWAL-AUTH/1 line) with no control characters. A file without any token
 * is an error. Tokens with spaces work in FCWAL-AUTH/1 lines only:
 * FCWAL-SUB/1 separates its fields with spaces.
 *
 * The environment adds tokens, for containers: WALRELAY_PUBLISH_TOKENS and
 * WALRELAY_SUBSCRIBE_TOKENS (separated by commas or newlines, each trimmed)
 * and WALRELAY_UPSTREAM_TOKEN (one token). The tokens of a role are those
 * of its file and of its variable together.
 */
#ifndef WALRELAY_AUTH_H
#define WALRELAY_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct wr_config;

/* 1023-byte line minus "FCWAL-AUTH/1 " */
#define AUTH_TOKEN_MAX		1010
#define AUTH_DIGEST_LEN		32	/* SHA-256 */

#define AUTH_ENV_PUBLISH	"WALRELAY_PUBLISH_TOKENS"
#define AUTH_ENV_SUBSCRIBE	"WALRELAY_SUBSCRIBE_TOKENS"
#define AUTH_ENV_UPSTREAM	"WALRELAY_UPSTREAM_TOKEN"

struct auth_token {
	char		*tk_data;	/* NUL-terminated */
	size_t		 tk_len;
	unsigned char	 tk_digest[AUTH_DIGEST_LEN];
	char		 tk_origin[128];	/* "FILE:LINE" or "VARIABLE item N" */
};

struct tokenset {
	struct auth_token	*ts_tokens;
	size_t			 ts_count;
};

/* Flags in at_loose_perms: token files readable by group or others. */
#define AUTH_PUBLISH		0x1
#define AUTH_SUBSCRIBE		0x2
#define AUTH_UPSTREAM		0x4

struct auth_tokens {
	struct tokenset	 at_publish;
	struct tokenset	 at_subscribe;
	struct tokenset	 at_upstream;	/* none or one */
	int		 at_loose_perms;	/* AUTH_* whose file mode is loose */
};

void	tokenset_init(struct tokenset *);
void	tokenset_free(struct tokenset *);
/* Add one token (checked as described above). 0, or -1 with err. */
int	tokenset_add(struct tokenset *, const void *tok, size_t len,
	    const char *origin, char *err, size_t errlen);
/*
 * Add the tokens of a file. *loose is set to 1 when the file can be read
 * by group or others (the caller warns), else 0. 0, or -1 with err (naming
 * the file and line).
 */
int	tokenset_load_file(struct tokenset *, const char *path, int *loose,
	    char *err, size_t errlen);
/*
 * Add the tokens of a list separated by commas or newlines (each trimmed,
 * empty items skipped); name is used in messages. 0, or -1 with err.
 */
int	tokenset_load_list(struct tokenset *, const char *list,
	    const char *name, char *err, size_t errlen);
/*
 * Is tok one of the set? Compares against every token, without an early
 * exit, in time independent of the tokens' contents and lengths (SHA-256
 * digests compared with CRYPTO_memcmp). An empty set matches nothing.
 */
int	tokenset_match(const struct tokenset *, const void *tok, size_t len);
/* How many tokens of a are not in b (for a reload's log). */
size_t	tokenset_missing(const struct tokenset *a, const struct tokenset *b);

/*
 * Load every role from the files named by cfg and from the environment.
 * Refuses a token that is both a publish and a subscribe token, and more
 * than one upstream token. 0, or -1 with err and nothing loaded (tok is
 * then empty; auth_free is harmless).
 */
int	auth_load(struct auth_tokens *, const struct wr_config *, char *err,
	    size_t errlen);
void	auth_free(struct auth_tokens *);
/* The token to send when pulling, or NULL. */
const char *auth_upstream_token(const struct auth_tokens *);

#endif
