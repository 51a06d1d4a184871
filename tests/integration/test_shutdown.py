"""A clean stop under load frees everything in order: checked with valgrind
memcheck on the real daemon (a start, a stream, subscribers draining, an
HTTP client, a publisher still connected, then SIGTERM).

valgrind is part of the test dependencies: the test is skipped with a
message when it is missing, and fails instead when WALRELAY_REQUIRE_VALGRIND
is set (CI sets it). An ASan build cannot run under valgrind: there the
same cycle runs without it and ASan checks it (less surely: the stop-poll
timer had to fire during the last loop run for the old bug to show).
"""

import os
import signal
import socket
import threading

import pytest

import fcw2util
from relayutil import (connect, is_asan_build, recv_frames, recv_line,
                       relay_factory, store_frames, valgrind_path,
                       wait_until)

PUB = "stop-pub-token"
SUB = "stop-sub-token"


def need_valgrind(walrelay):
    """True: run the relay under valgrind; False: an ASan build, which
    checks the same stop itself."""
    if is_asan_build(walrelay):
        return False
    if valgrind_path() is None:
        if os.environ.get("WALRELAY_REQUIRE_VALGRIND"):
            pytest.fail("valgrind is not installed and "
                        "WALRELAY_REQUIRE_VALGRIND is set")
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    return True


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir, start=False)


def token_file(path, tok):
    path.write_text(tok + "\n")
    path.chmod(0o600)
    return str(path)


def frames(n, first=0):
    return [fcw2util.frame(fcw2util.OP_SET, b"stop-%06d" % i,
                           bytes(i % 251 for _ in range(900)), ts=1000 + i)
            for i in range(first, first + n)]


def subscribe(addr, frm="earliest", rcvbuf=None):
    s = connect(addr, timeout=60, rcvbuf=rcvbuf)
    s.sendall(f"FCWAL-SUB/1 {SUB} {frm}\n".encode())
    assert recv_line(s).startswith("FCWAL-OK/1 start=")
    return s


def read_to_eof(s, out):
    """Every byte until the relay closes (run in a thread)."""
    buf = bytearray()
    try:
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            buf += b
    except OSError as e:
        out.append(e)
    out.append(bytes(buf))


def test_stop_under_load_is_clean_under_valgrind(walrelay, relays, workdir):
    vg = need_valgrind(walrelay)
    r = relays("r", ["--publish-token-file", token_file(workdir / "pub", PUB),
                     "--subscribe-token-file", token_file(workdir / "sub", SUB),
                     "--shutdown-timeout", "60s"], valgrind=vg)
    r.start()
    sent = frames(3000)

    # a publisher that stays connected, with every frame stored
    pub = connect(r.ingest_addr, timeout=60)
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pub.sendall(f"FCWAL-AUTH/1 {PUB}\n".encode() + b"".join(sent))
    r.wait_durable(len(sent), timeout=60)

    # subscribers that have everything (many: the stop has work to do
    # after the loop ends), and one that is still reading
    done = [subscribe(r.listen_addr) for _ in range(2)]
    for s in done:
        assert recv_frames(s, len(sent)) == sent
    done += [subscribe(r.listen_addr, "latest") for _ in range(40)]
    slow = subscribe(r.listen_addr, rcvbuf=4096)
    assert recv_frames(slow, 10) == sent[:10]
    status = r.status()
    assert status["durable"] == len(sent)

    r.signal(signal.SIGTERM)
    got = []
    t = threading.Thread(target=read_to_eof, args=(slow, got))
    t.start()
    t.join(120)
    assert not t.is_alive()
    rc = r.proc.wait(120)
    log = r.read_log()
    assert rc == 0, f"exit status {rc}:\n{log[-3000:]}\n{r.valgrind_errors()}"
    assert r.valgrind_errors() is None, r.valgrind_errors()
    assert "every subscriber drained" in log, log[-3000:]
    # the one still reading got everything before the relay closed
    assert got[-1] == b"".join(sent[10:])
    for s in done + [slow, pub]:
        s.close()
    assert store_frames(r.datadir) == sent
