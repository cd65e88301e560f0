"""The event envelope of SPEC section 3, and where each kind is published.

Pure: no I/O. ``Events`` builds envelopes for one hall; the outbox assigns
``seq`` when it commits one and encodes it with ``Envelope.encode``.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from .clock import Clock

SCHEMA = 1
# one, not one per call; strict JSON: NaN and Infinity are not JSON (strict parsers reject them)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float as null and every string valid Unicode."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_plain(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def encode_json(doc: Any) -> bytes:
    """Strict JSON in UTF-8 for anything we publish: never NaN or Infinity (they become null),
    never a lone surrogate (replaced by '?'). The common case costs one encode."""
    try:
        return _ENCODER.encode(doc).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return _ENCODER.encode(_plain(doc)).encode("utf-8")
#: envelope types the outbox may drop when full, in drop order
DROPPABLE = ("reading", "health")


@dataclass(frozen=True)
class Moment:
    """A key moment's classification: category and importance quadrant (1 = I)."""
    category: str
    priority: int

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "priority": self.priority}


@dataclass(frozen=True)
class Publication:
    topic: str
    qos: int
    retain: bool


@dataclass
class Envelope:
    type: str
    source: str
    data: dict[str, Any]
    ts: str
    hall: str
    severity: str = "info"
    moment: Moment | None = None
    routes: tuple[Publication, ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    clock_synced: bool = True   # False: created before the system clock was synchronised (its ts may be wrong)

    def as_dict(self, seq: int) -> dict[str, Any]:
        doc = {
            "schema": SCHEMA, "id": self.id, "seq": seq, "ts": self.ts, "hall": self.hall,
            "type": self.type, "source": self.source, "severity": self.severity,
            "moment": self.moment.as_dict() if self.moment else None, "data": self.data,
        }
        if not self.clock_synced:
            doc["clock_synced"] = False  # SPEC section 3: omitted otherwise
        return doc

    def encode(self, seq: int) -> bytes:
        return encode_json(self.as_dict(seq))


SYSTEM = Moment("system", 2)
INTERNAL = Moment("internal", 2)
#: routine traffic is a moment too, of the lowest quadrant: every envelope carries one
ROUTINE_READING = Moment("internal", 4)
ROUTINE_HEALTH = Moment("system", 4)
ROUTINE_STATE = Moment("internal", 3)


class Events:
    """Builds the hall's envelopes with their topics (SPEC section 3)."""

    def __init__(self, hall: str, timezone: str, base_topic: str, telemetry_qos: int = 0,
                 clock: "Callable[[], datetime] | Clock | None" = None):
        """``clock``: a :class:`~hall_agent.clock.Clock` (its ``synced()`` marks envelopes
        made before the clock was synchronised), or a plain ``() -> datetime``."""
        self.hall = hall
        self.tz = ZoneInfo(timezone)
        self.base = base_topic
        self.telemetry_qos = telemetry_qos
        if clock is not None and hasattr(clock, "synced"):
            self._clock = lambda: clock.now(self.tz)
            self._synced: Callable[[], bool] = clock.synced
        else:
            self._clock = clock or (lambda: datetime.now(self.tz))
            self._synced = lambda: True

    def now(self) -> str:
        return self._clock().astimezone(self.tz).isoformat(timespec="milliseconds")

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    def _make(self, type_: str, source: str, data: dict, severity: str, moment: Moment | None,
              routes: tuple[Publication, ...]) -> Envelope:
        return Envelope(type=type_, source=source, data=data, ts=self.now(), hall=self.hall,
                        severity=severity, moment=moment, routes=routes, clock_synced=self._synced())

    def _audit(self) -> Publication:
        return Publication(self.topic("event"), 1, False)

    def reading(self, sensor_id: str, model: str, values: dict[str, float]) -> Envelope:
        route = Publication(self.topic(f"telemetry/{sensor_id}"), self.telemetry_qos, True)
        return self._make("reading", sensor_id, {"model": model, "values": values}, "info", ROUTINE_READING,
                          (route,))

    def health(self, data: dict[str, Any]) -> Envelope:
        return self._make("health", "agent", data, "info", ROUTINE_HEALTH,
                          (Publication(self.topic("health"), 0, True),))

    def state(self, source: str, data: dict[str, Any], severity: str = "info",
              moment: Moment | None = None) -> Envelope:
        routes = (Publication(self.topic(f"state/{source}"), 1, True), self._audit())
        return self._make("state", source, data, severity, moment or ROUTINE_STATE, routes)

    def maintenance(self, windows: list[dict[str, Any]]) -> Envelope:
        """The running maintenance windows, retained on ``maintenance`` (SPEC section 3)."""
        routes = (Publication(self.topic("maintenance"), 1, True), self._audit())
        return self._make("state", "maintenance", {"windows": windows}, "info", ROUTINE_STATE, routes)

    def alert(self, rule: str, source: str, data: dict[str, Any], severity: str, moment: Moment,
              retain: bool = True) -> Envelope:
        routes = (Publication(self.topic(f"alert/{rule}/{source}"), 1, retain), self._audit())
        return self._make("alert", source, data, severity, moment, routes)

    def check(self, kind: str, data: dict[str, Any], severity: str, moment: Moment) -> Envelope:
        routes = (Publication(self.topic(f"check/{kind}"), 1, True), self._audit())
        return self._make("check", "agent", data, severity, moment, routes)

    def command(self, data: dict[str, Any], severity: str = "info") -> Envelope:
        return self._make("command", "cmd", data, severity, INTERNAL, (self._audit(),))

    def agent(self, event: str, data: dict[str, Any] | None = None, severity: str = "info",
              moment: Moment = SYSTEM, source: str = "agent") -> Envelope:
        return self._make("agent", source, {"event": event, **(data or {})}, severity, moment,
                          (self._audit(),))
