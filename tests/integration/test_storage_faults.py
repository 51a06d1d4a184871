"""Storage faults against the real daemon: write errors injected into the
running relay (tests/fault/wrfault.so, preloaded) while a subscriber reads
live, and a corrupt frame inside the newest segment at start.

What a user relies on: a subscriber never receives a frame that is not
whole (and, in always mode, durable) in the store; once the fault clears
the relay catches up by itself and the store and every subscriber agree
byte for byte, also after a restart; a corrupt frame is never silently
replaced. Waits are for conditions with deadlines, never sleeps.
"""

import os
import re
import signal
import socket
import subprocess
import threading

import pytest

import relayutil
from relayutil import (FaultControl, connect, hard_timeout_fixture,
                       relays_fixture, split_frames, store_frames,
                       tokfile_fixture, wait_until)

TOKEN = "fault-tok"
TEST_TIMEOUT = 240


hard_timeout = hard_timeout_fixture(TEST_TIMEOUT)
relays = relays_fixture(start=False)
tokfile = tokfile_fixture(TOKEN)


def gen_frame(i, vbytes):
    return relayutil.gen_frame(i, vbytes, tag=b"f")


def store_bytes(datadir):
    names = sorted(n for n in os.listdir(datadir) if n.endswith(".wal"))
    data = b""
    for n in names:
        with open(os.path.join(datadir, n), "rb") as f:
            data += f.read()
    return data


def Reader(addr, frm=0, epoch=None):
    """A resuming subscriber from `frm` that keeps every byte it gets."""
    return relayutil.SubReader(addr, TOKEN, frm,
                               f" epoch={epoch}" if epoch else "")


class Feeder(threading.Thread):
    def __init__(self, addr, frames):
        super().__init__(daemon=True)
        self.addr, self.frames, self.error = addr, frames, None
        self.start()

    def run(self):
        try:
            s = connect(self.addr, timeout=120)
            for i in range(0, len(self.frames), 32):
                s.sendall(b"".join(self.frames[i:i + 32]))
            s.shutdown(socket.SHUT_WR)
            s.close()
        except Exception as e:      # reported by the test
            self.error = e


def durable(r):
    return r.status()["durable"]


def check_sub_within_store(r, sub):
    """What the subscriber got is whole frames and exactly the start of
    the store: never a frame the store does not hold whole (the store is
    read after the subscriber, and only grows while the fault lasts)."""
    got = sub.snapshot()
    disk = store_bytes(r.datadir)
    ngot, ndisk = len(got), len(disk)
    split_frames(got)               # whole frames only
    assert ngot <= ndisk, f"subscriber got {ngot} bytes, the store holds {ndisk}"
    same = disk[:ngot] == got
    assert same, "subscriber got bytes the store does not hold"
    split_frames(disk)              # and the store holds whole frames only
    return got


def check_sub_ahead_of_store(r, sub, frames):
    """fsync never: the subscriber is sent every frame the relay took
    (status "next") though the writer fails, in order, from the first,
    byte-identical; the store holds whole frames, the start of the same
    stream. The frames may still be on their way when the check starts,
    so it waits until the subscriber holds what the relay took."""
    stream = b"".join(frames)
    took = len(b"".join(frames[:r.status()["next"]]))
    wait_until(lambda: len(sub.snapshot()) >= took, 60,
               f"the subscriber to get the {took} bytes the relay took")
    got = sub.snapshot()
    disk = store_bytes(r.datadir)
    assert stream[:len(got)] == got, "subscriber got bytes nobody sent"
    split_frames(got[:took])
    split_frames(disk)
    assert stream[:len(disk)] == disk, "the store holds bytes nobody sent"
    return got


@pytest.mark.parametrize("mode,err", [("always", "EIO"),
                                      ("always", "ENOSPC"),
                                      ("interval:20", "EFBIG"),
                                      ("never", "EIO")])
def test_write_fault_live_subscriber(relays, workdir, builddir, tokfile, mode,
                                     err):
    """Short writes then errors at several offsets inside the chunks the
    writer is given, with a live resuming subscriber."""
    fc = FaultControl(builddir, workdir)
    r = relays(args=["--subscribe-token-file", tokfile, "--fsync", mode,
                     "--segment-bytes", "1M"], env=fc.env())
    r.start()
    vbytes = 1500
    frames = [gen_frame(i, vbytes + (i * 97) % 4000) for i in range(2400)]
    sub = Reader(r.listen_addr)
    first = 200
    f = Feeder(r.ingest_addr, frames[:first])
    r.wait_durable(first, timeout=60)
    f.join(60)
    assert f.error is None, f.error
    sent = first
    # the fault starts this many bytes into the next writes: inside a
    # frame, inside a chunk, or the first byte
    for k, after in enumerate([0, 1, 4100, 9000, 30001, 65000, 150000]):
        datadir_glob = os.path.join(r.datadir, "*.wal")
        hits = len(fc.hits())
        fc.set(f"op=write,path={datadir_glob},after={after},err={err}")
        batch = frames[sent:sent + 200]
        f = Feeder(r.ingest_addr, batch)
        wait_until(lambda: r.metric("walrelay_storage_failing") == 1, 60,
                   "the write fault to hit")
        assert len(fc.hits()) > hits
        code, body = r.http("/readyz")
        assert code == 503 and "storage error" in body, (code, body)
        # while the fault lasts, twice: the subscriber holds nothing the
        # store does not hold whole (always, interval); with never it is
        # sent what the relay took without waiting for the writer, whole
        # frames in order, and the store holds whole frames only
        if mode != "never":
            got = check_sub_within_store(r, sub)
            assert len(split_frames(got)) <= durable(r)
            check_sub_within_store(r, sub)
        else:
            check_sub_ahead_of_store(r, sub, frames)
            check_sub_ahead_of_store(r, sub, frames)
        # the operator clears the fault and says so
        fc.clear()
        r.signal(signal.SIGHUP)
        f.join(120)
        assert f.error is None, f.error
        sent += len(batch)
        r.wait_durable(sent, timeout=120)
        wait_until(lambda: len(sub.snapshot()) == len(b"".join(frames[:sent])),
                   60, f"the subscriber to catch up (round {k})")
        assert sub.snapshot() == b"".join(frames[:sent])
        assert store_bytes(r.datadir) == b"".join(frames[:sent])
        wait_until(lambda: r.http("/readyz")[0] == 200, 30, "ready again")

    epoch = sub.epoch
    sub.close()
    assert r.stop() == 0
    log = r.read_log()
    assert "disk writes work again" in log
    # after a restart: same epoch, same frames, nothing cut
    r.start()
    st = r.status()
    assert st["epoch"] == epoch and st["next"] == sent
    assert "cutting" not in r.read_log()
    sub2 = Reader(r.listen_addr, 0, epoch)
    wait_until(lambda: len(sub2.snapshot()) == len(b"".join(frames[:sent])),
               60, "a resumed subscriber to read the store")
    assert sub2.snapshot() == b"".join(frames[:sent])
    assert store_frames(r.datadir) == frames[:sent]
    sub2.close()
    assert r.stop() == 0


def test_corrupt_frame_in_newest_segment_is_kept(relays, workdir, walcat,
                                                tokfile):
    """A flipped bit in a frame in the middle of the newest segment, with
    whole valid frames after it: at the restart the frames are kept (same
    epoch, same next sequence), nothing from the bad frame on is served,
    /readyz and the log say so, walcat verify reports the corruption."""
    r = relays(args=["--subscribe-token-file", tokfile])
    r.start()
    frames = [gen_frame(i, 300) for i in range(30)]
    f = Feeder(r.ingest_addr, frames)
    r.wait_durable(30)
    f.join(60)
    epoch = r.status()["epoch"]
    assert r.stop() == 0

    names = sorted(n for n in os.listdir(r.datadir) if n.endswith(".wal"))
    path = os.path.join(r.datadir, names[-1])
    data = bytearray(open(path, "rb").read())
    assert bytes(data) == b"".join(frames)
    bad = len(b"".join(frames[:20]))
    data[bad + 40] ^= 0x04                  # inside frame 20's payload
    with open(path, "wb") as fh:
        fh.write(data)

    r.start()
    st = r.status()
    assert st["epoch"] == epoch
    assert st["next"] == 30
    assert open(path, "rb").read() == bytes(data)   # nothing cut
    code, body = r.http("/readyz")
    assert code == 503 and "corrupt" in body, (code, body)
    log = r.read_log()
    assert re.search(r"frame crc mismatch at offset %d \(sequence 20\) with "
                     r"9 whole valid frames after it" % bad, log), log[-3000:]
    p = subprocess.run([str(walcat), "verify", r.datadir],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr

    # a subscriber from the start gets the 20 frames before the bad one,
    # and no frame from it on, even when new frames arrive
    sub = Reader(r.listen_addr, 0, epoch)
    wait_until(lambda: len(sub.snapshot()) >= bad, 30, "frames 0-19")
    f = Feeder(r.ingest_addr, [gen_frame(i, 300) for i in range(30, 40)])
    r.wait_durable(40)
    f.join(60)
    assert r.status()["next"] == 40
    got = sub.snapshot()
    assert got[:bad] == b"".join(frames[:20])
    assert not got[bad:].startswith(b"FCW2"), "served past the bad frame"
    sub.close()
    assert r.stop() == 0
