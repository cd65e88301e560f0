"""The durable outbox (SPEC section 6).

Every envelope is committed to SQLite (WAL) with its ``seq`` assigned in the
same transaction, before anything hands it to MQTT; a row leaves only when
the link says the broker has it (PUBACK for QoS 1, written for QoS 0).  One
envelope can have several rows (its routes: ``state/…`` and ``event``) that
share its seq.  Rows go out in insertion order (``pos``).

Durability policy (``fsync``):

- ``"events"`` (default): every commit uses ``synchronous=NORMAL`` (safe
  against a crash of the agent at once; nothing on the caller's path waits
  for the disk). A syncer thread fsyncs the WAL file as soon as an envelope
  other than a reading or health was committed, and at least once a second
  otherwise. A power cut can cost the readings and health of about the last
  second, and other envelopes of the last few milliseconds (one fsync).
  The syncer fsyncs the WAL file itself rather than checkpointing: after a
  checkpoint the next commit restarts the WAL and reloads its page cache
  (0.2-0.5 ms measured here), which must not land on an alarm's path. It
  checkpoints (copies the WAL into the database) only every
  ``CHECKPOINT_COMMITS`` commits or ``CHECKPOINT_S`` seconds.
- ``"always"``: every commit fsyncs before ``enqueue`` returns (slow on SD cards).
- ``"never"``: only the once-a-second sync.

When the rows' payload bytes exceed ``max_bytes`` the oldest readings are
dropped first, then the oldest health envelopes, down to 90 % of the cap;
other envelopes are never dropped.  The drop is reported by an
``outbox-overflow`` agent event naming the count and the seq ranges.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from .envelope import DROPPABLE, Envelope

log = logging.getLogger(__name__)

ROW_OVERHEAD = 64  # bytes counted per row besides its payload (topic, columns)
CHECKPOINT_COMMITS = 1000  # a checkpoint after this many commits (bounds the WAL to a few MB)
CHECKPOINT_S = 60.0        # ... or this long after the last one, when commits came since
INSERT_CHUNK = 200         # rows per INSERT statement (7 parameters each)
_INSERT_SQL: dict[int, str] = {}
FRESH_MAX = 500            # committed rows kept in memory for take() (no SELECT on the alarm path)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY,
    seq INTEGER,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
DROP INDEX IF EXISTS outbox_type;
CREATE INDEX IF NOT EXISTS outbox_reading ON outbox(pos) WHERE type = 'reading';
CREATE INDEX IF NOT EXISTS outbox_health ON outbox(pos) WHERE type = 'health';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# pos is given by the outbox (one writer, under its lock), not AUTOINCREMENT: no
# sqlite_sequence page to write on every commit. Only the droppable types are
# indexed (partial indexes, for the overflow), so an alarm's commit writes the
# table's pages alone. Outboxes made by earlier versions (AUTOINCREMENT) work as
# they are.


class Row(NamedTuple):  # a tuple: built for every committed row, so cheap to make
    pos: int
    seq: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic) + ROW_OVERHEAD


class OutboxClosed(RuntimeError):
    """An envelope arrived after the outbox was closed (the agent is stopping)."""


@dataclass(frozen=True)
class Raw:
    """A message that is not an envelope: the empty retained message clearing an alert."""
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Dropped:
    count: int
    ranges: list[tuple[int, int]]  # inclusive seq ranges, ascending

    @property
    def first_seq(self) -> int:
        return self.ranges[0][0]

    @property
    def last_seq(self) -> int:
        return self.ranges[-1][1]


def seq_ranges(seqs: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if ranges and s == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], s)
        else:
            ranges.append((s, s))
    return ranges


class Outbox:
    def __init__(self, path: str | Path, max_bytes: int = 256 * 1024 * 1024, fsync: str = "events",
                 on_overflow: Callable[[Dropped], Envelope | None] | None = None):
        if fsync not in ("events", "always", "never"):
            raise ValueError(f"fsync policy {fsync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.on_overflow = on_overflow
        self._lock = threading.RLock()
        self.set_aside: Path | None = None
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            # a corrupt file (a failing SD card): keep it for inspection, start afresh rather than crash-loop
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s unreadable (%s): moved to %s, starting a new one", self.path, e, self.set_aside)
            self._db.close()
            self.path.rename(self.set_aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._open()
        self._sync_mode = ""
        self._set_sync("NORMAL")
        self._dirty = False        # commits not yet fsynced
        self._sync_wanted = False  # a commit that wants its fsync soon
        self._commits = 0          # commits since the last checkpoint
        # every committed row not yet handed out, in order, while take() keeps up (else None)
        self._fresh: list[Row] | None = None
        self._next_seq = self._meta("next_seq", 1)
        self.dropped_total = self._meta("dropped_total", 0)
        last = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        if last is not None and last >= self._next_seq:  # rows committed since the last delete
            self._next_seq = last + 1
        self.depth, self.bytes = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ROW_OVERHEAD}), 0) "
            "FROM outbox").fetchone()
        self._last_pos = self._db.execute("SELECT COALESCE(MAX(pos), 0) FROM outbox").fetchone()[0]
        self._cursor = 0           # highest pos handed out by take()
        if self.depth == 0:
            self._fresh = []
        self._taken: dict[int, int] = {}  # pos -> size, handed out and not yet done
        self._closed = False
        self.syncs = 0
        self.heartbeat = time.monotonic()
        self._sync_now = threading.Event()
        self._sync_stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="outbox-sync", daemon=True)
        self._syncer.start()

    # -- writing -------------------------------------------------------------
    def enqueue(self, env: Envelope) -> int:
        """Commit the envelope (all its routes) and return its seq."""
        return self.enqueue_many([env])[0]

    def enqueue_many(self, items: list[Envelope | Raw], defer_sync: bool = False) -> list[int | None]:
        """Commit several envelopes (and raw messages) in one transaction, in list
        order; envelopes get consecutive seqs (None for a raw message).

        ``defer_sync``: the caller calls ``nudge()`` itself once it has handed the
        rows to MQTT (the syncer's fsync does not compete with the alarm path)."""
        for item in items:
            if isinstance(item, Envelope) and not item.routes:
                raise ValueError(f"envelope {item.type} has no route")
        with self._lock:
            if self._closed:
                raise OutboxClosed("the outbox is closed: the agent is stopping")
            seq = self._next_seq
            rows, seqs = [], []
            for item in items:
                if isinstance(item, Raw):
                    rows.append((None, "raw", item.topic, item.payload, item.qos, int(item.retain)))
                    seqs.append(None)
                    continue
                payload = item.encode(seq)
                rows += [(seq, item.type, r.topic, payload, r.qos, int(r.retain)) for r in item.routes]
                seqs.append(seq)
                seq += 1
            self._commit(rows, durable=any(isinstance(i, Raw) or self._durable(i.type) for i in items))
            self._next_seq = seq
            if self.bytes > self.max_bytes:
                self._overflow()
        if not defer_sync:
            self.nudge()
        return seqs

    def nudge(self) -> None:
        """Wake the syncer if a commit wants its fsync now."""
        if self._sync_wanted:
            self._sync_wanted = False
            self._sync_now.set()

    def enqueue_raw(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> None:
        """A message without an envelope (the empty retained message that clears an alert)."""
        self.enqueue_many([Raw(topic, payload, qos, retain)])

    def _durable(self, type_: str) -> bool:
        """Whether this commit must reach the disk soon (now, with ``always``)."""
        return self.fsync == "always" or (self.fsync == "events" and type_ not in DROPPABLE)

    def _commit(self, rows: list[tuple], durable: bool) -> None:
        self._set_sync("FULL" if durable and self.fsync == "always" else "NORMAL")
        db = self._db
        first = self._last_pos + 1
        if len(rows) <= INSERT_CHUNK:  # one statement is one transaction: no BEGIN/COMMIT round trips
            self._insert(first, rows)
        else:
            db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(rows), INSERT_CHUNK):
                    self._insert(first + i, rows[i:i + INSERT_CHUNK])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._last_pos = first + len(rows) - 1
        self._dirty = True
        self._commits += 1
        if durable and self.fsync == "events":
            self._sync_wanted = True
        if self._fresh is not None and (not self._fresh or self._fresh[-1].pos < first) \
                and len(self._fresh) + len(rows) <= FRESH_MAX:
            self._fresh += [Row(first + i, r[0], r[2], r[3], r[4], bool(r[5])) for i, r in enumerate(rows)]
        else:
            self._fresh = None  # take() fell behind: it reads the table until it catches up
        self.depth += len(rows)
        self.bytes += sum(len(r[3]) + len(r[2]) + ROW_OVERHEAD for r in rows)

    def _insert(self, first: int, rows: list[tuple]) -> None:
        """Insert rows at positions first, first + 1, ... with one statement."""
        sql = _INSERT_SQL.get(len(rows))
        if sql is None:
            sql = _INSERT_SQL[len(rows)] = ("INSERT INTO outbox(pos, seq, type, topic, payload, qos, retain) VALUES "
                                            + ",".join(["(?,?,?,?,?,?,?)"] * len(rows)))
        params: list = []
        for i, r in enumerate(rows):
            params += (first + i, *r)
        self._db.execute(sql, params)

    def _set_sync(self, mode: str) -> None:
        if mode != self._sync_mode:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def _overflow(self) -> None:
        self._fresh = None  # rows not yet handed out may go: take() reads the table again
        target = int(self.max_bytes * 0.9)
        dropped: list[int] = []
        for type_ in DROPPABLE:
            while self.bytes > target:
                rows = self._db.execute(  # the type as a literal: it selects the partial index
                    "SELECT pos, seq, LENGTH(payload) + LENGTH(topic) + ? FROM outbox "
                    f"WHERE type = '{type_}' AND pos NOT IN (SELECT value FROM json_each(?)) ORDER BY pos LIMIT 1000",
                    (ROW_OVERHEAD, _json_list(self._taken))).fetchall()
                if not rows:
                    break
                victims = []
                for pos, seq, size in rows:
                    if self.bytes - sum(v[2] for v in victims) <= target:
                        break
                    victims.append((pos, seq, size))
                self._db.execute("BEGIN IMMEDIATE")
                self._record_next_seq()
                self._db.executemany("DELETE FROM outbox WHERE pos = ?", [(v[0],) for v in victims])
                self.dropped_total += len(victims)
                self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped_total', ?)",
                                 (self.dropped_total,))
                self._db.execute("COMMIT")
                self.depth -= len(victims)
                self.bytes -= sum(v[2] for v in victims)
                dropped += [v[1] for v in victims]
        if not dropped:
            log.warning("outbox over its cap (%d bytes) with nothing left that may be dropped", self.bytes)
            return
        info = Dropped(len(dropped), seq_ranges(dropped))
        log.warning("outbox full: dropped %d envelopes, seq %d..%d", info.count, info.first_seq, info.last_seq)
        if self.on_overflow is not None:
            env = self.on_overflow(info)
            if env is not None:
                self.enqueue(env)

    # -- reading ---------------------------------------------------------------
    def take(self, limit: int = 100) -> list[Row]:
        """The next rows not yet handed out, in order; remembered until ``done`` or ``rewind``."""
        with self._lock:
            if self._fresh is not None:
                rows, self._fresh = self._fresh[:limit], self._fresh[limit:]
            else:
                cur = self._db.execute(
                    "SELECT pos, seq, topic, payload, qos, retain FROM outbox WHERE pos > ? ORDER BY pos LIMIT ?",
                    (self._cursor, limit))
                rows = [Row(pos, seq, topic, bytes(payload), qos, bool(retain))
                        for pos, seq, topic, payload, qos, retain in cur]
                if len(rows) < limit:
                    self._fresh = []  # caught up: from now on the commits feed take()
            for row in rows:
                self._taken[row.pos] = row.size
            if rows:
                self._cursor = rows[-1].pos
            return rows

    def done(self, positions: list[int]) -> None:
        """The broker has these rows: remove them."""
        with self._lock:
            known = [p for p in positions if p in self._taken]
            if not known:
                return
            self._set_sync("NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            self._record_next_seq()
            self._db.executemany("DELETE FROM outbox WHERE pos = ?", [(p,) for p in known])
            self._db.execute("COMMIT")
            self._dirty = True
            for p in known:
                self.bytes -= self._taken.pop(p)
            self.depth -= len(known)

    def rewind(self) -> None:
        """Forget what was handed out: ``take`` starts again from the oldest row."""
        with self._lock:
            self._taken.clear()
            self._cursor = 0
            self._fresh = None

    def in_flight(self) -> int:
        return len(self._taken)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def sync(self) -> None:
        """Make every commit so far durable (the syncer fsyncs the WAL)."""
        self._sync_now.set()

    def _sync_loop(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")  # a checkpoint fsyncs the WAL, then the database
        wal = _WalFile(Path(f"{self.path}-wal"))
        last_checkpoint = time.monotonic()
        try:
            while not self._sync_stop.is_set():
                self.heartbeat = time.monotonic()
                self._sync_now.wait(1.0)
                self._sync_now.clear()
                due = self._commits >= CHECKPOINT_COMMITS or (
                    self._commits and time.monotonic() - last_checkpoint >= CHECKPOINT_S)
                if not (self._dirty or due):
                    continue
                self._dirty = False
                try:
                    if due or not wal.fsync():
                        self._commits = 0
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        last_checkpoint = time.monotonic()
                    self.syncs += 1
                except (sqlite3.Error, OSError) as e:
                    log.warning("outbox sync failed: %s", e)
                    self._dirty = True
        finally:
            wal.close()
            db.close()

    def close(self) -> None:
        self._sync_stop.set()
        self._sync_now.set()
        self._syncer.join(timeout=5)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (and their fsyncs) are the syncer's
        self._db.executescript(SCHEMA)
        self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()

    def _record_next_seq(self) -> None:
        """With every delete: the seq counter survives an empty outbox. (Rows still in the
        table keep it too: at open, next_seq = max(recorded, MAX(seq) + 1).)"""
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (self._next_seq,))

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default


class _WalFile:
    """The WAL file, fsynced through a descriptor of our own (the same durability as
    SQLite's own sync of the WAL). Reopened if SQLite ever recreated the file."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.ino = -1

    def fsync(self) -> bool:
        """False when there is no WAL file to sync (the caller checkpoints instead)."""
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False
        if self.fd is None or ino != self.ino:
            self.close()
            self.fd = os.open(self.path, os.O_RDONLY)
            self.ino = os.fstat(self.fd).st_ino
            dfd = os.open(self.path.parent, os.O_RDONLY)  # the WAL's name survives a power cut too
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        os.fsync(self.fd)
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _json_list(taken: dict[int, int]) -> str:
    return "[" + ",".join(str(p) for p in taken) + "]"
