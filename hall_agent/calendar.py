"""The hall's business calendar (SPEC section 5): pure, no clock of its own.

Which hours apply on a date, in this order:

1. ``[hours.open]`` — an explicit date with its hours (make-up working days,
   special hours);
2. ``[hours] closed`` — explicit closed dates;
3. the public holidays of ``[hours] holidays`` (the ``holidays`` package) are
   closed; for China the package also knows the make-up working days (调休,
   its ``weekend_workdays``), which open with the hours of the first weekday
   (Monday to Friday) that has hours;
4. the weekday's hours.

No holiday label is ever read: the package names holidays in the language of
the process's locale (``LANG``, ``LC_ALL``…), and the calendar must give the
same answers under any locale. Only the package's language-independent data
is used: which dates are holidays and which weekend days are working days.

Those facts (closed dates, make-up days, up to which date the schedule is
official) are cached per country and year in the state folder, keyed by the
package's version: importing the package (some 10 MB) is needed only for a
year not seen before or after the package was upgraded.

The package knows the official make-up days only of the years the State
Council has announced (each November for the next year); later years are
its estimate. ``confirmed_until()`` is the last date of the official
schedule; a year the configuration covers (any ``[hours] closed`` or
``[hours.open]`` date in it) counts as confirmed by the hall.

All times are in ``hall.timezone``. Opening runs are ``opening_lead_min``
before opening, closing runs ``closing_delay_min`` after closing, both
computed in UTC from the local opening and closing times (so that a
daylight-saving change moves nothing); a local time that does not exist is
moved forward, an ambiguous one takes its first occurrence.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone as _tz
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from .config.models import WEEKDAYS, HoursSection, parse_hours

log = logging.getLogger(__name__)

CACHE_FORMAT = 2


def package_version() -> str:
    """The installed ``holidays`` version, without importing the package."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("holidays")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class YearFacts:
    """What the calendar needs of one year of the package, and nothing else."""
    closed: frozenset[date]
    makeup: frozenset[date]
    confirmed_until: date | None   # the package's official schedule ends here (None: no such limit)
    #: the version of the package these facts came from (the one imported in this process,
    #: which is not the installed one after an upgrade without a restart); None: not known
    source_version: str | None = field(default=None, compare=False)

    def as_json(self, version: str, country: str, year: int) -> dict:
        return {"format": CACHE_FORMAT, "holidays_version": version, "country": country, "year": year,
                "closed": sorted(d.isoformat() for d in self.closed),
                "makeup": sorted(d.isoformat() for d in self.makeup),
                "confirmed_until": self.confirmed_until.isoformat() if self.confirmed_until else None}

    @classmethod
    def from_json(cls, doc: dict, version: str, country: str, year: int) -> "YearFacts | None":
        if not isinstance(doc, dict) or (doc.get("format"), doc.get("holidays_version"), doc.get("country"),
                                         doc.get("year")) != (CACHE_FORMAT, version, country, year):
            return None
        try:
            until = doc.get("confirmed_until")
            return cls(frozenset(date.fromisoformat(d) for d in doc["closed"]),
                       frozenset(date.fromisoformat(d) for d in doc["makeup"]),
                       date.fromisoformat(until) if until else None)
        except (KeyError, TypeError, ValueError):
            return None


def year_facts(code: str, year: int) -> YearFacts:
    """The package's facts for one year: holiday dates, weekend working days, and the end
    of its official schedule. Language-independent: no label is read."""
    import holidays
    country, _, subdiv = code.partition("-")
    table = holidays.country_holidays(country, subdiv=subdiv or None, years=[year - 1, year, year + 1])
    closed = frozenset(d for d in table.keys() if d.year == year)
    makeup = frozenset(d for d in getattr(table, "weekend_workdays", ()) if d.year == year
                       and table.is_working_day(d))
    return YearFacts(closed, makeup, _official_until(table), getattr(holidays, "__version__", None))


def _official_until(table) -> date | None:
    """Countries whose holidays move by yearly decree (make-up working days, as China's)
    are official only for the years the package has the decree of; rule-based calendars
    have no such limit (None)."""
    if not getattr(table, "has_substituted_holidays", False):
        return None
    years = [y for y, entries in (getattr(table, "special_public_holidays", None) or {}).items()
             if any(len(e) >= 4 for e in (entries if isinstance(entries[0], tuple) else (entries,)))]
    return date(max(years), 12, 31) if years else None


@dataclass(frozen=True)
class Run:
    kind: str          # "opening" | "closing"
    at: datetime       # aware, in the hall's time zone
    day: date

    def as_dict(self) -> dict:
        return {"kind": self.kind, "at": self.at.isoformat(timespec="seconds")}


class BusinessCalendar:
    def __init__(self, hours: HoursSection, timezone: str, opening_lead_min: int = 30, closing_delay_min: int = 15,
                 cache_dir: Path | None = None, facts=year_facts, version: str | None = None):
        self.hours = hours
        self.cache_dir = cache_dir
        self.tz = ZoneInfo(timezone)
        self.lead = timedelta(minutes=opening_lead_min)
        self.delay = timedelta(minutes=closing_delay_min)
        self.open_dates = {d: parse_hours(h) for d, h in hours.open.items()}
        self.closed_dates = set(hours.closed)
        self._facts_of = facts
        self.version = version or package_version()

    @lru_cache(maxsize=16)
    def _facts(self, year: int) -> YearFacts:
        if not self.hours.holidays:
            return YearFacts(frozenset(), frozenset(), None)
        country = self.hours.holidays
        cache = self.cache_dir / f"calendar-{country}-{year}.json" if self.cache_dir else None
        if cache is not None:
            try:
                facts = YearFacts.from_json(json.loads(cache.read_text()), self.version, country, year)
                if facts is not None:
                    return facts
            except (OSError, ValueError):
                pass
        facts = self._facts_of(country, year)
        made_by = facts.source_version or self.version
        if made_by != self.version:
            # the package was upgraded while this process runs (a reload, not a restart): the module
            # in memory is the old one. Its facts are filed under its own version, so that the next
            # start (which imports the new package) does not take them for the new package's.
            log.warning("holidays %s is installed but %s is loaded: restart hall-agent to use the new "
                        "package's calendar", self.version, made_by)
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(facts.as_json(made_by, country, year)))
                tmp.replace(cache)
                for old in cache.parent.glob(f"holidays-{country}-*.json"):  # the old format: labels, keyed by year only
                    old.unlink(missing_ok=True)
            except OSError:
                pass
        return facts

    def _makeup_hours(self) -> tuple[time, time] | None:
        for name in WEEKDAYS[:5]:
            hours = parse_hours(getattr(self.hours, name))
            if hours:
                return hours
        return None

    def why(self, day: date) -> str:
        """Which rule decided the day's hours (for ``schedule`` and check reports)."""
        if day in self.open_dates:
            return "open date"
        if day in self.closed_dates:
            return "closed date"
        facts = self._facts(day.year)
        if day in facts.makeup:
            return "make-up working day"
        if day in facts.closed:
            return "public holiday"
        return WEEKDAYS[day.weekday()]

    def hours_on(self, day: date) -> tuple[time, time] | None:
        if day in self.open_dates:
            return self.open_dates[day]
        if day in self.closed_dates:
            return None
        facts = self._facts(day.year)
        if day in facts.makeup:
            return self._makeup_hours()
        if day in facts.closed:
            return None
        return parse_hours(getattr(self.hours, WEEKDAYS[day.weekday()]))

    # -- how far the calendar is official --------------------------------------------------
    def covered_by_config(self, year: int) -> bool:
        """The hall lists dates of this year itself: its days off and make-up days are the config's."""
        return any(d.year == year for d in (*self.closed_dates, *self.open_dates))

    def unconfirmed_from(self, today: date) -> date | None:
        """The first date from ``today`` on whose official holiday schedule the calendar does not
        know (neither the package nor the configuration); None when there is no such date."""
        if not self.hours.holidays:
            return None
        until = self._facts(today.year).confirmed_until
        if until is None:
            return None
        year = until.year + 1
        while self.covered_by_config(year):
            year += 1
        return date(year, 1, 1)

    def confirmed_until(self, today: date) -> date | None:
        """The last date of the official schedule (package or configuration); None: no limit."""
        first = self.unconfirmed_from(today)
        return first - timedelta(days=1) if first is not None else None

    def confirmed(self, day: date, today: date) -> bool:
        first = self.unconfirmed_from(today)
        return first is None or day < first

    def local(self, day: date, t: time) -> datetime:
        """A wall-clock time on a date, made aware; DST gaps move forward."""
        naive = datetime.combine(day, t)
        aware = naive.replace(tzinfo=self.tz, fold=0)
        roundtrip = aware.astimezone(ZoneInfo("UTC")).astimezone(self.tz)
        if roundtrip.replace(tzinfo=None) != naive:  # in a gap: use the time after the jump
            aware = roundtrip
        return aware

    def _shift(self, at: datetime, by: timedelta) -> datetime:
        """``at + by`` in real time: aware arithmetic in one zone is wall-clock arithmetic
        (an hour off across a daylight-saving change), so go through UTC."""
        return (at.astimezone(_tz.utc) + by).astimezone(self.tz)

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
            out.append(Run("opening", self._shift(self.local(day, hours[0]), -self.lead), day))
            out.append(Run("closing", self._shift(self.local(day, hours[1]), self.delay), day))
        end = start + timedelta(days=days)
        return sorted((r for r in out if start <= r.at < end), key=lambda r: r.at)
