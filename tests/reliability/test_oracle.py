"""The oracle itself: each check fails on the violation it exists for, and
its report says which subscriber, which sequence, what was expected and
what came. Stores are written here with fcw2util; one test breaks a real
relay's store behind its back."""

import os

import pytest

from conftest import TOKEN
from fcw2util import segment_name
from harness import Producer, ResumingSubscriber, producer_frame
import oracle
from oracle import Oracle, OracleViolation, check_scenario
from relayutil import Relay, wait_until


class FakeRelay:
    """What the oracle asks of a relay, for a store written by the test."""

    def __init__(self, datadir, epoch="00000000000000aa"):
        self.datadir = str(datadir)
        self.epoch = epoch
        os.makedirs(self.datadir, exist_ok=True)
        self.durable = 0

    def alive(self):
        return True

    def status(self):
        return {"epoch": self.epoch, "durable": self.durable}

    def write(self, base, pids, created=1):
        with open(os.path.join(self.datadir, segment_name(base, created)), "wb") as f:
            f.write(b"".join(producer_frame(p) for p in pids))
        self.durable = max(self.durable, base + len(pids))


def frames(pids):
    return [producer_frame(p) for p in pids]


def make(workdir, fsync="always"):
    o = Oracle(fsync)
    r = FakeRelay(workdir / "a")
    o.add_relay("a", r)
    return o, r


def violations(o):
    o.check()
    return o.violations


def test_consistent_scenario_passes(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 10))
    r.write(10, range(10, 15), created=2)
    o.snapshot("a", "t")
    s = o.subscriber("sub-1", "a")
    s.connect(r.epoch, 0, "0").add(frames(range(0, 6)), o)
    s.connect(r.epoch, 6, "6").add(frames(range(6, 15)), o)
    st = o.subscriber("stock-1", "a", resuming=False)
    st.connect(r.epoch, None).add(frames(range(3, 9)), o)
    st.connect(r.epoch, None).add(frames(range(12, 15)), o)
    check_scenario(o)
    assert o.stats["sub_frames"] == 15


def test_subscriber_got_other_bytes(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 10))
    o.snapshot("a", "t")
    s = o.subscriber("sub-7", "a")
    s.connect(r.epoch, 0, "0").add(frames([0, 1, 2, 99, 4]), o)
    v = violations(o)
    assert len(v) == 1, v
    assert "sequence 3 " in v[0] and "subscriber sub-7" in v[0], v[0]
    assert "p000000000099" in v[0] and "p000000000003" in v[0], v[0]
    with pytest.raises(OracleViolation, match="sub-7"):
        o.assert_ok()


def test_resume_gap_and_duplicate(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 20))
    o.snapshot("a", "t")
    s = o.subscriber("sub-1", "a")
    s.connect(r.epoch, 0, "0").add(frames(range(0, 5)), o)
    # the relay answered a request for 5 with start=7: a gap
    s.connect(r.epoch, 7, "5").add(frames(range(7, 9)), o)
    # the subscriber itself asked for 8 after holding 7..8: duplicates
    s.connect(r.epoch, 8, "8").add(frames(range(8, 10)), o)
    v = violations(o)
    assert any("asked a for sequence 5, the reply says start=7" in x for x in v), v
    assert any("started at 7" in x and "ended at 5 (a gap)" in x for x in v), v
    assert any("started at 8" in x and "ended at 9 (duplicates)" in x for x in v), v


def test_store_gap_between_segments_and_torn_sealed_segment(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 10))
    r.write(12, range(12, 20), created=2)
    o.snapshot("a", "t")
    assert any("base_seq 12 but the segments before end at 10 (a gap)" in x
               for x in o.violations), o.violations
    o2, r2 = make(workdir / "2")
    r2.write(0, range(0, 10))
    r2.write(10, range(10, 12), created=2)
    seg = os.path.join(r2.datadir, segment_name(0, 1))
    os.truncate(seg, os.path.getsize(seg) - 3)
    o2.snapshot("a", "t")
    assert any("incomplete frame" in x and "sealed segment" in x
               for x in o2.violations), o2.violations


def test_recovery_lost_what_a_subscriber_saw(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 10))
    o.relays["a"].last_epoch = r.epoch      # no status: only the subscriber
    s = o.subscriber("sub-3", "a")
    s.connect(r.epoch, 0, "0").add(frames(range(0, 10)), o)
    o.crashed("a")
    # what recovery left: 8 frames, and it says so
    os.remove(os.path.join(r.datadir, segment_name(0, 1)))
    r.durable = 0
    r.write(0, range(0, 8))
    o.recovered("a")
    assert any("recovery after a crash lost durable frames" in x and
               "ends at sequence 8" in x and "sub-3" in x and
               "sequence 9" in x for x in o.violations), o.violations


def test_recovery_lost_what_status_called_durable(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 5))
    o.note_status("a", {"epoch": r.epoch, "durable": 5})
    o.crashed("a")
    os.remove(os.path.join(r.datadir, segment_name(0, 1)))
    r.durable = 0
    r.write(0, range(0, 3))
    o.recovered("a")
    assert any("a reported durable=5" in x for x in o.violations), o.violations


def test_epoch_change_allowed_only_with_never(workdir):
    for fsync, bad in (("always", True), ("interval:20", True), ("never", False)):
        o, r = make(workdir / fsync.replace(":", ""), fsync)
        r.write(0, range(0, 5))
        o.snapshot("a", "t")
        o.crashed("a")
        r.epoch = "00000000000000bb"
        o.recovered("a")
        assert bool(o.violations) == bad, (fsync, o.violations)


def test_stock_run_not_contiguous(workdir):
    o, r = make(workdir)
    r.write(0, range(0, 20))
    o.snapshot("a", "t")
    st = o.subscriber("stock-2", "a", resuming=False)
    st.connect(r.epoch, None).add(frames([4, 5, 6, 8, 9]), o)
    v = violations(o)
    assert len(v) == 1 and "stock subscriber stock-2" in v[0] and \
        "sequence 7" in v[0] and "p000000000008" in v[0], v
    o2, r2 = make(workdir / "2")
    r2.write(0, range(0, 5))
    o2.snapshot("a", "t")
    st = o2.subscriber("stock-3", "a", resuming=False)
    st.connect(r2.epoch, None).add(frames([77]), o2)
    # a few rounds first: a lagging resuming subscriber may see it later
    for _ in range(oracle.STOCK_TRIES):
        assert violations(o2) == []
    assert any("is in no store seen" in x for x in violations(o2))


class FakeProducer(Producer):
    def __init__(self, oracle, conns):
        super().__init__(oracle, "a")
        for first, end, broken in conns:
            self.conns.append([first, end, broken])
            self.firsts.append(first)
            for p in range(first, end):
                self.sent[__import__("oracle").ident(producer_frame(p))] = p


@pytest.mark.parametrize("stored,conns,expect", [
    # in flight at a crash: the end of a broken connection is lost
    (list(range(0, 5)) + list(range(8, 12)), [(0, 8, True), (8, 12, False)], None),
    # a gap inside one connection
    ([0, 1, 2, 5, 6], [(0, 7, False)], "sent between them on the same connection"),
    # the end of a connection that ended cleanly
    ([0, 1, 8], [(0, 4, False), (8, 9, False)], "which ended cleanly"),
    # the start of a connection lost, a later frame of it stored
    ([0, 1, 10], [(0, 2, True), (8, 12, True)], "frames 8..9 of connection #1"),
    ([0, 1, 1, 2], [(0, 3, False)], "the same frame stored twice"),
    ([0, 2, 1], [(0, 3, False)], "out of the order"),
])
def test_producer_checks(workdir, stored, conns, expect):
    o, r = make(workdir)
    r.write(0, stored)
    o.snapshot("a", "t")
    FakeProducer(o, conns)
    v = violations(o)
    if expect is None:
        assert v == []
    else:
        assert any(expect in x for x in v), v


def test_frame_the_producer_never_sent(workdir):
    o, r = make(workdir)
    r.write(0, [0, 1, 2])
    o.snapshot("a", "t")
    FakeProducer(o, [(0, 2, False)])
    assert any("a frame the producer never sent" in x for x in violations(o))


def test_walcat_verify_failure_is_reported(workdir, walcat):
    o, r = make(workdir)
    o.walcat = walcat
    r.write(0, range(0, 10))
    seg = os.path.join(r.datadir, segment_name(0, 1))
    data = bytearray(open(seg, "rb").read())
    data[60] ^= 0xFF
    open(seg, "wb").write(bytes(data))
    o.verify("a", "after stop")
    assert len(o.violations) == 1 and "exited 2" in o.violations[0] and \
        "corrupt" in o.violations[0], o.violations


def test_chain_members_must_end_alike(workdir):
    o, r = make(workdir)
    b = FakeRelay(workdir / "b")
    o.add_relay("b", b, upstream="a")
    r.write(0, range(0, 10))
    b.write(0, range(0, 9))
    o.snapshot("a", "final")
    o.snapshot("b", "final")
    with pytest.raises(OracleViolation, match="does not end where"):
        check_scenario(o, chain=("a", "b"))


def test_compact_keeps_checking(workdir):
    """After compact() the oracle still sees a later conflict."""
    o, r = make(workdir)
    r.write(0, range(0, 10))
    o.snapshot("a", "t")
    s = o.subscriber("sub-1", "a")
    c = s.connect(r.epoch, 0, "0")
    c.add(frames(range(0, 8)), o)
    o.check()
    o.compact()
    assert o.violations == []
    c.add(frames([8, 55]), o)
    v = violations(o)
    assert len(v) == 1 and "sequence 9 " in v[0], v


def test_real_relay_store_cut_behind_its_back(walrelay, workdir, tokfile):
    """A relay restarted on a store that lost its last frames (as if it had
    reported frames durable that were not): the oracle reports the loss,
    naming the subscriber and the sequence."""
    r = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=["--subscribe-token-file", str(tokfile)])
    r.start()
    o = Oracle("always")
    o.add_relay("a", r)
    prod = Producer(o, "a", rate=2000)
    sub = ResumingSubscriber(o, "sub-1", "a", TOKEN)
    prod.start()
    sub.start()
    try:
        r.wait_durable(300)
        sub.wait_position(300)
        r.kill9()
        o.crashed("a")
        seg = sorted(n for n in os.listdir(r.datadir) if n.endswith(".wal"))[-1]
        path = os.path.join(r.datadir, seg)
        os.truncate(path, os.path.getsize(path) // 2)
        r.start()
        o.recovered("a")
    finally:
        sub.stop()
        prod.finish()
        r.stop()
    assert any("recovery after a crash lost durable frames" in x and
               ("sub-1" in x or "durable=" in x) for x in o.violations), \
        o.violations


def test_cache_recovery_of_a_snapshot_directory(walrelay, workdir, tokfile):
    """A relay's directory with a snapshot, archived segments after it and
    raw ones, recovered with the cache's rule, holds the state of the
    relay's frames; without an archived segment, or without the snapshot,
    the oracle reports the keys that differ."""
    r = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=["--subscribe-token-file", str(tokfile),
                    "--segment-bytes", "16k", "--snapshot-every", "1",
                    "--snapshot-keep", "1"])
    r.start()
    o = Oracle("always")
    o.add_relay("a", r)
    o.snapshot("a", "empty")     # the producer check starts at 0
    prod = Producer(o, "a", rate=2000, keys=10 ** 6)
    sub = ResumingSubscriber(o, "sub-1", "a", TOKEN)
    prod.start()
    sub.start()
    try:
        r.wait_metric("walrelay_snapshots_total", lambda v: v >= 1, 30)
        # then no more snapshots, and segments archived after it
        assert r.stop() == 0
        r.extra = r.extra[:-4] + ["--archive-after", "1"]
        r.start()
        wait_until(lambda: sum(n.endswith(".wal.zst")
                               for n in os.listdir(r.datadir)) >= 2,
                   30, "two archived segments")
    finally:
        sub.stop()
        prod.finish()
        assert r.stop() == 0
    o.snapshot("a", "stopped")
    o.check()
    o.check_cache_recovery("a", "stopped")
    assert o.violations == [] and o.stats["recovery_checks"] == 1, \
        (o.violations, o.stats)

    # an archived segment left out: the keys it set are missing
    names = sorted(os.listdir(r.datadir))
    zst = [n for n in names if n.endswith(".wal.zst")][-1]
    os.rename(os.path.join(r.datadir, zst),
              os.path.join(r.datadir, zst + ".hidden"))
    o.check_cache_recovery("a", "archived segment hidden")
    os.rename(os.path.join(r.datadir, zst + ".hidden"),
              os.path.join(r.datadir, zst))
    assert len(o.violations) == 1 and "archived segment hidden" in \
        o.violations[0] and "expected, the cache recovers nothing" in \
        o.violations[0], o.violations

    # no snapshot: the keys only it held are not recovered
    snap = [n for n in names if n.startswith("snapshot-")][-1]
    os.unlink(os.path.join(r.datadir, snap))
    o.check_cache_recovery("a", "snapshot removed")
    assert len(o.violations) == 2 and "snapshot removed" in \
        o.violations[1] and "expected, the cache recovers nothing" in \
        o.violations[1], o.violations


def test_store_read_while_segments_are_archived(workdir, monkeypatch):
    """A store of 2,500 segments read while it moves on as a relay's does:
    a new segment appended, the oldest raw one archived (its .wal.zst
    renamed into place, then the .wal removed), the oldest archived one
    removed by retention. os.listdir reads such a directory in several
    getdents calls and can miss both names of the segment being archived;
    the oracle reads the store again instead of reporting a gap the store
    does not have (it did, once, in a crash loop). Archived files here
    hold the raw bytes: the listing, not zstd, is under test."""
    import collections
    import threading

    n = 2500
    o, r = make(workdir)
    d = r.datadir
    for i in range(n):
        r.write(i, [i])

    def plain(path):
        with open(path, "rb") as f:
            return f.read()
    monkeypatch.setitem(oracle.SEGMENT_READERS, ".wal.zst", plain)
    monkeypatch.setattr(oracle, "read_archived", plain)

    stop = threading.Event()
    raw = collections.deque(range(n))
    zst = collections.deque()
    moves = [0]

    def relay():
        nxt = n
        while not stop.is_set():
            r.write(nxt, [nxt])             # a new segment
            raw.append(nxt)
            nxt += 1
            base = raw.popleft()            # archive the oldest raw one
            name = os.path.join(d, segment_name(base, 1))
            data = plain(name)
            with open(name + ".zst.tmp", "wb") as f:
                f.write(data)
            os.rename(name + ".zst.tmp", name + ".zst")
            os.unlink(name)
            zst.append(base)
            if len(zst) > n // 2:           # retention
                os.unlink(os.path.join(d, segment_name(zst.popleft(), 1)) +
                          ".zst")
            moves[0] += 1
    t = threading.Thread(target=relay, daemon=True)
    t.start()
    try:
        for k in range(30):
            o.snapshot("a", f"read {k}")
            snap = o.relays["a"].snapshots[-1]
            assert snap.next - snap.earliest >= n // 2, (snap.earliest,
                                                         snap.next)
    finally:
        stop.set()
        t.join(30)
    assert moves[0] > 1000, "the store hardly moved"
    assert not violations(o), o.report()
