"""A corrupt frame in a stored segment, and `walcat repair`.

A corrupt frame stops only a reader that has to pass it: live subscribers,
new live subscribers and readers starting after it keep streaming.
`walcat repair` replaces the corrupt bytes with the same frames fetched
from another relay of the chain. Waits are for conditions with deadlines.
"""

import os
import re
import socket
import subprocess
import threading

from relayutil import (OK_RE, connect, gen_frame, hard_timeout_fixture,
                       read_to_eof, recv_frames, recv_line, refused,
                       relays_fixture, segment_names, split_frames,
                       store_frames, subscribe, tokfile_fixture, wait_until)

TOKEN = "corrupt-tok"
TEST_TIMEOUT = 150
CORRUPT_DISC = 'walrelay_subscribers_disconnected_total{reason="corrupt"}'
CORRUPT_REJ = 'walrelay_subscribers_rejected_total{reason="corrupt"}'


hard_timeout = hard_timeout_fixture(TEST_TIMEOUT)
tokfile = tokfile_fixture(TOKEN)
relays = relays_fixture()


def feed(relay, first, last):
    s = connect(relay.ingest_addr)
    for i in range(first, last, 64):
        s.sendall(b"".join(gen_frame(j) for j in range(i, min(i + 64, last))))
    s.shutdown(socket.SHUT_WR)
    s.close()
    relay.wait_durable(last)


def sub_ok(addr, frm):
    s = subscribe(addr, f"FCWAL-SUB/1 {TOKEN} {frm}")
    line = recv_line(s)
    m = OK_RE.match(line)
    assert m, line
    return s, int(m.group(1)), m.group(4)


def seg_base(name):
    return int(name.split("-")[1])


def flip_bit(datadir, seg_index, frame_index):
    """Flip one bit inside the payload of a frame of a sealed segment;
    returns (segment name, file offset of the frame, its sequence, the
    first sequence of the next segment)."""
    names = segment_names(datadir)
    name = names[seg_index]
    path = os.path.join(datadir, name)
    with open(path, "rb") as f:
        data = f.read()
    frames = split_frames(data)
    off = sum(len(f) for f in frames[:frame_index])
    with open(path, "r+b") as f:
        f.seek(off + 20)
        b = f.read(1)
        f.seek(off + 20)
        f.write(bytes([b[0] ^ 0x10]))
    return (name, off, seg_base(name) + frame_index,
            seg_base(names[seg_index + 1]))


class Live(threading.Thread):
    """A subscriber that collects whole frames until told to stop."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.buf, self.frames = sock, bytearray(), []
        self.eof = False
        self.sock.settimeout(60)

    def run(self):
        while True:
            try:
                b = self.sock.recv(1 << 16)
            except OSError:
                return
            if not b:
                self.eof = True
                return
            self.buf += b
            while len(self.buf) >= 9:
                end = 13 + int.from_bytes(self.buf[5:9], "little")
                if end > len(self.buf):
                    break
                self.frames.append(bytes(self.buf[:end]))
                del self.buf[:end]

    def wait_frames(self, n):
        wait_until(lambda: len(self.frames) >= n, 30, f"{n} frames")


def corrupt_store(relays, tokfile, total=3000):
    """A relay whose third segment has a flipped bit: (relay, name, offset,
    bad sequence, end of the unreadable range)."""
    r = relays("r", ["--subscribe-token-file", tokfile, "--segment-bytes",
                     "256k", "--tail-memory", "1M"])
    feed(r, 0, total)
    assert r.stop() == 0
    name, off, bad, end = flip_bit(r.datadir, 2, 7)
    r.start()
    return r, name, off, bad, end


def test_corrupt_frame_stops_only_its_reader(relays, tokfile):
    total = 3000
    r, name, off, bad, end = corrupt_store(relays, tokfile, total)
    stored = store_frames(r.datadir)     # the flipped frame is still whole

    stock = Live(subscribe(r.listen_addr, f"FCWAL-AUTH/1 {TOKEN}"))
    s, start, epoch = sub_ok(r.listen_addr, "latest")
    assert start == total
    resuming = Live(s)
    for t in (stock, resuming):
        t.start()
    wait_until(lambda: len(r.status()["subscribers"]) == 2, 15,
               "two live subscribers")

    # a reader catching up from the start has to pass the corrupt frame
    reader = subscribe(r.listen_addr, f"FCWAL-SUB/1 {TOKEN} 0")
    assert OK_RE.match(recv_line(reader))
    got = split_frames(read_to_eof(reader))    # asserts: no partial frame
    reader.close()
    assert len(got) == bad
    assert got == stored[:bad]
    r.wait_metric(CORRUPT_DISC, lambda v: v == 1)

    # everyone else keeps streaming
    feed(r, total, total + 30)
    stock.wait_frames(30)
    resuming.wait_frames(30)
    want = [gen_frame(i) for i in range(total, total + 30)]
    assert stock.frames == want and resuming.frames == want

    # new live subscribers, and one starting after the corrupt segment
    stock2 = Live(subscribe(r.listen_addr, f"FCWAL-AUTH/1 {TOKEN}"))
    s, start, _ = sub_ok(r.listen_addr, "latest")
    resuming2 = Live(s)
    s, start3, _ = sub_ok(r.listen_addr, end)
    assert start3 == end
    after = Live(s)
    for t in (stock2, resuming2, after):
        t.start()
    wait_until(lambda: len(r.status()["subscribers"]) == 5, 15,
               "five streaming subscribers")
    feed(r, total + 30, total + 40)
    for t in (stock, resuming):
        t.wait_frames(40)
        assert t.frames == [gen_frame(i) for i in range(total, total + 40)]
    for t in (stock2, resuming2):
        t.wait_frames(10)
        assert t.frames == [gen_frame(i) for i in range(total + 30, total + 40)]
    after.wait_frames(total + 40 - end)
    assert after.frames == [gen_frame(i) for i in range(end, total + 40)]
    assert not any(t.eof for t in (stock, resuming, stock2, resuming2, after))

    # asking for an unreadable frame: refused before the OK line
    for frm in (bad, end - 1):
        line = refused(r.listen_addr, f"FCWAL-SUB/1 {TOKEN} {frm} epoch={epoch}")
        assert line.startswith(f"FCWAL-ERR/1 corrupt first={bad} end={end} "), line
    assert r.metric(CORRUPT_REJ) == 2
    assert r.metric(CORRUPT_DISC) == 1     # only the reader that passed it

    log = r.read_log()
    m = re.search(r"(sub-\d+): resuming subscriber \S+ reached sequence "
                  + str(bad) + r", which cannot be served: (\S+) is corrupt at "
                  r"offset (\d+)", log)
    assert m, log[-3000:]
    assert m.group(2).endswith(name) and int(m.group(3)) == off
    assert re.search(m.group(1) + r": disconnected: every frame before the "
                     r"corrupt one was sent \(peer \S+, at sequence " + str(bad),
                     log)

    code, body = r.http("/readyz")
    assert code == 503
    assert f"corrupt frame at sequence {bad} ({name}, offset {off})" in body
    st = r.status()
    assert st["corrupt"] == {"segment": name, "offset": off, "first": bad,
                             "end": end}
    assert r.metric("walrelay_corrupt_sequence") == bad
    for t in (stock, resuming, stock2, resuming2, after):
        t.sock.close()


# ---- walcat repair ----------------------------------------------------------

def run(walcat, *args, timeout=60):
    p = subprocess.run([str(walcat), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def flip_header_length(datadir, seg_index, frame_index):
    """Corrupt the length field of a frame of a sealed segment."""
    name = segment_names(datadir)[seg_index]
    path = os.path.join(datadir, name)
    with open(path, "rb") as f:
        frames = split_frames(f.read())
    off = sum(len(f) for f in frames[:frame_index])
    with open(path, "r+b") as f:
        f.seek(off + 6)
        b = f.read(1)
        f.seek(off + 6)
        f.write(bytes([b[0] ^ 0x01]))
    return name


def read_store(datadir):
    return {n: open(os.path.join(datadir, n), "rb").read()
            for n in segment_names(datadir)}


def test_walcat_repair_from_a_chain_relay(relays, tokfile, walcat):
    total = 3000
    common = ["--subscribe-token-file", tokfile, "--segment-bytes", "256k",
              "--upstream-backoff-max", "200"]
    a = relays("a", common)
    b = relays("b", common + ["--upstream", a.listen_addr, "--upstream-protocol",
                              "sub", "--upstream-token-file", tokfile],
               ingest=False)
    feed(a, 0, total)
    wait_until(lambda: b.status()["durable"] == total, 30, "B to catch up")
    assert b.status()["epoch"] == a.status()["epoch"]

    # the relay holds the data directory's lock while it runs
    rc, out, err = run(walcat, "repair", "--from", a.listen_addr,
                       "--token-file", tokfile, b.datadir)
    assert rc == 3, (out, err)
    assert "a walrelay is running on this directory" in err
    assert f"pid {b.proc.pid}" in err

    assert b.stop() == 0
    flip_bit(b.datadir, 1, 3)
    flip_header_length(b.datadir, 3, 10)
    rc, out, _ = run(walcat, "verify", b.datadir)
    assert rc == 2 and "corrupt=2" in out, out
    damaged = read_store(b.datadir)

    # a relay of another stream (same frames, another epoch) is refused
    c = relays("c", ["--subscribe-token-file", tokfile])
    feed(c, 0, total)
    assert c.status()["epoch"] != a.status()["epoch"]
    rc, out, err = run(walcat, "repair", "--from", c.listen_addr,
                       "--token-file", tokfile, b.datadir)
    assert rc == 2, (out, err)
    assert "FCWAL-ERR/1 epoch" in err and "not a relay of this store" in err
    assert "summary: repaired=0 not_repaired=2" in out
    assert read_store(b.datadir) == damaged        # nothing touched

    rc, out, err = run(walcat, "repair", "--from", a.listen_addr,
                       "--token-file", tokfile, b.datadir)
    assert rc == 0, (out, err)
    assert out.count(": replaced bytes ") == 2, out
    assert "summary: repaired=2 not_repaired=0" in out
    assert not [n for n in os.listdir(b.datadir) if n.endswith(".repair")]
    rc, out, _ = run(walcat, "verify", b.datadir)
    assert rc == 0 and "status=intact" in out, out
    assert store_frames(b.datadir) == store_frames(a.datadir)
    # an intact store: nothing to do
    rc, out, _ = run(walcat, "repair", "--from", a.listen_addr,
                     "--token-file", tokfile, b.datadir)
    assert rc == 0 and "nothing to repair" in out, out

    b.start()
    assert b.http("/readyz")[0] == 200
    s, start, epoch = sub_ok(b.listen_addr, 0)
    assert start == 0 and epoch == a.status()["epoch"]
    got = recv_frames(s, total)
    s.close()
    assert got == store_frames(a.datadir)
    assert b.metric(CORRUPT_DISC) == 0
