"""Start and drive a real walrelay on loopback for the integration tests.

Every wait here waits for a condition (a port answering, a counter
reaching a value, a process exiting) with a deadline; none is a sleep
standing in for synchronisation.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

from fcw2util import OP_SET, frame


# What sanitizer builds (configure --enable-asan) write to the daemon's log.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:")


# WALRELAY_VALGRIND=1 (make check-valgrind) runs every relay these tests
# start under valgrind memcheck; its report goes to the relay's log + ".vg"
# + ".PID" (one file per start) and any error or definite leak fails the
# test. valgrind runs the daemon tens of times slower: every deadline here
# is multiplied by SLOW.
VALGRIND = os.environ.get("WALRELAY_VALGRIND", "") not in ("", "0")
VALGRIND_EXIT = 97
SLOW = float(os.environ.get("WALRELAY_TIMEOUT_SCALE", "10" if VALGRIND else "1"))


def valgrind_path():
    """The valgrind command, or None when it is not installed."""
    return shutil.which("valgrind")


def valgrind_argv(vglog):
    return [valgrind_path() or "valgrind", "--tool=memcheck",
            f"--error-exitcode={VALGRIND_EXIT}", "--leak-check=full",
            "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
            f"--log-file={vglog}.%p"]


# What memcheck reports, for a log without a summary (a killed process).
VALGRIND_MARKERS = ("Invalid read", "Invalid write", "Invalid free",
                    "Mismatched free", "Conditional jump", "uninitialised",
                    "Syscall param", "overlap", "definitely lost in",
                    "Process terminating with default action")


def valgrind_report(text):
    """The errors in a memcheck log, or None when it has none."""
    m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    if m is not None:
        return text[-8000:] if int(m.group(1)) > 0 else None
    for marker in VALGRIND_MARKERS:
        i = text.find(marker)
        if i != -1:
            return text[max(0, i - 200):i + 6000]
    return None


def without_leaks(text):
    """A memcheck log without its leak records and summary: the errors
    count only those before the HEAP SUMMARY."""
    i = text.find("HEAP SUMMARY:")
    if i == -1:
        return text
    head = text[:i]
    m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    leaks = len(re.findall(r"are definitely lost in loss record", text))
    n = int(m.group(1)) - leaks if m else 0
    return head + f"ERROR SUMMARY: {max(n, 0)} errors (leaks of a killed run left out)\n"


def sanitizer_report(text):
    """The first sanitizer report in text (with some context), or None."""
    for marker in SANITIZER_MARKERS:
        i = text.find(marker)
        if i != -1:
            return text[max(0, i - 200):i + 3000]
    return None


def is_asan_build(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def relay_factory(walrelay, workdir, default_name="r", start=True):
    """Body of a pytest fixture (use with yield from): yields
    make(name, args=(), start=..., **Relay kwargs) -> Relay, its data in
    workdir/name and its log in workdir/name.log. At the end every relay
    still running is stopped (SIGTERM, SIGKILL after 20 s), and a sanitizer
    report in any relay's log fails the test."""
    made = []

    def make(name=default_name, args=(), start=start, **kw):
        r = Relay(walrelay, workdir / name, workdir / f"{name}.log",
                  args=[str(a) for a in args], **kw)
        made.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in made:
        try:
            r.stop(timeout=20)
        except subprocess.TimeoutExpired:
            r.kill9()


def free_port():
    """A port the kernel considers free right now (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout=10.0, what="condition", interval=0.01):
    """Poll cond() until it returns a true value; fail after timeout (times
    SLOW)."""
    timeout *= SLOW
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Relay:
    """One walrelay process with its own ports and data directory."""

    def __init__(self, binary, datadir, logpath, args=(), env=None,
                 ingest=True, listen=True, http=True, preexec_fn=None,
                 valgrind=None):
        """valgrind: run under memcheck (default: WALRELAY_VALGRIND)."""
        self.valgrind = VALGRIND if valgrind is None else valgrind
        self.vglog = str(logpath) + ".vg"     # .PID: one per start
        self.binary = str(binary)
        self.datadir = str(datadir)
        self.logpath = str(logpath)
        self.extra = list(args)
        self.env = env
        self.preexec_fn = preexec_fn
        self.ingest_port = free_port() if ingest else None
        self.listen_port = free_port() if listen else None
        self.http_port = free_port() if http else None
        self.proc = None
        self.procs = []         # every process started, for valgrind_errors
        self.starts = 0

    @property
    def ingest_addr(self):
        return f"127.0.0.1:{self.ingest_port}"

    @property
    def listen_addr(self):
        return f"127.0.0.1:{self.listen_port}"

    def argv(self):
        a = valgrind_argv(self.vglog) if self.valgrind else []
        a += [self.binary, "--data-dir", self.datadir]
        a += ["--ingest", self.ingest_addr if self.ingest_port else "none"]
        if self.listen_port:
            a += ["--listen", self.listen_addr]
        a += ["--http", f"127.0.0.1:{self.http_port}" if self.http_port else "none"]
        if self.valgrind and "--auth-timeout" not in self.extra and \
                "-c" not in self.extra:
            # a TLS handshake under memcheck takes seconds: the default
            # auth-timeout (5 s) scales as the tests' own deadlines do
            a += ["--auth-timeout", "%ds" % int(5 * SLOW)]
        return a + self.extra

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=self.preexec_fn)
        self.procs.append(self.proc)
        self.starts += 1
        if wait:
            try:
                self.wait_ready()
            except AssertionError:
                if not self._lost_port_race():
                    raise
                # another process took a port between free_port() and the
                # daemon's bind: take new ones and start again
                self.log.close()
                for attr in ("ingest_port", "listen_port", "http_port"):
                    if getattr(self, attr):
                        setattr(self, attr, free_port())
                return self.start(wait)
        return self

    def _lost_port_race(self):
        """The daemon exited at start because a port was taken."""
        if self.proc.poll() is None or self.starts > 5:
            return False
        tail = self.read_log()[-2000:]
        return "Address already in use" in tail and "started (pid" not in \
            tail.rsplit("Address already in use", 1)[1]

    def wait_ready(self, timeout=15.0):
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"walrelay exited with {self.proc.returncode}:\n"
                                     + self.read_log()[-3000:])
            try:
                return self.http("/healthz")[0] == 200
            except OSError:
                return False
        wait_until(up, timeout, "walrelay to answer /healthz")

    def http(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=5 * SLOW) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def status(self):
        code, body = self.http("/v1/status")
        assert code == 200, body
        return json.loads(body)

    def metrics(self, stream="default"):
        """The series of the process and of one stream, that stream's
        without their stream="NAME" label (stream=None: every series as
        it is written)."""
        code, body = self.http("/metrics")
        assert code == 200, body
        out = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            name, value = line.rsplit(" ", 1)
            if stream is not None and "{" in name:
                base, labels = name[:-1].split("{", 1)
                parts = [p for p in labels.split(",") if p]
                mine = 'stream="%s"' % stream
                if any(p.startswith("stream=") for p in parts):
                    if mine not in parts:
                        continue
                    parts.remove(mine)
                name = base + ("{%s}" % ",".join(parts) if parts else "")
            out[name] = float(value)
        return out

    def metric(self, name, stream="default"):
        return self.metrics(stream).get(name, 0.0)

    def wait_metric(self, name, cond, timeout=15.0):
        seen = []

        def check():
            seen[:] = [self.metric(name)]
            return cond(seen[0])
        try:
            return wait_until(check, timeout, f"metric {name}")
        except AssertionError as e:
            raise AssertionError(f"{e} (last value {seen[0] if seen else None}; "
                                 f"relay log tail: {self.read_log()[-2000:]!r})") from None

    def wait_durable(self, n, timeout=30.0):
        """Wait until at least n frames are stored and durable."""
        wait_until(lambda: self.status()["durable"] >= n, timeout,
                   f"{n} durable frames")

    def read_log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit status. Fails when the log
        holds a sanitizer report."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.log.close()
            self.check_sanitizers()
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout * SLOW)
        finally:
            self.log.close()
        self.check_sanitizers()
        return rc

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.log.close()
        self.check_sanitizers()

    def check_sanitizers(self):
        """Fail when an ASan/UBSan/LSan build reported an error in the log,
        or valgrind one in its own."""
        if os.path.exists(self.logpath):
            rep = sanitizer_report(self.read_log())
            if rep is not None:
                raise AssertionError(f"{self.logpath}: sanitizer report:\n{rep}")
        rep = self.valgrind_errors()
        if rep is not None:
            raise AssertionError(f"valgrind report: {rep}")

    def valgrind_errors(self):
        """What valgrind reported (None: nothing, or not under valgrind).
        A run that ended by SIGKILL (kill -9, or a test's kill point) is a
        crash: valgrind still writes a leak summary for a process that
        sends itself SIGKILL, but what a crash leaves allocated is not a
        leak, so only its memory errors count."""
        if not self.valgrind:
            return None
        killed = {p.pid for p in self.procs
                  if p.poll() == -signal.SIGKILL}
        for path in sorted(glob.glob(glob.escape(self.vglog) + ".*")):
            with open(path, "rb") as f:
                text = f.read().decode(errors="replace")
            pid = path.rsplit(".", 1)[-1]
            if pid.isdigit() and int(pid) in killed:
                text = without_leaks(text)
            rep = valgrind_report(text)
            if rep is not None:
                return f"{path}:\n{rep}"
        return None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def connect(addr, timeout=10.0, rcvbuf=None):
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout * SLOW)
    s.connect((host, int(port)))
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_line(s, limit=2048):
    buf = bytearray()
    while not buf.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise EOFError(f"connection closed in a line: {bytes(buf)!r}")
        buf += c
        assert len(buf) <= limit
    return bytes(buf[:-1]).decode()


def recv_frames(s, count):
    """Read exactly count whole FCW2 frames; returns their bytes."""
    out = []
    for _ in range(count):
        hdr = recv_exact(s, 9)
        assert hdr[:4] == b"FCW2", hdr
        plen = int.from_bytes(hdr[5:9], "little")
        out.append(hdr + recv_exact(s, plen + 4))
    return out


def split_frames(data):
    """Split a byte string of whole frames into a list of frames."""
    out, off = [], 0
    while off < len(data):
        plen = int.from_bytes(data[off + 5:off + 9], "little")
        end = off + 13 + plen
        assert end <= len(data), "partial frame"
        out.append(data[off:end])
        off = end
    return out


def store_frames(datadir):
    """Every frame of the store's segment files, in order."""
    names = sorted(n for n in os.listdir(datadir)
                   if n.endswith(".wal") or n.endswith(".wal.lz4"))
    data = b""
    for n in names:
        with open(os.path.join(datadir, n), "rb") as f:
            data += f.read()
    return split_frames(data)


def segment_names(datadir):
    return sorted(n for n in os.listdir(datadir) if n.endswith(".wal"))


# ---- fault injection (tests/fault/README.md) --------------------------

class FaultControl:
    """Faults injected into a daemon that preloads tests/fault/wrfault.so:
    set(spec) replaces the rules (the daemon reads the control file again
    on its next file system call), clear() removes them, hits() counts the
    faults injected so far."""

    def __init__(self, builddir, workdir, name="faults"):
        self.lib = os.path.join(str(builddir), "tests", "fault", "wrfault.so")
        if not os.path.exists(self.lib):
            raise AssertionError(f"{self.lib} is not built: run make check "
                                 f"(or make tests/fault/wrfault.so)")
        self.path = os.path.join(str(workdir), name)
        self.logpath = self.path + ".log"
        self.set("")

    def env(self):
        """Environment for Relay(env=...)."""
        asan = os.environ.get("ASAN_OPTIONS", "")
        asan = (asan + ":" if asan else "") + "verify_asan_link_order=0"
        return {"LD_PRELOAD": self.lib, "WRFAULT_FILE": self.path,
                "WRFAULT_LOG": self.logpath, "ASAN_OPTIONS": asan}

    def set(self, spec):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(spec + "\n")
        os.rename(tmp, self.path)

    def clear(self):
        self.set("")

    def hits(self):
        try:
            with open(self.logpath) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


# ---- shared by the test modules ------------------------------------------

# The reply a relay accepts a subscriber with.
OK_RE = re.compile(r"^FCWAL-OK/1 start=(\d+) earliest=(\d+) next=(\d+) "
                   r"epoch=([0-9a-f]{16})$")


def hard_timeout_fixture(seconds):
    """An autouse fixture (assign it to a name in a test module) failing a
    test that runs longer than seconds, whatever it waits on."""
    import pytest

    @pytest.fixture(autouse=True, name="hard_timeout")
    def hard_timeout():
        def expired(signum, frm):
            raise TimeoutError(f"test ran longer than {seconds} s")
        old = signal.signal(signal.SIGALRM, expired)
        signal.alarm(seconds)
        yield
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return hard_timeout


def tokfile_fixture(token):
    """A fixture: the path of workdir/sub.tok holding token."""
    import pytest

    @pytest.fixture(name="tokfile")
    def tokfile(workdir):
        p = workdir / "sub.tok"
        p.write_text(token + "\n")
        return p
    return tokfile


def relays_fixture(default_name="r", start=True):
    """A fixture: relay_factory's make(name, args, ...) -> a Relay."""
    import pytest

    @pytest.fixture(name="relays")
    def relays(walrelay, workdir):
        yield from relay_factory(walrelay, workdir, default_name, start)
    return relays


def gen_frame(i, vbytes=1000, tag=b"v"):
    """Frame i of a deterministic test stream (frame i gets sequence i)."""
    unit = b"%s%09d" % (tag, i)
    value = (unit * (vbytes // len(unit) + 1))[:vbytes]
    return frame(OP_SET, b"key-%010d" % i, value, ts=1700000000000 + i)


def subscribe(addr, line, rcvbuf=None, timeout=20.0):
    """Connect, send a handshake line; returns the socket."""
    s = connect(addr, timeout=timeout, rcvbuf=rcvbuf)
    s.sendall(line.encode() + b"\n")
    return s


def read_to_eof(s, limit=1 << 30):
    """What s receives until the peer closes or resets it (up to limit)."""
    out = bytearray()
    while len(out) < limit:
        try:
            b = s.recv(1 << 16)
        except ConnectionResetError:
            break
        if not b:
            break
        out += b
    return bytes(out)


def refused(addr, line):
    """Send a handshake; return the one reply line, asserting that the
    relay then closes the connection without another byte."""
    s = subscribe(addr, line)
    try:
        reply = recv_line(s)
        rest = read_to_eof(s)
        assert rest == b"", rest
    finally:
        s.close()
    return reply


# The start of an accepted subscriber's reply (options may add fields).
OK_PREFIX_RE = re.compile(r"^FCWAL-OK/1 start=(\d+) earliest=(\d+) "
                          r"next=(\d+) epoch=([0-9a-f]{16})")


class SubReader(threading.Thread):
    """A resuming subscriber (FCWAL-SUB/1 token frm opts) that keeps every
    byte it gets on a thread of its own; epoch is the one of the reply,
    eof turns true when the relay closes."""

    def __init__(self, addr, token, frm=0, opts=""):
        super().__init__(daemon=True)
        self.s = connect(addr, timeout=60)
        self.s.sendall(f"FCWAL-SUB/1 {token} {frm}{opts}\n".encode())
        line = recv_line(self.s)
        m = OK_PREFIX_RE.match(line)
        assert m, f"subscription refused: {line}"
        self.epoch = m.group(4)
        self.lock = threading.Lock()
        self.data = bytearray()
        self.eof = False
        self.start()

    def run(self):
        try:
            while True:
                b = self.s.recv(1 << 16)
                if not b:
                    break
                with self.lock:
                    self.data += b
        except OSError:
            pass
        self.eof = True

    def size(self):
        with self.lock:
            return len(self.data)

    def snapshot(self):
        with self.lock:
            return bytes(self.data)

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()
        self.join(10)
