"""Crash loop: kill -9 a random relay of a chain at random moments, restart
it, and let the oracle check every promise after every cycle.

    producer -> origin relay "a" (ingest) -> chain relay "b" (pull, sub)
    resuming subscribers on a and b, a stock subscriber on a

Segments are small (64 KiB: a rotation about every 80 ms) and retention
tight (2 MiB on b: the raw segments of the last second and archived ones,
which count compressed: about 12 MiB of frames, some 15 s of the stream;
16 MiB on a, about two minutes of the stream, so that b resumes after its
restarts even on a busy machine), so kills land during rotation and
retention. Both relays
archive every segment sealed a second ago (.wal.zst); b also takes a
snapshot every second, which deletes the segments it covers (a keeps its
segments for b to resume from). The kills: at random moments; when the
newest segment is about to rotate; while a segment is being archived (its
.wal.zst.tmp exists); while b writes a snapshot (walrelay-snap-*.tmp);
at an exact rename or unlink of archiving, snapshotting or retention
(tests/fault/killat.so, on a restart: the relay kills itself there); and
a quarter of the restarts are killed again a few milliseconds later,
during recovery. After every kill of b, its directory must be one the
cache recovers to exactly the state of b's frames (oracle.py,
check_cache_recovery).

    make check-crash CYCLES=N          # CRASH_SEED=S to replay a run,
                                       # CRASH_FSYNC=interval:20 or never,
                                       # CRASH_MINUTES=M to stop after M min
"""

import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import TOKEN, record_figures
from harness import (Producer, ResumingSubscriber, StatusPoller,
                     StockSubscriber)
from oracle import Oracle
from relayutil import Relay, is_asan_build, wait_until

CYCLES = int(os.environ.get("CRASH_CYCLES", "20"))
FSYNC = os.environ.get("CRASH_FSYNC", "always")
SEED = int(os.environ.get("CRASH_SEED", "0")) or random.randrange(1, 1 << 31)
# a time budget (minutes, 0: none): the loop ends after the cycle that
# passes it and finishes as usual; the figures say how many cycles ran
MINUTES = float(os.environ.get("CRASH_MINUTES", "0"))
SEGMENT = 64 * 1024
KEYS = 1000          # the producer's key space: b's snapshots stay small
ARCHIVE_ARGS = ["--archive-after", "1", "--archive-level", "1"]
SNAPSHOT_ARGS = ["--snapshot-every", "1", "--snapshot-keep", "2",
                 "--snapshot-skew", "100"]

# Exact kill points (tests/fault/killat.c: OP:PATTERN:N:WHEN) of
# archiving (the .wal.zst rename, the raw segment's removal), retention
# (removal of a raw or archived segment) and, on b, snapshotting (the
# frames file's and the snapshot's renames, the metadata update, removal
# of covered segments, superseded snapshots and frames files).
ARCHIVE_POINTS = [
    "rename:*.wal.zst:1:before", "rename:*.wal.zst:1:after",
    "rename:*.wal.zst:3:after",
    "unlink:segment-*.wal:1:before", "unlink:segment-*.wal:1:after",
    "unlink:segment-*.wal.zst:1:before", "unlink:segment-*.wal.zst:1:after",
]
SNAPSHOT_POINTS = [
    "rename:walrelay-frames-*:1:before", "rename:walrelay-frames-*:1:after",
    "rename:snapshot-*:1:before", "rename:snapshot-*:1:after",
    "rename:walrelay.meta:2:before", "rename:walrelay.meta:2:after",
    "unlink:snapshot-*:1:before", "unlink:snapshot-*:1:after",
    "unlink:walrelay-frames-*:1:after",
]


# a keeps enough for b to resume after a restart on a busy machine (a
# 1,000-cycle run under load once left b behind a's retention, refused
# "gone", for good); b's own retention stays tight
A_RETAIN = "16M"
B_RETAIN = "2M"


def chain(walrelay, workdir, tokfile, fsync):
    common = ["--subscribe-token-file", tokfile, "--fsync", fsync,
              "--segment-bytes", "64k",
              "--tail-memory", "1M", "--subscriber-buffer", "64k",
              "--upstream-backoff-min", "10", "--upstream-backoff-max", "100",
              "--shutdown-timeout", "3", "--log-level", "info"] + ARCHIVE_ARGS
    a = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=[str(x) for x in common] + ["--retain-bytes", A_RETAIN])
    a.start()
    b = Relay(walrelay, workdir / "b", workdir / "b.log",
              args=[str(x) for x in common] + [
                  "--retain-bytes", B_RETAIN] + SNAPSHOT_ARGS + [
                  "--upstream", a.listen_addr, "--upstream-protocol", "sub",
                  "--upstream-token-file", str(tokfile)], ingest=False)
    b.start()
    return a, b


def killat_env(walrelay, builddir, point):
    """The environment that makes a relay kill itself at point."""
    lib = os.path.join(str(builddir), "tests", "fault", "killat.so")
    if not os.path.exists(lib):
        pytest.fail("tests/fault/killat.so is not built (make check-crash "
                    "builds it)")
    env = {"LD_PRELOAD": lib, "WR_KILLAT": point}
    if is_asan_build(walrelay):
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                               ":verify_asan_link_order=0").lstrip(":")
    return env


def file_appears(r, pred, deadline):
    """Wait until a file of r's data directory satisfies pred (a
    temporary file of archiving or snapshotting exists): the kill then
    lands while that work is under way. True if it did before the
    deadline."""
    while time.monotonic() < deadline:
        try:
            if any(pred(n) for n in os.listdir(r.datadir)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    return False


def archiving(n):
    return n.endswith(".wal.zst.tmp")


def snapshotting(n):
    return n.startswith("walrelay-snap-") and n.endswith(".tmp")


def follow_upstream(a, b):
    """If a had to take new ports at a restart (another process took one),
    point b at a's new address."""
    i = b.extra.index("--upstream") + 1
    if b.extra[i] != a.listen_addr:
        b.extra[i] = a.listen_addr
        b.stop()
        b.start()
        return True
    return False


def near_rotation(r, deadline):
    """Wait until the newest segment of r is within 8 KiB of rotating."""
    while time.monotonic() < deadline:
        try:
            segs = r.status()["segments"]
        except (OSError, AssertionError):
            return
        if segs and segs[-1]["bytes"] >= SEGMENT - 8192:
            return
        time.sleep(0.002)


def catch_up(relays, subs, timeout=60):
    """Every resuming subscriber reaches what its relay has made durable
    now; every relay of the chain what the origin has."""
    for s in subs:
        r = s.robj
        target = r.status()["durable"]
        s.wait_position(target, timeout)


def keep_evidence(relays, workdir, builddir):
    """Copy the data directories and logs of the relays, paused, out of
    pytest's temporary directories (which later runs remove) into
    $CRASH_KEEP_DIR or crash-evidence-SEED in the build directory."""
    dest = os.environ.get("CRASH_KEEP_DIR") or \
        os.path.join(str(builddir), f"crash-evidence-{SEED}")
    paused = [r for r in relays.values() if r.alive()]
    for r in paused:
        os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        shutil.copytree(str(workdir), dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.sock"))
    finally:
        for r in paused:
            os.kill(r.proc.pid, signal.SIGCONT)
    return dest


@pytest.mark.timeout(max(300, CYCLES * 15 + 120))
def test_crash_loop(walrelay, walcat, workdir, tokfile, builddir):
    print(f"\ncrash loop: {CYCLES} cycles, seed {SEED}, fsync {FSYNC} "
          f"(CRASH_SEED={SEED} replays the schedule)")
    rng = random.Random(SEED)
    a, b = chain(walrelay, workdir, tokfile, FSYNC)
    relays = {"a": a, "b": b}
    o = Oracle(FSYNC, walcat)
    o.add_relay("a", a)
    o.add_relay("b", b, upstream="a")
    poller = StatusPoller(o)
    prod = Producer(o, "a", rate=3000, keys=KEYS)
    subs = [ResumingSubscriber(o, "sub-a", "a", TOKEN),
            ResumingSubscriber(o, "sub-b", "b", TOKEN)]
    stock = StockSubscriber(o, "stock-a", "a", TOKEN)
    wait_until(lambda: b.status()["epoch"] == a.status()["epoch"], 15,
               "b to adopt a's epoch")
    o.note_status("a", a.status())
    o.note_status("b", b.status())
    threads = [poller, prod, stock] + subs
    for t in threads:
        t.start()
    kills = {"a": 0, "b": 0}
    split = False
    kinds = {"random": 0, "rotation": 0, "recovery": 0, "archiving": 0,
             "snapshotting": 0, "exact": 0}
    exact = {}

    def after_kill(name, why):
        o.crashed(name)
        kills[name] += 1
        o.verify(name, why, allow_torn=True)
        if name == "b":
            o.check_cache_recovery("b", why)

    t0 = time.monotonic()
    done = 0
    evidence = None
    try:
        a.wait_durable(500)
        o.snapshot("a", "start")    # the producer check starts at 0
        for cycle in range(CYCLES):
            if MINUTES and time.monotonic() - t0 > MINUTES * 60:
                break       # the time budget is spent: finish as usual
            done = cycle + 1
            name = rng.choice("ab")
            r = relays[name]
            x = rng.random()
            deadline = time.monotonic() + 3
            if x < 0.2:
                near_rotation(r, deadline - 1)
                kinds["rotation"] += 1
            elif x < 0.35 and file_appears(r, archiving, deadline):
                kinds["archiving"] += 1
            elif x >= 0.35 and x < 0.5 and name == "b" and \
                    file_appears(r, snapshotting, deadline):
                kinds["snapshotting"] += 1
            else:
                # the fault schedule: a random moment, not a synchronisation
                time.sleep(rng.uniform(0.02, 0.5))
                kinds["random"] += 1
            r.kill9()
            after_kill(name, f"cycle {cycle}: after kill -9")
            if x >= 0.5 and x < 0.65:
                # restart it to kill itself at an exact point
                point = rng.choice(ARCHIVE_POINTS + (SNAPSHOT_POINTS
                                                     if name == "b" else []))
                r.env = killat_env(walrelay, builddir, point)
                r.start(wait=False)
                r.env = None
                try:
                    rc = r.proc.wait(10)
                except subprocess.TimeoutExpired:
                    rc = None
                    r.kill9()     # not reached in time: a random kill
                    kinds["random"] += 1
                r.log.close()
                if rc == -signal.SIGKILL:
                    exact[point] = exact.get(point, 0) + 1
                    kinds["exact"] += 1
                elif rc is not None:
                    # it exited by itself (a port taken at start): the
                    # next start takes new ports
                    assert r._lost_port_race(), \
                        f"{name} exited with {rc}:\n{r.read_log()[-2000:]}"
                    kinds["random"] += 1
                after_kill(name, f"cycle {cycle}: killed at {point}")
            if rng.random() < 0.25:
                # kill it again while it recovers
                r.start(wait=False)
                time.sleep(rng.uniform(0, 0.02))
                r.kill9()
                kinds["recovery"] += 1
                after_kill(name, f"cycle {cycle}: killed in recovery")
            r.start()
            if name == "a":
                follow_upstream(a, b)
            o.recovered(name, f"cycle {cycle}: after restart")
            catch_up(relays, subs)
            o.check()
            o.compact()
            if o.violations:
                evidence = keep_evidence(relays, workdir, builddir)
                break
            if (cycle + 1) % 50 == 0:
                print(f"cycle {cycle + 1}: {time.monotonic() - t0:.0f} s, "
                      f"kills a={kills['a']} b={kills['b']}, {kinds}, "
                      f"{o.stats['sub_frames']} subscriber frames checked, "
                      f"no violation", flush=True)
        if not o.violations:
            prod.finish()
            # the producer's last connection ended cleanly: a stores it
            # whole, b catches up, every subscriber reaches the end
            wait_until(lambda: not a.status()["upstream"]["connected"], 30,
                       "a to see the producer's end")
            a.wait_durable(a.status()["next"])
            end = a.status()["durable"]
            if a.status()["epoch"] != b.status()["epoch"]:
                # fsync never: a took a new epoch after a crash; b refuses
                # to follow it (its numbers would name other frames), keeps
                # serving what it has and says so (docs/operations.md)
                assert FSYNC == "never"
                assert "upstream epoch changed" in b.read_log()
                code, body = b.http("/readyz")
                assert code == 503 and "upstream epoch changed" in body, body
                split = True
                subs[0].wait_position(end)
                subs[1].wait_position(b.status()["durable"])
            else:
                wait_until(lambda: b.status()["durable"] == end, 60,
                           f"b to catch up with a ({end})")
                for s in subs:
                    s.wait_position(end)
    finally:
        for t in threads:
            if hasattr(t, "stop"):
                t.stop()
        prod.stop_ev.set()
    elapsed = time.monotonic() - t0
    for name, r in relays.items():
        if r.alive():
            assert r.stop() == 0, f"{name} did not stop cleanly"
    for name in relays:
        o.verify(name, "after the final stop")
        o.snapshot(name, "final")
    o.check_cache_recovery("b", "after the final stop")
    o.check()
    if not o.violations:
        o.check_final(chain=("a",) if split else ("a", "b"))
    for t in threads:
        assert getattr(t, "error", None) is None, f"{t.name}: {t.error}"
    assert stock.frames > 0, "the stock subscriber received nothing"
    figures = {"cycles": done, "seed": SEED, "fsync": FSYNC,
               "kills_a": kills["a"], "kills_b": kills["b"], **kinds,
               "seconds": round(elapsed, 1),
               "frames_sent": prod.next_pid,
               "producer_connections": len(prod.conns),
               "stored_a": o.relays["a"].snapshots[-1].next,
               "segments_a": poller.rotations("a"),
               "segments_b": poller.rotations("b"),
               "retention_deleted_a": poller.deletions("a"),
               "retention_deleted_b": poller.deletions("b"),
               "sub_connections": sum(s.connections for s in subs),
               "archived_a": poller.archived("a"),
               "archived_b": poller.archived("b"),
               "snapshots_b": poller.snapshots("b"),
               "exact_points": exact,
               **{k: v for k, v in o.stats.items()}}
    record_figures("crash_loop", figures)
    assert not o.violations, (o.report() + f"\n(seed {SEED}: rerun with "
                              f"CRASH_SEED={SEED} CRASH_CYCLES={CYCLES}; "
                              f"the relays' directories and logs at the "
                              f"first violation: {evidence})")
