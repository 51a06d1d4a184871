#!/usr/bin/python3
"""Interleaved A/B of per-frame latency between walrelay builds.

    bench/latab.py --bindir bench/build/bin --walcat BUILD/walcat \\
        --build old=OLD_BUILD --build new=NEW_BUILD \\
        [--systems wr-always,wr-never,ncat] [--rate 500] [-n 16] \\
        [--secs 4] [--reps 5]

Runs the latency case of bench.py (16 subscribers, 1 KiB frames,
`walcat produce --stamp --rate R`, receive time minus the stamp) for each
build and system, the builds in turn within each repetition (their order
reversed every other repetition), all with the same producer and
subscriber driver. At a low rate the producer sends one frame at a time,
so a frame that waits for anything but its own fdatasync (always) or the
event loop (never) shows in the per-frame figures whatever else the
machine runs; the medians over the repetitions are what to compare.
Prints every run and a table of the medians of p50, p99 and p99.9.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True, help="wrsub's directory")
    ap.add_argument("--walcat", required=True, help="the producer")
    ap.add_argument("--build", action="append", required=True,
                    help="NAME=DIR with DIR/walrelay (twice or more)")
    ap.add_argument("--systems", default="wr-always,wr-never")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--secs", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rundir")
    args = ap.parse_args()

    builds = [b.split("=", 1) for b in args.build]
    rundir = args.rundir or tempfile.mkdtemp(prefix="latab-")
    ns = argparse.Namespace(rundir=rundir, builddir=builds[0][1],
                            bindir=args.bindir)
    env = bench.Env(ns)
    env.walcat = args.walcat
    count = max(200, int(args.rate * args.secs))
    timeout = args.secs * 3 + 5
    res = {}
    systems = args.systems.split(",")
    probes = []
    try:
        for rep in range(args.reps):
            probes.append(bench.fsync_probe(d=rundir))
            bench.log(f"rep {rep} disk: 4 KiB write + fdatasync p50 "
                      f"{probes[-1][0]:.2f} ms, p99 {probes[-1][1]:.2f} ms")
            order = builds if rep % 2 == 0 else builds[::-1]
            for s in systems:
                for name, d in (order if s != "ncat" else [("ncat", "")]):
                    if s != "ncat":
                        env.walrelay = os.path.join(d, "walrelay")
                    try:
                        r = bench.run_once(env, s, args.n, args.size, count,
                                           timeout, rate=args.rate)
                    except RuntimeError as e:
                        bench.log(f"    {e}")
                        env.stop_all()
                        continue
                    res.setdefault((s, name), []).append(r)
                    bench.log(f"rep {rep} {s:10} {name:8} p50 "
                              f"{r.get('p50_us', 0):8.0f} p99 "
                              f"{r.get('p99_us', 0):8.0f} p99.9 "
                              f"{r.get('p999_us', 0):8.0f} us, "
                              f"{r.get('lat_n', 0):.0f} samples")
    finally:
        env.stop_all()
    print(f"\n{args.n} subscribers x {args.size} B, {args.rate} frames/s, "
          f"{args.reps} interleaved repetitions: medians (min-max) in us\n")
    print("disk, 4 KiB write + fdatasync, p50 / p99 ms per repetition: " +
          ", ".join(f"{a:.2f} / {b:.2f}" for a, b in probes) + "\n")
    print("| system | build | p50 | p99 | p99.9 |")
    print("|---|---|---|---|---|")
    for (s, name), runs in res.items():
        cells = []
        for k in ("p50_us", "p99_us", "p999_us"):
            v = [r.get(k, 0) for r in runs]
            cells.append(f"{statistics.median(v):,.0f} "
                         f"({min(v):,.0f}-{max(v):,.0f})")
        print(f"| {s} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
