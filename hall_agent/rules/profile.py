"""The built-in ``gbt18883-2022`` profile: indoor air quality for public halls
after GB/T 18883-2022 (室内空气质量标准), table 1.

| rule | value | threshold | averaging | clears below/above |
|---|---|---|---|---|
| temperature-high | temperature_c | 28 °C summer, 24 °C winter | – (held 5 min) | 0.5 °C back |
| temperature-low | temperature_c | 22 °C summer, 16 °C winter | – (held 5 min) | 0.5 °C back |
| humidity-high | humidity_pct | 80 % summer, 60 % winter | – (held 5 min) | 3 % back |
| humidity-low | humidity_pct | 40 % summer, 30 % winter | – (held 5 min) | 3 % back |
| co2-high | co2_ppm | 1000 ppm (0.10 %) | 1 h mean | 950 ppm |
| pm25-high | pm25_ugm3 | 50 µg/m³ | 24 h mean | 45 |
| pm10-high | pm10_ugm3 | 100 µg/m³ | 24 h mean | 90 |
| tvoc-high | tvoc_ppb -> mg/m³ | 0.60 mg/m³ | 8 h mean | 0.55 |
| hcho-high | hcho_mgm3 | 0.08 mg/m³ | 1 h mean | 0.07 |

- Seasons: ``[profile] summer_months`` (5-9) and ``winter_months`` (11-3), by
  the hall's local date; in the months between (April, October by default)
  the comfort band is the union of both, 16-28 °C and 30-80 %.
- The standard states limits, not alarms: the clear values and the 5-minute
  hold on comfort rules are ours, so a value hovering at a limit raises one
  alert, not one a minute.
- TVOC: the SGP30 reports ppb of an ethanol-calibrated mixture; we convert
  as isobutylene equivalents, the convention for PID/MOS TVOC readings:
  mg/m³ = ppb × 56.11 g/mol / 24.45 L/mol / 1000 (25 °C, 101.325 kPa), so
  0.60 mg/m³ ≈ 261 ppb. It is an indication, not the standard's
  GC-MS method.
- Comfort rules: internal, priority 2. Air-quality rules: internal, priority 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

ISOBUTYLENE_MGM3_PER_PPB = 56.11 / 24.45 / 1000.0


def tvoc_ppb_to_mgm3(ppb: float) -> float:
    return ppb * ISOBUTYLENE_MGM3_PER_PPB


@dataclass(frozen=True)
class ThresholdRule:
    id: str
    value: str                       # the reading's value key
    direction: str                   # "above" | "below"
    threshold: Callable[[int], float] | float   # a number, or month -> number
    clear: Callable[[int], float] | float
    for_s: float = 0.0
    mean_s: float = 0.0
    severity: str = "warning"
    category: str = "internal"
    priority: int = 2
    source: str | None = None        # None: every sensor reporting the value
    convert: Callable[[float], float] | None = None
    unit: str = ""
    label: str = ""

    def threshold_for(self, month: int) -> float:
        return self.threshold(month) if callable(self.threshold) else self.threshold

    def clear_for(self, month: int) -> float:
        return self.clear(month) if callable(self.clear) else self.clear


@dataclass(frozen=True)
class Seasons:
    summer: tuple[int, ...] = (5, 6, 7, 8, 9)
    winter: tuple[int, ...] = (11, 12, 1, 2, 3)

    def pick(self, month: int, summer: float, winter: float, between: float) -> float:
        if month in self.summer:
            return summer
        if month in self.winter:
            return winter
        return between


def gbt18883(seasons: Seasons) -> list[ThresholdRule]:
    s = seasons
    hold = 300.0
    return [
        ThresholdRule("temperature-high", "temperature_c", "above", lambda m: s.pick(m, 28, 24, 28),
                      lambda m: s.pick(m, 27.5, 23.5, 27.5), for_s=hold, unit="°C", label="temperature"),
        ThresholdRule("temperature-low", "temperature_c", "below", lambda m: s.pick(m, 22, 16, 16),
                      lambda m: s.pick(m, 22.5, 16.5, 16.5), for_s=hold, unit="°C", label="temperature"),
        ThresholdRule("humidity-high", "humidity_pct", "above", lambda m: s.pick(m, 80, 60, 80),
                      lambda m: s.pick(m, 77, 57, 77), for_s=hold, unit="%", label="humidity"),
        ThresholdRule("humidity-low", "humidity_pct", "below", lambda m: s.pick(m, 40, 30, 30),
                      lambda m: s.pick(m, 43, 33, 33), for_s=hold, unit="%", label="humidity"),
        ThresholdRule("co2-high", "co2_ppm", "above", 1000, 950, mean_s=3600, priority=1, unit="ppm",
                      label="CO2 1 h mean"),
        ThresholdRule("pm25-high", "pm25_ugm3", "above", 50, 45, mean_s=86400, priority=1, unit="µg/m³",
                      label="PM2.5 24 h mean"),
        ThresholdRule("pm10-high", "pm10_ugm3", "above", 100, 90, mean_s=86400, priority=1, unit="µg/m³",
                      label="PM10 24 h mean"),
        ThresholdRule("tvoc-high", "tvoc_ppb", "above", 0.60, 0.55, mean_s=8 * 3600, priority=1,
                      convert=tvoc_ppb_to_mgm3, unit="mg/m³", label="TVOC 8 h mean (isobutylene)"),
        ThresholdRule("hcho-high", "hcho_mgm3", "above", 0.08, 0.07, mean_s=3600, priority=1, unit="mg/m³",
                      label="formaldehyde 1 h mean"),
    ]


@dataclass(frozen=True)
class FixedRule:
    id: str
    severity: str
    category: str
    priority: int


FIXED = {r.id: r for r in (
    FixedRule("panic", "critical", "emergency", 1),
    FixedRule("door-after-hours", "critical", "emergency", 1),
    FixedRule("door-held-open", "warning", "internal", 2),
    FixedRule("printer-paper-low", "warning", "business", 2),
    FixedRule("printer-paper-out", "critical", "business", 1),
    FixedRule("printer-cover-open", "critical", "business", 1),
    FixedRule("printer-error", "critical", "business", 1),
    FixedRule("printer-offline", "critical", "business", 1),
    FixedRule("sensor-fault", "warning", "system", 2),
    FixedRule("equipment-unreachable", "warning", "system", 2),
    FixedRule("check-failed", "warning", "internal", 1),
    FixedRule("clock-unsynced", "warning", "system", 1),
    FixedRule("calendar-unconfirmed", "warning", "system", 2),
    FixedRule("storage-failed", "critical", "system", 1),
    FixedRule("gpio-unavailable", "critical", "system", 1),
    FixedRule("publish-refused", "critical", "system", 1),
    FixedRule("subscribe-refused", "critical", "system", 1),
    FixedRule("certificate-expiring", "warning", "system", 2),
)}


@dataclass
class RuleSet:
    """Every threshold rule (with overrides applied) and the fixed rules' classes."""
    thresholds: list[ThresholdRule] = field(default_factory=list)
    fixed: dict[str, FixedRule] = field(default_factory=lambda: dict(FIXED))

    def for_reading(self, source: str, value: str) -> list[ThresholdRule]:
        """The rules that apply to one value of one sensor: a source-specific rule
        replaces a general one of the same id."""
        chosen: dict[str, ThresholdRule] = {}
        for rule in self.thresholds:
            if rule.value != value or (rule.source is not None and rule.source != source):
                continue
            current = chosen.get(rule.id)
            if current is None or (rule.source is not None and current.source is None) or \
                    (rule.source == current.source):
                chosen[rule.id] = rule
        return list(chosen.values())


def build(settings) -> RuleSet:
    """The profile, then ``[[rules]]``: a rule with a profile or fixed rule's id
    replaces it (for its source, or everywhere without one); other ids add rules."""
    p = settings.profile
    seasons = Seasons(tuple(p.summer_months), tuple(p.winter_months))
    profile = gbt18883(seasons) if p.name == "gbt18883-2022" else []
    by_id = {r.id: r for r in profile}
    thresholds = list(profile)
    fixed = dict(FIXED)
    for cfg in settings.rules:
        given = cfg.model_fields_set
        if cfg.id in fixed:
            base = fixed[cfg.id]
            fixed[cfg.id] = FixedRule(cfg.id, cfg.severity if "severity" in given else base.severity,
                                      cfg.category if "category" in given else base.category,
                                      cfg.priority if "priority" in given else base.priority)
            continue
        base = by_id.get(cfg.id)
        value = cfg.value or (base.value if base else None)
        if value is None or (cfg.above is None and cfg.below is None and base is None):
            continue  # refused by config validation; nothing to build
        if cfg.above is not None or cfg.below is not None:
            direction = "above" if cfg.above is not None else "below"
            threshold = cfg.above if cfg.above is not None else cfg.below
            clear = cfg.clear_below if direction == "above" else cfg.clear_above
            clear = threshold if clear is None else clear
        else:
            direction, threshold, clear = base.direction, base.threshold, base.clear
        pick = lambda key, default: getattr(cfg, key) if key in given else default
        rule = ThresholdRule(
            cfg.id, value, direction, threshold, clear,
            for_s=pick("for_s", base.for_s if base else 0.0), mean_s=pick("mean_s", base.mean_s if base else 0.0),
            severity=pick("severity", base.severity if base else "warning"),
            category=pick("category", base.category if base else "internal"),
            priority=pick("priority", base.priority if base else 2), source=cfg.source,
            convert=base.convert if base and value == base.value else None,
            unit=base.unit if base else "", label=base.label if base else cfg.id)
        if cfg.source is None and base is not None:
            thresholds = [r for r in thresholds if not (r.id == cfg.id and r.source is None)]
        thresholds.append(rule)
    return RuleSet(thresholds, fixed)
