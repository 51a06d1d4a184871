"""Streams: several named streams in one walrelay process.

Each test starts the real daemon with a config file of [stream NAME]
sections, feeds each stream its own frames and checks that each store and
each subscriber holds exactly its own stream.
"""

import signal
import subprocess

from fcw2util import OP_SET, frame
from relayutil import (FaultControl, connect, free_port, hard_timeout_fixture,
                       recv_frames, recv_line, relays_fixture, store_frames,
                       wait_until)

TEST_TIMEOUT = 150


hard_timeout = hard_timeout_fixture(TEST_TIMEOUT)
relays = relays_fixture()


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


def start_streams(relays, workdir, names, shared=None, env=None,
                  limits=True, top="", extra=None):
    """One relay serving names, each with its own ports."""
    seen = set()

    def port():
        while True:
            p = free_port()
            if p not in seen:
                seen.add(p)
                return p
    ports = {n: (port(), port()) for n in names}
    # the per-address limits count per listener: one host may publish to
    # and read from every stream with the default limits
    text = "[walrelay]\nfsync = always\n"
    if not limits:
        text += "max-ingest-conns-per-ip = 1\nmax-conns-per-ip = 1\n"
    text += top
    for n in names:
        text += stream_section(n, f"127.0.0.1:{ports[n][0]}",
                               f"127.0.0.1:{ports[n][1]}",
                               (extra or {}).get(n, ""))
    conf = write_conf(workdir, text)
    r = relays("r", args=["-c", conf], ingest=False, listen=False, env=env)
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


def test_check_config_streams_missing_data_dir(walrelay, workdir):
    """--check-config accepts what a start accepts: with [stream] sections
    a start creates data-dir and then each <data-dir>/<NAME>, so both may
    be missing; a data-dir that cannot be created is refused, naming it."""
    def conf(data_dir):
        text = (f"[walrelay]\ndata-dir = {data_dir}\n"
                f"http = 127.0.0.1:{free_port()}\n" +
                stream_section("a", f"127.0.0.1:{free_port()}",
                               f"127.0.0.1:{free_port()}") +
                stream_section("b", f"127.0.0.1:{free_port()}",
                               f"127.0.0.1:{free_port()}"))
        return write_conf(workdir, text)

    new = workdir / "new-store"
    p = run_check(walrelay, conf(new))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "configuration OK" in p.stdout
    assert not new.exists(), "--check-config created the data directory"
    # the same with a trailing slash
    p = run_check(walrelay, conf(f"{new}/"))
    assert p.returncode == 0, p.stdout + p.stderr

    # two levels missing: a start creates one level only
    deep = workdir / "no" / "such"
    p = run_check(walrelay, conf(deep))
    assert p.returncode == 2, p.stdout
    assert f"data-dir {deep} does not exist and cannot be created" in p.stderr

    # under a regular file
    f = workdir / "plain-file"
    f.write_text("x")
    p = run_check(walrelay, conf(f / "store"))
    assert p.returncode == 2, p.stdout
    assert f"{f} is not a directory" in p.stderr
    p = run_check(walrelay, conf(f))
    assert p.returncode == 2, p.stdout
    assert f"{f} is not a directory" in p.stderr
    assert not (workdir / "no").exists()


def subscribe(port):
    s = connect(f"127.0.0.1:{port}")
    s.sendall(b"FCWAL-SUB/1 - earliest\n")
    assert recv_line(s).startswith("FCWAL-OK/1 start=0 ")
    return s


def refused(r, metric, name, n, what):
    wait_until(lambda: r.metric(metric + '{reason="limit"}', name) == n, 15,
               what)


def test_per_listener_limits_per_stream(relays, workdir):
    """max-conns-per-ip and max-ingest-conns-per-ip are a stream's, for
    its own listeners: a section sets its own; one address at the limit
    on one listener leaves another listener's allowance whole."""
    names = ["a", "b"]
    r, ports = start_streams(relays, workdir, names, limits=False, extra={
        "b": "max-conns-per-ip = 3\nmax-ingest-conns-per-ip = 2\n"})
    held = [subscribe(ports["a"][1])]
    over = connect(f"127.0.0.1:{ports['a'][1]}")
    refused(r, "walrelay_subscribers_rejected_total", "a", 1,
            "the second subscriber of a refused")
    # b's three, although this address is at a's limit
    held += [subscribe(ports["b"][1]) for _ in range(3)]
    over2 = connect(f"127.0.0.1:{ports['b'][1]}")
    refused(r, "walrelay_subscribers_rejected_total", "b", 1,
            "the fourth subscriber of b refused")
    assert r.metric('walrelay_subscribers_rejected_total{reason="limit"}',
                    "a") == 1
    # ingest: a takes one, b two
    pa = publish(f"127.0.0.1:{ports['a'][0]}", "a", 0, 5)
    pb = [publish(f"127.0.0.1:{ports['b'][0]}", "b", 0, 5)]
    wait_until(lambda: r.metric("walrelay_durable_sequence", "b") == 5, 15,
               "b's first publisher stored")
    pb.append(connect(f"127.0.0.1:{ports['b'][0]}"))
    p3 = connect(f"127.0.0.1:{ports['b'][0]}")
    refused(r, "walrelay_upstream_rejected_total", "b", 1,
            "the third ingest connection of b refused")
    assert r.metric('walrelay_upstream_rejected_total{reason="limit"}',
                    "a") == 0
    log = r.read_log()
    assert "3 connections from that address on the listener of stream b, " \
        "the limit (max-conns-per-ip)" in log
    assert "2 ingest connections from that address on the listener of " \
        "stream b, the limit (max-ingest-conns-per-ip)" in log
    for c in held + pb + [over, over2, pa, p3]:
        c.close()


def test_per_address_total_limits(relays, workdir):
    """max-conns-per-ip-total counts one address over every subscriber
    listener of the process, max-ingest-conns-per-ip-total over every
    ingest listener; a closed connection gives its place back."""
    names = ["a", "b", "c"]
    r, ports = start_streams(relays, workdir, names, top=(
        "max-conns-per-ip-total = 2\nmax-ingest-conns-per-ip-total = 1\n"))
    sa = subscribe(ports["a"][1])
    sb = subscribe(ports["b"][1])
    sc = connect(f"127.0.0.1:{ports['c'][1]}")
    refused(r, "walrelay_subscribers_rejected_total", "c", 1,
            "a third subscriber refused on c's listener")
    assert "connections from that address on all subscriber listeners, " \
        "the limit (max-conns-per-ip-total)" in r.read_log()
    sa.close()
    wait_until(lambda: r.metric("walrelay_subscribers", "a") == 0, 15,
               "a's subscriber gone")
    sc2 = subscribe(ports["c"][1])

    pa = publish(f"127.0.0.1:{ports['a'][0]}", "a", 0, 5)
    wait_until(lambda: r.metric("walrelay_durable_sequence", "a") == 5, 15,
               "a's publisher stored")
    pb = connect(f"127.0.0.1:{ports['b'][0]}")
    refused(r, "walrelay_upstream_rejected_total", "b", 1,
            "a second publisher refused on b's listener")
    assert "ingest connections from that address on all listeners, the " \
        "limit (max-ingest-conns-per-ip-total)" in r.read_log()
    for c in (sb, sc, sc2, pa, pb):
        c.close()


def test_shared_listener_has_one_limit(walrelay, workdir):
    text = ("[walrelay]\n" +
            stream_section("a", "127.0.0.1:17630", "127.0.0.1:17632",
                           "publish-token-file = /dev/null\n"
                           "max-ingest-conns-per-ip = 4\n") +
            stream_section("b", "127.0.0.1:17630", "127.0.0.1:17633",
                           "publish-token-file = /dev/null\n"))
    p = run_check(walrelay, write_conf(workdir, text))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "share the ingest listener 127.0.0.1:17630 but set " \
        "max-ingest-conns-per-ip to 4 and 16" in p.stderr


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


def shared_pair(relays, workdir):
    """Streams a and b sharing one ingest and one subscriber listener."""
    ip, lp = free_port(), free_port()
    text = "[walrelay]\n"
    for n in ("a", "b"):
        for kind in ("pub", "sub"):
            f = workdir / f"{n}.{kind}"
            f.write_text(f"{kind}-{n}\n")
            f.chmod(0o600)
        text += stream_section(
            n, f"127.0.0.1:{ip}", f"127.0.0.1:{lp}",
            f"publish-token-file = {workdir}/{n}.pub\n"
            f"subscribe-token-file = {workdir}/{n}.sub\n")
    conf = write_conf(workdir, text)
    r = relays("r", args=["-c", conf], ingest=False, listen=False)
    return r, conf, f"127.0.0.1:{ip}", f"127.0.0.1:{lp}"


def test_walcat_tail_and_produce_stream(relays, workdir, walcat):
    r, conf, addr, laddr = shared_pair(relays, workdir)
    publish(addr, "a", 0, 5, token="pub-a").close()
    wait_until(lambda: r.metric("walrelay_durable_sequence", "a") == 5, 15,
               "a durable")
    # produce --stream: the stream's token (and ingest) from the config
    p = subprocess.run([str(walcat), "produce", "--config", str(conf),
                        "--stream", "b", "--count", "25", "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    wait_until(lambda: r.metric("walrelay_durable_sequence", "b") == 25, 15,
               "b durable")
    assert r.metric("walrelay_durable_sequence", "a") == 5
    # tail --stream names the stream on the shared listener
    p = subprocess.run([str(walcat), "tail", "--stream", "a", "--token-file",
                        str(workdir / "a.sub"), "--from", "earliest",
                        "--count", "5", "--raw", laddr],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"".join(sframe("a", i) for i in range(5))
    p = subprocess.run([str(walcat), "tail", "--stream", "b", "--token-file",
                        str(workdir / "b.sub"), "--from", "earliest",
                        "--count", "25", "--json", laddr],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 25 and '"seq":0' in lines[0].replace(" ", "")
    # restore --stream: stream b's frames only, from the shared listener
    p = subprocess.run([str(walcat), "restore", "--stream", "b",
                        "--token-file", str(workdir / "b.sub"),
                        "--until-seq", "24", laddr, str(workdir / "rb")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert store_frames(str(workdir / "rb")) == \
        store_frames(str(workdir / "r" / "b"))
    # a stream the listener does not serve: the relay's refusal, exit 2
    p = subprocess.run([str(walcat), "tail", "--stream", "nope",
                        "--token-file", str(workdir / "a.sub"), laddr],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "FCWAL-ERR/1 bad-request unknown stream" in p.stderr


def test_walcat_stream_usage_errors(walcat, workdir):
    def run(*args):
        return subprocess.run([str(walcat), *args], capture_output=True,
                              text=True, timeout=30)
    p = run("produce", "--stream", "a", "127.0.0.1:1")
    assert p.returncode == 3 and "--config" in p.stderr, p.stderr
    conf = write_conf(workdir, "[walrelay]\n" + stream_section(
        "a", "127.0.0.1:17630", "127.0.0.1:17632") + stream_section(
        "p", "127.0.0.1:17631", "127.0.0.1:17633",
        "upstream = 127.0.0.1:17634\n"))
    p = run("produce", "--config", str(conf), "--stream", "zz")
    assert p.returncode == 3 and "defines no stream zz" in p.stderr, p.stderr
    p = run("produce", "--config", str(conf), "--stream", "p")
    assert p.returncode == 3 and "pulls from its upstream" in p.stderr, \
        p.stderr
    p = run("tail", "--stream", "a/b", "127.0.0.1:1")
    assert p.returncode == 3 and "not a stream name" in p.stderr, p.stderr
    p = run("tail", "--stock", "--stream", "a", "127.0.0.1:1")
    assert p.returncode == 3 and "stock" in p.stderr, p.stderr
    p = run("repair", "--from", "127.0.0.1:1", "--stream", "a b",
            str(workdir))
    assert p.returncode == 3 and "not a stream name" in p.stderr, p.stderr
    p = run("restore", "--stream", "a b", "127.0.0.1:1", str(workdir / "o"))
    assert p.returncode == 3 and "not a stream name" in p.stderr, p.stderr
    for cmd in ("tail", "produce", "repair", "restore"):
        assert "--stream NAME" in run(cmd, "--help").stdout, cmd


def test_full_disk_on_one_stream_leaves_the_others(relays, workdir, builddir):
    """ENOSPC on every write under stream a's directory: a stops being
    ready and keeps its frames in memory; b and c stay ready and their
    subscribers get every new frame; a catches up once the disk frees."""
    fc = FaultControl(builddir, workdir)
    names = ["a", "b", "c"]
    r, ports = start_streams(relays, workdir, names, env=fc.env())
    subs = {}
    for n in names:
        s = connect(f"127.0.0.1:{ports[n][1]}")
        s.sendall(b"FCWAL-SUB/1 - earliest\n")
        assert recv_line(s).startswith("FCWAL-OK/1 start=0 ")
        subs[n] = s
    pubs = {n: publish(f"127.0.0.1:{ports[n][0]}", n, 0, 50) for n in names}
    for n in names:
        assert recv_frames(subs[n], 50) == [sframe(n, i) for i in range(50)]
    fc.set(f"op=write,path={workdir}/r/a/*,err=ENOSPC")
    pubs["a"].sendall(b"".join(sframe("a", i) for i in range(50, 150)))
    wait_until(lambda: r.metric("walrelay_storage_failing", "a") == 1, 30,
               "the disk of stream a to fill")
    assert fc.hits()
    code, body = r.http("/readyz?stream=a")
    assert code == 503 and "storage error" in body, (code, body)
    assert r.http("/readyz")[0] == 503
    # while a's disk is full, b and c take and deliver every new frame
    for rnd in range(3):
        first, last = 50 + rnd * 200, 250 + rnd * 200
        for n in ("b", "c"):
            pubs[n].sendall(b"".join(sframe(n, i)
                                     for i in range(first, last)))
        for n in ("b", "c"):
            assert recv_frames(subs[n], last - first) == \
                [sframe(n, i) for i in range(first, last)], (n, rnd)
            code, body = r.http(f"/readyz?stream={n}")
            assert code == 200, (n, code, body)
        assert r.metric("walrelay_storage_failing", "a") == 1
        assert r.http("/readyz?stream=a")[0] == 503
    for n in ("b", "c"):
        wait_until(lambda: r.metric("walrelay_durable_sequence", n) == 650,
                   30, f"stream {n} durable")
        assert r.metric("walrelay_storage_failing", n) == 0
    assert r.metric("walrelay_durable_sequence", "a") < 150
    # the disk frees: a writes what it kept and its subscriber catches up
    fc.clear()
    assert recv_frames(subs["a"], 100) == \
        [sframe("a", i) for i in range(50, 150)]
    wait_until(lambda: r.http("/readyz?stream=a")[0] == 200, 30,
               "stream a ready again")
    assert r.http("/readyz")[0] == 200
    for c in list(subs.values()) + list(pubs.values()):
        c.close()
    wait_until(lambda: r.metric("walrelay_durable_sequence", "a") == 150, 30,
               "stream a durable")
    assert store_frames(str(workdir / "r" / "a")) == \
        [sframe("a", i) for i in range(150)]
    for n in ("b", "c"):
        assert store_frames(str(workdir / "r" / n)) == \
            [sframe(n, i) for i in range(650)]


def test_token_in_two_streams_on_a_shared_listener_refused(
        walrelay, relays, workdir):
    """A token two streams sharing a listener both accept could go to
    either: refused by --check-config, at start, and for a new stream on
    reload, naming the streams, the listener and the key."""
    for kind in ("pub", "sub", "other"):
        f = workdir / f"{kind}.tok"
        f.write_text(f"tok-{kind}\n")
        f.chmod(0o600)
    (workdir / "two.tok").write_text("tok-x\ntok-pub\n")
    (workdir / "two.tok").chmod(0o600)
    base = f"[walrelay]\ndata-dir = {workdir}/d\n"

    def sec(n, ingest, listen, pub, sub):
        return stream_section(n, ingest, listen,
                              f"publish-token-file = {workdir}/{pub}\n"
                              f"subscribe-token-file = {workdir}/{sub}\n")
    text = base + sec("a", "127.0.0.1:17630", "127.0.0.1:17632", "pub.tok",
                      "sub.tok") + \
        sec("b", "127.0.0.1:17630", "127.0.0.1:17633", "two.tok", "sub.tok")
    conf = write_conf(workdir, text)
    for args in (["--check-config"], []):
        p = subprocess.run([str(walrelay), "-c", str(conf), *args],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "streams a and b share the ingest listener 127.0.0.1:17630" \
            in p.stderr and "publish-token-file" in p.stderr, p.stderr
        assert f"{workdir}/two.tok:2" in p.stderr, p.stderr
        assert "tok-pub" not in p.stderr        # a secret is not printed
    assert not (workdir / "d").exists()
    text = base + sec("a", "127.0.0.1:17630", "127.0.0.1:17632", "pub.tok",
                      "sub.tok") + \
        sec("b", "127.0.0.1:17631", "127.0.0.1:17632", "other.tok",
            "sub.tok")
    p = run_check(walrelay, write_conf(workdir, text))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "share the subscriber listener 127.0.0.1:17632" in p.stderr and \
        "subscribe-token-file" in p.stderr, p.stderr
    # separate listeners: the same token in both is fine
    (workdir / "d").mkdir()
    text = base + sec("a", "127.0.0.1:17630", "127.0.0.1:17632", "pub.tok",
                      "sub.tok") + \
        sec("b", "127.0.0.1:17631", "127.0.0.1:17633", "pub.tok", "sub.tok")
    p = run_check(walrelay, write_conf(workdir, text))
    assert p.returncode == 0, p.stdout + p.stderr
    # a new stream on reload whose token a running stream shares: not started
    r, conf, addr, laddr = shared_pair(relays, workdir)
    text = conf.read_text() + stream_section(
        "c", addr, f"127.0.0.1:{free_port()}",
        f"publish-token-file = {workdir}/a.pub\n")
    conf.write_text(text)
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "new stream c: streams c and a share the ingest "
               "listener" in r.read_log(), 15, "the refusal")
    assert len(r.status()["streams"]) == 2


def test_per_address_limits_count_per_listener(relays, workdir):
    """With a limit of one connection per address, one host holds one
    publisher and one subscriber on each stream's own listeners; a second
    connection to the same listener is refused."""
    names = ["a", "b", "c"]
    r, ports = start_streams(relays, workdir, names, limits=False)
    subs, pubs = {}, {}
    for n in names:
        s = connect(f"127.0.0.1:{ports[n][1]}")
        s.sendall(b"FCWAL-SUB/1 - earliest\n")
        assert recv_line(s).startswith("FCWAL-OK/1 start=0 ")
        subs[n] = s
        pubs[n] = publish(f"127.0.0.1:{ports[n][0]}", n, 0, 10)
    for n in names:
        assert recv_frames(subs[n], 10) == [sframe(n, i) for i in range(10)]
    # the same listener again: over the limit there
    p = connect(f"127.0.0.1:{ports['b'][0]}")
    wait_until(lambda: r.metric('walrelay_upstream_rejected_total'
                                '{reason="limit"}', "b") == 1, 15,
               "the second publisher refused")
    s = connect(f"127.0.0.1:{ports['c'][1]}")
    wait_until(lambda: r.metric('walrelay_subscribers_rejected_total'
                                '{reason="limit"}', "c") == 1, 15,
               "the second subscriber refused")
    assert "on the listener of stream b, the limit " \
        "(max-ingest-conns-per-ip)" in r.read_log()
    for n in names:
        pubs[n].sendall(b"".join(sframe(n, i) for i in range(10, 20)))
        assert recv_frames(subs[n], 10) == \
            [sframe(n, i) for i in range(10, 20)]
    for c in [p, s] + list(subs.values()) + list(pubs.values()):
        c.close()


def test_print_config_streams(walrelay, workdir):
    conf = write_conf(workdir, f"[walrelay]\ndata-dir = {workdir}/d\n"
                      "fsync = always\n" +
                      stream_section("a", "127.0.0.1:17640", "127.0.0.1:17641",
                                     "retain-bytes = 10G\n") +
                      stream_section("b", "127.0.0.1:17650", "127.0.0.1:17651"))
    p = subprocess.run([str(walrelay), "-c", str(conf), "--segment-bytes",
                        "2M", "--print-config"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    a = out.split("[stream a]\n")[1].split("\n\n")[0]
    b = out.split("[stream b]\n")[1].split("\n\n")[0]
    assert f"retain-bytes = 10G  # file {conf}:7\n" in a
    assert "retain-bytes = 0  # inherited: default\n" in b
    assert f"ingest = 127.0.0.1:17650  # file {conf}:9\n" in b
    assert f"fsync = always  # inherited: file {conf}:3\n" in a
    assert "segment-bytes = 2M  # inherited: command line " \
        "(--segment-bytes)\n" in b
    assert f"data-dir = {workdir}/d/a  # default: <data-dir>/a\n" in a
    assert "http =" not in a            # a key of the whole process
    # the output is a config file giving the same configuration
    again = workdir / "again.conf"
    again.write_text(out)
    p2 = subprocess.run([str(walrelay), "-c", str(again), "--print-config"],
                        capture_output=True, text=True, timeout=30)
    assert p2.returncode == 0, p2.stderr

    def keys(t):
        return [ln.split("  #")[0] for ln in
                t.split("# Environment")[0].splitlines()]
    assert keys(p2.stdout) == keys(out)
