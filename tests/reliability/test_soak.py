"""Soak: mixed load for SOAK_MINUTES (make soak SOAK_MINUTES=N), with the
oracle checking as it goes.

    producer -> relay "a" -> pull relay "b" (sub)
    resuming subscribers on a and b for the whole run; churn: short-lived
    resuming subscribers from random positions and stock subscribers,
    about two a second; SIGHUP to both relays every 5 s; rotation (256 KiB
    segments), retention (12 MiB), archiving (segments sealed 2 s ago,
    .wal.zst) and snapshots (every 3 s, two kept; a's .bin.lz4, b's .bin,
    deleting the segments they cover) all the time.

Every second it samples each relay's RSS, open file descriptors and
threads from /proc. It fails if the oracle finds a violation or if any
sample series grows without bound, judged after a warm-up (the first 20%
of the run): the maximum over the last third may exceed the maximum over
the first third of the rest by at most a margin (RSS: 10% + 4 MiB; fds: 4;
threads: 1). The slope of a least-squares line over the second half is
reported too.

At the end both relays are stopped and the oracle checks, besides its
usual checks, that each data directory recovered with the cache's rule
holds the state of the relay's frames (check_cache_recovery; the producer
rewrites 1,000 keys), and that both relays took snapshots and archived
segments throughout. `soak_hooks` are called every check round with the
relays and the oracle.
"""

import os
import random
import signal
import threading
import time

import pytest

from conftest import TOKEN, record_figures
from harness import (OK_RE, Producer, ResumingSubscriber, StatusPoller,
                     StockSubscriber)
from oracle import FrameSplitter, Oracle, check_scenario
from relayutil import Relay, connect, recv_line, wait_until

MINUTES = float(os.environ.get("SOAK_MINUTES", "0"))
SOAK_ARGS = ["--segment-bytes", "256k", "--retain-bytes", "12M",
             "--tail-memory", "4M", "--subscriber-buffer", "256k",
             "--upstream-backoff-min", "10", "--upstream-backoff-max", "100",
             "--archive-after", "2", "--archive-level", "1",
             "--snapshot-every", "3", "--snapshot-keep", "2",
             "--snapshot-skew", "100"]
SNAPSHOT_COMPRESS = {"a": "lz4", "b": "none"}
KEYS = 1000
MARGINS = {"rss_kib": (0.10, 4096), "fds": (0, 4), "threads": (0, 1)}


class Progress:
    """Snapshots taken and segments archived, per relay, seen every round:
    both must go on for the whole run, not only at its start."""

    def __init__(self):
        self.rounds = {}        # relay -> [(snapshots, archived)]

    def __call__(self, relays, oracle):
        for n, r in relays.items():
            ms = r.metrics()
            self.rounds.setdefault(n, []).append(
                (ms.get("walrelay_snapshots_total", 0),
                 ms.get("walrelay_archived_segments", 0)))

    def check(self):
        bad = []
        for n, rs in self.rounds.items():
            half = len(rs) // 2
            if rs[-1][0] <= rs[half][0]:
                bad.append(f"{n} took no snapshot in the second half")
            if not any(a > 0 for _, a in rs[half:]):
                bad.append(f"{n} held no archived segment in the second half")
        return bad


soak_hooks = []


def sample(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def slope(ys):
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


def growth(series):
    """(verdict text or None, figures) for one sample series."""
    warm = len(series) // 5
    rest = series[warm:]
    third = max(1, len(rest) // 3)
    first, last = max(rest[:third]), max(rest[-third:])
    return first, last, slope(series[len(series) // 2:])


class Churn(threading.Thread):
    """Short-lived subscribers: resuming ones from random positions that
    read a random number of frames, and stock ones, one after another."""

    def __init__(self, oracle, relays, rng):
        super().__init__(daemon=True, name="churn")
        self.oracle, self.relays, self.rng = oracle, relays, rng
        self.stop_ev = threading.Event()
        self.count = 0
        self.error = None

    def run(self):
        try:
            while not self.stop_ev.wait(self.rng.uniform(0.2, 0.8)):
                self.one()
        except Exception as e:
            self.error = e

    def one(self):
        name = self.rng.choice(sorted(self.relays))
        r = self.relays[name]
        self.count += 1
        if self.rng.random() < 0.3:
            stock = StockSubscriber(self.oracle, f"churn-stock-{self.count}",
                                    name, TOKEN)
            stock.start()
            self.stop_ev.wait(self.rng.uniform(0.1, 1.0))
            stock.stop()
            return
        st = r.status()
        frm = self.rng.choice(["earliest", "latest", str(self.rng.randint(
            st["earliest"], st["next"]))])
        rec = self.oracle.subscriber(f"churn-{self.count}", name)
        s = connect(r.listen_addr, timeout=10)
        try:
            s.sendall(f"FCWAL-SUB/1 {TOKEN} {frm}\n".encode())
            reply = recv_line(s)
            m = OK_RE.match(reply)
            if not m:
                # a random position may have been deleted by retention
                assert reply.startswith("FCWAL-ERR/1 gone"), reply
                return
            c = rec.connect(m.group(4), int(m.group(1)), frm)
            fs, want = FrameSplitter(), self.rng.randint(1, 5000)
            while c.count() < want:
                b = s.recv(1 << 16)
                if not b:
                    break
                c.add(fs.feed(b), self.oracle)
        finally:
            s.close()

    def stop(self):
        self.stop_ev.set()
        self.join(30)


@pytest.mark.skipif(MINUTES <= 0, reason="a soak: make soak SOAK_MINUTES=N")
@pytest.mark.timeout(int(MINUTES * 60) + 300)
def test_soak(walrelay, walcat, workdir, tokfile):
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")) or None)
    common = ["--subscribe-token-file", str(tokfile)] + SOAK_ARGS
    a = Relay(walrelay, workdir / "a", workdir / "a.log", args=common + [
        "--snapshot-compress", SNAPSHOT_COMPRESS["a"]])
    a.start()
    b = Relay(walrelay, workdir / "b", workdir / "b.log", ingest=False,
              args=common + ["--snapshot-compress", SNAPSHOT_COMPRESS["b"],
                             "--upstream", a.listen_addr, "--upstream-protocol",
                             "sub", "--upstream-token-file", str(tokfile)])
    b.start()
    relays = {"a": a, "b": b}
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    o.add_relay("b", b, upstream="a")
    wait_until(lambda: b.status()["epoch"] == a.status()["epoch"], 15,
               "b to adopt a's epoch")
    o.note_status("a", a.status())
    o.note_status("b", b.status())
    o.snapshot("a", "start")        # the producer check starts at 0
    prod = Producer(o, "a", rate=3000, keys=KEYS)
    subs = [ResumingSubscriber(o, "sub-a", "a", TOKEN),
            ResumingSubscriber(o, "sub-b", "b", TOKEN)]
    poller = StatusPoller(o, interval=0.5)
    churn = Churn(o, relays, rng)
    threads = [prod, poller, churn] + subs
    for t in threads:
        t.start()
    progress = Progress()
    hooks = soak_hooks + [progress]
    samples = {n: [] for n in relays}
    hups = rounds = 0
    t0 = time.monotonic()
    deadline = t0 + MINUTES * 60
    try:
        tick = t0
        while time.monotonic() < deadline and not o.violations:
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))   # 1 s sampling
            for n, r in relays.items():
                samples[n].append(sample(r.proc.pid))
            k = len(samples["a"])
            if k % 5 == 0:
                for r in relays.values():
                    r.signal(signal.SIGHUP)
                hups += 2
                for n in relays:
                    o.snapshot(n, f"soak second {k}")
                o.check()
                o.compact()
                for hook in hooks:
                    hook(relays, o)
                rounds += 1
        churn.stop()
        prod.finish()
        wait_until(lambda: not a.status()["upstream"]["connected"], 30,
                   "a to see the producer's end")
        end = a.status()["next"]
        a.wait_durable(end)
        wait_until(lambda: b.status()["durable"] == end, 60, "b to catch up")
        for s in subs:
            s.wait_position(end)
    finally:
        for t in threads:
            if hasattr(t, "stop"):
                t.stop()
        prod.stop_ev.set()
    for n, r in relays.items():
        assert r.alive(), f"{n} died"
        assert r.stop() == 0
        o.verify(n, "after the soak")
        o.snapshot(n, "final")
    for t in threads:
        assert getattr(t, "error", None) is None, f"{t.name}: {t.error}"
    for n in relays:
        o.check_cache_recovery(n, "after the soak")
    check_scenario(o, chain=("a", "b"))
    assert o.stats["recovery_checks"] == 2, o.stats
    assert not progress.check(), progress.check()
    for n in relays:
        assert "reload" in relays[n].read_log().lower()
    figures = {"minutes": round((time.monotonic() - t0) / 60, 1),
               "frames": end, "sighups": hups, "churned_subscribers": churn.count,
               "check_rounds": rounds, "segments_a": poller.rotations("a"),
               "retention_deleted_a": poller.deletions("a"),
               "archived_a": poller.archived("a"),
               "archived_b": poller.archived("b"),
               "snapshots_a": poller.snapshots("a"),
               "snapshots_b": poller.snapshots("b")}
    bad = []
    for n in relays:
        for key, (rel, absm) in MARGINS.items():
            series = [s[key] for s in samples[n]]
            first, last, sl = growth(series)
            figures[f"{n}_{key}_first_max"] = first
            figures[f"{n}_{key}_last_max"] = last
            figures[f"{n}_{key}_slope_per_min"] = round(sl * 60, 2)
            if last > first * (1 + rel) + absm:
                bad.append(f"{n} {key}: max {first} in the first third, "
                           f"{last} in the last (slope {sl * 60:.1f}/min)")
    record_figures("soak", figures)
    assert not bad, "grew without bound: " + "; ".join(bad)
