"""The hall's business calendar (SPEC section 5): pure, no clock of its own.

Which hours apply on a date, in this order:

1. ``[hours.open]`` — an explicit date with its hours (make-up working days,
   special hours);
2. ``[hours] closed`` — explicit closed dates;
3. the public holidays of ``[hours] holidays`` (the ``holidays`` package) are
   closed; for China the package also names the make-up working days
   ("Day off (substituted from 01/04/2026)" makes 2026-01-04 a working day),
   which open with the hours of the weekday they stand in for;
4. the weekday's hours.

All times are in ``hall.timezone``. Opening runs are ``opening_lead_min``
before opening, closing runs ``closing_delay_min`` after closing; on a
daylight-saving change a local time that does not exist is moved forward,
an ambiguous one takes its first occurrence.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from .config.models import WEEKDAYS, HoursSection, parse_hours

_SUBSTITUTED = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")


@dataclass(frozen=True)
class Run:
    kind: str          # "opening" | "closing"
    at: datetime       # aware, in the hall's time zone
    day: date

    def as_dict(self) -> dict:
        return {"kind": self.kind, "at": self.at.isoformat(timespec="seconds")}


class BusinessCalendar:
    def __init__(self, hours: HoursSection, timezone: str, opening_lead_min: int = 30, closing_delay_min: int = 15,
                 cache_dir: Path | None = None):
        self.hours = hours
        self.cache_dir = cache_dir
        self.tz = ZoneInfo(timezone)
        self.lead = timedelta(minutes=opening_lead_min)
        self.delay = timedelta(minutes=closing_delay_min)
        self.open_dates = {d: parse_hours(h) for d, h in hours.open.items()}
        self.closed_dates = set(hours.closed)

    @lru_cache(maxsize=16)
    def _holidays(self, year: int) -> tuple[dict[date, str], dict[date, date]]:
        """(closed holidays, make-up working day -> the day off it stands in for)."""
        if not self.hours.holidays:
            return {}, {}
        table = self._table(year)
        closed, makeup = {}, {}
        for iso, name in table.items():
            day = date.fromisoformat(iso)
            closed[day] = name
            for m in _SUBSTITUTED.finditer(name):
                makeup[date(int(m[3]), int(m[1]), int(m[2]))] = day
        return closed, makeup

    def _table(self, year: int) -> dict[str, str]:
        """The ``holidays`` package's dates around ``year``, cached as JSON in the
        state folder: the package (some 10 MB once loaded) is imported only for a
        year not seen before."""
        cache = self.cache_dir / f"holidays-{self.hours.holidays}-{year}.json" if self.cache_dir else None
        if cache is not None:
            try:
                return json.loads(cache.read_text())
            except (OSError, ValueError):
                pass
        import holidays
        country, _, subdiv = self.hours.holidays.partition("-")
        table = {d.isoformat(): n for d, n in
                 holidays.country_holidays(country, subdiv=subdiv or None, years=[year - 1, year, year + 1]).items()}
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(table, ensure_ascii=False))
            except OSError:
                pass
        return table

    def why(self, day: date) -> str:
        """Which rule decided the day's hours (for ``schedule`` and check reports)."""
        if day in self.open_dates:
            return "open date"
        if day in self.closed_dates:
            return "closed date"
        closed, makeup = self._holidays(day.year)
        if day in makeup:
            return f"make-up working day (for {makeup[day].isoformat()})"
        if day in closed:
            return f"holiday: {closed[day]}"
        return WEEKDAYS[day.weekday()]

    def hours_on(self, day: date) -> tuple[time, time] | None:
        if day in self.open_dates:
            return self.open_dates[day]
        if day in self.closed_dates:
            return None
        closed, makeup = self._holidays(day.year)
        if day in makeup:
            stand_in = makeup[day]
            return parse_hours(getattr(self.hours, WEEKDAYS[stand_in.weekday()])) or \
                parse_hours(self.hours.monday)
        if day in closed:
            return None
        return parse_hours(getattr(self.hours, WEEKDAYS[day.weekday()]))

    def local(self, day: date, t: time) -> datetime:
        """A wall-clock time on a date, made aware; DST gaps move forward."""
        naive = datetime.combine(day, t)
        aware = naive.replace(tzinfo=self.tz, fold=0)
        roundtrip = aware.astimezone(ZoneInfo("UTC")).astimezone(self.tz)
        if roundtrip.replace(tzinfo=None) != naive:  # in a gap: use the time after the jump
            aware = roundtrip
        return aware

    def is_open(self, at: datetime) -> bool:
        at = at.astimezone(self.tz)
        hours = self.hours_on(at.date())
        if hours is None:
            return False
        return self.local(at.date(), hours[0]) <= at < self.local(at.date(), hours[1])

    def runs(self, start: datetime, days: int) -> list[Run]:
        """Opening and closing runs from ``start`` on, for ``days`` days, in time order."""
        start = start.astimezone(self.tz)
        out = []
        for i in range(-1, days + 1):
            day = start.date() + timedelta(days=i)
            hours = self.hours_on(day)
            if hours is None:
                continue
            out.append(Run("opening", self.local(day, hours[0]) - self.lead, day))
            out.append(Run("closing", self.local(day, hours[1]) + self.delay, day))
        end = start + timedelta(days=days)
        return sorted((r for r in out if start <= r.at < end), key=lambda r: r.at)
