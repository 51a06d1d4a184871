/*
 * test_auth.c: token files, the environment, roles and matching.
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"

static char err[1024];

static char *
tmpfile_with(const char *text, size_t len, mode_t mode)
{
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char *path;
	int fd;

	ck_assert(asprintf(&path, "%s/wrtok-XXXXXX", dir) > 0);
	ck_assert_int_ge(fd = mkstemp(path), 0);
	ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
	ck_assert_int_eq(fchmod(fd, mode), 0);
	ck_assert_int_eq(close(fd), 0);
	return path;
}

static char *
tokfile(const char *text)
{
	return tmpfile_with(text, strlen(text), 0600);
}

static void
rmfile(char *path)
{
	unlink(path);
	free(path);
}

static int
match(const struct tokenset *ts, const char *tok)
{
	return tokenset_match(ts, tok, strlen(tok));
}

static void
clear_env(void)
{
	unsetenv(AUTH_ENV_PUBLISH);
	unsetenv(AUTH_ENV_SUBSCRIBE);
	unsetenv(AUTH_ENV_UPSTREAM);
}

START_TEST(file_format)
{
	struct tokenset ts;
	char *path = tokfile("# publish tokens\n\nalpha\r\n  beta  \n"
	    "\t# indented comment\n  \r\ngamma delta\ne#psilon\nlast");
	int loose = -1;

	tokenset_init(&ts);
	ck_assert_msg(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(loose, 0);
	ck_assert_uint_eq(ts.ts_count, 5);
	ck_assert(match(&ts, "alpha"));		/* CRLF stripped */
	ck_assert(match(&ts, "beta"));		/* spaces stripped */
	ck_assert(match(&ts, "gamma delta"));	/* inner space kept */
	ck_assert(match(&ts, "e#psilon"));	/* '#' inside a token */
	ck_assert(match(&ts, "last"));		/* no final newline */
	ck_assert(!match(&ts, "alpha\r"));
	ck_assert(!match(&ts, "  beta  "));
	ck_assert(!match(&ts, "# publish tokens"));
	ck_assert(!match(&ts, ""));
	tokenset_free(&ts);
	ck_assert_uint_eq(ts.ts_count, 0);
	rmfile(path);
}
END_TEST

START_TEST(file_errors)
{
	struct tokenset ts;
	char *path, big[AUTH_TOKEN_MAX + 3];
	int loose;

	tokenset_init(&ts);
	path = tokfile("");
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert_ptr_nonnull(strstr(err, "no tokens"));
	rmfile(path);

	path = tokfile("# only a comment\n\n   \n");
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "no tokens"));
	rmfile(path);

	path = tokfile("good\nbad\001token\n");
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, ":2: control character"));
	rmfile(path);

	path = tmpfile_with("a\0b\n", 4, 0600);
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, ":1: NUL byte"));
	rmfile(path);

	memset(big, 'x', AUTH_TOKEN_MAX + 1);
	big[AUTH_TOKEN_MAX + 1] = '\n';
	big[AUTH_TOKEN_MAX + 2] = '\0';
	path = tokfile(big);
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "longer than 1010 bytes"));
	rmfile(path);
	/* the longest that fits in an FCWAL-AUTH/1 line is fine */
	big[AUTH_TOKEN_MAX] = '\n';
	big[AUTH_TOKEN_MAX + 1] = '\0';
	path = tokfile(big);
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), 0);
	ck_assert(tokenset_match(&ts, big, AUTH_TOKEN_MAX));
	rmfile(path);
	tokenset_free(&ts);

	ck_assert_int_eq(tokenset_load_file(&ts, "/nonexistent/tokens", &loose,
	    err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/tokens"));
	ck_assert_ptr_nonnull(strstr(err, "No such file"));
	ck_assert_int_eq(tokenset_load_file(&ts, "/", &loose, err,
	    sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
	ck_assert_uint_eq(ts.ts_count, 0);
}
END_TEST

START_TEST(file_permissions)
{
	struct tokenset ts;
	char *path = tmpfile_with("tok\n", 4, 0644);
	int loose = 0;

	tokenset_init(&ts);
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(loose, 1);
	ck_assert_int_eq(chmod(path, 0640), 0);
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(loose, 1);
	ck_assert_int_eq(chmod(path, 0400), 0);
	ck_assert_int_eq(tokenset_load_file(&ts, path, &loose, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(loose, 0);
	tokenset_free(&ts);
	rmfile(path);
}
END_TEST

START_TEST(match_near_misses)
{
	struct tokenset ts;

	tokenset_init(&ts);
	ck_assert(!match(&ts, ""));		/* empty set: nothing */
	ck_assert(!match(&ts, "anything"));
	ck_assert_int_eq(tokenset_load_list(&ts, "s3cret-token-1,other",
	    "test", err, sizeof(err)), 0);
	ck_assert_uint_eq(ts.ts_count, 2);
	ck_assert(match(&ts, "s3cret-token-1"));
	ck_assert(match(&ts, "other"));
	ck_assert(!match(&ts, "s3cret-token-"));	/* prefix */
	ck_assert(!match(&ts, "s3cret-token-12"));	/* longer */
	ck_assert(!match(&ts, "s3cret-token-2"));	/* last byte */
	ck_assert(!match(&ts, "t3cret-token-1"));	/* first byte */
	ck_assert(!match(&ts, "S3cret-token-1"));	/* case */
	ck_assert(!match(&ts, "s3cret-token-1 "));
	ck_assert(!match(&ts, ""));
	ck_assert(!tokenset_match(&ts, "s3cret-token-1", 15));	/* + NUL */
	ck_assert(!match(&ts, "s3cret-token-1,other"));
	tokenset_free(&ts);
}
END_TEST

START_TEST(env_tokens)
{
	struct wr_config cfg;
	struct auth_tokens at;
	char *path = tokfile("from-file\n");

	clear_env();
	memset(&cfg, 0, sizeof(cfg));
	setenv(AUTH_ENV_PUBLISH, " p1 ,p2\np3,,\n", 1);
	setenv(AUTH_ENV_SUBSCRIBE, "s1", 1);
	setenv(AUTH_ENV_UPSTREAM, "up-token\n", 1);
	cfg.subscribe_token_file = path;
	ck_assert_msg(auth_load(&at, &cfg, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(at.at_publish.ts_count, 3);
	ck_assert(match(&at.at_publish, "p1"));
	ck_assert(match(&at.at_publish, "p2"));
	ck_assert(match(&at.at_publish, "p3"));
	ck_assert(!match(&at.at_publish, " p1 "));
	/* the file and the variable together */
	ck_assert_uint_eq(at.at_subscribe.ts_count, 2);
	ck_assert(match(&at.at_subscribe, "s1"));
	ck_assert(match(&at.at_subscribe, "from-file"));
	ck_assert(!match(&at.at_publish, "from-file"));
	ck_assert_str_eq(auth_upstream_token(&at), "up-token");
	ck_assert_int_eq(at.at_loose_perms, 0);
	auth_free(&at);
	ck_assert_uint_eq(at.at_publish.ts_count, 0);
	rmfile(path);
}
END_TEST

START_TEST(load_roles)
{
	struct wr_config cfg;
	struct auth_tokens at;
	char *pub = tokfile("pub-a\npub-b\n");
	char *sub = tmpfile_with("sub-a\n", 6, 0644);
	char *up = tokfile("# the relay upstream\nup-1\n");

	clear_env();
	memset(&cfg, 0, sizeof(cfg));
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), 0);
	ck_assert_uint_eq(at.at_publish.ts_count, 0);
	ck_assert_uint_eq(at.at_subscribe.ts_count, 0);
	ck_assert_ptr_null(auth_upstream_token(&at));
	auth_free(&at);

	cfg.publish_token_file = pub;
	cfg.subscribe_token_file = sub;
	cfg.upstream_token_file = up;
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), 0);
	ck_assert(match(&at.at_publish, "pub-a"));
	ck_assert(match(&at.at_publish, "pub-b"));
	ck_assert(!match(&at.at_publish, "sub-a"));	/* roles apart */
	ck_assert(match(&at.at_subscribe, "sub-a"));
	ck_assert(!match(&at.at_subscribe, "pub-a"));
	ck_assert_str_eq(auth_upstream_token(&at), "up-1");
	ck_assert_int_eq(at.at_loose_perms, AUTH_SUBSCRIBE);
	auth_free(&at);

	/* a missing file names the key */
	cfg.publish_token_file = "/nonexistent/pub";
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "publish-token-file: "));
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/pub"));
	auth_free(&at);
	rmfile(pub);
	rmfile(sub);
	rmfile(up);
}
END_TEST

START_TEST(role_overlap_refused)
{
	struct wr_config cfg;
	struct auth_tokens at;
	char *pub = tokfile("pub-a\nshared\n");
	char *sub = tokfile("sub-a\n\nshared\n");

	clear_env();
	memset(&cfg, 0, sizeof(cfg));
	cfg.publish_token_file = pub;
	cfg.subscribe_token_file = sub;
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "a subscribe token can never "
	    "publish"));
	ck_assert_ptr_nonnull(strstr(err, ":3"));	/* where, not what */
	ck_assert_ptr_null(strstr(err, "shared"));
	ck_assert_uint_eq(at.at_publish.ts_count, 0);
	ck_assert_uint_eq(at.at_subscribe.ts_count, 0);

	/* from the environment too */
	cfg.subscribe_token_file = NULL;
	setenv(AUTH_ENV_SUBSCRIBE, "x,pub-a", 1);
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, AUTH_ENV_SUBSCRIBE " item 2"));
	rmfile(pub);
	rmfile(sub);
}
END_TEST

START_TEST(one_upstream_token)
{
	struct wr_config cfg;
	struct auth_tokens at;
	char *up = tokfile("up-1\nup-2\n");

	clear_env();
	memset(&cfg, 0, sizeof(cfg));
	cfg.upstream_token_file = up;
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "2 upstream tokens"));
	rmfile(up);

	up = tokfile("up-1\n");
	cfg.upstream_token_file = up;
	setenv(AUTH_ENV_UPSTREAM, "up-env", 1);
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, AUTH_ENV_UPSTREAM));

	/* the upstream variable is one token: commas are part of it */
	cfg.upstream_token_file = NULL;
	setenv(AUTH_ENV_UPSTREAM, "a,b", 1);
	ck_assert_int_eq(auth_load(&at, &cfg, err, sizeof(err)), 0);
	ck_assert_str_eq(auth_upstream_token(&at), "a,b");
	auth_free(&at);
	rmfile(up);
}
END_TEST

static Suite *
auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *tc = tcase_create("auth");

	tcase_add_test(tc, file_format);
	tcase_add_test(tc, file_errors);
	tcase_add_test(tc, file_permissions);
	tcase_add_test(tc, match_near_misses);
	tcase_add_test(tc, env_tokens);
	tcase_add_test(tc, load_roles);
	tcase_add_test(tc, role_overlap_refused);
	tcase_add_test(tc, one_upstream_token);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(auth_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
