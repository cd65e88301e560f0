"""A serial device behind a pseudo-terminal: pyserial opens a real tty.

The device's path is a symlink (like ``/dev/serial/by-id/…``) that points to
the current pty; ``unplug()`` removes it and closes the pty (the driver's
reads fail as on a pulled USB adapter); ``replug()`` makes a new pty behind
the same path.

Faults (``device.fault``): None; ``"silent"`` (no answer); ``"garbage"``
(noise before and inside the stream); ``"checksum"`` (frames with a wrong
checksum); ``"short"`` (frames cut short).
"""

from __future__ import annotations

import os
import random
import select
import tempfile
import threading
import time
import tty
from pathlib import Path


class PtyDevice:
    """Subclasses set their own attributes before calling ``super().__init__``
    (the device thread starts here)."""

    #: seconds between frames the device sends on its own (active upload); None = only answers
    stream_period_s: float | None = None

    def __init__(self, name: str = "ttyEMU", link_dir: str | os.PathLike | None = None, seed: int | None = None):
        self._dir = Path(link_dir) if link_dir else Path(tempfile.mkdtemp(prefix="hall-agent-tty-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.path = self._dir / name
        self.fault: str | None = None
        self.rng = random.Random(seed)
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._inbuf = bytearray()
        self._stop = threading.Event()
        self._plugged = threading.Event()
        self._plug()
        self._thread = threading.Thread(target=self._run, name=f"pty-{name}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> str:
        return str(self.path)

    # -- plugging ------------------------------------------------------------------
    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)          # no echo, no CR/LF translation, no XON/XOFF
        os.set_blocking(master, False)
        tmp = self.path.with_suffix(".new")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        with self._lock:
            self._master, self._slave = master, slave
            self._inbuf.clear()
        self._plugged.set()

    def unplug(self) -> None:
        self._plugged.clear()
        with self._lock:
            fds, self._master, self._slave = (self._master, self._slave), None, None
        if self.path.is_symlink():
            self.path.unlink()
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def replug(self) -> None:
        if self._master is None:
            self._plug()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.unplug()

    # -- I/O -----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write to the host side (dropped when nobody reads and the pty is full)."""
        if not data:
            return
        with self._lock:
            fd = self._master
            if fd is None:
                return
            try:
                os.write(fd, data)
            except (BlockingIOError, OSError):
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception:  # an emulator bug must show, not hang the test
                import logging
                logging.getLogger(__name__).exception("emulated device %s failed", self.path.name)
                time.sleep(0.1)

    def _serve(self) -> None:
        next_stream = time.monotonic()
        while not self._stop.is_set():
            if not self._plugged.wait(0.05):
                continue
            fd = self._master
            timeout = 0.05
            if self.stream_period_s is not None:
                timeout = max(0.0, min(timeout, next_stream - time.monotonic()))
            try:
                ready, _, _ = select.select([fd], [], [], timeout) if fd is not None else ([], [], [])
            except (OSError, ValueError):
                continue
            if ready:
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    self._inbuf += data
                    for reply in self._requests():
                        self._answer(reply)
            if self.stream_period_s is not None and time.monotonic() >= next_stream:
                next_stream = time.monotonic() + self.stream_period_s
                frame = self.stream_frame()
                if frame is not None:
                    self._answer(frame)

    def _requests(self) -> list[bytes]:
        """Complete requests in the input buffer, each turned into the reply to send."""
        replies = []
        while True:
            request, consumed = self.parse_request(bytes(self._inbuf))
            if consumed == 0:
                break
            del self._inbuf[:consumed]
            if request is not None:
                self.requests.append(request)
                reply = self.handle(request)
                if reply:
                    replies.append(reply)
        return replies

    def _answer(self, frame: bytes) -> None:
        if self.fault == "silent":
            return
        if self.fault == "garbage":
            noise = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(3, 20)))
            cut = self.rng.randrange(1, len(frame))
            self.send(noise + frame[:cut] + noise[:3] + frame)  # a torn frame, noise, then a good one
            return
        if self.fault == "checksum":
            frame = frame[:-1] + bytes([(frame[-1] + 1) & 0xFF])
        elif self.fault == "short":
            frame = frame[: len(frame) // 2]
        self.send(frame)

    # -- what a device implements ------------------------------------------------------
    def parse_request(self, buf: bytes) -> tuple[bytes | None, int]:
        """-> (request or None to skip, bytes consumed); (None, 0) = need more bytes."""
        return None, len(buf)

    def handle(self, request: bytes) -> bytes | None:
        return None

    def stream_frame(self) -> bytes | None:
        return None
