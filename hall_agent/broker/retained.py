"""The last retained payload of every topic the agent owns (SPEC section 3).

A broker restarted without persistence (or with an old autosave) forgets the
retained topics; the agent then republishes what it holds: the same bytes,
so the same ``id`` and ``seq``. The store is updated by the link's pump when
the broker has confirmed a row (PUBACK for QoS 1, a later PUBACK or PINGRESP
for QoS 0) and *before* the row leaves the outbox: a crash in between sends
the row again, never leaves the store older than what the broker showed.
An empty retained payload (an alert cleared) removes the topic.

SQLite (WAL, ``synchronous=NORMAL``) in the state folder, ``retained.sqlite3``:
one small upsert per confirmation batch, on the pump thread, never on the
alarm path. A damaged file is set aside (``.damaged``) and the store starts
empty; the agent's own state then repopulates it as things are published.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, NamedTuple

log = logging.getLogger(__name__)


class Retained(NamedTuple):
    payload: bytes
    qos: int


class RetainedStore:
    def __init__(self, path: Path | None):
        """``path`` None: in memory only (tests, one-shot commands)."""
        self.path = path
        self._lock = threading.Lock()
        self._items: dict[str, Retained] = {}
        self._db: sqlite3.Connection | None = None
        self.failed: str | None = None  # the last write error, for health
        if path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        try:
            self._db = self._connect()
            rows = self._db.execute("SELECT topic, payload, qos FROM retained").fetchall()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "malformed" not in str(e) and \
                    "not a database" not in str(e):
                log.warning("retained store %s cannot be read (%s): republishing only what is "
                            "published from now on", self.path, e)
                self._db = None
                return
            aside = self.path.with_name(self.path.name + ".damaged")
            log.warning("retained store %s is damaged (%s): set aside as %s, starting empty",
                        self.path, e, aside)
            if self._db is not None:
                self._db.close()
            try:
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    side = self.path.with_name(self.path.name + suffix)
                    if side.exists():
                        os.replace(side, aside.with_name(aside.name + suffix))
                self._db = self._connect()
            except (OSError, sqlite3.DatabaseError) as e2:
                log.warning("retained store could not be recreated (%s): kept in memory only", e2)
                self._db = None
            return
        self._items = {t: Retained(bytes(p), q) for t, p, q in rows}

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, "
                   "qos INTEGER NOT NULL)")
        return db

    def update(self, rows: Iterable[tuple[str, bytes, int]]) -> None:
        """Record confirmed retained publications (topic, payload, qos), in order."""
        changes: dict[str, Retained | None] = {}
        for topic, payload, qos in rows:
            changes[topic] = Retained(bytes(payload), qos) if payload else None
        if not changes:
            return
        with self._lock:
            for topic, item in changes.items():
                if item is None:
                    self._items.pop(topic, None)
                else:
                    self._items[topic] = item
            if self._db is None:
                return
            try:
                self._db.execute("BEGIN")
                for topic, item in changes.items():
                    if item is None:
                        self._db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
                    else:
                        self._db.execute("INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?) "
                                         "ON CONFLICT(topic) DO UPDATE SET payload = excluded.payload, "
                                         "qos = excluded.qos", (topic, item.payload, item.qos))
                self._db.execute("COMMIT")
                self.failed = None
            except sqlite3.Error as e:  # the disk: kept in memory, said in health, never raised
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if self.failed is None:
                    log.warning("retained store %s not written (%s): kept in memory", self.path, e)
                self.failed = str(e)

    def items(self) -> dict[str, Retained]:
        with self._lock:
            return dict(self._items)

    def get(self, topic: str) -> Retained | None:
        with self._lock:
            return self._items.get(topic)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None
