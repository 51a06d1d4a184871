"""Fan-out: what subscribers of a real walrelay can rely on.

Every test starts the daemon (and clients) on loopback with its own data
directory and compares what subscribers received with the bytes of the
store's segment files, frame for frame and sequence for sequence. Waits are
for conditions with deadlines; the only sleeps are the deliberate pauses of
slow readers.
"""

import hashlib
import importlib.util
import json
import os
import random
import re
import socket
import subprocess
import threading
import time

from relayutil import (OK_RE, connect, gen_frame, hard_timeout_fixture,
                       is_asan_build, read_to_eof, recv_frames, recv_line,
                       refused, relays_fixture, store_frames, subscribe,
                       tokfile_fixture, wait_until)

TOKEN = "fan-tok"


TEST_TIMEOUT = 150     # seconds, a hard limit for any one test


hard_timeout = hard_timeout_fixture(TEST_TIMEOUT)


# ---- helpers ------------------------------------------------------------

tokfile = tokfile_fixture(TOKEN)
relays = relays_fixture()


class Feeder(threading.Thread):
    """Send frames gen_frame(first..last-1) to a relay's ingest port."""

    def __init__(self, addr, first, last, vbytes=1000, batch=64, pace=None):
        super().__init__(daemon=True)
        self.addr, self.first, self.last = addr, first, last
        self.vbytes, self.batch, self.pace = vbytes, batch, pace
        self.error = None

    def run(self):
        try:
            s = connect(self.addr)
            i = self.first
            while i < self.last:
                n = min(self.batch, self.last - i)
                s.sendall(b"".join(gen_frame(j, self.vbytes)
                                   for j in range(i, i + n)))
                i += n
                if self.pace:
                    self.pace(i)
            s.shutdown(socket.SHUT_WR)
            s.close()
        except Exception as e:  # reported by finish()
            self.error = e

    def finish(self, timeout=60):
        self.join(timeout)
        assert not self.is_alive(), "feeder did not finish"
        assert self.error is None, self.error


def feed(relay, first, last, vbytes=1000, batch=64):
    f = Feeder(relay.ingest_addr, first, last, vbytes, batch)
    f.start()
    f.finish()
    relay.wait_durable(last)


def sub_ok(addr, frm, opts="", token=TOKEN, rcvbuf=None):
    """A resuming subscriber that must be accepted: (socket, reply dict)."""
    s = subscribe(addr, f"FCWAL-SUB/1 {token} {frm}{opts}", rcvbuf=rcvbuf)
    line = recv_line(s)
    m = OK_RE.match(line)
    assert m, line
    start, earliest, nxt, epoch = m.groups()
    return s, {"start": int(start), "earliest": int(earliest),
               "next": int(nxt), "epoch": epoch}


class ZstdFrames:
    """Decompress a sequence of zstd frames fed in arbitrary pieces."""

    def __init__(self):
        import zstandard
        self.dctx = zstandard.ZstdDecompressor()
        self.obj = self.dctx.decompressobj()

    def decompress(self, data):
        out = []
        while data:
            out.append(self.obj.decompress(data))
            if not self.obj.eof:
                break
            data = self.obj.unused_data
            self.obj = self.dctx.decompressobj()
        return b"".join(out)


class FrameBuf:
    """Whole frames out of a byte stream; the partial rest is kept."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out, off = [], 0
        while len(self.buf) - off >= 9:
            end = off + 13 + int.from_bytes(self.buf[off + 5:off + 9], "little")
            if end > len(self.buf):
                break
            out.append(bytes(self.buf[off:end]))
            off = end
        del self.buf[:off]
        return out


def status_subs(relay):
    return relay.status()["subscribers"]


def wait_subs(relay, n, timeout=15):
    wait_until(lambda: len(status_subs(relay)) == n, timeout,
               f"{n} streaming subscribers")


def produce(walcat, addr, *args):
    return subprocess.Popen([str(walcat), "produce", "--quiet", *map(str, args),
                             addr], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def finish_proc(p, timeout=120):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    assert p.returncode == 0, err
    return out


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def resume_reader(addr, total, rng, opts="", zstd=False, first="0",
                  epoch=None, max_piece=300000):
    """A resuming subscriber that disconnects at random byte offsets
    (inside frames too) and reconnects from the frames it has whole, until
    it holds `total` frames. Returns (frames, reconnects, first start)."""
    got = []
    conns = 0
    start0 = None
    dec = None
    while len(got) < total:
        frm = first if not got and start0 is None else str(start0 + len(got))
        eopt = f" epoch={epoch}" if epoch else ""
        s, rep = sub_ok(addr, frm, eopt + opts)
        conns += 1
        if start0 is None:
            start0 = rep["start"]
        epoch = rep["epoch"]
        assert rep["start"] == start0 + len(got), rep
        if zstd:
            dec = ZstdFrames()
        fb = FrameBuf()
        budget = rng.randint(1, max_piece)
        try:
            while budget > 0 and len(got) < total:
                try:
                    b = s.recv(min(budget, 65536))
                except socket.timeout:
                    raise AssertionError(
                        f"nothing more from the relay: {len(got)} of {total} "
                        f"frames, connection {conns} from {rep['start']}, "
                        f"{len(fb.buf)} bytes of a partial frame")
                assert b, "relay closed a resuming subscriber"
                budget -= len(b)
                if dec is not None:
                    b = dec.decompress(b)
                got += fb.feed(b)
        finally:
            s.close()
        # what was in fb.buf is a partial frame: dropped, asked again
    return got[:total], conns, start0


# ---- 1. stock subscriber ---------------------------------------------------

def test_stock_subscriber_live_bytes_and_wrong_token(relays, tokfile):
    r = relays("r", ["--subscribe-token-file", tokfile])
    feed(r, 0, 50, vbytes=100)

    s = subscribe(r.listen_addr, f"FCWAL-AUTH/1 {TOKEN}")
    wait_subs(r, 1)
    assert status_subs(r)[0]["kind"] == "stock"
    assert status_subs(r)[0]["start"] == 50
    feed(r, 50, 150, vbytes=100)
    got = recv_frames(s, 100)
    store = store_frames(r.datadir)
    assert len(store) == 150
    # live from the next stored frame: not one of the 50 before it
    assert got == store[50:150]
    assert got == [gen_frame(i, 100) for i in range(50, 150)]
    feed(r, 150, 151, vbytes=100)
    assert recv_frames(s, 1) == [store_frames(r.datadir)[150]]
    s.close()
    wait_subs(r, 0)

    # one CR before the LF is dropped, as the cache does
    s = subscribe(r.listen_addr, f"FCWAL-AUTH/1 {TOKEN}\r")
    wait_subs(r, 1)
    feed(r, 151, 153, vbytes=100)
    assert recv_frames(s, 2) == store_frames(r.datadir)[151:153]
    s.close()

    # a wrong token: closed without a single byte, like the cache
    s = subscribe(r.listen_addr, "FCWAL-AUTH/1 not-the-token")
    assert read_to_eof(s) == b""
    s.close()
    # a stock line with a token with spaces is still one token, byte for byte
    s = subscribe(r.listen_addr, f"FCWAL-AUTH/1 {TOKEN} ")
    assert read_to_eof(s) == b""
    s.close()
    assert r.metric('walrelay_subscribers_rejected_total{reason="auth"}') == 2


# ---- 2. resuming subscriber, random disconnects ----------------------------

def test_resume_random_disconnects_no_gap_no_duplicate(relays, tokfile, walcat):
    r = relays("r", ["--subscribe-token-file", tokfile, "--tail-memory", "2M"])
    total = 30000
    p = produce(walcat, r.ingest_addr, "--count", total, "--value-bytes", 300,
                "--rate", 15000)
    rng = random.Random(20240611)
    try:
        got, conns, start = resume_reader(r.listen_addr, total, rng,
                                          first="earliest", max_piece=200000)
    finally:
        finish_proc(p)
    r.wait_durable(total)
    store = store_frames(r.datadir)
    assert start == 0
    assert conns >= 20, conns
    assert len(store) == total
    assert got == store


# ---- 3. handshake replies ---------------------------------------------------

def test_handshake_replies(relays, tokfile):
    r = relays("r", ["--subscribe-token-file", tokfile, "--segment-bytes", "4k",
                     "--retain-bytes", "16k", "--max-subscribers", "1"])
    for i in range(0, 400, 4):  # many small writes: many segments
        feed(r, i, i + 4, vbytes=150)
    # retention runs at rotations and once a second, removing files on the
    # I/O pool: wait until it is done (the files are gone, so earliest is
    # the first kept segment's first frame)

    def retained():
        st = r.status()
        return (st["earliest"] > 0 and
                sum(g["bytes"] for g in st["segments"]) <= 16384 and
                st["earliest"] == st["segments"][0]["first"])
    wait_until(retained, 15, "retention")
    st = r.status()
    earliest, nxt, epoch = st["earliest"], st["next"], st["epoch"]
    assert nxt == 400 and re.fullmatch(r"[0-9a-f]{16}", epoch)
    addr = r.listen_addr

    def ok_then_close(frm, opts=""):
        s, rep = sub_ok(addr, frm, opts)
        s.close()
        wait_subs(r, 0)
        return rep

    rep = ok_then_close("earliest")
    assert rep == {"start": earliest, "earliest": earliest, "next": nxt,
                   "epoch": epoch}
    rep = ok_then_close("latest", f" epoch={epoch}")
    assert rep == {"start": nxt, "earliest": earliest, "next": nxt,
                   "epoch": epoch}
    # the boundaries: from = earliest and from = next are both accepted
    assert ok_then_close(str(earliest))["start"] == earliest
    assert ok_then_close(str(nxt))["start"] == nxt
    # the reply line is followed by the frames from start
    s, rep = sub_ok(addr, str(nxt - 3))
    assert recv_frames(s, 3) == [gen_frame(i, 150) for i in range(nxt - 3, nxt)]
    s.close()
    wait_subs(r, 0)

    assert refused(addr, f"FCWAL-SUB/1 {TOKEN} 0") == \
        f"FCWAL-ERR/1 gone earliest={earliest}"
    assert refused(addr, f"FCWAL-SUB/1 {TOKEN} {earliest - 1}") == \
        f"FCWAL-ERR/1 gone earliest={earliest}"
    assert refused(addr, f"FCWAL-SUB/1 {TOKEN} {nxt + 1}") == \
        f"FCWAL-ERR/1 future next={nxt}"
    assert refused(addr, f"FCWAL-SUB/1 {TOKEN} {nxt} epoch=0000000000000001") \
        == (f"FCWAL-ERR/1 epoch epoch is {epoch}, not 0000000000000001: "
            "sequence numbers no longer name the same frames")
    assert refused(addr, f"FCWAL-SUB/1 {TOKEN} 12x") == \
        ("FCWAL-ERR/1 bad-request bad <from> '12x' (a sequence number, "
         "earliest, latest or snapshot)")
    for bad in (f"FCWAL-SUB/1 {TOKEN} latest colour=blue",
                f"FCWAL-SUB/1 {TOKEN} latest compress=gzip",
                f"FCWAL-SUB/1 {TOKEN} latest compress=zstd compress=none",
                f"FCWAL-SUB/1 {TOKEN} latest epoch=xyz",
                f"FCWAL-SUB/1 {TOKEN}"):
        reply = refused(addr, bad)
        assert reply.startswith("FCWAL-ERR/1 bad-request "), (bad, reply)
    assert refused(addr, "FCWAL-SUB/1 wrong-token latest") == \
        "FCWAL-ERR/1 auth not a subscribe token"

    # busy: one subscriber is the limit
    held, _ = sub_ok(addr, "latest")
    wait_subs(r, 1)
    assert refused(addr, f"FCWAL-SUB/1 {TOKEN} latest") == \
        "FCWAL-ERR/1 busy 1 subscribers connected, the limit"
    s = subscribe(addr, f"FCWAL-AUTH/1 {TOKEN}")   # stock: closed silently
    assert read_to_eof(s) == b""
    s.close()
    held.close()
    wait_subs(r, 0)
    ok_then_close("latest")

    m = r.metrics()
    assert m['walrelay_subscribers_rejected_total{reason="busy"}'] == 2
    assert m['walrelay_subscribers_rejected_total{reason="auth"}'] == 1
    assert m['walrelay_subscribers_rejected_total{reason="request"}'] == 10


# ---- 4. slow subscriber, bounded memory ------------------------------------

def test_slow_subscriber_others_unaffected_memory_bounded(relays, tokfile,
                                                          walcat, walrelay):
    MIB = 1 << 20
    tail_memory, sub_buffer = 4 * MIB, 256 * 1024
    pause_bytes = 4 * MIB
    r = relays("r", ["--subscribe-token-file", tokfile,
                     "--tail-memory", "4M", "--subscriber-buffer", "256k",
                     "--ingest-pause-bytes", "4M", "--ingest-resume-bytes", "1M",
                     "--segment-bytes", "16M", "--fsync", "interval:50"])
    total = 200000
    baseline = vmrss_kib(r.proc.pid) * 1024

    nfast = 2
    target = {}            # set once the store is complete: bytes to expect
    done = threading.Event()

    class Reader(threading.Thread):
        def __init__(self, rcvbuf=None, gate=None):
            super().__init__(daemon=True)
            self.sock, self.rep = sub_ok(r.listen_addr, "0", rcvbuf=rcvbuf)
            self.sock.settimeout(90)
            self.gate = gate
            self.h = hashlib.sha256()
            self.n = 0
            self.error = None
            self.finished_at = None

        def run(self):
            try:
                if self.gate is not None:
                    # a few bytes now, then nothing for a long stretch
                    first = self.sock.recv(2000)
                    self.h.update(first)
                    self.n += len(first)
                    self.gate.wait(120)
                deadline = time.monotonic() + 120
                self.sock.settimeout(0.2)
                while "bytes" not in target or self.n < target["bytes"]:
                    assert time.monotonic() < deadline, "no end in sight"
                    try:
                        b = self.sock.recv(1 << 20)
                    except socket.timeout:
                        continue    # the end may have become known
                    if not b:
                        raise EOFError(f"closed after {self.n} bytes")
                    self.h.update(b)
                    self.n += len(b)
                self.finished_at = time.monotonic()
            except Exception as e:
                self.error = e

    gate = threading.Event()
    fast = [Reader() for _ in range(nfast)]
    slow = Reader(rcvbuf=4096, gate=gate)
    readers = fast + [slow]
    wait_subs(r, 3)
    peak = [0, 0]     # RSS, bytes of frame buffers alive

    def sample():
        k = 0
        while not done.is_set():
            try:
                peak[0] = max(peak[0], vmrss_kib(r.proc.pid) * 1024)
                if k % 5 == 0:
                    peak[1] = max(peak[1],
                                  r.metric("walrelay_chunk_bytes_live"))
            except OSError:
                return
            k += 1
            done.wait(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for t in readers:
        t.start()

    p = produce(walcat, r.ingest_addr, "--count", total, "--value-bytes", 1024)
    try:
        finish_proc(p, timeout=150)
        r.wait_durable(total, timeout=60)
        h = hashlib.sha256()
        size = 0
        for name in sorted(os.listdir(r.datadir)):
            if name.endswith(".wal"):
                with open(os.path.join(r.datadir, name), "rb") as f:
                    while True:
                        b = f.read(1 << 22)
                        if not b:
                            break
                        h.update(b)
                        size += len(b)
        target["bytes"] = size
        for t in fast:
            t.join(90)
            assert not t.is_alive() and t.error is None, \
                (t.error, t.n, size, status_subs(r))
            assert t.n == size and t.h.hexdigest() == h.hexdigest()
        # the others have everything while the slow one still sleeps
        assert not gate.is_set() and slow.is_alive()
        me = [s for s in status_subs(r) if s["id"] and s["position"] < total]
        assert len(me) == 1 and me[0]["lag"] > 0, status_subs(r)
        gate.set()
        slow.join(120)
        assert not slow.is_alive() and slow.error is None, slow.error
        assert slow.n == size and slow.h.hexdigest() == h.hexdigest()
    finally:
        gate.set()
        done.set()
        sampler.join(5)
        for t in readers:
            t.sock.close()
    assert r.metric("walrelay_disk_reads_total") > 0
    assert r.metric("walrelay_frames_received_total") == total
    # The bound: the tail's budget, the store's write-behind budget
    # (ingest-pause-bytes), per subscriber its buffer plus the one chunk
    # (at most 2 MiB, two upstream reads) it may be in the middle of, one
    # chunk being filled by the upstream, the freed frame buffers kept for
    # reuse (4 MiB at most) and a fixed 24 MiB for the process itself over
    # the RSS it had when idle.
    nsubs = len(readers)
    chunk_max = 2 * MIB
    bound = (baseline + tail_memory + pause_bytes +
             nsubs * (sub_buffer + chunk_max) + chunk_max + 4 * MIB +
             24 * MIB)
    print(f"walrelay peak RSS {peak[0] / MIB:.1f} MiB, bound {bound / MIB:.1f} "
          f"MiB (idle {baseline / MIB:.1f} MiB), frame buffers at most "
          f"{peak[1] / MIB:.1f} MiB")
    if not is_asan_build(walrelay):   # ASan's shadow memory is no measure
        assert 0 < peak[0] <= bound
        # buffers were reused while frames flowed; a second after the
        # stream went idle the kept ones are given back
        assert r.metric("walrelay_chunk_cache_reused_total") > 0
        wait_until(lambda: r.metric("walrelay_chunk_cache_bytes") == 0, 5,
                   "kept frame buffers released once idle")
    # the frame buffers alive (their capacity, sampled): the same terms
    # without the process's own allowance, plus 1/16 for unused capacity
    fb_bound = (tail_memory + pause_bytes + nsubs * (sub_buffer + chunk_max)
                + chunk_max) * 17 // 16
    assert 0 < peak[1] <= fb_bound, (peak[1], fb_bound)


def test_stalled_subscriber_holds_no_more_than_its_buffer(relays, tokfile):
    """docs/protocol.md: a subscriber never makes the relay hold more than
    its own buffer. One that stops reading keeps frames in memory after
    the shared tail has let them go, but no more than subscriber-buffer."""
    KIB = 1024
    sub_buffer = 64 * KIB
    r = relays("r", ["--subscribe-token-file", tokfile,
                     "--tail-memory", "1M", "--subscriber-buffer", "64k"])
    stalled, _ = sub_ok(r.listen_addr, "latest", rcvbuf=4096)
    reader, _ = sub_ok(r.listen_addr, "latest")
    wait_subs(r, 2)
    total = 20000           # about 20 MB: the 1 MiB tail turns over often
    f = Feeder(r.ingest_addr, 0, total, vbytes=1000)
    f.start()
    reader.settimeout(60)
    got = recv_frames(reader, total)
    f.finish()
    assert got == [gen_frame(i) for i in range(total)]
    r.wait_durable(total)
    # everything is durable and the reader has it all: what frame buffers
    # remain are the tail's and the ones the stalled subscriber holds
    m = r.metrics()
    held = m["walrelay_chunk_bytes_live"] - m["walrelay_tail_buffer_bytes"]
    assert m["walrelay_tail_bytes"] <= 1024 * KIB + 64 * KIB
    # its queue in whole chunks, or a copy of part of one (buffers come in
    # 16 KiB steps, and the last frame may overshoot the buffer); nothing
    # once it has fallen behind the tail and is served from the files
    assert held <= sub_buffer + 16 * KIB + 1100, held
    assert [s["lag"] > 0 for s in status_subs(r)].count(True) == 1
    reader.close()
    stalled.close()


# ---- 5. subscriber-timeout --------------------------------------------------

def test_stalled_subscriber_timeout(relays, tokfile):
    r = relays("r", ["--subscribe-token-file", tokfile,
                     "--subscriber-timeout", "2", "--subscriber-buffer", "64k"])
    total = 20000
    stalled, _ = sub_ok(r.listen_addr, "latest", rcvbuf=4096)
    reader, rep = sub_ok(r.listen_addr, "latest")
    assert rep["start"] == 0
    wait_subs(r, 2)
    f = Feeder(r.ingest_addr, 0, total, vbytes=1000)
    f.start()
    reader.settimeout(30)
    got = recv_frames(reader, total)
    f.finish()
    r.wait_metric('walrelay_subscribers_disconnected_total{reason="timeout"}',
                  lambda v: v == 1, timeout=20)
    assert got == store_frames(r.datadir)
    assert got == [gen_frame(i) for i in range(total)]
    # the stalled one got a prefix of the stream, then the end
    stalled.settimeout(20)
    data = read_to_eof(stalled)
    stream = b"".join(got)
    assert len(data) < len(stream) and stream.startswith(data)
    assert "accepted no byte for 2000 ms" in r.read_log()
    # the reader is still there and still served
    assert len(status_subs(r)) == 1
    feed(r, total, total + 1)
    assert recv_frames(reader, 1) == [gen_frame(total)]
    m = r.metrics()
    assert m['walrelay_subscribers_disconnected_total{reason="timeout"}'] == 1
    assert m['walrelay_subscribers_disconnected_total{reason="lag"}'] == 0
    reader.close()
    stalled.close()


# ---- 6. max-lag -------------------------------------------------------------

def test_max_lag_disconnects(relays, tokfile):
    r = relays("r", ["--subscribe-token-file", tokfile, "--max-lag", "1000",
                     "--subscriber-buffer", "64k"])
    paused, _ = sub_ok(r.listen_addr, "latest", rcvbuf=4096)
    wait_subs(r, 1)
    feed(r, 0, 20000, vbytes=1000)
    r.wait_metric('walrelay_subscribers_disconnected_total{reason="lag"}',
                  lambda v: v == 1, timeout=15)
    assert re.search(r"sub-\d+: \d+ frames behind, over the limit of 1000 "
                     r"\(max-lag\): disconnected", r.read_log())
    paused.settimeout(20)
    data = read_to_eof(paused)
    stream = b"".join(store_frames(r.datadir))
    assert len(data) < len(stream) and stream.startswith(data)
    assert r.metric(
        'walrelay_subscribers_disconnected_total{reason="timeout"}') == 0
    # a subscriber within the limit stays
    s, rep = sub_ok(r.listen_addr, "latest")
    wait_subs(r, 1)
    feed(r, 20000, 20100, vbytes=1000)
    assert recv_frames(s, 100) == [gen_frame(i) for i in range(20000, 20100)]
    s.close()


# ---- 7. relay chain ---------------------------------------------------------

def test_chain_kill_middle_relay(relays, tokfile, walcat):
    common = ["--subscribe-token-file", tokfile, "--upstream-backoff-max", "300",
              "--tail-memory", "1M"]
    a = relays("a", common)
    b = relays("b", common + ["--upstream", a.listen_addr, "--upstream-protocol",
                              "sub", "--upstream-token-file", tokfile],
               ingest=False)
    c = relays("c", common + ["--upstream", b.listen_addr, "--upstream-protocol",
                              "sub", "--upstream-token-file", tokfile],
               ingest=False)
    epoch = a.status()["epoch"]
    wait_until(lambda: b.status()["epoch"] == epoch and
               c.status()["epoch"] == epoch, 15, "the chain to adopt A's epoch")

    total = 60000
    results = {}

    def reader(name, first):
        try:
            s, rep = sub_ok(c.listen_addr, first)
            fb, got = FrameBuf(), []
            start = rep["start"]
            s.settimeout(60)
            while start + len(got) < total:
                b = s.recv(1 << 20)
                assert b, "C closed a subscriber"
                got += fb.feed(b)
            s.close()
            results[name] = (start, got, rep["epoch"])
        except Exception as e:
            results[name] = e

    t1 = threading.Thread(target=reader, args=("early", "earliest"))
    t1.start()
    p = produce(walcat, a.ingest_addr, "--count", total, "--value-bytes", 300,
                "--rate", 12000)
    t2 = None
    try:
        last = 0
        for k in range(3):
            want = last + 6000
            wait_until(lambda: b.status()["durable"] >= want, 30,
                       f"B to store {want} frames")
            if k == 1:
                t2 = threading.Thread(target=reader, args=("late", "latest"))
                t2.start()
            b.kill9()
            b.start()
            last = b.status()["durable"]
    finally:
        finish_proc(p)
    a.wait_durable(total)
    for rel in (b, c):
        wait_until(lambda: rel.status()["durable"] == total, 60,
                   "the chain to catch up")
    t1.join(60)
    t2.join(60)
    sa, sb, sc = (store_frames(x.datadir) for x in (a, b, c))
    assert len(sa) == total
    assert sb == sa
    assert sc == sa
    for name in ("early", "late"):
        res = results[name]
        assert not isinstance(res, Exception), res
        start, got, ep = res
        assert ep == epoch
        assert got == sa[start:], name
    assert results["early"][0] == 0
    assert b.status()["epoch"] == epoch and c.status()["epoch"] == epoch
    assert b.starts == 4


# ---- 8. fsync always: nothing a subscriber saw is lost ----------------------

def test_kill9_subscriber_frames_survive(relays, tokfile, walcat):
    r = relays("r", ["--subscribe-token-file", tokfile, "--fsync", "always"])
    p = produce(walcat, r.ingest_addr, "--count", 0, "--value-bytes", 200,
                "--rate", 20000, "--backoff-ms", 50)
    try:
        s, rep = sub_ok(r.listen_addr, "0")
        epoch = rep["epoch"]
        s.settimeout(20)
        fb, got = FrameBuf(), []
        while len(got) < 8000:
            b = s.recv(65536)
            assert b, "closed before the kill"
            got += fb.feed(b)
        r.kill9()
        data = read_to_eof(s)
        got += fb.feed(data)
        s.close()
        r.start()
        r.wait_durable(len(got) + 100)
    finally:
        p.kill()
        p.wait()
    store = store_frames(r.datadir)
    assert len(store) >= len(got) >= 8000
    assert store[:len(got)] == got
    assert "fsync always" in r.read_log()
    # the same epoch: a resuming subscriber continues where it was
    s, rep = sub_ok(r.listen_addr, str(len(got)), f" epoch={epoch}")
    assert rep["epoch"] == epoch and rep["start"] == len(got)
    store = store_frames(r.datadir)
    assert recv_frames(s, 50) == store[len(got):len(got) + 50]
    s.close()


# ---- 9. compress=zstd -------------------------------------------------------

def test_zstd_resume_from_disk_and_live(relays, tokfile, walcat):
    r = relays("r", ["--subscribe-token-file", tokfile, "--tail-memory", "1M",
                     "--subscriber-buffer", "64k"])
    feed(r, 0, 8000)                       # 8 MB: most of it only on disk
    total = 16000
    f = Feeder(r.ingest_addr, 8000, total, pace=None)
    f.start()
    if importlib.util.find_spec("zstandard") is not None:
        # catching up from disk, then live, with random disconnects
        rng = random.Random(77)
        got, conns, start = resume_reader(r.listen_addr, total, rng,
                                          opts=" compress=zstd", zstd=True,
                                          first="earliest", max_piece=40000)
        f.finish()
        r.wait_durable(total)
        assert start == 0 and conns > 5
        assert got == store_frames(r.datadir)
        assert r.metric("walrelay_disk_reads_total") > 0
    else:   # python3-zstandard missing: walcat below is the only client
        f.finish()
        r.wait_durable(total)
    store = store_frames(r.datadir)
    assert store == [gen_frame(i) for i in range(total)]
    assert "(zstd)" in r.read_log() or importlib.util.find_spec(
        "zstandard") is None

    # walcat tail --zstd --raw as the client: from disk, the whole stream,
    # then exit; and from the middle of the stream
    for frm in (0, 12345):
        out = subprocess.run([str(walcat), "tail", "--zstd", "--raw", "--from",
                              str(frm), "--count", str(total - frm),
                              "--token-file", str(tokfile), r.listen_addr],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"".join(store[frm:])
    assert r.metric("walrelay_disk_reads_total") > 0


# ---- 10. frame buffers released --------------------------------------------

def test_frame_buffers_released(relays, tokfile):
    r = relays("r", ["--subscribe-token-file", tokfile, "--tail-memory", "1M",
                     "--subscriber-buffer", "64k", "--shutdown-timeout", "1"])
    socks = [sub_ok(r.listen_addr, "latest")[0] for _ in range(3)]
    wait_subs(r, 3)
    feed(r, 0, 3000)
    for s in socks:
        assert recv_frames(s, 3000)[-1] == gen_frame(2999)
    # a late one reading from disk, gone half way
    s, _ = sub_ok(r.listen_addr, "0", rcvbuf=4096)
    assert recv_frames(s, 10) == [gen_frame(i) for i in range(10)]
    for s2 in socks + [s]:
        s2.close()
    wait_subs(r, 0)

    def balanced():
        m = r.metrics()
        return (m["walrelay_durable_sequence"] == m["walrelay_next_sequence"]
                and m["walrelay_chunks_live"] == m["walrelay_tail_chunks"])
    wait_until(balanced, 15, "chunks_live == tail_chunks")
    assert r.metric("walrelay_tail_chunks") > 0

    # at shutdown, with a subscriber that stopped reading mid-stream
    stuck, _ = sub_ok(r.listen_addr, "0", rcvbuf=4096)
    wait_subs(r, 1)
    assert r.stop() == 0
    log = r.read_log()
    assert "stop: all frame buffers released" in log
    assert "still referenced" not in log
    stuck.close()


# ---- 11. retention and a subscriber on disk ---------------------------------

def test_retention_never_makes_a_gap(relays, tokfile):
    r = relays("r", ["--subscribe-token-file", tokfile, "--tail-memory", "1M",
                     "--subscriber-buffer", "32k", "--segment-bytes", "256k",
                     "--retain-bytes", "3M"])
    total = 30000
    feed(r, 0, 2000)
    results = {}

    def reader(name, burst):
        s, rep = sub_ok(r.listen_addr, "earliest", rcvbuf=8192)
        s.settimeout(30)
        fb, got, closed = FrameBuf(), [], False
        start = rep["start"]
        try:
            while start + len(got) < total:
                # a burst, then wait for the stream to move on by more
                n = 0
                while n < burst and start + len(got) < total:
                    b = s.recv(65536)
                    if not b:
                        closed = True
                        break
                    n += len(b)
                    got += fb.feed(b)
                if closed:
                    break
                mark = r.status()["next"]
                if mark < total:
                    wait_until(lambda: r.status()["next"] >= min(
                        total, mark + burst // 1000 + 500), 30, "more frames")
        except (ConnectionResetError, EOFError):
            closed = True
        s.close()
        results[name] = (start, got, closed)

    threads = [threading.Thread(target=reader, args=(n, b))
               for n, b in (("slow", 400_000), ("slower", 100_000))]
    for t in threads:
        t.start()
    pace = threading.Event()
    f = Feeder(r.ingest_addr, 2000, total, batch=32,
               pace=lambda i: pace.wait(0.002))
    f.start()
    f.finish(120)
    for t in threads:
        t.join(120)
    m = r.metrics()
    assert m["walrelay_segments_deleted_total"] > 0
    assert m["walrelay_disk_reads_total"] > 0
    gone = 0
    for name, (start, got, closed) in results.items():
        # whatever it got is the stream from its start, without a gap
        assert got == [gen_frame(i) for i in range(start, start + len(got))], name
        if closed:
            gone += 1
            assert start + len(got) < total
        else:
            assert start + len(got) == total
    assert m['walrelay_subscribers_disconnected_total{reason="gone"}'] == gone
    if gone:
        assert "was deleted by retention" in r.read_log()


# ---- 12. walcat tail -------------------------------------------------------

def test_walcat_tail(relays, tokfile, walcat, workdir):
    r = relays("r", ["--subscribe-token-file", tokfile])
    feed(r, 0, 100, vbytes=50)
    store = store_frames(r.datadir)
    epoch = r.status()["epoch"]

    def tail(*args, timeout=30):
        return subprocess.run([str(walcat), "tail", "--token-file", str(tokfile),
                               *map(str, args), r.listen_addr],
                              capture_output=True, timeout=timeout)

    out = tail("--from", 10, "--count", 5, "--raw")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"".join(store[10:15])

    out = tail("--from", 20, "--count", 3, "--json")
    assert out.returncode == 0, out.stderr
    recs = [json.loads(x) for x in out.stdout.decode().splitlines()]
    assert [x["seq"] for x in recs] == [20, 21, 22]
    assert [x["op"] for x in recs] == ["SET"] * 3
    assert [x["key"] for x in recs] == ["key-%010d" % i for i in (20, 21, 22)]
    assert [x["value_len"] for x in recs] == [50] * 3

    pos = workdir / "tail.pos"
    out = tail("--from", 0, "--count", 40, "--raw", "--position-file", pos)
    assert out.returncode == 0, out.stderr
    first = out.stdout
    assert pos.read_text() == f"40 {epoch}\n"
    out = tail("--count", 60, "--raw", "--position-file", pos)
    assert out.returncode == 0, out.stderr
    assert first + out.stdout == b"".join(store)
    assert pos.read_text() == f"100 {epoch}\n"

    # refused: the relay's line on stderr, exit status 2
    bad = workdir / "bad.tok"
    bad.write_text("nope\n")
    out = subprocess.run([str(walcat), "tail", "--token-file", str(bad),
                          "--from", "0", r.listen_addr], capture_output=True,
                         timeout=30)
    assert out.returncode == 2
    assert b"FCWAL-ERR/1 auth not a subscribe token" in out.stderr
    # --stock: live from the next stored frame
    st = subprocess.Popen([str(walcat), "tail", "--stock", "--raw", "--count",
                           "5", "--token-file", str(tokfile), r.listen_addr],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: any(s["kind"] == "stock" for s in status_subs(r)),
                   15, "the stock subscriber")
        feed(r, 100, 105, vbytes=50)
        out, err = st.communicate(timeout=30)
    finally:
        if st.poll() is None:
            st.kill()
            st.communicate()
    assert st.returncode == 0, err
    assert out == b"".join(store_frames(r.datadir)[100:105])


def test_unpositioned_chain_member_refuses_subscribers(relays, tokfile):
    """An empty relay pulling from a relay it has not reached yet has no
    positions of its own: it must not hand out sequence numbers and an
    epoch that change once it adopts its upstream's."""
    common = ["--subscribe-token-file", tokfile, "--upstream-backoff-max", "200"]
    a = relays("a", common, start=False)        # not running yet
    b = relays("b", common + ["--upstream", a.listen_addr, "--upstream-protocol",
                              "sub", "--upstream-token-file", tokfile],
               ingest=False)
    line = refused(b.listen_addr, f"FCWAL-SUB/1 {TOKEN} earliest")
    assert line.startswith("FCWAL-ERR/1 busy "), line
    s = subscribe(b.listen_addr, f"FCWAL-AUTH/1 {TOKEN}")
    assert s.recv(100) == b""                    # stock: closed, no byte
    s.close()
    assert b.metric("walrelay_subscribers_rejected_total{reason=\"busy\"}") == 2

    a.start()
    feed(a, 0, 50)
    a.wait_durable(50)
    epoch = a.status()["epoch"]
    wait_until(lambda: b.status()["durable"] == 50, 15, "B to adopt and catch up")
    s, rep = sub_ok(b.listen_addr, "earliest")
    assert rep == {"start": 0, "earliest": 0, "next": 50, "epoch": epoch}
    got = recv_frames(s, 50)
    s.close()
    assert got == store_frames(a.datadir)
