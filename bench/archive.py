#!/usr/bin/env python3
"""bench/archive.py: the archive tier (docs/archive.md).

    bench/archive.py --walrelay DIR --wrsub PATH [--mib N] [--out FILE]

DIR is a walrelay build directory (walrelay, walcat). On the benchmark's
frames (walcat produce: about 1 KiB SET/DEL/EXPIRE records, compressible
text values), once plain and once with LZ4 payloads (--compress, as a
cache with compression on) it measures:

- the archive ratio (raw bytes / .wal.zst bytes) against `zstd -3 -T1` on
  the same raw segment files, and the archiver's compression rate (one
  thread, from its own log lines: bytes / time per segment);
- a subscriber catching up from archived segments against one catching up
  from the same frames raw (wrsub, FCWAL-SUB/1 from earliest; median of
  three alternating runs);
- `walcat restore` of the whole archived store into an empty directory,
  and the same into tmpfs (--tmpfs, default /dev/shm when it exists), so
  that the restore's own rate shows apart from the disk's.

Catch-up rows also give the relay's CPU time per GiB delivered (all its
threads, from /proc), which depends less on other load than the rates.

Every server listens on 127.0.0.1 and is stopped on exit. Prints a
Markdown table (and writes it to --out).
"""
import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    def __init__(self, binary, datadir, log, args):
        self.ingest, self.listen = free_port(), free_port()
        self.log = log
        argv = [binary, "--data-dir", datadir, "--ingest",
                f"127.0.0.1:{self.ingest}", "--listen",
                f"127.0.0.1:{self.listen}", "--http", "none",
                "--segment-bytes", "64M"] + args
        self.f = open(log, "ab")
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
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
        self.p.wait(120)
        self.f.close()

    def read_log(self):
        with open(self.log, errors="replace") as f:
            return f.read()


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def dir_bytes(d, suffix):
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)
               if n.endswith(suffix))


def proc_cpu(pid):
    """CPU seconds (user + system) of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def catch_up(wrsub, relay, count):
    """MB/s, frames, and the relay's CPU seconds per GiB delivered."""
    c0 = proc_cpu(relay.p.pid)
    out = subprocess.run([wrsub, "--addr", f"127.0.0.1:{relay.listen}", "-n",
                          "1", "--count", str(count), "--timeout", "600"],
                         capture_output=True, text=True, check=True)
    cpu = proc_cpu(relay.p.pid) - c0
    m = re.search(r"RESULT frames=(\d+) bytes=(\d+) secs=([\d.]+)", out.stdout)
    return (int(m.group(2)) / float(m.group(3)) / 1e6, int(m.group(1)),
            cpu / (int(m.group(2)) / 2**30))


def restore(wc, src, dst):
    """walcat restore src into dst: wall MB/s, CPU MB/s, bytes, summary."""
    shutil.rmtree(dst, ignore_errors=True)
    t0, c0 = time.monotonic(), child_cpu()
    out = subprocess.run([wc, "restore", src, dst], capture_output=True,
                         text=True, check=True)
    secs, cpu = time.monotonic() - t0, child_cpu() - c0
    nbytes = dir_bytes(dst, ".wal")
    shutil.rmtree(dst, ignore_errors=True)
    return nbytes / 1e6 / secs, nbytes / 1e6 / cpu, nbytes, out.stdout.strip()


def one(args, work, label, produce_args, mult=1):
    raw, arch = os.path.join(work, "raw"), os.path.join(work, "arch")
    for d in (raw, arch, os.path.join(work, "restored")):
        shutil.rmtree(d, ignore_errors=True)
    for f in ("raw.log", "arch.log"):
        if os.path.exists(os.path.join(work, f)):
            os.unlink(os.path.join(work, f))
    wr = os.path.join(args.walrelay, "walrelay")
    wc = os.path.join(args.walrelay, "walcat")
    # frames of about 1040 bytes; LZ4 payloads are smaller (mult)
    count = args.mib * 1024 * 1024 // 1040 * mult
    r = Relay(wr, raw, os.path.join(work, "raw.log"), [])
    subprocess.run([wc, "produce", "--count", str(count), "--value-bytes",
                    "1000", "--quiet"] + produce_args +
                   [f"127.0.0.1:{r.ingest}"], check=True)
    r.stop()
    shutil.copytree(raw, arch)
    segs = sorted(n for n in os.listdir(raw) if n.endswith(".wal"))
    sealed = segs[:-1]          # the newest has no successor: stays raw

    # zstd -3 on the files the archiver will compress, one thread
    zbytes, t0, c0 = 0, time.monotonic(), child_cpu()
    for n in sealed:
        p = subprocess.run(["zstd", "-3", "-T1", "-c", os.path.join(raw, n)],
                           capture_output=True, check=True)
        zbytes += len(p.stdout)
    zsecs, zcpu = time.monotonic() - t0, child_cpu() - c0
    rawbytes = sum(os.path.getsize(os.path.join(raw, n)) for n in sealed)

    # the archiver on the same files
    a = Relay(wr, arch, os.path.join(work, "arch.log"),
              ["--archive-after", "1"])
    deadline = time.monotonic() + 1800
    while len(re.findall(r"archived sequences", a.read_log())) < len(sealed):
        if time.monotonic() > deadline:
            raise RuntimeError("archiving did not finish")
        time.sleep(0.2)
    lines = re.findall(r"archived sequences \d+ to \d+: (\d+) -> (\d+) bytes "
                       r"\(ratio [\d.]+\) in (\d+) ms \((\d+) ms of CPU\)",
                       a.read_log())
    araw = sum(int(x[0]) for x in lines)
    az = sum(int(x[1]) for x in lines)
    ams = sum(int(x[2]) for x in lines)
    acpu = sum(int(x[3]) for x in lines)
    a.stop()

    # catch-up: raw against archived, alternating
    total = count
    rr = Relay(wr, raw, os.path.join(work, "raw.log"), [])
    ar = Relay(wr, arch, os.path.join(work, "arch.log"), [])
    raw_rates, arch_rates, raw_cpu, arch_cpu = [], [], [], []
    for _ in range(3):
        x = catch_up(args.wrsub, rr, total)
        raw_rates.append(x[0])
        raw_cpu.append(x[2])
        x = catch_up(args.wrsub, ar, total)
        arch_rates.append(x[0])
        arch_cpu.append(x[2])
    rr.stop()
    ar.stop()

    # restore of the whole archived store, onto the disk and into tmpfs
    rmbps, rcpu_mbps, rbytes, rline = restore(
        wc, arch, os.path.join(work, "restored"))
    tmbps = tcpu_mbps = None
    if args.tmpfs:
        tmbps, tcpu_mbps, _, _ = restore(
            wc, arch, os.path.join(args.tmpfs, f"walrelay-bench-{os.getpid()}"))
    return {
        "label": label, "mib": (rawbytes + os.path.getsize(
            os.path.join(raw, segs[-1]))) / 2**20,
        "ratio": araw / az, "zstd_ratio": rawbytes / zbytes,
        "mbps": araw / 1e6 / (ams / 1000), "zstd_mbps": rawbytes / 1e6 / zsecs,
        "cpu_mbps": araw / 1e6 / (acpu / 1000),
        "zstd_cpu_mbps": rawbytes / 1e6 / zcpu,
        "restore_cpu_mbps": rcpu_mbps,
        "raw_catchup": statistics.median(raw_rates),
        "arch_catchup": statistics.median(arch_rates),
        "raw_cpu": statistics.median(raw_cpu),
        "arch_cpu": statistics.median(arch_cpu),
        "restore_mbps": rmbps, "restore_bytes": rbytes,
        "tmpfs_mbps": tmbps, "tmpfs_cpu_mbps": tcpu_mbps,
        "restore_line": rline,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--walrelay", required=True)
    ap.add_argument("--wrsub", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--work", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "build", "archive"))
    ap.add_argument("--out")
    ap.add_argument("--tmpfs", default="/dev/shm" if os.path.isdir(
        "/dev/shm") else None, help="also restore into this directory "
        "(tmpfs: the restore without the disk); '' for none")
    ap.add_argument("--lz4-mult", type=int, default=16,
                    help="frames per raw byte with --compress, x")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    res = [one(args, args.work, "benchmark frames (text values)", []),
           one(args, args.work, "LZ4 payloads (--compress)", ["--compress"],
               args.lz4_mult)]
    o = ["| frames | MiB | archive ratio | zstd -3 ratio (archive as % of "
         "it) | archive MB/s, 1 thread: wall (CPU) | zstd -3 -T1 MB/s: wall "
         "(CPU) | catch-up raw MB/s | catch-up archived MB/s (x raw) | "
         "relay CPU s per GiB caught up: raw / archived | "
         "walcat restore MB/s: wall (CPU) | the same into tmpfs |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]

    def tmpfs(r):
        if r["tmpfs_mbps"] is None:
            return "-"
        return f"{r['tmpfs_mbps']:.0f} ({r['tmpfs_cpu_mbps']:.0f})"
    for r in res:
        o.append(f"| {r['label']} | {r['mib']:.0f} | {r['ratio']:.2f} | "
                 f"{r['zstd_ratio']:.2f} ({100 * r['ratio'] / r['zstd_ratio']:.0f}%) | "
                 f"{r['mbps']:.0f} ({r['cpu_mbps']:.0f}) | "
                 f"{r['zstd_mbps']:.0f} ({r['zstd_cpu_mbps']:.0f}) | "
                 f"{r['raw_catchup']:.0f} | {r['arch_catchup']:.0f} "
                 f"({r['arch_catchup'] / r['raw_catchup']:.2f}x) | "
                 f"{r['raw_cpu']:.2f} / {r['arch_cpu']:.2f} | "
                 f"{r['restore_mbps']:.0f} ({r['restore_cpu_mbps']:.0f}) | "
                 f"{tmpfs(r)} |")
    t = res[0]
    o += ["", "Targets (the benchmark's frames; wall-clock rates on a shared "
          "machine, CPU rates in parentheses):", "",
          "| target | measured | result |", "|---|---|---|"]

    def verdict(ok):
        return "met" if ok else "missed"
    pct = 100 * t["ratio"] / t["zstd_ratio"]
    o.append(f"| archive ratio within 5% of zstd -3 | {pct:.0f}% | "
             f"{verdict(pct >= 95)} |")
    o.append(f"| archive compression ≥ 200 MB/s on one core | "
             f"{t['mbps']:.0f} ({t['cpu_mbps']:.0f}) MB/s | "
             f"{verdict(t['mbps'] >= 200)} wall, "
             f"{verdict(t['cpu_mbps'] >= 200)} CPU |")
    x = t["arch_catchup"] / t["raw_catchup"]
    o.append(f"| catch-up from archived ≥ 0.7x raw | {x:.2f}x | "
             f"{verdict(x >= 0.7)} |")
    o.append(f"| walcat restore of {t['restore_bytes'] / 2**30:.2f} GiB "
             f"≥ 1 GB/s | {t['restore_mbps']:.0f} "
             f"({t['restore_cpu_mbps']:.0f}) MB/s | "
             f"{verdict(t['restore_mbps'] >= 1000)} |")
    if t["tmpfs_mbps"] is not None:
        o.append(f"| the same into tmpfs (the restore without the disk) "
                 f"≥ 1 GB/s | {t['tmpfs_mbps']:.0f} "
                 f"({t['tmpfs_cpu_mbps']:.0f}) MB/s | "
                 f"{verdict(t['tmpfs_mbps'] >= 1000)} |")
    text = "\n".join(o) + "\n"
    for r in res:
        text += f"\n{r['label']}: {r['restore_line']}"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
