"""Logging to stderr, journald-friendly.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the syslog
priority ``<N>`` so journald files it at the right level and adds its own
timestamp; in a terminal each line carries a timestamp and the level.
Records go through a queue to a writer thread: a log line on the alarm path
costs a few microseconds, not a write to a pipe.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    records: queue.SimpleQueue = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level.upper())
    logging.getLogger("paho").setLevel(logging.WARNING)
