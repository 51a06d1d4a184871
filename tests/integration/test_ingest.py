"""Ingest and storage: what reaches the relay is stored byte for byte, in
order, under the right names; bad input is refused and counted; crashes,
torn tails and a full disk lose nothing that was durable; pull mode
reconnects with backoff; start-up and shutdown checks.

Every test starts the real daemon on loopback ports with its own data
directory. Nothing waits by sleeping: each wait is for a condition (a
status field, a metric, a closed socket, a process exit) with a deadline.
"""

import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib

import pytest

import fcw2util
from fcw2util import OP_DEL, OP_EXPIRE, OP_SET, frame
from relayutil import (Relay, connect, free_port, recv_frames, recv_line,
                       relay_factory, segment_names, split_frames, wait_until)

TIMEOUT = 60
SEG_RE = re.compile(r"^segment-(\d{20})-(\d+)\.wal$")


# ---- helpers ----------------------------------------------------------

# ingest refusals, by reason: auth, limit, timeout, tls
UREJ = 'walrelay_upstream_rejected_total{reason="%s"}'


def rejected(r):
    """Ingest connections refused so far, whatever the reason."""
    return sum(v for k, v in r.metrics().items()
               if k.startswith("walrelay_upstream_rejected_total{"))


@pytest.fixture
def relays(walrelay, workdir):
    """Factory of Relay objects, not yet started."""
    yield from relay_factory(walrelay, workdir, "relay", start=False)


@pytest.fixture(scope="module")
def vectors(vectors_path):
    return fcw2util.load_vectors(vectors_path)


def run(*args, **kw):
    kw.setdefault("timeout", TIMEOUT)
    return subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, **kw)


def mkframes(n, tag, vbytes=20, start=0):
    """n distinct valid frames (SET, DEL, EXPIRE mixed), tagged by tag."""
    out = []
    for i in range(start, start + n):
        key = f"{tag}-{i:06d}".encode()
        if i % 7 == 3:
            out.append(frame(OP_DEL, key, ts=1000 + i))
        elif i % 7 == 5:
            out.append(frame(OP_EXPIRE, key, ts=1000 + i, expire=99000 + i))
        else:
            v = bytes((i + j) % 251 for j in range(vbytes))
            out.append(frame(OP_SET, key, v, ts=1000 + i,
                             expire=-1 if i % 2 else 5000 + i))
    return out


def reframe(payload, flags=0):
    """A frame around payload with a correct frame crc."""
    head = b"FCW2" + struct.pack("<BI", flags, len(payload)) + payload
    return head + struct.pack("<I", zlib.crc32(head))


def nodelay(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def wait_closed(s, timeout=10.0):
    """Read until the relay closes the connection (FIN or RST); returns
    what it sent meanwhile (the ingest port never sends anything)."""
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            got += c
    except (ConnectionResetError, BrokenPipeError):
        pass
    return got


def send_stream(addr, data, line=None):
    """One publisher connection: optional auth line, data, then a clean
    end; returns once the relay has closed its side (so it has taken every
    whole frame that arrived)."""
    s = nodelay(connect(addr))
    try:
        if line is not None:
            s.sendall(line)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) == b""
    finally:
        s.close()


def try_send(s, data):
    """Send what the relay still takes; it may close at any point."""
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_store(datadir):
    """Check the segment names against their contents and return
    (names, frames). Each name's base sequence must be the number of frames
    in the files before it."""
    names = segment_names(datadir)
    frames = []
    for n in names:
        m = SEG_RE.match(n)
        assert m, f"bad segment name {n}"
        assert int(m.group(1)) == len(frames), \
            f"{n}: base sequence {int(m.group(1))}, but {len(frames)} frames before it"
        with open(os.path.join(datadir, n), "rb") as f:
            data = f.read()
        assert data, f"{n} is empty"
        frames += split_frames(data)
    return names, frames


def verify(walcat, path):
    r = run(walcat, "verify", path)
    return r.returncode, r.stdout + r.stderr


def metrics_delta(before, after, name):
    return after.get(name, 0.0) - before.get(name, 0.0)


def write_token(path, *tokens):
    path.write_text("".join(t + "\n" for t in tokens))
    return path


# ---- 1. produce and vectors land byte-identical -----------------------

def tee_produce(walcat, relay, args):
    """Run walcat produce through a loopback proxy to the relay's ingest
    port and return the exact bytes it sent. The proxy reads one block,
    forwards it, and reads the next, so the relay sees the producer's pace;
    it returns after the relay has closed the connection."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(TIMEOUT)
    port = ls.getsockname()[1]
    p = subprocess.Popen([str(walcat), "produce", "--quiet", *map(str, args),
                          f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    try:
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        up = nodelay(connect(relay.ingest_addr))
        buf = bytearray()
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            buf += d
            up.sendall(d)
        up.shutdown(socket.SHUT_WR)
        assert wait_closed(up) == b""
        up.close()
        c.close()
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err
    finally:
        ls.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    return bytes(buf)


def test_produce_and_vectors_stored_byte_identical(relays, walcat, vectors):
    r = relays(args=["--segment-bytes", "64k"])
    t0 = int(time.time() * 1000)
    r.start()
    expected = []
    runs = [
        (["--value-bytes", 0, "--count", 40], False),
        (["--value-bytes", 100, "--count", 300, "--compress"], True),
        (["--value-bytes", 4096, "--count", 60], False),
        (["--value-bytes", 4096, "--count", 60, "--compress"], True),
        (["--value-bytes", 4096, "--count", 20, "--compress",
          "--random-values"], False),
        (["--value-bytes", 65536, "--count", 12], False),
        (["--value-bytes", 65536, "--count", 12, "--compress"], True),
        (["--value-bytes", 1048576, "--count", 2], False),
        (["--value-bytes", 1048576, "--count", 2, "--compress"], True),
    ]
    for i, (args, compressed) in enumerate(runs):
        sent = split_frames(tee_produce(walcat, r, args + ["--seed", i + 1]))
        assert len(sent) == args[3], args
        # the test means what it says: --compress gave LZ4 frames where it
        # pays off (compressible values), and never without it
        nlz4 = sum(f[4] & 1 for f in sent)
        if compressed:
            assert nlz4 > 0, args
        if "--compress" not in args:
            assert nlz4 == 0, args
        expected += sent
        # between the produce runs, the vectors from a plain socket (E and
        # F are LZ4), in a different order each time
        labels = sorted(vectors)
        random.Random(i).shuffle(labels)
        vec = [vectors[lb][0] for lb in labels]
        send_stream(r.ingest_addr, b"".join(vec))
        expected += vec

    r.wait_durable(len(expected), timeout=TIMEOUT)
    st = r.status()
    assert st["next"] == st["durable"] == len(expected)
    assert st["earliest"] == 0

    names, stored = read_store(r.datadir)
    assert len(stored) == len(expected)
    for seq, (a, b) in enumerate(zip(stored, expected)):
        assert a == b, f"frame {seq} differs"
    # rotations by size: every sealed segment reached --segment-bytes
    assert len(names) >= 8, names
    for n in names[:-1]:
        assert os.path.getsize(os.path.join(r.datadir, n)) >= 64 * 1024, n
    t1 = int(time.time() * 1000)
    created = [int(SEG_RE.match(n).group(2)) for n in names]
    assert created == sorted(created)
    assert t0 <= created[0] and created[-1] <= t1, (t0, created, t1)
    # /v1/status lists the same segments
    assert [s["name"] for s in st["segments"]] == names
    assert [s["first"] for s in st["segments"]] == \
        [int(SEG_RE.match(n).group(1)) for n in names]

    rc, out = verify(walcat, r.datadir)
    assert rc == 0, out
    assert f"frames={len(expected)} " in out, out

    # a resuming subscriber from 0 gets the same bytes
    s = connect(r.listen_addr)
    s.sendall(b"FCWAL-SUB/1 - 0\n")
    assert recv_line(s).startswith(f"FCWAL-OK/1 start=0 earliest=0 next={len(expected)} ")
    got = recv_frames(s, len(expected))
    s.close()
    assert got == expected
    assert r.stop() == 0


# ---- 2. the auth line --------------------------------------------------

def test_auth_line(relays, workdir):
    tokfile = write_token(workdir / "publish.tokens", "old-token", "s3cret")
    subfile = write_token(workdir / "subscribe.tokens", "subtok")
    r = relays(args=["--publish-token-file", tokfile, "--subscribe-token-file",
                     subfile, "--auth-timeout", "5s"])
    r.start()
    stored = []

    # the auth line one byte per TCP segment, then frames
    batch = mkframes(5, "split")
    s = nodelay(connect(r.ingest_addr))
    for b in b"FCWAL-AUTH/1 s3cret\n":
        s.sendall(bytes([b]))
    s.sendall(b"".join(batch))
    s.shutdown(socket.SHUT_WR)
    assert wait_closed(s) == b""
    s.close()
    stored += batch
    r.wait_durable(len(stored))

    # CR LF, and the other token of the file (rotation)
    batch = mkframes(3, "crlf")
    send_stream(r.ingest_addr, b"".join(batch), b"FCWAL-AUTH/1 old-token\r\n")
    stored += batch
    r.wait_durable(len(stored))
    assert rejected(r) == 0

    refusals = [
        ("wrong token", b"FCWAL-AUTH/1 s3cret2\n",
         "refused: token is not a publish token"),
        ("token with a trailing space", b"FCWAL-AUTH/1 s3cret \n",
         "refused: token is not a publish token"),
        ("no auth line", b"",
         "refused: frames without the auth line"),
        # 1024 bytes before the LF: one too many
        ("1024-byte line", b"FCWAL-AUTH/1 " + b"x" * (1024 - 13) + b"\n",
         "refused: auth line longer than 1023 bytes"),
        # 1023 bytes is a line, just not a valid token
        ("1023-byte line", b"FCWAL-AUTH/1 " + b"x" * (1023 - 13) + b"\n",
         "refused: token is not a publish token"),
        ("2000 bytes, no LF", b"FCWAL-AUTH/1 " + b"y" * 2000,
         "refused: auth line longer than 1023 bytes"),
        ("a subscribe token", b"FCWAL-AUTH/1 subtok\n",
         "refused: token is not a publish token"),
        ("the subscriber handshake", b"FCWAL-SUB/1 s3cret 0\n",
         "FCWAL-SUB/1 is for the subscriber port"),
        ("something else", b"GET / HTTP/1.0\r\n\r\n",
         "refused: neither an auth line nor an FCW2 frame"),
    ]
    for i, (what, line, logmsg) in enumerate(refusals):
        before = r.metrics()
        nlog = r.read_log().count(logmsg)
        s = nodelay(connect(r.ingest_addr))
        try_send(s, line + b"".join(mkframes(4, f"refused{i}")))
        # closed by the relay without a word, while we still hold our side
        assert wait_closed(s) == b"", what
        s.close()
        wait_until(lambda: r.metric(UREJ % "auth") ==
                   before.get(UREJ % "auth", 0) + 1, 10,
                   f"the refusal of {what} to be counted")
        after = r.metrics()
        assert metrics_delta(before, after, "walrelay_frames_received_total") == 0, what
        assert after["walrelay_next_sequence"] == len(stored), what
        wait_until(lambda: r.read_log().count(logmsg) == nlog + 1, 5,
                   f"the log line for {what}")

    assert r.stop() == 0
    names, frames = read_store(r.datadir)
    assert frames == stored


def test_no_token_line_or_frames_bytewise(relays):
    """Without publish tokens the first bytes may be the auth line (any
    token) or a frame; either works when it arrives one byte at a time."""
    r = relays()
    r.start()
    a, b = mkframes(3, "bytewise-a"), mkframes(3, "bytewise-b")
    for line, batch in ((b"", a), (b"FCWAL-AUTH/1 anything\n", b)):
        s = nodelay(connect(r.ingest_addr))
        for x in line + b"".join(batch):
            s.sendall(bytes([x]))
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s) == b""
        s.close()
    r.wait_durable(6)
    assert rejected(r) == 0
    assert r.stop() == 0
    assert read_store(r.datadir)[1] == a + b


def test_auth_timeout(relays, workdir):
    tokfile = write_token(workdir / "publish.tokens", "s3cret")
    r = relays(args=["--publish-token-file", tokfile, "--auth-timeout", "300ms"])
    r.start()
    s = connect(r.ingest_addr)
    s.sendall(b"FCWAL-AUTH/1 s3c")      # never finished
    t = time.monotonic()
    assert wait_closed(s, timeout=10) == b""
    assert time.monotonic() - t >= 0.25
    s.close()
    wait_until(lambda: r.metric(UREJ % "timeout") == 1, 5,
               "the timeout to be counted")
    assert rejected(r) == 1
    assert "refused: no auth line within 300 ms" in r.read_log()
    assert r.status()["next"] == 0
    assert r.stop() == 0


# ---- 3. a corrupt frame in the middle of a stream ---------------------

def corruptions(vectors):
    """(name, bad frame bytes, reason the relay logs)."""
    good = frame(OP_SET, b"victim", b"v" * 30, ts=7)
    rec = bytearray(good[9:-4])
    out = []
    b = bytearray(good)
    b[-1] ^= 0x55
    out.append(("frame crc", bytes(b), "frame crc mismatch"))
    r = bytearray(rec)
    r[-1] ^= 0x01
    out.append(("record crc", reframe(bytes(r)), "record crc mismatch"))
    out.append(("magic", b"FCW3" + good[4:], "bad magic"))
    body = bytes([4]) + bytes(rec[1:-4])
    out.append(("op", reframe(body + struct.pack("<I", zlib.crc32(body))),
                "unknown op"))
    # value_len one more than what is there
    body = bytearray(rec[:-4])
    struct.pack_into("<I", body, 5, 31)
    body = bytes(body)
    out.append(("lengths", reframe(body + struct.pack("<I", zlib.crc32(body))),
                "record lengths inconsistent with payload"))
    # a header announcing more than --max-frame-bytes: refused on the header
    out.append(("over the cap", b"FCW2\x00" + struct.pack("<I", 4 << 20) +
                b"z" * 100, "frame length over the cap"))
    # the LZ4 vector with a literal-length byte changed, crc made right
    f = bytearray(vectors["F"][0])
    payload = bytearray(f[9:-4])
    payload[4] = 0xF0
    out.append(("lz4", reframe(bytes(payload), flags=1), "LZ4 block"))
    return out


def test_corrupt_frame_mid_stream(relays, vectors):
    r = relays(args=["--max-frame-bytes", "1M"])
    r.start()
    stored = []
    # a subscriber sees exactly the stored frames, never a bad one
    sub = connect(r.listen_addr)
    sub.sendall(b"FCWAL-SUB/1 - 0\n")
    assert recv_line(sub).startswith("FCWAL-OK/1 start=0 ")
    for i, (name, bad, reason) in enumerate(corruptions(vectors)):
        before = r.metrics()
        good = mkframes(4, f"c{i}", vbytes=10 + i)
        if i % 3 == 2:
            # the LZ4 vector F is among the frames before the bad one
            good.append(vectors["F"][0])
        after_bad = mkframes(3, f"after{i}")
        s = nodelay(connect(r.ingest_addr))
        if i % 2 == 0:
            # all in one write: the good frames and the bad one arrive together
            try_send(s, b"".join(good) + bad + b"".join(after_bad))
        else:
            # the good frames are stored first, the bad one comes later
            s.sendall(b"".join(good))
            r.wait_durable(len(stored) + len(good))
            try_send(s, bad + b"".join(after_bad))
        assert wait_closed(s) == b"", name
        s.close()
        stored += good
        r.wait_durable(len(stored))
        wait_until(lambda: r.metric("walrelay_bad_frames_total") ==
                   before["walrelay_bad_frames_total"] + 1, 10,
                   f"the {name} bad frame to be counted")
        offset = sum(map(len, good))
        pat = re.compile(rf"up-\d+: bad frame at byte {offset} of the connection: "
                         rf"{re.escape(reason)}.*{len(good)} frames before it are "
                         rf"stored, nothing after")
        wait_until(lambda: len(pat.findall(r.read_log())) >= 1, 5,
                   f"the log line naming byte {offset} ({name})")
        st = r.status()
        assert st["next"] == len(stored), name

    # a new connection afterwards is accepted and stored after them
    tail = mkframes(6, "afterwards")
    send_stream(r.ingest_addr, b"".join(tail))
    stored += tail
    r.wait_durable(len(stored))
    assert r.metric("walrelay_bad_frames_total") == len(corruptions(vectors))
    assert r.stop() == 0
    _, frames = read_store(r.datadir)
    assert frames == stored
    # the stop closed the subscriber after everything it was owed
    assert split_frames(wait_closed(sub)) == stored
    sub.close()


def test_frame_cap_is_inclusive(relays):
    """--max-frame-bytes is the largest whole frame accepted (header and
    crc included): a frame of exactly that size is stored, one byte more is
    refused on its header."""
    r = relays(args=["--max-frame-bytes", "64k"])
    r.start()
    fit = frame(OP_SET, b"cap", b"c" * (65536 - 13 - 25 - 3 - 4))
    over = frame(OP_SET, b"cap", b"c" * (65536 - 13 - 25 - 3 - 4 + 1))
    assert len(fit) == 65536 and len(over) == 65537
    send_stream(r.ingest_addr, fit)
    r.wait_durable(1)
    s = nodelay(connect(r.ingest_addr))
    try_send(s, over[:9])           # the header alone is enough
    assert wait_closed(s) == b""
    s.close()
    wait_until(lambda: r.metric("walrelay_bad_frames_total") == 1, 10,
               "the frame over the cap to be refused")
    assert "bad frame at byte 0 of the connection: frame length over the cap" in r.read_log()
    assert r.stop() == 0
    assert read_store(r.datadir)[1] == [fit]


# ---- 4. a new publisher replaces the current one ----------------------

def test_new_publisher_replaces_old(relays, workdir):
    tokfile = write_token(workdir / "publish.tokens", "s3cret")
    r = relays(args=["--publish-token-file", tokfile])
    r.start()
    a = mkframes(4, "first")
    b = mkframes(5, "second")
    half = len(a[3]) // 2

    c1 = nodelay(connect(r.ingest_addr))
    c1.sendall(b"FCWAL-AUTH/1 s3cret\n" + b"".join(a[:3]) + a[3][:half])
    r.wait_durable(3)
    p1 = f"127.0.0.1:{c1.getsockname()[1]}"
    assert r.status()["upstream"]["peer"] == p1

    # neither a connection that has not authenticated yet nor one with a
    # wrong token takes over
    idle = connect(r.ingest_addr)
    bad = nodelay(connect(r.ingest_addr))
    try_send(bad, b"FCWAL-AUTH/1 nope\n" + b"".join(b))
    assert wait_closed(bad) == b""
    bad.close()
    wait_until(lambda: r.metric(UREJ % "auth") == 1, 10,
               "the wrong token to be refused")
    st = r.status()
    assert st["upstream"]["peer"] == p1 and st["upstream"]["connected"]
    assert r.metric("walrelay_upstream_replaced_total") == 0

    # the second authenticated publisher takes over
    c2 = nodelay(connect(r.ingest_addr))
    c2.sendall(b"FCWAL-AUTH/1 s3cret\n" + b"".join(b[:2]))
    assert wait_closed(c1) == b""       # the first is closed
    r.wait_durable(5)
    assert r.status()["upstream"]["peer"] == f"127.0.0.1:{c2.getsockname()[1]}"
    # the rest of the half frame and more on the old connection go nowhere
    try_send(c1, a[3][half:] + b"".join(mkframes(3, "late")))
    c1.close()
    c2.sendall(b"".join(b[2:]))
    c2.shutdown(socket.SHUT_WR)
    assert wait_closed(c2) == b""
    c2.close()
    r.wait_durable(8)

    m = r.metrics()
    assert m["walrelay_upstream_replaced_total"] == 1
    assert m["walrelay_partial_frames_dropped_total"] == 1
    assert m["walrelay_next_sequence"] == 8
    log = r.read_log()
    assert re.search(rf"dropped a partial frame of {half} bytes at close", log), log
    assert re.search(r"replaced by up-\d+", log), log
    idle.close()
    assert r.stop() == 0
    _, frames = read_store(r.datadir)
    assert frames == a[:3] + b


# ---- 5. kill -9 while ingesting ---------------------------------------

class ResumingSubscriber(threading.Thread):
    """FCWAL-SUB/1 from its own position, reconnecting whenever the relay
    goes away; records every frame it receives (index = sequence)."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr = addr
        self.frames = []
        self.epoch = None
        self.errors = []
        self.connects = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def count(self):
        with self.lock:
            return len(self.frames)

    def snapshot(self):
        with self.lock:
            return list(self.frames)

    def run(self):
        while not self.done.is_set():
            try:
                s = connect(self.addr, timeout=2)
            except OSError:
                # the relay is down: try again shortly
                self.done.wait(0.02)
                continue
            try:
                self.session(s)
            except (OSError, EOFError):
                pass
            finally:
                s.close()

    def session(self, s):
        frm = self.count()
        line = f"FCWAL-SUB/1 - {frm}"
        if self.epoch is not None:
            line += f" epoch={self.epoch}"
        s.sendall(line.encode() + b"\n")
        reply = recv_line(s)
        m = re.match(r"FCWAL-OK/1 start=(\d+) earliest=\d+ next=\d+ epoch=([0-9a-f]{16})$",
                     reply)
        if not m or int(m.group(1)) != frm:
            self.errors.append(f"asked from {frm}: {reply}")
            self.done.set()
            return
        if self.epoch is None:
            self.epoch = m.group(2)
        self.connects += 1
        s.settimeout(0.5)
        buf = bytearray()
        while not self.done.is_set():
            try:
                d = s.recv(1 << 16)
            except socket.timeout:
                continue
            if not d:
                return      # a partial frame at the end is dropped
            buf += d
            off = 0
            got = []
            while len(buf) - off >= 13:
                plen = int.from_bytes(buf[off + 5:off + 9], "little")
                end = off + 13 + plen
                if end > len(buf):
                    break
                got.append(bytes(buf[off:end]))
                off = end
            del buf[:off]
            if got:
                with self.lock:
                    self.frames += got


def test_kill9_while_ingesting(relays, walcat):
    kills = 24
    r = relays(args=["--fsync", "always", "--segment-bytes", "64k"])
    r.start()
    epoch = r.status()["epoch"]
    prod = subprocess.Popen([str(walcat), "produce", "--quiet", "--count", "0",
                             "--rate", "5000", "--value-bytes", "200",
                             "--backoff-ms", "20", r.ingest_addr],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sub = ResumingSubscriber(r.listen_addr)
    sub.start()
    rng = random.Random(20240607)
    try:
        for k in range(kills):
            base = r.status()["durable"]
            target = base + rng.choice([0, 1, 5, 20, 50, 120, 300, 700])
            r.wait_durable(target, timeout=TIMEOUT)
            # and sometimes let the subscriber catch up first
            if k % 3 == 0:
                wait_until(lambda: sub.count() >= target, TIMEOUT,
                           "the subscriber to reach the kill point")
            r.kill9()
            sessions = sub.connects
            # the producer waits while the relay restarts, so that the
            # checks below see a store nobody writes to
            prod.send_signal(signal.SIGSTOP)
            seen = sub.snapshot()
            rc, out = verify(walcat, r.datadir)
            assert rc in (0, 1), out          # 1: a torn tail, cut at start

            r.start()
            st = r.status()
            assert st["epoch"] == epoch, "fsync=always: the epoch must not change"
            # everything that was durable before the kill is still there
            assert st["next"] >= target, (st["next"], target)
            assert st["next"] >= len(seen)
            assert st["durable"] == st["next"]
            rc, out = verify(walcat, r.datadir)
            assert rc == 0, out
            _, frames = read_store(r.datadir)
            assert len(frames) == st["next"]
            # every frame the subscriber saw is there, same sequence and bytes
            for seq, f in enumerate(seen):
                assert frames[seq] == f, f"kill {k}: frame {seq} differs from what a subscriber got"
            # the subscriber resumes and gets exactly the store
            wait_until(lambda: (sub.connects > sessions and
                                sub.count() >= len(frames)) or sub.errors,
                       TIMEOUT, "the subscriber to resume and catch up")
            assert not sub.errors, sub.errors
            assert sub.snapshot()[:len(frames)] == frames
            prod.send_signal(signal.SIGCONT)
        assert sub.connects >= kills
    finally:
        prod.send_signal(signal.SIGCONT)
        prod.kill()
        prod.wait()
        sub.done.set()
        sub.join(10)
    assert r.stop() == 0
    _, frames = read_store(r.datadir)
    assert sub.snapshot() == frames[:sub.count()]


# ---- 6. a torn tail is cut at start -----------------------------------

def start_read_stop(r):
    r.start()
    st = r.status()
    assert r.stop() == 0
    return st


@pytest.mark.parametrize("layout", ["shared", "alone"])
def test_torn_tail_every_offset(relays, walcat, workdir, layout):
    """The newest segment is truncated at every byte offset of its last
    frame (43 bytes). 'shared': the frame follows others in the same file;
    'alone': it is the only frame of the newest file (the file goes and the
    one before it is kept whole)."""
    r = relays("orig")
    body = mkframes(30, "torn", vbytes=50)
    last = frame(OP_DEL, b"k", ts=9)
    assert len(last) == 43
    r.start()
    if layout == "shared":
        send_stream(r.ingest_addr, b"".join(body + [last]))
        r.wait_durable(31)
        assert r.stop() == 0
    else:
        send_stream(r.ingest_addr, b"".join(body))
        r.wait_durable(30)
        assert r.stop() == 0
        r.start()
        send_stream(r.ingest_addr, last)
        r.wait_durable(31)
        assert r.stop() == 0
    names, frames = read_store(r.datadir)
    assert frames == body + [last]
    assert len(names) == (1 if layout == "shared" else 2)
    newest = names[-1]
    size = os.path.getsize(os.path.join(r.datadir, newest))
    epoch = start_read_stop(r)["epoch"]

    for off in range(len(last)):
        d = workdir / f"case{off}"
        shutil.copytree(r.datadir, d)
        with open(d / newest, "r+b") as f:
            f.truncate(size - len(last) + off)
        c = Relay(r.binary, d, workdir / f"case{off}.log")
        try:
            st = start_read_stop(c)
        finally:
            c.kill9()
        assert st["next"] == 30 and st["durable"] == 30, off
        # the frames before are intact; sequences match the names
        _, frames = read_store(d)
        assert frames == body, off
        rc, out = verify(walcat, d)
        assert rc == 0, out
        log = c.read_log()
        if off > 0:
            if layout == "shared":
                assert re.search(rf"{newest}: cutting {off} bytes at offset "
                                 rf"{size - len(last)} \(torn frame at sequence 30\)",
                                 log), log
            else:
                assert re.search(rf"{newest}: cutting {off} bytes at offset 0 ", log), log
                assert f"{newest}: removed segment left without a whole frame" in log, log
        else:
            assert "cutting" not in log, log
        # the frame was lost: a resuming subscriber must be told
        assert st["epoch"] != epoch, off
        shutil.rmtree(d)


def test_corrupt_tail_is_cut(relays, walcat, workdir):
    """A whole-length last frame with a bad crc, or garbage after the last
    frame, is cut back to the last valid frame too."""
    r = relays("orig")
    body = mkframes(10, "ct", vbytes=40)
    r.start()
    send_stream(r.ingest_addr, b"".join(body))
    r.wait_durable(10)
    assert r.stop() == 0
    names, _ = read_store(r.datadir)
    seg = names[-1]
    size = os.path.getsize(os.path.join(r.datadir, seg))
    cases = [
        ("flipped crc", lambda b: b[:-1] + bytes([b[-1] ^ 1]), 9, len(body[-1])),
        ("garbage", lambda b: b + b"\x00" * 17, 10, 17),
        ("second magic", lambda b: b + b"FCW2\x00\xff", 10, 6),
    ]
    for i, (name, edit, keep, cut) in enumerate(cases):
        d = workdir / f"c{i}"
        shutil.copytree(r.datadir, d)
        p = d / seg
        p.write_bytes(edit(p.read_bytes()))
        c = Relay(r.binary, d, workdir / f"c{i}.log")
        try:
            st = start_read_stop(c)
        finally:
            c.kill9()
        assert st["next"] == keep, name
        _, frames = read_store(d)
        assert frames == body[:keep], name
        assert re.search(rf"{seg}: cutting {cut} bytes at offset {sum(map(len, body[:keep]))}",
                         c.read_log()), name
        assert verify(walcat, d)[0] == 0, name
    assert os.path.getsize(os.path.join(r.datadir, seg)) == size


# ---- 7. disk full ------------------------------------------------------

def test_disk_full_pauses_and_resumes(relays, walcat):
    limit = 1 << 20

    def small_fsize():
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (limit, resource.RLIM_INFINITY))
    r = relays(args=["--segment-bytes", "4M", "--ingest-pause-bytes", "2M",
                     "--ingest-resume-bytes", "1M"], preexec_fn=small_fsize)
    r.start()
    frames = mkframes(6000, "full", vbytes=4000)
    data = b"".join(frames)
    state = {"sent": 0, "done": False, "error": None}

    def sender():
        try:
            s = nodelay(connect(r.ingest_addr, timeout=TIMEOUT))
            for off in range(0, len(data), 65536):
                s.sendall(data[off:off + 65536])
                state["sent"] = off + 65536
            s.shutdown(socket.SHUT_WR)
            assert wait_closed(s, TIMEOUT) == b""
            s.close()
            state["done"] = True
        except Exception as e:          # reported by the main thread
            state["error"] = e
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        wait_until(lambda: r.metric("walrelay_storage_failing") == 1 and
                   r.metric("walrelay_upstream_paused") == 1, 30,
                   "the relay to stall on the file size limit")
        m = r.metrics()
        assert m['walrelay_storage_errors_total{op="write"}'] >= 1
        assert m['walrelay_storage_errors_total{op="fsync"}'] == 0
        assert m["walrelay_ready"] == 0
        code, body = r.http("/readyz")
        assert code == 503 and "storage error" in body, (code, body)
        assert r.alive()
        # the producer is held by TCP backpressure, not dropped
        st = r.status()
        assert st["upstream"]["connected"] and st["upstream"]["paused"]
        assert st["storage_error"] == 27
        assert not state["done"] and state["error"] is None
        assert state["sent"] < len(data)
        assert m["walrelay_upstream_connections_total"] == 1
        # nothing partial on disk: whole valid frames only, and a prefix of
        # what was sent
        rc, out = verify(walcat, r.datadir)
        assert rc == 0, out
        names, stored = read_store(r.datadir)
        assert 0 < len(stored) < len(frames)
        assert stored == frames[:len(stored)]
        assert sum(os.path.getsize(os.path.join(r.datadir, n)) for n in names) <= limit
        assert re.search(r"write to .*segment-\d{20}-\d+\.wal failed: File too large",
                         r.read_log())

        # the operator makes room and says so
        p = run("prlimit", "--pid", r.proc.pid, "--fsize=unlimited")
        assert p.returncode == 0, p.stderr
        r.signal(signal.SIGHUP)
        t.join(TIMEOUT)
        assert state["error"] is None, state["error"]
        assert state["done"]
        r.wait_durable(len(frames), timeout=TIMEOUT)
        wait_until(lambda: r.metric("walrelay_storage_failing") == 0, 10,
                   "storage to be healthy")
        assert r.http("/readyz")[0] == 200
        m = r.metrics()
        assert m["walrelay_upstream_paused"] == 0
        assert m["walrelay_ready"] == 1
        assert m["walrelay_next_sequence"] == len(frames)
        assert "disk writes work again" in r.read_log()
    finally:
        # never leave a stalled relay behind
        if r.alive():
            subprocess.run(["prlimit", "--pid", str(r.proc.pid),
                            "--fsize=unlimited"], timeout=10)
    assert r.stop() == 0
    _, stored = read_store(r.datadir)
    assert len(stored) == len(frames)
    assert stored == frames     # exactly once, in order
    assert verify(walcat, r.datadir)[0] == 0


def test_stop_while_disk_full(relays, walcat):
    """SIGTERM while the disk keeps failing: the relay gives the writer a
    few more attempts, then exits with status 1 and says that frames were
    dropped (not that everything is durable); what is on disk is intact."""
    def small_fsize():
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (256 * 1024, resource.RLIM_INFINITY))
    r = relays(args=["--segment-bytes", "4M"], preexec_fn=small_fsize)
    r.start()
    epoch = r.status()["epoch"]
    frames = mkframes(300, "term-full", vbytes=4000)
    s = nodelay(connect(r.ingest_addr))
    t = threading.Thread(target=try_send, args=(s, b"".join(frames)),
                         daemon=True)
    t.start()
    wait_until(lambda: r.status()["storage_error"] == 27 and
               r.metric("walrelay_upstream_paused") == 1, 30,
               "the relay to stall on the file size limit")
    assert r.stop() == 1
    t.join(TIMEOUT)
    s.close()
    log = r.read_log()
    assert re.search(r"stop: storage is failing \(File too large\): \d+ frames", log), log
    assert re.search(r"keeps failing \(File too large\): \d+ frames \(\d+ bytes\) "
                     r"from sequence \d+ were never made durable and are dropped", log), log
    assert "stop: exiting with status 1: frames that could not be made durable" in log
    assert "frames up to sequence" not in log
    assert "stop: all frame buffers released" in log
    assert verify(walcat, r.datadir)[0] == 0
    _, stored = read_store(r.datadir)
    assert 0 < len(stored) < len(frames)
    assert stored == frames[:len(stored)]
    # the next start continues from what is on disk, same epoch: no frame a
    # subscriber could have seen was lost
    r.preexec_fn = None
    st = start_read_stop(r)
    assert st["next"] == len(stored) and st["epoch"] == epoch
    assert "the last run did not stop cleanly" in r.read_log()


# ---- 8. pull from a cache in listen mode ------------------------------

class FakeCache:
    """The cache's listen mode: needs FCWAL-AUTH/1 <token> within 250 ms,
    then sends frames."""

    def __init__(self, token, port=None):
        self.token = token
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", port or 0))
        self.ls.listen(4)
        self.ls.settimeout(TIMEOUT)
        self.port = self.ls.getsockname()[1]

    def accept(self):
        c, _ = self.ls.accept()
        t = time.monotonic()
        c.settimeout(0.25)
        line = b""
        while not line.endswith(b"\n"):
            d = c.recv(1)           # socket.timeout: not within 250 ms
            assert d, f"closed after {line!r}"
            line += d
        assert time.monotonic() - t < 0.25
        assert line == b"FCWAL-AUTH/1 " + self.token + b"\n", line
        c.settimeout(TIMEOUT)
        return c, t

    def close(self):
        self.ls.close()


def test_pull_from_cache(relays, workdir):
    tok = b"cache-token-1"
    write_token(workdir / "upstream.token", tok.decode())
    cache = FakeCache(tok)
    bmin, bmax = 100, 400
    r = relays(args=["--upstream", f"127.0.0.1:{cache.port}",
                     "--upstream-protocol", "auth",
                     "--upstream-token-file", workdir / "upstream.token",
                     "--upstream-backoff-min", bmin,
                     "--upstream-backoff-max", bmax], ingest=False)
    b1, b2, b3 = mkframes(20, "pull1"), mkframes(30, "pull2"), mkframes(5, "pull3")
    try:
        r.start()
        c, _ = cache.accept()
        c.sendall(b"".join(b1))
        c.close()
        closed = time.monotonic()
        r.wait_durable(20)
        c, t = cache.accept()
        # it reconnects, after a backoff of at least half the minimum
        assert t - closed >= bmin / 2 / 1000 - 0.005, t - closed
        c.sendall(b"".join(b2[:10]))
        r.wait_durable(30)
        assert r.status()["upstream"]["connected"]
        c.sendall(b"".join(b2[10:]) + b2[0][:9])   # and a partial frame
        c.close()
        r.wait_durable(50)
        n0 = r.metric("walrelay_upstream_reconnects_total")
        assert n0 >= 2
        port = cache.port
        cache.close()
        # the cache is down: attempts fail, the delay doubles up to the cap
        r.wait_metric("walrelay_upstream_connect_failures_total", lambda v: v >= 4,
                      timeout=30)
        cache = FakeCache(tok, port)
        c, _ = cache.accept()
        c.sendall(b"".join(b3))
        r.wait_durable(55)
        m = r.metrics()
        assert m["walrelay_upstream_reconnects_total"] >= n0 + 4
        assert m["walrelay_partial_frames_dropped_total"] == 1
        assert m["walrelay_frames_received_total"] == 55
        log = r.read_log()
        delays = reconnect_log(log, port)
        assert len(delays) >= 6, log
        for attempt, d in delays:
            base = min(bmin * 2 ** (attempt - 1), bmax)
            assert base // 2 <= d <= base, (attempt, d)
        assert max(a for a, _ in delays) >= 4
        c.close()
    finally:
        cache.close()
    assert r.stop() == 0
    _, frames = read_store(r.datadir)
    assert frames == b1 + b2 + b3


def reconnect_log(log, port):
    """[(attempt, delay_ms)] from the relay's reconnect log lines."""
    return [(int(a), int(d)) for d, a in
            re.findall(rf"pull: reconnecting to 127\.0\.0\.1:{port} in (\d+) "
                       rf"ms \(attempt (\d+)\)", log)]


def test_pull_backs_off_when_cache_refuses(relays, workdir):
    """A cache in listen mode that closes the connection right after the
    auth line (a wrong token: it says nothing) is retried with a growing
    delay, not at the minimum forever; once frames flow the delay starts
    from the minimum again."""
    write_token(workdir / "upstream.token", "stale-token")
    cache = FakeCache(b"stale-token")
    bmin, bmax = 40, 320
    r = relays(args=["--upstream", f"127.0.0.1:{cache.port}",
                     "--upstream-token-file", workdir / "upstream.token",
                     "--upstream-backoff-min", bmin,
                     "--upstream-backoff-max", bmax], ingest=False)
    try:
        r.start()
        refusals = 5
        for i in range(refusals):
            c, _ = cache.accept()
            c.close()
            wait_until(lambda: len(reconnect_log(r.read_log(), cache.port)) == i + 1,
                       10, "the relay to schedule a reconnect")
        delays = reconnect_log(r.read_log(), cache.port)
        assert [a for a, _ in delays] == list(range(1, refusals + 1)), delays
        for attempt, d in delays:
            base = min(bmin * 2 ** (attempt - 1), bmax)
            assert base // 2 <= d <= base, (attempt, d)
        # frames flow: the next reconnect starts over from the minimum
        c, _ = cache.accept()
        batch = mkframes(3, "accepted")
        c.sendall(b"".join(batch))
        r.wait_durable(3)
        c.close()
        wait_until(lambda: len(reconnect_log(r.read_log(), cache.port)) ==
                   refusals + 1, 10, "the reconnect after the frames")
        assert reconnect_log(r.read_log(), cache.port)[-1][0] == 1
        cache.accept()[0].close()
    finally:
        cache.close()
    assert r.stop() == 0


# ---- 9. start-up checks and shutdown ----------------------------------

def test_check_config(walrelay, workdir):
    good = workdir / "good.conf"
    good.write_text("# a relay\n[walrelay]\ndata-dir = %s\nfsync = interval:50\n"
                    "segment-bytes = 1M\ningest = 127.0.0.1:%d\n"
                    % (workdir / "data", free_port()))
    p = run(walrelay, "-c", good, "--check-config")
    assert p.returncode == 0, p.stderr
    assert "configuration OK" in p.stdout
    assert not (workdir / "data").exists()      # checking creates nothing

    bad = workdir / "bad.conf"
    bad.write_text("[walrelay]\nfsync = always\n\nsegment-bytes = lots\n")
    p = run(walrelay, "-c", bad, "--check-config")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert f"{bad}:4:" in p.stderr and "segment-bytes" in p.stderr, p.stderr

    bad.write_text("[walrelay]\nfsync = always\nno-such-option = 1\n")
    p = run(walrelay, "-c", bad, "--check-config")
    assert p.returncode == 2, p.stderr
    assert f"{bad}:3:" in p.stderr and "no-such-option" in p.stderr, p.stderr

    p = run(walrelay, "-c", workdir / "missing.conf", "--check-config")
    assert p.returncode != 0 and "missing.conf" in p.stderr, p.stderr


def test_refuses_open_listener_without_token(walrelay, workdir):
    port = free_port()
    args = [walrelay, "--data-dir", workdir / "d", "--ingest", f"0.0.0.0:{port}",
            "--listen", f"127.0.0.1:{free_port()}", "--http", "none"]
    p = run(*args, timeout=15)
    assert p.returncode != 0
    assert "--publish-token-file" in p.stderr, p.stderr
    assert "--allow-unauthenticated" in p.stderr, p.stderr
    assert not (workdir / "d").exists()
    # with a token, or told explicitly, the configuration is acceptable
    tok = write_token(workdir / "t", "s3cret")
    p = run(*args, "--publish-token-file", tok, "--check-config")
    assert p.returncode == 0, p.stderr
    p = run(*args, "--allow-unauthenticated", "--check-config")
    assert p.returncode == 0, p.stderr
    # the same for the subscriber listener
    p = run(walrelay, "--data-dir", workdir / "d", "--listen", f"0.0.0.0:{port}",
            "--check-config")
    assert p.returncode != 0 and "--subscribe-token-file" in p.stderr, p.stderr


def test_sigterm_exits_cleanly(relays):
    r = relays()
    r.start()
    frames = mkframes(200, "term")
    # a publisher still connected, with a partial frame, and a subscriber
    s = nodelay(connect(r.ingest_addr))
    s.sendall(b"".join(frames) + frames[0][:20])
    r.wait_durable(200)
    sub = connect(r.listen_addr)
    sub.sendall(b"FCWAL-SUB/1 - 0\n")
    assert recv_line(sub).startswith("FCWAL-OK/1 start=0 ")
    assert r.stop() == 0
    log = r.read_log()
    assert "stop: all frame buffers released" in log, log
    assert "stop: exiting; frames up to sequence 200 are durable" in log, log
    s.close()
    sub.close()
    _, stored = read_store(r.datadir)
    assert stored == frames
    # and starts again from there
    st = start_read_stop(r)
    assert st["next"] == 200
