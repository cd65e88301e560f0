"""The broker's retained alerts against the ones the agent holds (SPEC section 3).

Pure: given what the broker showed on ``{base}/alert/#`` right after a connect
(retained messages only), the alerts the agent holds, the last payloads the
agent knows the broker confirmed, and the topics with a publication still on
its way, say what to clear, what to republish and what to publish afresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

NOT_HELD = "not held after restart"


@dataclass(frozen=True)
class Ghost:
    """An alert the broker shows that the agent does not hold."""
    topic: str
    rule: str
    source: str
    envelope: dict[str, Any] | None  # the broker's payload, when it is an envelope


@dataclass
class Plan:
    clear: list[Ghost] = field(default_factory=list)
    republish: list[str] = field(default_factory=list)           # topics: the stored payload again
    publish: list[tuple[str, str]] = field(default_factory=list)  # (rule, source): held, known nowhere


def split_alert_topic(base: str, topic: str) -> tuple[str, str] | None:
    prefix = f"{base}/alert/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def _envelope(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def plan(base: str, seen: Mapping[str, bytes], held: set[tuple[str, str]], stored: Mapping[str, bytes],
         pending: set[str]) -> Plan:
    """``seen``: topic -> retained payload on the broker (empty payloads are not retained);
    ``stored``: topic -> the last payload the agent published there and had confirmed;
    ``pending``: topics with a publication not yet confirmed (it settles them itself)."""
    out = Plan()
    for topic in sorted(seen):
        payload = seen[topic]
        key = split_alert_topic(base, topic)
        if key is None or not payload or topic in pending:
            continue
        if key not in held:
            out.clear.append(Ghost(topic, key[0], key[1], _envelope(payload)))
    for rule, source in sorted(held):
        topic = f"{base}/alert/{rule}/{source}"
        if topic in pending:
            continue
        mine = stored.get(topic)
        if mine is None:
            if topic not in seen:
                out.publish.append((rule, source))
        elif seen.get(topic) != mine:
            out.republish.append(topic)
    return out
