#!/usr/bin/env python3
"""Usage: bench/jsbench.py --rundir DIR --builddir BUILD --bindir BIN

The bridged path next to a direct relay and JetStream R3 alone, same run
(bench.py's run_once; 16 subscribers, 1 KiB frames)."""
import argparse, sys
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import bench
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--rundir", required=True)
ap.add_argument("--builddir", required=True, help="walrelay and walcat")
ap.add_argument("--bindir", required=True, help="natsbench and wrsub")
a = ap.parse_args()
a.quick = True
env = bench.Env(a)
out = {}
systems = ["wr-always", "wr-bridge", "nats-r3"]
try:
    for s in systems:
        out[s] = [bench.run_once(env, s, 16, 1024, 20000, 60)]
        r = out[s][0]
        print(s, "max", {k: r.get(k) for k in ("fps", "ingest", "p50_us", "p99_us", "cpu", "timed_out")}, flush=True)
    for s in systems:
        rate = 2000
        r = bench.run_once(env, s, 16, 1024, 6000, 60, rate=rate)
        out[s].append(r)
        print(s, "rate", rate, {k: r.get(k) for k in ("fps", "p50_us", "p99_us", "p999_us", "timed_out")}, flush=True)
finally:
    env.stop_all()
