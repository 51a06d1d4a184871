"""What docs/security.md promises, checked against the real daemon.

TLS (server certificates, client certificates, pulling over TLS,
certificate reload), tokens by role and their rotation, the loopback rule,
and the limits that must hold under abuse (idle and garbage connections,
per-address and subscriber limits, running out of file descriptors).

Certificates are made at test time with the openssl command, once per
session: no key is kept in the tree.
"""

import os
import random
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pytest

import fcw2util
from relayutil import (SLOW, connect, free_port, recv_frames, recv_line,
                       relay_factory, sanitizer_report, store_frames,
                       wait_until)

PUB = "pub-token-7f3a"
SUB = "sub-token-c41e"
SUB_NEW = "sub-token-new-90bd"


# ---- certificates ----------------------------------------------------------

CA_CNF = """\
[ca]
default_ca = test
[test]
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial
certificate = {ca}.crt
private_key = {ca}.key
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
x509_extensions = server_ext
[anything]
commonName = supplied
[server_ext]
subjectAltName = DNS:localhost,IP:127.0.0.1
extendedKeyUsage = serverAuth
basicConstraints = CA:FALSE
"""

SERVER_EXT = ("subjectAltName = {san}\nextendedKeyUsage = serverAuth\n"
              "basicConstraints = CA:FALSE\n")
CLIENT_EXT = "extendedKeyUsage = clientAuth\nbasicConstraints = CA:FALSE\n"


def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}:\n{r.stderr}"
    return r.stdout


class Pki:
    """Paths of the test certificates: pki.path('server.crt')."""

    def __init__(self, d):
        self.dir = d

    def path(self, name):
        return str(self.dir / name)

    def serial(self, name):
        out = _openssl("x509", "-in", self.path(name), "-noout", "-serial",
                       cwd=self.dir)
        return int(out.strip().split("=", 1)[1], 16)

    def der(self, name):
        with open(self.path(name)) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())


def _key_csr(d, name, cn):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)


def _ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "30", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _sign(d, ca, name, serial, ext, csr=None):
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{csr or name}.csr", "-CA", f"{ca}.crt",
             "-CAkey", f"{ca}.key", "-set_serial", str(serial), "-days", "30",
             "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """ca: the relay's CA; ca2: an unrelated one. server (localhost and
    127.0.0.1), server2 (same key, another serial), expired, wrongname
    (signed by ca, for another host), client (from ca), client2 (from
    ca2)."""
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "ca2")
    _key_csr(d, "server", "localhost")
    _sign(d, "ca", "server", 1001,
          SERVER_EXT.format(san="DNS:localhost,IP:127.0.0.1"))
    _sign(d, "ca", "server2", 1002,
          SERVER_EXT.format(san="DNS:localhost,IP:127.0.0.1"), csr="server")
    _key_csr(d, "wrongname", "wrong.example.net")
    _sign(d, "ca", "wrongname", 1003,
          SERVER_EXT.format(san="DNS:wrong.example.net"))
    _key_csr(d, "client", "subscriber-1")
    _sign(d, "ca", "client", 1004, CLIENT_EXT)
    _key_csr(d, "client2", "intruder")
    _sign(d, "ca2", "client2", 2001, CLIENT_EXT)
    # expired: valid for one day in 2020 (openssl ca sets both dates)
    db = d / "ca.db"
    db.mkdir()
    (db / "index.txt").write_text("")
    (db / "serial").write_text("3001\n")
    (d / "ca.cnf").write_text(CA_CNF.format(d=db, ca=d / "ca"))
    _key_csr(d, "expired", "localhost")
    _openssl("ca", "-batch", "-config", "ca.cnf", "-notext",
             "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
             "-in", "expired.csr", "-out", "expired.crt", cwd=d)
    for k in d.glob("*.key"):
        k.chmod(0o600)
    return Pki(d)


# ---- relays, tokens, clients -----------------------------------------------

def write_tokens(path, *tokens):
    path.write_text("".join(t + "\n" for t in tokens))
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def tokens(workdir):
    """Token files: pub (publish), sub (subscribe)."""
    return {"pub": write_tokens(workdir / "pub.tok", PUB),
            "sub": write_tokens(workdir / "sub.tok", SUB)}


@pytest.fixture
def relays(walrelay, workdir):
    """make(name, args, env=None, start=True, **Relay kwargs) -> Relay."""
    yield from relay_factory(walrelay, workdir)


def tls_args(pki, cert="server", key="server"):
    return ["--tls-cert", pki.path(f"{cert}.crt"),
            "--tls-key", pki.path(f"{key}.key")]


def auth_args(tokens):
    return ["--publish-token-file", tokens["pub"],
            "--subscribe-token-file", tokens["sub"]]


def produce(walcat, relay, count, token_file, *extra):
    r = subprocess.run([str(walcat), "produce", "--quiet", "--count",
                        str(count), "--token-file", token_file, *extra,
                        relay.ingest_addr], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def client_ctx(ca=None, cert=None, key=None, check_hostname=True,
               max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_version is not None:
        ctx.maximum_version = max_version
    ctx.check_hostname = check_hostname
    if not check_hostname:
        ctx.verify_mode = ssl.CERT_REQUIRED
    if ca is not None:
        ctx.load_verify_locations(ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_connect(addr, ctx, hostname="localhost", timeout=10.0):
    raw = connect(addr, timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


def sub_line(token, frm="earliest", *opts):
    return " ".join(["FCWAL-SUB/1", token, str(frm), *opts]).encode() + b"\n"


def subscribe(s, token=SUB, frm="earliest"):
    """Send FCWAL-SUB/1; returns the reply line."""
    s.sendall(sub_line(token, frm))
    return recv_line(s)


def try_send(s, data):
    """Send what the relay still takes; it may close at any point."""
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def drain(s, timeout=5.0):
    """Everything the peer sends until it closes (EOF, reset or a TLS
    alert). Returns (bytes, how); how is 'eof', 'reset', 'tls: ...' or
    'open' when the peer kept the connection past the timeout."""
    s.settimeout(timeout)
    data = bytearray()
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return bytes(data), "eof"
            data += b
    except socket.timeout:
        return bytes(data), "open"
    except ssl.SSLError as e:
        return bytes(data), f"tls: {e}"
    except (ConnectionResetError, BrokenPipeError):
        return bytes(data), "reset"


def assert_closed_without_frames(s, timeout=5.0):
    data, how = drain(s, timeout)
    assert how != "open", f"the relay kept the connection open: {data[:200]!r}"
    assert b"FCW2" not in data, f"frame bytes sent: {data[:200]!r}"
    return data


def log_count(relay, text):
    return relay.read_log().count(text)


def wait_log(relay, text, count=1, timeout=10.0):
    wait_until(lambda: log_count(relay, text) >= count, timeout,
               f"{count} log line(s) with {text!r}")


def get_metric(relay, name):
    return relay.metrics().get(name, 0.0)


REJ = 'walrelay_subscribers_rejected_total{reason="%s"}'
UREJ = 'walrelay_upstream_rejected_total{reason="%s"}'


def read_stream(s, n):
    """The reply line and n frames of a resuming subscription."""
    return recv_frames(s, n)


# ---- TLS on the subscriber listener -----------------------------------------

def test_tls_subscriber_gets_the_stream_exactly(relays, walcat, pki, tokens):
    r = relays("a", tls_args(pki) + auth_args(tokens))
    assert "subscriber (TLS): listening on" in r.read_log()
    produce(walcat, r, 300, tokens["pub"])
    r.wait_durable(300)
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt"))) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        reply = subscribe(s)
        assert reply.startswith("FCWAL-OK/1 start=0 "), reply
        got = recv_frames(s, 300)
    assert got == store_frames(r.datadir)
    assert len(got) == 300


def test_walcat_restore_and_repair_over_tls(relays, walcat, pki, tokens,
                                           workdir):
    """walcat restore and repair reach a TLS relay with --tls-ca (and the
    server name taken from the address): restore writes the relay's frames
    exactly, repair mends a copy of the store from it; a relay whose
    certificate the client does not trust, and a --tls-cert without
    --tls-key, are refused with the reason."""
    import shutil
    r = relays("a", tls_args(pki) + auth_args(tokens) +
               ["--segment-bytes", "4k"])
    for i in range(6):          # six writes: a segment at least each
        produce(walcat, r, 50, tokens["pub"])
        r.wait_durable(50 * (i + 1))
    ca = pki.path("ca.crt")

    def walcat_run(*args):
        return subprocess.run([str(walcat), *map(str, args)],
                              capture_output=True, text=True, timeout=60 * SLOW)

    out = workdir / "restored"
    p = walcat_run("restore", "--tls-ca", ca, "--token-file", tokens["sub"],
                   r.listen_addr, out)
    assert p.returncode == 0, p.stderr
    assert "restored 300 frames" in p.stdout, p.stdout
    assert store_frames(str(out)) == store_frames(r.datadir)

    p = walcat_run("restore", "--tls", "--token-file", tokens["sub"],
                   r.listen_addr, workdir / "untrusted")
    assert p.returncode != 0 and "certificate" in p.stderr, p.stderr
    p = walcat_run("restore", "--tls-ca", ca, "--tls-cert",
                   pki.path("client.crt"), "--token-file", tokens["sub"],
                   r.listen_addr, workdir / "half")
    assert p.returncode != 0
    assert "--tls-cert and --tls-key go together" in p.stderr, p.stderr

    # repair: a copy of the store with one bit flipped in a sealed segment
    copy = workdir / "copy"
    shutil.copytree(r.datadir, copy,
                    ignore=shutil.ignore_patterns("walrelay.lock"))
    names = sorted(n for n in os.listdir(copy) if n.endswith(".wal"))
    assert len(names) > 2, names
    with open(copy / names[0], "r+b") as f:
        f.seek(40)
        b = f.read(1)
        f.seek(40)
        f.write(bytes([b[0] ^ 0x10]))
    p = walcat_run("repair", "--from", r.listen_addr, "--token-file",
                   tokens["sub"], copy)
    assert p.returncode != 0, p.stdout     # plain TCP to a TLS listener
    p = walcat_run("repair", "--from", r.listen_addr, "--tls-ca", ca,
                   "--token-file", tokens["sub"], copy)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "summary: repaired=1 not_repaired=0" in p.stdout, p.stdout
    assert store_frames(str(copy)) == store_frames(r.datadir)
    p = walcat_run("repair", "--from", r.listen_addr, "--tls-key",
                   pki.path("client.key"), copy)
    assert p.returncode != 0
    assert "--tls-cert and --tls-key go together" in p.stderr, p.stderr


def test_tls_subscriber_catches_up_from_segment_files_exactly(relays, walcat,
                                                             pki, tokens):
    """Older than the in-memory tail, a TLS subscriber's frames are read
    from the segment files on the I/O pool in 256 KiB pieces and each
    piece is queued 64 KiB per write callback: the stream is still the
    stored frames exactly, across pieces, parts and segment files."""
    r = relays("a", tls_args(pki) + auth_args(tokens) +
               ["--segment-bytes", "1M", "--tail-memory", "1M"])
    n = 6000
    produce(walcat, r, n, tokens["pub"], "--value-bytes", "900")
    r.wait_durable(n)
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt"))) as s:
        reply = subscribe(s, frm="0")
        assert reply.startswith("FCWAL-OK/1 start=0 "), reply
        got = recv_frames(s, n)
    assert got == store_frames(r.datadir)
    # they came from the files, not the tail
    assert r.metric("walrelay_disk_reads_total") > 0


def cpu_has_aes():
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and " aes" in line
                   for line in f)


def test_tls_send_path_and_suite_are_reported(relays, walcat, pki, tokens):
    """Each TLS subscriber streams whichever code encrypts it: the kernel
    (kTLS) where it has the tls module, else OpenSSL in the relay. The
    relay says which once per stream in its log, per subscriber in
    /v1/status and as a count in /metrics. With AES instructions the
    suite is AES-128-GCM, the cheapest per byte, whatever the client's
    order."""
    ktls = os.path.exists("/proc/net/tls_stat")
    path = "ktls" if ktls else "openssl"
    r = relays("a", tls_args(pki) + auth_args(tokens))
    produce(walcat, r, 200, tokens["pub"])
    r.wait_durable(200)
    ctx = client_ctx(pki.path("ca.crt"))
    with tls_connect(r.listen_addr, ctx) as s1, \
            tls_connect(r.listen_addr, ctx) as s2:
        for s in (s1, s2):
            reply = subscribe(s)
            assert reply.startswith("FCWAL-OK/1 start=0 "), reply
            assert recv_frames(s, 200) == store_frames(r.datadir)
        if s1.version() == "TLSv1.3" and cpu_has_aes():
            assert s1.cipher()[0] == "TLS_AES_128_GCM_SHA256", s1.cipher()
        subs = r.status()["streams"][0]["subscribers"]
        assert [x["tls"] for x in subs] == [path, path], subs
        m = r.metrics()
        assert m['walrelay_tls_subscribers_total{path="%s"}' % path] == 2
        other = "openssl" if ktls else "ktls"
        assert m['walrelay_tls_subscribers_total{path="%s"}' % other] == 0
    log = r.read_log()
    if ktls:
        assert log.count("are sent with kernel TLS (kTLS") == 1, log
    else:
        assert log.count("are encrypted by OpenSSL in the relay") == 1, log
        assert "kTLS is not in use: the kernel has no TLS module" in log, log


def test_plain_subscriber_reports_no_tls(relays, walcat, tokens):
    r = relays("a", auth_args(tokens))
    produce(walcat, r, 10, tokens["pub"])
    r.wait_durable(10)
    s = connect(r.listen_addr)
    with s:
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        recv_frames(s, 10)
        subs = r.status()["streams"][0]["subscribers"]
        assert [x["tls"] for x in subs] == [None], subs
        assert r.metrics()['walrelay_tls_subscribers_total{path="openssl"}'] == 0


def test_tls_client_refuses_unrelated_ca(relays, pki, tokens):
    r = relays("a", tls_args(pki) + auth_args(tokens))
    with pytest.raises(ssl.SSLCertVerificationError) as e:
        tls_connect(r.listen_addr, client_ctx(pki.path("ca2.crt")))
    assert "unable to get local issuer certificate" in str(e.value)


def test_tls_expired_certificate_is_refused_and_logged(relays, pki, tokens):
    r = relays("a", tls_args(pki, "expired", "expired") + auth_args(tokens))
    with pytest.raises(ssl.SSLCertVerificationError) as e:
        tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt")))
    assert "certificate has expired" in str(e.value)
    # the operator learns it from the relay too, not only from clients
    assert "expired" in r.read_log()
    assert pki.path("expired.crt") in r.read_log()


def test_tls_wrong_host_name_is_refused(relays, pki, tokens):
    r = relays("a", tls_args(pki, "wrongname", "wrongname") + auth_args(tokens))
    with pytest.raises(ssl.SSLCertVerificationError) as e:
        tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt")))
    assert "Hostname mismatch" in str(e.value), str(e.value)
    # the same certificate is otherwise fine: only the name was wrong
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt")),
                     hostname="wrong.example.net") as s:
        assert subscribe(s).startswith("FCWAL-OK/1 ")


def test_tls_old_versions_and_weak_suites_are_refused(relays, pki, tokens):
    r = relays("a", tls_args(pki) + auth_args(tokens))
    before = get_metric(r, REJ % "tls")
    old = client_ctx(pki.path("ca.crt"))
    with warnings.catch_warnings():     # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")     # let the client offer them
    with pytest.raises(ssl.SSLError) as e:
        tls_connect(r.listen_addr, old)
    assert "version" in str(e.value).lower() or "protocol" in str(e.value).lower()
    # TLS 1.2 without forward secrecy or without AEAD
    for suite in ("AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA"):
        weak = client_ctx(pki.path("ca.crt"),
                          max_version=ssl.TLSVersion.TLSv1_2)
        weak.set_ciphers(suite)
        with pytest.raises(ssl.SSLError):
            tls_connect(r.listen_addr, weak)
    wait_until(lambda: get_metric(r, REJ % "tls") >= before + 3, 5,
               "three TLS refusals counted")
    assert "unsupported protocol" in r.read_log()
    assert "no shared cipher" in r.read_log()


def test_tls_ingest(relays, pki, tokens):
    """--tls-ingest: a publisher over TLS with the publish token stores;
    a subscribe token or a plain-TCP publisher stores nothing."""
    r = relays("a", tls_args(pki) + auth_args(tokens) + ["--tls-ingest"])
    assert "ingest (TLS): listening on" in r.read_log()
    frames = [fcw2util.frame(fcw2util.OP_SET, b"key-%d" % i, b"v" * i)
              for i in range(1, 21)]
    ctx = client_ctx(pki.path("ca.crt"))
    for bad in (f"FCWAL-AUTH/1 {SUB}\n".encode(), b"FCWAL-AUTH/1 nope\n"):
        before = get_metric(r, UREJ % "auth")
        with tls_connect(r.ingest_addr, ctx) as s:
            s.sendall(bad + b"".join(frames))
            assert assert_closed_without_frames(s) == b""
        r.wait_metric(UREJ % "auth", lambda v: v == before + 1)
    # frames right after the handshake, without the auth line
    before = get_metric(r, UREJ % "auth")
    with tls_connect(r.ingest_addr, ctx) as s:
        s.sendall(b"".join(frames))
        assert assert_closed_without_frames(s) == b""
    r.wait_metric(UREJ % "auth", lambda v: v == before + 1)
    # a TLS client that finishes its handshake and says nothing
    idle = tls_connect(r.ingest_addr, ctx)
    s = connect(r.ingest_addr)
    s.sendall(f"FCWAL-AUTH/1 {PUB}\n".encode() + b"".join(frames))
    assert assert_closed_without_frames(s) == b""
    s.close()
    # the plain-TCP publisher is counted as a TLS refusal
    r.wait_metric(UREJ % "tls", lambda v: v == 1)
    assert r.status()["next"] == 0
    assert r.status()["upstream"]["connected"] is False, r.status()["upstream"]
    idle.close()
    assert get_metric(r, "walrelay_frames_received_total") == 0
    with tls_connect(r.ingest_addr, ctx) as s:
        s.sendall(f"FCWAL-AUTH/1 {PUB}\n".encode() + b"".join(frames))
        r.wait_durable(20)
    assert store_frames(r.datadir) == frames


@pytest.fixture
def mtls(relays, walcat, pki, tokens):
    r = relays("a", tls_args(pki) + auth_args(tokens) +
               ["--tls-ca", pki.path("ca.crt"), "--tls-verify-client"])
    produce(walcat, r, 50, tokens["pub"])
    r.wait_durable(50)
    return r


def attempt_without_good_cert(addr, ctx):
    """Handshake, then the subscription line: returns what came back. With
    TLS 1.3 the client only learns of the refusal after its handshake."""
    try:
        s = tls_connect(addr, ctx)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""
    with s:
        try:
            s.sendall(sub_line(SUB))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""
        data, how = drain(s)
        assert how != "open", "the relay served a client without a valid certificate"
        return data


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mtls_client_without_certificate_gets_nothing(mtls, pki, version):
    before = get_metric(mtls, REJ % "tls")
    ctx = client_ctx(pki.path("ca.crt"), max_version=version)
    assert attempt_without_good_cert(mtls.listen_addr, ctx) == b""
    wait_until(lambda: get_metric(mtls, REJ % "tls") > before, 5,
               "the handshake failure to be counted")
    wait_log(mtls, "peer did not return a certificate")


def test_mtls_client_with_unrelated_ca_certificate_gets_nothing(mtls, pki):
    before = get_metric(mtls, REJ % "tls")
    ctx = client_ctx(pki.path("ca.crt"), pki.path("client2.crt"),
                     pki.path("client2.key"))
    assert attempt_without_good_cert(mtls.listen_addr, ctx) == b""
    wait_until(lambda: get_metric(mtls, REJ % "tls") > before, 5,
               "the handshake failure to be counted")
    # the log names the certificate problem
    wait_log(mtls, "certificate")
    assert "unable to get local issuer certificate" in mtls.read_log()


def test_mtls_client_with_good_certificate_streams(mtls, pki):
    ctx = client_ctx(pki.path("ca.crt"), pki.path("client.crt"),
                     pki.path("client.key"))
    with tls_connect(mtls.listen_addr, ctx) as s:
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        assert recv_frames(s, 50) == store_frames(mtls.datadir)
    # the token is still checked inside TLS
    with tls_connect(mtls.listen_addr, ctx) as s:
        assert subscribe(s, "not-a-token").startswith("FCWAL-ERR/1 auth ")
        assert assert_closed_without_frames(s) == b""
    with tls_connect(mtls.listen_addr, ctx) as s:
        s.sendall(b"FCWAL-AUTH/1 not-a-token\n")
        assert assert_closed_without_frames(s) == b""
    # and a publish token is not a subscribe token, whatever the certificate
    with tls_connect(mtls.listen_addr, ctx) as s:
        assert subscribe(s, PUB).startswith("FCWAL-ERR/1 auth ")


def test_plain_tcp_on_tls_port_is_closed_at_once(relays, pki, tokens):
    # "at once": well before auth-timeout; both scale with valgrind's
    # slowdown (relayutil.SLOW) so that the test stays about the order
    at_once = 1.0 * SLOW
    r = relays("a", tls_args(pki) + auth_args(tokens) +
               ["--auth-timeout", "%ds" % (5 * SLOW)])
    before = get_metric(r, REJ % "tls")
    for line in (sub_line(SUB), b"FCWAL-AUTH/1 " + SUB.encode() + b"\n",
                 b"GET / HTTP/1.0\r\n\r\n"):
        s = connect(r.listen_addr)
        t0 = time.monotonic()
        s.sendall(line)
        data, how = drain(s, timeout=at_once)
        took = time.monotonic() - t0
        s.close()
        assert how != "open", (f"{line!r}: not closed within {at_once} s "
                               f"(auth-timeout {5 * SLOW} s)")
        assert took < at_once
        assert b"FCW2" not in data and b"FCWAL" not in data, data
    wait_until(lambda: get_metric(r, REJ % "tls") >= before + 3, 5,
               "three TLS refusals counted")
    # and the port still serves TLS
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt"))) as s:
        assert subscribe(s).startswith("FCWAL-OK/1 ")


def test_tls_idle_connection_closed_at_auth_timeout(relays, pki, tokens):
    """auth-timeout covers the TLS handshake: a client that connects and
    never starts it is closed then, not earlier and not never."""
    # 1 s, and late by at most 2 s; both times valgrind's slowdown
    # (relayutil.SLOW), under which the handshake alone takes longer
    auth = max(1, int(SLOW))
    r = relays("a", tls_args(pki) + auth_args(tokens) +
               ["--auth-timeout", "%ds" % auth])
    late = auth + 2.0 * SLOW
    s = connect(r.listen_addr)
    t0 = time.monotonic()
    data, how = drain(s, timeout=late + 1.0)
    took = time.monotonic() - t0
    s.close()
    assert how in ("eof", "reset"), how
    assert data == b""
    assert 0.9 * auth <= took < late, took
    # a TLS client that finishes the handshake but sends no line: same
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt")),
                     timeout=10.0 * SLOW) as s:
        t0 = time.monotonic()
        data, how = drain(s, timeout=late + 1.0)
        took = time.monotonic() - t0
    assert how != "open" and data == b""
    assert took < late, took


# ---- pulling over TLS --------------------------------------------------------

def pull_args(a, pki, tokens, ca="ca.crt", server_name=None):
    args = ["--upstream", a.listen_addr, "--upstream-protocol", "sub",
            "--upstream-tls", "--upstream-tls-ca", pki.path(ca),
            "--upstream-token-file", tokens["up"],
            "--upstream-backoff-min", "50", "--upstream-backoff-max", "200"]
    if server_name is not None:
        args += ["--upstream-tls-server-name", server_name]
    return args


@pytest.fixture
def tls_upstream(relays, walcat, pki, tokens, workdir):
    tokens["up"] = write_tokens(workdir / "up.tok", SUB)
    a = relays("a", tls_args(pki) + auth_args(tokens))
    produce(walcat, a, 200, tokens["pub"])
    a.wait_durable(200)
    return a


@pytest.mark.parametrize("server_name", ["localhost", None],
                         ids=["server-name", "default-host-ip"])
def test_pull_over_tls(relays, walcat, pki, tokens, tls_upstream, server_name):
    a = tls_upstream
    args = pull_args(a, pki, tokens, server_name=server_name)
    env = None
    if server_name is None:     # and the upstream token from the environment
        i = args.index("--upstream-token-file")
        del args[i:i + 2]
        env = {"WALRELAY_UPSTREAM_TOKEN": SUB}
    b = relays("b", args, env=env, ingest=False)
    b.wait_durable(200)
    assert store_frames(b.datadir) == store_frames(a.datadir)
    # and it follows live
    produce(walcat, a, 100, tokens["pub"])
    a.wait_durable(300)
    b.wait_durable(300)
    assert store_frames(b.datadir) == store_frames(a.datadir)
    assert get_metric(b, "walrelay_upstream_connect_failures_total") == 0


@pytest.mark.parametrize("bad", ["ca", "server-name"])
def test_pull_over_tls_refuses_bad_certificate(relays, pki, tokens,
                                               tls_upstream, bad):
    a = tls_upstream
    if bad == "ca":
        args = pull_args(a, pki, tokens, ca="ca2.crt")
        why = "unable to get local issuer certificate"
    else:
        args = pull_args(a, pki, tokens, server_name="relay-b.example.net")
        why = "hostname mismatch"
    b = relays("b", args, ingest=False)
    b.wait_metric("walrelay_upstream_connect_failures_total", lambda v: v >= 3)
    assert get_metric(b, "walrelay_upstream_reconnects_total") >= 3
    log = b.read_log()
    assert "certificate verify failed" in log, log[-2000:]
    assert why in log, log[-2000:]
    st = b.status()
    assert st["durable"] == 0
    assert store_frames(b.datadir) == []
    assert get_metric(b, "walrelay_frames_received_total") == 0


# ---- tokens by role ----------------------------------------------------------

def test_subscribe_token_cannot_publish(relays, tokens):
    r = relays("a", auth_args(tokens))
    frames = b"".join(fcw2util.frame(fcw2util.OP_SET, b"k%d" % i, b"v")
                      for i in range(5))
    for line in (f"FCWAL-AUTH/1 {SUB}\n".encode(), b"FCWAL-AUTH/1 wrong\n",
                 sub_line(SUB), b""):
        before = get_metric(r, UREJ % "auth")
        s = connect(r.ingest_addr)
        try:
            s.sendall(line + frames)
        except (ConnectionResetError, BrokenPipeError):
            pass
        data, how = drain(s)
        s.close()
        assert how != "open", line
        assert data == b""
        r.wait_metric(UREJ % "auth", lambda v: v == before + 1)
    assert get_metric(r, "walrelay_frames_received_total") == 0
    assert r.status()["next"] == 0
    assert store_frames(r.datadir) == []
    # the publish token does publish
    s = connect(r.ingest_addr)
    s.sendall(f"FCWAL-AUTH/1 {PUB}\n".encode() + frames)
    r.wait_durable(5)
    s.close()


def test_publish_token_cannot_subscribe(relays, walcat, tokens):
    r = relays("a", auth_args(tokens))
    produce(walcat, r, 10, tokens["pub"])
    r.wait_durable(10)
    # stock: closed without a byte
    s = connect(r.listen_addr)
    s.sendall(f"FCWAL-AUTH/1 {PUB}\n".encode())
    assert assert_closed_without_frames(s) == b""
    s.close()
    # resuming: one error line
    s = connect(r.listen_addr)
    reply = subscribe(s, PUB)
    assert reply.startswith("FCWAL-ERR/1 auth "), reply
    assert assert_closed_without_frames(s) == b""
    s.close()
    assert get_metric(r, REJ % "auth") == 2
    # while a live stock subscriber with the subscribe token is served
    s = connect(r.listen_addr)
    s.sendall(f"FCWAL-AUTH/1 {SUB}\n".encode())
    r.wait_metric("walrelay_active_subscribers", lambda v: v == 1)
    produce(walcat, r, 5, tokens["pub"])
    assert recv_frames(s, 5) == store_frames(r.datadir)[10:]
    s.close()


def test_token_in_both_roles_refuses_to_start(walrelay, workdir, tokens):
    both = write_tokens(workdir / "both.tok", "shared-token", SUB)
    pub = write_tokens(workdir / "pub2.tok", "other", "shared-token")
    cases = [
        (["--publish-token-file", pub, "--subscribe-token-file", both], {}),
        (["--publish-token-file", tokens["pub"]],
         {"WALRELAY_SUBSCRIBE_TOKENS": f"x1,{PUB}"}),
    ]
    for args, env in cases:
        p = subprocess.run([str(walrelay), "--data-dir", str(workdir / "d"),
                            "--ingest", f"127.0.0.1:{free_port()}",
                            "--listen", f"127.0.0.1:{free_port()}",
                            "--http", "none", *args],
                           capture_output=True, text=True, timeout=15,
                           env=dict(os.environ, **env))
        assert p.returncode != 0
        assert "also a publish token" in p.stderr, p.stderr
        assert sanitizer_report(p.stderr) is None, p.stderr


def test_tokens_from_environment(relays, walcat, workdir):
    env = {"WALRELAY_PUBLISH_TOKENS": "env-pub-1, env-pub-2",
           "WALRELAY_SUBSCRIBE_TOKENS": "env-sub-1\nenv-sub-2\n"}
    r = relays("a", [], env=env)
    pubfile = write_tokens(workdir / "envpub.tok", "env-pub-2")
    produce(walcat, r, 20, pubfile)
    r.wait_durable(20)
    s = connect(r.listen_addr)
    assert subscribe(s, "env-sub-2").startswith("FCWAL-OK/1 start=0 ")
    assert recv_frames(s, 20) == store_frames(r.datadir)
    s.close()
    s = connect(r.listen_addr)
    assert subscribe(s, "env-pub-1").startswith("FCWAL-ERR/1 auth ")
    s.close()
    s = connect(r.ingest_addr)
    s.sendall(b"FCWAL-AUTH/1 env-sub-1\n" + fcw2util.frame(fcw2util.OP_SET, b"k"))
    assert assert_closed_without_frames(s) == b""
    s.close()
    assert r.status()["next"] == 20


def test_token_rotation(relays, walcat, workdir, tokens):
    r = relays("a", auth_args(tokens))
    produce(walcat, r, 20, tokens["pub"])
    r.wait_durable(20)
    old = connect(r.listen_addr)
    assert subscribe(old, SUB).startswith("FCWAL-OK/1 start=0 ")
    assert recv_frames(old, 20) == store_frames(r.datadir)

    # 1. add the new token, reload: both work
    write_tokens(workdir / "sub.tok", SUB, SUB_NEW)
    r.signal(signal.SIGHUP)
    wait_log(r, "reload: tokens and limits reloaded (1 publish, 2 subscribe")
    for tok in (SUB, SUB_NEW):
        with connect(r.listen_addr) as s:
            assert subscribe(s, tok, "latest").startswith("FCWAL-OK/1 "), tok

    # 2. remove the old one, reload: only the new one works
    write_tokens(workdir / "sub.tok", SUB_NEW)
    r.signal(signal.SIGHUP)
    wait_log(r, "reload: tokens and limits reloaded (1 publish, 1 subscribe")
    with connect(r.listen_addr) as s:
        assert subscribe(s, SUB).startswith("FCWAL-ERR/1 auth ")
    with connect(r.listen_addr) as s:
        s.sendall(f"FCWAL-AUTH/1 {SUB}\n".encode())
        assert assert_closed_without_frames(s) == b""
    with connect(r.listen_addr) as s:
        assert subscribe(s, SUB_NEW).startswith("FCWAL-OK/1 start=0 ")

    # a reload that would put a token in two roles keeps the running tokens
    write_tokens(workdir / "pub.tok", PUB, SUB_NEW)
    r.signal(signal.SIGHUP)
    wait_log(r, "keeping the running tokens")
    with connect(r.listen_addr) as s:
        assert subscribe(s, SUB_NEW, "latest").startswith("FCWAL-OK/1 ")

    # the subscriber that came with the old token was never dropped
    produce(walcat, r, 30, tokens["pub"])
    r.wait_durable(50)
    assert recv_frames(old, 30) == store_frames(r.datadir)[20:]
    old.close()


# ---- certificate reload ------------------------------------------------------

def peer_serial(s, pki, tmp):
    """The serial number and DER bytes of the relay's certificate. Read in
    this process where the certificate was verified: a subprocess here
    could run down the relay's auth-timeout on a loaded machine."""
    der = s.getpeercert(binary_form=True)
    info = s.getpeercert()
    if info and "serialNumber" in info:
        return int(info["serialNumber"], 16), der
    p = tmp / "peer.der"
    p.write_bytes(der)
    out = _openssl("x509", "-inform", "DER", "-in", str(p), "-noout",
                   "-serial", cwd=tmp)
    return int(out.strip().split("=", 1)[1], 16), der


def test_certificate_reload(relays, walcat, pki, tokens, workdir):
    cert = workdir / "relay.crt"
    cert.write_bytes((pki.dir / "server.crt").read_bytes())
    r = relays("a", ["--tls-cert", cert, "--tls-key", pki.path("server.key")] +
               auth_args(tokens))
    produce(walcat, r, 40, tokens["pub"])
    r.wait_durable(40)
    ctx = client_ctx(pki.path("ca.crt"))
    first = tls_connect(r.listen_addr, ctx)
    assert peer_serial(first, pki, workdir)[0] == pki.serial("server.crt")
    assert subscribe(first).startswith("FCWAL-OK/1 start=0 ")
    assert recv_frames(first, 40) == store_frames(r.datadir)

    # a broken certificate: the log says why, the old one keeps working
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n"
                     b"-----END CERTIFICATE-----\n")
    r.signal(signal.SIGHUP)
    wait_log(r, "keeping the running certificates")
    line = [l for l in r.read_log().splitlines()
            if "keeping the running certificates" in l][-1]
    assert str(cert) in line and "TLS certificate" in line, line
    for _ in range(3):
        with tls_connect(r.listen_addr, ctx) as s:
            serial, der = peer_serial(s, pki, workdir)
            assert serial == pki.serial("server.crt")
            assert der == pki.der("server.crt")
            assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
            assert recv_frames(s, 40) == store_frames(r.datadir)

    # fixed with a new certificate: new connections see it
    cert.write_bytes((pki.dir / "server2.crt").read_bytes())
    r.signal(signal.SIGHUP)
    wait_log(r, "reload: TLS certificates reloaded")
    with tls_connect(r.listen_addr, ctx) as s:
        serial, der = peer_serial(s, pki, workdir)
        assert serial == pki.serial("server2.crt") != pki.serial("server.crt")
        assert der == pki.der("server2.crt")
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        assert recv_frames(s, 40) == store_frames(r.datadir)

    # the connection made before both reloads still streams
    produce(walcat, r, 10, tokens["pub"])
    r.wait_durable(50)
    assert recv_frames(first, 10) == store_frames(r.datadir)[40:]
    first.close()


# ---- a reload applies exactly what it says it applies -------------------------

def write_conf(path, keys):
    """A [walrelay] config file with these keys (None: left out)."""
    path.write_text("[walrelay]\n" + "".join(
        f"{k} = {v}\n" for k, v in keys.items() if v is not None))
    return path


RELOAD_DONE = ("reload: tokens and limits reloaded", "; keeping the running")


def sighup(r):
    """SIGHUP, then wait until the reload has ended (applied or not)."""
    before = sum(log_count(r, t) for t in RELOAD_DONE)
    r.signal(signal.SIGHUP)
    wait_until(lambda: sum(log_count(r, t) for t in RELOAD_DONE) > before,
               10, "the reload to end")


def not_applied(key, was, now):
    return (f"reload: {key} changed from {was} to {now}; ")


def assert_not_applied(r, key, was, now):
    lines = [l for l in r.read_log().splitlines()
             if not_applied(key, was, now) in l]
    assert len(lines) == 1, r.read_log()[-3000:]
    assert lines[0].endswith(f"takes a restart to apply: not applied, "
                             f"{key} stays {was}"), lines[0]


def tls_conf(pki, **more):
    keys = {"tls-cert": pki.path("server.crt"),
            "tls-key": pki.path("server.key")}
    keys.update({k.replace("_", "-"): v for k, v in more.items()})
    return keys


def test_reload_cannot_turn_client_verification_off(relays, walcat, pki,
                                                     tokens, workdir):
    keys = tls_conf(pki, tls_ca=pki.path("ca.crt"), tls_verify_client="true")
    cf = write_conf(workdir / "a.conf", keys)
    r = relays("a", ["-c", cf] + auth_args(tokens))
    produce(walcat, r, 20, tokens["pub"])
    r.wait_durable(20)

    keys["tls-verify-client"] = "false"
    write_conf(cf, keys)
    sighup(r)
    # a client without a certificate is still refused
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_ctx(pki.path("ca.crt"), max_version=version)
        assert attempt_without_good_cert(r.listen_addr, ctx) == b""
    ctx = client_ctx(pki.path("ca.crt"), pki.path("client.crt"),
                     pki.path("client.key"))
    with tls_connect(r.listen_addr, ctx) as s:
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        assert recv_frames(s, 20) == store_frames(r.datadir)
    # and the log says so
    assert_not_applied(r, "tls-verify-client", "true", "false")
    assert "0 changed keys applied, 1 not applied" in r.read_log()

    # later reloads compare with the running value: the file agrees again
    keys["tls-verify-client"] = "true"
    write_conf(cf, keys)
    sighup(r)
    assert log_count(r, "reload: tls-verify-client changed") == 1
    assert log_count(r, "0 changed keys applied, 0 not applied") == 1


def test_reload_cannot_turn_client_verification_on(relays, walcat, pki,
                                                    tokens, workdir):
    keys = tls_conf(pki, tls_ca=pki.path("ca.crt"), tls_verify_client="false")
    cf = write_conf(workdir / "a.conf", keys)
    r = relays("a", ["-c", cf] + auth_args(tokens))
    produce(walcat, r, 20, tokens["pub"])
    r.wait_durable(20)

    keys["tls-verify-client"] = "true"
    write_conf(cf, keys)
    sighup(r)
    # the running setting holds: no client certificate needed until a restart
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt"))) as s:
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        assert recv_frames(s, 20) == store_frames(r.datadir)
    assert_not_applied(r, "tls-verify-client", "false", "true")


def test_reload_without_certificate_keeps_tls_on(relays, walcat, pki, tokens,
                                                 workdir):
    keys = tls_conf(pki)
    cf = write_conf(workdir / "a.conf", keys)
    r = relays("a", ["-c", cf] + auth_args(tokens))
    produce(walcat, r, 20, tokens["pub"])
    r.wait_durable(20)

    write_conf(cf, {})
    sighup(r)
    log = r.read_log()
    for key in ("tls-cert", "tls-key"):
        line = [l for l in log.splitlines()
                if f"reload: {key} changed from " in l]
        assert len(line) == 1, log[-3000:]
        assert line[0].endswith(
            f"changed from {keys[key]} to not set; setting or removing it "
            f"takes a restart to apply: not applied, {key} stays "
            f"{keys[key]}"), line[0]
    # TLS stays on: plain TCP gets nothing, TLS streams
    s = connect(r.listen_addr)
    s.sendall(sub_line(SUB))
    assert assert_closed_without_frames(s) == b""
    s.close()
    with tls_connect(r.listen_addr, client_ctx(pki.path("ca.crt"))) as s:
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        assert recv_frames(s, 20) == store_frames(r.datadir)


@pytest.fixture
def pulling(relays, pki, tokens, tls_upstream, workdir):
    """b pulls from a over TLS (server name localhost) and serves its own
    subscribers over TLS, configured by a file it reloads: (a, b, keys,
    path); b.crt and up-ca.crt are copies b's config names."""
    a = tls_upstream
    (workdir / "b.crt").write_bytes((pki.dir / "server.crt").read_bytes())
    (workdir / "up-ca.crt").write_bytes((pki.dir / "ca.crt").read_bytes())
    keys = {"tls-cert": workdir / "b.crt", "tls-key": pki.path("server.key"),
            "upstream": a.listen_addr, "upstream-protocol": "sub",
            "upstream-tls": "true", "upstream-tls-ca": workdir / "up-ca.crt",
            "upstream-tls-server-name": "localhost",
            "upstream-token-file": tokens["up"],
            "upstream-backoff-min": "50", "upstream-backoff-max": "200",
            "subscribe-token-file": tokens["sub"]}
    cf = write_conf(workdir / "b.conf", keys)
    b = relays("b", ["-c", cf], ingest=False)
    b.wait_durable(200)
    return a, b, keys, cf


def upstream_restarts_and_b_follows(a, b, walcat, tokens, total):
    """Stop and start a: b must connect again (with its running client
    context) and take what a gets next."""
    assert a.stop() == 0
    a.start()
    produce(walcat, a, 50, tokens["pub"])
    a.wait_durable(total)
    b.wait_durable(total)
    assert store_frames(b.datadir) == store_frames(a.datadir)


def test_reload_keeps_upstream_server_name(pulling, walcat, tokens):
    a, b, keys, cf = pulling
    keys["upstream-tls-server-name"] = "relay-b.example.net"
    write_conf(cf, keys)
    sighup(b)
    upstream_restarts_and_b_follows(a, b, walcat, tokens, 250)
    assert "hostname mismatch" not in b.read_log()
    assert_not_applied(b, "upstream-tls-server-name", "localhost",
                       "relay-b.example.net")
    assert "TLS certificates reloaded (listeners and upstream)" in b.read_log()


def test_reload_with_a_broken_file_keeps_both_contexts(pulling, pki, walcat,
                                                       tokens, workdir):
    a, b, keys, cf = pulling
    ctx = client_ctx(pki.path("ca.crt"))
    # a new listener certificate that loads, an upstream CA that does not
    (workdir / "b.crt").write_bytes((pki.dir / "server2.crt").read_bytes())
    (workdir / "up-ca.crt").write_bytes(
        b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    sighup(b)
    # neither context changed: the listener still shows the old certificate
    with tls_connect(b.listen_addr, ctx) as s:
        assert peer_serial(s, pki, workdir)[0] == pki.serial("server.crt")
        assert subscribe(s).startswith("FCWAL-OK/1 start=0 ")
        assert recv_frames(s, 200) == store_frames(b.datadir)
    # and the pull connection still verifies the upstream with the old CA
    upstream_restarts_and_b_follows(a, b, walcat, tokens, 250)
    # the log says why, and that nothing was applied
    line = [l for l in b.read_log().splitlines() if "reload: " in l][-1]
    assert "TLS CA " + str(workdir / "up-ca.crt") in line, line
    assert line.endswith("; keeping the running certificates, tokens and "
                         "config"), line
    assert "TLS certificates reloaded" not in b.read_log()

    # fixed: both reload, new connections see the new certificate
    (workdir / "up-ca.crt").write_bytes((pki.dir / "ca.crt").read_bytes())
    sighup(b)
    assert "TLS certificates reloaded (listeners and upstream)" in b.read_log()
    with tls_connect(b.listen_addr, ctx) as s:
        assert peer_serial(s, pki, workdir)[0] == pki.serial("server2.crt")


# ---- open only on loopback ---------------------------------------------------

def run_relay_briefly(walrelay, workdir, args, env=None):
    p = subprocess.Popen([str(walrelay), "--data-dir", str(workdir / "d"),
                          "--http", "none", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **(env or {})))
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"walrelay {args} started instead of refusing")
    rep = sanitizer_report(err)
    assert rep is None, f"sanitizer report:\n{rep}"
    return p.returncode, err


def test_non_loopback_without_token_refuses_to_start(walrelay, workdir, tokens):
    port = free_port()
    rc, err = run_relay_briefly(walrelay, workdir, [
        "--ingest", f"127.0.0.1:{free_port()}", "--listen", f"0.0.0.0:{port}"])
    assert rc != 0
    assert "--subscribe-token-file" in err and "--allow-unauthenticated" in err, err
    assert f"0.0.0.0:{port}" in err
    rc, err = run_relay_briefly(walrelay, workdir, [
        "--ingest", f"0.0.0.0:{free_port()}",
        "--listen", f"127.0.0.1:{free_port()}"])
    assert rc != 0
    assert "--publish-token-file" in err and "--allow-unauthenticated" in err, err
    # tokens for the other listener do not count
    rc, err = run_relay_briefly(walrelay, workdir, [
        "--ingest", f"127.0.0.1:{free_port()}", "--listen", f"0.0.0.0:{port}",
        "--publish-token-file", tokens["pub"]])
    assert rc != 0 and "--subscribe-token-file" in err, err


def test_unloadable_certificate_refuses_to_start(walrelay, workdir, pki):
    bad = workdir / "bad.crt"
    bad.write_text("not a certificate\n")
    for args, what in (
            (["--tls-cert", bad, "--tls-key", pki.path("server.key")],
             f"TLS certificate {bad}"),
            (["--tls-cert", pki.path("server.crt"),
              "--tls-key", pki.path("client.key")],
             "key values mismatch"),
            (["--tls-cert", pki.path("server.crt")], "tls-key is not")):
        rc, err = run_relay_briefly(walrelay, workdir, [
            "--ingest", f"127.0.0.1:{free_port()}",
            "--listen", f"127.0.0.1:{free_port()}", *map(str, args)])
        assert rc != 0
        assert what in err, err


@pytest.mark.parametrize("how", ["allow-unauthenticated", "token"])
def test_non_loopback_starts_when_told_or_with_tokens(relays, walcat, tokens, how):
    port = free_port()
    args = ["--listen", f"0.0.0.0:{port}"]
    args += ["--allow-unauthenticated"] if how == "allow-unauthenticated" \
        else ["--subscribe-token-file", tokens["sub"]]
    r = relays("a", args, listen=False)
    produce(walcat, r, 5, tokens["pub"])
    r.wait_durable(5)
    # only ever talk to it over loopback
    with connect(f"127.0.0.1:{port}") as s:
        assert subscribe(s, SUB).startswith("FCWAL-OK/1 start=0 ")
        assert len(recv_frames(s, 5)) == 5


# ---- limits under abuse ------------------------------------------------------

def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} file descriptors; the hard limit "
                    f"(RLIMIT_NOFILE) is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def garbage_payloads(rng, n):
    """Junk a subscriber port sees from scanners and broken clients."""
    kinds = []
    for i in range(n):
        k = i % 8
        if k == 0:
            p = rng.randbytes(rng.randrange(1, 3000))
        elif k == 1:
            p = b"A" * rng.randrange(1024, 5000)            # over-long line
        elif k == 2:
            p = b"FCWAL-SUB/1 " + SUB.encode()[:rng.randrange(1, len(SUB))]  # half
        elif k == 3:
            p = sub_line("wrong-" + str(i))
        elif k == 4:
            p = b"FCWAL-SUB/1 x y z=\xff\n"                 # bad request
        elif k == 5:
            p = b"FCWAL-AUTH/1 guess-%d\r\n" % i
        elif k == 6:
            p = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        else:
            p = b"FCWAL-SUB/1 " + b"9" * 2000 + b"\n"      # over-long SUB line
        kinds.append(p)
    return kinds


def test_abuse_idle_and_garbage_connections(relays, walcat, tokens):
    n_idle, n_junk, n_frames = 1000, 1000, 20000
    raise_nofile(n_idle + n_junk + 500)
    r = relays("a", auth_args(tokens) + [
        "--auth-timeout", "2s", "--max-conns-per-ip", "5000",
        "--max-subscribers", "5000"])

    legit = connect(r.listen_addr, timeout=30)
    assert subscribe(legit, SUB).startswith("FCWAL-OK/1 start=0 ")
    got = {}

    def reader():
        try:
            got["frames"] = recv_frames(legit, n_frames)
        except Exception as e:      # reported by the main thread
            got["error"] = e
    t = threading.Thread(target=reader)
    t.start()
    producer = subprocess.Popen(
        [str(walcat), "produce", "--quiet", "--count", str(n_frames),
         "--rate", "8000", "--token-file", tokens["pub"], r.ingest_addr],
        stderr=subprocess.PIPE, text=True)

    rng = random.Random(1234)
    sel = selectors.DefaultSelector()
    conns = []      # [socket, kind, connected_at, closed_at, data]
    try:
        payloads = garbage_payloads(rng, n_junk)
        for i in range(n_idle + n_junk):
            # taken before connect(): the relay cannot accept earlier, so
            # a slow test process cannot make a connection look short-lived
            t0 = time.monotonic()
            s = connect(r.listen_addr, timeout=10)
            c = {"s": s, "t0": t0, "data": bytearray(),
                 "end": None, "how": None,
                 "kind": "idle" if i % 2 == 0 else "junk"}
            if c["kind"] == "junk":
                c["payload"] = payloads[i // 2]
                try:
                    s.sendall(c["payload"])
                except (ConnectionResetError, BrokenPipeError):
                    pass
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, c)
            conns.append(c)
        t_last = time.monotonic()
        deadline = t_last + 2.0 + 2.0
        open_ = len(conns)
        while open_ > 0 and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                c = key.data
                try:
                    b = c["s"].recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    b, c["how"] = b"", "reset"
                except BlockingIOError:
                    continue
                if b:
                    c["data"] += b
                    continue
                c["end"] = time.monotonic()
                c["how"] = c["how"] or "eof"
                sel.unregister(c["s"])
                open_ -= 1
        assert open_ == 0, (f"{open_} bad connections still open 2 s after "
                            f"the auth timeout")
        for c in conns:
            assert b"FCW2" not in c["data"], (c["kind"], c.get("payload", b"")[:80])
            if c["data"]:
                assert c["data"].startswith(b"FCWAL-ERR/1 ") and \
                    c["data"].count(b"\n") == 1, bytes(c["data"][:200])
            if c["kind"] == "idle":
                assert c["data"] == b""
                life = c["end"] - c["t0"]
                assert life >= 1.95, f"idle connection closed after {life:.3f} s"
        # refusals were counted
        m = r.metrics()
        assert m[REJ % "timeout"] >= n_idle
        assert m[REJ % "auth"] >= n_junk // 8
        assert m[REJ % "request"] >= n_junk // 8
    finally:
        for c in conns:
            c["s"].close()
        sel.close()
        assert producer.wait(120) == 0, producer.stderr.read()
        t.join(60)
        legit.close()
    assert "error" not in got, got.get("error")
    r.wait_durable(n_frames)
    assert got["frames"] == store_frames(r.datadir)
    # the relay still serves
    with connect(r.listen_addr) as s:
        assert subscribe(s, SUB, n_frames - 10).startswith("FCWAL-OK/1 ")
        assert recv_frames(s, 10) == store_frames(r.datadir)[-10:]


def test_max_conns_per_ip(relays, walcat, tokens):
    r = relays("a", auth_args(tokens) + ["--max-conns-per-ip", "3"])
    produce(walcat, r, 5, tokens["pub"])
    r.wait_durable(5)
    held = [connect(r.listen_addr) for _ in range(3)]
    # all three were accepted: they are handshaking
    s = held[0]
    assert subscribe(s, SUB).startswith("FCWAL-OK/1 start=0 ")
    assert len(recv_frames(s, 5)) == 5
    t0 = time.monotonic()
    extra = connect(r.listen_addr)
    try:
        extra.sendall(sub_line(SUB))
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert assert_closed_without_frames(extra) == b""
    assert time.monotonic() - t0 < 2.0
    extra.close()
    r.wait_metric(REJ % "limit", lambda v: v == 1)
    assert "max-conns-per-ip" in r.read_log()
    # the limit is the subscriber port's: a publisher from the same address
    # still gets in, its frame is stored and streamed
    pub = connect(r.ingest_addr)
    pub.sendall(f"FCWAL-AUTH/1 {PUB}\n".encode() +
                fcw2util.frame(fcw2util.OP_SET, b"k", b"v"))
    r.wait_durable(6)
    pub.close()
    assert recv_frames(s, 1) == store_frames(r.datadir)[5:]
    assert get_metric(r, UREJ % "limit") == 0
    # the others still work
    for s in held[1:]:
        assert subscribe(s, SUB).startswith("FCWAL-OK/1 start=0 ")
    # one goes away: room for one more
    held.pop().close()

    def one_more():
        s = connect(r.listen_addr)
        try:
            s.sendall(sub_line(SUB))
            return recv_line(s).startswith("FCWAL-OK/1 ") and s
        except (EOFError, ConnectionResetError, BrokenPipeError):
            s.close()
            return False
    s = wait_until(one_more, 5, "a connection slot to free up")
    held.append(s)
    for s in held:
        s.close()


def test_subscribers_at_the_limit_leave_room_for_the_publisher(relays,
                                                                tokens):
    """The sidecar case: subscribers from 127.0.0.1 fill their port's
    per-address limit (the default, 64); the cache's exporter, from
    127.0.0.1 too, still connects and every frame is stored and sent."""
    r = relays("a", auth_args(tokens))
    subs = []
    try:
        for _ in range(64):
            s = connect(r.listen_addr)
            assert subscribe(s, SUB).startswith("FCWAL-OK/1 start=0 ")
            subs.append(s)
        with connect(r.listen_addr) as s:        # the limit is reached
            try_send(s, sub_line(SUB))
            assert assert_closed_without_frames(s) == b""
        r.wait_metric(REJ % "limit", lambda v: v == 1)

        frames = [fcw2util.frame(fcw2util.OP_SET, b"k%d" % i, b"v" * 40, ts=i)
                  for i in range(10)]
        pub = connect(r.ingest_addr)
        try_send(pub, f"FCWAL-AUTH/1 {PUB}\n".encode() + b"".join(frames))
        r.wait_durable(10, timeout=10)
        pub.close()
        assert store_frames(r.datadir) == frames
        assert get_metric(r, UREJ % "limit") == 0
        for s in subs:
            assert recv_frames(s, 10) == frames
    finally:
        for s in subs:
            s.close()


def test_max_ingest_conns_per_ip(relays, walcat, tokens):
    """The ingest port has its own per-address limit: full ingest slots
    refuse the next ingest connection but not subscribers."""
    r = relays("a", auth_args(tokens) + ["--max-ingest-conns-per-ip", "2",
                                         "--max-conns-per-ip", "2"])
    held = [connect(r.ingest_addr) for _ in range(2)]
    for h in held:
        h.sendall(b"FCWAL-AUTH/1 ")     # handshaking, inside auth-timeout
    extra = connect(r.ingest_addr)
    try_send(extra, f"FCWAL-AUTH/1 {PUB}\n".encode() +
             fcw2util.frame(fcw2util.OP_SET, b"k", b"v"))
    assert assert_closed_without_frames(extra) == b""
    extra.close()
    r.wait_metric(UREJ % "limit", lambda v: v == 1)
    assert "(max-ingest-conns-per-ip)" in r.read_log()
    assert r.status()["next"] == 0
    # the subscriber port keeps its own room
    subs = [connect(r.listen_addr) for _ in range(2)]
    for s in subs:
        assert subscribe(s, SUB).startswith("FCWAL-OK/1 ")
    # a slot frees up: a publisher gets in
    held.pop().close()
    wait_log(r, "connection closed by peer")
    produce(walcat, r, 3, tokens["pub"])
    r.wait_durable(3)
    for s in subs:
        assert len(recv_frames(s, 3)) == 3
        s.close()
    for h in held:
        h.close()


def test_idle_ingest_connections_close_at_auth_timeout(relays, walcat):
    """Without publish tokens, ingest connections that send nothing hold
    the address's ingest slots only until auth-timeout; the publisher that
    streams may stay silent as long as it likes; a real producer then gets
    in."""
    r = relays("a", ["--auth-timeout", "1s"])
    first = [fcw2util.frame(fcw2util.OP_SET, b"p%d" % i, b"x" * 30, ts=i)
             for i in range(10)]
    pub = connect(r.ingest_addr)
    pub.sendall(first[0])
    r.wait_durable(1)
    # the publisher and 15 idle connections fill the default limit (16)
    t0 = time.monotonic()
    idle = [connect(r.ingest_addr) for _ in range(15)]
    probe = connect(r.ingest_addr)
    probe_data, probe_how = drain(probe, timeout=0.5)
    probe.close()
    ends = []
    for s in idle:
        data, how = drain(s, timeout=max(0.1, t0 + 4.0 - time.monotonic()))
        assert how != "open", "an idle ingest connection was still open " \
            "3 s after auth-timeout (1 s)"
        assert data == b""
        ends.append(time.monotonic() - t0)
        s.close()
    assert min(ends) >= 0.95, ends
    # while they were there, the address had no ingest slot left
    assert probe_how != "open" and probe_data == b""
    m = r.metrics()
    assert m[UREJ % "timeout"] == 15
    assert m[UREJ % "limit"] == 1
    assert "closed: no frame or auth line within 1000 ms (auth-timeout)" \
        in r.read_log()
    # silent for longer than auth-timeout, the publisher is still streaming
    st = r.status()["upstream"]
    assert st["connected"] and st["peer"] == f"127.0.0.1:{pub.getsockname()[1]}"
    pub.sendall(b"".join(first[1:]))
    r.wait_durable(10)
    pub.close()
    assert store_frames(r.datadir) == first
    out = subprocess.run([str(walcat), "produce", "--quiet", "--count", "100",
                          r.ingest_addr], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    r.wait_durable(110)
    assert len(store_frames(r.datadir)) == 110


def test_max_subscribers_busy(relays, walcat, tokens):
    r = relays("a", auth_args(tokens) + ["--max-subscribers", "2"])
    subs = []
    for _ in range(2):
        s = connect(r.listen_addr)
        assert subscribe(s, SUB, "latest").startswith("FCWAL-OK/1 ")
        subs.append(s)
    with connect(r.listen_addr) as s:
        reply = subscribe(s, SUB, "latest")
        assert reply.startswith("FCWAL-ERR/1 busy "), reply
        assert assert_closed_without_frames(s) == b""
    with connect(r.listen_addr) as s:
        s.sendall(f"FCWAL-AUTH/1 {SUB}\n".encode())
        assert assert_closed_without_frames(s) == b""
    assert get_metric(r, REJ % "busy") == 2
    # the two served ones stream
    produce(walcat, r, 7, tokens["pub"])
    for s in subs:
        assert recv_frames(s, 7) == store_frames(r.datadir)
        s.close()


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based); [0] here is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_exhaustion_does_not_spin(relays, walcat, tokens):
    limit = 64

    def low_nofile():
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    r = relays("a", auth_args(tokens) + ["--auth-timeout", "60s",
                                         "--max-conns-per-ip", "1000"],
               preexec_fn=low_nofile)
    produce(walcat, r, 30, tokens["pub"])
    r.wait_durable(30)
    flood = []
    try:
        for _ in range(limit + 40):
            flood.append(connect(r.listen_addr))
        wait_log(r, "pausing the listener")
        # a scraper arriving meanwhile must not make it spin either
        flood.append(connect(f"127.0.0.1:{r.http_port}"))
        flood.append(connect(r.ingest_addr))
        c0 = proc_cpu_seconds(r.proc.pid)
        t0 = time.monotonic()
        time.sleep(2.0)     # a measuring window, not a wait for an event
        cpu = proc_cpu_seconds(r.proc.pid) - c0
        window = time.monotonic() - t0
        assert cpu < 0.5, f"the relay used {cpu:.2f} s of CPU in {window:.2f} s"
        assert "Too many open files" in r.read_log()
        assert r.alive()
    finally:
        for s in flood:
            s.close()

    def served():
        try:
            with connect(r.listen_addr, timeout=2) as s:
                if not subscribe(s, SUB).startswith("FCWAL-OK/1 start=0 "):
                    return False
                return recv_frames(s, 30) == store_frames(r.datadir)
        except (OSError, EOFError):
            return False
    assert wait_until(served, 10, "a normal subscriber to be served")
    code, _ = r.http("/healthz")
    assert code == 200
