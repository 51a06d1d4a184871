#!/usr/bin/env python3
"""Snapshot benchmark (issue: snapshots in the cache's own format).

Full size (the figures the goals are stated for):

    bench/snapshot.py --build BUILDDIR --records 10000000 --keys 1000000 \\
        --memory 256M

What it measures, in order:
  1. idle: ingest of the whole stream (SETs, values 100 B - 1 KiB, keys
     drawn uniformly from --keys) by `walcat produce --dir` with one
     `walcat tail --raw` subscriber: ingest and fanout frames/s;
  2. a restart with --snapshot-every 1: the first snapshot folds the whole
     stream; its duration (walrelay_snapshot_duration_seconds), the relay's
     peak RSS (VmHWM) against --snapshot-memory + 64 MiB, and the
     snapshot's bytes against the raw stream's;
  3. during that snapshot, the same ingest and fanout again (a second
     stream of --records / 4 frames): the ratio to idle (goal >= 0.8);
  4. a new subscriber with FCWAL-SUB/1 ... snapshot: time to receive the
     snapshot's SET frames and reach the live tail.

Everything runs on loopback in a temporary directory; the relay and tools
come from --build (a configured and built tree).
"""

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib


def frame_set(key, val, ts):
    body = struct.pack("<BIIQq", 1, len(key), len(val), ts, -1) + key + val
    rec = body + struct.pack("<I", zlib.crc32(body))
    head = b"FCW2" + struct.pack("<BI", 0, len(rec)) + rec
    return head + struct.pack("<I", zlib.crc32(head))


def write_stream(path, n, nkeys, seed):
    """A segment-format file of n SET frames; returns its size."""
    rnd = random.Random(seed)
    pool = os.urandom(1 << 20)
    ts = 1_700_000_000_000
    with open(path, "wb") as f:
        buf = []
        for i in range(n):
            k = b"key-%012d" % rnd.randrange(nkeys)
            vlen = rnd.randrange(100, 1025)
            off = rnd.randrange(len(pool) - vlen)
            buf.append(frame_set(k, pool[off:off + vlen], ts + i // 100))
            if len(buf) == 10000:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))
    return os.path.getsize(path)


def size_arg(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    def __init__(self, build, datadir, args):
        self.ports = [free_port() for _ in range(3)]
        self.argv = [os.path.join(build, "walrelay"), "--data-dir", datadir,
                     "--ingest", f"127.0.0.1:{self.ports[0]}",
                     "--listen", f"127.0.0.1:{self.ports[1]}",
                     "--http", f"127.0.0.1:{self.ports[2]}"] + args
        self.log = open(datadir + ".log", "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.wait(lambda: self.status() is not None, 60)

    def status(self):
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ports[2]}/v1/status",
                    timeout=5) as r:
                return json.load(r)
        except OSError:
            return None

    def metric(self, name):
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ports[2]}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                # one stream: walrelay_x{stream="default"} 1
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def hwm_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    @staticmethod
    def wait(cond, timeout):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(120)
        self.log.close()


def ingest_and_fanout(build, relay, path, frames):
    """Replay path into the relay with one raw subscriber from latest;
    returns (ingest frames/s, fanout frames/s)."""
    walcat = os.path.join(build, "walcat")
    before = relay.metric("walrelay_active_subscribers")
    sub = subprocess.Popen([walcat, "tail", "--raw", "--from", "latest",
                            "--count", str(frames),
                            f"127.0.0.1:{relay.ports[1]}"],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    # the subscriber's handshake, before the first frame
    Relay.wait(lambda: relay.metric("walrelay_active_subscribers") > before,
               30)
    t0 = time.monotonic()
    subprocess.run([walcat, "produce", "--quiet", "--dir", path,
                    f"127.0.0.1:{relay.ports[0]}"], check=True)
    t1 = time.monotonic()
    sub.wait(600)
    t2 = time.monotonic()
    return frames / (t1 - t0), frames / (t2 - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    work = a.workdir or tempfile.mkdtemp(prefix="snapbench.")
    os.makedirs(work, exist_ok=True)
    main_stream = os.path.join(work, "stream-a")
    extra_stream = os.path.join(work, "stream-b")
    os.makedirs(main_stream, exist_ok=True)
    os.makedirs(extra_stream, exist_ok=True)
    print(f"generating {a.records} SETs over {a.keys} keys ...", flush=True)
    raw = write_stream(os.path.join(main_stream, "segment-a.wal"),
                       a.records, a.keys, 1)
    nextra = a.records // 4
    write_stream(os.path.join(extra_stream, "segment-b.wal"), nextra,
                 a.keys, 2)
    data = os.path.join(work, "relay")
    # the in-memory tail is the relay's other large buffer: 32M of the
    # 64 MiB the RSS goal allows beside --snapshot-memory
    common = ["--fsync", "interval:100", "--segment-bytes", "64M",
              "--tail-memory", "32M", "--snapshot-memory", a.memory]

    # 1. idle
    r = Relay(a.build, data, common)
    idle = ingest_and_fanout(a.build, r, main_stream, a.records)
    r.stop()

    # 2. the first snapshot, over the whole stream, and 3. load during it
    r = Relay(a.build, data, common + ["--snapshot-every", "1"])
    Relay.wait(lambda: r.metric("walrelay_snapshot_running") == 1, 60)
    during = ingest_and_fanout(a.build, r, extra_stream, nextra)
    still = r.metric("walrelay_snapshot_running") == 1
    Relay.wait(lambda: r.metric("walrelay_snapshots_total") >= 1, 3600)
    dur_ms = 1000 * r.metric("walrelay_snapshot_duration_seconds")
    hwm = r.hwm_kib()
    st = r.status()
    snap = os.path.join(data, st["snapshot"]["file"])
    snap_bytes = os.path.getsize(snap)

    # 4. a new subscriber: snapshot, then the live tail
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", r.ports[1]))
    s.sendall(b"FCWAL-SUB/1 t snapshot\n")
    f = s.makefile("rb", buffering=1 << 20)
    reply = f.readline().decode()
    kv = dict(x.split("=", 1) for x in reply.split()[1:])
    want = int(kv["snapshot"]) + int(kv["next"]) - int(kv["start"])
    for _ in range(want):
        hdr = f.read(9)
        f.read(int.from_bytes(hdr[5:9], "little") + 4)
    bootstrap = time.monotonic() - t0
    s.close()
    r.stop()

    mem = size_arg(a.memory)
    print(json.dumps({
        "records": a.records, "keys": a.keys, "memory": a.memory,
        "raw_stream_bytes": raw,
        "snapshot_file": os.path.basename(snap),
        "snapshot_bytes": snap_bytes,
        "snapshot_keys": st["snapshot"]["keys"],
        "snapshot_vs_raw": round(snap_bytes / raw, 4),
        "snapshot_ms": dur_ms,
        "peak_rss_mib": round(hwm / 1024, 1),
        "rss_goal_mib": round((mem + (64 << 20)) / (1 << 20), 1),
        "ingest_idle_fps": round(idle[0]), "fanout_idle_fps": round(idle[1]),
        "ingest_during_fps": round(during[0]),
        "fanout_during_fps": round(during[1]),
        "ingest_ratio": round(during[0] / idle[0], 3),
        "fanout_ratio": round(during[1] / idle[1], 3),
        "snapshot_still_running_after_load": still,
        "bootstrap_s": round(bootstrap, 3),
        "bootstrap_frames": want,
    }, indent=1))
    if a.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
