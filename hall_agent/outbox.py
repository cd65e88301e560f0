"""The durable outbox (SPEC section 6), and what it does when the disk fails.

Every envelope is committed to SQLite (WAL) with its ``seq`` assigned in the
same transaction, before anything hands it to MQTT; a row leaves only when
the link says the broker has it (PUBACK for QoS 1, written for QoS 0).  One
envelope can have several rows (its routes: ``state/…`` and ``event``) that
share its seq.  Rows go out in insertion order (``pos``).  Small pieces of
state (the active alerts) are committed in the same transaction as the
envelope that announces them (``state=`` of ``enqueue_many``).

Durability policy (``fsync``):

- ``"events"`` (default): every commit uses ``synchronous=NORMAL`` (safe
  against a crash of the agent at once; nothing on the caller's path waits
  for the disk). A syncer thread fsyncs the WAL file as soon as an envelope
  other than a reading or health was committed, and at least once a second
  otherwise. It fsyncs the WAL file itself rather than checkpointing (a
  checkpoint makes the next commit restart the WAL: 0.2-0.5 ms on an
  alarm's path); it checkpoints every ``CHECKPOINT_COMMITS`` commits or
  ``CHECKPOINT_S`` seconds.
- ``"always"``: every commit fsyncs before ``enqueue`` returns (slow on SD cards).
- ``"never"``: only the once-a-second sync.

seq is never given twice, power cuts included: seqs are reserved in blocks of
``SEQ_BLOCK`` in a small file beside the database (``outbox.sqlite3.seq``),
written and fsynced *before* any seq it covers is used.  A clean close
records the next seq; after an unclean stop the next open starts past the
whole reservation and says so (``skipped``: the agent's ``seq-skipped``
event).

When a write fails (disk full, read-only, I/O error, locked) nothing is lost
while the process lives: the rows (and the state that came with them) are
kept in memory, ``take`` hands them out like any other and ``done`` forgets
them; the syncer retries every ``RETRY_S`` seconds and, once the disk takes
writes again, writes everything still held.  ``failed`` says why meanwhile,
``on_storage(reason | None)`` is told of each change (from the syncer
thread, never under a lock).  A corrupt database met at any moment is set
aside (renamed, with its WAL, never deleted), a fresh one takes what could
be read from it and what memory holds, and ``on_corrupt(path)`` is told.

When the rows' payload bytes exceed ``max_bytes`` the oldest readings are
dropped first, then the oldest health envelopes, down to 90 % of the cap;
other envelopes are never dropped; with nothing left to drop a new reading
or health is refused before it gets a seq (no gap).  Every dropped seq is
accounted for in ``outbox-overflow`` reports, at most one every
``OVERFLOW_REPORT_S`` (the drops in between are kept in the database and
reported together, in parts of at most ``OVERFLOW_RANGES`` ranges).
"""

from __future__ import annotations

import json
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
SEQ_BLOCK = 1000           # seqs reserved (durably) at a time
RETRY_S = 2.0              # a failed disk is tried again this often
MEMORY_MAX_BYTES = 32 * 1024 * 1024  # rows held in memory while the disk fails (readings dropped first)
OVERFLOW_REPORT_S = 60.0   # at most one overflow report this often
OVERFLOW_RANGES = 200      # seq ranges per overflow report (more: several parts)

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
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# pos is given by the outbox (one writer, under its lock), not AUTOINCREMENT: no
# sqlite_sequence page to write on every commit. Only the droppable types are
# indexed (partial indexes, for the overflow), so an alarm's commit writes the
# table's pages alone. Outboxes made by earlier versions (AUTOINCREMENT) work as
# they are.

_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)


class Row(NamedTuple):  # a tuple: built for every committed row, so cheap to make
    pos: int
    seq: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    type: str = ""

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic) + ROW_OVERHEAD


class OutboxClosed(RuntimeError):
    """An envelope arrived after the outbox was closed (the agent is stopping)."""


class OutboxUnavailable(RuntimeError):
    """The outbox cannot be opened at all (permissions, a full or read-only disk at
    start): one clear line for the operator, never a reason to destroy the file."""


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
    part: int = 1
    parts: int = 1

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


def is_corruption(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT
    text = str(e).lower()
    return "malformed" in text or "not a database" in text


def describe(e: BaseException) -> str:
    """One line naming what failed: SQLite's message and code, or the OS error."""
    name = getattr(e, "sqlite_errorname", None)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return f"{e} ({name})" if name else str(e) or type(e).__name__


class Outbox:
    def __init__(self, path: str | Path, max_bytes: int = 256 * 1024 * 1024, fsync: str = "events",
                 on_overflow: Callable[[Dropped], Envelope | None] | None = None,
                 on_storage: Callable[[str | None], None] | None = None,
                 on_corrupt: Callable[[Path], None] | None = None,
                 fault: Callable[[str], None] | None = None, memory_max_bytes: int = MEMORY_MAX_BYTES):
        if fsync not in ("events", "always", "never"):
            raise ValueError(f"fsync policy {fsync!r}")
        self.path = Path(path)
        self.seq_path = self.path.with_name(self.path.name + ".seq")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.memory_max_bytes = min(memory_max_bytes, max_bytes)
        self.fsync = fsync
        self.on_overflow = on_overflow
        self.on_storage = on_storage
        self.on_corrupt = on_corrupt
        #: the fault seam: called with the write site's name ("commit", "delete", "drop",
        #: "sync", "reserve", "flush", "close") before each write; a test raises from it
        self.fault = fault
        self._lock = threading.RLock()
        self.set_aside: Path | None = None
        self.corruptions: list[Path] = []
        self._check_access()
        try:
            self._open()
        except sqlite3.Error as e:
            if not is_corruption(e):
                try:
                    self._db.close()
                except Exception:
                    pass
                raise OutboxUnavailable(f"outbox {self.path} cannot be opened: {describe(e)}"
                                        + _hint(self.path.parent)) from None
            # a corrupt file (a failing SD card): keep it for inspection, start afresh rather than crash-loop
            self._db.close()
            self.set_aside = self._move_aside(str(e))
            self._open()
        self._sync_mode = ""
        self._set_sync("NORMAL")
        self._dirty = False        # commits not yet fsynced
        self._sync_wanted = False  # a commit that wants its fsync soon
        self._commits = 0          # commits since the last checkpoint
        # every committed row not yet handed out, in order, while take() keeps up (else None)
        self._fresh: list[Row] | None = None
        # while the disk fails: rows held in memory only (pos -> row), state to write, rows to delete
        self._mem: dict[int, Row] = {}
        self._mem_state: dict[str, str | None] = {}
        self._mem_deletes: set[int] = set()
        self.failed: str | None = None
        self._failed_since: float | None = None
        self._corrupt: str | None = None  # corruption met after open, set aside by the syncer
        self._notified: str | None = None
        self._next_retry = 0.0
        self.dropped_total = self._meta("dropped_total", 0)
        self.refused_total = 0     # readings/health refused (nothing droppable left): no seq, no gap
        self._over_cap = False
        self._pending_drops: list[int] = self._load_pending_drops()
        self._last_report = -OVERFLOW_REPORT_S
        self.skipped: tuple[int, int] | None = None
        self._reserved = 0
        self._reserve_dirty = False
        self._next_seq = self._start_seq()
        self.depth, self.bytes = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ROW_OVERHEAD}), 0) "
            "FROM outbox").fetchone()
        self._last_pos = self._db.execute("SELECT COALESCE(MAX(pos), 0) FROM outbox").fetchone()[0]
        self._cursor = 0           # highest pos handed out by take() from the table
        if self.depth == 0:
            self._fresh = []
        self._taken: dict[int, Row] = {}  # pos -> row, handed out and not yet done
        self._closed = False
        self.syncs = 0
        self._generation = 0       # a new database file (after corruption): the syncer reconnects
        self.heartbeat = time.monotonic()
        self._sync_now = threading.Event()
        self._sync_stop = threading.Event()
        self._reserve_dirty = True  # always rewritten at open: a clean-stop mark must not outlive this run
        self._reserve(self._next_seq)  # before any seq is used
        self._syncer = threading.Thread(target=self._sync_loop, name="outbox-sync", daemon=True)
        self._syncer.start()

    # -- seq reservation -------------------------------------------------------
    def _start_seq(self) -> int:
        recorded = self._meta("next_seq", 1)
        last = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        known = max(recorded, (last or 0) + 1)
        mark = self._read_seq_file()
        if mark is None:  # a new outbox, or one of a version without reservations
            return known
        reserved, clean_next = mark
        self._reserved = reserved
        if clean_next is not None:  # a clean stop said where it was
            return max(known, clean_next)
        start = max(known, reserved)
        if reserved > known:
            self.skipped = (known, reserved - 1)
            log.warning("the last stop was not clean: seq %d..%d may have been used, starting at %d",
                        known, reserved - 1, start)
        return start

    def _read_seq_file(self) -> tuple[int, int | None] | None:
        try:
            doc = json.loads(self.seq_path.read_text())
            return int(doc["reserved"]), (int(doc["next"]) if doc.get("next") is not None else None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = self.seq_path.with_name(f"{self.seq_path.name}.damaged-{int(time.time())}")
            log.error("seq reservation %s unreadable (%s): moved to %s; the database's seq is used",
                      self.seq_path, e, aside)
            try:
                self.seq_path.rename(aside)
            except OSError:
                pass
            return None

    def _write_seq_file(self, reserved: int, clean_next: int | None) -> None:
        self._check("reserve")
        tmp = self.seq_path.with_name(self.seq_path.name + ".tmp")
        data = json.dumps({"reserved": reserved, "next": clean_next}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.seq_path)
        _fsync_dir(self.seq_path.parent)

    def _reserve(self, upto: int) -> bool:
        """Make seqs below ``upto`` safe to use (durably reserved); True if they are."""
        if upto < self._reserved and not self._reserve_dirty:
            return True
        target = max(upto, self._next_seq) + SEQ_BLOCK
        try:
            self._write_seq_file(target, None)
        except (OSError, sqlite3.Error) as e:
            self._reserve_dirty = True
            self._failure(e, "reserve")
            return False
        self._reserved = target
        self._reserve_dirty = False
        return True

    # -- writing -------------------------------------------------------------
    def enqueue(self, env: Envelope, state: dict[str, str | None] | None = None) -> int:
        """Commit the envelope (all its routes) and return its seq."""
        return self.enqueue_many([env], state=state)[0]

    def enqueue_many(self, items: list[Envelope | Raw], defer_sync: bool = False,
                     state: dict[str, str | None] | None = None) -> list[int | None]:
        """Commit several envelopes (and raw messages) in one transaction, in list
        order; envelopes get consecutive seqs (None for a raw message). ``state``
        (key -> value, None deletes) is committed in the same transaction.

        If the disk does not take the write, the rows and the state are held in
        memory and handed out all the same (see the module's docstring).

        ``defer_sync``: the caller calls ``nudge()`` itself once it has handed the
        rows to MQTT (the syncer's fsync does not compete with the alarm path)."""
        for item in items:
            if isinstance(item, Envelope) and not item.routes:
                raise ValueError(f"envelope {item.type} has no route")
        with self._lock:
            if self._closed:
                raise OutboxClosed("the outbox is closed: the agent is stopping")
            if self.bytes > self.max_bytes and len(items) == 1 and isinstance(items[0], Envelope) \
                    and items[0].type in DROPPABLE and not state and not self._droppable_left():
                self.refused_total += 1  # refused before it has a seq: no gap to account for
                if self.refused_total == 1 or self.refused_total % 1000 == 0:
                    log.warning("outbox full of envelopes that may not be dropped: %d readings/health "
                                "refused", self.refused_total)
                return [None]
            seq = self._next_seq
            count = sum(1 for i in items if isinstance(i, Envelope))
            if seq + count > self._reserved:
                self._reserve(seq + count)  # a failure is the storage failure: the alarm still goes out
            rows: list[Row] = []
            seqs: list[int | None] = []
            pos = self._last_pos + 1
            for item in items:
                if isinstance(item, Raw):
                    rows.append(Row(pos, None, item.topic, item.payload, item.qos, item.retain, "raw"))
                    pos += 1
                    seqs.append(None)
                    continue
                payload = item.encode(seq)
                for r in item.routes:
                    rows.append(Row(pos, seq, r.topic, payload, r.qos, r.retain, item.type))
                    pos += 1
                seqs.append(seq)
                seq += 1
            durable = any(isinstance(i, Raw) or self._durable(i.type) for i in items)
            self._next_seq = seq
            self._last_pos = pos - 1
            if self.failed is None:
                try:
                    self._commit(rows, durable, state)
                except (sqlite3.Error, OSError) as e:
                    self._failure(e, "commit")
            if self.failed is not None:
                self._hold(rows, state)
            self.depth += len(rows)
            self.bytes += sum(r.size for r in rows)
            if self.bytes > self.max_bytes or (self._mem and self._mem_bytes() > self.memory_max_bytes):
                self._overflow()
            self._report_drops()
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

    def _check(self, site: str) -> None:
        if self.fault is not None:
            self.fault(site)

    def _commit(self, rows: list[Row], durable: bool, state: dict[str, str | None] | None) -> None:
        self._check("commit")
        self._set_sync("FULL" if durable and self.fsync == "always" else "NORMAL")
        db = self._db
        first = rows[0].pos
        if len(rows) <= INSERT_CHUNK and not state:  # one statement is one transaction: no BEGIN/COMMIT
            self._insert(rows)
        else:
            db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(rows), INSERT_CHUNK):
                    self._insert(rows[i:i + INSERT_CHUNK])
                self._write_state(state or {})
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        self._dirty = True
        self._commits += 1
        if durable and self.fsync == "events":
            self._sync_wanted = True
        if self._fresh is not None and (not self._fresh or self._fresh[-1].pos < first) \
                and len(self._fresh) + len(rows) <= FRESH_MAX:
            self._fresh += rows
        else:
            self._fresh = None  # take() fell behind: it reads the table until it catches up

    def _insert(self, rows: list[Row]) -> None:
        """Insert rows at their positions with one statement."""
        sql = _INSERT_SQL.get(len(rows))
        if sql is None:
            sql = _INSERT_SQL[len(rows)] = ("INSERT INTO outbox(pos, seq, type, topic, payload, qos, retain) VALUES "
                                            + ",".join(["(?,?,?,?,?,?,?)"] * len(rows)))
        params: list = []
        for r in rows:
            params += (r.pos, r.seq, r.type, r.topic, r.payload, r.qos, int(r.retain))
        self._db.execute(sql, params)

    def _write_state(self, state: dict[str, str | None]) -> None:
        for key, value in state.items():
            if value is None:
                self._db.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (key, value))

    def _hold(self, rows: list[Row], state: dict[str, str | None] | None) -> None:
        """The disk failed: keep the rows (and their state) in memory."""
        for r in rows:
            self._mem[r.pos] = r
        if state:
            self._mem_state.update(state)
        self._sync_now.set()

    def _mem_bytes(self) -> int:
        return sum(r.size for r in self._mem.values())

    def _set_sync(self, mode: str) -> None:
        if mode != self._sync_mode:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    # -- failures ------------------------------------------------------------------
    def _failure(self, e: BaseException, site: str) -> None:
        """A write (or read) failed: hold everything in memory from now on until the
        syncer finds the disk working again; a corrupt file is set aside by the syncer."""
        reason = f"{site}: {describe(e)}"
        if isinstance(e, sqlite3.Error) and is_corruption(e):
            self._corrupt = reason
        if self.failed is None:
            log.error("outbox %s cannot be written (%s): envelopes are held in memory and sent from there; "
                      "retrying every %g s", self.path, reason, RETRY_S)
            self._failed_since = time.monotonic()
            self._next_retry = time.monotonic() + RETRY_S
        self.failed = reason
        self._fresh = None
        self._sync_now.set()

    def _retry(self) -> bool:
        """Write what memory holds (and set a corrupt file aside first). True once the
        disk took it all."""
        with self._lock:
            if self._closed and self._db is None:
                return False
            if self._corrupt is not None:
                if not self._replace_corrupt():
                    return False
            try:
                self._check("flush")
                if not self._reserve(self._next_seq):
                    raise OSError(self.failed or "the seq reservation cannot be written")
                db = self._db
                self._set_sync("FULL")  # the commit itself proves the disk takes writes and fsyncs
                db.execute("BEGIN IMMEDIATE")
                try:
                    rows = sorted(self._mem.values())
                    for i in range(0, len(rows), INSERT_CHUNK):
                        self._insert(rows[i:i + INSERT_CHUNK])
                    self._write_state(self._mem_state)
                    if self._mem_deletes:
                        db.executemany("DELETE FROM outbox WHERE pos = ?", [(p,) for p in self._mem_deletes])
                    self._record_next_seq()
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
                self._set_sync("NORMAL")
            except (sqlite3.Error, OSError) as e:
                if isinstance(e, sqlite3.Error) and is_corruption(e):
                    self._corrupt = f"flush: {describe(e)}"
                self.failed = self.failed or f"flush: {describe(e)}"
                log.debug("outbox still not writable: %s", describe(e))
                return False
            held = len(self._mem)
            self._mem.clear()
            self._mem_state.clear()
            self._mem_deletes.clear()
            self._fresh = None  # the rows just written that were not handed out: take() reads them
            took = time.monotonic() - (self._failed_since or time.monotonic())
            log.warning("outbox %s writable again after %.0f s: %d rows held in memory written",
                        self.path, took, held)
            self.failed = None
            self._failed_since = None
            return True

    def _replace_corrupt(self) -> bool:
        """Set the corrupt file aside; a fresh database takes every row that can still be
        read from it and every row memory holds. Under the lock."""
        old = self._db
        rows: dict[int, Row] = {}
        state: dict[str, str] = {}
        try:
            for pos, seq, type_, topic, payload, qos, retain in old.execute(
                    "SELECT pos, seq, type, topic, payload, qos, retain FROM outbox ORDER BY pos"):
                rows[pos] = Row(pos, seq, topic, bytes(payload), qos, bool(retain), type_)
        except sqlite3.Error as e:
            log.error("outbox rows unreadable in the corrupt file (%s): only those in memory are kept", e)
        try:
            state = dict(old.execute("SELECT key, value FROM state").fetchall())
        except sqlite3.Error:
            pass
        rows.update({r.pos: r for r in self._taken.values()})
        rows.update({r.pos: r for r in self._fresh or []})
        rows.update(self._mem)
        for p in self._mem_deletes:
            rows.pop(p, None)
        try:
            old.close()
        except sqlite3.Error:
            pass
        try:
            aside = self._move_aside(self._corrupt or "corrupt")
            self._open()
            self._sync_mode = ""
        except (OSError, sqlite3.Error) as e:
            self.failed = f"corrupt, and no fresh outbox could be made: {describe(e)}"
            return False
        self._corrupt = None
        self._generation += 1
        self.set_aside = aside
        self.corruptions.append(aside)
        self._mem = {p: rows[p] for p in sorted(rows)}  # written by the flush that follows
        for key, value in state.items():
            self._mem_state.setdefault(key, value)
        self._mem_deletes.clear()
        self.depth = len(self._mem)
        self.bytes = sum(r.size for r in self._mem.values())
        return True

    def _move_aside(self, why: str) -> Path:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is corrupt (%s): moved to %s, starting a new one", self.path, why, aside)
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                side.rename(Path(f"{aside}{suffix}"))  # kept with it, never deleted
        return aside

    def _check_access(self) -> None:
        """An outbox the agent's user may not read and write is a clear error, not a traceback."""
        folder = self.path.parent
        for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"), self.seq_path):
            if p.exists() and not os.access(p, os.R_OK | os.W_OK):
                st = p.stat()
                raise OutboxUnavailable(f"{p}: not readable and writable by this user (uid {os.geteuid()}); "
                                        f"it belongs to uid {st.st_uid}, mode {st.st_mode & 0o777:o}: "
                                        f"chown it to the agent's user")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutboxUnavailable(f"{folder}: the state folder is not writable by this user (uid {os.geteuid()})")

    # -- overflow ------------------------------------------------------------------
    def _droppable_left(self) -> bool:
        if any(r.type in DROPPABLE and r.pos not in self._taken for r in self._mem.values()):
            return True
        if self.failed is not None:
            return False
        try:
            for type_ in DROPPABLE:
                if self._db.execute(f"SELECT 1 FROM outbox WHERE type = '{type_}' LIMIT 1").fetchone():
                    return True
        except sqlite3.Error as e:
            self._failure(e, "read")
        return False

    def _overflow(self) -> None:
        self._fresh = None  # rows not yet handed out may go: take() reads the table again
        dropped: list[int] = []
        # memory first: while the disk fails, what is held there is bounded too
        mem_target = int(self.memory_max_bytes * 0.9)
        target = int(self.max_bytes * 0.9)
        for type_ in DROPPABLE:
            mem_bytes = self._mem_bytes()
            for r in list(self._mem.values()):
                if mem_bytes <= mem_target and self.bytes <= target:
                    break
                if r.type == type_ and r.pos not in self._taken:
                    del self._mem[r.pos]
                    mem_bytes -= r.size
                    self.bytes -= r.size
                    self.depth -= 1
                    dropped.append(r.seq)
        if self.failed is None:
            try:
                dropped += self._drop_from_table(target)
            except (sqlite3.Error, OSError) as e:
                self._failure(e, "drop")
        if dropped:
            self.dropped_total += len(dropped)
            self._pending_drops += dropped
            if self.failed is not None:  # written with the held rows: the next report names them
                self._mem_state["outbox/unreported"] = json.dumps(seq_ranges(self._pending_drops))
            log.warning("outbox full: dropped %d envelopes, seq %d..%d", len(dropped), min(dropped), max(dropped))
        elif self.bytes > self.max_bytes and not self._over_cap:
            self._over_cap = True  # said once, until the outbox is back under its cap
            log.warning("outbox over its cap (%d bytes) with nothing left that may be dropped: new readings "
                        "and health are refused until it drains", self.bytes)
        if self.bytes <= self.max_bytes:
            self._over_cap = False

    def _drop_from_table(self, target: int) -> list[int]:
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
                self._check("drop")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._record_next_seq()
                    self._db.executemany("DELETE FROM outbox WHERE pos = ?", [(v[0],) for v in victims])
                    self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped_total', ?)",
                                     (self.dropped_total + len(dropped) + len(victims),))
                    # the drops not yet reported survive a crash: the next report names them
                    self._db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('outbox/unreported', ?)",
                                     (json.dumps(seq_ranges(self._pending_drops + dropped + [v[1] for v in victims])),))
                    self._db.execute("COMMIT")
                except BaseException:
                    _rollback(self._db)
                    raise
                self.depth -= len(victims)
                self.bytes -= sum(v[2] for v in victims)
                dropped += [v[1] for v in victims]
        return dropped

    def _load_pending_drops(self) -> list[int]:
        try:
            row = self._db.execute("SELECT value FROM state WHERE key = 'outbox/unreported'").fetchone()
        except sqlite3.Error:
            return []
        if not row:
            return []
        try:
            return [s for a, b in json.loads(row[0]) for s in range(int(a), int(b) + 1)]
        except (ValueError, TypeError):
            return []

    @property
    def unreported_drops(self) -> list[tuple[int, int]]:
        """Dropped seqs not yet named by an overflow report (the next one names them)."""
        return seq_ranges(self._pending_drops)

    def _report_drops(self, force: bool = False) -> None:
        """Report the drops so far, at most once every OVERFLOW_REPORT_S. Under the lock."""
        if not self._pending_drops or self.on_overflow is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < OVERFLOW_REPORT_S:
            return
        self._last_report = now
        ranges = seq_ranges(self._pending_drops)
        self._pending_drops = []
        parts = [ranges[i:i + OVERFLOW_RANGES] for i in range(0, len(ranges), OVERFLOW_RANGES)]
        envs = []
        for i, part in enumerate(parts, 1):
            count = sum(b - a + 1 for a, b in part)
            env = self.on_overflow(Dropped(count, part, i, len(parts)))
            if env is not None:
                envs.append(env)
        if envs:
            self.enqueue_many(envs, state={"outbox/unreported": None})

    # -- reading ---------------------------------------------------------------
    def take(self, limit: int = 100) -> list[Row]:
        """The next rows not yet handed out, in order; remembered until ``done`` or ``rewind``."""
        with self._lock:
            rows: list[Row] = []
            caught_up = True
            if self._fresh is not None:
                rows, self._fresh = self._fresh[:limit], self._fresh[limit:]
            elif self._corrupt is None:
                try:
                    cur = self._db.execute(
                        "SELECT pos, seq, topic, payload, qos, retain, type FROM outbox WHERE pos > ? "
                        "ORDER BY pos LIMIT ?", (self._cursor, limit))
                    fetched = [Row(pos, seq, topic, bytes(payload), qos, bool(retain), type_)
                               for pos, seq, topic, payload, qos, retain, type_ in cur]
                except sqlite3.Error as e:
                    self._failure(e, "read")
                    fetched = []
                else:
                    if fetched:
                        self._cursor = fetched[-1].pos
                    caught_up = len(fetched) < limit
                    if caught_up and self.failed is None:
                        self._fresh = []  # caught up: from now on the commits feed take()
                rows = [r for r in fetched if r.pos not in self._taken and r.pos not in self._mem_deletes]
            if self._mem and len(rows) < limit and (caught_up or self.failed is not None):
                rows += [r for r in self._mem.values() if r.pos not in self._taken][:limit - len(rows)]
            for row in rows:
                self._taken[row.pos] = row
            if rows and rows[-1].pos not in self._mem:
                self._cursor = max(self._cursor, rows[-1].pos)
            return rows

    def done(self, positions: list[int]) -> None:
        """The broker has these rows: remove them."""
        with self._lock:
            known = [p for p in positions if p in self._taken]
            if not known:
                return
            on_disk = [p for p in known if p not in self._mem]
            for p in known:
                self._mem.pop(p, None)
            if on_disk and self.failed is None:
                try:
                    self._check("delete")
                    self._set_sync("NORMAL")
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._record_next_seq()
                        self._db.executemany("DELETE FROM outbox WHERE pos = ?", [(p,) for p in on_disk])
                        self._db.execute("COMMIT")
                    except BaseException:
                        _rollback(self._db)
                        raise
                    self._dirty = True
                except (sqlite3.Error, OSError) as e:
                    self._failure(e, "delete")
            if on_disk and self.failed is not None:
                self._mem_deletes.update(on_disk)  # deleted once the disk takes writes again
            for p in known:
                self.bytes -= self._taken.pop(p).size
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

    @property
    def held_in_memory(self) -> int:
        return len(self._mem)

    def state_items(self, prefix: str = "") -> dict[str, str]:
        """Committed state (with what memory holds while the disk fails) under a key prefix."""
        with self._lock:
            items: dict[str, str] = {}
            try:
                items = dict(self._db.execute("SELECT key, value FROM state WHERE substr(key, 1, ?) = ?",
                                              (len(prefix), prefix)).fetchall())
            except sqlite3.Error as e:
                log.error("outbox state unreadable: %s", e)
            for key, value in self._mem_state.items():
                if key.startswith(prefix):
                    if value is None:
                        items.pop(key, None)
                    else:
                        items[key] = value
            return items

    def put_state(self, state: dict[str, str | None]) -> None:
        """Commit state without an envelope (importing an older state file)."""
        with self._lock:
            if self.failed is None:
                try:
                    self._check("commit")
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._write_state(state)
                        self._db.execute("COMMIT")
                    except BaseException:
                        _rollback(self._db)
                        raise
                    self._sync_wanted = True
                    return
                except (sqlite3.Error, OSError) as e:
                    self._failure(e, "commit")
            self._mem_state.update(state)

    def status(self) -> dict:
        """For ``status`` and ``health``: whether the disk takes writes, and what memory holds."""
        return {"ok": self.failed is None, "error": self.failed, "held_in_memory": len(self._mem),
                "failed_for_s": round(time.monotonic() - self._failed_since, 1) if self._failed_since else None}

    def sync(self) -> None:
        """Make every commit so far durable (the syncer fsyncs the WAL)."""
        self._sync_now.set()

    # -- the syncer thread -----------------------------------------------------------
    def _sync_loop(self) -> None:
        db = None
        generation = -1
        wal = _WalFile(Path(f"{self.path}-wal"))
        last_checkpoint = time.monotonic()
        try:
            while not self._sync_stop.is_set():
                self.heartbeat = time.monotonic()
                self._sync_now.wait(min(1.0, RETRY_S) if self.failed is not None else 1.0)
                self._sync_now.clear()
                try:
                    self._turn_failed()
                    with self._lock:
                        if self._pending_drops:
                            self._report_drops()
                        if self.failed is None and self._reserved - self._next_seq < SEQ_BLOCK // 2:
                            self._reserve(self._next_seq)  # ahead of use, off the callers' path
                except Exception:  # the syncer outlives anything: it is how the disk comes back
                    log.exception("outbox syncer error")
                if self.failed is not None:
                    continue
                if db is None or generation != self._generation:
                    if db is not None:
                        db.close()
                    wal.close()
                    db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                    db.execute("PRAGMA synchronous=NORMAL")  # a checkpoint fsyncs the WAL, then the database
                    generation = self._generation
                due = self._commits >= CHECKPOINT_COMMITS or (
                    self._commits and time.monotonic() - last_checkpoint >= CHECKPOINT_S)
                if not (self._dirty or due):
                    continue
                self._dirty = False
                try:
                    self._check("sync")
                    if due or not wal.fsync():
                        self._commits = 0
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        last_checkpoint = time.monotonic()
                    self.syncs += 1
                except (sqlite3.Error, OSError) as e:
                    self._dirty = True
                    with self._lock:  # commits may not be on the disk: hold from now on, retry
                        self._failure(e, "sync")
        finally:
            wal.close()
            if db is not None:
                db.close()

    def _turn_failed(self) -> None:
        """Retry a failed disk when due; tell the agent of every change (outside the lock)."""
        if self.failed is not None and time.monotonic() >= self._next_retry:
            self._next_retry = time.monotonic() + RETRY_S
            self._retry()
        while self.corruptions and self.on_corrupt is not None:
            aside = self.corruptions.pop(0)
            try:
                self.on_corrupt(aside)
            except Exception:
                log.exception("outbox-corrupt handler failed")
        if self.failed != self._notified and (self.failed is None or self._notified is None):
            self._notified = self.failed
            if self.on_storage is not None:
                try:
                    self.on_storage(self.failed)
                except Exception:
                    log.exception("storage handler failed")

    def close(self) -> None:
        """Stop the syncer, write what memory holds if the disk takes it, and record a
        clean stop (the next start needs to skip no seq). Never raises for the disk."""
        self._sync_stop.set()
        self._sync_now.set()
        self._syncer.join(timeout=5)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.failed is not None:
                self._retry()
            clean = self.failed is None
            try:
                if clean:
                    self._check("close")
                    self._record_next_seq()
                    self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped_total', ?)",
                                     (self.dropped_total,))
                    if self._pending_drops:
                        self._write_state({"outbox/unreported": json.dumps(seq_ranges(self._pending_drops))})
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, OSError) as e:
                clean = False
                log.error("outbox %s: the last write failed (%s)", self.path, describe(e))
            finally:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
            if clean:
                try:
                    self._write_seq_file(self._reserved, self._next_seq)
                except (OSError, sqlite3.Error) as e:
                    log.error("outbox %s: the clean stop could not be recorded (%s): the next start "
                              "skips the reserved seqs", self.path, describe(e))
            elif self._mem:
                log.error("outbox %s: stopping with %d rows that only memory held: they are lost",
                          self.path, len(self._mem))

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


def _rollback(db: sqlite3.Connection) -> None:
    """After a failed statement: SQLite may already have rolled the transaction back."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _hint(folder: Path) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    if st.f_bavail * st.f_frsize < 1024 * 1024:
        return f" (the state folder's file system is full: {st.f_bavail * st.f_frsize // 1024} KiB free)"
    if st.f_flag & os.ST_RDONLY:
        return " (the state folder's file system is read-only)"
    return ""


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
            _fsync_dir(self.path.parent)  # the WAL's name survives a power cut too
        os.fsync(self.fd)
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _json_list(taken: dict) -> str:
    return "[" + ",".join(str(p) for p in taken) + "]"
