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

from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED, BaseScheduler

from .calendar import BusinessCalendar, Run
from .checks import CheckAborted
from .clock import Clock, SystemClock
from .outbox import OutboxClosed

log = logging.getLogger(__name__)

TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
#: done marks kept (by run time): two checks a day for more than two months
KEEP_DONE = 150
#: a run that starts this close after its time is on time, whatever misfire_grace_min (0 included):
#: the scheduler wakes up to max_wait_s after a job's time, later on a loaded machine
ON_TIME = timedelta(minutes=1)


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
        elif now - run.at <= max(grace, ON_TIME):
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


class ClockScheduler(BaseScheduler):
    """APScheduler 3 driven by an injected :class:`~hall_agent.clock.Clock`.

    APScheduler's own schedulers ask ``datetime.now()`` when jobs are due and
    sleep the whole way to the next one: a test cannot move their time, and
    an NTP step on a Pi without a real-time clock goes unnoticed until the
    sleep ends. This one asks the clock and sleeps at most ``max_wait_s``
    (real seconds) at a time, so a stepped clock is seen within that much.
    Jobs are added with an explicit ``next_run_time`` and no
    ``misfire_grace_time`` (APScheduler's executors judge that by the real
    clock): :class:`CheckScheduler` judges lateness itself, by the clock.
    ``run_pending()`` processes due jobs at once (tests drive it directly).
    """

    def __init__(self, clock: Clock, max_wait_s: float = 10.0, **options):
        self.clock = clock
        self.max_wait_s = max_wait_s
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._threaded = True
        super().__init__(**options)

    def start(self, paused: bool = False, thread: bool = True) -> None:
        self._event.clear()
        self._threaded = thread
        super().start(paused)
        if thread:
            self._thread = threading.Thread(target=self._main_loop, name="check-scheduler", daemon=True)
            self._thread.start()

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        self._event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def wakeup(self) -> None:
        self._event.set()

    def _main_loop(self) -> None:
        wait = 0.0
        while self.state != STATE_STOPPED:
            self._event.wait(wait)
            self._event.clear()
            try:
                due_in = self._process_jobs()
            except Exception:  # never let the scheduler's thread die
                log.exception("check scheduler: processing jobs failed")
                due_in = None
            wait = self.max_wait_s if due_in is None else min(max(due_in, 0.0), self.max_wait_s)

    def run_pending(self) -> float | None:
        """Run what is due now (by the clock); seconds until the next job, or None."""
        return self._process_jobs()

    def _process_jobs(self) -> float | None:
        if self.state != STATE_RUNNING:
            return None
        now = self.clock.now(self.timezone)
        next_wakeup = None
        with self._jobstores_lock:
            for alias, store in self._jobstores.items():
                for job in store.get_due_jobs(now):
                    run_times = job._get_run_times(now)[-1:]  # coalesce: a late job runs once
                    if not run_times:
                        continue
                    try:
                        self._lookup_executor(job.executor).submit_job(job, run_times)
                    except MaxInstancesReachedError:
                        log.warning("job %s is still running: this run is skipped", job.id)
                    except Exception:
                        log.exception("could not start job %s", job.id)
                    following = job.trigger.get_next_fire_time(run_times[-1], now)
                    if following:
                        job._modify(next_run_time=following)
                        store.update_job(job)
                    else:
                        self.remove_job(job.id, alias)
                upcoming = store.get_next_run_time()
                if upcoming and (next_wakeup is None or upcoming < next_wakeup):
                    next_wakeup = upcoming
        if next_wakeup is None:
            return None
        return max(0.0, next_wakeup.timestamp() - self.clock.time())


class CheckScheduler:
    """The planned runs as APScheduler 3 jobs, on the injected clock."""

    def __init__(self, calendar: BusinessCalendar, run_check: Callable[[Run], None], state_file: Path,
                 grace_min: int, require_sync: bool, clock: Clock | None = None, thread: bool = True):
        self.calendar = calendar
        self.run_check = run_check
        self.state_file = state_file
        self.grace = timedelta(minutes=grace_min)
        self.require_sync = require_sync
        self.clock = clock or SystemClock(TimeSync().synchronised)
        self.thread = thread
        self.scheduler = ClockScheduler(self.clock, timezone=calendar.tz)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._waiter: threading.Thread | None = None
        self.waiting_for_clock = False
        self.clock_poll_s = 5.0
        self.heartbeat = 0.0
        # A first start ever (no done marks yet): runs missed before it are history, not news
        # (the hall was not running them); logged at info. Each missed run is logged once.
        self._fresh_since: datetime | None = None if self.state_file.exists() else self.now()
        self._missed_logged: set[str] = set()

    def now(self) -> datetime:
        return self.clock.now(self.calendar.tz)

    # -- what was done ---------------------------------------------------------------------
    def _done(self) -> set[str]:
        return set(self._done_marks())

    def _done_marks(self) -> dict[str, str]:
        """key -> the run's time (ISO); an old list of keys is read too."""
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # damaged: kept aside, not overwritten by the next mark
            from .fleet.files import set_aside_damaged
            set_aside_damaged(self.state_file, e)
            return {}
        if isinstance(data, list):
            return {k: k.partition("@")[2] for k in data if isinstance(k, str)}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(data, dict) else {}

    def _write_done(self, marks: dict[str, str]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(marks, sort_keys=True))
        os.replace(tmp, self.state_file)

    def _mark_done(self, planned: Planned) -> None:
        """Keep the marks of the latest runs by their run time (not by their name:
        every ``closing@`` key sorts before every ``opening@`` one)."""
        with self._lock:
            marks = self._done_marks()
            marks[planned.key] = planned.run.at.isoformat()

            def when(item):
                try:
                    return datetime.fromisoformat(item[1]).timestamp()
                except ValueError:
                    return float("-inf")
            self._write_done(dict(sorted(marks.items(), key=when)[-KEEP_DONE:]))

    def _unmark_done(self, key: str) -> None:
        with self._lock:
            marks = self._done_marks()
            marks.pop(key, None)
            self._write_done(marks)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start(thread=self.thread)
        self._add_rebuild_job()
        if self.require_sync and not self.clock.synced():
            self.waiting_for_clock = True
            log.warning("system clock not synchronised: no opening/closing check is scheduled until it is")
            if self.thread:
                self._waiter = threading.Thread(target=self._wait_for_clock, name="clock-wait", daemon=True)
                self._waiter.start()
        else:
            self.rebuild()

    def _add_rebuild_job(self) -> None:
        from apscheduler.triggers.cron import CronTrigger
        trigger = CronTrigger(hour=0, minute=5, timezone=self.calendar.tz)
        self.scheduler.add_job(self.rebuild, trigger, id="rebuild", replace_existing=True,
                               next_run_time=trigger.get_next_fire_time(None, self.now()),
                               misfire_grace_time=None)

    def poll_clock(self) -> bool:
        """Schedule the checks once the clock is synchronised; True once it is."""
        if not self.waiting_for_clock:
            return True
        if self.clock.synced():
            log.info("system clock synchronised: scheduling the checks")
            self.waiting_for_clock = False
            self._add_rebuild_job()  # its next time was computed from the unsynchronised clock
            self.rebuild()
            return True
        return False

    def _wait_for_clock(self) -> None:
        while not self._stop.wait(self.clock_poll_s):
            if self.poll_clock():
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
            key = f"{run.kind}@{run.at.isoformat()}"
            if key in self._missed_logged:
                continue  # said at an earlier rebuild (00:05, SIGHUP)
            self._missed_logged.add(key)
            before_first_start = self._fresh_since is not None and run.at < self._fresh_since
            log.log(logging.INFO if before_first_start else logging.WARNING,
                    "%s check of %s at %s was missed (more than %s ago): skipped%s", run.kind, run.day,
                    run.at.isoformat(timespec="minutes"), self.grace,
                    " (before this agent's first start)" if before_first_start else "")
        for p in planned:
            self.scheduler.add_job(self._fire, "date", run_date=p.fire_at, next_run_time=p.fire_at, args=[p],
                                   id=p.key, misfire_grace_time=None, replace_existing=True)
        self.scheduler.wakeup()
        return planned

    def _fire(self, planned: Planned) -> None:
        late = self.now() - planned.run.at
        if late > max(self.grace, ON_TIME):
            log.warning("%s check of %s at %s starts %s late (more than %s): skipped", planned.run.kind,
                        planned.run.day, planned.run.at.isoformat(timespec="minutes"),
                        str(late).split(".")[0], self.grace)
            return
        self._mark_done(planned)
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
