"""What a new configuration changes, and which of it the agent can apply live.

``changes(old, new)`` names every top-level section (``hours``, ``mqtt``,
``sensors`` …) whose settings differ. Sections that have a live applier (the
agent registers one per section it can change while running) change live;
any other changed section needs a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import Settings

def changes(old: Settings, new: Settings) -> list[str]:
    return [name for name in type(new).model_fields if getattr(new, name) != getattr(old, name)]


@dataclass(frozen=True)
class Plan:
    live: list[str]
    restart: list[str]

    @property
    def needs_restart(self) -> bool:
        return bool(self.restart)


def plan(old: Settings, new: Settings, appliers: dict[str, Callable[[Settings, Settings], None]],
         checks: dict[str, Callable[[Settings, Settings], bool]] | None = None) -> Plan:
    """``checks``: for a section that is live only for some changes (equipment:
    probes yes, relays no), whether this change is one of them."""
    checks = checks or {}
    changed = changes(old, new)
    live = [name for name in changed if name in appliers and checks.get(name, lambda o, n: True)(old, new)]
    return Plan(live, [name for name in changed if name not in live])
