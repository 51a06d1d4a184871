"""Network faults under load, checked by the oracle:

- the upstream of a pull relay flapping every 100 ms (a proxy that cuts
  every connection);
- a subscriber stopped (SIGSTOP) for longer than subscriber-timeout, then
  continued;
- peers that vanish without a FIN or RST: the link between two network
  namespaces taken down, then up again.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import TOKEN
from harness import (FlappingProxy, NetnsPair, Producer, ResumingSubscriber,
                     StockSubscriber, in_netns)
from oracle import Conn, FrameSplitter, Oracle, check_scenario
from relayutil import Relay, free_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def relay(walrelay, workdir, name, tokfile, extra=(), **kw):
    args = ["--subscribe-token-file", str(tokfile), "--segment-bytes", "256k",
            "--upstream-backoff-min", "10", "--upstream-backoff-max", "50",
            *map(str, extra)]
    r = Relay(walrelay, workdir / name, workdir / f"{name}.log", args=args, **kw)
    r.start()
    return r


def finish(o, prod, relays, subs, chain):
    """End a scenario: the producer's last connection ends cleanly, every
    relay and resuming subscriber catches up, relays stop, the oracle
    checks everything."""
    prod.finish()
    origin = relays[chain[0]]
    wait_until(lambda: not origin.status()["upstream"]["connected"], 30,
               "the origin to see the producer's end")
    end = origin.status()["next"]
    origin.wait_durable(end)
    for n in chain[1:]:
        wait_until(lambda: relays[n].status()["durable"] == end, 60,
                   f"{n} to catch up with the origin ({end})")
    for s in subs:
        if isinstance(s, ResumingSubscriber):
            s.wait_position(end)
    for s in subs:
        s.stop()
        assert s.error is None, f"{s.name}: {s.error}"
    for name, r in relays.items():
        assert r.stop() == 0, f"{name} did not stop cleanly"
        o.verify(name, "after stop")
        o.snapshot(name, "final")
    check_scenario(o, chain=chain)
    return end


@pytest.mark.timeout(180)
def test_upstream_flapping_every_100ms(walrelay, walcat, workdir, tokfile):
    a = relay(walrelay, workdir, "a", tokfile)
    proxy = FlappingProxy(a.listen_addr, period=0.1)
    proxy.start()
    b = relay(walrelay, workdir, "b", tokfile,
              ["--upstream", proxy.addr, "--upstream-protocol", "sub",
               "--upstream-token-file", tokfile], ingest=False)
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    o.add_relay("b", b, upstream="a")
    o.note_status("a", a.status())
    prod = Producer(o, "a", rate=4000)
    subs = [ResumingSubscriber(o, "sub-b", "b", TOKEN),
            StockSubscriber(o, "stock-b", "b", TOKEN)]
    wait_until(lambda: b.status()["epoch"] == a.status()["epoch"], 15,
               "b to adopt a's epoch")
    o.note_status("b", b.status())
    for t in [prod] + subs:
        t.start()
    try:
        a.wait_durable(2000)
        proxy.flapping.set()
        # under load, for 60 cuts at least
        wait_until(lambda: proxy.cuts >= 60, 60, "60 cuts of the upstream")
        proxy.flapping.clear()
        reconnects = b.metric("walrelay_upstream_reconnects_total")
        end = finish(o, prod, {"a": a, "b": b}, subs, ("a", "b"))
    finally:
        proxy.stop()
    # b went through most of the cuts, not around them
    assert proxy.accepted >= 30 and reconnects >= 30, (proxy.accepted, reconnects)
    assert end > 10000, end
    print(f"\nflapping: {proxy.cuts} cuts, {proxy.accepted} upstream "
          f"connections ({reconnects:.0f} reconnects of b), {end} frames, "
          f"b holds them all at a's sequences")


def read_subproc(out):
    """(start, epoch, frames, partial bytes) of a subproc_sub.py run."""
    reply = open(out + ".reply", "rb").read().decode()
    fields = dict(kv.split("=") for kv in reply.split()[1:])
    fs = FrameSplitter()
    frames = fs.feed(open(out, "rb").read())
    return int(fields["start"]), fields["epoch"], frames, fs.pending()


@pytest.mark.timeout(180)
def test_sigstop_subscriber_past_timeout(walrelay, walcat, workdir, tokfile):
    a = relay(walrelay, workdir, "a", tokfile,
              ["--subscriber-timeout", "2", "--subscriber-buffer", "64k"])
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    o.note_status("a", a.status())
    prod = Producer(o, "a", rate=5000)
    other = ResumingSubscriber(o, "sub-other", "a", TOKEN)
    prod.start()
    other.start()
    rec = o.subscriber("sub-stopped", "a")
    out = str(workdir / "stopped.out")
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "subproc_sub.py"),
                          a.listen_addr, TOKEN, "0", out])
    try:
        a.wait_durable(2000)
        wait_until(lambda: os.path.exists(out) and os.path.getsize(out) > 0,
                   15, "the subscriber process to receive frames")
        p.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        a.wait_metric('walrelay_subscribers_disconnected_total{reason="timeout"}',
                      lambda v: v == 1, timeout=30)
        held = time.monotonic() - t_stop
        # the others were not held up: the other subscriber has everything
        # the relay had made durable while this one was stopped
        other.wait_position(a.status()["durable"], timeout=10)
        p.send_signal(signal.SIGCONT)
        assert p.wait(30) == 0
        start, epoch, frames, partial = read_subproc(out)
        assert start == 0
        c = rec.connect(epoch, start, "0")
        c.add(frames, o)
        pos = start + len(frames)
        # it resumes exactly where its last whole frame ended
        out2 = out + "2"
        p2 = subprocess.Popen([sys.executable,
                               os.path.join(HERE, "subproc_sub.py"),
                               a.listen_addr, TOKEN, str(pos), out2])
        wait_until(lambda: os.path.exists(out2) and os.path.getsize(out2) > 200000,
                   30, "the continued subscriber to receive more")
        prod.finish()
        end = a.status()["next"]
        a.wait_durable(end)
        other.wait_position(end)
        m = a.metrics()
        other.stop()
        # a graceful stop drains every subscriber, then closes: the
        # continued one exits at that end
        assert a.stop() == 0
        assert p2.wait(30) == 0
    finally:
        for q in (p, locals().get("p2")):
            if q is not None and q.poll() is None:
                q.send_signal(signal.SIGCONT)
                q.kill()
                q.wait()
    start2, epoch2, frames2, _ = read_subproc(out2)
    c2 = rec.connect(epoch2, start2, str(pos))
    c2.add(frames2, o)
    log = a.read_log()
    o.verify("a", "after stop")
    o.snapshot("a", "final")
    check_scenario(o)
    assert start2 == pos and epoch2 == epoch
    assert pos + len(frames2) == end
    assert m['walrelay_subscribers_disconnected_total{reason="timeout"}'] == 1
    assert "accepted no byte for 2000 ms" in log
    assert other.connections == 1, "the other subscriber was disconnected"
    print(f"\nsigstop: stopped {held:.1f} s, disconnected at {pos} "
          f"({partial} bytes of a partial frame dropped), resumed at {start2}")


# ---- peers that vanish without FIN: two network namespaces --------------------

class NsRelay(Relay):
    """A relay run inside network namespace ns: its subscriber listener on
    the namespace's veth address, ingest and HTTP on the namespace's own
    loopback (reached from sockets made inside the namespace)."""

    def __init__(self, ns, ip, *args, **kw):
        self.ns, self.ip = ns, ip
        super().__init__(*args, **kw)

    @property
    def listen_addr(self):
        return f"{self.ip}:{self.listen_port}"

    def argv(self):
        return ["ip", "netns", "exec", self.ns] + super().argv()

    def sock(self, addr, timeout=5):
        host, port = addr.rsplit(":", 1)
        return in_netns(self.ns, lambda: socket.create_connection(
            (host, int(port)), timeout))

    def http(self, path):
        s = self.sock(f"127.0.0.1:{self.http_port}")
        try:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()


@pytest.fixture
def netns():
    pair = NetnsPair()
    try:
        pair.create()
    except OSError as e:
        pair.destroy()
        pytest.skip(f"cannot create network namespaces here ({e}); the "
                    f"SIGSTOP test covers a peer with a zero window instead")
    yield pair
    pair.destroy()


@pytest.mark.timeout(240)
def test_peers_vanish_without_fin(walrelay, walcat, workdir, tokfile, netns):
    """Relay a in namespace A serves a local subscriber, a far subscriber
    and pull relay b (both in namespace B). The link between the
    namespaces goes down under load: no FIN, no RST, packets dropped. a
    disconnects both far peers after subscriber-timeout (logged, counted),
    the local subscriber is not held up; when the link is back the far
    ones resume exactly and b ends with a's frames."""
    common = ["--subscribe-token-file", str(tokfile), "--segment-bytes", "256k",
              "--subscriber-timeout", "2", "--subscriber-buffer", "64k",
              "--upstream-backoff-min", "10", "--upstream-backoff-max", "200"]
    a = NsRelay(netns.a, netns.ip_a, walrelay, workdir / "a", workdir / "a.log",
                args=common)
    a.start()
    b = NsRelay(netns.b, netns.ip_b, walrelay, workdir / "b", workdir / "b.log",
                args=common + ["--upstream", a.listen_addr, "--upstream-protocol",
                               "sub", "--upstream-token-file", str(tokfile)],
                ingest=False)
    b.start()
    o = Oracle("always", walcat)
    o.add_relay("a", a)
    o.add_relay("b", b, upstream="a")
    wait_until(lambda: b.status()["epoch"] == a.status()["epoch"], 15,
               "b to adopt a's epoch")
    o.note_status("a", a.status())
    o.note_status("b", b.status())
    prod = Producer(o, "a", rate=3000,
                    sock_factory=lambda addr: a.sock(addr))
    local = ResumingSubscriber(o, "sub-local", "a", TOKEN,
                               sock_factory=lambda addr: a.sock(addr))
    # a subscriber that cannot tell a dead link from a quiet one without a
    # liveness rule of its own: under load, 3 s of silence means dead
    far = ResumingSubscriber(o, "sub-far", "a", TOKEN, idle=3,
                             sock_factory=lambda addr: b.sock(addr))
    on_b = ResumingSubscriber(o, "sub-b", "b", TOKEN,
                              sock_factory=lambda addr: b.sock(addr))
    subs = [local, far, on_b]
    for t in [prod] + subs:
        t.start()
    try:
        a.wait_durable(3000)
        far.wait_position(1000)
        netns.link(False)
        t_down = time.monotonic()
        a.wait_metric('walrelay_subscribers_disconnected_total{reason="timeout"}',
                      lambda v: v >= 2, timeout=30)
        # the local subscriber was not held up
        local.wait_position(a.status()["durable"], timeout=10)
        down = time.monotonic() - t_down
        netns.link(True)
        end = finish(o, prod, {"a": a, "b": b}, subs, ("a", "b"))
    finally:
        netns.link(True)
    log = a.read_log()
    assert "accepted no byte for 2000 ms" in log
    assert local.connections == 1
    assert far.connections >= 2
    print(f"\nvanish: link down {down:.1f} s, {end} frames; far subscriber "
          f"reconnected {far.connections - 1} time(s) "
          f"({far.idle_reconnects} after its own idle limit)")
