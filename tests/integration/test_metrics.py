"""/metrics as an SRE uses it: what the series say about a running relay
with subscribers, that Prometheus accepts the page (promtool), and that
the shipped dashboard and alert rules use only series the relay exports.

promtool comes with Debian's prometheus package (./install-deps installs
it); the tests that need it skip with a message where it is missing."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from fcw2util import OP_SET, frame
from relayutil import connect, recv_line, relay_factory, wait_until

TOKEN = "metrics-sub-token"
FRAMES = 6000
VBYTES = 1000


def gen_frame(i):
    return frame(OP_SET, b"key-%010d" % i, b"v" * VBYTES)


FRAME_LEN = len(gen_frame(0))      # every test frame has this length


@pytest.fixture
def relays(walrelay, workdir):
    yield from relay_factory(walrelay, workdir)


@pytest.fixture
def tokfile(workdir):
    p = workdir / "sub.tok"
    p.write_text(TOKEN + "\n")
    return p


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install "
                    "prometheus; ./install-deps does)")
    return path


def feed(r, first, last):
    s = connect(r.ingest_addr)
    s.sendall(b"".join(gen_frame(i) for i in range(first, last)))
    s.close()
    r.wait_durable(last)


def subscriber(r, frm, rcvbuf=None):
    """A resuming subscriber from frame frm (accepted): its socket."""
    s = connect(r.listen_addr, rcvbuf=rcvbuf)
    s.sendall(f"FCWAL-SUB/1 {TOKEN} {frm}\n".encode())
    assert recv_line(s).startswith("FCWAL-OK/1 ")
    return s


def scrape(r):
    code, body = r.http("/metrics")
    assert code == 200, body
    return body


def parse(body):
    """{name: {labels-string: value}}, the series of the process and of
    the default stream, without its stream="default" label."""
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        assert m, line
        labels = m.group(2) or ""
        if 'stream="' in labels:
            if 'stream="default"' not in labels:
                continue
            labels = labels.replace('stream="default",', "").replace(
                'stream="default"', "")
            labels = "" if labels == "{}" else labels
        out.setdefault(m.group(1), {})[labels] = float(m.group(3))
    return out


def sub_series(m, name, sub_id, kind):
    return m[name].get(f'{{id="{sub_id}",kind="{kind}"}}')


def sub_id(r, sock):
    """The relay's id (sub-N) of the subscriber on this socket."""
    peer = "%s:%d" % sock.getsockname()
    for s in r.status()["subscribers"]:
        if s["peer"] == peer:
            return s["id"]
    raise AssertionError(f"{peer} not in /v1/status")


def status_sub(r, sub_id):
    for s in r.status()["subscribers"]:
        if s["id"] == sub_id:
            return s
    raise AssertionError(f"{sub_id} not in /v1/status")


def stalled_and_live(relays, tokfile, *more):
    """A relay with a subscriber that reads nothing (its position on disk
    behind a 1 MiB tail), FRAMES frames fed, and a caught-up one that read
    everything. Returns the relay, the two sockets and their ids."""
    r = relays("r", ["--subscribe-token-file", tokfile, "--tail-memory", "1M",
                     "--segment-bytes", "1M", *more])
    stalled = subscriber(r, 0, rcvbuf=4096)
    feed(r, 0, FRAMES)
    live = subscriber(r, FRAMES - 10)
    got = b""
    while len(got) < 10 * FRAME_LEN:
        got += live.recv(1 << 16)
    assert len(got) == 10 * FRAME_LEN
    ids = sub_id(r, stalled), sub_id(r, live)
    wait_until(lambda: status_sub(r, ids[1])["position"] == FRAMES, 10,
               "the live subscriber to be caught up")
    return r, stalled, live, ids


def test_scrape_with_subscribers_passes_promtool(relays, tokfile):
    tool = promtool()
    r, stalled, live, (a, b) = stalled_and_live(relays, tokfile,
                                        "--metrics-max-subscribers", "1")
    extra = subscriber(r, FRAMES)      # beyond the limit
    wait_until(lambda: len(r.status()["subscribers"]) == 3, 10,
               "three streaming subscribers")
    body = scrape(r)
    p = subprocess.run([tool, "check", "metrics"], input=body, text=True,
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout + p.stderr == "", \
        p.stdout + p.stderr
    m = parse(body)
    # one series for the first, the two others together as "other"
    assert set(m["walrelay_subscriber_lag_frames"]) == {
        '{id="%s",kind="resuming"}' % a, '{id="other",kind="other"}'}
    assert m["walrelay_subscribers_aggregated"][""] == 2
    assert m["walrelay_subscriber_lag_frames"]['{id="other",kind="other"}'] == 0
    assert m["walrelay_subscriber_position"]['{id="other",kind="other"}'] == FRAMES
    assert m["walrelay_build_info"][
        '{version="%s",crc="%s"}' % (r.status()["version"],
                                      next(iter(m["walrelay_build_info"]))
                                      .split('crc="')[1][:-2])] == 1
    assert re.fullmatch(r'\{version="[^"]+",crc="(ISA-L|zlib)"\}',
                        next(iter(m["walrelay_build_info"])))
    # process metrics, from /proc
    # (the scrape's own connection was open while it was counted)
    n = len(os.listdir(f"/proc/{r.proc.pid}/fd"))
    assert n <= m["process_open_fds"][""] <= n + 1
    assert m["process_resident_memory_bytes"][""] > 1 << 20
    assert abs(m["process_start_time_seconds"][""] -
               os.stat(f"/proc/{r.proc.pid}").st_mtime) < 60
    assert m["process_cpu_seconds_total"][""] > 0
    # durable frames went through the histograms
    assert m["walrelay_ingest_to_durable_seconds_count"][""] == FRAMES
    assert m["walrelay_ingest_to_durable_seconds_bucket"]['{le="+Inf"}'] == FRAMES
    assert m["walrelay_storage_fsync_duration_seconds_count"][""] == \
        m["walrelay_storage_fsyncs_total"][""] > 0
    assert m["walrelay_ready"][""] == 1
    assert m["walrelay_storage_failing"][""] == 0
    assert set(m["walrelay_storage_errors_total"].values()) == {0}
    for s in (stalled, live, extra):
        s.close()


def test_subscriber_lag(relays, tokfile):
    r, stalled, live, (a, b) = stalled_and_live(relays, tokfile)
    m = parse(scrape(r))
    st = status_sub(r, a)
    lag = FRAMES - st["position"]
    # behind the 1 MiB tail (under 1000 frames): its next frames are on disk
    assert lag > 1100, lag
    # the stalled one reads from disk: its bytes are estimated within the
    # segment file (exact to a frame with frames of one size)
    assert sub_series(m, "walrelay_subscriber_lag_frames", a,
                      "resuming") == lag
    nb = sub_series(m, "walrelay_subscriber_lag_bytes", a, "resuming")
    assert abs(nb - lag * FRAME_LEN) <= FRAME_LEN, (nb, lag * FRAME_LEN)
    assert sub_series(m, "walrelay_subscriber_position", a,
                      "resuming") == st["position"]
    # the caught-up one has no lag
    for name in ("frames", "bytes", "seconds"):
        assert sub_series(m, f"walrelay_subscriber_lag_{name}", b,
                          "resuming") == 0
    # the age of the oldest unsent frame grows while the subscriber stalls
    t0 = sub_series(m, "walrelay_subscriber_lag_seconds", a, "resuming")
    assert t0 > 0
    wait_until(lambda: sub_series(parse(scrape(r)),
                                  "walrelay_subscriber_lag_seconds", a,
                                  "resuming") >= t0 + 1.0, 10,
               "the stalled one's lag to grow by a second")
    # and the age of the last frame received too
    age = parse(scrape(r))["walrelay_upstream_last_frame_age_seconds"][""]
    assert age >= 1.0
    feed(r, FRAMES, FRAMES + 1)
    assert parse(scrape(r))["walrelay_upstream_last_frame_age_seconds"][""] < age
    stalled.close()
    live.close()


def test_lag_in_the_tail_is_exact(relays, tokfile):
    """A subscriber that stalls within the in-memory tail: its lag bytes
    are the bytes of the frames it has not been sent, exactly."""
    r = relays("r", ["--subscribe-token-file", tokfile])
    s = subscriber(r, 0, rcvbuf=4096)
    a = sub_id(r, s)
    feed(r, 0, FRAMES)      # the 64 MiB tail holds them all
    m = parse(scrape(r))
    pos = status_sub(r, a)["position"]
    assert pos < FRAMES
    assert sub_series(m, "walrelay_subscriber_lag_frames", a,
                      "resuming") == FRAMES - pos
    assert sub_series(m, "walrelay_subscriber_lag_bytes", a,
                      "resuming") == (FRAMES - pos) * FRAME_LEN
    s.close()


def test_retention_margin(relays, tokfile):
    """The margin says how many more bytes can be stored before retention
    by size deletes the segment file that holds the subscriber's
    position."""
    limit = 8 << 20
    r, stalled, live, (a, b) = stalled_and_live(relays, tokfile, "--retain-bytes",
                                        str(limit))
    st = r.status()
    pos = status_sub(r, a)["position"]
    segs = st["segments"]
    k = max(i for i, g in enumerate(segs) if g["first"] <= pos)
    want = limit - sum(g["bytes"] for g in segs[k:])
    m = parse(scrape(r))
    assert sub_series(m, "walrelay_subscriber_retention_margin_bytes",
                      a, "resuming") == want
    assert sub_series(m, "walrelay_subscriber_retention_margin_bytes",
                      b, "resuming") == limit - segs[-1]["bytes"]
    assert m["walrelay_retain_bytes"][""] == limit
    # without retain-age there is no margin in seconds
    assert m.get("walrelay_subscriber_retention_margin_seconds", {}) == {}
    stalled.close()
    live.close()


def test_ready_matches_readyz(relays, walrelay, workdir):
    """walrelay_ready says what /readyz says: here 0 while the relay stops
    with a subscriber still draining."""
    r = relays("r", ["--shutdown-timeout", "30"])
    assert parse(scrape(r))["walrelay_ready"][""] == 1
    assert r.http("/readyz")[0] == 200
    # a subscriber that reads nothing keeps the stopping relay alive
    feed(r, 0, FRAMES)
    s = connect(r.listen_addr, rcvbuf=4096)
    s.sendall(b"FCWAL-SUB/1 - 0\n")
    assert recv_line(s).startswith("FCWAL-OK/1 ")
    r.signal(signal.SIGTERM)
    wait_until(lambda: r.http("/readyz")[0] == 503, 10, "/readyz to say 503")
    assert parse(scrape(r))["walrelay_ready"][""] == 0
    s.close()


# ---- the shipped dashboard and alert rules --------------------------------

def exported_names(body):
    names = set()
    for line in body.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)$", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
    return names


def expr_metrics(expr):
    """The metric names an expression uses (walrelay_*, process_*, up)."""
    expr = re.sub(r'"[^"]*"', '""', expr)       # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)        # matchers
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if w.startswith(("walrelay_", "process_"))}


def test_dashboard_uses_only_exported_series(relays, tokfile, srcdir):
    r, stalled, live, (a, b) = stalled_and_live(relays, tokfile, "--retain-bytes",
                                        "64M")
    names = exported_names(scrape(r))
    dash = json.loads((srcdir / "etc/grafana/walrelay.json").read_text())
    used = set()
    titles = []
    for p in dash["panels"]:
        titles.append(p["title"])
        for t in p.get("targets", []):
            used |= expr_metrics(t["expr"])
    assert used, "no expressions found"
    assert used <= names, sorted(used - names)
    # what an operator looks for first
    for want in ("walrelay_frames_received_total", "walrelay_frames_sent_total",
                 "walrelay_subscriber_lag_seconds", "walrelay_store_bytes",
                 "walrelay_storage_fsync_duration_seconds_bucket",
                 "walrelay_storage_errors_total"):
        assert want in used, want
    for t in dash["templating"]["list"]:
        used_t = expr_metrics(t.get("query", "") if isinstance(t.get("query"), str) else "")
        assert used_t <= names, t
    stalled.close()
    live.close()


def test_alert_rules(relays, tokfile, srcdir):
    tool = promtool()
    rules = srcdir / "etc/prometheus/walrelay-rules.yml"
    p = subprocess.run([tool, "check", "rules", str(rules)], text=True,
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([tool, "test", "rules",
                        str(srcdir / "tests/prometheus/walrelay-rules.test.yml")],
                       text=True, capture_output=True, timeout=60)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    # every series an alert uses is exported (the retention margins only
    # with retention set), up is Prometheus's own
    r, stalled, live, (a, b) = stalled_and_live(relays, tokfile, "--retain-bytes",
                                        "64M", "--retain-age", "1h")
    names = exported_names(scrape(r)) | {"up"}
    used = set()
    for expr in re.findall(r"^\s+expr: (?:>\n)?((?:.*\n)*?)\s+(?:for|labels):",
                           rules.read_text(), re.M):
        used |= expr_metrics(expr) | ({"up"} if re.search(r"\bup\{", expr)
                                      else set())
    assert "walrelay_subscriber_lag_seconds" in used
    assert used <= names, sorted(used - names)
    stalled.close()
    live.close()


# ---- reload: what changed, and the counters --------------------------------

def test_reload_logs_each_change_and_counts(relays, workdir):
    pub = workdir / "pub.tok"
    pub.write_text("publish-one\n")
    conf = workdir / "r.conf"
    conf.write_text(f"[walrelay]\nlog-level = info\n"
                    f"publish-token-file = {pub}\n")
    r = relays("r", ["-c", conf])
    m = parse(scrape(r))
    assert m["walrelay_reloads_total"] == {'{result="success"}': 0,
                                           '{result="failure"}': 0}
    assert m["walrelay_reload_last_success"][""] == 1
    assert m["walrelay_reload_last_timestamp_seconds"][""] == 0

    # the log level and the tokens change: both are logged
    conf.write_text(f"[walrelay]\nlog-level = debug\n"
                    f"publish-token-file = {pub}\nsegment-bytes = 2M\n")
    pub.write_text("publish-two\npublish-three\n")
    before = time.time()
    r.signal(signal.SIGHUP)
    wait_until(lambda: parse(scrape(r))["walrelay_reloads_total"]
               ['{result="success"}'] == 1, 10, "the reload")
    log = r.read_log()
    assert "reload: log-level changed from info to debug: applied" in log, log
    assert "reload: publish tokens changed: 2 added, 1 removed, 2 now: " \
        "applied" in log, log
    assert re.search(r"reload: segment-bytes changed from 64M to 2M; it "
                     r"takes a restart", log), log
    assert "publish-two" not in log and "publish-one" not in log
    m = parse(scrape(r))
    assert m["walrelay_reload_last_success"][""] == 1
    assert before - 1 <= m["walrelay_reload_last_timestamp_seconds"][""] \
        <= time.time() + 1

    # a broken file: counted as a failure, the running config stays
    conf.write_text("[walrelay]\nlog-level = loud\n")
    r.signal(signal.SIGHUP)
    wait_until(lambda: parse(scrape(r))["walrelay_reloads_total"]
               ['{result="failure"}'] == 1, 10, "the failed reload")
    m = parse(scrape(r))
    assert m["walrelay_reload_last_success"][""] == 0
    assert m["walrelay_reloads_total"]['{result="success"}'] == 1
