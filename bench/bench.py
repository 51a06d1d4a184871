#!/usr/bin/python3
"""Drives the benchmark workload through walrelay and its peers.

Started by bench/run (which builds everything, raises the file limit and
stops leftover servers on exit). Every server runs on 127.0.0.1 on a free
port, from a fresh directory, and is stopped after each run; every wait is
bounded.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

# SET frame size -> value bytes (frame = 13 + 25 + 16-byte key + value + 4)
SIZES = {100: 42, 1024: 966, 16384: 16326}
SIZE_NAME = {100: "100 B", 1024: "1 KiB", 16384: "16 KiB"}

# name: (label, durability as stated in the tables)
SYSTEMS = {
    "wr-always": ("walrelay", "fsync always (group commit, sent once durable)"),
    "wr-interval": ("walrelay", "fsync interval:100 (sent once durable)"),
    "wr-never": ("walrelay", "fsync never (page cache)"),
    "wr-tls": ("walrelay TLS", "fsync always; subscribers over TLS 1.3"),
    "nats": ("NATS JetStream", "file storage, server default sync (fsync every 2 min)"),
    "nats-r3": ("NATS JetStream R3", "three local servers, file storage, 3 replicas"),
    "wr-bridge": ("walrelay via JetStream", "sink relay (fsync always) -> JetStream R3 (three local servers) -> edge relay (fsync always); subscribers on the edge"),
    "redis-always": ("Redis Streams", "AOF appendfsync always"),
    "redis-everysec": ("Redis Streams", "AOF appendfsync everysec"),
    "ncat": ("ncat --broker", "none (memory only, reference)"),
}
WR_FSYNC = {"wr-always": "always", "wr-interval": "interval:100",
            "wr-never": "never", "wr-tls": "always", "wr-bridge": "always"}

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def wait_file(path, proc, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def cpu_secs(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError):
        return 0.0


def vm(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parse_kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", line)}


class Env:
    def __init__(self, args):
        self.args = args
        self.rundir = args.rundir
        self.bin = args.bindir
        self.walrelay = os.path.join(args.builddir, "walrelay")
        self.walcat = os.path.join(args.builddir, "walcat")
        self.piddir = os.path.join(self.rundir, "pids")
        os.makedirs(self.piddir, exist_ok=True)
        self.procs = []
        self.tls = None

    def spawn(self, argv, logname, **kw):
        logf = open(os.path.join(self.rundir, logname), "ab")
        p = subprocess.Popen(argv, stdout=kw.pop("stdout", logf),
                             stderr=kw.pop("stderr", logf),
                             start_new_session=True, **kw)
        open(os.path.join(self.piddir, str(p.pid)), "w").close()
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=8.0):
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        try:
            os.unlink(os.path.join(self.piddir, str(p.pid)))
        except OSError:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p, grace=3.0)

    def fresh(self, name):
        d = os.path.join(self.rundir, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def cert(self):
        if self.tls is None:
            d = self.fresh("tls")
            key, crt = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                            "-keyout", key, "-out", crt, "-days", "2",
                            "-subj", "/CN=127.0.0.1"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.tls = (crt, key)
        return self.tls


# ---- servers ---------------------------------------------------------------

def nats_cluster(env, n=3):
    """n nats-server processes with routes and JetStream on loopback; returns
    (processes, client ports) once every node's /healthz says ok."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(n)]
    procs = []
    for i, (cp, rp, hp) in enumerate(ports):
        d = env.fresh(f"data/n{i}")
        routes = ", ".join(f"nats-route://127.0.0.1:{r}"
                           for j, (_, r, _) in enumerate(ports) if j != i)
        conf = os.path.join(d, "nats.conf")
        with open(conf, "w") as f:
            f.write(f"server_name: n{i}\nlisten: 127.0.0.1:{cp}\n"
                    f"http: 127.0.0.1:{hp}\n"
                    f"jetstream {{ store_dir: \"{d}\" }}\n"
                    f"cluster {{ name: bench, listen: 127.0.0.1:{rp}, "
                    f"routes: [{routes}] }}\n")
        procs.append(env.spawn(["nats-server", "-c", conf], f"nats-n{i}.log"))
    deadline = time.time() + 60
    for _, _, hp in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{hp}/healthz",
                                            timeout=2) as r:
                    if b'"ok"' in r.read():
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the NATS cluster did not become healthy")
            time.sleep(0.1)
    return procs, [cp for cp, _, _ in ports]


def wr_status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status",
                                timeout=5) as r:
        return json.loads(r.read())


class Server:
    """One server process for one run: start(), addresses, stop()."""

    def __init__(self, env, system):
        self.env, self.system, self.proc = env, system, None
        self.extra = []

    def start(self):
        env, s = self.env, self.system
        if s in ("wr-bridge", "nats-r3"):
            env.fresh("data")
            self.extra, ports = nats_cluster(env)
            self.port = ports[0]
            self.urls = ",".join(f"nats://127.0.0.1:{p}" for p in ports)
        if s == "wr-bridge":
            # the sink: this system's ingest; the edge: its subscribers
            self.ingest, sink_http = free_port(), free_port()
            self.extra.append(env.spawn(
                [env.walrelay, "--data-dir", env.fresh("data/sink"),
                 "--ingest", f"127.0.0.1:{self.ingest}",
                 "--listen", f"127.0.0.1:{free_port()}",
                 "--http", f"127.0.0.1:{sink_http}", "--log-level", "warn",
                 "--jetstream-sink", self.urls, "--jetstream-stream", "bench"],
                "walrelay-sink.log"))
            self.listen, self.http = free_port(), free_port()
            self.proc = env.spawn(
                [env.walrelay, "--data-dir", env.fresh("data/edge"),
                 "--ingest", "none", "--listen", f"127.0.0.1:{self.listen}",
                 "--http", f"127.0.0.1:{self.http}", "--log-level", "warn",
                 "--max-subscribers", "20000", "--max-conns-per-ip", "20000",
                 "--upstream", self.urls, "--upstream-protocol", "jetstream",
                 "--jetstream-stream", "bench"], "walrelay-edge.log")
            ok = wait_port(self.ingest) and wait_port(self.http)
            # one frame through, so that the edge has the origin's positions
            # before the subscribers come (they take the stream from there)
            subprocess.run([env.walcat, "produce", "--count", "1", "--quiet",
                            f"127.0.0.1:{self.ingest}"], check=True)
            deadline = time.time() + 60
            while ok and wr_status(self.http)["next"] < 1:
                if time.time() > deadline:
                    raise RuntimeError("wr-bridge: the edge got no frame")
                time.sleep(0.05)
        elif s == "nats-r3":
            self.proc = self.extra[0]
            ok = True
        elif s.startswith("wr-"):
            d = env.fresh("data")
            self.ingest, self.listen, http = free_port(), free_port(), free_port()
            self.http = http
            argv = [env.walrelay, "--data-dir", d,
                    "--ingest", f"127.0.0.1:{self.ingest}",
                    "--listen", f"127.0.0.1:{self.listen}",
                    "--http", f"127.0.0.1:{http}",
                    "--fsync", WR_FSYNC[s], "--log-level", "warn",
                    "--max-subscribers", "20000",
                    "--max-conns-per-ip", "20000"]
            if s == "wr-tls":
                crt, key = env.cert()
                argv += ["--tls-cert", crt, "--tls-key", key]
            self.proc = env.spawn(argv, "walrelay.log")
            ok = wait_port(http)
        elif s == "nats":
            d = env.fresh("data")
            self.port = free_port()
            self.proc = env.spawn(["nats-server", "-js", "-sd", d, "-a",
                                   "127.0.0.1", "-p", str(self.port)],
                                  "nats.log")
            ok = wait_port(self.port)
        elif s.startswith("redis"):
            d = env.fresh("data")
            self.port = free_port()
            self.proc = env.spawn(["redis-server", "--port", str(self.port),
                                   "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "yes", "--appendfsync",
                                   s.split("-")[1], "--dir", d,
                                   "--daemonize", "no", "--protected-mode",
                                   "no", "--maxclients", "10000"],
                                  "redis.log")
            ok = wait_port(self.port)
        elif s == "ncat":
            self.port = free_port()
            self.proc = env.spawn(["ncat", "--broker", "--listen",
                                   "127.0.0.1", str(self.port),
                                   "--max-conns", "1000"], "ncat.log")
            ok = wait_port(self.port)
        else:
            raise ValueError(s)
        if not ok:
            raise RuntimeError(f"{s}: server did not start (see "
                               f"{env.rundir}/*.log)")

    def sub_argv(self, n, count, timeout, ready, stall=0):
        env, s = self.env, self.system
        if s.startswith("wr-") or s == "ncat":
            port = self.listen if s.startswith("wr-") else self.port
            argv = [os.path.join(env.bin, "wrsub"), "--addr",
                    f"127.0.0.1:{port}", "-n", str(n), "--count", str(count),
                    "--timeout", str(timeout), "--ready", ready]
            if s == "ncat":
                argv += ["--proto", "raw"]
            if s == "wr-tls":
                argv += ["--tls"]
            if s == "wr-bridge":
                argv += ["--proto", "stock"]	# live from the next frame
            if stall:
                argv += ["--stall", str(stall)]
            return argv
        if s in ("nats", "nats-r3"):
            return [os.path.join(env.bin, "natsbench"), "sub", "--url",
                    f"nats://127.0.0.1:{self.port}", "-n", str(n), "--count",
                    str(count), "--timeout", str(timeout), "--ready", ready,
                    "--replicas", "3" if s == "nats-r3" else "1"]
        return [os.path.join(env.bin, "redisbench"), "sub", "--port",
                str(self.port), "-n", str(n), "--count", str(count),
                "--timeout", str(timeout), "--ready", ready]

    def pub_argv(self, count, vbytes, rate):
        env, s = self.env, self.system
        if s.startswith("wr-") or s == "ncat":
            port = self.ingest if s.startswith("wr-") else self.port
            argv = [env.walcat, "produce", "--count", str(count),
                    "--value-bytes", str(vbytes), "--stamp"]
            if rate:
                argv += ["--rate", str(int(rate))]
            return argv + [f"127.0.0.1:{port}"]
        if s in ("nats", "nats-r3"):
            return [os.path.join(env.bin, "natsbench"), "pub", "--url",
                    f"nats://127.0.0.1:{self.port}", "--count", str(count),
                    "--value-bytes", str(vbytes), "--rate", str(int(rate))]
        return [os.path.join(env.bin, "redisbench"), "pub", "--port",
                str(self.port), "--count", str(count), "--value-bytes",
                str(vbytes), "--rate", str(int(rate))]

    def metrics(self):
        """chunk_bytes_live, tail_bytes and tail_buffer_bytes from
        walrelay's /metrics."""
        out = {}
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    # per-stream gauges carry a {stream="..."} label
                    m = re.match(r"\w*?(chunk_bytes_live|tail_bytes|"
                                 r"tail_buffer_bytes)(?:\{[^}]*\})? (\d+)",
                                 line)
                    if m:
                        out[m.group(1)] = int(m.group(2))
        except OSError:
            pass
        return out

    def stop(self):
        self.env.stop(self.proc)
        for p in self.extra:
            self.env.stop(p)
        shutil.rmtree(os.path.join(self.env.rundir, "data"),
                      ignore_errors=True)


def run_once(env, system, n, size, count, timeout, rate=0, stall=0,
             idle_probe=False, sample_held=False):
    """One run: server, N subscribers, one producer. Returns a dict.
    sample_held: poll walrelay's /metrics while it runs and keep the peak of
    the frame buffers held outside the shared tail (in flight to the disk,
    or still referenced by a subscriber's queue after the tail let go)."""
    srv = Server(env, system)
    srv.start()
    ready = os.path.join(env.rundir, "ready")
    if os.path.exists(ready):
        os.unlink(ready)
    res = {"ok": False}
    sub = pub = None
    try:
        sub = env.spawn(srv.sub_argv(n, count, timeout, ready, stall),
                        "drivers.log", stdout=subprocess.PIPE)
        if not wait_file(ready, sub, 120 if n > 1000 else 30):
            raise RuntimeError(f"{system}: subscribers not ready")
        if system == "ncat":
            time.sleep(0.3)	# let the broker accept every connection
        if idle_probe:
            time.sleep(1.0)
            res["idle_rss"] = vm(srv.proc.pid, "VmRSS")
        held, stop_sampling, sampler = [], threading.Event(), None
        if sample_held and system.startswith("wr-"):
            def sample():
                while not stop_sampling.wait(0.05):
                    m = srv.metrics()
                    if "chunk_bytes_live" in m:
                        held.append(m["chunk_bytes_live"] -
                                    m.get("tail_buffer_bytes", 0))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        c0, t0 = cpu_secs(srv.proc.pid), time.time()
        pub = env.spawn(srv.pub_argv(count, SIZES[size], rate), "drivers.log",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = sub.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            env.stop(sub, signal.SIGKILL)
            raise RuntimeError(f"{system}: subscriber driver hung")
        c1, t1 = cpu_secs(srv.proc.pid), time.time()
        res["rss"] = vm(srv.proc.pid, "VmHWM")
        if sampler is not None:
            stop_sampling.set()
            sampler.join(10)
            res["held_peak"] = max(held, default=0)
        if system.startswith("wr-"):
            res.update(srv.metrics())
        try:
            pout, perr = pub.communicate(timeout=2 if sub.returncode else 60)
        except subprocess.TimeoutExpired:
            env.stop(pub, signal.SIGKILL)
            pout, perr = b"", b""
        m = re.search(rb"RESULT .*", out)
        if not m:
            raise RuntimeError(f"{system}: no result from the subscribers")
        r = parse_kv(m.group(0).decode())
        res.update(r)
        res["cpu"] = 100.0 * (c1 - c0) / max(t1 - t0, 1e-6)
        # every frame ingested, stored (durable unless fsync never) and at
        # every subscriber: from the producer's start to the last frame
        if r.get("complete", 0) >= r.get("n", 1) and not rate and not stall:
            res["e2e"] = count / max(t1 - t0, 1e-6)
        im = re.search(rb"INGEST .*", pout) or None
        if im:
            res["ingest"] = parse_kv(im.group(0).decode())["fps"]
        else:
            wm = re.search(rb"produce: (\d+) frames, \d+ bytes in ([\d.]+) s",
                           perr)
            if wm and float(wm.group(2)) > 0:
                res["ingest"] = int(wm.group(1)) / float(wm.group(2))
        res["ok"] = True
        res["timed_out"] = r.get("complete", 0) < r.get("n", 0)
    finally:
        for p in (pub, sub):
            if p is not None:
                env.stop(p, signal.SIGKILL, grace=2)
        srv.stop()
    return res


def budget_count(size, n, quick):
    ing, egr = (150e6, 1.5e9) if quick else (400e6, 4e9)
    return int(max(2000, min(ing / size, egr / (n * size))))


def measure(env, system, n, size, reps, quick, rate=0, stall=0,
            secs=None):
    """Runs a case `reps` times; the first run sizes the later ones."""
    target = secs or (1.0 if quick else 1.5)
    timeout = 5 if quick else 7
    if rate:
        count = max(500, int(rate * target))
        timeout = target * 3 + 5
    else:
        count = budget_count(size, n, quick)
    runs = []
    for i in range(reps):
        try:
            r = run_once(env, system, n, size, count, timeout, rate, stall)
        except RuntimeError as e:
            log(f"    {e}")
            env.stop_all()
            continue
        runs.append(r)
        log(f"    {system} N={n} {SIZE_NAME[size]}{' rate=%d' % rate if rate else ''}"
            f"{' stall=%d' % stall if stall else ''}: "
            f"{r.get('fps', 0):,.0f} frames/s, {r.get('bps', 0) / 1e6:,.1f} MB/s"
            f", ingest {r.get('ingest', 0):,.0f}/s, p99 {r.get('p99_us', 0):,.0f} us"
            f", cpu {r.get('cpu', 0):.0f}%, rss {r.get('rss', 0) / 2**20:.0f} MiB"
            f"{' (timed out: rate over the window)' if r.get('timed_out') else ''}")
        if not rate and i == 0 and r.get("fps", 0) > 0:
            per_sub = r["fps"] / n
            count = int(max(2000, min(count, per_sub * target)))
    return runs


def iperf(env, n, reps, quick):
    out = []
    for _ in range(reps):
        port = free_port()
        srv = env.spawn(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p",
                         str(port)], "iperf.log")
        try:
            time.sleep(0.3)
            cl = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port),
                                 "-P", str(min(n, 128)), "-t",
                                 "1" if quick else "2", "-J"],
                                capture_output=True, timeout=60)
            d = json.loads(cl.stdout)
            bps = d["end"]["sum_received"]["bytes"] / d["end"]["sum_received"]["seconds"]
            out.append({"ok": True, "bps": bps})
            log(f"    iperf3 -P {min(n, 128)}: {bps / 1e6:,.0f} MB/s")
        except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
            log(f"    iperf3 failed: {e}")
        finally:
            env.stop(srv, grace=3)
    return out


# ---- statistics and output --------------------------------------------------

def stat(runs, key):
    v = [r[key] for r in runs if r.get("ok") and r.get(key) is not None
         and r[key] >= 0]
    if not v:
        return None
    return (statistics.median(v), min(v), max(v))


def fmt(s, scale=1.0, digits=0, unit=""):
    if s is None:
        return "n/a"
    m, lo, hi = (x / scale for x in s)
    f = f"{{:,.{digits}f}}"
    if lo == hi:
        return f.format(m) + unit
    return f"{f.format(m)}{unit} ({f.format(lo)}–{f.format(hi)})"


def machine():
    info = {}
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info["cpu"] = cpu
    info["cores"] = os.cpu_count()
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    info["mem"] = f"{kb / 2**20:.1f} GiB"
    info["kernel"] = platform.release()
    try:
        src = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE",
                              "-T", HERE], capture_output=True,
                             text=True).stdout.split()
        dev = os.path.basename(src[0])
        rot = open(f"/sys/block/{dev}/queue/rotational").read().strip()
        size = int(open(f"/sys/block/{dev}/size").read()) * 512
        info["disk"] = (f"{dev} ({src[1]}, {size / 2**30:.0f} GiB, "
                        f"{'rotational' if rot == '1' else 'non-rotational'}"
                        f" as reported by the kernel)")
    except (OSError, IndexError, ValueError):
        info["disk"] = "unknown"
    info["fsync"] = fsync_probe()
    info["virt"] = "virtual machine" if "hypervisor" in open(
        "/proc/cpuinfo").read() else ""
    return info


def fsync_probe(n=200, d=None):
    """p50 and p99 ms of write(4 KiB) + fdatasync in directory d (default:
    the data disk of the benchmark, bench/build)."""
    path = os.path.join(d or os.path.join(HERE, "build"), "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lat = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return (lat[len(lat) // 2], lat[int(len(lat) * 0.99)])


def versions(env):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    try:
        rev = open(os.path.join(env.args.builddir, "REVISION")).read().strip()
    except OSError:
        rev = "unknown"
    return {
        "walrelay": out([env.walrelay, "--version"]) + f" (git {rev})",
        "nats-server": out(["nats-server", "--version"]),
        "redis-server": out(["redis-server", "--version"]).split(" sha")[0],
        "ncat": subprocess.run(["ncat", "--version"], capture_output=True,
                               text=True).stderr.split(" ( ")[0].strip(),
        "iperf3": out(["iperf3", "--version"]),
    }


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def verdict(value, goal, higher=True, unit="", scale=1.0, digits=1):
    if value is None:
        return "n/a"
    ok = value >= goal if higher else value <= goal
    if ok:
        return "met"
    if higher:
        return f"missed by {100 * (goal - value) / goal:.0f}% " \
               f"({(goal - value) / scale:,.{digits}f}{unit} short)"
    return f"missed by {(value - goal) / scale:,.{digits}f}{unit} " \
           f"({100 * (value - goal) / goal:.0f}% over)"


# ---- many streams in one relay (docs/streams.md) ---------------------------

def streams_conf(env, d, names, http):
    """A config with one [stream NAME] per name, each on its own ports."""
    text = (f"[walrelay]\ndata-dir = {d}\nhttp = 127.0.0.1:{http}\n"
            "fsync = always\nlog-level = warn\nmax-subscribers = 20000\n")
    ports, seen = {}, {http}

    def port():
        # free_port may hand out a port again while nothing listens on it
        while True:
            p = free_port()
            if p not in seen:
                seen.add(p)
                return p
    for n in names:
        ports[n] = (port(), port())
        text += (f"[stream {n}]\ningest = 127.0.0.1:{ports[n][0]}\n"
                 f"listen = 127.0.0.1:{ports[n][1]}\n")
    conf = os.path.join(d, "walrelay.conf")
    with open(conf, "w") as f:
        f.write(text)
    return conf, ports


def wait_ready(http, proc, timeout):
    """Wait for /readyz 200 (every stream ready); seconds, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz",
                                        timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.005)
    return None


def streams_start(env, nstreams):
    d = env.fresh("data")
    http = free_port()
    names = [f"s{i:03d}" for i in range(nstreams)]
    conf, ports = streams_conf(env, d, names, http)
    t0 = time.monotonic()
    proc = env.spawn([env.walrelay, "-c", conf], "walrelay.log")
    ready = wait_ready(http, proc, 60)
    if ready is None:
        env.stop(proc)
        raise RuntimeError(f"{nstreams} streams: the relay did not become "
                           f"ready (see {env.rundir}/walrelay.log)")
    return proc, ports, time.monotonic() - t0


def streams_run(env, nstreams, nsubs, count, timeout=120):
    """nstreams streams, nsubs subscribers each, one producer per stream
    sending count 1 KiB frames at once. Delivered frames/s = every frame
    delivered to every subscriber / (the producers' start to the last
    subscriber's end)."""
    proc, ports, _ = streams_start(env, nstreams)
    subs, pubs = [], []
    res = {"ok": False}
    try:
        for i, (ip, lp) in enumerate(ports.values()):
            ready = os.path.join(env.rundir, f"ready.{i}")
            if os.path.exists(ready):
                os.unlink(ready)
            subs.append((env.spawn(
                [os.path.join(env.bin, "wrsub"), "--addr",
                 f"127.0.0.1:{lp}", "-n", str(nsubs), "--count", str(count),
                 "--timeout", str(timeout), "--ready", ready],
                "drivers.log", stdout=subprocess.PIPE), ready))
        for p, ready in subs:
            if not wait_file(ready, p, 60):
                raise RuntimeError(f"{nstreams} streams: subscribers not "
                                   f"ready")
        c0, t0 = cpu_secs(proc.pid), time.monotonic()
        for ip, _ in ports.values():
            pubs.append(env.spawn(
                [env.walcat, "produce", "--count", str(count),
                 "--value-bytes", str(SIZES[1024]), "--stamp", "--quiet",
                 f"127.0.0.1:{ip}"], "drivers.log"))
        frames, complete, n = 0, 0, 0
        for p, _ in subs:
            out, _ = p.communicate(timeout=timeout + 30)
            m = re.search(rb"RESULT .*", out)
            if not m:
                raise RuntimeError(f"{nstreams} streams: no result from "
                                   f"the subscribers")
            r = parse_kv(m.group(0).decode())
            frames += r["frames"]
            complete += r["complete"]
            n += r["n"]
        t1, c1 = time.monotonic(), cpu_secs(proc.pid)
        res.update(fps=frames / max(t1 - t0, 1e-6), frames=frames,
                   complete=complete, n=n, rss=vm(proc.pid, "VmHWM"),
                   cpu=100.0 * (c1 - c0) / max(t1 - t0, 1e-6), ok=True,
                   timed_out=complete < n)
    finally:
        for p in pubs + [p for p, _ in subs]:
            env.stop(p, signal.SIGKILL, grace=2)
        env.stop(proc)
        shutil.rmtree(os.path.join(env.rundir, "data"), ignore_errors=True)
    return res


def streams_idle(env, nstreams):
    """Start a relay with nstreams idle streams: time to ready, and RSS
    once every stream is ready and the relay has settled."""
    proc, _, secs = streams_start(env, nstreams)
    try:
        time.sleep(1.0)
        rss = vm(proc.pid, "VmRSS")
    finally:
        env.stop(proc)
        shutil.rmtree(os.path.join(env.rundir, "data"), ignore_errors=True)
    return {"start": secs, "rss": rss, "ok": True}


def streams_bench(env, reps, quick):
    """16 x 4 against 1 x 64 in the same run (paired, alternating), and
    the cost of an idle stream."""
    count = 20000 if quick else 50000
    many, one, idle1, idle100 = [], [], [], []
    for _ in range(reps):
        for lst, ns, nsub in ((one, 1, 64), (many, 16, 4)):
            try:
                r = streams_run(env, ns, nsub, count)
            except RuntimeError as e:
                log(f"    {e}")
                env.stop_all()
                continue
            lst.append(r)
            log(f"    {ns} stream(s) x {nsub} subscribers: {r['fps']:,.0f} "
                f"frames/s delivered, complete {r['complete']:.0f}/"
                f"{r['n']:.0f}, CPU {r['cpu']:.0f}%, peak rss "
                f"{r['rss'] / 2**20:.1f} MiB")
        for lst, ns in ((idle1, 1), (idle100, 100)):
            try:
                r = streams_idle(env, ns)
            except RuntimeError as e:
                log(f"    {e}")
                env.stop_all()
                continue
            lst.append(r)
            log(f"    {ns} idle stream(s): ready in {r['start'] * 1000:.0f} "
                f"ms, rss {r['rss'] / 2**20:.1f} MiB")
    return {"many": many, "one": one, "idle1": idle1, "idle100": idle100,
            "count": count}


def streams_rows(S):
    """The Targets rows of the streams section."""
    o = []
    m, one = stat(S["many"], "fps"), stat(S["one"], "fps")
    if m and one:
        ratio = m[0] / one[0]
        o.append(f"| streams: delivered frames/s, 16 streams x 4 subscribers "
                 f"vs 1 stream x 64 (1 KiB, fsync always, {S['count']:,} "
                 f"frames per stream, same run) | {ratio:.2f}x "
                 f"({m[0]:,.0f} vs {one[0]:,.0f}) | ≥ 0.9x | "
                 f"{verdict(ratio, 0.9, unit='x', digits=2)} |")
    r1, r100 = stat(S["idle1"], "rss"), stat(S["idle100"], "rss")
    if r1 and r100:
        per = (r100[0] - r1[0]) / 99
        o.append(f"| streams: RSS of an idle stream ((100 idle streams - 1) "
                 f"/ 99; {r100[0] / 2**20:.1f} vs {r1[0] / 2**20:.1f} MiB) | "
                 f"{per / 2**20:.2f} MiB | ≤ 2 MiB | "
                 f"{verdict(per / 2**20, 2.0, higher=False, unit=' MiB', digits=2)} |")
    st = stat(S["idle100"], "start")
    if st:
        o.append(f"| streams: start of a relay with 100 idle streams, until "
                 f"/readyz answers 200 | {fmt(st, 0.001, 0, ' ms')} | "
                 f"< 1 s | "
                 f"{verdict(st[0] * 1000, 1000, higher=False, unit=' ms', digits=0)} |")
    return o


def write_streams_results(args, S, reps, load0, load1, elapsed):
    day = datetime.date.today().isoformat()
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, day + "-streams.md")
    mi = machine()
    o = [f"# walrelay: many streams in one relay, {day}\n",
         f"Produced by `bench/run --streams` in {elapsed / 60:.1f} minutes; "
         f"each figure is the median of {reps} run"
         f"{'s' if reps > 1 else ''}"
         + (", with min–max in parentheses" if reps > 1 else "") + ".\n",
         f"- CPU: {mi['cpu']}, {mi['cores']} cores; load average before / "
         f"after: {' '.join(load0)} / {' '.join(load1)}",
         f"- Disk: {mi['disk']}\n",
         "## Targets\n", "| target | measured | goal | result |",
         "|---|---|---|---|"] + streams_rows(S) + [""]
    o.append("| case | delivered frames/s | complete | CPU % | peak RSS MiB |")
    o.append("|---|---|---|---|---|")
    for name, key in (("1 stream x 64 subscribers", "one"),
                      ("16 streams x 4 subscribers", "many")):
        runs = S[key]
        if runs:
            o.append(f"| {name} | {fmt(stat(runs, 'fps'))} | "
                     f"{sum(r['complete'] for r in runs):.0f}/"
                     f"{sum(r['n'] for r in runs):.0f} | "
                     f"{fmt(stat(runs, 'cpu'))} | "
                     f"{fmt(stat(runs, 'rss'), 2**20, 1)} |")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")
    log(f"wrote {path}")
    print("\n".join(o))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--rundir", required=True)
    ap.add_argument("--builddir", required=True)
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--systems", help="comma-separated subset")
    ap.add_argument("--ns", help="subscriber counts, comma-separated")
    ap.add_argument("--sizes", help="frame sizes (100,1024,16384)")
    ap.add_argument("--streams", action="store_true",
                    help="only the many-streams section")
    args = ap.parse_args()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    env = Env(args)
    started = time.time()
    load0 = loadavg()
    if args.streams:
        try:
            log("== many streams: 16 x 4 vs 1 x 64 subscribers, idle "
                "streams")
            S = streams_bench(env, reps, quick)
        finally:
            env.stop_all()
        write_streams_results(args, S, reps, load0, loadavg(),
                              time.time() - started)
        return
    ps_busy = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"],
                             capture_output=True, text=True).stdout
    systems = list(SYSTEMS)
    if args.systems:
        systems = [s for s in args.systems.split(",") if s in SYSTEMS]
    ns = [16] if quick else [1, 16, 64, 256]
    sizes = [100, 1024] if quick else [100, 1024, 16384]
    if args.ns:
        ns = [int(x) for x in args.ns.split(",")]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",") if int(x) in SIZES]

    def handle(sig, frame):
        env.stop_all()
        sys.exit(1)
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

    R = {}	# (system, n, size) -> runs
    try:
        log(f"== iperf3 ceiling on loopback ({reps} runs each)")
        ceil = {n: iperf(env, n, reps, quick) for n in sorted(set(ns + [4]))}
        log("== maximum throughput: one producer as fast as it can, N "
            "subscribers")
        for size in sizes:
            for n in ns:
                for s in systems:
                    R[(s, n, size)] = measure(env, s, n, size, reps, quick)
        # the 100-byte target: 4 subscribers
        if "wr-always" in systems:
            R[("wr-always", 4, 100)] = measure(env, "wr-always", 4, 100, reps,
                                               quick)
        log("== latency at half the maximum rate (N=16, 1 KiB frames)")
        L = {}
        lat_systems, extra = list(systems), {}
        # fsync never's latency goal is relative to ncat's in the same run
        if ("wr-never" in systems and "ncat" not in systems
                and shutil.which("ncat")):
            lat_systems.append("ncat")
            extra["ncat"] = measure(env, "ncat", 16, 1024, reps, quick)
        for s in lat_systems:
            base = R.get((s, 16, 1024)) or extra.get(s)
            fps = stat(base or [], "fps")
            ing = stat(base or [], "ingest")
            if fps is None:
                continue
            per_sub = fps[0] / 16
            if ing:
                per_sub = min(per_sub, ing[0])
            rate = max(100, int(per_sub / 2))
            L[s] = (rate, measure(env, s, 16, 1024, reps, quick, rate=rate,
                                  secs=2.0 if quick else 3.0))
        stall = stall_base = many = None
        if "wr-always" in systems:
            log("== one stalled subscriber among 16 (1 KiB, fsync always)")
            # paired: the same count with 16 readers, then 15 + 1 stalled
            base = R.get(("wr-always", 16, 1024)) or []
            f = stat(base, "fps")
            cnt = int(max(20000, min(budget_count(1024, 16, quick),
                                     (f[0] / 16 if f else 1e5) * 2)))
            stall, stall_base = [], []
            # peak RSS is noisy on a shared machine: more pairs than reps
            for _ in range(reps if quick else max(reps, 5)):
                for lst, k in ((stall_base, 0), (stall, 1)):
                    try:
                        r = run_once(env, "wr-always", 16, 1024, cnt, 60,
                                     stall=k, sample_held=True)
                    except RuntimeError as e:
                        log(f"    {e}")
                        env.stop_all()
                        continue
                    lst.append(r)
                    log(f"    16 subscribers, {k} stalled: {r['fps']:,.0f} "
                        f"frames/s, peak rss {r['rss'] / 2**20:.1f} MiB, "
                        f"frame buffers {r.get('chunk_bytes_live', 0) / 2**20:.1f}"
                        f" MiB (tail {r.get('tail_bytes', 0) / 2**20:.1f} MiB)"
                        f", held outside the tail at peak "
                        f"{r.get('held_peak', 0) / 2**20:.1f} MiB")
            log("== 10,000 subscribers connected (1 KiB, fsync always)")
            many = []
            nmany = 10000
            for _ in range(reps):
                try:
                    many.append(run_once(env, "wr-always", nmany, 1024,
                                         200 if quick else 400, 60,
                                         idle_probe=True))
                    r = many[-1]
                    log(f"    10k: idle rss {r['idle_rss'] / 2**20:.0f} MiB, "
                        f"peak {r['rss'] / 2**20:.0f} MiB, "
                        f"{r['fps']:,.0f} frames/s, complete "
                        f"{r['complete']:.0f}/{r['n']:.0f}")
                except RuntimeError as e:
                    log(f"    {e}")
                    env.stop_all()
        S = None
        if "wr-always" in systems:
            log("== many streams: 16 x 4 vs 1 x 64 subscribers, idle "
                "streams")
            S = streams_bench(env, reps, quick)
    finally:
        env.stop_all()
    load1 = loadavg()
    elapsed = time.time() - started
    write_results(args, env, R, L, ceil, stall, stall_base, many, ns, sizes,
                  systems, reps, quick, load0, load1, elapsed, ps_busy, S)


def write_results(args, env, R, L, ceil, stall, stall_base, many, ns, sizes,
                  systems, reps, quick, load0, load1, elapsed, ps_busy,
                  S=None):
    day = datetime.date.today().isoformat()
    os.makedirs(args.results, exist_ok=True)
    stem = os.path.join(args.results, day + ("-quick" if quick else ""))
    mi, ver = machine(), versions(env)
    o = []
    o.append(f"# walrelay benchmarks, {day}{' (quick run)' if quick else ''}\n")
    o.append(f"Produced by `bench/run{' --quick' if quick else ''}` in "
             f"{elapsed / 60:.1f} minutes. Each figure is the median of "
             f"{reps} run{'s' if reps > 1 else ''}"
             + (", with min–max in parentheses" if reps > 1 else "") + ".\n")
    o.append("## Machine\n")
    o.append(f"- CPU: {mi['cpu']}, {mi['cores']} cores"
             f"{' (' + mi['virt'] + ' guest)' if mi['virt'] else ''}")
    o.append(f"- Memory: {mi['mem']}")
    o.append(f"- Kernel: Linux {mi['kernel']}")
    o.append(f"- Disk: {mi['disk']}; append 4 KiB + fdatasync: "
             f"p50 {mi['fsync'][0]:.2f} ms, p99 {mi['fsync'][1]:.2f} ms")
    o.append(f"- Load average before / after the run: {' '.join(load0)} / "
             f"{' '.join(load1)}")
    o.append("- Versions: " + "; ".join(f"{k} {v}" if k not in v else v
                                        for k, v in ver.items()))
    o.append("- Everything (servers, the producer and the subscriber "
             "drivers) shares the same cores over loopback; the frame size "
             "is that of the SET frames, 20% of the frames are 58-byte DEL "
             "and EXPIRE records (walcat produce's mix), and bytes/s count "
             "the actual frame bytes.\n")

    def g(key, s, n, size):
        return stat(R.get((s, n, size), []), key)

    # ---- targets
    o.append("## Targets\n")
    o.append("| target | measured | goal | result |")
    o.append("|---|---|---|---|")
    c16 = stat(ceil.get(16, []), "bps")
    e16 = g("bps", "wr-always", 16, 1024)
    if c16 and e16:
        frac = (e16[0] / c16[0], e16[1] / c16[0], e16[2] / c16[0])
        o.append(f"| egress, 16 subscribers x 1 KiB, fsync always, as a "
                 f"fraction of iperf3 -P 16 ({c16[0] / 1e6:,.0f} MB/s) | "
                 f"{fmt(frac, 0.01, 0, '%')} | ≥ 80% | "
                 f"{verdict(frac[0] * 100, 80, unit=' points', digits=0)} |")
    # the one-replica path
    w1, n1 = g("fps", "wr-always", 1, 1024), g("fps", "ncat", 1, 1024)
    if w1 and n1:
        ratio = w1[0] / n1[0]
        o.append(f"| 1 subscriber x 1 KiB, fsync always, delivered frames/s "
                 f"vs ncat --broker (stores and checks nothing) | "
                 f"{ratio:.2f}x ({w1[0]:,.0f} vs {n1[0]:,.0f}) | ≥ 1.0x | "
                 f"{verdict(ratio, 1.0, unit='x', digits=2)} |")
    worst = None
    for (sy, n, size) in R:
        if sy != "wr-never":
            continue
        nv, al = g("fps", "wr-never", n, size), g("fps", "wr-always", n, size)
        if nv and al:
            ratio = nv[0] / al[0]
            if worst is None or ratio < worst[0]:
                worst = (ratio, n, size, nv[0], al[0])
    if worst:
        o.append(f"| fsync never delivers at least as many frames/s as fsync "
                 f"always, in every row (the lowest ratio) | {worst[0]:.2f}x "
                 f"at {worst[1]} x {SIZE_NAME[worst[2]]} ({worst[3]:,.0f} vs "
                 f"{worst[4]:,.0f}) | ≥ 1.0x | "
                 f"{verdict(worst[0], 1.0, unit='x', digits=2)} |")
    f16 = g("fps", "wr-always", 16, 1024)
    for peer, mult in (("nats", 3), ("redis-always", 5)):
        p = g("fps", peer, 16, 1024)
        if f16 and p:
            ratio = f16[0] / p[0]
            o.append(f"| delivered frames/s vs {SYSTEMS[peer][0]} "
                     f"({SYSTEMS[peer][1]}), 16 x 1 KiB | {ratio:.1f}x "
                     f"({f16[0]:,.0f} vs {p[0]:,.0f}) | ≥ {mult}x | "
                     f"{verdict(ratio, mult, unit='x')} |")
    t16 = g("fps", "wr-tls", 16, 1024)
    if f16 and t16:
        ratio = t16[0] / f16[0]
        o.append(f"| delivered frames/s, 16 TLS subscribers vs 16 plain "
                 f"(both fsync always), 1 KiB | {ratio:.2f}x "
                 f"({t16[0]:,.0f} vs {f16[0]:,.0f}) | ≥ 0.8x | "
                 f"{verdict(ratio, 0.8, unit='x', digits=2)} |")
    e4 = g("e2e", "wr-always", 4, 100)
    if e4:
        o.append(f"| 100 B frames, fsync always: ingested, made durable and "
                 f"delivered to all 4 subscribers (producer start to last "
                 f"frame at the last subscriber) | {fmt(e4)} frames/s | "
                 f"≥ 2,500,000 | "
                 f"{verdict(e4[0], 2.5e6, unit=' frames/s', digits=0)} |")
    if "wr-interval" in L:
        p99 = stat(L["wr-interval"][1], "p99_us")
        if p99:
            o.append(f"| p99 latency at half load, fsync interval:100, 16 x "
                     f"1 KiB ({L['wr-interval'][0]:,} frames/s offered) | "
                     f"{fmt(p99, 1000, 2, ' ms')} | ≤ 1 ms | "
                     f"{verdict(p99[0] / 1000, 1.0, higher=False, unit=' ms', digits=2)} |")
    def p99(sy):
        return stat(L[sy][1], "p99_us") if sy in L else None
    pa, pr = p99("wr-always"), p99("redis-always")
    if pa and pr:
        o.append(f"| p99 latency at half load, 16 x 1 KiB, fsync always, vs "
                 f"Redis Streams appendfsync always | {pa[0] / 1000:.2f} vs "
                 f"{pr[0] / 1000:.2f} ms ({pa[0] / pr[0]:.2f}x) | ≤ 0.5x | "
                 f"{verdict(pa[0] / pr[0], 0.5, higher=False, unit='x', digits=2)} |")
    if pa and mi.get("fsync"):
        lim = mi["fsync"][1] + 0.5
        o.append(f"| p99 latency at half load, 16 x 1 KiB, fsync always, vs "
                 f"the disk's fdatasync p99 ({mi['fsync'][1]:.2f} ms) + 0.5 ms "
                 f"| {fmt(pa, 1000, 2, ' ms')} | ≤ {lim:.2f} ms | "
                 f"{verdict(pa[0] / 1000, lim, higher=False, unit=' ms', digits=2)} |")
    pn, pc = p99("wr-never"), p99("ncat")
    if pn and pc:
        o.append(f"| p99 latency at half load, 16 x 1 KiB, fsync never, vs "
                 f"ncat --broker | {pn[0] / 1000:.2f} vs {pc[0] / 1000:.2f} ms "
                 f"({pn[0] / pc[0]:.2f}x) | ≤ 1.2x | "
                 f"{verdict(pn[0] / pc[0], 1.2, higher=False, unit='x', digits=2)} |")
    if stall and stall_base:
        diffs = [a["rss"] - b["rss"] for a, b in zip(stall, stall_base)]
        grow = statistics.median(diffs)
        o.append(f"| peak RSS added by one stalled subscriber among 16 "
                 f"(send cap: subscriber-buffer = 1 MiB), paired runs | "
                 f"{grow / 2**20:+.1f} MiB "
                 f"({'; '.join(f'{d / 2**20:+.1f}' for d in diffs)}) "
                 f"| ≤ 1 MiB | "
                 f"{verdict(grow / 2**20, 1.0, higher=False, unit=' MiB')} |")
        hs = [a.get("held_peak", 0) for a in stall]
        hb = [b.get("held_peak", 0) for b in stall_base]
        if any(hs):
            o.append(f"| frame buffers held outside the shared tail at peak "
                     f"(relay's /metrics, exact): stalled vs baseline runs | "
                     f"{statistics.median(hs) / 2**20:.1f} vs "
                     f"{statistics.median(hb) / 2**20:.1f} MiB "
                     f"({(statistics.median(hs) - statistics.median(hb)) / 2**20:+.1f}) "
                     f"| ≤ 1 MiB more | "
                     f"{verdict((statistics.median(hs) - statistics.median(hb)) / 2**20, 1.0, higher=False, unit=' MiB')} |")
    mr = stat(many or [], "rss")
    if mr:
        o.append(f"| peak RSS with 10,000 subscribers | "
                 f"{fmt(mr, 2**20, 0, ' MiB')} | ≤ 1024 MiB | "
                 f"{verdict(mr[0] / 2**20, 1024, higher=False, unit=' MiB', digits=0)} |")
    if S:
        o += streams_rows(S)
    o.append("")

    # ---- throughput
    o.append("## Maximum throughput\n")
    o.append("One producer as fast as it goes; N subscribers that each "
             "receive every frame. Delivered = summed over the subscribers, "
             "from the first byte to the last frame. Ingest = the producer's "
             "own rate (it includes what the server buffers). Stored and "
             "delivered to all = frames / time from the producer's start "
             "until the last frame reached the last subscriber (every frame "
             "stored, durable unless fsync never, and delivered; only runs "
             "that completed). CPU = the server "
             "process (all threads), % of one core over the run. RSS = the "
             "server's peak (VmHWM). iperf3 = the relay's delivered bytes/s "
             "as a fraction of iperf3 on loopback with N streams (at most "
             "128).\n")
    o.append("| system | durability | frame | N | delivered frames/s | "
             "delivered MB/s | ingest frames/s | stored and delivered to "
             "all, frames/s | CPU % | peak RSS MiB | of iperf3 |")
    o.append("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted(R, key=lambda k: (k[2], k[1], systems.index(k[0])))
    for (s, n, size) in keys:
        runs = R[(s, n, size)]
        if not runs:
            o.append(f"| {SYSTEMS[s][0]} | {SYSTEMS[s][1]} | "
                     f"{SIZE_NAME[size]} | {n} | failed | | | | | | |")
            continue
        fps, bps = stat(runs, "fps"), stat(runs, "bps")
        c = stat(ceil.get(n if n in ceil else 16, []), "bps")
        frac = f"{100 * bps[0] / c[0]:.0f}%" if c and bps else ""
        to = " (t)" if any(r.get("timed_out") for r in runs) else ""
        o.append(f"| {SYSTEMS[s][0]} | {SYSTEMS[s][1]} | {SIZE_NAME[size]} | "
                 f"{n} | {fmt(fps)}{to} | {fmt(bps, 1e6, 1)} | "
                 f"{fmt(stat(runs, 'ingest'))} | {fmt(stat(runs, 'e2e'))} | "
                 f"{fmt(stat(runs, 'cpu'))} | "
                 f"{fmt(stat(runs, 'rss'), 2**20)} | {frac} |")
    o.append("\n(t): a run hit its time limit; the rate is over the frames "
             "that arrived within it.\n")
    o.append("iperf3 ceiling (loopback, `iperf3 -P N`, default 128 KiB "
             "writes):\n")
    o.append("| streams | MB/s |")
    o.append("|---|---|")
    for n in sorted(ceil):
        o.append(f"| {min(n, 128)} | {fmt(stat(ceil[n], 'bps'), 1e6)} |")
    o.append("")

    # ---- latency
    o.append("## End-to-end latency at half load\n")
    o.append("16 subscribers, 1 KiB frames, the producer paced at half the "
             "per-subscriber rate measured above; latency = receive time "
             "minus the send stamp in the frame (CLOCK_REALTIME, same "
             "machine), over every stamped frame at every subscriber.\n")
    o.append("| system | durability | offered frames/s | p50 ms | p99 ms | "
             "p99.9 ms | CPU % |")
    o.append("|---|---|---|---|---|---|---|")
    for s in list(systems) + [x for x in L if x not in systems]:
        if s not in L:
            continue
        rate, runs = L[s]
        o.append(f"| {SYSTEMS[s][0]} | {SYSTEMS[s][1]} | {rate:,} | "
                 f"{fmt(stat(runs, 'p50_us'), 1000, 3)} | "
                 f"{fmt(stat(runs, 'p99_us'), 1000, 3)} | "
                 f"{fmt(stat(runs, 'p999_us'), 1000, 3)} | "
                 f"{fmt(stat(runs, 'cpu'))} |")
    o.append("")

    # ---- stalls and many subscribers
    o.append("## A stalled subscriber; 10,000 subscribers\n")
    o.append("| case | delivered frames/s | per reading subscriber | peak RSS MiB | notes |")
    o.append("|---|---|---|---|---|")
    if stall_base:
        f = stat(stall_base, "fps")
        o.append(f"| 16 subscribers, 1 KiB, fsync always (baseline) | "
                 f"{fmt(f)} | {fmt(f, 16)} | "
                 f"{fmt(stat(stall_base, 'rss'), 2**20)} | |")
    if stall:
        f = stat(stall, "fps")
        o.append(f"| same, one of the 16 never reads | {fmt(f)} | "
                 f"{fmt(f, 15)} | {fmt(stat(stall, 'rss'), 2**20)} | "
                 f"the stalled one is held at its send cap |")
    if many:
        f = stat(many, "fps")
        o.append(f"| 10,000 subscribers, 1 KiB, fsync always "
                 f"({'200' if quick else '400'} frames at full speed after "
                 f"1 s idle) | {fmt(f)} | {fmt(f, 10000)} | "
                 f"{fmt(stat(many, 'rss'), 2**20)} | idle with 10,000 "
                 f"connected: {fmt(stat(many, 'idle_rss'), 2**20, 0, ' MiB')}"
                 f" RSS; complete {min(int(r.get('complete', 0)) for r in many)}"
                 f"/10000 |")
    o.append("")
    o.append("## How to reproduce\n")
    o.append("    bench/install-deps    # Debian packages (root)")
    o.append("    bench/run             # or: make bench; --quick for a "
             "2-3 minute run\n")
    o.append("Busiest processes when the run started (other work on the "
             "machine shares its 2 cores):\n")
    o.append("    " + "\n    ".join(ps_busy.splitlines()[:6]))
    o.append("")
    md = "\n".join(o)
    with open(stem + ".md", "w") as f:
        f.write(md)
    plot(args, stem, R, systems, ns, sizes)
    print(md)
    log(f"wrote {stem}.md and {stem}.png")


def plot(args, stem, R, systems, ns, sizes):
    dat = stem + ".dat"
    with open(dat, "w") as f:
        for size in sizes:
            for s in systems:
                f.write(f"# {s} {size}\n")
                for n in ns:
                    st = stat(R.get((s, n, size), []), "fps")
                    if st:
                        f.write(f"{n} {st[0]:.0f} {st[1]:.0f} {st[2]:.0f}\n")
                f.write("\n\n")
    idx = 0
    panels = []
    for size in sizes:
        lines = []
        for s in systems:
            lab = SYSTEMS[s][0] + " " + (WR_FSYNC.get(s, "") if s != "wr-tls"
                                         else "fsync always")
            if s.startswith("redis"):
                lab = "Redis " + s.split("-")[1]
            if any(stat(R.get((s, n, size), []), "fps") for n in ns):
                lines.append(f"'{dat}' index {idx} using 1:2:3:4 with "
                             f"yerrorlines title '{lab.strip()}'")
            idx += 1
        if lines:
            panels.append((size, lines))
    if not panels:
        return
    gp = [f"set terminal pngcairo size {560 * len(panels)},500 font ',9'",
          f"set output '{stem}.png'",
          f"set multiplot layout 1,{len(panels)} title "
          f"'Delivered frames/s summed over N subscribers (median, min-max)'",
          "set logscale xy", "set xlabel 'subscribers (N)'",
          "set ylabel 'frames/s'", "set grid", "set format y '%.0s%c'",
          "set key bottom right font ',8'",
          f"set xtics ({', '.join(str(n) for n in ns)})",
          "set xrange [0.8:320]" if len(ns) > 1 else "set xrange [8:32]"]
    for size, lines in panels:
        gp.append(f"set title '{SIZE_NAME[size]} frames'")
        gp.append("plot " + ", ".join(lines))
    gp.append("unset multiplot")
    try:
        subprocess.run(["gnuplot"], input="\n".join(gp), text=True,
                       check=True, timeout=60, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log(f"gnuplot failed: {getattr(e, 'stderr', e)}")
    os.unlink(dat)


if __name__ == "__main__":
    main()
