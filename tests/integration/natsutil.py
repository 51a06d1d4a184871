"""A real NATS JetStream cluster on loopback for the integration tests:
nats-server processes with cluster routes and JetStream, their stores in the
test's directory, and jsinspect (built with libnats) to read a stream."""

import json
import os
import shutil
import signal
import subprocess
import urllib.request

import pytest

from relayutil import free_port, wait_until


def nats_server_binary():
    """nats-server, or skip (fail where WALRELAY_REQUIRE_NATS is set: CI)."""
    path = shutil.which("nats-server") or (
        "/usr/bin/nats-server" if os.path.exists("/usr/bin/nats-server") else None)
    jsinspect = os.path.join(os.environ.get("WALRELAY_BUILDDIR", "."),
                             "tests", "integration", "jsinspect")
    missing = []
    if path is None:
        missing.append("nats-server (apt-get install nats-server)")
    if not os.path.exists(jsinspect):
        missing.append("a walrelay built with libnats (apt-get install "
                       "libnats-dev, then configure again)")
    if missing:
        msg = "NATS tests need " + " and ".join(missing)
        if os.environ.get("WALRELAY_REQUIRE_NATS"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path, jsinspect


class NatsNode:
    def __init__(self, binary, workdir, name, cluster_name):
        self.binary = binary
        self.name = name
        self.dir = workdir / name
        self.conf = workdir / f"{name}.conf"
        self.logpath = workdir / f"{name}.log"
        self.port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.cluster_name = cluster_name
        self.routes = []
        self.proc = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def write_conf(self):
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
        conf = (f"server_name: {self.name}\n"
                f"listen: 127.0.0.1:{self.port}\n"
                f"http: 127.0.0.1:{self.http_port}\n"
                f"jetstream {{ store_dir: \"{self.dir}\" }}\n")
        if self.routes:	# a single server runs without a cluster block
            conf += (f"cluster {{\n  name: {self.cluster_name}\n"
                     f"  listen: 127.0.0.1:{self.cluster_port}\n"
                     f"  routes: [{routes}]\n}}\n")
        self.conf.write_text(conf)

    def start(self):
        self.write_conf()
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def healthy(self):
        """JetStream on this node is current with the cluster."""
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server {self.name} exited:\n"
                                 + self.logpath.read_text()[-2000:])
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/healthz", timeout=5) as r:
                return r.status == 200 and json.loads(r.read()).get(
                    "status") == "ok"
        except (OSError, ValueError):
            return False

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.log.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


class NatsCluster:
    """n nats-server processes routed to each other, JetStream on all."""

    def __init__(self, binary, workdir, n=3):
        self.nodes = [NatsNode(binary, workdir, f"n{i + 1}", "walrelay")
                      for i in range(n)]
        for node in self.nodes:
            node.routes = [o.cluster_port for o in self.nodes if o is not node]

    @property
    def urls(self):
        return ",".join(n.url for n in self.nodes)

    def start(self):
        for n in self.nodes:
            n.start()
        self.wait_healthy()

    def wait_healthy(self, timeout=60):
        wait_until(lambda: all(n.healthy() for n in self.nodes
                               if n.proc.poll() is None or n.proc is None),
                   timeout, "the JetStream cluster to be healthy", 0.1)

    def stop(self):
        for n in self.nodes:
            n.stop()


def inspect_stream(jsinspect, urls, stream):
    """[(jetstream seq, relay seq, epoch, length, crc32)] of the stream."""
    out = subprocess.run([jsinspect, urls, stream], capture_output=True,
                         timeout=120, text=True)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        js, seq, epoch, length, crc = line.split()
        rows.append((int(js), int(seq), epoch, int(length), int(crc)))
    return rows
