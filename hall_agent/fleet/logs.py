"""The ``logs`` command: the agent's own log records, on demand, in chunks.

Arguments (all optional): ``since`` and ``until`` (ISO 8601; without an
offset, the hall's time zone), ``grep`` (a regular expression, matched
case-insensitively against the whole line), ``lines`` (the last N matching
lines, 1 to 2000, default 200).

Source: journald (``journalctl -t hall-agent``, which also holds the runs
before the last restart) when the agent runs under systemd and the journal
can be read; else the in-memory ring of the last ``RING_RECORDS`` records of
this process. The reply says which.

The answer is split into replies of at most 64 KiB each on ``cmd/reply``:
``{"id", "ok": true, "chunk": i, "of": n, "result": {"source", "lines": […]}}``,
``i`` counting from 0; a line too long for one reply is cut and marked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from ..commands import CommandError

RING_RECORDS = 5000
MAX_LINES = 2000
DEFAULT_LINES = 200
MAX_REPLY_BYTES = 64 * 1024
JOURNAL_IDENTIFIER = "hall-agent"
JOURNAL_SCAN = 50_000   # entries read from journald at most per request
CUT = " …[cut]"


@dataclass(frozen=True)
class Line:
    ts: float      # seconds since the epoch
    text: str      # without the time stamp


class Ring(logging.Handler):
    """The last records of this process, cheap enough for the alarm path
    (the message is formatted when asked for, not when logged)."""

    def __init__(self, size: int = RING_RECORDS):
        super().__init__(logging.DEBUG)
        self.records: deque[logging.LogRecord] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[Line]:
        out = []
        for r in list(self.records):
            try:
                msg = r.getMessage()
            except Exception:  # a bad format string in a log call: show it raw
                msg = f"{r.msg!r} {r.args!r}"
            if r.exc_info and r.exc_info[0] is not None:
                msg += f" [{r.exc_info[0].__name__}: {r.exc_info[1]}]"
            out.append(Line(r.created, f"{r.levelname} {r.name}: {msg}"))
        return out


_ring: Ring | None = None
_ring_lock = threading.Lock()


def install_ring() -> Ring:
    """The ring on the root logger (once per process)."""
    global _ring
    with _ring_lock:
        if _ring is None:
            _ring = Ring()
            logging.getLogger().addHandler(_ring)
        return _ring


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") and os.environ.get("JOURNAL_STREAM"))


_PRIORITY = {"0": "CRITICAL", "1": "CRITICAL", "2": "CRITICAL", "3": "ERROR", "4": "WARNING", "5": "INFO",
             "6": "INFO", "7": "DEBUG"}


def journal_lines(since: float | None, until: float | None, journalctl: str = "journalctl",
                  timeout_s: float = 15.0) -> list[Line] | None:
    """Our entries from journald, or None when it cannot be read (then the ring answers)."""
    exe = shutil.which(journalctl)
    if exe is None:
        return None
    cmd = [exe, "-t", JOURNAL_IDENTIFIER, "-o", "json", "--no-pager", "-q", "-n", str(JOURNAL_SCAN)]
    if since is not None:
        cmd.append(f"--since=@{since:.6f}")
    if until is not None:
        cmd.append(f"--until=@{until:.6f}")
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    out = []
    for raw in r.stdout.splitlines():
        try:
            e = json.loads(raw)
            ts = int(e["__REALTIME_TIMESTAMP"]) / 1e6
            msg = e.get("MESSAGE", "")
            if isinstance(msg, list):  # journald gives non-UTF-8 messages as byte arrays
                msg = bytes(msg).decode("utf-8", "replace")
        except (ValueError, KeyError, TypeError):
            continue
        msg = re.sub(r"^<\d>", "", str(msg))
        out.append(Line(ts, f"{_PRIORITY.get(str(e.get('PRIORITY')), 'INFO')} {msg}"))
    return out


def _time_arg(args: dict, key: str, tz: ZoneInfo) -> float | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CommandError("bad-args", f"'{key}' must be an ISO 8601 time such as 2026-12-01T08:30:00+08:00")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError("bad-args", f"'{key}': {value!r} is not an ISO 8601 time "
                                       "such as 2026-12-01T08:30:00+08:00") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz)
    return t.timestamp()


def select(lines: list[Line], since: float | None, until: float | None, pattern: re.Pattern | None,
           count: int, tz: ZoneInfo) -> list[str]:
    out = []
    for line in lines:
        if since is not None and line.ts < since:
            continue
        if until is not None and line.ts > until:
            continue
        stamp = datetime.fromtimestamp(line.ts, timezone.utc).astimezone(tz).isoformat(timespec="milliseconds")
        text = f"{stamp} {line.text}"
        if pattern is not None and not pattern.search(text):
            continue
        out.append(text)
    return out[-count:] if count else []


class Chunks(list):
    """A command result answered in several replies (see ``split_reply``)."""


def command(args: dict[str, Any], tz: ZoneInfo, ring: Ring, use_journal: Callable[[], bool] = under_systemd,
            journalctl: str = "journalctl") -> Chunks:
    unknown = sorted(set(args) - {"since", "until", "grep", "lines"})
    if unknown:
        raise CommandError("bad-args", f"unknown arguments: {', '.join(unknown)}; "
                                       "known: since, until, grep, lines")
    since, until = _time_arg(args, "since", tz), _time_arg(args, "until", tz)
    count = args.get("lines", DEFAULT_LINES)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_LINES:
        raise CommandError("bad-args", f"'lines' must be a whole number from 1 to {MAX_LINES}")
    grep = args.get("grep")
    pattern = None
    if grep is not None:
        if not isinstance(grep, str) or len(grep) > 200:
            raise CommandError("bad-args", "'grep' must be a regular expression of at most 200 characters")
        try:
            pattern = re.compile(grep, re.IGNORECASE)
        except re.error as e:
            raise CommandError("bad-args", f"'grep': {grep!r} is not a regular expression ({e})") from None
    source, lines = "ring", None
    if use_journal():
        lines = journal_lines(since, until, journalctl)
        if lines is not None:
            source = "journald"
    if lines is None:
        lines = ring.lines()
    selected = select(lines, since, until, pattern, count, tz)
    return Chunks([{"source": source, "matched": len(selected), "lines": selected}])


def _plain_json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, default=str).encode()


def split_reply(reply: dict[str, Any], limit: int = MAX_REPLY_BYTES,
                encode: Callable[[Any], bytes] = _plain_json) -> list[bytes]:
    """The command reply as one message (``encode``d), or — for a ``Chunks``
    result — as several, each at most ``limit`` bytes, with ``chunk`` (from 0)
    and ``of``."""
    result = reply.get("result")
    if not isinstance(result, Chunks):
        return [encode(reply)]
    head = {k: v for k, v in reply.items() if k != "result"}
    doc = result[0] if result else {"lines": []}
    meta = {k: v for k, v in doc.items() if k != "lines"}
    lines = list(doc.get("lines", []))

    def size(batch: list[str], i: int = 99999, n: int = 99999) -> int:
        return len(encode({**head, "chunk": i, "of": n, "result": {**meta, "lines": batch}}))

    cost_of = lambda text: len(encode(text)) + 2  # the string and its separator, at most
    room = limit - size([])
    batches: list[list[str]] = [[]]
    used = 0
    for line in lines:
        cost = cost_of(line)
        if cost > room:  # one line longer than a whole reply: cut it
            while cost_of(line + CUT) > room:
                line = line[: max(0, len(line) - max(16, (cost_of(line) - room) // 2))]
            line += CUT
            cost = cost_of(line)
        if used + cost > room and batches[-1]:
            batches.append([])
            used = 0
        batches[-1].append(line)
        used += cost
    n = len(batches)
    return [encode({**head, "chunk": i, "of": n, "result": {**meta, "lines": b}}) for i, b in enumerate(batches)]
