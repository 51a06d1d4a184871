"""Crash loop: kill -9 a random relay of a chain at random moments, restart
it, and let the oracle check every promise after every cycle.

    producer -> origin relay "a" (ingest) -> chain relay "b" (pull, sub)
    resuming subscribers on a and b, a stock subscriber on a

Segments are small (64 KiB: a rotation about every 80 ms) and retention
tight (3 MiB), so kills land during rotation and retention; a third of the
kills wait until the newest segment is about to rotate; a quarter of the
restarts are killed again a few milliseconds later, during recovery.

    make check-crash CYCLES=N          # CRASH_SEED=S to replay a run,
                                       # CRASH_FSYNC=interval:20 or never
"""

import os
import random
import time

import pytest

from conftest import TOKEN, record_figures
from harness import (Producer, ResumingSubscriber, StatusPoller,
                     StockSubscriber)
from oracle import Oracle
from relayutil import Relay, wait_until

CYCLES = int(os.environ.get("CRASH_CYCLES", "20"))
FSYNC = os.environ.get("CRASH_FSYNC", "always")
SEED = int(os.environ.get("CRASH_SEED", "0")) or random.randrange(1, 1 << 31)
SEGMENT = 64 * 1024


def chain(walrelay, workdir, tokfile, fsync):
    common = ["--subscribe-token-file", tokfile, "--fsync", fsync,
              "--segment-bytes", "64k", "--retain-bytes", "3M",
              "--tail-memory", "1M", "--subscriber-buffer", "64k",
              "--upstream-backoff-min", "10", "--upstream-backoff-max", "100",
              "--shutdown-timeout", "3", "--log-level", "info"]
    a = Relay(walrelay, workdir / "a", workdir / "a.log",
              args=[str(x) for x in common])
    a.start()
    b = Relay(walrelay, workdir / "b", workdir / "b.log",
              args=[str(x) for x in common] + [
                  "--upstream", a.listen_addr, "--upstream-protocol", "sub",
                  "--upstream-token-file", str(tokfile)], ingest=False)
    b.start()
    return a, b


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


@pytest.mark.timeout(max(240, CYCLES * 12 + 120))
def test_crash_loop(walrelay, walcat, workdir, tokfile):
    print(f"\ncrash loop: {CYCLES} cycles, seed {SEED}, fsync {FSYNC} "
          f"(CRASH_SEED={SEED} replays the schedule)")
    rng = random.Random(SEED)
    a, b = chain(walrelay, workdir, tokfile, FSYNC)
    relays = {"a": a, "b": b}
    o = Oracle(FSYNC, walcat)
    o.add_relay("a", a)
    o.add_relay("b", b, upstream="a")
    poller = StatusPoller(o)
    prod = Producer(o, "a", rate=3000)
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
    kinds = {"random": 0, "rotation": 0, "recovery": 0}
    t0 = time.monotonic()
    try:
        a.wait_durable(500)
        for cycle in range(CYCLES):
            name = rng.choice("ab")
            r = relays[name]
            if rng.random() < 1 / 3:
                near_rotation(r, time.monotonic() + 2)
                kinds["rotation"] += 1
            else:
                # the fault schedule: a random moment, not a synchronisation
                time.sleep(rng.uniform(0.02, 0.5))
                kinds["random"] += 1
            r.kill9()
            o.crashed(name)
            kills[name] += 1
            o.verify(name, f"cycle {cycle}: after kill -9", allow_torn=True)
            if rng.random() < 0.25:
                # kill it again while it recovers
                r.start(wait=False)
                time.sleep(rng.uniform(0, 0.02))
                r.kill9()
                o.crashed(name)
                kills[name] += 1
                kinds["recovery"] += 1
                o.verify(name, f"cycle {cycle}: killed in recovery",
                         allow_torn=True)
            r.start()
            if name == "a":
                follow_upstream(a, b)
            o.recovered(name, f"cycle {cycle}: after restart")
            catch_up(relays, subs)
            o.check()
            o.compact()
            if o.violations:
                break
            if (cycle + 1) % 50 == 0:
                print(f"cycle {cycle + 1}: {time.monotonic() - t0:.0f} s, "
                      f"kills a={kills['a']} b={kills['b']}, {kinds}, "
                      f"{o.stats['sub_frames']} subscriber frames checked, "
                      f"no violation", flush=True)
        else:
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
    o.check()
    if not o.violations:
        o.check_final(chain=("a",) if split else ("a", "b"))
    for t in threads:
        assert getattr(t, "error", None) is None, f"{t.name}: {t.error}"
    assert stock.frames > 0, "the stock subscriber received nothing"
    figures = {"cycles": CYCLES, "seed": SEED, "fsync": FSYNC,
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
               **{k: v for k, v in o.stats.items()}}
    record_figures("crash_loop", figures)
    assert not o.violations, (o.report() + f"\n(seed {SEED}: rerun with "
                              f"CRASH_SEED={SEED} CRASH_CYCLES={CYCLES})")
