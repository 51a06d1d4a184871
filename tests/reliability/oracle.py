"""The reliability oracle: records what a scenario did and checks the
promises of docs/protocol.md and docs/storage.md against it.

A scenario (a crash loop, a network fault, a soak, a disk fault) feeds the
oracle what it observed:

- the frames the producer sent, per connection (Producer in harness.py),
- the frames each subscriber received, per connection, with the sequence
  a resuming subscriber counts from the reply's start (stock subscribers
  have no sequence: their runs between reconnects are recorded),
- what each relay said on /v1/status (the durable sequence, the epoch),
- when a relay was killed and when it had recovered,
- snapshots of each relay's store: its segment files, read directly.

Oracle.check() then verifies (and Oracle.report() words what it found):

1. every sequence names one frame, forever: every store snapshot and every
   subscriber that saw a sequence saw the same bytes there (per epoch);
2. a store is contiguous (segment base_seq plus frame counts), its frames
   are whole and valid, and its earliest sequence never moves back;
3. every resuming subscriber receives each sequence exactly once, in order:
   each reconnect starts exactly where the last whole frame ended;
4. every run a stock subscriber received between reconnects is a
   contiguous run of the store;
5. no recovery lost a frame that was durable before the crash: after each
   restart the store's next sequence is at least the largest durable
   sequence any member of the chain reported, and every sequence any
   subscriber of the relay (or of a relay downstream of it) received
   before the kill (fsync always and interval; with never only while
   the epoch stays the same);
6. with a Producer: the origin's store is what the producer sent, in order,
   each frame at most once, and frames are missing only at the end of a
   connection that broke (frames in flight to a killed relay are lost
   legitimately; a gap inside a connection that went on is not);
7. `walcat verify` passes on every store (torn tail allowed only on the
   store of a relay that was just killed).

Frames are identified by a 64-bit BLAKE2b digest of their bytes; the oracle
keeps only digests and a short label per frame, so a long run stays small
once compact() has dropped what is checked. A disk-fault scenario plugs in
the same way: record, then call check_scenario(oracle) at the end.
"""

import array
import hashlib
import os
import re
import struct
import subprocess
import threading
import time
import zlib

SEGMENT_RE = re.compile(r"^segment-(\d{20})-(\d+)\.wal(\.zst)?$")


def read_archived(path):
    """The raw segment an archived one (.wal.zst) holds: its zstd frames
    decompressed one after another (the index is a skippable frame)."""
    import zstandard
    with open(path, "rb") as f:
        r = zstandard.ZstdDecompressor().stream_reader(
            f, read_across_frames=True)
        try:
            return r.read()
        except zstandard.ZstdError as e:
            raise ArchiveError(f"{os.path.basename(path)}: does not "
                               f"decompress: {e}") from None


class ArchiveError(Exception):
    pass


# A suffix of a segment file and a function returning its FCW2 bytes.
SEGMENT_READERS = {".wal": lambda path: open(path, "rb").read(),
                   ".wal.zst": read_archived}


# sequences compact() keeps below the newest one it saw (about 20 s of a
# 3,000 frames/s stream: more than the relays' tail memory holds)
STOCK_KEEP = 65536
# check rounds a stock run's first frame may go unseen before it is a
# violation (a resuming subscriber that lags sees it meanwhile)
STOCK_TRIES = 6


class OracleViolation(AssertionError):
    pass


def ident(frame):
    """The identity of a frame: a 64-bit digest of its bytes."""
    return int.from_bytes(hashlib.blake2b(frame, digest_size=8).digest(),
                          "little")


def label(frame):
    """A short description of a frame for reports: op, key, sizes."""
    if len(frame) < 13 or frame[:4] != b"FCW2":
        return f"<not a frame: {frame[:16].hex()}... {len(frame)} bytes>"
    flags = frame[4]
    plen = int.from_bytes(frame[5:9], "little")
    if flags & 1 or plen < 29:
        return f"<frame flags={flags} payload={plen}>"
    op = frame[9]
    klen = int.from_bytes(frame[10:14], "little")
    key = frame[34:34 + min(klen, 40)]
    opname = {1: "SET", 2: "DEL", 3: "EXPIRE"}.get(op, f"op{op}")
    return f"{opname} {key.decode('ascii', 'backslashreplace')} ({len(frame)} B)"


def frame_ok(frame):
    """Magic, length and frame crc (walcat verify checks the record)."""
    if len(frame) < 13 or frame[:4] != b"FCW2":
        return False
    crc = int.from_bytes(frame[-4:], "little")
    return zlib.crc32(frame[:-4]) == crc


class FrameSplitter:
    """Whole frames out of a byte stream fed in pieces; the partial rest is
    kept (and reported by pending())."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out, off = [], 0
        n = len(self.buf)
        while n - off >= 9:
            end = off + 13 + int.from_bytes(self.buf[off + 5:off + 9], "little")
            if end > n:
                break
            out.append(bytes(self.buf[off:end]))
            off = end
        del self.buf[:off]
        return out

    def pending(self):
        return len(self.buf)


# ---- stores ---------------------------------------------------------------

class StoreSnapshot:
    """The frames of one store, read from its segment files."""

    def __init__(self, relay, when, epoch, earliest, next_seq, frames,
                 problems, why):
        self.relay, self.when, self.epoch = relay, when, epoch
        self.earliest, self.next = earliest, next_seq
        self.frames = frames          # [(ident, label)], seq earliest..next-1
        self.problems = problems      # [str]
        self.why = why

    def __repr__(self):
        return (f"store of {self.relay} ({self.why}) epoch {self.epoch} "
                f"[{self.earliest}, {self.next})")


class ListingChanged(Exception):
    """The segment files of a running relay changed while the store was
    read, and what was read does not chain: os.listdir reads a large
    directory in several getdents calls, so an archive step that renames
    A.wal.zst into place and then removes A.wal between two of them can
    leave both out of one listing. Read the store again."""


def segment_names(datadir):
    return {n for n in os.listdir(datadir) if SEGMENT_RE.match(n)}


def read_store(datadir, limit=None):
    """(earliest, next, [(ident, label)], problems) of a store, reading
    every segment file directly. With limit, frames from sequence limit on
    are ignored (they may be still being written). Files that retention
    deletes while they are read are left out: the store starts after them.
    Raises ListingChanged when the files do not chain and the directory
    changed meanwhile (a real gap stays when the store is read again)."""
    names = []
    listing = set(os.listdir(datadir))
    for n in listing:
        m = SEGMENT_RE.match(n)
        if m:
            if not m.group(3) and n + ".zst" in listing:
                # archived, the raw file not removed yet: either holds
                # every frame (docs/archive.md); read the one that stays
                continue
            names.append((int(m.group(1)), n))
        elif n.endswith(".wal") or n.endswith(".wal.lz4"):
            names.append((None, n))
    names.sort(key=lambda x: x[1])
    problems, frames = [], []
    earliest = expect = None
    for i, (base, n) in enumerate(names):
        if base is None:
            problems.append(f"{n}: a .wal file whose name is not a segment name")
            continue
        if limit is not None and base >= limit:
            break
        try:
            try:
                data = SEGMENT_READERS[".wal.zst" if n.endswith(".zst")
                                      else ".wal"](os.path.join(datadir, n))
            except FileNotFoundError:
                if n.endswith(".zst"):
                    raise
                # archived meanwhile: the raw file went after the
                # .wal.zst was in place
                data = read_archived(os.path.join(datadir, n + ".zst"))
        except ArchiveError as e:
            problems.append(str(e))
            continue
        except FileNotFoundError:
            # retention deleted it while we read: it was the oldest, and
            # so was everything read before it; the store starts later
            frames, earliest, expect = [], None, None
            continue
        if expect is None:
            earliest = expect = base
        elif base != expect:
            problems.append(f"{n}: base_seq {base} but the segments before "
                            f"end at {expect} (a {'gap' if base > expect else 'overlap'})")
            expect = base
        off, last = 0, i == len(names) - 1
        while off < len(data) and (limit is None or expect < limit):
            if len(data) - off < 9:
                end = len(data) + 1
            else:
                end = off + 13 + int.from_bytes(data[off + 5:off + 9], "little")
            if end > len(data):
                if not last:
                    problems.append(f"{n}: incomplete frame at offset {off} "
                                    f"of a sealed segment (sequence {expect})")
                elif limit is not None:
                    problems.append(f"{n}: incomplete frame at offset {off} "
                                    f"(sequence {expect}) below the durable "
                                    f"sequence {limit}")
                break
            f = data[off:end]
            if not frame_ok(f):
                problems.append(f"{n}: invalid frame at offset {off} "
                                f"(sequence {expect}): {label(f)}")
            frames.append((ident(f), label(f)))
            off = end
            expect += 1
    if earliest is None:
        earliest = expect = limit or 0
    if limit is not None and expect < limit:
        problems.append(f"the store ends at sequence {expect}, below the "
                        f"durable sequence {limit} the relay reported")
    if any("(a gap)" in p or "(a overlap)" in p for p in problems) and \
            segment_names(datadir) != {n for n in listing
                                       if SEGMENT_RE.match(n)}:
        raise ListingChanged(problems)
    return earliest, expect, frames, problems


def walcat_verify(walcat, datadir):
    """(exit status, last lines of output) of walcat verify DIR."""
    p = subprocess.run([str(walcat), "verify", str(datadir)],
                       capture_output=True, timeout=300)
    out = (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()
    return p.returncode, out[-5:]


# ---- subscribers ----------------------------------------------------------

class Conn:
    """One subscriber connection: frames received in order, with marks
    (monotonic time, frames received so far) for the loss check."""

    def __init__(self, sub, relay, epoch, start, requested):
        self.sub, self.relay, self.epoch = sub, relay, epoch
        self.start, self.requested = start, requested
        self.opened = time.monotonic()
        self.idents = []
        self.marks = []
        self.partial = 0
        self.closed = None
        self.checked = 0          # idents already checked (compact())
        self.tries = 0            # check rounds a stock run went unmatched
        self.base = 0             # idents dropped by compact()

    def add(self, frames, oracle):
        if not frames:
            return
        with oracle.lock:
            for f in frames:
                i = ident(f)
                self.idents.append(i)
                if i not in oracle.labels:
                    oracle.labels[i] = label(f)
            self.marks.append((time.monotonic(), self.base + len(self.idents)))

    def count(self):
        return self.base + len(self.idents)

    def received_before(self, t):
        """Frames received by time t."""
        n = 0
        for mt, c in self.marks:
            if mt > t:
                break
            n = c
        return n


class Subscriber:
    def __init__(self, oracle, name, relay, resuming):
        self.oracle, self.name, self.relay = oracle, name, relay
        self.resuming = resuming
        self.conns = []
        self.events = []        # (time, text): refusals, sessions restarted

    def connect(self, epoch, start, requested=None):
        c = Conn(self, self.relay, epoch, start, requested)
        with self.oracle.lock:
            if self.resuming and requested is not None and \
                    str(requested).isdigit() and int(requested) != start:
                self.oracle.violate(
                    f"{self.name}: asked {self.relay} for sequence {requested}, "
                    f"the reply says start={start}")
            self.conns.append(c)
        return c

    def event(self, text):
        self.events.append((time.monotonic(), text))

    def position(self):
        """The next sequence a resuming subscriber asks for."""
        c = self.conns[-1] if self.conns else None
        return None if c is None else c.start + c.count()


# ---- the oracle -------------------------------------------------------------

class RelayRec:
    def __init__(self, name, relay, upstream):
        self.name, self.relay, self.upstream = name, relay, upstream
        self.snapshots = []
        self.durable = []        # (time, epoch, durable) from /v1/status
        self.crashes = []        # (time, epoch before)
        self.verifies = []       # (why, status, lines)
        self.last_epoch = None


class Oracle:
    def __init__(self, fsync="always", walcat=None):
        self.fsync = fsync
        self.walcat = walcat
        self.lock = threading.RLock()
        self.relays = {}
        self.subs = []
        self.known = {}          # (epoch, seq) -> ident
        self.seen_by = {}        # (epoch, seq) -> who saw it first
        self.labels = {}         # ident -> label
        self.violations = []
        self.producer = None
        self.prod_state = {}     # epoch -> (next seq to check, previous id)
        # epoch -> producer frame number of each sequence from 0 (None
        # once a sequence went unobserved): the cache recovery check
        self.seq_pids = {}
        self.stats = {"snapshots": 0, "crashes": 0, "frames_checked": 0,
                      "sub_frames": 0, "stock_runs": 0, "verifies": 0,
                      "gone": 0, "unobserved": 0, "recovery_checks": 0,
                      "recovery_unchecked": 0}

    # -- recording ---------------------------------------------------------

    def add_relay(self, name, relay, upstream=None):
        self.relays[name] = RelayRec(name, relay, upstream)

    def subscriber(self, name, relay, resuming=True):
        s = Subscriber(self, name, relay, resuming)
        self.subs.append(s)
        return s

    def violate(self, text):
        with self.lock:
            self.violations.append(text)

    def downstream(self, name):
        """name and every relay that pulls from it, directly or not."""
        out = {name}
        changed = True
        while changed:
            changed = False
            for r in self.relays.values():
                if r.upstream in out and r.name not in out:
                    out.add(r.name)
                    changed = True
        return out

    def note_status(self, name, st, when=None):
        """A /v1/status answer of relay name (received at time when)."""
        when = time.monotonic() if when is None else when
        rec = self.relays[name]
        with self.lock:
            rec.durable.append((when, st["epoch"], st["durable"]))
            rec.last_epoch = st["epoch"]
            if len(rec.durable) > 64:
                # only the maximum per epoch matters for the loss check
                best = {}
                for t, e, d in rec.durable:
                    if e not in best or d >= best[e][2]:
                        best[e] = (t, e, d)
                rec.durable = sorted(best.values())

    def crashed(self, name):
        """Call right after relay name was killed (kill -9)."""
        rec = self.relays[name]
        with self.lock:
            rec.crashes.append((time.monotonic(), rec.last_epoch))
            self.stats["crashes"] += 1

    def verify(self, name, why, allow_torn=False):
        """walcat verify on the store of relay name (stopped or killed)."""
        rec = self.relays[name]
        rc, lines = walcat_verify(self.walcat, rec.relay.datadir)
        rec.verifies.append((why, rc, lines))
        self.stats["verifies"] += 1
        if rc != 0 and not (allow_torn and rc == 1):
            self.violate(f"walcat verify on the store of {name} ({why}) exited "
                         f"{rc}:\n    " + "\n    ".join(lines))

    def snapshot(self, name, why, status=None, retries=5):
        """Read the store of relay name. A running relay: up to the
        durable sequence of its status (given, or asked now). A stopped
        one: everything in its segments."""
        rec = self.relays[name]
        r = rec.relay
        for attempt in range(retries):
            st = status
            if st is None and r.alive():
                st = r.status()
            if st is not None:
                self.note_status(name, st)
                epoch, limit = st["epoch"], st["durable"]
            else:
                epoch, limit = rec.last_epoch, None
            try:
                earliest, nxt, frames, problems = read_store(r.datadir, limit)
                break
            except (FileNotFoundError, ListingChanged):
                # retention deleted a file, or an archive step changed the
                # directory while it was listed: read it again
                status = None
                if attempt == retries - 1:
                    raise
        snap = StoreSnapshot(name, time.monotonic(), epoch, earliest, nxt,
                             frames, problems, why)
        with self.lock:
            self.stats["snapshots"] += 1
            for p in problems:
                self.violate(f"store of {name} ({why}): {p}")
            prev = rec.snapshots[-1] if rec.snapshots else None
            if prev is not None and prev.epoch == epoch and earliest < prev.earliest:
                self.violate(f"store of {name} ({why}): earliest sequence went "
                             f"back from {prev.earliest} to {earliest}")
            for i, (fid, lab) in enumerate(frames):
                self._observe(epoch, earliest + i, fid, lab, f"{snap!r}")
            rec.snapshots.append(snap)
        return snap

    def recovered(self, name, why="after restart"):
        """Call when relay name answers again after a crash: snapshots its
        store and checks that the recovery lost nothing that was durable
        (or, with fsync never, that the epoch changed if anything was)."""
        rec = self.relays[name]
        snap = self.snapshot(name, why)
        t_crash, epoch_before = rec.crashes[-1]
        with self.lock:
            if epoch_before is not None and snap.epoch != epoch_before:
                if self.fsync != "never":
                    self.violate(f"{name}: the epoch changed from {epoch_before} "
                                 f"to {snap.epoch} after a crash with fsync "
                                 f"{self.fsync} (only never may change it)")
                return snap
            need, who = self._watermark(name, epoch_before or snap.epoch, t_crash)
            if snap.next < need:
                self.violate(f"{name}: recovery after a crash lost durable frames: "
                             f"the store ends at sequence {snap.next} but {who} "
                             f"(sequence {need - 1} was durable before the kill)")
        return snap

    def _watermark(self, name, epoch, t):
        """The next sequence every recovery of relay name must reach:
        (sequence, who showed it) from what was seen before time t."""
        need, who = 0, "nothing"
        for member in self.downstream(name):
            for (dt, e, d) in self.relays[member].durable:
                if dt <= t and e == epoch and d > need:
                    need, who = d, f"{member} reported durable={d}"
        if self.fsync.startswith("never"):
            # subscribers of never mode may see frames not yet durable:
            # a process crash loses none of them (the page cache stays)
            pass
        members = self.downstream(name)
        for s in self.subs:
            if s.relay not in members:
                continue
            for c in s.conns:
                if c.epoch != epoch or c.start is None:
                    continue
                n = c.received_before(t)
                if n and c.start + n > need:
                    need = c.start + n
                    who = (f"subscriber {s.name} had received sequence "
                           f"{need - 1} from {c.relay}")
        return need, who

    def _observe(self, epoch, seq, fid, lab, who):
        key = (epoch, seq)
        have = self.known.get(key)
        if lab is not None and fid not in self.labels:
            self.labels[fid] = lab
        if have is None:
            self.known[key] = fid
            self.seen_by[key] = who
            return True
        if have != fid:
            self.violate(f"sequence {seq} (epoch {epoch}): {who} has "
                         f"{self.labels.get(fid, fid)}, but "
                         f"{self.seen_by[key]} had {self.labels.get(have, have)}")
            return False
        return True

    # -- checking ---------------------------------------------------------

    def check(self):
        """Run every check over what was recorded since the last compact()."""
        with self.lock:
            for s in self.subs:
                if s.resuming:
                    self._check_resuming(s)
            for s in self.subs:
                if not s.resuming:
                    self._check_stock(s)
            if self.producer is not None:
                self._check_producer()

    def _check_resuming(self, s):
        prev = None
        for c in s.conns:
            if c.start is None:
                continue
            if prev is not None and c.epoch == prev.epoch and \
                    c.requested not in ("earliest", "latest") and \
                    c.start != prev.start + prev.count():
                self.violate(f"{s.name}: connection to {c.relay} started at "
                             f"{c.start}, but the previous one ended at "
                             f"{prev.start + prev.count()} "
                             f"({'a gap' if c.start > prev.start + prev.count() else 'duplicates'})")
            for i in range(c.checked, len(c.idents)):
                seq = c.start + c.base + i
                self._observe(c.epoch, seq, c.idents[i], None,
                              f"subscriber {s.name} (from {c.relay})")
                self.stats["sub_frames"] += 1
            c.checked = len(c.idents)
            prev = c

    def _check_stock(self, s):
        for c in s.conns:
            if c.checked == len(c.idents):
                continue
            self.stats["stock_runs"] += 1 if c.checked == 0 else 0
            if c.start is None:
                # locate the run's first frame in the store of its epoch
                first = c.idents[0]
                cands = [q for (e, q), v in self.known.items()
                         if e == c.epoch and v == first]
                if not cands:
                    # the epoch changed (fsync never) around the connect:
                    # the run belongs to the epoch whose store holds it
                    for (e, q), v in self.known.items():
                        if v == first:
                            c.epoch = e
                            cands.append(q)
                    cands = [q for q in cands
                             if (c.epoch, q) in self.known]
                if not cands and c.tries < STOCK_TRIES:
                    # not seen yet: the store may have deleted it (a
                    # snapshot covered it) before a lagging resuming
                    # subscriber got there; look again next round
                    c.tries += 1
                    continue
                if not cands:
                    self.violate(f"stock subscriber {s.name}: the first frame of a "
                                 f"run from {c.relay} ({self.labels.get(first)}) "
                                 f"is in no store seen (epoch {c.epoch})")
                    c.checked = len(c.idents)
                    continue
                # several places only if the producer sent it twice
                best = None
                for q in cands:
                    ok = all(self.known.get((c.epoch, q + k)) in (None, c.idents[k])
                             for k in range(len(c.idents)))
                    if ok:
                        best = q
                        break
                c.start = best if best is not None else cands[0]
            for i in range(c.checked, len(c.idents)):
                seq = c.start + c.base + i
                have = self.known.get((c.epoch, seq))
                if have is None:
                    self.known[(c.epoch, seq)] = c.idents[i]
                    self.seen_by[(c.epoch, seq)] = f"stock subscriber {s.name}"
                elif have != c.idents[i]:
                    self.violate(
                        f"stock subscriber {s.name}: run from {c.relay} starting "
                        f"at sequence {c.start} is not contiguous: frame {c.base + i} "
                        f"of the run is {self.labels.get(c.idents[i])}, the store "
                        f"has {self.labels.get(have)} at sequence {seq}")
                    break
            c.checked = len(c.idents)

    def _check_producer(self):
        """The origin's store against what the producer sent."""
        p = self.producer
        origin = p.relay
        rec = self.relays[origin]
        if not rec.snapshots:
            return
        epoch = rec.snapshots[-1].epoch
        if epoch not in self.prod_state and self.prod_state:
            # a new epoch (fsync never after a crash) names the same store:
            # go on from where the previous epoch's check stopped
            self.prod_state[epoch] = max(self.prod_state.values(),
                                         key=lambda st: st[0])
        seq, prev = self.prod_state.get(epoch, (rec.snapshots[0].earliest, None))
        if epoch not in self.seq_pids:
            self.seq_pids[epoch] = array.array("q") if seq == 0 else None
        pids = self.seq_pids[epoch]
        floor = rec.snapshots[-1].earliest
        if seq < floor and (epoch, seq) not in self.known:
            self.stats["unobserved"] += floor - seq
            seq, prev = floor, None
            pids = self.seq_pids[epoch] = None
        while (epoch, seq) in self.known:
            fid = self.known[(epoch, seq)]
            pid = p.sent.get(fid)
            if pids is not None:
                if pid is None or len(pids) != seq:
                    pids = self.seq_pids[epoch] = None
                else:
                    pids.append(pid)
            if pid is None:
                self.violate(f"{origin}: sequence {seq} holds "
                             f"{self.labels.get(fid, fid)}, a frame the producer "
                             f"never sent")
            elif prev is not None:
                why = p.gap_reason(prev, pid)
                if why:
                    self.violate(f"{origin}: sequence {seq - 1} holds producer "
                                 f"frame {prev} and sequence {seq} frame {pid}: {why}")
            if pid is not None:
                prev = pid
            self.stats["frames_checked"] += 1
            seq += 1
        self.prod_state[epoch] = (seq, prev)

    def check_cache_recovery(self, name, why):
        """The data directory of relay name (stopped or killed), recovered
        with the cache's rule (cacheformat.cache_recover: the newest
        snapshot, then the segments, archived ones decompressed), holds
        exactly the state of the store's frames from sequence 0: for every
        key the value of the last producer frame that set it. Needs a
        producer with a bounded key space (Producer(keys=N)) and every
        sequence observed in order (else the check is counted as
        skipped)."""
        from cacheformat import cache_recover
        self.check()                # walk what was observed so far
        rec = self.relays[name]
        d = rec.relay.datadir
        p = self.producer
        for attempt in range(5):
            try:
                state = cache_recover(d, read_archived)
                earliest, nxt, frames, _ = read_store(d)
                break
            except (FileNotFoundError, ListingChanged):
                # a relay still starting completes what a crash left
                if attempt == 4:
                    raise
            except (AssertionError, ArchiveError, IndexError,
                    struct.error) as e:
                self.violate(f"the data directory of {name} ({why}) is not "
                             f"recoverable by the cache's rule: "
                             f"{type(e).__name__}: {e}")
                return
        with self.lock:
            epoch = rec.last_epoch
            pids = self.seq_pids.get(epoch)
            if pids is None or earliest > len(pids):
                self.stats["recovery_unchecked"] += 1
                return
            tail = []
            for fid, _ in frames[len(pids) - earliest:] if nxt > len(pids) \
                    else []:
                pid = p.sent.get(fid)
                if pid is None:
                    return          # check 6 reports a frame never sent
                tail.append(pid)
            upto = min(nxt, len(pids))
            want = {}
            # the last frame of each key: walk back from the end
            for pid in reversed(tail):
                want.setdefault(p.key(pid), pid)
            for i in range(upto - 1, -1, -1):
                if len(want) == p.keys:
                    break
                want.setdefault(p.key(pids[i]), pids[i])
            self.stats["recovery_checks"] += 1
        bad = []
        for key, pid in want.items():
            got = state.get(key)
            if got != (p.value(pid), None):
                bad.append(f"{key.decode()}: producer frame {pid} "
                           f"expected, the cache recovers "
                           f"{'nothing' if got is None else got[0][:13]}")
        for key in state:
            if key not in want:
                bad.append(f"{key!r}: recovered, but no frame of the store "
                           f"sets it")
        if bad:
            self.violate(f"the data directory of {name} ({why}), recovered "
                         f"with the cache's rule, differs from the store's "
                         f"frames 0..{nxt - 1} in {len(bad)} key(s): "
                         + "; ".join(bad[:5]))

    def check_final(self, chain=()):
        """At the end of a scenario (every relay caught up, stores
        snapshotted): the relays of chain hold the same sequence range,
        the producer's last connection is stored whole, every resuming
        subscriber reached the end."""
        with self.lock:
            snaps = [self.relays[n].snapshots[-1] for n in chain]
            for s in snaps[1:]:
                if (s.epoch, s.next) != (snaps[0].epoch, snaps[0].next):
                    self.violate(f"{s!r} does not end where {snaps[0]!r} ends")
            if self.producer is not None:
                why = self.producer.final_reason(self)
                if why:
                    self.violate(why)

    def compact(self):
        """Forget what is checked, keeping what later checks need."""
        with self.lock:
            floor = None
            for rec in self.relays.values():
                if rec.snapshots:
                    e = rec.snapshots[-1].earliest
                    floor = e if floor is None else min(floor, e)
                    del rec.snapshots[:-1]
            for s in self.subs:
                del s.conns[:-1]
                for c in s.conns:
                    c.base += c.checked
                    del c.idents[:c.checked]
                    c.checked = 0
                    del c.marks[:-1]
                    if c.start is None:
                        continue
                    pos = c.start + c.count() - 1
                    floor = pos if floor is None else min(floor, pos)
            for st in self.prod_state.values():
                floor = st[0] - 1 if floor is None else min(floor, st[0] - 1)
            if floor is None:
                return
            # a stock subscriber starts anywhere in the relay's tail
            # memory, which may reach below a store's earliest sequence
            # once a snapshot deleted the segments it covers: keep the
            # last STOCK_KEEP sequences to match new runs against
            if self.known:
                top = max(k[1] for k in self.known)
                floor = min(floor, top - STOCK_KEEP)
            # stock runs are matched by content: keep their tail reachable
            for key in [k for k in self.known if k[1] < floor]:
                fid = self.known.pop(key)
                self.seen_by.pop(key, None)
                self.labels.pop(fid, None)
            if self.producer is not None:
                self.producer.forget_before(self, floor)

    def report(self, limit=40):
        if not self.violations:
            return ""
        head = [f"{len(self.violations)} violation(s) of the relay's promises:"]
        return "\n".join(head + ["  - " + v for v in self.violations[:limit]])

    def assert_ok(self):
        if self.violations:
            raise OracleViolation(self.report())


def check_scenario(oracle, chain=()):
    """Check a finished scenario: every relay stopped or caught up and its
    store snapshotted by the caller. Raises OracleViolation with the report."""
    oracle.check()
    oracle.check_final(chain)
    oracle.assert_ok()
