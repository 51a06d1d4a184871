"""Snapshots: the relay folds the stream into the cache's own FCSNAP1
format, deletes the segments a snapshot covers, and serves "snapshot then
stream" to subscribers.

The oracles here are independent of the relay's code: a dictionary that
applies the records in order (the model), and the cache's recovery rule
written from the format description (cacheformat.py: newest snapshot-* by
name, then every .wal / .wal.lz4 segment in name order, skipping records
older than the snapshot), with its own FCSNAP1 and LZ4 block decoders.
"""

import http.client
import os
import random
import struct
import subprocess

import pytest

from cacheformat import apply, cache_recover, load_snapshot, read_frames
from fcw2util import OP_DEL, OP_EXPIRE, OP_SET, frame
from relayutil import (connect, is_asan_build, recv_exact, recv_line,
                       relay_factory, wait_until)

TS0 = 1_700_000_000_000
PAST = 1000                   # an expiry long before every record
FUTURE = 4_000_000_000_000    # an expiry long after every record
SKEW_MS = 50                  # records arrive up to 20 ms out of order
LIVE_AFTER = 10 ** 6          # keys whose expiry is below this are dead


def live(state):
    return {k: v for k, v in state.items()
            if v[1] is None or v[1] > LIVE_AFTER}

# ---- the model and the stream --------------------------------------------


def gen_records(n, seed, nkeys=300):
    """Random SET/DEL/EXPIRE over nkeys keys, each rewritten many times;
    expiries in the past and the future; timestamps rising with up to 20
    ms of disorder (the cache's shards interleave). EXPIRE never targets a
    key whose expiry has passed (such a key no longer exists)."""
    rnd = random.Random(seed)
    model, recs = {}, []
    for i in range(n):
        key = b"key-%d" % rnd.randrange(nkeys)
        ts = TS0 + 2 * i - rnd.randrange(20)
        r = rnd.random()
        if r < 0.6:
            exp = rnd.choice([None, None, PAST, FUTURE + i])
            val = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
            rec = (OP_SET, key, val, ts, exp)
        elif r < 0.8 or key not in model or (model[key][1] is not None and
                                             model[key][1] < LIVE_AFTER):
            rec = (OP_DEL, key, b"", ts, None)
        else:
            rec = (OP_EXPIRE, key, b"", ts, rnd.choice([None, FUTURE - i]))
        apply(model, rec)
        recs.append(rec)
    return recs


def model_of(recs):
    state = {}
    for r in recs:
        apply(state, r)
    return state


def encode(recs):
    return b"".join(frame(op, k, v, ts, -1 if e is None else e)
                    for op, k, v, ts, e in recs)


SNAP_ARGS = ["--segment-bytes", "4096", "--snapshot-every", "1",
             "--snapshot-skew", str(SKEW_MS)]


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir)


def send(relay, recs):
    s = connect(relay.ingest_addr)
    s.sendall(encode(recs))
    s.close()


def send_pieces(relay, recs, done):
    """recs in pieces of over 4 KiB, each stored before the next: a
    segment ends after the read that filled it, and one read may take
    them all. done: frames stored before."""
    for i in range(0, len(recs), 100):
        send(relay, recs[i:i + 100])
        relay.wait_durable(done + min(i + 100, len(recs)))


def newest_base(datadir):
    wal = sorted(n for n in os.listdir(datadir) if n.endswith(".wal"))
    return int(wal[-1].split("-")[1])


def wait_snapshot_covers_all(relay, total):
    """Wait until every frame but the newest segment's is in a snapshot."""
    relay.wait_durable(total)

    def done():
        st = relay.status()
        sn = st.get("snapshot")
        return (sn is not None and not sn["running"] and
                sn["covered"] == newest_base(relay.datadir) and
                st["earliest"] == sn["covered"]) and sn
    return wait_until(done, 60, "a snapshot of every sealed segment")


@pytest.mark.parametrize("compress", ["lz4", "none"])
def test_snapshots_match_model_and_cache_recovery(relays, compress):
    r = relays(args=SNAP_ARGS + ["--snapshot-compress", compress,
                                 "--snapshot-keep", "2"])
    recs = gen_records(6000, seed=compress)
    sent = 0
    for batch in range(4):
        chunk = recs[sent:sent + 1500]
        # in pieces of over 4 KiB, each stored before the next: a segment
        # ends after the read that filled it, and one read may take a
        # whole batch
        for i in range(0, len(chunk), 100):
            send(r, chunk[i:i + 100])
            r.wait_durable(sent + min(i + 100, len(chunk)))
        sent += len(chunk)
        sn = wait_snapshot_covers_all(r, sent)
        path = os.path.join(r.datadir, sn["file"])
        assert path.endswith(".bin.lz4" if compress == "lz4" else ".bin")
        ts, state = load_snapshot(path)
        assert ts == sn["timestamp_ms"]
        covered = sn["covered"]
        assert 0 < covered < sent
        # the snapshot: the model up to what it covers, expired keys dropped
        want = {k: v for k, v in model_of(recs[:covered]).items()
                if v[1] is None or v[1] >= ts}
        assert state == want
        assert sn["keys"] == len(state)
        # its timestamp lets the cache replay every record after it
        assert ts <= min(rec[3] for rec in recs[covered:sent]) - SKEW_MS
        # the directory after compaction: the cache recovers the model
        assert live(cache_recover(r.datadir)) == live(model_of(recs[:sent]))
        # covered segments are gone, at most snapshot-keep snapshots stay
        names = os.listdir(r.datadir)
        assert min(int(n.split("-")[1]) for n in names
                   if n.endswith(".wal")) == covered
        assert len([n for n in names if n.startswith("snapshot-")]) <= 2
        # the newest snapshot sorts last by name
        assert sorted(n for n in names if n.startswith("snapshot-"))[-1] \
            == sn["file"]
    assert r.metric("walrelay_snapshots_total") >= 4
    assert r.stop() == 0
    # a restart keeps the directory as it is and serves the same snapshot
    r.start()
    assert r.status()["snapshot"]["covered"] == covered
    assert live(cache_recover(r.datadir)) == live(model_of(recs))


def read_snapshot_then_stream(relay, line, total, producer=None):
    """Subscribe with line; apply the snapshot's SET frames, then the
    stream until `total` frames are accounted for. Returns (reply, state)."""
    s = connect(relay.listen_addr, timeout=30)
    s.sendall(line.encode() + b"\n")
    reply = recv_line(s)
    assert reply.startswith("FCWAL-OK/1 "), reply
    kv = dict(f.split("=", 1) for f in reply.split()[1:])
    start, entries = int(kv["start"]), int(kv["snapshot"])
    state, snap_ts = {}, None
    for _ in range(entries):
        rec = read_one(s)
        assert rec[0] == OP_SET
        snap_ts = rec[3] if snap_ts is None else snap_ts
        assert rec[3] == snap_ts      # all at the snapshot's timestamp
        apply(state, rec)
    if producer is not None:
        producer()
    for _ in range(total - start):
        apply(state, read_one(s))
    s.close()
    return kv, state


def read_one(s):
    hdr = recv_exact(s, 9)
    plen, = struct.unpack_from("<I", hdr, 5)
    rest = recv_exact(s, plen + 4)
    recs = read_frames(hdr + rest, quiet=False)
    assert len(recs) == 1
    return recs[0]


def test_subscriber_bootstraps_from_snapshot_then_live(relays):
    r = relays(args=SNAP_ARGS)
    recs = gen_records(5000, seed=7)
    send(r, recs[:3000])
    sn = wait_snapshot_covers_all(r, 3000)
    assert sn["covered"] > 0

    kv, state = read_snapshot_then_stream(
        r, "FCWAL-SUB/1 t snapshot", 5000,
        producer=lambda: send(r, recs[3000:]))
    assert int(kv["start"]) == sn["covered"]
    assert int(kv["snapshot"]) == sn["keys"]
    assert live(state) == live(model_of(recs))

    # a position compaction removed: gone, or a full resync with resync=1
    s = connect(r.listen_addr)
    s.sendall(b"FCWAL-SUB/1 t 0\n")
    assert recv_line(s).startswith("FCWAL-ERR/1 gone earliest=")
    s.close()
    kv, state = read_snapshot_then_stream(r, "FCWAL-SUB/1 t 0 resync=1",
                                          5000)
    assert "snapshot" in kv
    assert live(state) == live(model_of(recs))


def test_snapshot_without_snapshots_serves_the_whole_stream(relays):
    r = relays(args=["--segment-bytes", "4096"])
    recs = gen_records(500, seed=3)
    send(r, recs)
    r.wait_durable(500)
    kv, state = read_snapshot_then_stream(r, "FCWAL-SUB/1 t snapshot", 500)
    assert kv["start"] == "0" and kv["snapshot"] == "0"
    assert live(state) == live(model_of(recs))


def restore(walcat, *args):
    return subprocess.run([walcat, "restore", *map(str, args)],
                          capture_output=True, text=True)


def test_restore_from_snapshot_and_segments(relays, walcat, workdir):
    """walcat restore from a directory whose early segments were compacted
    away, and from the relay (a full resync): the snapshot file and the
    segments after it, which the cache's recovery turns into the model of
    the stream up to the point asked for; a point inside what the snapshot
    covers is refused."""
    r = relays(args=SNAP_ARGS + ["--snapshot-compress", "lz4"])
    total = 6000
    recs = gen_records(total, seed=21)
    send_pieces(r, recs[:1500], 0)
    wait_snapshot_covers_all(r, 1500)
    send_pieces(r, recs[1500:3000], 1500)
    sn = wait_snapshot_covers_all(r, 3000)
    covered = sn["covered"]
    # the rest stays in segments: no more snapshots (the last one served)
    assert r.stop() == 0
    r.extra = ["--segment-bytes", "4096"]
    r.start()
    send(r, recs[3000:])
    r.wait_durable(total)
    assert r.status()["snapshot"]["covered"] == covered
    assert 0 < covered < 3000
    assert not os.path.exists(os.path.join(
        r.datadir, "segment-%020d-1.wal" % 0))
    snapfile = os.path.join(r.datadir, sn["file"])
    t_in_tail = recs[covered + 50][3]
    t_cut = max(i for i in range(total) if recs[i][3] <= t_in_tail)
    n = [0]

    def out():
        n[0] += 1
        return workdir / f"o{n[0]}"

    for src, extra in ((r.datadir, []), (r.listen_addr, [])):
        # the whole stream
        d = out()
        res = restore(walcat, *extra, src, d)
        assert res.returncode == 0, res.stderr
        names = sorted(os.listdir(d))
        snaps = [x for x in names if x.startswith("snapshot-")]
        assert len(snaps) == 1, names
        assert all(x.endswith(".wal") for x in names if x not in snaps)
        ts, state = load_snapshot(os.path.join(d, snaps[0]))
        assert ts == sn["timestamp_ms"] and len(state) == sn["keys"]
        if src == r.datadir:
            # the relay's own file, byte for byte
            assert snaps[0] == sn["file"]
            with open(snapfile, "rb") as a, open(d / snaps[0], "rb") as b:
                assert a.read() == b.read()
        assert live(cache_recover(d)) == live(model_of(recs))
        assert f"sequences {covered} to {total - 1}" in res.stdout
        assert "snapshot" in res.stdout

        # cut after the snapshot: by sequence, at its very end, by time
        for args, cut in ((["--until-seq", covered + 123], covered + 123),
                          (["--until-seq", covered - 1], covered - 1),
                          (["--until-time", t_in_tail], t_cut)):
            d = out()
            res = restore(walcat, *extra, *args, src, d)
            assert res.returncode == 0, (args, res.stderr)
            assert live(cache_recover(d)) == \
                live(model_of(recs[:cut + 1])), args

        # a point the snapshot covers: the frames are gone, refused
        for args in (["--until-seq", covered - 2],
                     ["--until-time", recs[0][3] - 1]):
            d = out()
            res = restore(walcat, *extra, *args, src, d)
            assert res.returncode == 2, (args, res.stderr)
            assert "snapshot" in res.stderr and "gone" in res.stderr
            assert not [x for x in os.listdir(d)
                        if x.startswith("snapshot-") or x.endswith(".wal")]


def test_restore_without_snapshot_after_retention(relays, walcat, workdir):
    """A source whose early frames retention deleted and that has no
    snapshot: walcat restore writes what there is, from the earliest frame
    (from a relay: after the full resync it asked for is refused), says on
    stderr where the frames start, and the cache recovers the state of the
    frames kept."""
    r = relays(args=["--segment-bytes", "4096", "--retain-bytes", "16k"])
    total = 2000
    recs = gen_records(total, seed=33)
    send_pieces(r, recs, 0)

    def retained():
        # every frame durable and retention done: what is kept fits in
        # retain-bytes (it deletes the oldest while it does not), so
        # earliest no longer moves
        st = r.status()
        segs = st["segments"]
        return (st["durable"] == total and st["earliest"] > 0 and segs and
                st["earliest"] == segs[0]["first"] and
                (sum(x["bytes"] for x in segs) <= 16384 or len(segs) == 1))
    wait_until(retained, 30, "retention")
    earliest = r.status()["earliest"]
    assert r.status()["snapshot"] is None or \
        not r.status()["snapshot"].get("file")
    for i, src in enumerate((r.datadir, r.listen_addr)):
        d = workdir / f"nosnap{i}"
        res = restore(walcat, src, d)
        assert res.returncode == 0, res.stderr
        assert (f"the oldest frame available is sequence {earliest}, "
                "not 0") in res.stderr, res.stderr
        names = sorted(os.listdir(d))
        assert names and all(x.endswith(".wal") for x in names), names
        assert f"sequences {earliest} to {total - 1}" in res.stdout, \
            res.stdout
        assert live(cache_recover(d)) == live(model_of(recs[earliest:]))


def killat_lib():
    path = os.path.join(os.environ.get("WALRELAY_BUILDDIR", "."),
                        "tests", "fault", "killat.so")
    if not os.path.exists(path):
        pytest.skip("tests/fault/killat.so is not built (make check)")
    return path


# Where a stop hurts most: around every rename and deletion of a snapshot
# job, and its metadata update (the first walrelay.meta rename is the
# start's own).
CRASH_POINTS = [
    "rename:walrelay-frames-*:1:after",
    "rename:snapshot-*:1:before",
    "rename:snapshot-*:1:after",
    "rename:walrelay.meta:2:before",
    "rename:walrelay.meta:2:after",
    "unlink:segment-*:1:before",
    "unlink:segment-*:1:after",
    "unlink:segment-*:3:after",
    "unlink:snapshot-*:1:after",
    "unlink:walrelay-frames-*:1:before",
]


# A relay killed while it answers: no connection, or a reply cut short
# (http.client.IncompleteRead, or a JSON body that ends early).
KILLED_MID_REPLY = (OSError, http.client.HTTPException, ValueError)


def stored_or_dead(r, n):
    """Every frame sent is stored (a new ingest connection replaces the
    old one, dropping what it has not read yet), or the relay is dead."""
    if not r.alive():
        return True
    try:
        return r.status()["durable"] >= n
    except KILLED_MID_REPLY:
        return not r.alive()


def snapshots_or_dead(r, n):
    if not r.alive():
        return True
    try:
        return r.metric("walrelay_snapshots_total") >= n
    except KILLED_MID_REPLY:
        return not r.alive()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_during_compaction_leaves_a_recoverable_directory(
        relays, walrelay, point):
    lib = killat_lib()
    env = {"LD_PRELOAD": lib, "WR_KILLAT": point}
    if is_asan_build(walrelay):
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                               ":verify_asan_link_order=0").lstrip(":")
    r = relays(args=SNAP_ARGS + ["--snapshot-keep", "1"], env=env)
    recs = gen_records(9000, seed=point)
    sent = 0
    while r.alive() and sent < len(recs):
        try:
            send(r, recs[sent:sent + 500])
        except OSError:
            break
        sent += 500
        wait_until(lambda: stored_or_dead(r, sent), 30, "stored frames")
        # let a snapshot job run between batches
        wait_until(lambda: snapshots_or_dead(r, sent // 1500), 30,
                   "a snapshot or the kill")
    wait_until(lambda: not r.alive(), 60, f"the kill at {point}")
    r.kill9()

    # the start completes or undoes the interrupted step before serving
    r.env = None
    r.start()
    nxt = r.status()["next"]
    assert 0 < nxt <= sent
    assert live(cache_recover(r.datadir)) == live(model_of(recs[:nxt]))
    names = os.listdir(r.datadir)
    assert not [n for n in names if n.endswith(".tmp")]
    snaps = sorted(n for n in names if n.startswith("snapshot-"))
    sn = r.status()["snapshot"]
    if snaps:
        assert sn is not None and snaps[-1] == sn["file"]
        # nothing the snapshot covers is left for the cache to replay
        assert min(int(n.split("-")[1]) for n in names
                   if n.endswith(".wal")) == sn["covered"]
    else:
        assert sn is None
    # and snapshots go on from there
    send(r, recs[nxt:nxt + 1500])
    wait_snapshot_covers_all(r, nxt + 1500)
    assert live(cache_recover(r.datadir)) == \
        live(model_of(recs[:nxt + 1500]))
