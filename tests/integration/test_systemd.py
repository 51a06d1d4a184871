"""The service manager's view: sd_notify messages on a NOTIFY_SOCKET the
test binds (READY=1 once the listeners accept, RELOADING=1/READY=1 around
a SIGHUP, STOPPING=1 on SIGTERM, WATCHDOG=1 pings, STATUS= lines)."""

import signal
import socket
import time

import pytest

from relayutil import connect, relay_factory, wait_until

TIMEOUT = 30


def built_with_systemd(builddir):
    try:
        text = (builddir / "autoconfig.h").read_text()
    except OSError:
        return False
    return "#define HAVE_LIBSYSTEMD 1" in text


@pytest.fixture
def notify(builddir, tmp_path):
    """A unix datagram socket standing in for systemd's notify socket."""
    if not built_with_systemd(builddir):
        pytest.skip("built without libsystemd (configure --without-systemd "
                    "or no libsystemd-dev): sd_notify is a no-op")
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    yield Notify(s, path)
    s.close()


class Notify:
    def __init__(self, sock, path):
        self.sock = sock
        self.path = path
        self.msgs = []          # (monotonic time received, {key: value})

    def poll(self, timeout=0.0):
        """Read what has arrived, waiting up to timeout for the first."""
        self.sock.settimeout(timeout if timeout > 0 else 0)
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, socket.timeout):
                return
            kv = dict(line.split("=", 1) for line in
                      data.decode().split("\n") if "=" in line)
            self.msgs.append((time.monotonic(), kv))
            self.sock.settimeout(0)

    def wait_for(self, key, value=None, after=0, timeout=TIMEOUT):
        """Index of the first message from index after with key (=value)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.msgs)):
                kv = self.msgs[i][1]
                if key in kv and (value is None or kv[key] == value):
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} in {self.msgs[after:]}")
            self.poll(min(left, 0.5))


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir, "relay", start=False)


def test_ready_reload_stop(relays, notify):
    r = relays(env={"NOTIFY_SOCKET": notify.path})
    r.start(wait=False)
    i = notify.wait_for("READY", "1")
    # READY=1 comes once every listener accepts: connect at once
    for addr in (r.ingest_addr, r.listen_addr, f"127.0.0.1:{r.http_port}"):
        connect(addr, timeout=5).close()
    assert r.http("/healthz")[0] == 200
    status = notify.msgs[i][1]["STATUS"]
    assert status.startswith("ready: next=0 "), status
    assert "subscribers=0" in status and "upstream=disconnected" in status
    # nothing said it was ready before
    assert not any("READY" in kv for _, kv in notify.msgs[:i])

    # reload: RELOADING=1 with the monotonic clock now, then READY=1
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    n = len(notify.msgs)
    r.signal(signal.SIGHUP)
    j = notify.wait_for("RELOADING", "1", after=n)
    usec = int(notify.msgs[j][1]["MONOTONIC_USEC"])
    after = time.clock_gettime(time.CLOCK_MONOTONIC)
    assert before * 1e6 - 1000 <= usec <= after * 1e6 + 1000, (before, usec, after)
    k = notify.wait_for("READY", "1", after=j + 1)
    assert notify.msgs[k][1]["STATUS"].startswith("ready: ")
    wait_until(lambda: "reload:" in r.read_log(), TIMEOUT, "the reload's log line")

    # stop: STOPPING=1
    n = len(notify.msgs)
    r.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1", after=n)
    assert r.proc.wait(TIMEOUT) == 0
    r.stop()


def test_watchdog(relays, notify):
    """With WATCHDOG_USEC set (WatchdogSec=), WATCHDOG=1 every half of it,
    from the event loop."""
    r = relays(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
    r.start(wait=False)
    notify.wait_for("READY", "1")
    first = notify.wait_for("WATCHDOG", "1")
    last = first
    for _ in range(4):
        last = notify.wait_for("WATCHDOG", "1", after=last + 1)
    span = notify.msgs[last][0] - notify.msgs[first][0]
    # 4 intervals of 200 ms: not the 400 ms of the limit, nor much faster
    assert 0.6 <= span <= 1.6, span
    assert "watchdog every 200 ms" in r.read_log()
    assert r.stop() == 0


def test_watchdog_for_another_pid_is_ignored(relays, notify):
    """WATCHDOG_PID names the process the watchdog is for (systemd sets
    it): a child that inherits the variables does not ping."""
    r = relays(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000",
                    "WATCHDOG_PID": "1"})
    r.start(wait=False)
    i = notify.wait_for("READY", "1")
    wait_until(lambda: r.http("/healthz")[0] == 200, TIMEOUT, "healthz")
    # three watchdog periods: no ping in any of them
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        notify.poll(0.1)
    assert not any("WATCHDOG" in kv for _, kv in notify.msgs[i:]), notify.msgs
    assert r.stop() == 0

