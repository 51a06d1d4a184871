/*
 * auth.c: tokens by role, from files and the environment, compared in
 * constant time. No sockets here: the listeners ask tokenset_match.
 *
 * A presented token is hashed (SHA-256) and its digest compared with the
 * digest of every stored token using CRYPTO_memcmp, accumulating the result
 * without branching, so neither where the bytes differ nor which token
 * matched nor the stored tokens' lengths show in the time taken.
 */
#include "autoconfig.h"

#include <sys/stat.h>
#include <sys/types.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth.h"
#include "config.h"

void
tokenset_init(struct tokenset *ts)
{
	ts->ts_tokens = NULL;
	ts->ts_count = 0;
}

void
tokenset_free(struct tokenset *ts)
{
	for (size_t i = 0; i < ts->ts_count; i++) {
		struct auth_token *tk = &ts->ts_tokens[i];

		OPENSSL_cleanse(tk->tk_data, tk->tk_len);
		free(tk->tk_data);
	}
	free(ts->ts_tokens);
	tokenset_init(ts);
}

static int
auth_digest(const void *tok, size_t len, unsigned char *md)
{
	unsigned int mdlen = 0;

	if (EVP_Digest(tok, len, md, &mdlen, EVP_sha256(), NULL) != 1 ||
	    mdlen != AUTH_DIGEST_LEN)
		return -1;
	return 0;
}

int
tokenset_add(struct tokenset *ts, const void *tok, size_t len,
    const char *origin, char *err, size_t errlen)
{
	const unsigned char *p = tok;
	struct auth_token *tk, *nt;

	if (len == 0) {
		snprintf(err, errlen, "%s: empty token", origin);
		return -1;
	}
	if (len > AUTH_TOKEN_MAX) {
		snprintf(err, errlen, "%s: token longer than %d bytes", origin,
		    AUTH_TOKEN_MAX);
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f) {
			snprintf(err, errlen, "%s: control character in the "
			    "token", origin);
			return -1;
		}
	}
	nt = reallocarray(ts->ts_tokens, ts->ts_count + 1, sizeof(*nt));
	if (nt == NULL)
		goto nomem;
	ts->ts_tokens = nt;
	tk = &nt[ts->ts_count];
	memset(tk, 0, sizeof(*tk));
	if ((tk->tk_data = malloc(len + 1)) == NULL)
		goto nomem;
	memcpy(tk->tk_data, tok, len);
	tk->tk_data[len] = '\0';
	tk->tk_len = len;
	snprintf(tk->tk_origin, sizeof(tk->tk_origin), "%s", origin);
	if (auth_digest(tok, len, tk->tk_digest) == -1) {
		free(tk->tk_data);
		snprintf(err, errlen, "%s: SHA-256 failed", origin);
		return -1;
	}
	ts->ts_count++;
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

static int
auth_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Trim [*s, *s + *len) of surrounding whitespace. */
static void
auth_trim(const char **s, size_t *len)
{
	while (*len > 0 && auth_space((*s)[0])) {
		(*s)++;
		(*len)--;
	}
	while (*len > 0 && auth_space((*s)[*len - 1]))
		(*len)--;
}

int
tokenset_load_file(struct tokenset *ts, const char *path, int *loose,
    char *err, size_t errlen)
{
	struct stat st;
	FILE *f;
	char *line = NULL, origin[128];
	const char *s;
	size_t cap = 0, len, before = ts->ts_count;
	ssize_t n;
	unsigned lineno = 0;
	int rc = -1;

	*loose = 0;
	if ((f = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "cannot open the token file %s: %s", path,
		    strerror(errno));
		return -1;
	}
	if (fstat(fileno(f), &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		goto out;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		*loose = 1;
	while ((n = getline(&line, &cap, f)) != -1) {
		lineno++;
		s = line;
		len = (size_t)n;
		auth_trim(&s, &len);
		if (len == 0 || s[0] == '#')
			continue;
		if (memchr(s, '\0', len) != NULL) {
			snprintf(err, errlen, "%s:%u: NUL byte in the token",
			    path, lineno);
			goto out;
		}
		snprintf(origin, sizeof(origin), "%s:%u", path, lineno);
		if (tokenset_add(ts, s, len, origin, err, errlen) == -1)
			goto out;
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		goto out;
	}
	if (ts->ts_count == before) {
		snprintf(err, errlen, "%s: no tokens in the file (one token per "
		    "line; '#' starts a comment)", path);
		goto out;
	}
	rc = 0;
out:
	if (line != NULL) {
		OPENSSL_cleanse(line, cap);
		free(line);
	}
	fclose(f);
	return rc;
}

int
tokenset_load_list(struct tokenset *ts, const char *list, const char *name,
    char *err, size_t errlen)
{
	const char *s = list, *item;
	char origin[128];
	size_t len;
	unsigned count = 0;

	while (*s != '\0') {
		item = s;
		len = strcspn(s, ",\n");
		s += len;
		if (*s != '\0')
			s++;
		count++;
		auth_trim(&item, &len);
		if (len == 0)
			continue;
		snprintf(origin, sizeof(origin), "%s item %u", name, count);
		if (tokenset_add(ts, item, len, origin, err, errlen) == -1)
			return -1;
	}
	return 0;
}

int
tokenset_match(const struct tokenset *ts, const void *tok, size_t len)
{
	unsigned char md[AUTH_DIGEST_LEN];
	volatile int found = 0;

	if (auth_digest(tok, len, md) == -1)
		return 0;
	for (size_t i = 0; i < ts->ts_count; i++)
		found |= CRYPTO_memcmp(md, ts->ts_tokens[i].tk_digest,
		    AUTH_DIGEST_LEN) == 0;
	OPENSSL_cleanse(md, sizeof(md));
	return found != 0;
}

static int
auth_load_role(struct tokenset *ts, const char *file, const char *env,
    const char *key, int role, int *loose, char *err, size_t errlen)
{
	const char *val;
	int l = 0;

	if (file != NULL) {
		if (tokenset_load_file(ts, file, &l, err, errlen) == -1) {
			char tmp[512];

			snprintf(tmp, sizeof(tmp), "%s", err);
			snprintf(err, errlen, "%s: %s", key, tmp);
			return -1;
		}
		if (l)
			*loose |= role;
	}
	if ((val = getenv(env)) != NULL) {
		if (role == AUTH_UPSTREAM) {
			size_t len = strlen(val);

			auth_trim(&val, &len);
			if (len > 0 && tokenset_add(ts, val, len, env, err,
			    errlen) == -1)
				return -1;
		} else if (tokenset_load_list(ts, val, env, err, errlen) == -1)
			return -1;
	}
	return 0;
}

int
auth_load(struct auth_tokens *at, const struct wr_config *cfg, char *err,
    size_t errlen)
{
	struct tokenset *pub = &at->at_publish, *sub = &at->at_subscribe;

	memset(at, 0, sizeof(*at));
	tokenset_init(pub);
	tokenset_init(sub);
	tokenset_init(&at->at_upstream);
	if (auth_load_role(pub, cfg->publish_token_file, AUTH_ENV_PUBLISH,
	    "publish-token-file", AUTH_PUBLISH, &at->at_loose_perms, err,
	    errlen) == -1 ||
	    auth_load_role(sub, cfg->subscribe_token_file, AUTH_ENV_SUBSCRIBE,
	    "subscribe-token-file", AUTH_SUBSCRIBE, &at->at_loose_perms, err,
	    errlen) == -1 ||
	    auth_load_role(&at->at_upstream, cfg->upstream_token_file,
	    AUTH_ENV_UPSTREAM, "upstream-token-file", AUTH_UPSTREAM,
	    &at->at_loose_perms, err, errlen) == -1)
		goto fail;
	if (at->at_upstream.ts_count > 1) {
		snprintf(err, errlen, "%zu upstream tokens (%s and %s): pulling "
		    "sends one", at->at_upstream.ts_count,
		    at->at_upstream.ts_tokens[0].tk_origin,
		    at->at_upstream.ts_tokens[1].tk_origin);
		goto fail;
	}
	for (size_t i = 0; i < sub->ts_count; i++) {
		const struct auth_token *tk = &sub->ts_tokens[i];

		/* constant time is not needed here: this is our own data */
		for (size_t j = 0; j < pub->ts_count; j++) {
			if (memcmp(tk->tk_digest, pub->ts_tokens[j].tk_digest,
			    AUTH_DIGEST_LEN) != 0)
				continue;
			snprintf(err, errlen, "the subscribe token at %s is also "
			    "a publish token (at %s): a subscribe token can "
			    "never publish, use different tokens",
			    tk->tk_origin, pub->ts_tokens[j].tk_origin);
			goto fail;
		}
	}
	return 0;
fail:
	auth_free(at);
	return -1;
}

void
auth_free(struct auth_tokens *at)
{
	tokenset_free(&at->at_publish);
	tokenset_free(&at->at_subscribe);
	tokenset_free(&at->at_upstream);
	at->at_loose_perms = 0;
}

const char *
auth_upstream_token(const struct auth_tokens *at)
{
	if (at == NULL || at->at_upstream.ts_count == 0)
		return NULL;
	return at->at_upstream.ts_tokens[0].tk_data;
}

size_t
tokenset_missing(const struct tokenset *a, const struct tokenset *b)
{
	size_t n = 0, i, j;

	for (i = 0; i < a->ts_count; i++) {
		for (j = 0; j < b->ts_count; j++)
			if (memcmp(a->ts_tokens[i].tk_digest,
			    b->ts_tokens[j].tk_digest, AUTH_DIGEST_LEN) == 0)
				break;
		if (j == b->ts_count)
			n++;
	}
	return n;
}
