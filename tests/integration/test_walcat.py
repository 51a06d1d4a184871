"""walcat dump and verify on segment directories built from the vectors;
walcat tail's resumable copy against a real relay."""

import json
import os
import pty
import random
import re
import select
import signal
import subprocess
import sys
import time

import pytest

import fcw2util
from fcw2util import OP_DEL, OP_EXPIRE, OP_SET, frame, segment_name
from relayutil import relay_factory, sanitizer_report, store_frames, wait_until

TIMEOUT = 60

# The layout of the test directory: three segments, the middle one with
# the LZ4 vectors, as the cache names them.
LAYOUT = [
    (segment_name(1, 1732435200000), "AB"),
    (segment_name(3, 1732435260000, lz4=True), "CEF"),
    (segment_name(6, 1732435320000), "D"),
]


def run(*args, **kw):
    kw.setdefault("timeout", TIMEOUT)
    return subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, **kw)


@pytest.fixture(scope="module")
def vectors(vectors_path):
    return fcw2util.load_vectors(vectors_path)


@pytest.fixture
def segdir(workdir, vectors):
    """A directory of three segments holding the six vectors, plus the
    offsets of every frame: {label: (path, offset)}."""
    d = workdir / "wal"
    d.mkdir()
    where = {}
    for name, labels in LAYOUT:
        data = b""
        for label in labels:
            where[label] = (d / name, len(data))
            data += vectors[label][0]
        (d / name).write_bytes(data)
    # files the cache's reader ignores, and so must walcat (it reads a
    # relay's archived .wal.zst segments too: test_archive.py)
    (d / "walrelay.meta").write_bytes(b"not a segment")
    (d / "segment-00000000000000000009-1.wal.gz").write_bytes(b"\x1f\x8b")
    return d, where


def summary(out):
    m = re.search(r"^summary: (.*)$", out, re.M)
    assert m, out
    return dict(kv.split("=", 1) for kv in m.group(1).split())


def order():
    return [label for _, labels in LAYOUT for label in labels]


def test_verify_intact(walcat, segdir):
    d, _ = segdir
    r = run(walcat, "verify", d)
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(r.stdout)
    assert s["files"] == "3"
    assert s["frames"] == "6"
    assert s["problems"] == "0"
    assert s["status"] == "intact"
    total = sum(p.stat().st_size for p in d.iterdir() if p.name.endswith((".wal", ".wal.lz4")))
    assert s["bytes"] == str(total)
    # stderr is not a terminal: no progress
    assert r.stderr == ""


def test_verify_bit_flip_in_middle_file(walcat, segdir):
    d, where = segdir
    path, off = where["E"]
    data = bytearray(path.read_bytes())
    data[off + 20] ^= 0x04
    path.write_bytes(bytes(data))
    r = run(walcat, "verify", d)
    assert r.returncode == 2, r.stdout + r.stderr
    problems = [l for l in r.stdout.splitlines() if not l.startswith("summary:")]
    assert len(problems) == 1, r.stdout
    assert problems[0].startswith(f"{path}: offset {off}: corrupt: frame crc mismatch")
    # it resynchronised on the next frame and checked the rest
    assert f"next valid frame at offset {where['F'][1]}" in problems[0]
    s = summary(r.stdout)
    assert s["status"] == "corrupt"
    assert s["corrupt"] == "1" and s["torn"] == "0"
    assert s["frames"] == "5"
    assert s["skipped_bytes"] == str(where["F"][1] - off)


def test_verify_torn_tail_of_last_file(walcat, segdir, vectors):
    d, where = segdir
    path, _ = where["D"]
    whole = path.read_bytes()
    path.write_bytes(whole + vectors["A"][0][:30])
    r = run(walcat, "verify", d)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{path}: offset {len(whole)}: torn tail" in r.stdout
    s = summary(r.stdout)
    assert s["status"] == "torn-tail"
    assert s["torn"] == "1" and s["corrupt"] == "0"
    assert s["frames"] == "6"


def test_verify_truncated_last_frame(walcat, segdir):
    d, where = segdir
    path, off = where["D"]
    data = path.read_bytes()
    for cut in (1, 5, 9, len(data) - 1):
        path.write_bytes(data[:cut])
        r = run(walcat, "verify", d)
        assert r.returncode == 1, (cut, r.stdout)
        assert f"{path}: offset {off}: torn tail" in r.stdout


def test_verify_incomplete_frame_in_older_file_is_corruption(walcat, segdir):
    d, where = segdir
    path, off = where["F"]
    data = path.read_bytes()
    path.write_bytes(data[:off + 10])
    r = run(walcat, "verify", d)
    assert r.returncode == 2, r.stdout
    assert f"{path}: offset {off}: corrupt: incomplete frame" in r.stdout


def test_verify_torn_tail_and_corruption_is_corruption(walcat, segdir, vectors):
    d, where = segdir
    last, _ = where["D"]
    last.write_bytes(last.read_bytes() + vectors["B"][0][:7])
    first, off = where["B"]
    data = bytearray(first.read_bytes())
    data[off + 12] ^= 0x80
    first.write_bytes(bytes(data))
    r = run(walcat, "verify", d)
    assert r.returncode == 2
    s = summary(r.stdout)
    assert s["corrupt"] == "1" and s["torn"] == "1" and s["problems"] == "2"


def test_verify_reports_every_problem(walcat, workdir):
    """Two bad regions in one file: both reported, with what was skipped."""
    frames = [frame(OP_SET, b"k%d" % i, b"v" * 10, ts=i) for i in range(6)]
    offs = []
    data = b""
    for i, f in enumerate(frames):
        if i == 2:
            junk = b"\x00garbage FCW2\x01\x02 more"
            junk_off = len(data)
            data += junk
        offs.append(len(data))
        data += f
    bad = bytearray(data)
    bad[offs[4] + 15] ^= 0x01      # record byte of frame 4
    path = workdir / segment_name(0)
    path.write_bytes(bytes(bad))
    r = run(walcat, "verify", path)
    assert r.returncode == 2, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == (f"{path}: offset {junk_off}: corrupt: bad magic; "
                        f"skipped {len(junk)} bytes to the next valid frame "
                        f"at offset {offs[2]}")
    assert lines[1].startswith(f"{path}: offset {offs[4]}: corrupt: frame crc mismatch")
    s = summary(r.stdout)
    assert s["problems"] == "2" and s["frames"] == "5"
    assert s["skipped_bytes"] == str(len(junk) + offs[5] - offs[4])


def test_verify_record_errors(walcat, workdir):
    """A frame whose crc is right but whose record is not (a bad op)."""
    good = frame(OP_SET, b"k", b"v", ts=1)
    bad = frame(7, b"k", b"", ts=2)
    path = workdir / segment_name(0)
    path.write_bytes(good + bad + good)
    r = run(walcat, "verify", path)
    assert r.returncode == 2
    assert f"{path}: offset {len(good)}: corrupt: unknown op" in r.stdout


def test_max_frame_bytes(walcat, workdir):
    big = frame(OP_SET, b"big", b"x" * 5000, ts=1)
    small = frame(OP_DEL, b"small", ts=2)
    path = workdir / segment_name(0)
    path.write_bytes(small + big + small)
    assert run(walcat, "verify", path).returncode == 0
    r = run(walcat, "verify", "--max-frame-bytes", "4K", path)
    assert r.returncode == 2
    assert f"offset {len(small)}: corrupt: frame length over the cap" in r.stdout
    assert summary(r.stdout)["frames"] == "2"
    r = run(walcat, "verify", "--max-frame-bytes", "banana", path)
    assert r.returncode == 3
    assert "--max-frame-bytes" in r.stderr


def test_dump_text(walcat, segdir, vectors):
    d, _ = segdir
    r = run(walcat, "dump", d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6
    for seq, (line, label) in enumerate(zip(lines, order())):
        op, key, vlen, ts, expire = fcw2util.describe(vectors[label][1])
        exp = "none" if expire is None else str(expire)
        assert line == f"{seq} {op} {key} {vlen} {ts} {exp}"


def test_dump_json(walcat, segdir, vectors):
    d, where = segdir
    r = run(walcat, "dump", "--json", d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6
    for seq, (line, label) in enumerate(zip(lines, order())):
        op, key, vlen, ts, expire = fcw2util.describe(vectors[label][1])
        path, off = where[label]
        assert json.loads(line) == {
            "seq": seq, "file": str(path), "offset": off, "op": op,
            "key": key, "value_len": vlen, "timestamp_ms": ts,
            "expire_at_ms": expire,
        }


KEYS = [
    b"",
    b"plain-key:1",
    b"with space",
    b'quote"back\\slash',
    b"\x00\x01\x1f\x7f",
    "café-ключ".encode(),
    b"\xff\xfe bad \xc3",            # invalid UTF-8
    b"\xed\xa0\x80",                 # an encoded surrogate: invalid
    b"\xc0\xaf",                     # overlong '/': invalid
]


def text_escape(key):
    if not key:
        return '""'
    return "".join(chr(b) if 0x20 < b < 0x7f and b not in b'\\"' else f"\\x{b:02x}"
                   for b in key)


def test_dump_key_escapes(walcat, workdir):
    path = workdir / segment_name(0)
    path.write_bytes(b"".join(frame(OP_EXPIRE, k, ts=i, expire=-5)
                              for i, k in enumerate(KEYS)))
    r = run(walcat, "dump", path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(KEYS)
    for i, (line, key) in enumerate(zip(lines, KEYS)):
        # one field per column, whatever the key holds
        assert line.split(" ") == [str(i), "EXPIRE", text_escape(key), "0", str(i), "none"]

    r = subprocess.run([str(walcat), "dump", "--json", str(path)],
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0
    out = r.stdout.split(b"\n")[:-1]
    assert len(out) == len(KEYS), r.stdout
    for raw, key in zip(out, KEYS):
        # valid JSON even when the key is not UTF-8
        obj = json.loads(raw.decode("utf-8"))
        # invalid bytes are lone surrogates \udcXX: surrogateescape
        # gives back the exact key
        assert obj["key"].encode("utf-8", "surrogateescape") == key
        assert obj["expire_at_ms"] is None
        # control bytes are escaped, never raw
        assert not any(b < 0x20 for b in raw)


def test_dump_problems_go_to_stderr(walcat, segdir):
    d, where = segdir
    path, off = where["C"]
    data = bytearray(path.read_bytes())
    data[off] = ord("X")
    path.write_bytes(bytes(data))
    r = run(walcat, "dump", d)
    assert r.returncode == 2
    assert len(r.stdout.splitlines()) == 5
    assert f"{path}: offset {off}: corrupt: bad magic" in r.stderr


def test_single_file_and_empty_dir(walcat, segdir, workdir):
    d, where = segdir
    path, _ = where["C"]
    r = run(walcat, "verify", path)
    assert r.returncode == 0
    assert summary(r.stdout)["frames"] == "3"
    # a single file is the last file: a torn end is a torn tail
    path.write_bytes(path.read_bytes()[:-3])
    assert run(walcat, "verify", path).returncode == 1
    empty = workdir / "empty"
    empty.mkdir()
    # nothing checked is not "intact": its own status, so that an alert on
    # `walcat verify /var/lib/walrelay` fires for a wrong or empty directory
    r = run(walcat, "verify", empty)
    assert r.returncode == 4
    assert summary(r.stdout)["files"] == "0"
    assert summary(r.stdout)["status"] == "empty"
    assert "no segment files" in r.stderr and "nothing to verify" in r.stderr
    r = run(walcat, "dump", empty)
    assert r.returncode == 4 and r.stdout == ""
    assert "no segment files" in r.stderr


def test_usage_and_io_errors(walcat, workdir):
    r = run(walcat, "verify", workdir / "missing")
    assert r.returncode == 3
    assert "missing" in r.stderr
    assert run(walcat, "dump", workdir / "missing").returncode == 3
    assert run(walcat).returncode == 3
    assert run(walcat, "verify").returncode == 3
    assert run(walcat, "verify", "a", "b").returncode == 3
    assert run(walcat, "frobnicate", workdir).returncode == 3
    assert run(walcat, "verify", "--json", workdir).returncode == 3
    if os.geteuid() != 0:
        unreadable = workdir / segment_name(0)
        unreadable.write_bytes(b"")
        unreadable.chmod(0)
        assert run(walcat, "verify", workdir).returncode == 3


def test_net_commands_refuse_bad_arguments_at_once(walcat):
    """A mistyped address or position is a usage error, said in one line,
    before anything is sent (produce would otherwise retry for ever)."""
    for args, says in (
            (["tail", "localhost"], "'localhost' is not an address"),
            (["tail", "::1:7000"], "put an IPv6 address in brackets"),
            (["tail", "[::1:7000"], "write an IPv6 address as [addr]:port"),
            (["tail", "127.0.0.1:0"], "the port must be a number from 1"),
            (["tail", "--from", "soon", "127.0.0.1:7000"], "--from soon"),
            (["tail", "--from", "-1", "127.0.0.1:7000"], "--from -1"),
            (["produce", "--count", "1", ":7000"], "has no host"),
            (["produce", "--count", "1", "[nope]:7000"],
             "is not an IPv6 address")):
        r = run(walcat, *args, timeout=10)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        assert says in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1, (args, r.stderr)


def test_help(walcat, srcdir):
    r = run(walcat, "--help")
    assert r.returncode == 0
    section = r.stdout.split("commands:")[1].split("\n\n")[0]
    cmds = dict(re.findall(r"^  (\w+) (.*)$", section, re.M))
    # every command, with the argument it takes
    assert set(cmds) == {"dump", "verify", "produce", "tail", "health",
                         "repair", "restore", "snapshot"}, r.stdout
    assert cmds["restore"].endswith(" SOURCE OUTDIR")
    assert cmds["dump"].endswith(" PATH") and "--from-seq SEQ" in cmds["dump"]
    assert cmds["verify"].endswith(" PATH")
    assert cmds["repair"].endswith(" DIR") and "--from ADDR" in cmds["repair"]
    for net in ("produce", "tail", "health"):
        assert cmds[net].endswith(" ADDR"), (net, cmds[net])
    for code in ("0", "1", "2", "3", "4"):
        assert re.search(rf"^  {code}  ", r.stdout, re.M)
    for cmd in cmds:
        r = run(walcat, cmd, "--help")
        assert r.returncode == 0 and f"walcat {cmd} " in r.stdout, (cmd, r.stdout)
    # and the manual page has a section for each, with the same argument
    man = (srcdir / "man" / "walcat.1").read_text()
    for cmd, args in cmds.items():
        last = args.split()[-1]
        assert re.search(rf"^\.B walcat {cmd}\\?$", man, re.M) or \
            f".B {cmd}" in man, (cmd, "missing from man/walcat.1")
        assert re.search(rf"walcat {cmd}\b.*\n(?:.*\n){{0,8}}?.*\b{last}\b",
                         man), (cmd, last)


def open_pty():
    """A pseudo-terminal (master, slave), or skip the test where none can
    be opened (no /dev/ptmx, or no devpts mounted, as in some sandboxes)."""
    try:
        return pty.openpty()
    except OSError as e:
        pytest.skip(f"no pseudo-terminal can be opened here: {e}")


def read_pty(master):
    out = b""
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_progress_on_a_terminal(walcat, segdir):
    d, _ = segdir
    master, slave = open_pty()
    try:
        p = subprocess.Popen([str(walcat), "verify", str(d)], stdout=subprocess.PIPE,
                             stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = -1
        out, _ = p.communicate(timeout=TIMEOUT)
        err = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0
    assert b"[1/3]" in err and b"[3/3]" in err
    # the report itself stays clean
    assert b"\r" not in out


def rss_kib(cmd):
    """Peak RSS (KiB) of cmd, run from a fresh interpreter so that only its
    own child is counted."""
    code = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code] + [str(c) for c in cmd],
                       capture_output=True, text=True, timeout=300)
    rc, rss = r.stdout.split()
    return int(rc), int(rss)


def test_memory_bounded_on_a_large_file(walcat, workdir):
    """A 64 MiB segment is streamed, never loaded: walcat's peak RSS grows
    far less than the file size."""
    one = frame(OP_SET, b"big", os.urandom(64 * 1024 - 64), ts=1, expire=-1)
    path = workdir / segment_name(0)
    with open(path, "wb") as f:
        for _ in range((64 << 20) // len(one) + 1):
            f.write(one)
    size = path.stat().st_size
    small = workdir / "small"
    small.mkdir()
    (small / segment_name(0)).write_bytes(one)

    rc, base = rss_kib([walcat, "verify", small])
    assert rc == 0
    rc, big = rss_kib([walcat, "verify", path])
    assert rc == 0
    assert (big - base) * 1024 < size // 8, (base, big, size)
    assert big * 1024 < size, (base, big, size)
    rc, big = rss_kib([walcat, "dump", "--json", path])
    assert rc == 0
    assert (big - base) * 1024 < size // 8, (base, big, size)


# ---- tail --position-file: a resumable copy --------------------------------

def first_difference(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def test_tail_position_file_copy_survives_interrupts(relays, walcat, workdir):
    """`walcat tail --raw --position-file P >> out`, stopped at random
    moments by SIGINT, SIGTERM and now and then SIGKILL while a stream is
    being produced, and started again each time: in the end `out` is the
    relay's stream byte for byte, no frame missing, repeated or torn."""
    rng = random.Random(20261202)
    r = relays("r", ["--segment-bytes", "1M"], start=True)
    out = workdir / "copy.wal"
    pos = workdir / "copy.pos"
    out.write_bytes(b"")
    # a live stream for the whole test: frames arrive while tail runs
    producer = subprocess.Popen(
        [str(walcat), "produce", "--quiet", "--count", "0", "--rate", "4000",
         "--value-bytes", "300", "--random-values", r.ingest_addr])
    deadline = time.monotonic() + 240
    runs = []

    def tail():
        with open(out, "ab") as f:
            return subprocess.Popen(
                [str(walcat), "tail", "--raw", "--position-file", str(pos),
                 "--from", "earliest", r.listen_addr],
                stdout=f, stderr=subprocess.PIPE)

    try:
        for i in range(48):
            assert time.monotonic() < deadline, f"too slow: {i} runs"
            sig = signal.SIGKILL if i % 8 == 5 else \
                rng.choice((signal.SIGINT, signal.SIGTERM))
            before = out.stat().st_size
            # stop it once the copy has grown by a random amount (at
            # least a byte: it has connected and is copying)
            grow = rng.choice((1, rng.randrange(1, 4096),
                               rng.randrange(1, 400000)))
            t = tail()
            wait_until(lambda: out.stat().st_size >= before + grow or
                       t.poll() is not None, 30,
                       f"run {i}: the copy to grow by {grow} bytes")
            t.send_signal(sig)
            _, err = t.communicate(timeout=30)
            runs.append((i, sig, t.returncode, err.decode(errors="replace")))
    finally:
        producer.send_signal(signal.SIGTERM)
        producer.wait(30)

    # everything the relay got is durable: copy the rest, then compare
    wait_until(lambda: (lambda st: st["durable"] == st["next"])(r.status()),
               30, "the last frames to be durable")
    total = sum(len(f) for f in store_frames(r.datadir))
    t = tail()
    try:
        wait_until(lambda: out.stat().st_size >= total or
                   t.poll() is not None, 60, "the copy to catch up")
    finally:
        t.send_signal(signal.SIGTERM)
        _, err = t.communicate(timeout=30)
    runs.append(("last", signal.SIGTERM, t.returncode,
                 err.decode(errors="replace")))

    store = b"".join(store_frames(r.datadir))
    copy = out.read_bytes()
    same = copy == store
    assert same, (f"the copy ({len(copy)} bytes) differs from the store "
                  f"({len(store)} bytes) from byte "
                  f"{first_difference(copy, store)}; runs: {runs}")
    # a stop by SIGINT or SIGTERM is a clean end, exit status 0
    for i, sig, rc, err in runs:
        assert sanitizer_report(err) is None, (i, err)
        if sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL, (i, rc, err)
        else:
            assert rc == 0, (i, sig, rc, err)
    seq, _, nbytes, _, _ = pos.read_text().split()
    assert int(seq) == len(store_frames(r.datadir))
    assert int(nbytes) == len(store)


def test_tail_position_file_refuses_a_shorter_copy(relays, walcat, workdir):
    """Resuming into a copy that lost bytes the position counts (opened
    with > instead of >>) is refused; bytes beyond the saved position (a
    kill -9 between the write and the save) are cut and fetched again."""
    r = relays("r", start=True)
    subprocess.run([str(walcat), "produce", "--quiet", "--count", "50",
                    r.ingest_addr], check=True, timeout=TIMEOUT)
    r.wait_durable(50)
    store = store_frames(r.datadir)
    out = workdir / "copy.wal"
    pos = workdir / "copy.pos"

    def tail(count, mode="ab"):
        with open(out, mode) as f:
            return subprocess.run(
                [str(walcat), "tail", "--raw", "--position-file", str(pos),
                 "--from", "0", "--count", str(count), r.listen_addr],
                stdout=f, stderr=subprocess.PIPE, timeout=TIMEOUT)

    assert tail(20).returncode == 0
    assert out.read_bytes() == b"".join(store[:20])
    # as if killed after writing 3 more frames and half of one, unsaved
    with open(out, "ab") as f:
        f.write(b"".join(store[20:23]) + store[23][:7])
    p = tail(10)
    assert p.returncode == 0, p.stderr
    assert b"cut " in p.stderr
    assert out.read_bytes() == b"".join(store[:30])
    # > empties the copy: refused, nothing written, position kept
    saved = pos.read_text()
    p = tail(10, "wb")
    assert p.returncode == 3
    assert b"fewer than the" in p.stderr
    assert out.read_bytes() == b"" and pos.read_text() == saved
    # a damaged position file is an error, not a silent restart
    pos.write_text("garbage\n")
    p = tail(10)
    assert p.returncode == 3 and b"not a position file" in p.stderr
# ---- against a running relay --------------------------------------------

from relayutil import relay_factory, segment_names, wait_until  # noqa: E402


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir, "relay", start=False)


def token_file(workdir, name, token):
    p = workdir / name
    p.write_text(token + "\n")
    p.chmod(0o600)
    return p


@pytest.mark.parametrize("count,extra", [
    (10, []),                       # one small batch: all sent, then reset
    (50000, []),                    # many batches: writes fail at once
    (300, ["--rate", "3000"]),      # paced: small batches
])
def test_produce_refused_is_a_failure(relays, walcat, workdir, count, extra):
    """A relay that wants a publish token refuses a producer without one:
    produce says so and exits 2, quickly, instead of reporting success or
    reconnecting for ever; the relay stored nothing."""
    pub = token_file(workdir, "pub", "publish-token-0123456789abcdef")
    r = relays(args=["--publish-token-file", pub])
    r.start()
    res = run(walcat, "produce", "--count", count, *extra, r.ingest_addr,
              timeout=30)
    assert res.returncode == 2, res.stderr
    assert "refuse" in res.stderr and "--token-file" in res.stderr, res.stderr
    assert r.status()["next"] == 0
    # with the token, the same command succeeds and everything is stored
    res = run(walcat, "produce", "--count", count, *extra, "--token-file",
              pub, r.ingest_addr, timeout=60)
    assert res.returncode == 0, res.stderr
    r.wait_durable(count)
    assert r.stop() == 0


def test_produce_wrong_token_is_refused(relays, walcat, workdir):
    pub = token_file(workdir, "pub", "publish-token-0123456789abcdef")
    bad = token_file(workdir, "bad", "not-the-publish-token-000000000")
    r = relays(args=["--publish-token-file", pub])
    r.start()
    res = run(walcat, "produce", "--count", 5, "--token-file", bad,
              r.ingest_addr, timeout=30)
    assert res.returncode == 2, res.stderr
    assert r.status()["next"] == 0


def test_produce_progress_on_a_terminal(relays, walcat):
    r = relays()
    r.start()
    master, slave = open_pty()
    try:
        p = subprocess.Popen([str(walcat), "produce", "--count", "20000",
                              "--rate", "20000", r.ingest_addr],
                             stdout=subprocess.PIPE, stderr=slave,
                             stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = -1
        # read the terminal until the producer has exited and closed it
        err = b""
        while True:
            if not select.select([master], [], [], TIMEOUT)[0]:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: the last writer closed it
                break
            if not chunk:
                break
            err += chunk
        out, _ = p.communicate(timeout=TIMEOUT)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0, err
    # progress lines, rewritten in place, then the summary
    assert b"\r\x1b[Kwalcat: produce: " in err, err[-500:]
    assert b"/20000 frames (" in err, err[-500:]
    assert b"walcat: produce: 20000 frames," in err
    assert out == b""
    # not on a pipe: only the summary
    res = run(walcat, "produce", "--count", 100, r.ingest_addr)
    assert res.returncode == 0
    assert "\r" not in res.stderr and res.stderr.count("\n") == 1
    r.wait_durable(20100)


def test_dump_from_seq_numbers_with_the_relays_sequences(relays, walcat):
    """dump --from-seq on a relay's data directory prints the relay's own
    sequence numbers (those of /v1/status and subscribers), also after
    retention deleted the first segments."""
    r = relays(args=["--segment-bytes", "4k", "--retain-bytes", "16k"])
    r.start()
    res = run(walcat, "produce", "--count", 2000, "--value-bytes", 40,
              r.ingest_addr)
    assert res.returncode == 0, res.stderr
    r.wait_durable(2000)
    assert r.stop() == 0
    names = segment_names(r.datadir)
    first = int(names[0].split("-")[1])
    assert first > 0, "retention should have deleted the first segments"
    # plain dump counts from 0; --from-seq uses the names' sequences
    plain = run(walcat, "dump", r.datadir).stdout.splitlines()
    assert plain[0].split()[0] == "0"
    res = run(walcat, "dump", "--from-seq", first, r.datadir)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [int(l.split()[0]) for l in lines] == list(range(first, 2000))
    assert [l.split(" ", 1)[1] for l in lines] == [l.split(" ", 1)[1] for l in plain]
    # from the middle of a later file, in JSON too
    mid = first + (2000 - first) // 2
    res = run(walcat, "dump", "--json", "--from-seq", mid, r.datadir)
    seqs = [json.loads(l)["seq"] for l in res.stdout.splitlines()]
    assert seqs == list(range(mid, 2000))
    # before the earliest: gone, said so
    res = run(walcat, "dump", "--from-seq", first - 1, r.datadir)
    assert res.returncode == 3 and "gone" in res.stderr
    res = run(walcat, "dump", "--from-seq", "soon", r.datadir)
    assert res.returncode == 3 and "--from-seq soon" in res.stderr


def test_health(relays, walcat):
    r = relays()
    r.start()
    http = f"127.0.0.1:{r.http_port}"
    res = run(walcat, "health", http)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{http}/healthz: HTTP/1.") and " 200 " in res.stdout
    res = run(walcat, "health", "--path", "/nope", http)
    assert res.returncode == 1 and "404" in res.stdout
    assert r.stop() == 0
    res = run(walcat, "health", http)
    assert res.returncode == 1
    assert run(walcat, "health", "nohost").returncode == 3
