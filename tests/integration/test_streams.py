"""Streams: several named streams in one walrelay process.

Each test starts the real daemon with a config file of [stream NAME]
sections, feeds each stream its own frames and checks that each store and
each subscriber holds exactly its own stream.
"""

import signal
import subprocess

import pytest

from fcw2util import OP_SET, frame
from relayutil import (connect, free_port, recv_frames, recv_line,
                       relay_factory, store_frames, wait_until)

TEST_TIMEOUT = 150


@pytest.fixture(autouse=True)
def hard_timeout():
    def expired(signum, frame):
        raise TimeoutError(f"test ran longer than {TEST_TIMEOUT} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir)


def sframe(name, i):
    """Frame i of stream name: its key names the stream."""
    return frame(OP_SET, b"%s-%08d" % (name.encode(), i), b"v" * 200,
                 ts=1700000000000 + i)


def publish(addr, name, first, last, token=None):
    s = connect(addr)
    if token:
        s.sendall(b"FCWAL-AUTH/1 %s\n" % token.encode())
    s.sendall(b"".join(sframe(name, i) for i in range(first, last)))
    return s


def write_conf(workdir, text):
    p = workdir / "walrelay.conf"
    p.write_text(text)
    return p


def stream_section(name, ingest, listen, extra=""):
    return f"[stream {name}]\ningest = {ingest}\nlisten = {listen}\n{extra}"


def start_streams(relays, workdir, names, shared=None):
    """One relay serving names, each with its own ports."""
    seen = set()

    def port():
        while True:
            p = free_port()
            if p not in seen:
                seen.add(p)
                return p
    ports = {n: (port(), port()) for n in names}
    # one host publishes to every stream: the per-address limits count
    # the connections of the whole process
    text = ("[walrelay]\nfsync = always\nmax-ingest-conns-per-ip = 128\n"
            "max-conns-per-ip = 128\n")
    for n in names:
        text += stream_section(n, f"127.0.0.1:{ports[n][0]}",
                               f"127.0.0.1:{ports[n][1]}")
    conf = write_conf(workdir, text)
    r = relays("r", args=["-c", conf], ingest=False, listen=False)
    return r, ports


def check_streams(r, workdir, ports, per):
    subs = {}
    for n, (_, lp) in ports.items():
        s = connect(f"127.0.0.1:{lp}")
        s.sendall(b"FCWAL-SUB/1 - earliest\n")
        assert recv_line(s).startswith("FCWAL-OK/1 start=0 ")
        subs[n] = s
    pubs = [publish(f"127.0.0.1:{ip}", n, 0, per)
            for n, (ip, _) in ports.items()]
    for n, s in subs.items():
        got = recv_frames(s, per)
        assert got == [sframe(n, i) for i in range(per)], n
        s.close()
    for p in pubs:
        p.close()
    for n in ports:
        wait_until(lambda: r.metric("walrelay_durable_sequence", n) == per,
                   30, f"stream {n} durable")
        assert store_frames(str(workdir / "r" / n)) == \
            [sframe(n, i) for i in range(per)]


def test_two_streams_each_holds_its_own(relays, workdir):
    r, ports = start_streams(relays, workdir, ["cache-a", "cache-b"])
    check_streams(r, workdir, ports, 300)
    st = r.status()
    assert sorted(s["name"] for s in st["streams"]) == ["cache-a", "cache-b"]
    assert st["all_ready"] is True
    code, body = r.http("/readyz?stream=cache-b")
    assert code == 200, body
    code, body = r.http("/readyz?stream=nope")
    assert code == 404, body
    m = r.metrics(stream=None)
    assert 'walrelay_frames_received_total{stream="cache-a"}' in m
    assert 'walrelay_frames_received_total{stream="cache-b"}' in m


def test_fifty_streams(relays, workdir):
    names = [f"node{i:02d}" for i in range(50)]
    r, ports = start_streams(relays, workdir, names)
    check_streams(r, workdir, ports, 20)
    assert len(r.status()["streams"]) == 50


def test_shared_listener_routes_by_token_and_stream(relays, workdir):
    ip, lp = free_port(), free_port()
    text = "[walrelay]\n"
    for n in ("a", "b"):
        (workdir / f"{n}.pub").write_text(f"pub-{n}\n")
        (workdir / f"{n}.sub").write_text(f"sub-{n}\n")
        (workdir / f"{n}.pub").chmod(0o600)
        (workdir / f"{n}.sub").chmod(0o600)
        text += stream_section(
            n, f"127.0.0.1:{ip}", f"127.0.0.1:{lp}",
            f"publish-token-file = {workdir}/{n}.pub\n"
            f"subscribe-token-file = {workdir}/{n}.sub\n")
    r = relays("r", args=["-c", write_conf(workdir, text)], ingest=False,
               listen=False)
    addr, laddr = f"127.0.0.1:{ip}", f"127.0.0.1:{lp}"
    # a resuming subscriber names its stream; a stock one is routed by token
    sa = connect(laddr)
    sa.sendall(b"FCWAL-SUB/1 sub-a earliest stream=a\n")
    assert recv_line(sa).startswith("FCWAL-OK/1 start=0 ")
    sb = connect(laddr)
    sb.sendall(b"FCWAL-AUTH/1 sub-b\n")
    wait_until(lambda: r.metric("walrelay_active_subscribers", "b") == 1,
               15, "stock subscriber on b")
    pa = publish(addr, "a", 0, 40, token="pub-a")
    pb = publish(addr, "b", 0, 30, token="pub-b")
    assert recv_frames(sa, 40) == [sframe("a", i) for i in range(40)]
    assert recv_frames(sb, 30) == [sframe("b", i) for i in range(30)]
    wait_until(lambda: r.metric("walrelay_durable_sequence", "b") == 30, 15,
               "b durable")
    assert r.metric("walrelay_durable_sequence", "a") == 40
    # an unknown stream, and a token of no stream, are refused
    s = connect(laddr)
    s.sendall(b"FCWAL-SUB/1 sub-a earliest stream=nope\n")
    assert recv_line(s) == "FCWAL-ERR/1 bad-request unknown stream"
    p = connect(addr)
    p.sendall(b"FCWAL-AUTH/1 nobody\n")
    p.settimeout(10)
    try:
        assert p.recv(1) == b""         # closed without a word
    except ConnectionResetError:
        pass
    wait_until(lambda: r.metric('walrelay_upstream_rejected_total'
                                '{reason="auth"}', "a") == 1, 15,
               "the refusal counted")
    assert r.metric("walrelay_durable_sequence", "a") == 40
    for c in (sa, sb, pa, pb, s, p):
        c.close()


def run_check(walrelay, conf):
    return subprocess.run([str(walrelay), "-c", str(conf), "--check-config"],
                          capture_output=True, text=True, timeout=30)


def test_ambiguous_routing_refused(walrelay, workdir):
    text = ("[walrelay]\n" +
            stream_section("a", "127.0.0.1:17630", "127.0.0.1:17632") +
            stream_section("b", "127.0.0.1:17630", "127.0.0.1:17633"))
    p = run_check(walrelay, write_conf(workdir, text))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "share the ingest listener 127.0.0.1:17630" in p.stderr
    assert "publish-token-file" in p.stderr
    text = ("[walrelay]\n" +
            stream_section("a", "127.0.0.1:17630", "127.0.0.1:17632") +
            stream_section("b", "127.0.0.1:17631", "127.0.0.1:17632"))
    p = run_check(walrelay, write_conf(workdir, text))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "share the subscriber listener 127.0.0.1:17632" in p.stderr
    assert "subscribe-token-file" in p.stderr


def test_stream_names_and_process_keys(walrelay, workdir):
    for bad in ("[stream a/b]", "[stream ]", "[stream %s]" % ("x" * 65)):
        p = run_check(walrelay, write_conf(workdir, f"[walrelay]\n{bad}\n"))
        assert p.returncode == 2 and "stream name" in p.stderr, p.stderr
    p = run_check(walrelay, write_conf(
        workdir, "[walrelay]\n[stream a]\nhttp = 127.0.0.1:1\n"))
    assert p.returncode == 2 and "set it in [walrelay]" in p.stderr, p.stderr


def test_single_stream_config_and_data_dir_unchanged(relays, workdir):
    """A [walrelay]-only relay is the stream "default" in --data-dir."""
    r = relays("r")
    publish(r.ingest_addr, "x", 0, 10).close()
    r.wait_durable(10)
    assert r.status()["streams"][0]["name"] == "default"
    assert r.stop() == 0
    assert store_frames(r.datadir) == [sframe("x", i) for i in range(10)]
    r.start()
    assert r.status()["next"] == 10


def test_reload_adds_a_stream(relays, workdir):
    ia, la, ib, lb = free_port(), free_port(), free_port(), free_port()
    conf = write_conf(workdir, "[walrelay]\n" + stream_section(
        "a", f"127.0.0.1:{ia}", f"127.0.0.1:{la}"))
    r = relays("r", args=["-c", conf], ingest=False, listen=False)
    conf.write_text("[walrelay]\n" +
                    stream_section("a", f"127.0.0.1:{ia}", f"127.0.0.1:{la}") +
                    stream_section("b", f"127.0.0.1:{ib}", f"127.0.0.1:{lb}"))
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(r.status()["streams"]) == 2, 15, "stream b")
    publish(f"127.0.0.1:{ib}", "b", 0, 5).close()
    wait_until(lambda: r.metric("walrelay_durable_sequence", "b") == 5, 15,
               "b durable")
    # removing a stream takes a restart: it keeps running
    conf.write_text("[walrelay]\n" + stream_section(
        "b", f"127.0.0.1:{ib}", f"127.0.0.1:{lb}"))
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "stream a is no longer in the config" in
               r.read_log(), 15, "the restart warning")
    assert len(r.status()["streams"]) == 2
