"""The ``health`` envelope's data: what a remote engineer needs to see a Pi is well."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

CPU_TEMP = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature_c(path: Path = CPU_TEMP) -> float | None:
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def disk_free_mb(path: Path) -> float | None:
    try:
        return round(shutil.disk_usage(path).free / 1024 / 1024, 1)
    except OSError:
        return None


def collect(started: float, outbox, storage_dir: Path, sensors: dict[str, str],
            now_mono: float | None = None) -> dict:
    """``started`` and ``now_mono``: the agent clock's monotonic times."""
    return {
        "uptime_s": round((time.monotonic() if now_mono is None else now_mono) - started, 1),
        "outbox": {"depth": outbox.depth, "bytes": outbox.bytes, "dropped": outbox.dropped_total},
        "storage": outbox.status(),
        "cpu_temperature_c": cpu_temperature_c(),
        "disk_free_mb": disk_free_mb(storage_dir),
        "rss_mb": rss_mb(),
        "load_1m": round(os.getloadavg()[0], 2),
        "sensors": dict(sensors),
    }
