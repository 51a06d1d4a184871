"""FCW2 helpers for the integration tests: the reference vectors and a
plain (uncompressed) frame encoder, written from the format description."""

import re
import struct
import zlib

OP_SET, OP_DEL, OP_EXPIRE = 1, 2, 3
OP_NAMES = {OP_SET: "SET", OP_DEL: "DEL", OP_EXPIRE: "EXPIRE"}


def record(op, key, value=b"", ts=0, expire=-1):
    body = struct.pack("<BIIQq", op, len(key), len(value), ts, expire) + key + value
    return body + struct.pack("<I", zlib.crc32(body))


def frame(op, key, value=b"", ts=0, expire=-1, flags=0):
    payload = record(op, key, value, ts, expire)
    head = b"FCW2" + struct.pack("<BI", flags, len(payload)) + payload
    return head + struct.pack("<I", zlib.crc32(head))


def load_vectors(path):
    """{label: (bytes, description)} from fcw2-vectors.txt."""
    out = {}
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            hexpart, desc = line.split(" # ", 1)
            out[desc[0]] = (bytes.fromhex(hexpart.strip()), desc.strip())
    return out


_DESC = re.compile(r"^[A-Z]: (SET|DEL|EXPIRE) ([^=\s]+)(?:=(\S+))? ts=(\d+) "
                   r"(?:expire=none|expire_at=(-?\d+))")


def describe(desc):
    """What a vector's description says it holds:
    (op, key, value length, timestamp_ms, expire_at_ms or None)."""
    m = _DESC.match(desc)
    if m is None:
        raise ValueError(f"cannot parse vector description: {desc}")
    op, key, value, ts, expire = m.groups()
    value = value or ""
    rep = re.fullmatch(r"(\d+)\*'(.)'", value)
    vlen = int(rep.group(1)) if rep else len(value)
    return op, key, vlen, int(ts), None if expire is None else int(expire)


def segment_name(seq, created_ms=1732435200000, lz4=False):
    return f"segment-{seq:020d}-{created_ms}.wal" + (".lz4" if lz4 else "")
