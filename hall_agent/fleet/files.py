"""The configuration file on disk: replaced atomically, the previous kept.

``config.toml``        the running file (the source at boot)
``config.toml.prev``   the file it replaced (restored by a self-revert)
``config.toml.failed`` a desired file that was reverted (kept to look at)

Every step is a rename in the same folder after an fsync: a power cut leaves
either the old or the new file in place, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, like: Path | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; with
    ``like``, keep that file's mode (a config that holds a password stays 0640)."""
    tmp = path.with_name(f".{path.name}.tmp")
    mode = 0o640
    if like is not None:
        try:
            mode = like.stat().st_mode & 0o777
        except OSError:
            pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _copy_to(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` atomically (a hard link where it can)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)


def prev_path(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def failed_path(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def replace_keeping_previous(path: Path, data: bytes) -> None:
    """``path`` -> ``path.prev``; then ``data`` becomes ``path``."""
    if path.exists():
        _copy_to(path, prev_path(path))
    write_atomic(path, data, like=path if path.exists() else None)


def restore_previous(path: Path) -> bool:
    """Put ``path.prev`` back (the reverted file is kept as ``path.failed``).
    False when there is no previous file."""
    prev = prev_path(path)
    if not prev.exists():
        return False
    if path.exists():
        _copy_to(path, failed_path(path))
    os.replace(prev, path)
    _fsync_dir(path.parent)
    return True


def set_aside_damaged(path: Path, why: object) -> Path | None:
    """A damaged state file is renamed ``<name>.damaged-<time>`` (kept for inspection,
    never overwritten) with a warning; returns where it went."""
    import logging
    import time
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    try:
        path.rename(aside)
    except OSError:
        return None
    logging.getLogger(__name__).warning("%s is damaged (%s): moved to %s", path, why, aside)
    return aside


class StateFile:
    """A small JSON document in the state folder, rewritten atomically."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            return doc
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            set_aside_damaged(self.path, e)
            return {}

    def save(self, doc: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())
