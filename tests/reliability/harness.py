"""The moving parts of the reliability scenarios: a producer, resuming and
stock subscribers and a status poller, each a thread that records what it
did into an Oracle (oracle.py); a TCP proxy that cuts connections; network
namespaces.

Waits wait for conditions with deadlines. The only sleeps are pacing (the
producer's rate, a retry after a refused connection) and the fault
schedule itself (how long a peer stays stopped or unreachable).
"""

import bisect
import ctypes
import http.client
import os
import random
import re
import select
import socket
import subprocess
import threading
import time

from fcw2util import OP_SET, frame
from oracle import FrameSplitter, ident
from relayutil import connect, recv_line, wait_until

OK_RE = re.compile(r"^FCWAL-OK/1 start=(\d+) earliest=(\d+) next=(\d+) "
                   r"epoch=([0-9a-f]{16})$")
ERR_RE = re.compile(r"^FCWAL-ERR/1 (\S+)")


def producer_key(pid, keys=None):
    """The key of frame pid: unique, or one of keys keys (a snapshot then
    holds a bounded state, and keys are rewritten)."""
    return b"p%012d" % (pid if keys is None else pid % keys)


def producer_value(pid):
    vlen = 40 + (pid * 7919) % 360
    unit = b"%012d:" % pid
    return (unit * (vlen // len(unit) + 1))[:vlen]


def producer_frame(pid, keys=None):
    """Frame number pid of the producer's stream: unique (the value
    carries pid), sizes vary; timestamps rise with pid."""
    return frame(OP_SET, producer_key(pid, keys), producer_value(pid),
                 ts=1700000000000 + pid)


class Producer(threading.Thread):
    """Acts as the cache's exporter in connect mode: streams producer
    frames to a relay's ingest listener at a rate; when the connection
    breaks (the relay was killed) it reconnects and goes on with the next
    frame, as the cache does when its queue moved on. Records every frame
    it sent and on which connection."""

    def __init__(self, oracle, relay_name, rate=3000, tick=0.01,
                 sock_factory=None, keys=None):
        super().__init__(daemon=True, name="producer")
        self.keys = keys         # None: every frame sets a new key
        self.sock_factory = sock_factory
        self.oracle = oracle
        self.relay = relay_name
        self.robj = oracle.relays[relay_name].relay
        self.rate, self.tick = rate, tick
        self.sent = {}           # ident -> pid
        self.firsts = []         # first pid of each connection
        self.conns = []          # [first pid, end pid, broken]
        self.next_pid = 0
        self.stop_ev = threading.Event()
        self.paused = threading.Event()
        self.error = None
        self.done = threading.Event()
        oracle.producer = self

    def key(self, pid):
        return producer_key(pid, self.keys)

    def value(self, pid):
        return producer_value(pid)

    def conn_of(self, pid):
        i = bisect.bisect_right(self.firsts, pid) - 1
        return i, self.conns[i]

    def gap_reason(self, prev, pid):
        """Why sequence(prev) followed by sequence(pid) breaks the promise
        (None if it does not)."""
        if pid == prev + 1:
            return None
        if pid == prev:
            return "the same frame stored twice"
        if pid < prev:
            return "stored out of the order it was sent"
        ci, a = self.conn_of(prev)
        cj, b = self.conn_of(pid)
        if ci == cj:
            return (f"frames {prev + 1}..{pid - 1}, sent between them on the "
                    f"same connection (#{ci}), are missing")
        if prev + 1 < a[1] and not a[2]:
            return (f"frames {prev + 1}..{a[1] - 1} of connection #{ci}, which "
                    f"ended cleanly, are missing")
        if pid != b[0]:
            # frames b[0]..pid-1 lost while pid, sent after them on the
            # same connection, was stored
            return (f"frames {b[0]}..{pid - 1} of connection #{cj} are missing "
                    f"but frame {pid} sent after them is stored")
        for k in range(ci + 1, cj):
            c = self.conns[k]
            if c[1] > c[0] and not c[2]:
                return f"connection #{k} ended cleanly and none of its frames is stored"
        return None

    def final_reason(self, oracle):
        """After finish(): the last connection ended cleanly, so the store
        must end with its last frame."""
        if not self.conns:
            return None
        first, end, broken = self.conns[-1]
        if broken or end == first:
            return None
        st = oracle.prod_state.get(oracle.relays[self.relay].snapshots[-1].epoch)
        last = st[1] if st else None
        if last != end - 1:
            return (f"{self.relay}: the producer's last connection (#{len(self.conns) - 1}, "
                    f"frames {first}..{end - 1}) ended cleanly but the store "
                    f"ends with producer frame {last}")
        return None

    def forget_before(self, oracle, floor):
        prevs = [st[1] for st in oracle.prod_state.values() if st[1] is not None]
        if not prevs:
            return
        low = min(prevs)
        for k in [k for k, v in self.sent.items() if v < low]:
            del self.sent[k]

    def _connect(self):
        while not self.stop_ev.is_set():
            try:
                if self.sock_factory:
                    return self.sock_factory(self.robj.ingest_addr)
                return connect(self.robj.ingest_addr, timeout=10)
            except OSError:
                time.sleep(0.02)       # the relay is down: retry
        return None

    def run(self):
        try:
            self._run()
        except Exception as e:   # reported by finish()
            self.error = e
        finally:
            self.done.set()

    def _run(self):
        per_tick = max(1, int(self.rate * self.tick))
        while not self.stop_ev.is_set():
            s = self._connect()
            if s is None:
                break
            conn = [self.next_pid, self.next_pid, False]
            with self.oracle.lock:
                self.conns.append(conn)
                self.firsts.append(conn[0])
            t_next = time.monotonic()
            try:
                while not self.stop_ev.is_set():
                    if self.paused.is_set():
                        time.sleep(self.tick)
                        continue
                    pids = range(self.next_pid, self.next_pid + per_tick)
                    frames = [producer_frame(p, self.keys) for p in pids]
                    with self.oracle.lock:
                        for p, f in zip(pids, frames):
                            self.sent[ident(f)] = p
                        conn[1] = pids[-1] + 1
                    self.next_pid = pids[-1] + 1
                    s.sendall(b"".join(frames))
                    t_next += self.tick
                    d = t_next - time.monotonic()
                    if d > 0:
                        time.sleep(d)
                    elif d < -1:
                        t_next = time.monotonic()
                # clean end: the relay reads to our FIN and stores it all
                s.shutdown(socket.SHUT_WR)
                s.settimeout(30)
                while s.recv(4096):
                    pass
                s.close()
                return
            except OSError:
                conn[2] = True
                s.close()

    def finish(self, timeout=60):
        self.stop_ev.set()
        self.done.wait(timeout)
        assert self.done.is_set(), "the producer did not finish"
        assert self.error is None, self.error


class ResumingSubscriber(threading.Thread):
    """An FCWAL-SUB/1 subscriber that reconnects after every disconnect
    from the position after its last whole frame, with the epoch it saw."""

    def __init__(self, oracle, name, relay_name, token, first="earliest",
                 rcvbuf=None, sock_factory=None, idle=None):
        super().__init__(daemon=True, name=name)
        self.oracle = oracle
        self.rec = oracle.subscriber(name, relay_name, resuming=True)
        self.robj = oracle.relays[relay_name].relay
        self.token, self.first, self.rcvbuf = token, first, rcvbuf
        self.sock_factory = sock_factory
        self.idle = idle                  # reconnect after this long silent
        self.stop_ev = threading.Event()
        self.hold = threading.Event()     # set: do not reconnect
        self.connections = 0
        self.idle_reconnects = 0
        self.refusals = {}
        self.error = None

    def position(self):
        with self.oracle.lock:
            return self.rec.position()

    def _sock(self):
        if self.sock_factory:
            return self.sock_factory(self.robj.listen_addr)
        return connect(self.robj.listen_addr, timeout=5, rcvbuf=self.rcvbuf)

    def run(self):
        try:
            self._run()
        except Exception as e:
            self.error = e

    def _run(self):
        frm, epoch = self.first, None
        while not self.stop_ev.is_set():
            if self.hold.is_set():
                time.sleep(0.01)
                continue
            try:
                s = self._sock()
            except OSError:
                time.sleep(0.02)           # relay down: retry
                continue
            try:
                line = f"FCWAL-SUB/1 {self.token} {frm}"
                if epoch:
                    line += f" epoch={epoch}"
                s.settimeout(5)
                s.sendall(line.encode() + b"\n")
                reply = recv_line(s)
            except (OSError, EOFError):
                s.close()
                time.sleep(0.02)
                continue
            m = OK_RE.match(reply)
            if not m:
                s.close()
                frm, epoch = self._refused(reply, frm, epoch)
                continue
            start, _, _, epoch = m.groups()
            self.connections += 1
            c = self.rec.connect(epoch, int(start), requested=frm)
            fs = FrameSplitter()
            s.settimeout(0.5)
            last = time.monotonic()
            try:
                while not self.stop_ev.is_set():
                    try:
                        b = s.recv(1 << 16)
                    except socket.timeout:
                        if self.idle and time.monotonic() - last > self.idle:
                            self.idle_reconnects += 1
                            break
                        continue
                    if not b:
                        break
                    last = time.monotonic()
                    c.add(fs.feed(b), self.oracle)
            except OSError:
                pass
            c.partial = fs.pending()
            c.closed = time.monotonic()
            s.close()
            frm = str(c.start + c.count())

    def _refused(self, reply, frm, epoch):
        m = ERR_RE.match(reply)
        code = m.group(1) if m else "?"
        self.refusals[code] = self.refusals.get(code, 0) + 1
        self.rec.event(reply)
        if code == "busy":
            time.sleep(0.02)               # a chain member not positioned yet
            return frm, epoch
        if code == "gone":
            # retention deleted its position: legitimate, start again
            self.oracle.stats["gone"] += 1
            return "earliest", epoch
        if code == "epoch" and self.oracle.fsync.startswith("never"):
            return "earliest", None
        self.oracle.violate(f"{self.rec.name}: {self.rec.relay} refused "
                            f"'{frm}' (epoch {epoch}): {reply}")
        return "earliest", None

    def wait_position(self, n, timeout=60):
        wait_until(lambda: (self.position() or 0) >= n, timeout,
                   f"{self.rec.name} to reach sequence {n} "
                   f"(at {self.position()})")

    def stop(self):
        self.stop_ev.set()
        self.join(10)


class StockSubscriber(threading.Thread):
    """A stock FCWAL-AUTH/1 subscriber (the cache's own protocol): live
    frames, no positions. Each connection's frames are one run."""

    def __init__(self, oracle, name, relay_name, token):
        super().__init__(daemon=True, name=name)
        self.oracle = oracle
        self.rec = oracle.subscriber(name, relay_name, resuming=False)
        self.relay_name = relay_name
        self.robj = oracle.relays[relay_name].relay
        self.token = token
        self.stop_ev = threading.Event()
        self.frames = 0
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as e:
            self.error = e

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                s = connect(self.robj.listen_addr, timeout=5)
                s.sendall(f"FCWAL-AUTH/1 {self.token}\n".encode())
            except OSError:
                time.sleep(0.02)
                continue
            c = self.rec.connect(self.oracle.relays[self.relay_name].last_epoch,
                                 None)
            fs = FrameSplitter()
            s.settimeout(0.5)
            try:
                while not self.stop_ev.is_set():
                    try:
                        b = s.recv(1 << 16)
                    except socket.timeout:
                        continue
                    if not b:
                        break
                    fr = fs.feed(b)
                    self.frames += len(fr)
                    c.add(fr, self.oracle)
            except OSError:
                pass
            c.partial = fs.pending()
            s.close()
            time.sleep(0.02)

    def stop(self):
        self.stop_ev.set()
        self.join(10)


class StatusPoller(threading.Thread):
    """Asks every running relay for /v1/status every interval and records
    the durable sequence (the loss check's watermark), and the segment
    names and retention deletions (the figures of a run)."""

    def __init__(self, oracle, interval=0.05):
        super().__init__(daemon=True, name="poller")
        self.oracle, self.interval = oracle, interval
        self.stop_ev = threading.Event()
        self.segments = {n: set() for n in oracle.relays}
        self.deleted = {n: {} for n in oracle.relays}     # starts -> count
        self.snaps = {n: {} for n in oracle.relays}       # starts -> count

    def run(self):
        while not self.stop_ev.wait(self.interval):
            for name, rec in list(self.oracle.relays.items()):
                r = rec.relay
                starts = r.starts
                if not r.alive():
                    continue
                try:
                    st = r.status()
                    ms = r.metrics()
                except (OSError, AssertionError, ValueError,
                        http.client.HTTPException):
                    continue        # killed while it answered
                if r.starts != starts:
                    continue
                self.oracle.note_status(name, st)
                for seg in st.get("segments", []):
                    self.segments[name].add(seg["name"])
                m = ms.get("walrelay_segments_deleted_total", 0)
                self.deleted[name][starts] = max(m, self.deleted[name].get(starts, 0))
                m = ms.get("walrelay_snapshots_total", 0)
                self.snaps[name][starts] = max(m, self.snaps[name].get(starts, 0))

    def rotations(self, name):
        """Segments seen (an archived one counts once, by its raw name)."""
        return len({n[:-4] if n.endswith(".zst") else n
                    for n in self.segments[name]})

    def archived(self, name):
        """Archived segments (.wal.zst) seen."""
        return sum(1 for n in self.segments[name] if n.endswith(".zst"))

    def snapshots(self, name):
        """Snapshots taken (walrelay_snapshots_total over every start)."""
        return int(sum(self.snaps[name].values()))

    def deletions(self, name):
        return int(sum(self.deleted[name].values()))

    def stop(self):
        self.stop_ev.set()
        self.join(10)


# ---- a TCP proxy that cuts every connection periodically --------------------

class FlappingProxy(threading.Thread):
    """Listens on loopback and forwards to target; every `period` seconds
    (while flapping) it closes every connection it carries, both ways,
    like a link that drops (RST to both sides)."""

    def __init__(self, target, period=0.1):
        super().__init__(daemon=True, name="proxy")
        self.target = target
        self.period = period
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.pairs = []
        self.flapping = threading.Event()
        self.stop_ev = threading.Event()
        self.cuts = 0
        self.accepted = 0

    def run(self):
        host, port = self.target.rsplit(":", 1)
        last_cut = time.monotonic()
        while not self.stop_ev.is_set():
            socks = [self.lsock] + [x for p in self.pairs for x in p]
            r, _, _ = select.select(socks, [], [], 0.01)
            for s in r:
                if s is self.lsock:
                    c, _ = self.lsock.accept()
                    try:
                        u = socket.create_connection((host, int(port)), 2)
                    except OSError:
                        c.close()
                        continue
                    self.accepted += 1
                    self.pairs.append((c, u))
                    continue
                pair = next((p for p in self.pairs if s in p), None)
                if pair is None:
                    continue
                other = pair[1] if s is pair[0] else pair[0]
                try:
                    data = s.recv(1 << 16)
                    if data:
                        other.setblocking(True)
                        other.settimeout(5)
                        other.sendall(data)
                        continue
                except OSError:
                    pass
                self._close(pair)
            if self.flapping.is_set() and \
                    time.monotonic() - last_cut >= self.period:
                last_cut = time.monotonic()
                if self.pairs:
                    self.cuts += 1
                for p in list(self.pairs):
                    self._close(p, reset=True)
        for p in list(self.pairs):
            self._close(p)
        self.lsock.close()

    def _close(self, pair, reset=False):
        for s in pair:
            if reset:
                # SO_LINGER 0: close sends RST, as a dropped link or a
                # middlebox timeout does
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        if pair in self.pairs:
            self.pairs.remove(pair)

    def stop(self):
        self.stop_ev.set()
        self.join(10)


# ---- network namespaces -----------------------------------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run_ip(*args):
    p = subprocess.run(["ip", *args], capture_output=True, timeout=20)
    if p.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {p.stderr.decode().strip()}")


def in_netns(ns, fn):
    """fn() run on a thread that entered network namespace ns: sockets it
    creates live in ns (they stay there when used from other threads)."""
    out = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns {ns}: {os.strerror(e)}")
            finally:
                os.close(fd)
            out["v"] = fn()
        except BaseException as e:
            out["e"] = e
    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    if "e" in out:
        raise out["e"]
    return out["v"]


class NetnsPair:
    """Two network namespaces joined by a veth pair, with addresses that
    exist only inside them: 10.R.R.1 (side a) and 10.R.R.2 (side b)."""

    def __init__(self):
        tag = "%d%03d" % (os.getpid() % 100000, random.randrange(1000))
        self.a, self.b = f"wrrel-a{tag}", f"wrrel-b{tag}"
        self.va, self.vb = f"wra{tag}"[:15], f"wrb{tag}"[:15]
        n = random.randrange(1, 250)
        self.ip_a, self.ip_b = f"10.213.{n}.1", f"10.213.{n}.2"
        self.made = []

    def create(self):
        for ns in (self.a, self.b):
            run_ip("netns", "add", ns)
            self.made.append(ns)
        run_ip("link", "add", self.va, "netns", self.a, "type", "veth",
               "peer", "name", self.vb, "netns", self.b)
        for ns, dev, ip in ((self.a, self.va, self.ip_a),
                            (self.b, self.vb, self.ip_b)):
            run_ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run_ip("-n", ns, "link", "set", dev, "up")
            run_ip("-n", ns, "link", "set", "lo", "up")
        return self

    def link(self, up):
        """Take side b's end of the link down (every packet between the
        namespaces is dropped, nobody sends a FIN or RST) or up again."""
        run_ip("-n", self.b, "link", "set", self.vb, "up" if up else "down")

    def destroy(self):
        for ns in self.made:
            try:
                run_ip("netns", "del", ns)
            except OSError:
                pass
        self.made = []
