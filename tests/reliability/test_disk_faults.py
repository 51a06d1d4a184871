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
