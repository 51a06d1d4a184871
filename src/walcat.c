/*
 * walcat.c: the companion tool. One subcommand per entry of walcat_cmds.
 *
 *   walcat dump [--json] [--max-frame-bytes N] [--from-seq SEQ] PATH
 *   walcat verify [--max-frame-bytes N] PATH
 *   walcat produce ... ADDR, walcat tail ... ADDR, walcat health ADDR
 *   (walcat_net.c)
 *
 * PATH is a segment file or a directory of them (every name ending in
 * .wal or .wal.lz4, in name order, as the cache reads them, and the
 * relay's archived segments, .wal.zst, in their place).
 */
#include "autoconfig.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "archive.h"
#include "fcw2.h"
#include "scan.h"
#include "segment.h"
#include "walcat.h"

#define WALCAT_PROGRESS_NS	200000000LL

struct walcat_cmd {
	const char	*name;
	const char	*args;
	const char	*help;
	int		(*fn)(int, char **);	/* argv[0] is the name */
};

/* The files behind PATH, in order. */
struct walcat_files {
	char		**wf_paths;
	size_t		  wf_n;
};

/* One pass over the files (dump and verify share it). */
struct walcat_walk {
	size_t		  ww_max_frame;
	FILE		 *ww_report;	/* where problems go */
	int		  ww_progress;	/* progress lines on stderr */
	void		(*ww_frame)(struct walcat_walk *, const char *path,
			    const struct scan_event *);
	int		  ww_json;
	int		  ww_relay_seq;	/* number by the names' sequences */
	uint64_t	  ww_from;	/* with ww_relay_seq: print from here */
	uint64_t	  ww_seq;	/* the next frame's sequence */

	uint64_t	  ww_files;
	uint64_t	  ww_frames;
	uint64_t	  ww_bytes;
	uint64_t	  ww_corrupt;
	uint64_t	  ww_torn;
	uint64_t	  ww_errors;
	uint64_t	  ww_skipped;
	long long	  ww_last_progress;
	int		  ww_progress_shown;
};

static const struct walcat_cmd walcat_cmds[] = {
	{ "dump", "[--json] [--max-frame-bytes N] [--from-seq SEQ] PATH",
	  "print every record, one per line (text or JSON lines)",
	  walcat_dump },
	{ "verify", "[--max-frame-bytes N] PATH",
	  "check every frame, report each problem and a summary",
	  walcat_verify },
	{ "produce", "[--token-file F] [--dir PATH | --count N] [...] ADDR",
	  "send frames to a relay's ingest ADDR as the cache's exporter does",
	  walcat_produce },
	{ "tail", "[--from SEQ|earliest|latest] [--position-file F] "
	  "[--token-file F] [...] ADDR",
	  "subscribe to a relay's subscriber ADDR and print the records",
	  walcat_tail },
	{ "repair", "--from ADDR [--token-file F] [--tls-ca F ...] DIR",
	  "replace corrupt frames with the same frames from a chain relay",
	  walcat_repair },
	{ "restore", "[--until-seq S | --until-time T] [--force] SOURCE OUTDIR",
	  "rebuild a cache's WAL directory up to a point in time",
	  walcat_restore },
	{ "snapshot", "show [--keys N] FILE | verify FILE | diff A B",
	  "inspect, check or compare FCSNAP1 snapshot files",
	  walcat_snapshot },
	{ "health", "[--path P] [--timeout-ms N] ADDR",
	  "ask a relay's HTTP ADDR for /healthz: exit 0 on 200",
	  walcat_health },
};
#define WALCAT_NCMDS (sizeof(walcat_cmds) / sizeof(walcat_cmds[0]))

static const char *walcat_progname = "walcat";

static int	walcat_name_seq(const char *, uint64_t *);

static const struct walcat_cmd *
walcat_cmd_find(const char *name)
{
	size_t i;

	for (i = 0; i < WALCAT_NCMDS; i++)
		if (strcmp(walcat_cmds[i].name, name) == 0)
			return &walcat_cmds[i];
	return NULL;
}

static void
walcat_usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: %s COMMAND [OPTIONS] PATH|ADDR\n\n",
	    walcat_progname);
	fprintf(f, "Reads and checks FCW2 write-ahead-log segments, and talks "
	    "to a relay. PATH is a\nsegment file or a directory of them "
	    "(*.wal, *.wal.lz4 and archived *.wal.zst, in name order);\n"
	    "ADDR is host:port or "
	    "[ipv6]:port.\n\ncommands:\n");
	for (i = 0; i < WALCAT_NCMDS; i++)
		fprintf(f, "  %s %s\n        %s\n", walcat_cmds[i].name,
		    walcat_cmds[i].args, walcat_cmds[i].help);
	fprintf(f, "\noptions of dump and verify:\n"
	    "  --json                  dump: JSON lines instead of text\n"
	    "  --max-frame-bytes N     frame size cap (suffix K, M or G; "
	    "default 64M):\n"
	    "                          a longer frame is corruption\n"
	    "  --from-seq SEQ          dump: number the records with the "
	    "sequences in the\n"
	    "                          segment file names (a relay's data "
	    "directory) and\n"
	    "                          start at SEQ\n"
	    "  -h, --help              this help; COMMAND --help for one "
	    "command\n"
	    "  --version               print the version\n");
	fprintf(f, "\nexit status (dump and verify):\n"
	    "  0  intact\n"
	    "  1  only a torn tail: an incomplete frame at the end of the "
	    "last file\n"
	    "     (normal after a crash)\n"
	    "  2  corruption: a bad frame anywhere, or an incomplete frame "
	    "at the end\n"
	    "     of a file that is not the last\n"
	    "  3  usage or I/O error\n"
	    "  4  no segment file at all (an empty or wrong directory)\n"
	    "produce, tail and health: see COMMAND --help.\n");
}

static void
walcat_cmd_usage(const struct walcat_cmd *cmd, FILE *f)
{
	fprintf(f, "usage: %s %s %s\n", walcat_progname, cmd->name, cmd->args);
}

/* A size with an optional K, M or G suffix (powers of 1024). */
static int
walcat_parse_size(const char *s, size_t *out)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K':
		v = v > (ULLONG_MAX >> 10) ? ULLONG_MAX : v << 10;
		end++;
		break;
	case 'm': case 'M':
		v = v > (ULLONG_MAX >> 20) ? ULLONG_MAX : v << 20;
		end++;
		break;
	case 'g': case 'G':
		v = v > (ULLONG_MAX >> 30) ? ULLONG_MAX : v << 30;
		end++;
		break;
	default:
		return -1;
	}
	if (*end != '\0' || v > SIZE_MAX)
		return -1;
	*out = (size_t)v;
	return 0;
}

static int
walcat_max_frame_opt(const char *arg, size_t *out)
{
	size_t v;

	if (walcat_parse_size(arg, &v) != 0 ||
	    v < FCW2_OVERHEAD + FCW2_RECORD_MIN ||
	    v - FCW2_OVERHEAD > UINT32_MAX) {
		fprintf(stderr, "%s: --max-frame-bytes: %s: want a size from "
		    "%d to %llu bytes\n", walcat_progname, arg,
		    FCW2_OVERHEAD + FCW2_RECORD_MIN,
		    (unsigned long long)UINT32_MAX + FCW2_OVERHEAD);
		return -1;
	}
	*out = v;
	return 0;
}

int
walcat_max_frame_arg(const char *arg, size_t *out)
{
	return walcat_max_frame_opt(arg, out);
}

static void
walcat_files_free(struct walcat_files *wf)
{
	segment_list_free(wf->wf_paths, wf->wf_n);
	wf->wf_paths = NULL;
	wf->wf_n = 0;
}

/* PATH as a list of files: itself, or the segment files it holds. */
static int
walcat_files_get(const char *path, struct walcat_files *wf)
{
	struct stat st;
	char errbuf[512], **names = NULL;
	size_t n = 0, i, len;
	const char *sep;

	memset(wf, 0, sizeof(*wf));
	if (stat(path, &st) == -1) {
		fprintf(stderr, "%s: %s: %s\n", walcat_progname, path,
		    strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		if ((wf->wf_paths = calloc(1, sizeof(char *))) == NULL ||
		    (wf->wf_paths[0] = strdup(path)) == NULL)
			goto nomem;
		wf->wf_n = 1;
		return 0;
	}
	if (segment_list_dir_all(path, &names, &n, errbuf, sizeof(errbuf)) !=
	    0) {
		fprintf(stderr, "%s: %s\n", walcat_progname, errbuf);
		return -1;
	}
	/* the archiver's temporary files, and a raw file being replaced */
	for (i = 0, len = 0; i < n; i++) {
		uint64_t b1, b2;
		size_t l = strlen(names[i]);

		if ((l > 4 && strcmp(names[i] + l - 4, ".tmp") == 0) ||
		    (i + 1 < n && segment_name_parse(names[i], &b1, NULL) ==
		    0 && archive_name_parse(names[i + 1], &b2, NULL) == 0 &&
		    b1 == b2)) {
			free(names[i]);
			continue;
		}
		names[len++] = names[i];
	}
	n = len;
	len = strlen(path);
	sep = (len > 0 && path[len - 1] == '/') ? "" : "/";
	for (i = 0; i < n; i++) {
		char *full;

		if (asprintf(&full, "%s%s%s", path, sep, names[i]) == -1) {
			segment_list_free(names, n);
			goto nomem;
		}
		free(names[i]);
		names[i] = full;
	}
	wf->wf_paths = names;
	wf->wf_n = n;
	return 0;
nomem:
	fprintf(stderr, "%s: out of memory\n", walcat_progname);
	walcat_files_free(wf);
	return -1;
}

static long long
walcat_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void
walcat_progress(struct walcat_walk *ww, size_t idx, size_t nfiles,
    const char *path, uint64_t done, uint64_t size, int force)
{
	long long now;
	const char *base;

	if (!ww->ww_progress)
		return;
	now = walcat_now_ns();
	if (!force && now - ww->ww_last_progress < WALCAT_PROGRESS_NS)
		return;
	ww->ww_last_progress = now;
	base = strrchr(path, '/');
	base = base != NULL ? base + 1 : path;
	fprintf(stderr, "\r\033[K%s: [%zu/%zu] %s %3u%% (%" PRIu64 " MiB)",
	    walcat_progname, idx + 1, nfiles, base,
	    size > 0 ? (unsigned)(done * 100 / size) : 100,
	    done >> 20);
	fflush(stderr);
	ww->ww_progress_shown = 1;
}

static void
walcat_progress_clear(struct walcat_walk *ww)
{
	if (ww->ww_progress_shown) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
		ww->ww_progress_shown = 0;
	}
}

static void
walcat_report_event(struct walcat_walk *ww, const char *path, int last,
    const struct scan_event *ev)
{
	FILE *f = ww->ww_report;

	walcat_progress_clear(ww);
	if (ev->ev_type == SCAN_INCOMPLETE) {
		if (last) {
			ww->ww_torn++;
			fprintf(f, "%s: offset %" PRIu64 ": torn tail: "
			    "incomplete frame at the end of the last file",
			    path, ev->ev_offset);
		} else {
			ww->ww_corrupt++;
			fprintf(f, "%s: offset %" PRIu64 ": corrupt: "
			    "incomplete frame at the end of a file that is "
			    "not the last", path, ev->ev_offset);
		}
		if (ev->ev_need > 0)
			fprintf(f, " (%" PRIu64 " of %" PRIu64 " bytes)\n",
			    ev->ev_have, ev->ev_need);
		else
			fprintf(f, " (%" PRIu64 " bytes, header incomplete)\n",
			    ev->ev_have);
		return;
	}

	ww->ww_corrupt++;
	ww->ww_skipped += ev->ev_skipped;
	if (ev->ev_status == FCW2_NEED_MORE) {
		fprintf(f, "%s: offset %" PRIu64 ": corrupt: frame length %"
		    PRIu64 " runs past the end of the file (%" PRIu64
		    " bytes left)", path, ev->ev_offset, ev->ev_need,
		    ev->ev_have);
	} else {
		fprintf(f, "%s: offset %" PRIu64 ": corrupt: %s", path,
		    ev->ev_offset, fcw2_strerror(ev->ev_status));
		if (ev->ev_status == FCW2_ERR_TOO_LARGE)
			fprintf(f, " (cap %zu bytes)", ww->ww_max_frame);
	}
	if (ev->ev_resumed)
		fprintf(f, "; skipped %" PRIu64 " bytes to the next valid "
		    "frame at offset %" PRIu64 "\n", ev->ev_skipped,
		    ev->ev_resume);
	else
		fprintf(f, "; skipped %" PRIu64 " bytes to the end of the "
		    "file\n", ev->ev_skipped);
}

/* Scan every file; call ww_frame for each valid frame. */
static void
walcat_walk_files(struct walcat_walk *ww, const struct walcat_files *wf)
{
	struct scan sc;
	struct scan_event ev;
	struct stat st;
	char errbuf[512];
	size_t i;
	unsigned tick;
	int fd;

	scan_init(&sc, ww->ww_max_frame, 0, 1);
	for (i = 0; i < wf->wf_n; i++) {
		const char *path = wf->wf_paths[i];
		int last = (i + 1 == wf->wf_n);
		uint64_t next;

		if (ww->ww_relay_seq) {
			if (walcat_name_seq(path, &ww->ww_seq) == -1) {
				walcat_progress_clear(ww);
				fprintf(stderr, "%s: %s: the name carries no "
				    "sequence (segment-SEQ-MS.wal): --from-seq "
				    "needs a relay's segment files\n",
				    walcat_progname, path);
				ww->ww_errors++;
				continue;
			}
			/* wholly before --from-seq: not even opened */
			if (!last && walcat_name_seq(wf->wf_paths[i + 1],
			    &next) == 0 && next <= ww->ww_from)
				continue;
		}

		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 &&
		    errno == ENOENT && !scan_is_zstd_name(path)) {
			char *z;

			/* a running relay archived it meanwhile */
			if (asprintf(&z, "%s.zst", path) != -1) {
				free(wf->wf_paths[i]);
				wf->wf_paths[i] = z;
				path = z;
				fd = open(path, O_RDONLY | O_CLOEXEC);
			}
		}
		if (fd == -1) {
			walcat_progress_clear(ww);
			fprintf(stderr, "%s: %s: %s\n", walcat_progname, path,
			    strerror(errno));
			ww->ww_errors++;
			continue;
		}
		if (fstat(fd, &st) == -1)
			st.st_size = 0;
#ifdef POSIX_FADV_SEQUENTIAL
		posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
		ww->ww_files++;
		if (scan_is_zstd_name(path)) {
			if (scan_start_zstd(&sc, fd) == -1) {
				fprintf(stderr, "%s: out of memory\n",
				    walcat_progname);
				ww->ww_errors++;
				close(fd);
				continue;
			}
		} else
			scan_start(&sc, fd);
		walcat_progress(ww, i, wf->wf_n, path, 0, (uint64_t)st.st_size,
		    1);
		for (tick = 0;; tick++) {
			if (scan_next(&sc, &ev, errbuf, sizeof(errbuf)) != 0) {
				walcat_progress_clear(ww);
				if (scan_corrupt(&sc)) {
					/* an archived block: nothing after it */
					fprintf(ww->ww_report, "%s: %s: "
					    "corrupt; the rest of the file "
					    "cannot be read\n", path, errbuf);
					ww->ww_corrupt++;
					break;
				}
				fprintf(stderr, "%s: %s: %s\n", walcat_progname,
				    path, errbuf);
				ww->ww_errors++;
				break;
			}
			if (ev.ev_type == SCAN_END)
				break;
			if (ev.ev_type == SCAN_FRAME) {
				if (ww->ww_frame != NULL)
					ww->ww_frame(ww, path, &ev);
				ww->ww_frames++;
			} else
				walcat_report_event(ww, path, last, &ev);
			if ((tick & 1023) == 0)
				walcat_progress(ww, i, wf->wf_n, path,
				    scan_input_read(&sc), (uint64_t)st.st_size,
				    0);
		}
		ww->ww_bytes += scan_bytes_read(&sc);
		close(fd);
	}
	walcat_progress_clear(ww);
	scan_free(&sc);
}

static int
walcat_exit_status(const struct walcat_walk *ww)
{
	if (ww->ww_errors > 0)
		return WALCAT_EXIT_ERROR;
	if (ww->ww_corrupt > 0)
		return WALCAT_EXIT_CORRUPT;
	if (ww->ww_torn > 0)
		return WALCAT_EXIT_TORN;
	return WALCAT_EXIT_OK;
}

static const char *
walcat_op_name(uint8_t op)
{
	switch (op) {
	case FCW2_OP_SET:
		return "SET";
	case FCW2_OP_DEL:
		return "DEL";
	case FCW2_OP_EXPIRE:
		return "EXPIRE";
	}
	return "?";
}

/*
 * Text form of a key: printable ASCII other than space, '"' and '\' as
 * is, every other byte as \xNN, so that a key is one field; an empty key
 * is "".
 */
void
walcat_put_text_key(FILE *f, const uint8_t *p, size_t len)
{
	size_t i;

	if (len == 0) {
		fputs("\"\"", f);
		return;
	}
	for (i = 0; i < len; i++) {
		if (p[i] > 0x20 && p[i] < 0x7f && p[i] != '\\' && p[i] != '"')
			putc(p[i], f);
		else
			fprintf(f, "\\x%02x", p[i]);
	}
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0. */
static size_t
walcat_utf8_len(const uint8_t *p, size_t n)
{
	uint32_t c;
	size_t len, i;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2;
		c = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		len = 3;
		c = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4;
		c = p[0] & 0x07;
	} else
		return 0;
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (p[i] & 0x3f);
	}
	if (len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff)))
		return 0;
	if (len == 4 && (c < 0x10000 || c > 0x10ffff))
		return 0;
	return len;
}

/*
 * A JSON string. Valid UTF-8 is kept; '"' and '\' are escaped, control
 * bytes and DEL become \u00XX; a byte that is not part of valid UTF-8
 * becomes the lone surrogate \udcXX (Python's "surrogateescape"), so the
 * exact bytes can be recovered and never collide with a real character.
 */
void
walcat_put_json_string(FILE *f, const uint8_t *p, size_t len)
{
	size_t i = 0, n;

	putc('"', f);
	while (i < len) {
		if (p[i] == '"' || p[i] == '\\') {
			putc('\\', f);
			putc(p[i], f);
			i++;
		} else if (p[i] < 0x20 || p[i] == 0x7f) {
			fprintf(f, "\\u%04x", p[i]);
			i++;
		} else if ((n = walcat_utf8_len(p + i, len - i)) == 0) {
			fprintf(f, "\\udc%02x", p[i]);
			i++;
		} else {
			fwrite(p + i, 1, n, f);
			i += n;
		}
	}
	putc('"', f);
}

void
walcat_print_record(FILE *f, int json, uint64_t seq,
    const struct fcw2_record *rec, const char *file, uint64_t offset)
{
	if (json) {
		if (seq == WALCAT_SEQ_SNAPSHOT)
			fputs("{\"seq\":null", f);
		else
			fprintf(f, "{\"seq\":%" PRIu64, seq);
		if (file != NULL) {
			fputs(",\"file\":", f);
			walcat_put_json_string(f, (const uint8_t *)file,
			    strlen(file));
			fprintf(f, ",\"offset\":%" PRIu64, offset);
		}
		fprintf(f, ",\"op\":\"%s\",\"key\":", walcat_op_name(rec->op));
		walcat_put_json_string(f, rec->key, rec->key_len);
		fprintf(f, ",\"value_len\":%" PRIu32 ",\"timestamp_ms\":%"
		    PRIu64 ",\"expire_at_ms\":", rec->value_len,
		    rec->timestamp_ms);
		if (rec->expire_at_ms < 0)
			fputs("null}\n", f);
		else
			fprintf(f, "%" PRId64 "}\n", rec->expire_at_ms);
		return;
	}
	if (seq == WALCAT_SEQ_SNAPSHOT)
		fprintf(f, "snapshot %s ", walcat_op_name(rec->op));
	else
		fprintf(f, "%" PRIu64 " %s ", seq, walcat_op_name(rec->op));
	walcat_put_text_key(f, rec->key, rec->key_len);
	fprintf(f, " %" PRIu32 " %" PRIu64 " ", rec->value_len,
	    rec->timestamp_ms);
	if (rec->expire_at_ms < 0)
		fputs("none\n", f);
	else
		fprintf(f, "%" PRId64 "\n", rec->expire_at_ms);
}

static void
walcat_dump_frame(struct walcat_walk *ww, const char *path,
    const struct scan_event *ev)
{
	uint64_t seq = ww->ww_frames;

	if (ww->ww_relay_seq) {
		seq = ww->ww_seq++;
		if (seq < ww->ww_from)
			return;
	}
	walcat_print_record(stdout, ww->ww_json, seq, &ev->ev_rec, path,
	    ev->ev_offset);
}

/* The sequence in a segment file's name (segment-SEQ-MS.wal); 0 or -1. */
static int
walcat_name_seq(const char *path, uint64_t *seq)
{
	const char *base = strrchr(path, '/');

	return segment_name_parse(base != NULL ? base + 1 : path, seq, NULL);
}

/*
 * Options common to dump and verify. Returns the index of PATH in argv,
 * or -1 (usage printed) or -2 (help printed).
 */
static int
walcat_getopt(const char *name, int argc, char **argv, size_t *max_frame,
    int *json, int *has_from, uint64_t *from)
{
	const struct walcat_cmd *cmd = walcat_cmd_find(name);
	enum { OPT_MAX_FRAME = 256, OPT_JSON, OPT_FROM_SEQ };
	static const struct option dump_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "max-frame-bytes", required_argument, NULL, OPT_MAX_FRAME },
		{ "from-seq", required_argument, NULL, OPT_FROM_SEQ },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	const struct option *opts = dump_opts;
	int ch;

	/* verify takes everything but --json */
	if (json == NULL) {
		static const struct option verify_opts[] = {
			{ "help", no_argument, NULL, 'h' },
			{ "max-frame-bytes", required_argument, NULL,
			    OPT_MAX_FRAME },
			{ NULL, 0, NULL, 0 },
		};
		opts = verify_opts;
	}
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			walcat_cmd_usage(cmd, stdout);
			return -2;
		case OPT_JSON:
			*json = 1;
			break;
		case OPT_MAX_FRAME:
			if (walcat_max_frame_opt(optarg, max_frame) != 0)
				return -1;
			break;
		case OPT_FROM_SEQ:
			errno = 0;
			*from = strtoull(optarg, &end, 10);
			if (optarg[0] < '0' || optarg[0] > '9' || *end != '\0' ||
			    errno != 0) {
				fprintf(stderr, "%s: --from-seq %s: not a "
				    "sequence number\n", walcat_progname,
				    optarg);
				return -1;
			}
			*has_from = 1;
			break;
		default:
			walcat_cmd_usage(cmd, stderr);
			return -1;
		}
	}
	if (argc - optind != 1) {
		walcat_cmd_usage(cmd, stderr);
		return -1;
	}
	return optind;
}

int
walcat_dump(int argc, char **argv)
{
	struct walcat_walk ww;
	struct walcat_files wf;
	int json = 0, has_from = 0, i;
	uint64_t from = 0;
	size_t max_frame = FCW2_DEFAULT_MAX_FRAME;

	if ((i = walcat_getopt("dump", argc, argv, &max_frame,
	    &json, &has_from, &from)) < 0)
		return i == -2 ? WALCAT_EXIT_OK : WALCAT_EXIT_ERROR;
	if (walcat_files_get(argv[i], &wf) != 0)
		return WALCAT_EXIT_ERROR;
	if (wf.wf_n == 0) {
		fprintf(stderr, "%s: %s: no segment files (*.wal, *.wal.lz4)\n",
		    walcat_progname, argv[i]);
		walcat_files_free(&wf);
		return WALCAT_EXIT_EMPTY;
	}

	memset(&ww, 0, sizeof(ww));
	ww.ww_max_frame = max_frame;
	ww.ww_report = stderr;
	ww.ww_json = json;
	ww.ww_relay_seq = has_from;
	ww.ww_from = from;
	if (has_from) {
		uint64_t first;

		if (walcat_name_seq(wf.wf_paths[0], &first) == 0 &&
		    from < first) {
			fprintf(stderr, "%s: --from-seq %" PRIu64 ": gone, the "
			    "earliest sequence in %s is %" PRIu64 "\n",
			    walcat_progname, from, argv[i], first);
			walcat_files_free(&wf);
			return WALCAT_EXIT_ERROR;
		}
	}
	ww.ww_frame = walcat_dump_frame;
	walcat_walk_files(&ww, &wf);
	walcat_files_free(&wf);
	if (fflush(stdout) == EOF || ferror(stdout)) {
		fprintf(stderr, "%s: write error: %s\n", walcat_progname,
		    strerror(errno));
		return WALCAT_EXIT_ERROR;
	}
	return walcat_exit_status(&ww);
}

int
walcat_verify(int argc, char **argv)
{
	struct walcat_walk ww;
	struct walcat_files wf;
	const char *status;
	int i, rc;
	size_t max_frame = FCW2_DEFAULT_MAX_FRAME;

	if ((i = walcat_getopt("verify", argc, argv, &max_frame,
	    NULL, NULL, NULL)) < 0)
		return i == -2 ? WALCAT_EXIT_OK : WALCAT_EXIT_ERROR;
	if (walcat_files_get(argv[i], &wf) != 0)
		return WALCAT_EXIT_ERROR;
	if (wf.wf_n == 0) {
		/* nothing checked is not "intact": an alert must fire */
		fprintf(stderr, "%s: %s: no segment files (*.wal, *.wal.lz4): "
		    "nothing to verify\n", walcat_progname, argv[i]);
		printf("summary: files=0 frames=0 bytes=0 problems=0 corrupt=0 "
		    "torn=0 skipped_bytes=0 errors=0 status=empty\n");
		walcat_files_free(&wf);
		return fflush(stdout) == EOF ? WALCAT_EXIT_ERROR :
		    WALCAT_EXIT_EMPTY;
	}

	memset(&ww, 0, sizeof(ww));
	ww.ww_max_frame = max_frame;
	ww.ww_report = stdout;
	ww.ww_progress = isatty(STDERR_FILENO);
	walcat_walk_files(&ww, &wf);
	walcat_files_free(&wf);

	rc = walcat_exit_status(&ww);
	switch (rc) {
	case WALCAT_EXIT_OK:
		status = "intact";
		break;
	case WALCAT_EXIT_TORN:
		status = "torn-tail";
		break;
	case WALCAT_EXIT_CORRUPT:
		status = "corrupt";
		break;
	default:
		status = "error";
		break;
	}
	printf("summary: files=%" PRIu64 " frames=%" PRIu64 " bytes=%" PRIu64
	    " problems=%" PRIu64 " corrupt=%" PRIu64 " torn=%" PRIu64
	    " skipped_bytes=%" PRIu64 " errors=%" PRIu64 " status=%s\n",
	    ww.ww_files, ww.ww_frames, ww.ww_bytes,
	    ww.ww_corrupt + ww.ww_torn, ww.ww_corrupt, ww.ww_torn,
	    ww.ww_skipped, ww.ww_errors, status);
	if (fflush(stdout) == EOF || ferror(stdout))
		return WALCAT_EXIT_ERROR;
	return rc;
}

int
main(int argc, char **argv)
{
	const struct walcat_cmd *cmd;
	const char *p;

	if (argv[0] != NULL && (p = strrchr(argv[0], '/')) != NULL)
		walcat_progname = p + 1;
	else if (argv[0] != NULL)
		walcat_progname = argv[0];

	if (argc < 2) {
		walcat_usage(stderr);
		return WALCAT_EXIT_ERROR;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		walcat_usage(stdout);
		return WALCAT_EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("walcat %s\n", PACKAGE_VERSION);
		return WALCAT_EXIT_OK;
	}
	if ((cmd = walcat_cmd_find(argv[1])) != NULL)
		return cmd->fn(argc - 1, argv + 1);
	fprintf(stderr, "%s: unknown command: %s\n", walcat_progname, argv[1]);
	walcat_usage(stderr);
	return WALCAT_EXIT_ERROR;
}
