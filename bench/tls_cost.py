#!/usr/bin/python3
"""What a TLS subscriber costs the relay compared with a plain one.

    bench/tls_cost.py [--builddir DIR] [--mb N] [--value-bytes N] [--rate N]

Starts walrelay (from --builddir, default $WALRELAY_BUILDDIR or .) on
loopback ports with a throwaway certificate, and for each case measures
the relay's CPU time (utime + stime from /proc) per GB delivered to one
subscriber:

  live:     the subscriber is connected (from 'latest') while walcat
            produce sends N MB; the relay's CPU minus that of the same run
            without a subscriber is the subscriber's cost.
  catch-up: after the stream is stored, a subscriber reads all of it from
            'earliest' (segment files: sendfile for plain TCP, read and
            encrypt for TLS); the relay does nothing else meanwhile.

Prints a small table. Not part of the test suite.
"""

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from relayutil import Relay, connect, recv_line, wait_until  # noqa: E402

TOKEN = "bench-sub"
PUB = "bench-pub"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_cert(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=bench-ca", "-addext",
            "basicConstraints=critical,CA:TRUE", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
            "/CN=localhost", cwd=d)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName = DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey",
            "ca.key", "-set_serial", "1", "-days", "2", "-extfile", "ext",
            "-out", "server.crt", cwd=d)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Reader(threading.Thread):
    """Counts the bytes of a subscription until the socket is closed."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.got = 0
        self.error = None

    def run(self):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = self.sock.recv_into(view)
                if n == 0:
                    return
                self.got += n
        except Exception as e:
            self.error = e

    def wait_for(self, total, what):
        wait_until(lambda: self.got >= total or self.error or
                   not self.is_alive(), 300, what, interval=0.005)
        if self.got < total:
            raise SystemExit(f"{what}: {self.got} of {total} bytes: "
                             f"{self.error}")


def subscribe(relay, tls, frm, cadir):
    s = connect(relay.listen_addr, timeout=120)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if tls:
        ctx = ssl.create_default_context(cafile=os.path.join(cadir, "ca.crt"))
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(f"FCWAL-SUB/1 {TOKEN} {frm}\n".encode())
    reply = recv_line(s)
    assert reply.startswith("FCWAL-OK/1 "), reply
    return s


def produce(walcat, relay, args, tokfile):
    subprocess.run([walcat, "produce", "--quiet", "--token-file", tokfile,
                    "--random-values", *args, relay.ingest_addr], check=True)


def run_case(opts, work, name, tls, live_sub):
    """One relay: produce the stream (with a live subscriber or not), then
    a catch-up subscriber from earliest. Returns the measurements."""
    d = os.path.join(work, name)
    os.makedirs(d)
    tokdir = os.path.join(work, "tok")
    args = ["--fsync", "never", "--subscribe-token-file",
            os.path.join(tokdir, "sub"), "--publish-token-file",
            os.path.join(tokdir, "pub"), "--tail-memory", "256M",
            "--subscriber-buffer", "4M", "--segment-bytes", "256M"]
    if tls:
        args += ["--tls-cert", os.path.join(work, "pki", "server.crt"),
                 "--tls-key", os.path.join(work, "pki", "server.key")]
    r = Relay(os.path.join(opts.builddir, "walrelay"), os.path.join(d, "data"),
              os.path.join(d, "log"), args=args).start()
    pki = os.path.join(work, "pki")
    out = {}
    try:
        count = opts.mb * 1024 * 1024 // (opts.value_bytes + 60)
        reader = None
        if live_sub:
            s = subscribe(r, tls, "latest", pki)
            reader = Reader(s)
            reader.start()
        c0 = cpu_seconds(r.proc.pid)
        t0 = time.monotonic()
        produce(os.path.join(opts.builddir, "walcat"), r,
                ["--count", str(count), "--value-bytes", str(opts.value_bytes),
                 "--rate", str(opts.rate)],
                os.path.join(tokdir, "pub"))
        wait_until(lambda: r.status()["durable"] >= count, 300, "stored")
        total = int(r.metric("walrelay_bytes_received_total"))
        if reader is not None:
            reader.wait_for(total, f"{name}: live subscriber")
        out["live_cpu"] = cpu_seconds(r.proc.pid) - c0
        out["live_s"] = time.monotonic() - t0
        out["bytes"] = total
        if reader is not None:
            s.close()

        # catch-up from the segment files, nothing else going on
        s = subscribe(r, tls, "earliest", pki)
        reader = Reader(s)
        c0 = cpu_seconds(r.proc.pid)
        t0 = time.monotonic()
        reader.start()
        reader.wait_for(total, f"{name}: catch-up subscriber")
        out["catchup_cpu"] = cpu_seconds(r.proc.pid) - c0
        out["catchup_s"] = time.monotonic() - t0
        s.close()
    finally:
        r.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--builddir", default=os.environ.get("WALRELAY_BUILDDIR", "."))
    ap.add_argument("--mb", type=int, default=512, help="MB to produce (512)")
    ap.add_argument("--value-bytes", type=int, default=4000)
    ap.add_argument("--rate", type=int, default=0,
                    help="frames per second produced (0: as fast as possible)")
    ap.add_argument("--reps", type=int, default=3,
                    help="runs of each case, interleaved (3); medians shown")
    opts = ap.parse_args()
    for b in ("walrelay", "walcat"):
        if not os.access(os.path.join(opts.builddir, b), os.X_OK):
            sys.exit(f"tls_cost: no {b} in {opts.builddir} (--builddir)")

    work = tempfile.mkdtemp(prefix="walrelay-tls-cost-")
    try:
        os.makedirs(os.path.join(work, "pki"))
        make_cert(os.path.join(work, "pki"))
        os.makedirs(os.path.join(work, "tok"))
        for n, t in (("sub", TOKEN), ("pub", PUB)):
            p = os.path.join(work, "tok", n)
            with open(p, "w") as f:
                f.write(t + "\n")
            os.chmod(p, 0o600)
        runs = {"none": [], "plain": [], "tls": []}
        for i in range(opts.reps):
            for name, tls_on, live in (("none", False, False),
                                       ("plain", False, True),
                                       ("tls", True, True)):
                runs[name].append(run_case(opts, work, f"{name}{i}", tls_on,
                                           live))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(name, key):
        return statistics.median(m[key] for m in runs[name])

    def span(vals):
        vals = sorted(vals)
        return f"{statistics.median(vals):.2f} ({vals[0]:.2f}-{vals[-1]:.2f})"

    base = {k: med("none", k) for k in ("live_cpu", "live_s", "bytes")}
    plain = {k: med("plain", k) for k in ("live_cpu", "live_s",
                                          "catchup_cpu", "catchup_s")}
    tls = {k: med("tls", k) for k in ("live_cpu", "live_s", "catchup_cpu",
                                      "catchup_s")}

    gb = base["bytes"] / 1e9
    rate = f"{opts.rate} frames/s" if opts.rate else "as fast as possible"
    print(f"stream: {base['bytes'] / 1e6:.0f} MB, values of {opts.value_bytes} "
          f"bytes (incompressible), produced {rate}, fsync never, "
          f"one subscriber; medians of {opts.reps} interleaved runs\n")
    print(f"{'case':<30} {'relay CPU s':>12} {'wall s':>8} {'CPU s/GB delivered':>19}")
    print(f"{'ingest only (no sub)':<30} {base['live_cpu']:>12.2f} "
          f"{base['live_s']:>8.2f} {'-':>19}")
    for label, m in (("plain", plain), ("TLS", tls)):
        extra = m["live_cpu"] - base["live_cpu"]
        print(f"{'live, ' + label:<30} {m['live_cpu']:>12.2f} "
              f"{m['live_s']:>8.2f} {extra / gb:>19.2f}")
    for label, m in (("plain (sendfile)", plain), ("TLS (read+encrypt)", tls)):
        print(f"{'catch-up, ' + label:<30} {m['catchup_cpu']:>12.2f} "
              f"{m['catchup_s']:>8.2f} {m['catchup_cpu'] / gb:>19.2f}")
    # what TLS adds, run by run (run i of each case ran back to back)
    live_extra = [(t["live_cpu"] - p["live_cpu"]) / gb
                  for t, p in zip(runs["tls"], runs["plain"])]
    cu_extra = [(t["catchup_cpu"] - p["catchup_cpu"]) / gb
                for t, p in zip(runs["tls"], runs["plain"])]
    print(f"\nTLS over plain, CPU s/GB, median (min-max) of the paired runs:"
          f"\n  live      {span(live_extra)}\n  catch-up  {span(cu_extra)}")
    print("\nlive: relay CPU minus the ingest-only run, per GB sent to the "
          "subscriber;\ncatch-up: relay CPU while one subscriber reads the "
          "whole store from earliest.")


if __name__ == "__main__":
    main()
