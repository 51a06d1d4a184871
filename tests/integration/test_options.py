"""walrelay's command line as an operator meets it: an option never taken
as another's value, --check-config checking what a start would find
without changing anything, --print-config with the source of each value."""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest

from relayutil import free_port

TIMEOUT = 30


def run(*args, env=None, **kw):
    e = dict(os.environ)
    for k in ("WALRELAY_PUBLISH_TOKENS", "WALRELAY_SUBSCRIBE_TOKENS",
              "WALRELAY_UPSTREAM_TOKEN"):
        e.pop(k, None)
    if env:
        e.update(env)
    return subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=e, **kw)


def ports():
    return ["--ingest", f"127.0.0.1:{free_port()}",
            "--listen", f"127.0.0.1:{free_port()}",
            "--http", f"127.0.0.1:{free_port()}"]


def test_option_is_not_a_value(walrelay, workdir):
    r = run(walrelay, "--data-dir", "--check-config", cwd=workdir)
    assert r.returncode == 2
    assert "option '--data-dir' needs a value, but the next argument " \
           "'--check-config' is an option" in r.stderr
    # nothing started, nothing created
    assert os.listdir(workdir) == []


def test_check_config_changes_nothing(walrelay, workdir):
    d = workdir / "new-store"
    r = run(walrelay, "--data-dir", d, *ports(), "--check-config")
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert not d.exists(), "--check-config created the data directory"


def test_check_config_data_dir(walrelay, workdir):
    r = run(walrelay, "--data-dir", "/etc/passwd", *ports(), "--check-config")
    assert r.returncode == 2
    assert "data-dir /etc/passwd is not a directory" in r.stderr
    r = run(walrelay, "--data-dir", workdir / "no" / "such", *ports(),
            "--check-config")
    assert r.returncode == 2
    assert "does not exist and cannot be created" in r.stderr
    # in a file: the same
    conf = workdir / "w.conf"
    conf.write_text("[walrelay]\ndata-dir = /etc/passwd\n")
    r = run(walrelay, "-c", conf, *ports(), "--check-config")
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_check_config_unwritable_data_dir(walrelay):
    """As a user who cannot write there (root can write anywhere: the test
    runs the check as nobody then)."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="wr-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        pre = None
        if os.geteuid() == 0:
            def pre():
                os.setgid(65534)
                os.setuid(65534)
            for p in [walrelay, base] + list(pathlib.Path(walrelay).parents):
                if not os.stat(p).st_mode & 0o001:
                    pytest.skip(f"{p} is not reachable by nobody, the user "
                                "the check runs as")
        r = run(walrelay, "--data-dir", ro, *ports(), "--check-config",
                preexec_fn=pre)
        assert r.returncode == 2, r.stdout
        assert f"data-dir {ro} is not writable" in r.stderr
        r = run(walrelay, "--data-dir", ro / "sub", *ports(),
                "--check-config", preexec_fn=pre)
        assert r.returncode == 2
        assert f"its parent {ro} is not writable" in r.stderr
    finally:
        shutil.rmtree(base)


def test_port_in_use(walrelay, workdir):
    """A taken port is found by --check-config, and by a start before it
    creates a store."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    taken = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        d = workdir / "store"
        args = ["--data-dir", d, "--ingest", f"127.0.0.1:{free_port()}",
                "--listen", taken, "--http", f"127.0.0.1:{free_port()}"]
        r = run(walrelay, *args, "--check-config")
        assert r.returncode == 2
        assert f"subscriber listener {taken}: cannot bind: Address already " \
               "in use" in r.stderr
        r = run(walrelay, *args)
        assert r.returncode != 0
        assert "Address already in use" in r.stderr
        assert not d.exists(), "a start that cannot listen created a store"
    finally:
        s.close()


def test_check_config_certificates_and_tokens(walrelay, workdir):
    bad = workdir / "bad.pem"
    bad.write_text("not a certificate\n")
    r = run(walrelay, "--data-dir", workdir / "d", *ports(),
            "--tls-cert", bad, "--tls-key", bad, "--check-config")
    assert r.returncode == 2
    assert "bad.pem" in r.stderr
    r = run(walrelay, "--data-dir", workdir / "d", *ports(),
            "--publish-token-file", workdir / "missing", "--check-config")
    assert r.returncode == 2 and "missing" in r.stderr


def test_check_config_on_a_running_relay(walrelay, workdir):
    """The relay holds its ports: the check says so instead of failing."""
    d = workdir / "run"
    args = ["--data-dir", d, *ports()]
    log = open(workdir / "log", "wb")
    p = subprocess.Popen([str(walrelay), *map(str, args)], stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        from relayutil import wait_until
        wait_until(lambda: (d / "walrelay.lock").exists() and
                   b"started (pid" in (workdir / "log").read_bytes(),
                   TIMEOUT, "the relay to start")
        r = run(walrelay, *args, "--check-config")
        assert r.returncode == 0, r.stderr
        assert f"in use by a running walrelay (pid {p.pid})" in r.stdout
        assert "configuration OK" in r.stdout
    finally:
        p.terminate()
        p.wait(TIMEOUT)
        log.close()


def test_print_config(walrelay, workdir):
    conf = workdir / "w.conf"
    conf.write_text("[walrelay]\n\nsegment-bytes = 1M\nlog-level = debug\n")
    r = run(walrelay, "-c", conf, "--log-level", "warn", "--print-config",
            env={"WALRELAY_PUBLISH_TOKENS": "sekrit-publish-token"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"segment-bytes = 1M  # file {conf}:3\n" in out
    assert "log-level = warn  # command line (--log-level)\n" in out
    assert "listen = 127.0.0.1:7632  # default\n" in out
    assert "# WALRELAY_PUBLISH_TOKENS = ********  # environment" in out
    assert "sekrit" not in out
    # the output is a config file giving the same configuration
    again = workdir / "again.conf"
    again.write_text(out)
    r2 = run(walrelay, "-c", again, "--print-config")
    assert r2.returncode == 0, r2.stderr
    keys = lambda t: [l.split("  #")[0] for l in
                      t.split("# Environment")[0].splitlines()]
    assert keys(r2.stdout) == keys(out)
