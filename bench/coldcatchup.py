#!/usr/bin/env python3
"""bench/coldcatchup.py: live latency while subscribers catch up from cold
segment files (docs/performance.md, "The disk off the loop").

    bench/coldcatchup.py --walrelay DIR --wrsub PATH [--mib 2048]
        [--live 4] [--catchup 8] [--rate 20000] [--secs 10] [--out FILE]

DIR is a walrelay build directory (walrelay, walcat). It stores --mib MiB
of 1 KiB frames (walcat produce), restarts the relay on them, and then,
for plain TCP subscribers (sendfile) and for TLS ones (reads), measures
the p99 latency of --live live subscribers (the stock protocol: from the
next frame) receiving --rate frames/s with send stamps for --secs seconds:

- alone (the baseline);
- while --catchup subscribers read the whole store from its first frame,
  with the page cache dropped just before they start
  (`echo 1 > /proc/sys/vm/drop_caches`, as root; otherwise each segment
  file's pages are dropped with posix_fadvise(DONTNEED), which the
  results then say).

Goal: the loaded p99 at most 1.5x the baseline. It also prints the bytes
the relay's event loop (its main thread) and all its threads read from
the disk while the live subscribers were measured with the catch-up
running (/proc/PID/task/TID/io): the loop's share must be 0. Every server listens on
127.0.0.1 and is stopped on exit. Prints a Markdown table with its goal
rows (and writes it to --out).
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_cert(d):
    os.makedirs(d, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
            "-out", "server.crt", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)


class Relay:
    def __init__(self, binary, datadir, log, args):
        self.ingest, self.listen = free_port(), free_port()
        argv = [binary, "--data-dir", datadir, "--ingest",
                f"127.0.0.1:{self.ingest}", "--listen",
                f"127.0.0.1:{self.listen}", "--http", "none"] + args
        self.f = open(log, "ab")
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.listen), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.p.poll() is not None:
                    raise RuntimeError(f"relay did not start: see {log}")
                time.sleep(0.05)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(300)
        self.f.close()


def drop_cache(datadir):
    """Drop the page cache; 'drop_caches', or 'fadvise' when not root."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        for n in os.listdir(datadir):
            if ".wal" in n:
                fd = os.open(os.path.join(datadir, n), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        return "fadvise"


def disk_reads(pid):
    """Bytes read from the disk by the process's main thread (the event
    loop) and by all its threads (/proc/PID/task/TID/io read_bytes), or
    None where the kernel does not account them per thread."""
    loop = total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                n = int(re.search(r"read_bytes: (\d+)", f.read()).group(1))
        except (OSError, AttributeError):
            continue
        total += n
        if int(tid) == pid:
            loop = n
    return loop, total


def wait_file(path, proc, secs):
    deadline = time.monotonic() + secs
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wrsub(args, r, n, proto, tls, count, ready, timeout):
    argv = [args.wrsub, "--addr", f"127.0.0.1:{r.listen}", "-n", str(n),
            "--proto", proto, "--count", str(count), "--timeout",
            str(timeout), "--ready", ready]
    if tls:
        argv.append("--tls")
    if os.path.exists(ready):
        os.unlink(ready)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if not wait_file(ready, p, 60):
        p.kill()
        raise RuntimeError("subscribers not ready")
    return p


def live_p99(args, r, tls, work):
    """Live subscribers receive --rate frames/s for --secs: their p99 (us)."""
    count = args.rate * args.secs
    wc = os.path.join(args.walrelay, "walcat")
    live = wrsub(args, r, args.live, "stock", tls, count,
                 os.path.join(work, "ready.live"), args.secs * 4 + 30)
    subprocess.run([wc, "produce", "--count", str(count), "--rate",
                    str(args.rate), "--stamp", "--value-bytes", "1000",
                    "--quiet", f"127.0.0.1:{r.ingest}"], check=True)
    out, _ = live.communicate(timeout=args.secs * 4 + 60)
    m = re.search(r"p99_us=([\d.]+).*complete=(\d+) n=(\d+)", out)
    if m is None:
        raise RuntimeError(f"live subscribers: {out!r}")
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def one(args, work, tls, store):
    """Baseline and loaded p99 on the stored frames, plain or TLS."""
    wr = os.path.join(args.walrelay, "walrelay")
    extra = ["--fsync", "always", "--subscriber-buffer", "1M"]
    if tls:
        extra += ["--tls-cert", os.path.join(work, "pki", "server.crt"),
                  "--tls-key", os.path.join(work, "pki", "server.key")]
    r = Relay(wr, store, os.path.join(work, "relay.log"), extra)
    try:
        base = live_p99(args, r, tls, work)
        how = drop_cache(store)
        reads0 = disk_reads(r.p.pid)
        total = args.frames * 4     # more than there is: they keep reading
        cu = wrsub(args, r, args.catchup, "sub", tls, total,
                   os.path.join(work, "ready.cu"), 3600)
        try:
            loaded = live_p99(args, r, tls, work)
            reads1 = disk_reads(r.p.pid)
        finally:
            cu.send_signal(signal.SIGTERM)
            try:
                cu.wait(30)
            except subprocess.TimeoutExpired:
                cu.kill()
    finally:
        r.stop()
    return {"label": "TLS (reads on the I/O pool)" if tls else
            "plain TCP (sendfile, warmed on the I/O pool)",
            "base": base, "loaded": loaded, "how": how,
            "reads": None if reads0 is None or reads1 is None else
            (reads1[0] - reads0[0], reads1[1] - reads0[1])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--walrelay", required=True)
    ap.add_argument("--wrsub", required=True)
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--live", type=int, default=4)
    ap.add_argument("--catchup", type=int, default=8)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--work", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "build", "coldcatchup"))
    ap.add_argument("--out")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    make_cert(os.path.join(args.work, "pki"))
    store = os.path.join(args.work, "data")
    args.frames = args.mib * 1024 * 1024 // 1040
    wr = os.path.join(args.walrelay, "walrelay")
    wc = os.path.join(args.walrelay, "walcat")
    r = Relay(wr, store, os.path.join(args.work, "relay.log"),
              ["--fsync", "never"])
    subprocess.run([wc, "produce", "--count", str(args.frames),
                    "--value-bytes", "1000", "--quiet",
                    f"127.0.0.1:{r.ingest}"], check=True)
    r.stop()
    res = [one(args, args.work, False, store),
           one(args, args.work, True, store)]
    o = [f"{args.live} live subscribers at {args.rate} frames/s of 1 KiB "
         f"(fsync always) for {args.secs} s; {args.catchup} subscribers "
         f"catching up from {args.mib} MiB of segments, page cache dropped "
         f"({res[0]['how']}) just before they start.", "",
         "| subscribers | live p99 alone | live p99 with catch-up "
         "(x alone) | live frames complete | read from the disk by the "
         "event loop / by the relay (MiB) |", "|---|---|---|---|---|"]
    for x in res:
        b, l = x["base"], x["loaded"]
        rd = ("not accounted" if x["reads"] is None else
              f"{x['reads'][0] / 1048576:.1f} / "
              f"{x['reads'][1] / 1048576:.1f}")
        o.append(f"| {x['label']} | {b[0] / 1000:.2f} ms | "
                 f"{l[0] / 1000:.2f} ms ({l[0] / b[0]:.2f}x) | "
                 f"{l[1]}/{l[2]} | {rd} |")
    o += ["", "| target | measured | goal | result |", "|---|---|---|---|"]
    for x in res:
        ratio = x["loaded"][0] / x["base"][0]
        ok = ratio <= 1.5 and x["loaded"][1] == x["loaded"][2]
        size = (f"{args.mib / 1024:g} GiB" if args.mib >= 1024 else
                f"{args.mib} MiB")
        o.append(f"| live p99 while {args.catchup} catch up from "
                 f"{size} cold, {x['label'].split(' (')[0]}"
                 f" | {ratio:.2f}x | ≤ 1.5x alone | "
                 f"{'met' if ok else 'missed'} |")
    text = "\n".join(o) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
