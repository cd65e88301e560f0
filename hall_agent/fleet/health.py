"""Health fields that answer the usual field questions (SPEC section 3):
the Pi's under-voltage and throttling flags, days until the TLS client
certificate and the CA expire, the sha256 of the running configuration and
the package version. Pure functions over files; the agent adds the result to
each ``health`` envelope, and raises ``certificate-expiring`` from it.

Throttling: the Raspberry Pi firmware's ``get_throttled`` bits (vcgencmd(1)):
0 under-voltage now, 1 ARM frequency capped now, 2 throttled now, 3 soft
temperature limit now; 16-19 the same "has occurred since boot". Read from
the kernel's ``/sys/devices/platform/soc/soc:firmware/get_throttled`` (the
hardened unit hides ``/dev/vcio``, which ``vcgencmd`` needs), else from
``vcgencmd get_throttled``; absent on a machine that has neither.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
THROTTLE_BITS = {0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
                 16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred",
                 19: "soft_temp_limit_occurred"}
EXPIRY_WARN_DAYS = 30


def decode_throttled(value: int) -> dict[str, Any]:
    flags = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    return {"raw": f"0x{value:x}", **flags}


def throttled(sysfs: Path = THROTTLED_SYSFS, vcgencmd: str = "vcgencmd") -> dict[str, Any] | None:
    try:
        return decode_throttled(int(sysfs.read_text().strip(), 16))
    except (OSError, ValueError):
        pass
    exe = shutil.which(vcgencmd)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=3).stdout
        return decode_throttled(int(out.strip().split("=", 1)[1], 16))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def not_after(cert_file: Path) -> float | None:
    """The certificate's notAfter (seconds since the epoch), or None if it cannot be read."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(cert_file))  # CPython's own PEM parser
        return float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except (AttributeError, OSError, ssl.SSLError, KeyError, ValueError):
        pass
    exe = shutil.which("openssl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "x509", "-noout", "-enddate", "-in", str(cert_file)], capture_output=True,
                             text=True, timeout=5).stdout
        return float(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def days_left(cert_file: Path | None, now: float) -> int | None:
    if cert_file is None:
        return None
    end = not_after(cert_file)
    return None if end is None else int((end - now) // 86400)


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def collect(settings, config_sha256: str | None, version: str, now: float | None = None,
            sysfs: Path = THROTTLED_SYSFS) -> dict[str, Any]:
    now = time.time() if now is None else now
    out: dict[str, Any] = {"config_sha256": config_sha256, "version": version}
    flags = throttled(sysfs)
    if flags is not None:
        out["throttled"] = flags
    m = settings.mqtt
    if m.tls:
        out["cert_days_left"] = days_left(m.cert_file, now)
        out["ca_days_left"] = days_left(m.ca_file, now)
    return out


def expiring(data: dict[str, Any]) -> dict[str, tuple[bool, int | None]]:
    """``{"mqtt.cert": (expiring?, days), "mqtt.ca": …}`` for the alert."""
    out = {}
    for key, source in (("cert_days_left", "mqtt.cert"), ("ca_days_left", "mqtt.ca")):
        if key in data:
            days = data[key]
            out[source] = (days is not None and days < EXPIRY_WARN_DAYS, days)
    return out


def doctor_findings(settings, config_file: Path, now: float | None = None, sysfs: Path = THROTTLED_SYSFS) -> list:
    """``hall-agent doctor``'s lines for the same fields."""
    from .. import __version__
    from ..doctor import Finding
    now = time.time() if now is None else now
    out = [Finding(True, "version", f"hall-agent {__version__}; configuration sha256 "
                                    f"{file_sha256(config_file) or '(unreadable)'}")]
    flags = throttled(sysfs)
    if flags is not None:
        now_bad = [k for k in ("under_voltage", "throttled", "freq_capped", "soft_temp_limit") if flags[k]]
        past_bad = [k.removesuffix("_occurred") for k in ("under_voltage_occurred", "throttled_occurred")
                    if flags[k]]
        if flags["under_voltage"] or flags["under_voltage_occurred"]:
            out.append(Finding(False, "power", f"under-voltage {'now' if flags['under_voltage'] else 'since boot'} "
                                               f"(get_throttled {flags['raw']})",
                               "use the Pi's official power supply (5.1 V) and a short, thick cable; "
                               "under-voltage corrupts SD cards"))
        elif now_bad or past_bad:
            out.append(Finding(False, "throttling", f"{', '.join(now_bad) or 'throttled since boot'} "
                                                    f"(get_throttled {flags['raw']})",
                               "cooling: a heatsink or a case with air flow, away from the sun"))
        else:
            out.append(Finding(True, "power", f"no under-voltage or throttling since boot ({flags['raw']})"))
    m = settings.mqtt
    if m.tls:
        for label, path in (("client certificate", m.cert_file), ("CA certificate", m.ca_file)):
            if path is None:
                continue
            days = days_left(path, now)
            if days is None:
                out.append(Finding(False, label, f"{path}: not a readable PEM certificate", "check the file"))
            elif days < EXPIRY_WARN_DAYS:
                out.append(Finding(False, label, f"{path}: {'expired' if days < 0 else f'expires in {days} days'}",
                                   "issue a new one and send it with the credentials command (docs/fleet.md)"))
            else:
                out.append(Finding(True, label, f"{path}: valid for {days} more days"))
    return out


def process_write_bytes(path: Path = Path("/proc/self/io")) -> int | None:
    """Bytes this process caused to be written to storage (the kernel's ``write_bytes``)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class WriteMeter:
    """``written_bytes_24h``: what the agent wrote to storage over the last 24 h
    (since it started, when that is less). The agent writes nowhere but its
    state folder (and, rarely, its configuration file), so this is the SD
    card's wear from the outbox and the state files. Sampled at each health
    report on the monotonic clock."""

    WINDOW_S = 24 * 3600.0

    def __init__(self, monotonic: Callable[[], float], read: Callable[[], int | None] = process_write_bytes):
        self.monotonic = monotonic
        self.read = read
        self.samples: deque[tuple[float, int]] = deque()
        self.sample()

    def sample(self) -> int | None:
        value = self.read()
        if value is None:
            return None
        now = self.monotonic()
        self.samples.append((now, value))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.WINDOW_S:
            self.samples.popleft()  # keep one sample at or before the window's start
        return value - self.samples[0][1]
