/*
 * fuzz_config.c: libFuzzer target for the config parser: a command line
 * and a config file's text, parsed from memory (config_parse opens no
 * file and prints nothing).
 *
 * Input layout:
 *   byte 0     bits 0-3: number of command-line arguments that follow
 *              (0-15), after argv[0]
 *              bit 4: no config file text (only the command line)
 *              bit 5: the file text starts with "[walrelay]\n"
 *   arguments  each up to a NUL byte (fewer when the input ends)
 *   the rest   the config file's text
 *
 * Invariants: the result is 0, 1 (--help, --version) or -1 with a one-line
 * reason; the same input parses to the same config twice; an accepted
 * config, written with config_dump, parses again (no arguments) to a
 * config that dumps to the same text.
 */
#include "autoconfig.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

#define FUZZ_MAX_ARGS	16

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void
fuzz_fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_config: invariant broken: %s\n%s\n", what,
	    detail ? detail : "");
	abort();
}

static char *
fuzz_dump(const struct wr_config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	if ((f = open_memstream(&buf, &len)) == NULL)
		fuzz_fail("open_memstream", NULL);
	config_dump(cfg, f);
	if (fclose(f) != 0)
		fuzz_fail("open_memstream", NULL);
	return buf;
}

static void
fuzz_check_error(int rc, const char *errbuf, size_t errlen)
{
	if (rc != -1)
		return;
	if (errbuf[0] == '\0' || strnlen(errbuf, errlen) == errlen)
		fuzz_fail("error without a reason", errbuf);
	if (strchr(errbuf, '\n') != NULL)
		fuzz_fail("error reason on several lines", errbuf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	struct wr_config cfg, again;
	char *argv[FUZZ_MAX_ARGS + 1], *copy, *text, *textbuf, *p, *end;
	char *d1, *d2;
	char errbuf[1024], err2[1024];
	size_t nargs, textlen;
	int argc = 0, rc, rc2;

	if (!quiet) {
		log_set_level(-1);	/* nothing to stderr */
		quiet = 1;
	}
	if (size < 1)
		return 0;
	/* arguments are C strings: work on a NUL-terminated copy */
	if ((copy = malloc(size + 1)) == NULL)
		fuzz_fail("out of memory", NULL);
	memcpy(copy, data, size);
	copy[size] = '\0';
	nargs = data[0] & 0x0f;
	p = copy + 1;
	end = copy + size;
	argv[argc++] = "walrelay";
	while ((size_t)(argc - 1) < nargs && p < end) {
		argv[argc++] = p;
		p += strlen(p) + 1;
	}
	argv[argc] = NULL;
	if (p > end)
		p = end;
	/* the text in its own buffer: the last argument may end at end */
	textlen = (size_t)(end - p);
	if ((text = textbuf = malloc(textlen + 11)) == NULL)
		fuzz_fail("out of memory", NULL);
	if (data[0] & 0x20) {
		memcpy(textbuf, "[walrelay]\n", 11);
		memcpy(textbuf + 11, p, textlen);
		textlen += 11;
	} else
		memcpy(textbuf, p, textlen);
	if (data[0] & 0x10)
		text = NULL;

	errbuf[0] = err2[0] = '\0';
	rc = config_parse(argc, argv, text, textlen, &cfg, errbuf,
	    sizeof(errbuf));
	if (rc < -1 || rc > 1)
		fuzz_fail("unexpected result", NULL);
	fuzz_check_error(rc, errbuf, sizeof(errbuf));
	rc2 = config_parse(argc, argv, text, textlen, &again, err2,
	    sizeof(err2));
	if (rc2 != rc || (rc == -1 && strcmp(errbuf, err2) != 0))
		fuzz_fail("the same input parsed differently", err2);
	if (rc != 0)
		goto out;
	d1 = fuzz_dump(&cfg);
	d2 = fuzz_dump(&again);
	if (strcmp(d1, d2) != 0)
		fuzz_fail("the same input gave different configs", d2);
	config_free(&again);
	free(d2);

	/* the effective config, as a file, is the same config */
	argc = 1;
	argv[1] = NULL;
	rc = config_parse(argc, argv, d1, strlen(d1), &again, err2,
	    sizeof(err2));
	if (rc != 0)
		fuzz_fail("the dumped config does not parse", err2);
	d2 = fuzz_dump(&again);
	if (strcmp(d1, d2) != 0)
		fuzz_fail("the dumped config parses to another one", d2);
	free(d1);
	free(d2);
	config_free(&again);
	config_free(&cfg);
out:
	free(textbuf);
	free(copy);
	return 0;
}
