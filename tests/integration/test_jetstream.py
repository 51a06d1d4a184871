"""NATS JetStream: a sink relay publishes its stream into a real three-node
JetStream cluster (R3, file storage) and edge relays take it back out with
the origin's sequence numbers and epoch, across kill -9 of a NATS node, of
the sink relay and of an edge relay."""

import re
import socket
import subprocess
import threading
import zlib

import pytest

from natsutil import NatsCluster, NatsNode, inspect_stream, nats_server_binary
from relayutil import (connect, free_port, recv_line, relay_factory,
                       store_frames, wait_until)

STREAM = "wr"
BACKOFF = ["--upstream-backoff-min", "50", "--upstream-backoff-max", "1000"]


@pytest.fixture
def nats():
    return nats_server_binary()


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir)


@pytest.fixture
def cluster(nats, workdir):
    c = NatsCluster(nats[0], workdir, 3)
    c.start()
    yield c
    c.stop()


class Resumer(threading.Thread):
    """A resuming FCW2 subscriber (FCWAL-SUB/1 from the frames it has),
    reconnecting to whatever relay addr() names at the time."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr = addr
        self.frames = []
        self.epoch = None
        self.errors = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                self.session()
            except (OSError, EOFError, socket.timeout):
                pass
            self.done.wait(0.1)	# reconnect backoff, not a synchronisation

    def session(self):
        with connect(self.addr(), timeout=5) as s:
            line = f"FCWAL-SUB/1 - {len(self.frames)}"
            if self.epoch:
                line += f" epoch={self.epoch}"
            s.sendall(line.encode() + b"\n")
            rep = recv_line(s)
            if not rep.startswith("FCWAL-OK/1 "):
                # an edge not yet positioned (busy) or behind (future):
                # try again; anything else is wrong
                if rep.split()[1:2] not in (["busy"], ["future"]):
                    self.errors.append(rep)
                return
            kv = dict(p.split("=", 1) for p in rep.split()[1:])
            assert int(kv["start"]) == len(self.frames), rep
            if self.epoch is None:
                self.epoch = kv["epoch"]
            assert kv["epoch"] == self.epoch, rep
            s.settimeout(0.5)
            buf = b""
            while not self.done.is_set():
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                while len(buf) >= 9:
                    n = 13 + int.from_bytes(buf[5:9], "little")
                    if len(buf) < n:
                        break
                    self.frames.append(buf[:n])
                    buf = buf[n:]


def start_producer(walcat, relay, rate):
    return subprocess.Popen([str(walcat), "produce", "--count", "0", "--rate",
                             str(rate), "--value-bytes", "200",
                             "--random-values", "--backoff-ms", "50",
                             "--quiet", relay.ingest_addr],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sink_args(urls, *extra):
    return ["--jetstream-sink", urls, "--jetstream-stream", STREAM, *BACKOFF,
            *extra]


def edge_args(urls):
    return ["--upstream", urls, "--upstream-protocol", "jetstream",
            "--jetstream-stream", STREAM, *BACKOFF]


def test_bridge_survives_kills(cluster, relays, walcat, nats):
    jsinspect = nats[1]
    sink = relays("sink", sink_args(cluster.urls))
    edges = [relays(f"edge{i}", edge_args(cluster.urls), ingest=False)
             for i in (1, 2)]
    prod = start_producer(walcat, sink, 1500)
    # one subscriber stays on edge1; the other follows edge2 and moves to
    # edge1 while edge2 is down
    moved = {"to": edges[1]}
    subs = [Resumer(lambda: edges[0].listen_addr),
            Resumer(lambda: moved["to"].listen_addr)]
    for s in subs:
        s.start()

    def progress(n):
        base = [len(s.frames) for s in subs]
        wait_until(lambda: all(len(s.frames) >= b + n
                               for s, b in zip(subs, base)), 120,
                   f"{n} more frames at every subscriber", 0.05)

    try:
        progress(1000)
        # a NATS node dies under load, comes back
        victim = cluster.nodes[1]
        victim.kill9()
        progress(1000)
        victim.start()
        cluster.wait_healthy()
        progress(500)
        # the sink relay dies under load, restarts on its data
        sink.kill9()
        sink.start()
        progress(1000)
        # an edge relay dies; its subscriber moves to the other edge
        edges[1].kill9()
        moved["to"] = edges[0]
        progress(500)
        edges[1].start()
        moved["to"] = edges[1]
        progress(500)
    finally:
        prod.terminate()
        prod.wait()

    # everything the origin stored reaches JetStream and every edge
    wait_until(lambda: sink.status()["durable"] == sink.status()["next"], 60,
               "the sink's frames durable")
    total = sink.status()["next"]
    sink.wait_metric("walrelay_jetstream_lag_frames", lambda v: v == 0, 120)
    assert sink.metric("walrelay_jetstream_acked_sequence") == total
    for e in edges:
        wait_until(lambda: e.status()["next"] == total, 120,
                   f"{e.datadir} to reach frame {total}")
    wait_until(lambda: all(len(s.frames) == total for s in subs), 120,
               "every subscriber to have every frame")
    for s in subs:
        s.done.set()
        s.join(10)

    origin = store_frames(sink.datadir)
    epoch = sink.status()["epoch"]
    assert len(origin) == total
    for e in edges:
        st = e.status()
        assert st["epoch"] == epoch and st["earliest"] == 0
        assert store_frames(e.datadir) == origin
    for s in subs:
        assert s.errors == []
        assert s.epoch == epoch
        assert s.frames == origin

    # JetStream holds every frame once, in order, byte for byte
    rows = inspect_stream(jsinspect, cluster.urls, STREAM)
    assert [r[1] for r in rows] == list(range(total))
    assert [r[0] for r in rows] == list(range(rows[0][0], rows[0][0] + total))
    assert all(r[2] == epoch for r in rows)
    assert [(r[3], r[4]) for r in rows] == \
        [(len(f), zlib.crc32(f)) for f in origin]

    log = sink.read_log()
    assert "js-sink: streaming" in log
    for r in [sink, *edges]:
        assert r.stop() == 0


def test_outage_isolated(nats, relays, workdir, walcat):
    """No NATS at all: ingest and local subscribers go on, the lag shows,
    /readyz?component=jetstream says why, one log line per state; then
    NATS comes and the lag drains to 0."""
    node = NatsNode(nats[0], workdir, "solo", "solo")
    node.routes = []
    sink = relays("sink", sink_args(node.url, "--jetstream-replicas", "1"))
    out = subprocess.run([str(walcat), "produce", "--count", "3000", "--quiet",
                          sink.ingest_addr], timeout=60)
    assert out.returncode == 0
    sink.wait_durable(3000)
    s = connect(sink.listen_addr)
    s.sendall(b"FCWAL-SUB/1 - 0\n")
    assert recv_line(s).startswith("FCWAL-OK/1 start=0 ")
    s.close()
    assert sink.http("/readyz")[0] == 200
    wait_until(lambda: sink.metric("walrelay_jetstream_lag_frames") == 3000,
               30, "the lag to show")
    assert sink.metric("walrelay_jetstream_lag_bytes") > 3000 * 100
    wait_until(lambda: sink.metric("walrelay_jetstream_lag_seconds") >= 0.5,
               30, "the lag's age to grow")
    code, body = sink.http("/readyz?component=jetstream")
    assert code == 503 and "cannot connect" in body, body
    st = sink.status()["jetstream"]
    assert st["role"] == "sink" and st["state"] == "error" and not st["ready"]
    # several attempts, one line
    wait_until(lambda: sink.metric("walrelay_jetstream_errors_total") >= 3,
               30, "reconnect attempts")
    assert len(re.findall(r"js-sink: error: cannot connect",
                          sink.read_log())) == 1

    node.start()
    try:
        wait_until(node.healthy, 30, "nats-server")
        sink.wait_metric("walrelay_jetstream_lag_frames", lambda v: v == 0, 60)
        assert sink.metric("walrelay_jetstream_lag_bytes") == 0
        assert sink.http("/readyz?component=jetstream")[0] == 200
        rows = inspect_stream(nats[1], node.url, STREAM)
        assert [r[1] for r in rows] == list(range(3000))
        assert sink.stop() == 0
        # the acknowledged position survives the restart
        state = (workdir / "sink" / f"jetstream-{STREAM}.state").read_text()
        assert "acked 3000\n" in state
    finally:
        node.stop()


@pytest.mark.parametrize("args, msg", [
    (["--jetstream-sink", "nats://127.0.0.1:4222"], "needs jetstream-stream"),
    (["--jetstream-sink", "nats://127.0.0.1:4222", "--jetstream-stream",
      "a.b"], "jetstream-stream 'a.b'"),
    (["--upstream", "nats://127.0.0.1:4222", "--upstream-protocol", "sub"],
     "need upstream-protocol jetstream"),
    (["--upstream", "nats://127.0.0.1:4222", "--upstream-protocol",
      "jetstream", "--jetstream-stream", "s", "--jetstream-sink",
      "nats://127.0.0.1:4222"], "a relay is either a sink or an edge"),
    (["--jetstream-sink", "http://x:1", "--jetstream-stream", "s"],
     "a NATS URL is"),
    (["--jetstream-stream", "s"], "need jetstream-sink or upstream-protocol"),
])
def test_config_refused(walrelay, args, msg):
    out = subprocess.run([str(walrelay), "--check-config", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert msg in out.stderr, out.stderr


def test_two_streams_one_jetstream_stream_refused(walrelay, workdir):
    """Streams inherit [walrelay]'s jetstream-stream: two sinks into one
    JetStream stream would interleave two sequences; refused, named."""
    conf = workdir / "two.conf"
    conf.write_text(
        "[walrelay]\n"
        "jetstream-sink = nats://127.0.0.1:4222\n"
        "jetstream-stream = shared\n"
        f"[stream a]\ndata-dir = {workdir}/a\ningest = 127.0.0.1:17001\n"
        "listen = 127.0.0.1:17002\n"
        f"[stream b]\ndata-dir = {workdir}/b\ningest = 127.0.0.1:17003\n"
        "listen = 127.0.0.1:17004\n")
    out = subprocess.run([str(walrelay), "--check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "both publish to JetStream stream shared" in out.stderr, out.stderr
    conf.write_text(conf.read_text().replace(
        "[stream b]\n", "[stream b]\njetstream-stream = other\n"))
    out = subprocess.run([str(walrelay), "--check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
