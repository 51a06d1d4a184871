"""The archive tier: sealed segments compressed into .wal.zst and still
served byte for byte (catch-up, FCWAL-SUB/1 from any position, zstd
subscribers), kill -9 at every step of archiving, a corrupt archived block,
and `walcat restore` from a data directory and from a relay.

Waits are for conditions with deadlines. The reference for every
comparison is the frames the test itself generated.
"""
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading

import pytest

from fcw2util import OP_SET, frame
from relayutil import (OK_RE, connect, hard_timeout_fixture, read_to_eof,
                       recv_frames, recv_line, relays_fixture, split_frames,
                       tokfile_fixture, wait_until)

TOKEN = "archive-tok"
TEST_TIMEOUT = 240
# small segments so that a few thousand frames make many of them
ARCHIVE_ARGS = ["--segment-bytes", "64K", "--archive-keep-raw", "1"]


hard_timeout = hard_timeout_fixture(TEST_TIMEOUT)
tokfile = tokfile_fixture(TOKEN)
relays = relays_fixture()


@pytest.fixture
def walrelay_hooks(builddir):
    path = builddir / "tests" / "walrelay-hooks"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built: run make check")
    return path


def gen_frame(i):
    """Frame i: a compressible value of a size that varies with i."""
    vbytes = 100 + (i * 7919) % 900
    unit = b"value-%07d " % (i % 50)
    value = (unit * (vbytes // len(unit) + 1))[:vbytes]
    # shards interleave: timestamps are not monotonic
    ts = 1700000000000 + i * 10 + (25 if i % 7 == 3 else 0)
    return frame(OP_SET, b"key-%08d" % (i % 3000), value, ts=ts)


def feed(relay, first, last, dies=False):
    """Send frames [first, last); dies: the relay may be killed meanwhile."""
    s = connect(relay.ingest_addr)
    try:
        for i in range(first, last, 64):
            s.sendall(b"".join(gen_frame(j)
                               for j in range(i, min(i + 64, last))))
        s.shutdown(socket.SHUT_WR)
    except OSError:
        if not dies:
            raise
    s.close()


def archived(datadir):
    return sorted(n for n in os.listdir(datadir) if n.endswith(".wal.zst"))


def files_by_base(datadir):
    out = {}
    for n in os.listdir(datadir):
        if n.startswith("segment-"):
            out.setdefault(int(n[8:28]), []).append(n)
    return out


def sub_ok(addr, frm, opts=""):
    s = connect(addr, timeout=30)
    s.sendall(f"FCWAL-SUB/1 {TOKEN} {frm}{opts}\n".encode())
    m = OK_RE.match(recv_line(s))
    assert m, "refused"
    return s, int(m.group(1)), int(m.group(3))


def read_frames(s, count, pace=None):
    """count whole frames; pace: sleep that long between reads."""
    out = []
    while len(out) < count:
        out += recv_frames(s, min(64, count - len(out)))
        if pace:
            threading.Event().wait(pace)
    return out


def wait_archived(r, n):
    wait_until(lambda: len(archived(r.datadir)) >= n and not any(
        x.endswith(".tmp") for x in os.listdir(r.datadir)), 60,
        f"{n} archived segments")


def archive_index(path):
    """The blocks of a .wal.zst: [(seq, nframes, zoff, zlen)]."""
    with open(path, "rb") as f:
        data = f.read()
    plen, magic = struct.unpack("<I4s", data[-8:])
    assert magic == b"WRAZ"
    p = data[len(data) - plen:]
    assert p[:8] == b"WRAIDX01"
    n = struct.unpack("<I", p[32:36])[0]
    out = []
    for i in range(n):
        e = p[40 + 40 * i:80 + 40 * i]
        seq, nf, _raw, _roff, zoff, zlen = struct.unpack("<QIIQQI", e[:36])
        out.append((seq, nf, zoff, zlen))
    return out


def test_archive_while_subscribers_read(relays, tokfile, walcat):
    total = 6000
    want = [gen_frame(i) for i in range(total)]
    r = relays("r", ["--subscribe-token-file", tokfile] + ARCHIVE_ARGS)
    feed(r, 0, total)
    r.wait_durable(total)

    # slow readers over the segments being archived: plain and zstd
    results = {}

    def reader(name, opts):
        if opts:
            # a real zstd client: walcat tail --zstd
            out = subprocess.run([walcat, "tail", "--from", "0", "--count",
                                  str(total), "--zstd", "--raw",
                                  "--token-file", str(tokfile),
                                  r.listen_addr], capture_output=True,
                                 timeout=120)
            assert out.returncode == 0, out.stderr
            results[name] = split_frames(out.stdout)
            return
        s, start, _ = sub_ok(r.listen_addr, 0, opts)
        assert start == 0
        results[name] = read_frames(s, total, pace=0.002)
        s.close()

    threads = [threading.Thread(target=reader, args=("plain", "")),
               threading.Thread(target=reader,
                                args=("zstd", " compress=zstd"))]
    for t in threads:
        t.start()
    wait_archived(r, 5)
    for t in threads:
        t.join()
    assert results["plain"] == want
    assert results["zstd"] == want

    # everything sealed but the newest is archived; read it all again
    st = r.status()
    wait_until(lambda: len(archived(r.datadir)) >= 10, 60, "archiving")
    s, _, _ = sub_ok(r.listen_addr, "earliest")
    assert read_frames(s, total) == want
    s.close()
    # a stock subscriber is live only; resuming ones from 200 random places
    rnd = random.Random(14)
    for seq in [rnd.randrange(total) for _ in range(200)]:
        k = min(40, total - seq)
        s, start, _ = sub_ok(r.listen_addr, seq)
        assert start == seq
        assert read_frames(s, k) == want[seq:seq + k], seq
        s.close()
    # one file per segment; retention counts the compressed bytes
    for base, names in files_by_base(r.datadir).items():
        assert len(names) == 1, names
    size = sum(os.path.getsize(os.path.join(r.datadir, n))
               for n in os.listdir(r.datadir) if n.startswith("segment-"))
    wait_until(lambda: r.metric("walrelay_store_bytes") == size, 10,
               "store bytes = file sizes")
    assert st["earliest"] == 0
    # walcat reads the archive
    out = subprocess.run([walcat, "verify", r.datadir], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"frames={total}" in out.stdout


@pytest.mark.parametrize("step", range(1, 8))
def test_kill9_at_each_archive_step(relays, tokfile, walrelay_hooks, step):
    """The relay is killed (SIGKILL) at step N of archiving a segment; after
    a restart every frame is served at the same sequence, from exactly one
    file per segment."""
    total = 3000
    want = [gen_frame(i) for i in range(total)]
    r = relays("r", ["--subscribe-token-file", tokfile] + ARCHIVE_ARGS,
               env={"WALRELAY_TEST_ARCHIVE_CRASH": str(step)}, start=False)
    r.binary = str(walrelay_hooks)
    r.start()
    # a live reader sees only durable frames: what it saw must survive
    s, _, _ = sub_ok(r.listen_addr, 0)
    s.settimeout(5)
    seen = bytearray()
    feed(r, 0, total, dies=True)
    while True:
        try:
            b = s.recv(1 << 16)
        except socket.timeout:
            if r.alive():
                continue
            break
        except ConnectionResetError:
            break
        if not b:
            break
        seen += b
    r.proc.wait()
    assert r.proc.returncode == -signal.SIGKILL
    m = re.search(rf"killed at archive step {step} \((segment-\S+\.wal\.zst)\)",
                  r.read_log())
    assert m, r.read_log()
    zname = m.group(1)
    s.close()
    seen = split_frames(bytes(seen[:_whole(seen)]))
    assert seen == want[:len(seen)]

    # restart with archiving off: what start-up made of the directory
    r.env = None
    r.extra = ["--subscribe-token-file", str(tokfile), "--segment-bytes",
               "64K"]
    r.start()
    log = r.read_log()
    n = r.status()["durable"]
    assert n >= len(seen)
    s, start, _ = sub_ok(r.listen_addr, 0)
    assert read_frames(s, n) == want[:n]
    s.close()
    assert not any(x.endswith(".tmp") for x in os.listdir(r.datadir)), log
    for base, names in files_by_base(r.datadir).items():
        assert len(names) == 1, names
    # before the rename the raw file serves, from it on the archive
    files = os.listdir(r.datadir)
    if step <= 2:
        assert zname[:-4] in files and zname not in files, files
    else:
        assert zname in files and zname[:-4] not in files, files


def _whole(buf):
    """Bytes of the whole frames at the start of buf."""
    off = 0
    while off + 9 <= len(buf):
        end = off + 13 + int.from_bytes(buf[off + 5:off + 9], "little")
        if end > len(buf):
            break
        off = end
    return off


def test_corrupt_archived_block_is_not_served(relays, tokfile, walcat):
    total = 4000
    want = [gen_frame(i) for i in range(total)]
    r = relays("r", ["--subscribe-token-file", tokfile] + ARCHIVE_ARGS)
    feed(r, 0, total)
    r.wait_durable(total)
    wait_archived(r, 3)
    assert r.stop() == 0
    name = archived(r.datadir)[1]
    path = os.path.join(r.datadir, name)
    blocks = archive_index(path)
    seq, nf, zoff, zlen = blocks[0]
    with open(path, "r+b") as f:
        f.seek(zoff + zlen // 2)
        b = f.read(1)
        f.seek(zoff + zlen // 2)
        f.write(bytes([b[0] ^ 0x20]))

    r.start()
    s, _, _ = sub_ok(r.listen_addr, 0)
    got = split_frames(read_to_eof(s))
    s.close()
    assert got == want[:seq]
    log = r.read_log()
    assert re.search(rf"{re.escape(name)}: corrupt block at offset {zoff}\b",
                     log), log
    assert re.search(rf"cannot be served: {re.escape(name)} is corrupt at "
                     rf"offset {zoff}\b", log), log
    # after the segment: served
    nxt = int(archived(r.datadir)[2][8:28])
    s, start, _ = sub_ok(r.listen_addr, nxt)
    assert read_frames(s, 10) == want[nxt:nxt + 10]
    s.close()
    assert r.stop() == 0
    out = subprocess.run([walcat, "verify", r.datadir], capture_output=True,
                         text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{name}: corrupt block at offset {zoff}" in out.stdout


def _restored(outdir):
    names = sorted(os.listdir(outdir))
    assert all(n.endswith(".wal") for n in names), names
    data = b""
    for n in names:
        with open(os.path.join(outdir, n), "rb") as f:
            data += f.read()
    return names, split_frames(data)


def test_restore_from_directory_and_relay(relays, tokfile, walcat, workdir):
    total = 5000
    want = [gen_frame(i) for i in range(total)]
    r = relays("r", ["--subscribe-token-file", tokfile] + ARCHIVE_ARGS)
    feed(r, 0, total)
    r.wait_durable(total)
    wait_archived(r, 5)

    def restore(*args):
        return subprocess.run([walcat, "restore", *map(str, args)],
                              capture_output=True, text=True)

    # from the data directory (raw and archived), cut at a sequence
    out = restore("--until-seq", 3210, "--segment-bytes", "100K", r.datadir,
                  workdir / "o1")
    assert out.returncode == 0, out.stderr
    names, got = _restored(workdir / "o1")
    assert got == want[:3211]
    assert len(names) > 1 and names[0].startswith("segment-" + "0" * 20)
    assert "restored 3211 frames" in out.stdout
    assert "sequences 0 to 3210" in out.stdout

    # over the network, the whole stream
    out = restore("--token-file", tokfile, r.listen_addr, workdir / "o2")
    assert out.returncode == 0, out.stderr
    assert _restored(workdir / "o2")[1] == want

    # a time: every frame up to the last one stamped at or before it
    t = 1700000000000 + 2500 * 10
    cut = max(i for i in range(total)
              if 1700000000000 + i * 10 + (25 if i % 7 == 3 else 0) <= t)
    later = sum(1 for i in range(cut + 1)
                if 1700000000000 + i * 10 + (25 if i % 7 == 3 else 0) > t)
    for src in (r.datadir, r.listen_addr):
        d = workdir / ("o3" + str(hash(str(src)) % 1000))
        args = ["--until-time", t] + (["--token-file", tokfile]
                                      if src == r.listen_addr else [])
        out = restore(*args, src, d)
        assert out.returncode == 0, out.stderr
        assert _restored(d)[1] == want[:cut + 1]
        assert f"{later} of them after the requested time" in out.stdout

    # a non-empty OUTDIR is refused unless --force
    out = restore("--until-seq", 10, r.datadir, workdir / "o1")
    assert out.returncode == 3 and "not empty" in out.stderr
    out = restore("--force", "--until-seq", 10, r.datadir, workdir / "o1")
    assert out.returncode == 0, out.stderr
    assert _restored(workdir / "o1")[1] == want[:11]
    # asking beyond the end says so
    out = restore("--until-seq", total + 5, r.datadir, workdir / "o4")
    assert out.returncode == 2 and "ends at sequence" in out.stderr


def test_restore_check_records(walcat, workdir):
    """A frame whose crc is right around a record whose own crc is wrong
    (the cache's recovery would fail on it): the default restore checks
    frame crcs; --check-records decodes every record and refuses it."""
    import zlib
    from fcw2util import record
    good = [gen_frame(i) for i in range(20)]
    rec = bytearray(record(OP_SET, b"bad", b"value", ts=1700000000000))
    rec[-1] ^= 0xff
    head = b"FCW2" + struct.pack("<BI", 0, len(rec)) + bytes(rec)
    bad = head + struct.pack("<I", zlib.crc32(head))
    src = workdir / "src"
    src.mkdir()
    (src / ("segment-%020d-1.wal" % 0)).write_bytes(
        b"".join(good[:10]) + bad + b"".join(good[11:]))
    out = subprocess.run([walcat, "restore", "--check-records", src,
                          workdir / "o1"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "offset" in out.stderr and "sequence 10" in out.stderr
    assert not any(n.endswith(".wal") for n in os.listdir(workdir / "o1"))
    out = subprocess.run([walcat, "restore", src, workdir / "o2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _restored(workdir / "o2")[1] == good[:10] + [bad] + good[11:]


def test_restore_large_frames_and_many_files(walcat, workdir):
    """Frames larger than restore's write buffers, between small ones, and
    output files cut every few frames: every byte in order, in files the
    cache reads."""
    rnd = random.Random(5)
    frames = []
    for i in range(60):
        size = rnd.choice([10, 1000, 5 << 20, 9 << 20]) if i % 7 == 3 \
            else rnd.randrange(1, 3000)
        frames.append(frame(OP_SET, b"k%d" % i, rnd.randbytes(size),
                            ts=1700000000000 + i))
    src = workdir / "src"
    src.mkdir()
    (src / ("segment-%020d-1.wal" % 0)).write_bytes(b"".join(frames[:30]))
    (src / ("segment-%020d-2.wal" % 30)).write_bytes(b"".join(frames[30:]))
    out = subprocess.run([walcat, "restore", "--segment-bytes", "1M", src,
                          workdir / "o"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names, got = _restored(workdir / "o")
    assert got == frames
    assert len(names) > 3
    for n in names:
        base = int(n.split("-")[1])
        with open(workdir / "o" / n, "rb") as f:
            assert f.read(len(frames[base])) == frames[base]


def test_restore_archived_damage_is_refused(relays, walcat, workdir):
    """walcat restore reads archived blocks by their index and checks every
    frame's crc: a damaged byte anywhere in a block (in the zstd headers,
    the literals or the sequences; some decode without a zstd error) stops
    the restore with the file and the block's offset, and nothing from the
    damaged block on is restored."""
    total = 4000
    want = [gen_frame(i) for i in range(total)]
    r = relays("r", ARCHIVE_ARGS)
    feed(r, 0, total)
    r.wait_durable(total)
    wait_archived(r, 3)
    assert r.stop() == 0
    name = archived(r.datadir)[1]
    path = os.path.join(r.datadir, name)
    seq, nf, zoff, zlen = archive_index(path)[0]
    with open(path, "rb") as f:
        good = f.read()
    rnd = random.Random(14)
    spots = sorted({zoff + 6, zoff + zlen // 3, zoff + zlen // 2,
                    zoff + zlen - 6} |
                   {rnd.randrange(zoff + 6, zoff + zlen) for _ in range(6)})
    for n, at in enumerate(spots):
        bad = bytearray(good)
        bad[at] ^= 0x10
        with open(path, "wb") as f:
            f.write(bad)
        out = subprocess.run([walcat, "restore", r.datadir,
                              workdir / f"o{n}"], capture_output=True,
                             text=True)
        assert out.returncode == 2, (at, out.stdout, out.stderr)
        assert f"{name}: corrupt block at offset {zoff}" in out.stderr, \
            (at, out.stderr)
        assert not any(x.endswith(".wal")
                       for x in os.listdir(workdir / f"o{n}"))
    with open(path, "wb") as f:
        f.write(good)
    out = subprocess.run([walcat, "restore", r.datadir, workdir / "ok"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _restored(workdir / "ok")[1] == want


def test_restore_archived_blocks_larger_than_buffers(relays, walcat,
                                                     workdir):
    """Archived blocks of one frame larger than restore's write buffers
    (4 MiB) between blocks of small frames, output files that end inside
    blocks, and a cut inside a block: the same frames as the stream."""
    rnd = random.Random(7)
    frames = []
    for i in range(40):
        size = rnd.choice([5 << 20, 9 << 20]) if i % 9 == 4 \
            else rnd.randrange(1, 3000)
        unit = b"big-%03d " % i
        frames.append(frame(OP_SET, b"k%d" % i,
                            (unit * (size // len(unit) + 1))[:size],
                            ts=1700000000000 + i))
    r = relays("r", ["--max-frame-bytes", "16M"] + ARCHIVE_ARGS)
    s = connect(r.ingest_addr)
    s.sendall(b"".join(frames))
    s.shutdown(socket.SHUT_WR)
    s.close()
    r.wait_durable(len(frames))
    # all but the newest sealed segment (archive-keep-raw 1) and the open one
    wait_until(lambda: len(archived(r.datadir)) >= len(files_by_base(
        r.datadir)) - 2 and not any(x.endswith(".tmp")
                                    for x in os.listdir(r.datadir)), 120,
        "the sealed segments archived")
    assert r.stop() == 0
    big = 0
    for n in archived(r.datadir):
        for seq, nf, _, _ in archive_index(os.path.join(r.datadir, n)):
            big += nf == 1 and len(frames[seq]) > 4 << 20
    assert big >= 2
    for args, n in ((["--segment-bytes", "1M"], len(frames)),
                    (["--until-seq", 31, "--segment-bytes", "3K"], 32)):
        d = workdir / ("o" + str(n))
        out = subprocess.run([walcat, "restore", "--max-frame-bytes", "16M",
                              *map(str, args), r.datadir, d],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        names, got = _restored(d)
        assert got == frames[:n]
        assert len(names) > 3
        for x in names:
            base = int(x.split("-")[1])
            with open(d / x, "rb") as f:
                assert f.read(len(frames[base])) == frames[base]
