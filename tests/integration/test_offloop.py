"""The event loop never waits on the disk: with segment reads made slow
(tests/fault/wrfault.so delays every pread of a segment file by seconds),
a live subscriber on the same relay keeps receiving each new frame within
a fraction of that delay, while subscribers that catch up from the
segment files wait for their own reads; the catching-up subscribers still
get every frame exactly once, in order. The same for the first read of a
sealed segment after a restart (its check runs on a worker) and for
retention's unlink and directory fsync.

Waits are for conditions with deadlines, never sleeps.
"""

import os
import signal
import subprocess
import time

import pytest

from fcw2util import OP_SET, frame
from relayutil import (FaultControl, SubReader, connect, recv_line, relay_factory,
                       split_frames, store_frames, wait_until)

TOKEN = "offloop-tok"
TEST_TIMEOUT = 300
DELAY_MS = 3000
# a frame's trip while reads are delayed: well under one delay; a loop that
# waited on a read would hold it for one delay or more
LIVE_MAX_S = DELAY_MS / 1000 / 2


@pytest.fixture(autouse=True)
def hard_timeout():
    def expired(signum, frm):
        raise TimeoutError(f"test ran longer than {TEST_TIMEOUT} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir, "r", start=False)


@pytest.fixture
def tokfile(workdir):
    p = workdir / "sub.tok"
    p.write_text(TOKEN + "\n")
    return p


def gen_frame(i, vbytes=2000):
    unit = b"f%09d" % i
    value = (unit * (vbytes // len(unit) + 1))[:vbytes]
    return frame(OP_SET, b"key-%010d" % i, value, ts=1700000000000 + i)


def Reader(addr, frm="0", opts=""):
    """A resuming subscriber that keeps every byte it gets."""
    return SubReader(addr, TOKEN, frm, opts)


def feed(addr, frames):
    s = connect(addr, timeout=60)
    for i in range(0, len(frames), 32):
        s.sendall(b"".join(frames[i:i + 32]))
    return s


def evict(datadir):
    """Drop the segment files' pages from the page cache (they are clean:
    fsync always), so that sendfile would have to read the disk."""
    for n in os.listdir(datadir):
        if ".wal" in n:
            fd = os.open(os.path.join(datadir, n), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_delays(fc):
    return [h for h in fc.hits() if h.startswith("read ")]


def live_trips(r, up, live, frames):
    """Send frames one at a time; the seconds each took to reach live
    (to be the last frame it holds: frames are unique)."""
    trips = []
    for f in frames:
        t0 = time.monotonic()
        up.sendall(f)
        wait_until(lambda: live.snapshot().endswith(f), 30, "a live frame")
        trips.append(time.monotonic() - t0)
    return trips


def start_relay(relays, fc, tokfile, *extra):
    r = relays(args=["--subscribe-token-file", tokfile, "--fsync", "always",
                     "--segment-bytes", "1M", "--tail-memory", "1M",
                     *extra], env=fc.env())
    r.start()
    return r


@pytest.mark.parametrize("kind", ["zstd", "plain"])
def test_slow_reads_do_not_delay_live_subscribers(relays, workdir, builddir,
                                                  tokfile, kind):
    """zstd: catch-up pieces are read on a worker. plain: sendfile's
    pages are brought into the page cache on a worker first (the fault
    library delays a sendfile of pages that are not in the page cache as
    it delays a pread: a sendfile on the loop of the evicted pages would
    hold the live frames for a delay)."""
    fc = FaultControl(builddir, workdir)
    r = start_relay(relays, fc, tokfile)
    frames = [gen_frame(i) for i in range(3000)]
    up = feed(r.ingest_addr, frames)
    r.wait_durable(len(frames), timeout=120)
    live = Reader(r.listen_addr, "latest")
    if kind == "plain":
        evict(r.datadir)
    fc.set(f"op=read,path={r.datadir}/segment-*.wal,err=none,"
           f"delay={DELAY_MS}")
    opts = " compress=zstd" if kind == "zstd" else ""
    catchup = [Reader(r.listen_addr, "0", opts) for _ in range(2)]
    # the catching-up subscribers' reads are under way (and slow)
    wait_until(lambda: len(read_delays(fc)) >= 1, 60, "a delayed read")
    more = [gen_frame(len(frames) + i) for i in range(6)]
    trips = live_trips(r, up, live, more)
    assert max(trips) < LIVE_MAX_S, trips
    # they are still reading, slowly: the live frames did not wait for them
    assert all(c.size() < len(b"".join(frames)) for c in catchup)
    fc.clear()
    total = frames + more
    if kind == "plain":
        want = b"".join(total)
        for c in catchup:
            wait_until(lambda: c.size() >= len(want), 120, "catch-up")
            assert c.snapshot() == want
    else:
        # every frame queued to each of them (zstd output is checked
        # byte for byte in test_fanout.py)
        wait_until(lambda: all(s["position"] == len(total) for s in
                               r.status()["subscribers"]), 120, "catch-up")
    assert live.snapshot() == b"".join(more)
    for c in catchup:
        c.close()
    live.close()
    up.close()
    assert r.stop() == 0


def thread_disk_reads(pid):
    """Bytes each thread of pid made the kernel read from the disk
    (/proc/PID/task/TID/io read_bytes), by thread id."""
    got = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                for line in f:
                    if line.startswith("read_bytes:"):
                        got[int(tid)] = int(line.split()[1])
        except OSError:
            pass    # a thread that ended, or no I/O accounting
    return got


def test_cold_catchup_loop_reads_nothing_from_disk(relays, workdir, walcat,
                                                   tokfile):
    """Plain subscribers catching up from a cold segment file: the disk
    reads are all made by the I/O pool, none by the event loop (the
    process's main thread). The loop's sendfile of a warmed window must
    not start a readahead either: a resident page can carry the kernel's
    readahead mark, and the read that meets it submits the next window's
    disk reads (the loop read 30 of 42 MiB so before the warm-up read
    every page itself)."""
    r = relays(args=["--subscribe-token-file", tokfile, "--fsync", "always",
                     "--tail-memory", "1M"])
    r.start()
    n = 48 * 1024      # frames of about 1 KiB: one 64 MiB segment
    p = subprocess.run([str(walcat), "produce", "--quiet", "--count", str(n),
                        "--value-bytes", "1000", r.ingest_addr],
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r.wait_durable(n, timeout=120)
    pid = r.proc.pid
    if pid not in thread_disk_reads(pid):
        pytest.skip("no per-thread I/O accounting in /proc")
    evict(r.datadir)
    before = thread_disk_reads(pid)
    readers = [Reader(r.listen_addr, "0") for _ in range(4)]
    wait_until(lambda: all(s["position"] == n for s in
                           r.status()["subscribers"]), 120, "catch-up")
    files = sorted(x for x in os.listdir(r.datadir) if x.endswith(".wal"))
    total = sum(os.path.getsize(os.path.join(r.datadir, x)) for x in files)
    for c in readers:
        wait_until(lambda: c.size() >= total, 120, "every byte sent")
    after = thread_disk_reads(pid)
    read = sum(v - before.get(t, 0) for t, v in after.items())
    if read < total // 2:
        pytest.skip(f"the cold reads were not accounted ({read} bytes "
                    f"read of {total}): a file system without block I/O, "
                    "or pages that stayed cached")
    assert after[pid] - before[pid] == 0, \
        f"the loop read {after[pid] - before[pid]} of {read} bytes"
    want = b"".join(open(os.path.join(r.datadir, x), "rb").read()
                    for x in files)
    for c in readers:
        assert c.snapshot() == want
        c.close()
    assert r.stop() == 0


def test_slow_unlink_in_retention_does_not_delay_live_subscribers(
        relays, workdir, builddir, tokfile):
    """Retention removes old segments on a worker: an unlink that takes
    seconds holds up neither the loop nor the writer (fsync always: a
    frame reaches the live subscriber once durable)."""
    fc = FaultControl(builddir, workdir)
    r = start_relay(relays, fc, tokfile, "--retain-bytes", "2M")
    fc.set(f"op=unlink,path={r.datadir}/segment-*.wal,err=none,"
           f"delay={DELAY_MS}")
    frames = [gen_frame(i) for i in range(3000)]
    up = feed(r.ingest_addr, frames)
    # retention is removing old segments (one delay each, several due)
    wait_until(lambda: any(h.startswith("unlink ") for h in fc.hits()), 60,
               "a delayed unlink")
    live = Reader(r.listen_addr, "latest")
    more = [gen_frame(len(frames) + i) for i in range(6)]
    trips = live_trips(r, up, live, more)
    assert max(trips) < LIVE_MAX_S, trips
    fc.clear()
    total = frames + more
    r.wait_durable(len(total), timeout=120)
    # from where it started, every frame once, in order
    got = split_frames(live.snapshot())
    assert got and got == total[len(total) - len(got):]
    # retention did its work: the oldest segments are gone
    def retained():
        e = r.status()["earliest"]
        try:
            return e > 0 and store_frames(r.datadir) == total[e:]
        except FileNotFoundError:
            return False    # a file removed while it was being read
    wait_until(retained, 60, "retention to remove the oldest segments")
    live.close()
    up.close()
    assert r.stop() == 0


def test_first_read_of_sealed_segments_is_off_the_loop(relays, workdir,
                                                      builddir, tokfile):
    """After a restart the sealed segments are trusted, not yet checked:
    the first reader of each makes the relay check it whole, and a reader
    that starts between two index points makes it walk frame headers.
    With every segment read slow, live frames still arrive on time, and
    the readers get exactly the stored frames."""
    fc = FaultControl(builddir, workdir)
    r = start_relay(relays, fc, tokfile)
    frames = [gen_frame(i) for i in range(3000)]
    up = feed(r.ingest_addr, frames)
    r.wait_durable(len(frames), timeout=120)
    up.close()
    assert r.stop() == 0
    r.start()
    fc.set(f"op=read,path={r.datadir}/segment-*.wal,err=none,"
           f"delay={DELAY_MS}")
    live = Reader(r.listen_addr, "latest")
    starts = [0, 1234]
    # their replies wait for the check of the segment they start in
    readers = [Reader(r.listen_addr, str(s)) for s in starts]
    wait_until(lambda: len(read_delays(fc)) >= 1, 60, "a delayed read")
    up = connect(r.ingest_addr, timeout=60)
    more = [gen_frame(len(frames) + i) for i in range(6)]
    trips = live_trips(r, up, live, more)
    assert max(trips) < LIVE_MAX_S, trips
    fc.clear()
    total = frames + more
    for s, c in zip(starts, readers):
        want = b"".join(total[s:])
        wait_until(lambda: c.size() >= len(want), 120, "catch-up")
        assert c.snapshot() == want
        c.close()
    assert live.snapshot() == b"".join(more)
    live.close()
    up.close()
    assert r.stop() == 0


@pytest.mark.parametrize("kind", ["zstd", "plain"])
def test_subscriber_closed_during_its_read(relays, workdir, builddir, tokfile,
                                           kind):
    """A subscriber that goes while its read (or warm-up) is in flight is
    freed at once; the read's completion touches nothing of it (a
    sanitizer build reports any use after free in the relay's log, which
    fails the test), and the relay serves the next reader exactly."""
    fc = FaultControl(builddir, workdir)
    r = start_relay(relays, fc, tokfile)
    frames = [gen_frame(i) for i in range(1500)]
    up = feed(r.ingest_addr, frames)
    r.wait_durable(len(frames), timeout=120)
    if kind == "plain":
        evict(r.datadir)
    fc.set(f"op=read,path={r.datadir}/segment-*.wal,err=none,"
           f"delay={DELAY_MS}")
    opts = " compress=zstd" if kind == "zstd" else ""
    gone = [Reader(r.listen_addr, "0", opts) for _ in range(3)]
    wait_until(lambda: len(read_delays(fc)) >= 1, 60, "a delayed read")
    for c in gone:
        c.close()
    wait_until(lambda: r.read_log().count("closed by the subscriber") >= 3,
               30, "the relay to close them")
    wait_until(lambda: len(r.status()["subscribers"]) == 0, 30,
               "them to be freed")
    fc.clear()
    # their reads finish now, after them; the relay goes on serving
    c = Reader(r.listen_addr, "0")
    want = b"".join(frames)
    wait_until(lambda: c.size() >= len(want), 120, "a new reader")
    assert c.snapshot() == want
    c.close()
    up.close()
    assert r.stop() == 0


def test_resume_at_corrupt_frame_of_unchecked_segment_is_refused(
        relays, workdir, builddir, tokfile):
    """After a restart a sealed segment is checked on the I/O pool the
    first time it is read: a resuming subscriber that asks for a frame it
    cannot serve still gets the corrupt refusal, not an OK line: its
    handshake waits for that check."""
    fc = FaultControl(builddir, workdir)
    r = start_relay(relays, fc, tokfile)
    frames = [gen_frame(i) for i in range(1500)]
    up = feed(r.ingest_addr, frames)
    r.wait_durable(len(frames), timeout=120)
    up.close()
    epoch = r.status()["epoch"]
    assert r.stop() == 0
    first = sorted(n for n in os.listdir(r.datadir) if n.endswith(".wal"))[0]
    bad = 100
    off = sum(len(f) for f in frames[:bad]) + 40   # inside frame 100's value
    with open(os.path.join(r.datadir, first), "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x40]))
    r.start()
    s = connect(r.listen_addr, timeout=60)
    s.sendall(f"FCWAL-SUB/1 {TOKEN} {bad + 5} epoch={epoch}\n".encode())
    line = recv_line(s)
    assert line.startswith(f"FCWAL-ERR/1 corrupt first={bad} "), line
    s.close()
    # frames before the corrupt one are served
    c = Reader(r.listen_addr, "0")
    want = b"".join(frames[:bad])
    wait_until(lambda: c.size() >= len(want), 60, "the frames before it")
    assert c.snapshot()[:len(want)] == want
    c.close()
    assert r.stop() == 0
