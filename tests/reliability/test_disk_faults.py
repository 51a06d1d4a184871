"""Disk faults under load, checked by the oracle.

A relay preloads the fault injection library (tests/fault/wrfault.so) and
takes a producer's stream with a resuming and a stock subscriber, small
segments (a rotation every ~100 ms) and 4 MiB retention, while the test
makes one file system call after another fail through the control file:

- writes of segment data: ENOSPC, EIO, EFBIG, cut short at a point inside
  a chunk (short=1: the write that crosses the point returns a short
  count, the next one fails) or failed whole (short=0), and short counts
  without any error (short=only);
- fdatasync of a segment: EIO, and latency;
- rotation: the open of the new segment file, the fsync of the directory
  that makes it durable, ftruncate (the cut back after a failed write);
- retention: unlink of the oldest segment;
- metadata (walrelay.meta: written at start, at a clean stop and when a
  chain relay adopts its upstream's epoch): the open, write, fsync and
  rename of its temporary file and the directory fsync.

For every fault that fails a call the store depends on, while the fault
holds: the relay stays up and reports unready (/readyz 503, storage
error), stops reading its upstream (upstream_paused, and the sequence it
accepted stops moving across a failed retry), stores no partial frame
(the newest segment ends on a whole frame), and no resuming subscriber
holds a sequence beyond the durable end. When the fault clears it
recovers by itself (no SIGHUP), and at the end the oracle finds every
frame the producer sent stored once, in order, and every subscriber's
frames at the store's sequences (oracle.check_scenario).

Faults that lose nothing and block nothing (fdatasync latency, short
counts, retention that cannot delete) leave the relay ready: storing goes
on, and the test checks that.

Archiving and snapshots (test_archive_and_snapshot_faults_under_load,
test_snapshot_metadata_dirsync_fault_then_kill) are background work: their
faults leave the relay ready and storing; what is checked is described
above BgCase. A failed read on the I/O pool while a zstd subscriber
catches up: test_read_fault_during_zstd_catch_up.

    make check          a sample of the matrix (DISK_FAULTS unset)
    make check-faults   every case (DISK_FAULTS=full), fsync always and
                        interval
"""

import os
import random
import time

import pytest

from conftest import TOKEN, record_figures
from harness import Producer, ResumingSubscriber, StatusPoller, StockSubscriber
from oracle import FrameSplitter, Oracle, check_scenario
from relayutil import FaultControl, Relay, wait_until

FULL = os.environ.get("DISK_FAULTS", "") == "full"
FSYNC_ERRORS = 'walrelay_storage_errors_total{op="fsync"}'
SEGMENT = 64 * 1024
RETAIN = 4 * 1024 * 1024      # about 16,000 frames: more than a case stores
SEED = int(os.environ.get("DISK_FAULTS_SEED", "0")) or random.randrange(1, 1 << 31)

# (name, kind, rule); {d} is the data directory. Kinds: "error" (the store
# cannot go on: unready, paused, recovers), "once" (one failed call),
# "slow" (fdatasync latency),
# "short" (short counts only), "retention" (unlink).
WRITE_ERRS = ["ENOSPC", "EIO", "EFBIG"]


def write_cases(rng, n_splits):
    """Write faults at split points: `after` bytes into the next writes,
    i.e. somewhere inside a chunk (a chunk holds the frames of one read)."""
    cases = []
    for err in WRITE_ERRS:
        points = [0, 1] + [rng.randrange(2, 48 * 1024) for _ in range(n_splits)]
        for after in points:
            for short in (1, 0):
                if after == 0 and short == 0:
                    continue
                cases.append((f"write {err} after={after} short={short}",
                              "error", f"op=write,path={{d}}/segment-*.wal,"
                              f"after={after},short={short},err={err}"))
    return cases


ROTATION_CASES = [
    ("open of a new segment EMFILE", "error",
     "op=open,path={d}/segment-*.wal,err=EMFILE"),
    ("open of a new segment ENOSPC", "error",
     "op=open,path={d}/segment-*.wal,err=ENOSPC"),
    ("fsync of the directory EIO", "error", "op=sync,path={d},dir=1,err=EIO"),
    ("fsync of the directory EIO, the new file cannot be removed", "error",
     "op=sync,path={d},dir=1,err=EIO;op=unlink,path={d}/segment-*.wal,err=EIO"),
    ("ftruncate after a failed write EIO", "error",
     "op=write,path={d}/segment-*.wal,after=3000,err=ENOSPC;"
     "op=truncate,path={d}/segment-*.wal,err=EIO"),
]
SYNC_CASES = [
    ("fdatasync EIO", "error", "op=sync,path={d}/segment-*.wal,dir=0,err=EIO"),
    ("fdatasync EIO once", "once",
     "op=sync,path={d}/segment-*.wal,dir=0,err=EIO,times=1"),
    ("fdatasync latency 200 ms", "slow",
     "op=sync,path={d}/segment-*.wal,dir=0,err=none,delay=200"),
]
OTHER_CASES = [
    ("short counts every 5000 bytes", "short",
     "op=write,path={d}/segment-*.wal,after=5000,short=only"),
    ("short counts every 777 bytes", "short",
     "op=write,path={d}/segment-*.wal,after=777,short=only"),
    ("unlink by retention EACCES", "retention",
     "op=unlink,path={d}/segment-*.wal,err=EACCES"),
]


def matrix(rng):
    if FULL:
        return (write_cases(rng, 6) + ROTATION_CASES + SYNC_CASES +
                OTHER_CASES)
    w = write_cases(rng, 1)
    return ([rng.choice(w[:4]), rng.choice(w[4:])] + ROTATION_CASES[2:] +
            [SYNC_CASES[0], SYNC_CASES[2], OTHER_CASES[0], OTHER_CASES[2]])


def newest_segment_whole(datadir):
    """Bytes of a partial frame at the end of the newest segment (0: the
    file ends on a whole frame)."""
    names = sorted(n for n in os.listdir(datadir) if n.endswith(".wal"))
    if not names:
        return 0
    with open(os.path.join(datadir, names[-1]), "rb") as f:
        fs = FrameSplitter()
        fs.feed(f.read())
    return fs.pending()


def ready(r):
    return r.http("/readyz")


class Case:
    def __init__(self, r, fc, prod, subs, o, name, kind, rule):
        self.r, self.fc, self.prod, self.subs, self.o = r, fc, prod, subs, o
        self.name, self.kind = name, kind
        self.rule = rule.format(d=r.datadir)
        self.figures = {}

    def subs_within_durable(self):
        """No resuming subscriber holds a sequence the store has not made
        durable (positions first: the durable sequence only grows)."""
        pos = [(s.name, s.position()) for s in self.subs]
        durable = self.r.status()["durable"]
        for name, p in pos:
            assert p is None or p <= durable, \
                f"{self.name}: {name} holds sequence {p - 1}, durable is {durable}"
        return durable

    def run(self):
        r, fc = self.r, self.fc
        st0 = r.status()
        h0 = len(fc.hits())
        self.fsync_errors0 = r.metric(FSYNC_ERRORS)   # before the rule
        fc.set(self.rule)
        getattr(self, "run_" + self.kind)(st0, h0)
        fc.clear()
        # whatever the fault was, storing goes on by itself
        d = r.status()["durable"]
        wait_until(lambda: r.status()["durable"] >= d + 300, 30,
                   f"{self.name}: storing to go on after the fault")
        assert ready(r)[0] == 200, ready(r)
        self.checkpoint()

    def checkpoint(self):
        """The oracle's checks with the producer held: the store holds
        every frame sent, every resuming subscriber has them all, so that
        any run a stock subscriber holds starts inside the snapshot."""
        r, prod = self.r, self.prod
        prod.paused.set()
        try:
            wait_until(lambda: r.status()["durable"] == prod.next_pid, 30,
                       f"{self.name}: every frame sent to be durable")
            for s in self.subs:
                s.wait_position(prod.next_pid, 30)
            # nothing being written now: the file ends on a whole frame
            assert newest_segment_whole(r.datadir) == 0, \
                f"{self.name}: the newest segment ends in a partial frame"
            self.o.snapshot("a", f"after {self.name}")
            self.o.check()
            assert not self.o.violations, self.o.report()
            self.o.compact()
        finally:
            prod.paused.clear()

    def run_error(self, st0, h0):
        r, fc = self.r, self.fc
        wait_until(lambda: len(fc.hits()) > h0, 30, f"{self.name}: the fault")
        wait_until(lambda: r.metric("walrelay_upstream_paused") == 1, 30,
                   f"{self.name}: the relay to stop reading the producer")
        code, body = ready(r)
        assert code == 503 and "storage error" in body, (self.name, code, body)
        st1 = r.status()
        assert st1["storage_error"] != 0 and st1["ready"] is False
        # a retry fails while the fault holds: nothing more is accepted,
        # nothing more is durable, nothing is sent past durable
        h1 = len(fc.hits())
        wait_until(lambda: len(fc.hits()) > h1, 30,
                   f"{self.name}: a retry under the fault")
        st2 = r.status()
        assert st2["next"] == st1["next"], \
            f"{self.name}: accepted frames while paused ({st1['next']} -> {st2['next']})"
        assert st2["durable"] == st1["durable"]
        assert st2["upstream"]["paused"] is True
        assert ready(r)[0] == 503
        assert self.subs_within_durable() == st2["durable"]
        if "truncate" not in self.rule:
            # (a failed cut leaves the partial frame until a cut works)
            assert newest_segment_whole(r.datadir) == 0, \
                f"{self.name}: the newest segment ends in a partial frame"
        self.figures = {"hits": len(fc.hits()) - h0,
                        "held_at": st2["durable"]}
        fc.clear()
        # recovers by itself: the store retries every second
        t = time.monotonic()
        wait_until(lambda: ready(r)[0] == 200, 15,
                   f"{self.name}: ready again without SIGHUP")
        wait_until(lambda: r.metric("walrelay_upstream_paused") == 0, 15,
                   f"{self.name}: reading again")
        self.figures["recovered_s"] = round(time.monotonic() - t, 2)

    def run_once(self, st0, h0):
        """One failed call, then the disk works: the next retry succeeds
        with the rule still in place."""
        r, fc = self.r, self.fc
        wait_until(lambda: len(fc.hits()) > h0, 30, f"{self.name}: the fault")
        wait_until(lambda: r.metric(FSYNC_ERRORS) > self.fsync_errors0,
                   30, f"{self.name}: the failure to be counted")
        t = time.monotonic()
        wait_until(lambda: ready(r)[0] == 200 and
                   r.status()["durable"] > st0["next"], 15,
                   f"{self.name}: storing again after one failure")
        assert len(fc.hits()) == h0 + 1
        self.subs_within_durable()
        self.figures = {"hits": 1, "recovered_s": round(time.monotonic() - t, 2)}

    def run_slow(self, st0, h0):
        r = self.r
        f0 = r.metric("walrelay_storage_fsyncs_total")
        t0 = time.monotonic()
        d0 = r.status()["durable"]

        def advanced():
            return self.subs_within_durable() >= d0 + 1000
        wait_until(advanced, 60, f"{self.name}: storing under latency")
        dt = time.monotonic() - t0
        fsyncs = r.metric("walrelay_storage_fsyncs_total") - f0
        # group commit: one fdatasync per 200 ms at most, covering many frames
        assert fsyncs <= dt / 0.2 + 2, (fsyncs, dt)
        assert ready(r)[0] == 200
        self.figures = {"fsyncs": int(fsyncs), "seconds": round(dt, 2)}

    def run_short(self, st0, h0):
        r, fc = self.r, self.fc
        wait_until(lambda: len(fc.hits()) >= h0 + 50, 60,
                   f"{self.name}: 50 short writes")
        st = r.status()
        assert st["storage_error"] == 0 and ready(r)[0] == 200
        # storing goes on under the short counts (interval: at the next sync)
        wait_until(lambda: r.status()["durable"] > st0["durable"], 30,
                   f"{self.name}: frames made durable under short counts")
        self.subs_within_durable()
        self.figures = {"short_writes": len(fc.hits()) - h0}

    def run_retention(self, st0, h0):
        r, fc = self.r, self.fc
        wait_until(lambda: len(fc.hits()) >= h0 + 3, 60,
                   f"{self.name}: three failed removals")
        wait_until(lambda: r.metric("walrelay_store_bytes") > RETAIN + 3 * SEGMENT,
                   60, f"{self.name}: the store to grow past retention")
        # nothing is at risk: the relay stays ready and keeps storing
        assert ready(r)[0] == 200
        assert r.metric("walrelay_upstream_paused") == 0
        assert "retention cannot remove the file" in r.read_log()
        grown = r.metric("walrelay_store_bytes")
        fc.clear()
        # the next rotation removes the backlog
        wait_until(lambda: r.metric("walrelay_store_bytes") <= RETAIN + SEGMENT,
                   30, f"{self.name}: retention to catch up")
        self.figures = {"grown_to": int(grown)}


@pytest.mark.timeout(900 if FULL else 240)
@pytest.mark.parametrize("fsync", ["always", "interval:20"] if FULL else ["always"])
def test_disk_faults_under_load(walrelay, walcat, builddir, workdir, tokfile,
                                fsync):
    rng = random.Random(SEED)
    print(f"\ndisk faults: seed {SEED} (DISK_FAULTS_SEED replays), fsync {fsync}, "
          f"{'full' if FULL else 'short'} matrix")
    fc = FaultControl(builddir, workdir)
    args = ["--subscribe-token-file", tokfile, "--fsync", fsync,
            "--segment-bytes", str(SEGMENT), "--retain-bytes", str(RETAIN),
            "--tail-memory", "1M", "--subscriber-buffer", "64k",
            "--log-level", "info"]
    a = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=[str(x) for x in args], env=fc.env())
    a.start()
    o = Oracle(fsync.split(":")[0], walcat)
    o.add_relay("a", a)
    o.note_status("a", a.status())
    poller = StatusPoller(o)
    prod = Producer(o, "a", rate=2000)
    subs = [ResumingSubscriber(o, "sub-a", "a", TOKEN)]
    stock = StockSubscriber(o, "stock-a", "a", TOKEN)
    threads = [poller, prod, stock] + subs
    for t in threads:
        t.start()
    results = []
    t0 = time.monotonic()
    try:
        a.wait_durable(1000, timeout=60)
        for name, kind, rule in matrix(rng):
            c = Case(a, fc, prod, subs, o, name, kind, rule)
            c.run()
            results.append((name, c.figures))
            print(f"  {name}: {c.figures}", flush=True)
        prod.finish()
        wait_until(lambda: not a.status()["upstream"]["connected"], 30,
                   "a to see the producer's end")
        end = a.status()["next"]
        a.wait_durable(end)
        for s in subs:
            s.wait_position(end)
    finally:
        for t in threads:
            if hasattr(t, "stop"):
                t.stop()
        prod.stop_ev.set()
    assert a.stop() == 0
    log = a.read_log()
    assert "disk writes work again" in log
    o.verify("a", "after stop")
    o.snapshot("a", "final")
    check_scenario(o, chain=("a",))
    # a restart finds every frame at its sequence, in the same epoch
    epoch = o.relays["a"].snapshots[-1].epoch
    a.start()
    st = a.status()
    assert (st["epoch"], st["next"]) == (epoch, end), st
    assert a.stop() == 0
    for t in threads:
        assert getattr(t, "error", None) is None, f"{t.name}: {t.error}"
    assert stock.frames > 0
    # every frame stored was seen by a snapshot or a subscriber before
    # retention deleted it, and checked against what the producer sent
    assert o.stats["unobserved"] == 0, o.stats
    record_figures("disk_faults", {
        "fsync": fsync, "seed": SEED, "full": FULL, "cases": len(results),
        "faults_injected": len(fc.hits()), "frames_sent": prod.next_pid,
        "stored": o.relays["a"].snapshots[-1].next,
        "seconds": round(time.monotonic() - t0, 1),
        "segments": poller.rotations("a"),
        "retention_deleted": poller.deletions("a"),
        **{k: v for k, v in o.stats.items()}})


# ---- metadata ---------------------------------------------------------------

META_CASES = [
    ("open", "op=open,path={d}/walrelay.meta.tmp,err=ENOSPC"),
    ("write", "op=write,path={d}/walrelay.meta.tmp,err=ENOSPC"),
    ("fsync", "op=sync,path={d}/walrelay.meta.tmp,err=EIO"),
    ("rename", "op=rename,path={d}/walrelay.meta,err=EIO"),
    ("directory fsync", "op=sync,path={d},dir=1,err=EIO"),
]


def meta_cases():
    return META_CASES if FULL else [META_CASES[3], META_CASES[4]]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("call,rule", meta_cases(), ids=[c[0] for c in meta_cases()])
def test_metadata_faults_at_start_and_stop(walrelay, walcat, builddir, workdir,
                                           tokfile, call, rule):
    """walrelay.meta is replaced at start (running) and at a clean stop.
    A start that cannot write it refuses to run, says why and changes no
    frame; a stop that cannot write it says the next start treats the stop
    as unclean; either way nothing accepted is lost and (fsync always) the
    epoch stays."""
    fc = FaultControl(builddir, workdir)
    args = ["--subscribe-token-file", str(tokfile), "--segment-bytes", "64k"]
    a = Relay(walrelay, workdir / "a", workdir / "a.log", args=args,
              env=fc.env())
    a.start()
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    prod = Producer(o, "a", rate=2000)
    sub = ResumingSubscriber(o, "sub-a", "a", TOKEN)
    prod.start()
    sub.start()
    a.wait_durable(500)
    prod.finish()
    wait_until(lambda: not a.status()["upstream"]["connected"], 30,
               "a to see the producer's end")
    end = a.status()["next"]
    a.wait_durable(end)
    sub.wait_position(end)
    epoch = a.status()["epoch"]

    # the stop cannot write the metadata
    fc.set(rule.format(d=a.datadir))
    assert a.stop() == 0
    assert "the next start will treat this stop as unclean" in a.read_log()
    stop_hits = len(fc.hits())
    assert stop_hits > 0

    # the start cannot write it either: refuses to run, says why
    size = {n: os.path.getsize(os.path.join(a.datadir, n))
            for n in os.listdir(a.datadir) if n.endswith(".wal")}
    a.start(wait=False)
    rc = a.proc.wait(30)
    assert rc != 0
    assert "cannot write the metadata file" in a.read_log()
    assert len(fc.hits()) > stop_hits
    a.log.close()
    assert {n: os.path.getsize(os.path.join(a.datadir, n))
            for n in os.listdir(a.datadir) if n.endswith(".wal")} == size

    # the fault clears: same epoch, every frame
    fc.clear()
    a.start()
    st = a.status()
    assert st["epoch"] == epoch and st["next"] == end
    assert a.http("/readyz")[0] == 200
    sub.stop()
    assert a.stop() == 0
    o.verify("a", "after stop")
    o.snapshot("a", "final")
    check_scenario(o, chain=("a",))


@pytest.mark.timeout(240)
def test_metadata_fault_when_adopting_upstream_epoch(walrelay, walcat, builddir,
                                                     workdir, tokfile):
    """A chain relay on an empty data directory writes walrelay.meta when
    it adopts its upstream's epoch and position. While that fails it is
    unready, refuses subscribers (busy) and retries at its backoff; once
    the fault clears it adopts by itself and holds the origin's frames at
    the origin's sequences."""
    fc = FaultControl(builddir, workdir)
    common = ["--subscribe-token-file", str(tokfile), "--segment-bytes", "64k",
              "--upstream-backoff-min", "10", "--upstream-backoff-max", "200"]
    a = Relay(walrelay, workdir / "a", workdir / "a.log", args=common)
    a.start()
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    prod = Producer(o, "a", rate=2000)
    prod.start()
    a.wait_durable(500)
    bdir = workdir / "b"
    # the first rename (at start) goes through, the adoption's fails
    fc.set(f"op=rename,path={bdir}/walrelay.meta,after=1,err=EIO")
    b = Relay(walrelay, bdir, workdir / "b.log", ingest=False, env=fc.env(),
              args=common + ["--upstream", a.listen_addr,
                             "--upstream-protocol", "sub",
                             "--upstream-token-file", str(tokfile)])
    b.start()
    o.add_relay("b", b, upstream="a")
    try:
        wait_until(lambda: len(fc.hits()) >= 3, 30, "three failed adoptions")
        code, body = b.http("/readyz")
        assert code == 503 and "positioned" in body, (code, body)
        assert b.status()["next"] == 0
        assert "cannot adopt the upstream's position" in b.read_log()
        sub = ResumingSubscriber(o, "sub-b", "b", TOKEN)
        sub.start()
        wait_until(lambda: sub.refusals.get("busy", 0) > 0, 30,
                   "b to refuse a subscriber while not positioned")
        fc.clear()
        wait_until(lambda: b.http("/readyz")[0] == 200, 30,
                   "b to adopt by itself")
        assert b.status()["epoch"] == a.status()["epoch"]
        prod.finish()
        wait_until(lambda: not a.status()["upstream"]["connected"], 30,
                   "a to see the producer's end")
        end = a.status()["next"]
        a.wait_durable(end)
        wait_until(lambda: b.status()["durable"] == end, 60, "b to catch up")
        sub.wait_position(end)
    finally:
        prod.stop_ev.set()
    sub.stop()
    for name, r in (("a", a), ("b", b)):
        assert r.stop() == 0
        o.verify(name, "after stop")
        o.snapshot(name, "final")
    check_scenario(o, chain=("a", "b"))


# ---- archiving and snapshots --------------------------------------------------
#
# Both are background work on threads of their own (wr-archiver,
# wr-snapshot; compaction removes covered segments on the I/O pool, wr-io).
# A disk fault there puts nothing accepted at risk: the raw segment, or the
# previous snapshot and every segment after it, still hold every frame.
# Expected, for every fault below, while it holds: the relay stays ready
# and reading its upstream, stores and serves on; the failure is counted
# (walrelay_archive_failures_total, walrelay_snapshot_failures_total) and
# logged once for the episode with the file and the errno, and the
# attempts go on (the archiver every 5 s, snapshots at each period); no
# temporary file is served (only .wal and complete .wal.zst appear in the
# store), the covered sequence does not move and no segment after it is
# removed, and walrelay.meta names a snapshot file that exists. Once the
# fault clears, without a SIGHUP, the next attempt succeeds (logged: works
# again), no temporary or leftover file stays in the directory, and every
# file in it is one the store serves or a recorded snapshot. The oracle
# then checks the store and the subscribers, as above; at the end the
# directory must be recoverable by the cache (oracle check 9).

BG_KEYS = 6000      # the snapshot's state: ~1.4 MB, a job spills a run
ARCHIVE_FILE = "{d}/segment-*.wal.zst.tmp"
SNAP_TMP = "{d}/walrelay-snap-*.tmp"

ARCHIVE_CASES = [
    ("archive: write ENOSPC", "archive",
     f"op=write,path={ARCHIVE_FILE},err=ENOSPC"),
    ("archive: write EIO after 1000 bytes, cut short", "archive",
     f"op=write,path={ARCHIVE_FILE},after=1000,short=1,err=EIO"),
    ("archive: write EFBIG after 3000 bytes, failed whole", "archive",
     f"op=write,path={ARCHIVE_FILE},after=3000,short=0,err=EFBIG"),
    ("archive: short counts every 700 bytes", "archive_ok",
     f"op=write,path={ARCHIVE_FILE},after=700,short=only"),
    ("archive: fdatasync EIO", "archive",
     f"op=sync,path={ARCHIVE_FILE},dir=0,err=EIO"),
    ("archive: create of the temporary file EMFILE", "archive",
     f"op=open,path={ARCHIVE_FILE},err=EMFILE"),
    ("archive: open of the raw segment EACCES", "archive",
     "op=open,path={d}/segment-*.wal,thread=wr-archiver,err=EACCES"),
    ("archive: read of the raw segment EIO", "archive",
     "op=read,path={d}/segment-*.wal,thread=wr-archiver,err=EIO"),
    ("archive: rename into place EIO", "archive",
     f"op=rename,path={ARCHIVE_FILE},err=EIO"),
    ("archive: directory fsync after the rename EIO", "archive",
     "op=sync,path={d},dir=1,thread=wr-archiver,err=EIO"),
    ("archive: directory fsync EIO, the undo's unlink EIO", "archive",
     "op=sync,path={d},dir=1,thread=wr-archiver,err=EIO;"
     "op=unlink,path={d}/segment-*.wal.zst,thread=wr-archiver,err=EIO"),
    ("archive: unlink of the raw segment EACCES", "archive",
     "op=unlink,path={d}/segment-*.wal,thread=wr-archiver,err=EACCES"),
    ("archive: directory fsync after the unlink EIO", "archive",
     "op=sync,path={d},dir=1,thread=wr-archiver,after=1,err=EIO"),
]
SNAPSHOT_CASES = [
    ("snapshot: write ENOSPC", "snapshot",
     f"op=write,path={SNAP_TMP},err=ENOSPC"),
    ("snapshot: write of the body EIO after 5000 bytes, cut short",
     "snapshot", "op=write,path={d}/walrelay-snap-body.tmp,after=5000,"
     "short=1,err=EIO"),
    ("snapshot: write of the frames EFBIG after 3000 bytes, failed whole",
     "snapshot", "op=write,path={d}/walrelay-snap-frames.tmp,after=3000,"
     "short=0,err=EFBIG"),
    ("snapshot: write of the lz4 file ENOSPC after 1000 bytes", "snapshot",
     "op=write,path={d}/walrelay-snap-lz4.tmp,after=1000,err=ENOSPC"),
    ("snapshot: write of a sorted run ENOSPC", "snapshot",
     "op=write,path={d}/walrelay-snap-run-*.tmp,err=ENOSPC"),
    ("snapshot: short counts every 900 bytes", "snapshot_ok",
     f"op=write,path={SNAP_TMP},after=900,short=only"),
    ("snapshot: fdatasync EIO", "snapshot",
     f"op=sync,path={SNAP_TMP},dir=0,err=EIO"),
    ("snapshot: create of a temporary file ENOSPC", "snapshot",
     f"op=open,path={SNAP_TMP},err=ENOSPC"),
    ("snapshot: create of a sorted run EMFILE", "snapshot",
     "op=open,path={d}/walrelay-snap-run-*.tmp,err=EMFILE"),
    ("snapshot: read of a segment EIO", "snapshot",
     "op=read,path={d}/segment-*,thread=wr-snapshot,err=EIO"),
    ("snapshot: rename of the frames file EIO", "snapshot",
     "op=rename,path={d}/walrelay-frames-*,err=EIO"),
    ("snapshot: rename of the snapshot EIO", "snapshot",
     "op=rename,path={d}/snapshot-*,err=EIO"),
    ("snapshot: directory fsync after the renames EIO", "snapshot",
     "op=sync,path={d},dir=1,thread=wr-snapshot,err=EIO"),
    ("snapshot: metadata write ENOSPC", "snapshot",
     "op=write,path={d}/walrelay.meta.tmp,thread=wr-snapshot,err=ENOSPC"),
    ("snapshot: metadata rename EIO", "snapshot",
     "op=rename,path={d}/walrelay.meta,thread=wr-snapshot,err=EIO"),
    ("snapshot: unlink of superseded snapshots EACCES", "snapshot_clean",
     "op=unlink,path={d}/snapshot-*,thread=wr-snapshot,err=EACCES"),
    ("compaction: unlink of covered segments EACCES", "compact",
     "op=unlink,path={d}/segment-*,thread=wr-io,err=EACCES"),
]


def bg_matrix():
    only = os.environ.get("DISK_FAULTS_ONLY")    # a substring of case names
    if only:
        return [c for c in ARCHIVE_CASES + SNAPSHOT_CASES if only in c[0]]
    if FULL:
        return ARCHIVE_CASES + SNAPSHOT_CASES
    # the cases of the defects found (docs/reliability.md), and a run file
    return [ARCHIVE_CASES[11], SNAPSHOT_CASES[4], SNAPSHOT_CASES[11]]


def log_count(r, text):
    return r.read_log().count(text)


def meta_snapshot(datadir):
    """(covered, file) of the snapshot walrelay.meta records, or None."""
    try:
        with open(os.path.join(datadir, "walrelay.meta")) as f:
            for line in f:
                if line.startswith("snapshot "):
                    w = line.split()
                    return int(w[1]), w[4]
    except FileNotFoundError:
        pass
    return None


def dir_problems(r, keep):
    """What in the data directory the store does not account for: a
    temporary file, a segment file it does not serve (a leftover), a
    snapshot without its frames file or beyond keep, walrelay.meta naming a
    missing snapshot, a segment after the covered sequence removed."""
    st = r.status()
    names = set(os.listdir(r.datadir))
    served = {s["name"] for s in st["segments"]}
    probs = [f"temporary file {n}" for n in names if n.endswith(".tmp")]
    segs = {n for n in names if n.startswith("segment-")}
    # (a segment archived or removed between the listing and the status
    # shows as a difference for one round: callers wait for none)
    probs += [f"{n}: in the directory, not served" for n in segs - served]
    probs += [f"{n}: served, not in the directory" for n in served - segs]
    snaps = sorted(n for n in names if n.startswith("snapshot-"))
    frames = {n for n in names if n.startswith("walrelay-frames-")}
    for n in snaps:
        ts = n.split("-")[1].split(".")[0]
        if f"walrelay-frames-{ts}.fcw2" not in frames:
            probs.append(f"{n}: no frames file")
    for n in frames:
        ts = n[len("walrelay-frames-"):].split(".")[0]
        if not any(s.startswith(f"snapshot-{ts}.") for s in snaps):
            probs.append(f"{n}: no snapshot")
    if len(snaps) > keep:
        probs.append(f"{len(snaps)} snapshots, snapshot-keep is {keep}")
    ms = meta_snapshot(r.datadir)
    if ms is not None:
        covered, name = ms
        if name not in names:
            probs.append(f"walrelay.meta names {name}, which is missing")
        if st["earliest"] > covered:
            probs.append(f"the store starts at {st['earliest']}, after the "
                         f"recorded snapshot's end {covered}")
    return probs


def snap_files_between_jobs(r):
    """Problems with the snapshot files while no job runs: a temporary
    file or a frames file without its snapshot left by a failed job."""
    last = []

    def quiet():
        f0 = r.metric("walrelay_snapshot_failures_total")
        n0 = r.metric("walrelay_snapshots_total")
        if r.metric("walrelay_snapshot_running"):
            return False
        names = os.listdir(r.datadir)
        if (r.metric("walrelay_snapshot_running") or
                r.metric("walrelay_snapshot_failures_total") != f0 or
                r.metric("walrelay_snapshots_total") != n0):
            return False        # a job ran meanwhile: look again
        last[:] = [n for n in names if n.startswith("walrelay-snap-")]
        snaps = {n.split("-")[1].split(".")[0] for n in names
                 if n.startswith("snapshot-")}
        last.extend(n for n in names if n.startswith("walrelay-frames-")
                    and n[16:].split(".")[0] not in snaps)
        return True
    wait_until(quiet, 30, "a moment between snapshot jobs")
    return last


def meta_ok(r):
    """walrelay.meta names a snapshot that exists, and no segment after
    the snapshot's end was removed."""
    ms = meta_snapshot(r.datadir)
    if ms is None:
        return
    covered, name = ms
    assert os.path.exists(os.path.join(r.datadir, name)), \
        f"walrelay.meta names {name}, which is missing"
    assert r.status()["earliest"] <= covered, (r.status()["earliest"], covered)


class BgCase(Case):
    """A fault in archiving, snapshotting or compaction: background work.
    The store and the upstream are never held up by it."""

    KEEP = 2

    METRICS = ("walrelay_archive_failures_total",
               "walrelay_snapshot_failures_total", "walrelay_snapshots_total",
               "walrelay_snapshot_covered_sequence")
    LINES = ("archiving waits and tries again", "archiving works again",
             "archived sequences", "snapshot failed, the previous one stays",
             "snapshots work again")

    def run(self):
        r, fc = self.r, self.fc
        st0 = r.status()
        h0 = len(fc.hits())
        # before the rule: its first failure may come at once
        self.m0 = {m: r.metric(m) for m in self.METRICS}
        log = r.read_log()
        self.l0 = {t: log.count(t) for t in self.LINES}
        fc.set(self.rule)
        getattr(self, "run_" + self.kind)(st0, h0)
        fc.clear()
        d = r.status()["durable"]
        wait_until(lambda: r.status()["durable"] >= d + 300, 30,
                   f"{self.name}: storing to go on after the fault")
        self.checkpoint()

    def checkpoint(self):
        r, prod = self.r, self.prod
        prod.paused.set()
        try:
            wait_until(lambda: r.status()["durable"] == prod.next_pid, 30,
                       f"{self.name}: every frame sent to be durable")
            for s in self.subs:
                s.wait_position(prod.next_pid, 30)
            last = []

            def settled():
                last[:] = dir_problems(r, self.KEEP)
                return not last
            try:
                wait_until(settled, 30, "")
            except AssertionError:
                raise AssertionError(f"{self.name}: the directory after the "
                                     f"fault: {last}") from None
            assert newest_segment_whole(r.datadir) == 0
            self.o.snapshot("a", f"after {self.name}")
            self.o.check()
            assert not self.o.violations, self.o.report()
            self.o.compact()
        finally:
            prod.paused.clear()

    def holding(self, st0):
        """While the fault holds: ready, reading, storing, nothing sent
        past durable."""
        r = self.r
        assert ready(r)[0] == 200, (self.name, ready(r))
        assert r.metric("walrelay_upstream_paused") == 0, self.name
        st = r.status()
        assert st["storage_error"] == 0
        assert st["durable"] > st0["durable"], \
            f"{self.name}: nothing stored while the fault held"
        self.subs_within_durable()
        for s in st["segments"]:
            assert s["name"].endswith((".wal", ".wal.zst")), s

    def run_archive(self, st0, h0):
        r, fc = self.r, self.fc
        f0 = self.m0["walrelay_archive_failures_total"]
        ep0 = self.l0["archiving waits and tries again"]
        ok0 = self.l0["archiving works again"]
        # two failed attempts: the retry, and the log line said once
        wait_until(lambda: r.metric("walrelay_archive_failures_total") >=
                   f0 + 2, 40, f"{self.name}: two failed attempts")
        assert len(fc.hits()) > h0
        self.holding(st0)
        assert log_count(r, "archiving waits and tries again") == ep0 + 1, \
            f"{self.name}: the episode is not logged exactly once"
        self.figures = {"hits": len(fc.hits()) - h0,
                        "attempts": int(r.metric(
                            "walrelay_archive_failures_total") - f0)}
        fc.clear()
        t = time.monotonic()
        wait_until(lambda: log_count(r, "archiving works again") > ok0, 30,
                   f"{self.name}: archiving to work again by itself")
        self.figures["recovered_s"] = round(time.monotonic() - t, 2)

    def run_archive_ok(self, st0, h0):
        r, fc = self.r, self.fc
        f0 = self.m0["walrelay_archive_failures_total"]
        a0 = log_count(r, "archived sequences")
        wait_until(lambda: len(fc.hits()) >= h0 + 20 and
                   log_count(r, "archived sequences") >= a0 + 2, 40,
                   f"{self.name}: archives written under short counts")
        self.holding(st0)
        assert r.metric("walrelay_archive_failures_total") == f0
        self.figures = {"short_writes": len(fc.hits()) - h0}

    def run_snapshot(self, st0, h0):
        r, fc = self.r, self.fc
        f0 = self.m0["walrelay_snapshot_failures_total"]
        ep0 = self.l0["snapshot failed, the previous one stays"]
        ok0 = self.l0["snapshots work again"]
        wait_until(lambda: r.metric("walrelay_snapshot_failures_total") >=
                   f0 + 1, 40, f"{self.name}: a failed snapshot job")
        # (a job under way when the rule came may have succeeded)
        n0 = r.metric("walrelay_snapshots_total")
        covered = r.metric("walrelay_snapshot_covered_sequence")
        wait_until(lambda: r.metric("walrelay_snapshot_failures_total") >=
                   f0 + 3, 40, f"{self.name}: two more failed jobs")
        assert len(fc.hits()) > h0
        self.holding(st0)
        # nothing a snapshot did not durably cover is removed
        assert r.metric("walrelay_snapshots_total") == n0
        assert r.metric("walrelay_snapshot_covered_sequence") == covered
        meta_ok(r)
        left = snap_files_between_jobs(r)
        assert not left, f"{self.name}: a failed job left {left}"
        assert r.status()["earliest"] <= covered
        assert log_count(r, "snapshot failed, the previous one stays") == \
            ep0 + 1, f"{self.name}: the episode is not logged exactly once"
        self.figures = {"hits": len(fc.hits()) - h0, "failed_jobs": int(
            r.metric("walrelay_snapshot_failures_total") - f0)}
        fc.clear()
        t = time.monotonic()
        wait_until(lambda: r.metric("walrelay_snapshots_total") > n0 and
                   log_count(r, "snapshots work again") > ok0, 30,
                   f"{self.name}: snapshots to work again by themselves")
        self.figures["recovered_s"] = round(time.monotonic() - t, 2)

    def run_snapshot_ok(self, st0, h0):
        r, fc = self.r, self.fc
        f0 = self.m0["walrelay_snapshot_failures_total"]
        n0 = r.metric("walrelay_snapshots_total")
        wait_until(lambda: len(fc.hits()) >= h0 + 20 and
                   r.metric("walrelay_snapshots_total") >= n0 + 2, 40,
                   f"{self.name}: snapshots written under short counts")
        self.holding(st0)
        assert r.metric("walrelay_snapshot_failures_total") == f0
        self.figures = {"short_writes": len(fc.hits()) - h0}

    def run_snapshot_clean(self, st0, h0):
        """Superseded snapshots cannot be removed: snapshots go on (the
        newest sorts last, so the cache loads it); the extra files go at
        the first job after the fault."""
        r, fc = self.r, self.fc
        n0 = r.metric("walrelay_snapshots_total")
        wait_until(lambda: len(fc.hits()) >= h0 + 2 and
                   r.metric("walrelay_snapshots_total") >= n0 + 2, 40,
                   f"{self.name}: snapshots taken, old ones not removed")
        self.holding(st0)
        meta_ok(r)
        snaps = sorted(n for n in os.listdir(r.datadir)
                       if n.startswith("snapshot-"))
        assert snaps[-1] == meta_snapshot(r.datadir)[1], snaps
        self.figures = {"hits": len(fc.hits()) - h0, "snapshots": len(snaps)}

    def run_compact(self, st0, h0):
        """Covered segments cannot be removed: the store grows, snapshots
        go on; the backlog goes at the first rotation after the fault."""
        r, fc = self.r, self.fc
        n0 = r.metric("walrelay_snapshots_total")
        wait_until(lambda: len(fc.hits()) >= h0 + 3 and
                   r.metric("walrelay_snapshots_total") >= n0 + 2, 40,
                   f"{self.name}: covered segments not removed")
        self.holding(st0)
        meta_ok(r)
        self.figures = {"hits": len(fc.hits()) - h0,
                        "segments": int(r.metric("walrelay_segments"))}


@pytest.mark.timeout(1200 if FULL else 240)
def test_archive_and_snapshot_faults_under_load(walrelay, walcat, builddir,
                                                workdir, tokfile):
    """Disk faults in the archive tier, the snapshot job (its temporary
    files, sorted runs, renames, metadata, removals) and compaction, under
    load, with a resuming and a stock subscriber; see above."""
    fc = FaultControl(builddir, workdir)
    args = ["--subscribe-token-file", tokfile, "--fsync", "always",
            "--segment-bytes", str(SEGMENT), "--tail-memory", "1M",
            "--subscriber-buffer", "64k", "--log-level", "info",
            "--archive-after", "1", "--archive-level", "1",
            "--snapshot-every", "1", "--snapshot-keep", str(BgCase.KEEP),
            "--snapshot-skew", "100", "--snapshot-memory", "1M"]
    a = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=[str(x) for x in args], env=fc.env())
    a.start()
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    o.note_status("a", a.status())
    poller = StatusPoller(o)
    prod = Producer(o, "a", rate=2000, keys=BG_KEYS)
    subs = [ResumingSubscriber(o, "sub-a", "a", TOKEN)]
    stock = StockSubscriber(o, "stock-a", "a", TOKEN)
    threads = [poller, prod, stock] + subs
    for t in threads:
        t.start()
    results = []
    t0 = time.monotonic()
    try:
        a.wait_durable(300, timeout=60)
        o.snapshot("a", "start")    # the producer check starts at 0
        wait_until(lambda: a.metric("walrelay_snapshots_total") >= 1 and
                   "archived sequences" in a.read_log(), 60,
                   "a first snapshot and a first archive")
        for name, kind, rule in bg_matrix():
            c = BgCase(a, fc, prod, subs, o, name, kind, rule)
            c.run()
            results.append((name, c.figures))
            print(f"  {name}: {c.figures}", flush=True)
        prod.finish()
        wait_until(lambda: not a.status()["upstream"]["connected"], 30,
                   "a to see the producer's end")
        end = a.status()["next"]
        a.wait_durable(end)
        for s in subs:
            s.wait_position(end)
    finally:
        for t in threads:
            if hasattr(t, "stop"):
                t.stop()
        prod.stop_ev.set()
    assert "through runs on disk" in a.read_log()
    assert a.stop() == 0
    o.verify("a", "after stop")
    o.snapshot("a", "final")
    check_scenario(o, chain=("a",))
    o.check_cache_recovery("a", "after stop")
    o.assert_ok()
    for t in threads:
        assert getattr(t, "error", None) is None, f"{t.name}: {t.error}"
    assert stock.frames > 0
    record_figures("archive_snapshot_faults", {
        "full": FULL, "cases": len(results),
        "faults_injected": len(fc.hits()), "frames_sent": prod.next_pid,
        "stored": o.relays["a"].snapshots[-1].next,
        "seconds": round(time.monotonic() - t0, 1),
        "segments": poller.rotations("a"), "archived": poller.archived("a"),
        "snapshots": poller.snapshots("a"),
        **{k: v for k, v in o.stats.items()}})


@pytest.mark.timeout(240)
def test_snapshot_metadata_dirsync_fault_then_kill(walrelay, walcat, builddir,
                                                   workdir, tokfile):
    """The directory fsync after walrelay.meta was renamed to record a new
    snapshot fails: the file on disk may name the new snapshot (or, after a
    power loss, the previous one). The job counts as failed and deletes
    nothing: neither the new snapshot's files (the metadata may name them)
    nor a segment. A kill -9 right then: the next start finds the snapshot
    the metadata names, snapshots go on, and the directory is recoverable
    by the cache."""
    fc = FaultControl(builddir, workdir)
    args = ["--subscribe-token-file", str(tokfile), "--segment-bytes",
            str(SEGMENT), "--archive-after", "1", "--archive-level", "1",
            "--snapshot-every", "2", "--snapshot-keep", "2",
            "--snapshot-skew", "100", "--log-level", "info"]
    a = Relay(walrelay, workdir / "a", workdir / "a.log", args=args,
              env=fc.env())
    a.start()
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    prod = Producer(o, "a", rate=2000, keys=BG_KEYS)
    sub = ResumingSubscriber(o, "sub-a", "a", TOKEN)
    prod.start()
    sub.start()
    try:
        a.wait_durable(300)
        o.snapshot("a", "start")
        a.wait_metric("walrelay_snapshots_total", lambda v: v >= 1, 60)
        f0 = a.metric("walrelay_snapshot_failures_total")
        # the job's dir fsyncs: after its renames, then the metadata's
        fc.set(f"op=sync,path={a.datadir},dir=1,thread=wr-snapshot,after=1,"
               f"times=1")
        a.wait_metric("walrelay_snapshot_failures_total",
                      lambda v: v > f0, 60)
        assert len(fc.hits()) == 1
        meta_ok(a)
        assert "cannot write the metadata file" in a.read_log()
        a.kill9()
        o.crashed("a")
        fc.clear()
        o.verify("a", "after kill -9", allow_torn=True)
        o.check_cache_recovery("a", "after kill -9")
        a.start()
        o.recovered("a")
        assert "is missing" not in a.read_log(), a.read_log()[-2000:]
        n = a.metric("walrelay_snapshots_total")
        a.wait_metric("walrelay_snapshots_total", lambda v: v > n, 60)
        prod.finish()
        wait_until(lambda: not a.status()["upstream"]["connected"], 30,
                   "a to see the producer's end")
        end = a.status()["next"]
        a.wait_durable(end)
        sub.wait_position(end)
    finally:
        prod.stop_ev.set()
        sub.stop()
    assert a.stop() == 0
    o.verify("a", "after stop")
    o.snapshot("a", "final")
    check_scenario(o, chain=("a",))
    o.check_cache_recovery("a", "after stop")
    o.assert_ok()
    assert o.stats["recovery_checks"] == 2, o.stats


# ---- a failing read while a subscriber catches up ------------------------------

def zstd_prefix(data):
    """What a zstd stream (one or more frames) cut anywhere decodes to."""
    import zstandard
    out = []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        if not d.eof:
            break
        data = d.unused_data
    return b"".join(out)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("start", [0, 1234], ids=["from-0", "mid-segment"])
def test_read_fault_during_zstd_catch_up(walrelay, builddir, workdir, tokfile,
                                         start):
    """A zstd subscriber catches up from the segment files, which the I/O
    pool reads (pread on wr-io); those reads fail with EIO. The subscriber
    is disconnected at once (not left waiting) with a log line naming it,
    the sequence, the offset and the errno; what it received decodes to a
    prefix of the stream from its position, byte for byte (nothing wrong is
    sent); the relay stays ready, keeps storing, and a live subscriber
    gets every new frame. Once the fault clears the same request gets the
    whole stream."""
    from relayutil import SubReader, connect, gen_frame
    fc = FaultControl(builddir, workdir)
    a = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=["--subscribe-token-file", str(tokfile), "--fsync",
                    "always", "--segment-bytes", "256k", "--tail-memory",
                    "1M", "--log-level", "info"], env=fc.env())
    a.start()
    frames = [gen_frame(i) for i in range(3000)]        # ~3 MB, 12 segments
    # (the last 1 MiB is in the tail memory, the rest only on disk)
    up = connect(a.ingest_addr, timeout=60)
    up.sendall(b"".join(frames))
    a.wait_durable(len(frames), timeout=120)
    live = SubReader(a.listen_addr, TOKEN, "latest")
    fc.set(f"op=read,path={a.datadir}/segment-*.wal,thread=wr-io,err=EIO")
    want = b"".join(frames[start:])
    lines0 = a.read_log().count("cannot read the segment file")
    z = SubReader(a.listen_addr, TOKEN, start, " compress=zstd")
    wait_until(lambda: z.eof, 30, "the subscriber to be disconnected")
    assert len(fc.hits()) >= 1
    got = zstd_prefix(z.snapshot())
    assert want.startswith(got), "bytes that are not the stream's"
    assert len(got) < len(want)
    log = a.read_log()
    line = [x for x in log.splitlines() if "cannot read the segment file" in x]
    assert len(line) == lines0 + 1, line
    assert "sub-" in line[-1] and "Input/output error" in line[-1], line[-1]
    # the relay goes on: ready, storing, the live subscriber served
    more = [gen_frame(len(frames) + i) for i in range(50)]
    up.sendall(b"".join(more))
    wait_until(lambda: live.snapshot() == b"".join(more), 30,
               "the live subscriber to get the new frames")
    assert a.http("/readyz")[0] == 200
    assert a.status()["durable"] == len(frames) + len(more)
    # a second attempt under the fault ends the same way
    z.close()
    z = SubReader(a.listen_addr, TOKEN, start, " compress=zstd")
    wait_until(lambda: z.eof, 30, "the second attempt to be disconnected")
    assert want.startswith(zstd_prefix(z.snapshot()))
    z.close()
    fc.clear()
    want += b"".join(more)
    z = SubReader(a.listen_addr, TOKEN, start, " compress=zstd")
    wait_until(lambda: len(zstd_prefix(z.snapshot())) >= len(want), 60,
               "the whole stream once the fault cleared")
    assert zstd_prefix(z.snapshot()) == want
    z.close()
    live.close()
    up.close()
    assert a.stop() == 0
