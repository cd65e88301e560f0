"""When the opening and closing checks run: planning (pure) and APScheduler.

- Runs come from the business calendar (``calendar.py``).
- A run missed while the agent was down (or while it waited for the clock)
  still runs, late, if it is less than ``misfire_grace_min`` old; older ones
  are skipped and logged. Runs already done (kept in the state folder) are not
  repeated after a restart.
- No job is scheduled until the system clock is synchronised (a Pi without a
  real-time clock may boot in 1970 or last week), unless
  ``require_time_sync = false``.
- The plan covers the next two days and is rebuilt at 00:05 local time every
  day and whenever the calendar changes (SIGHUP reloads it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from .calendar import BusinessCalendar, Run
from .checks import CheckAborted
from .outbox import OutboxClosed

log = logging.getLogger(__name__)

TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


@dataclass(frozen=True)
class Planned:
    run: Run
    fire_at: datetime   # = run.at, or "now" for a late run within grace

    @property
    def key(self) -> str:
        return f"{self.run.kind}@{self.run.at.isoformat()}"


def plan(calendar: BusinessCalendar, now: datetime, grace: timedelta, done: set[str], days: int = 2
         ) -> tuple[list[Planned], list[Run]]:
    """(what to schedule, what was missed beyond grace)."""
    planned, missed = [], []
    for run in calendar.runs(now - max(grace, timedelta(days=1)), days + 1):
        key = f"{run.kind}@{run.at.isoformat()}"
        if key in done:
            continue
        if run.at >= now:
            planned.append(Planned(run, run.at))
        elif now - run.at <= grace:
            planned.append(Planned(run, now))  # late, but within grace: run now
        elif now - run.at <= timedelta(hours=12):  # worth a line in the log; older is history
            missed.append(run)
    return planned, missed


class TimeSync:
    """Is the system clock synchronised? As systemd-timesyncd and chrony expose it:
    timesyncd touches ``/run/systemd/timesync/synchronized``; both keep the
    kernel's NTP status (adjtimex) out of TIME_ERROR once synchronised. Under
    the hardened unit adjtimex is filtered (ProtectClock): then ask timedated
    (``timedatectl show -p NTPSynchronized``), which reads it for us."""

    def __init__(self, flag_file: str = "/run/systemd/timesync/synchronized",
                 adjtimex: Callable[[], int] | None = None, timedatectl: str = "timedatectl"):
        self.flag_file = Path(flag_file)
        self._adjtimex = adjtimex or _kernel_adjtimex
        self.timedatectl = timedatectl

    def synchronised(self) -> bool:
        if self.flag_file.exists():
            return True
        try:
            return self._adjtimex() != TIME_ERROR
        except OSError:
            pass
        try:
            out = subprocess.run([self.timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                                 capture_output=True, text=True, timeout=5)
            return out.returncode == 0 and out.stdout.strip() == "yes"
        except (OSError, subprocess.SubprocessError):
            return False


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_long * 40)]  # only modes is written; room for the rest


def _kernel_adjtimex() -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    tx = _Timex()
    tx.modes = 0  # read only
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    return state


class CheckScheduler:
    """APScheduler 3 jobs for the planned runs."""

    def __init__(self, calendar: BusinessCalendar, run_check: Callable[[Run], None], state_file: Path,
                 grace_min: int, require_sync: bool, timesync: TimeSync | None = None,
                 now: Callable[[], datetime] | None = None):
        from apscheduler.schedulers.background import BackgroundScheduler
        self.calendar = calendar
        self.run_check = run_check
        self.state_file = state_file
        self.grace = timedelta(minutes=grace_min)
        self.require_sync = require_sync
        self.timesync = timesync or TimeSync()
        self.now = now or (lambda: datetime.now(calendar.tz))
        self.scheduler = BackgroundScheduler(timezone=calendar.tz)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._waiter: threading.Thread | None = None
        self.waiting_for_clock = False
        self.clock_poll_s = 5.0
        self.heartbeat = 0.0

    # -- what was done ---------------------------------------------------------------------
    def _done(self) -> set[str]:
        try:
            return set(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return set()

    def _mark_done(self, key: str) -> None:
        with self._lock:
            done = sorted(self._done() | {key})[-50:]
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(done))
            os.replace(tmp, self.state_file)

    def _unmark_done(self, key: str) -> None:
        with self._lock:
            done = self._done() - {key}
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(done)))
            os.replace(tmp, self.state_file)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start()
        self.scheduler.add_job(self.rebuild, "cron", hour=0, minute=5, id="rebuild", replace_existing=True)
        if self.require_sync and not self.timesync.synchronised():
            self.waiting_for_clock = True
            log.warning("system clock not synchronised: no opening/closing check is scheduled until it is")
            self._waiter = threading.Thread(target=self._wait_for_clock, name="clock-wait", daemon=True)
            self._waiter.start()
        else:
            self.rebuild()

    def _wait_for_clock(self) -> None:
        while not self._stop.wait(self.clock_poll_s):
            if self.timesync.synchronised():
                log.info("system clock synchronised: scheduling the checks")
                self.waiting_for_clock = False
                self.rebuild()
                return

    def rebuild(self, calendar: BusinessCalendar | None = None) -> list[Planned]:
        if calendar is not None:
            self.calendar = calendar
        if self.waiting_for_clock:
            return []
        for job in self.scheduler.get_jobs():
            if job.id != "rebuild":
                job.remove()
        now = self.now()
        planned, missed = plan(self.calendar, now, self.grace, self._done())
        for run in missed:
            log.warning("%s check of %s at %s was missed (more than %s ago): skipped", run.kind, run.day,
                        run.at.isoformat(timespec="minutes"), self.grace)
        for p in planned:
            self.scheduler.add_job(self._fire, "date", run_date=self._run_date(p.fire_at, now), args=[p],
                                   id=p.key, misfire_grace_time=int(self.grace.total_seconds()) or 1,
                                   replace_existing=True)
        return planned

    def _run_date(self, fire_at: datetime, now: datetime) -> datetime | None:
        """APScheduler waits and judges misfires on the system clock; our plan is made
        on the injected one. Hand it the same delay from its own "now", so the two can
        never disagree (a late run within grace: at once)."""
        if fire_at <= now:
            return None
        return datetime.now(self.calendar.tz) + (fire_at - now)

    def _fire(self, planned: Planned) -> None:
        self._mark_done(planned.key)
        try:
            self.run_check(planned.run)
        except (CheckAborted, OutboxClosed):
            self._unmark_done(planned.key)
            log.warning("%s check cut short by the agent stopping: not recorded; it runs at the next start "
                        "if that is within %s of its time", planned.run.kind, self.grace)
        except Exception:
            log.exception("%s check failed to run", planned.run.kind)

    def jobs(self) -> list[str]:
        return [job.id for job in self.scheduler.get_jobs() if job.id != "rebuild"]

    def stop(self) -> None:
        self._stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
