"""The cache's on-disk formats and its recovery rule, written from the
format description (FCW2.md section 6) and independent of the relay's
code: FCW2 frames and records, FCSNAP1 snapshots (.bin and .bin.lz4) with
their own LZ4 block decoder, and cache_recover, what the cache loads from a
directory (the newest snapshot-* by name, then every .wal / .wal.lz4
segment in name order, skipping records older than the snapshot).

Shared by the snapshot tests (tests/integration/test_snapshot.py) and the
reliability oracle (tests/reliability/), which checks after every crash
that the relay's snapshot directory is still one the cache recovers.
"""

import os
import struct
import zlib

from fcw2util import OP_DEL, OP_EXPIRE, OP_SET


def lz4_block(src, size):
    """Decode one LZ4 block (the format's description, not the library)."""
    out = bytearray()
    i = 0
    while i < len(src):
        tok = src[i]
        i += 1
        lit = tok >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        out += src[i:i + lit]
        i += lit
        if i >= len(src):
            break
        off = src[i] | src[i + 1] << 8
        i += 2
        ml = tok & 15
        if ml == 15:
            while True:
                b = src[i]
                i += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        start = len(out) - off
        assert off > 0 and start >= 0, "bad LZ4 offset"
        if off >= ml:
            out += out[start:start + ml]
        else:
            for k in range(ml):
                out.append(out[start + k])
    assert len(out) == size, f"LZ4 block gave {len(out)} bytes, not {size}"
    return bytes(out)


def parse_record(p):
    op, klen, vlen, ts, exp = struct.unpack_from("<BIIQq", p, 0)
    key = p[25:25 + klen]
    val = p[25 + klen:25 + klen + vlen]
    crc, = struct.unpack_from("<I", p, 25 + klen + vlen)
    assert crc == zlib.crc32(p[:25 + klen + vlen]), "bad record crc"
    assert op in (OP_SET, OP_DEL, OP_EXPIRE)
    return op, key, val, ts, (None if exp < 0 else exp)


def read_frames(data, quiet=True):
    """Records of a run of FCW2 frames. quiet: stop at a short tail, a bad
    magic or a bad frame crc, as the cache's reader does."""
    out, off = [], 0
    while off + 9 <= len(data):
        if data[off:off + 4] != b"FCW2":
            assert quiet, "bad magic"
            break
        flags = data[off + 4]
        plen, = struct.unpack_from("<I", data, off + 5)
        end = off + 13 + plen
        if end > len(data):
            break
        crc, = struct.unpack_from("<I", data, end - 4)
        if crc != zlib.crc32(data[off:end - 4]):
            assert quiet, "bad frame crc"
            break
        payload = data[off + 9:end - 4]
        if flags & 1:
            raw, = struct.unpack_from("<I", payload, 0)
            payload = lz4_block(payload[4:], raw)
        out.append(parse_record(payload))
        off = end
    return out


def load_snapshot(path):
    """(timestamp_ms, {key: (value, expire or None)}) of an FCSNAP1 file."""
    with open(path, "rb") as f:
        body = f.read()
    if path.endswith(".lz4"):
        raw, = struct.unpack_from("<I", body, 0)
        body = lz4_block(body[4:], raw)
    assert body[:8] == b"FCSNAP1\0"
    version, ts, count = struct.unpack_from("<IQQ", body, 8)
    assert version == 1
    off, state = 28, {}
    for _ in range(count):
        klen, vlen, exp = struct.unpack_from("<IIQ", body, off)
        off += 16
        key = body[off:off + klen]
        val = body[off + klen:off + klen + vlen]
        off += klen + vlen
        state[key] = (val, None if exp == 2 ** 64 - 1 else exp)
    assert off == len(body), "bytes after the last entry"
    return ts, state


def apply(state, rec, min_ts=0):
    op, key, val, ts, exp = rec
    if ts < min_ts:
        return
    if op == OP_SET:
        state[key] = (val, exp)
    elif op == OP_DEL:
        state.pop(key, None)
    elif key in state:
        state[key] = (state[key][0], exp)


def cache_recover(d, read_archived=None):
    """The cache's recovery of directory d (FCW2.md section 6).

    read_archived: a function returning the raw segment an archived one
    (segment-...wal.zst, which the cache itself does not read) holds; with
    it, archived segments are read in their place in name order, as after
    decompressing them (docs/archive.md), and a raw .wal whose .wal.zst
    exists is read once."""
    names = sorted(os.listdir(d))
    snaps = [n for n in names if n.startswith("snapshot-")]
    state, snap_ts = {}, 0
    if snaps:
        snap_ts, state = load_snapshot(os.path.join(d, snaps[-1]))
    for n in names:
        if n.endswith(".wal") or n.endswith(".wal.lz4"):
            if read_archived is not None and n + ".zst" in names:
                continue
            with open(os.path.join(d, n), "rb") as f:
                data = f.read()
        elif read_archived is not None and n.startswith("segment-") and \
                n.endswith(".wal.zst"):
            data = read_archived(os.path.join(d, n))
        else:
            continue
        for rec in read_frames(data):
            apply(state, rec, snap_ts)
    return state
