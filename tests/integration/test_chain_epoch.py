"""A chain relay whose upstream took a new epoch.

With --fsync never, an origin relay killed with kill -9 restarts under a
new epoch: its sequence numbers no longer name the frames a relay pulling
from it (--upstream-protocol sub) stored, and the origin refuses that
relay's subscription (FCWAL-ERR/1 epoch) at every retry. What an operator
relies on: the chain relay says so on /readyz (503, "upstream epoch
changed: ..."), logs the refusal once (not once per retry), retries at
its longest backoff, keeps serving the frames it has, and follows the
upstream once it is started on an empty data directory
(docs/operations.md).
"""

import re
import socket

from fcw2util import OP_SET, frame
from relayutil import (connect, recv_frames, recv_line, relay_factory,
                       wait_until)

import pytest

TOKEN = "chain-tok"
OK_RE = re.compile(r"^FCWAL-OK/1 start=(\d+) earliest=(\d+) next=(\d+) "
                   r"epoch=([0-9a-f]{16})$")


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir, "r", start=False)


def feed(addr, frames):
    s = connect(addr, timeout=30)
    s.sendall(b"".join(frames))
    s.shutdown(socket.SHUT_WR)
    s.close()


def gen(i):
    return frame(OP_SET, b"k%08d" % i, b"v%08d" % i * 8,
                 ts=1700000000000 + i)


def subscribe(addr, frm, epoch=None):
    s = connect(addr, timeout=30)
    line = f"FCWAL-SUB/1 {TOKEN} {frm}" + (f" epoch={epoch}" if epoch else "")
    s.sendall(line.encode() + b"\n")
    return s, recv_line(s)


def test_chain_relay_after_upstream_epoch_change(relays, workdir):
    tok = workdir / "tok"
    tok.write_text(TOKEN + "\n")
    common = ["--subscribe-token-file", tok, "--fsync", "never",
              "--log-level", "info"]
    a = relays("a", args=common)
    a.start()
    frames = [gen(i) for i in range(50)]
    feed(a.ingest_addr, frames)
    a.wait_durable(50)
    b = relays("b", args=common + [
        "--upstream", a.listen_addr, "--upstream-protocol", "sub",
        "--upstream-token-file", tok, "--upstream-backoff-min", "10",
        "--upstream-backoff-max", "100"], ingest=False)
    b.start()
    wait_until(lambda: b.status()["durable"] == 50, 30, "b to catch up")
    old_epoch = b.status()["epoch"]
    assert b.http("/readyz")[0] == 200

    # the origin crashes with fsync never: new epoch, b is refused
    port = a.listen_port
    a.kill9()
    a.listen_port = port            # b keeps its address
    a.start()
    assert a.status()["epoch"] != old_epoch
    feed(a.ingest_addr, [gen(i) for i in range(50, 60)])
    a.wait_durable(60)

    def refused():
        code, body = b.http("/readyz")
        return code == 503 and "upstream epoch changed" in body and body
    body = wait_until(refused, 30, "b to report the epoch change")
    assert old_epoch in body, body
    # many retries later: one error line, at the longest backoff
    r0 = b.metric("walrelay_upstream_reconnects_total")
    wait_until(lambda: b.metric("walrelay_upstream_reconnects_total")
               >= r0 + 10, 30, "b to retry ten more times")
    log = b.read_log()
    after = log.split("upstream epoch changed", 1)[1]
    assert log.count("upstream epoch changed") == 1, log[-4000:]
    assert "upstream refused" not in after, after[-3000:]
    assert "reconnecting" not in after, after[-3000:]
    assert b.http("/readyz")[0] == 503
    st = b.status()
    assert st["epoch"] == old_epoch and st["next"] == 50
    assert st["ready"] is False

    # b keeps serving what it has, in its own epoch
    s, reply = subscribe(b.listen_addr, 0, old_epoch)
    assert OK_RE.match(reply), reply
    assert recv_frames(s, 50) == frames
    s.close()
    assert b.stop() == 0

    # the operator's way out: b on an empty data directory follows a
    b2 = relays("b2", args=common + [
        "--upstream", a.listen_addr, "--upstream-protocol", "sub",
        "--upstream-token-file", tok], ingest=False)
    b2.start()
    wait_until(lambda: b2.status()["epoch"] == a.status()["epoch"] and
               b2.status()["durable"] == a.status()["durable"], 30,
               "b2 to follow a's new epoch")
    assert b2.http("/readyz")[0] == 200
