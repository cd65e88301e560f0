"""The fleet parts wired into the running agent (kept here so that agent.py
only calls ``attach``): the ``config/desired`` subscription, the retained
``config/reported`` publisher and the live appliers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from paho.mqtt.enums import MQTTErrorCode

from ..config import Settings, config_path
from .member import Member

if TYPE_CHECKING:
    from ..agent import Agent

log = logging.getLogger(__name__)


def attach(agent: "Agent") -> Member:
    link = agent.link
    topic = f"{agent.settings.base_topic}/config/reported"

    def publish(payload: bytes, wait_s: float) -> bool:
        if not link.connected:
            return False
        info = link.client.publish(topic, payload, 1, True)
        link._wake_net()
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if wait_s <= 0:
            return True
        try:
            info.wait_for_publish(wait_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    member = Member(agent.settings, config_path(agent.config_path), agent.state_dir, publish,
                    agent.request_restart, agent.events.now, monotonic=agent.clock.monotonic)

    def calendar(old: Settings, new: Settings) -> None:
        agent.apply_calendar(new)
        _adopt(agent, new)

    def rules(old: Settings, new: Settings) -> None:
        from ..rules import build as build_rules
        agent.engine.rules = build_rules(new)
        _adopt(agent, new)
        log.info("rules rebuilt from the new configuration")

    from zoneinfo import ZoneInfo
    from . import logs
    ring = logs.install_ring()
    tz = ZoneInfo(agent.settings.hall.timezone)
    agent.dispatcher.register("logs", lambda args: logs.command(args, tz, ring))
    agent.slow_commands.add("logs")  # journalctl may take a moment: not on the inbox thread
    from .. import __version__
    from . import health as field

    writes = field.WriteMeter(agent.clock.monotonic)

    def field_health() -> dict:
        data = field.collect(agent.settings, member.config_sha256, __version__, now=agent.clock.time())
        written = writes.sample()
        if written is not None:
            data["written_bytes_24h"] = written
        for source, (on, days) in field.expiring(data).items():
            what = "client certificate" if source == "mqtt.cert" else "CA certificate"
            msg = f"the TLS {what} expires in {days} days" if on else f"the TLS {what} is valid for {days} days"
            agent.alerts.feed(lambda now, s=source, on=on, msg=msg, d=days: agent.engine.condition(
                "certificate-expiring", s, on, msg, now, value=d, threshold=field.EXPIRY_WARN_DAYS))
        return data

    agent.health_extras.append(field_health)
    from .credentials import Rotation

    def set_password(pw: str) -> None:
        link.client.username_pw_set(agent.settings.mqtt.username, pw)  # used from the next CONNECT on

    from ..envelope import Moment

    def notify(outcome: dict) -> None:
        ok = outcome["outcome"] == "switched"
        agent.emit(agent.events.agent(f"credentials-{outcome['outcome']}", outcome,
                                      severity="info" if ok else "warning", moment=Moment("system", 2)))

    rotation = Rotation(lambda: agent.settings, set_password, agent.request_restart, notify=notify,
                        monotonic=agent.clock.monotonic, sleep=agent.clock.sleep)
    agent.dispatcher.register("credentials", rotation.command,
                              allowed=lambda: agent.settings.commands.allow_credentials,
                              refusal="credentials is disabled on this hall ([commands] allow_credentials = false)")
    agent.slow_commands.add("credentials")  # the proof connection takes a moment
    def alarm_policy(old: Settings, new: Settings) -> None:
        """[alerts]: escalation, flapping and drill-due numbers, at the next evaluation.
        (Scheduled maintenance windows are indexed by position in the alarm book: by a restart.)"""
        import dataclasses
        a = new.alerts
        with agent.alerts.lock:
            book = agent.alarms.book
            book.policy = dataclasses.replace(book.policy, escalate_branch_s=a.escalate_branch_s,
                                              escalate_city_s=a.escalate_city_s, flap_count=a.flap_count,
                                              flap_window_s=a.flap_window_s, drill_due_days=a.drill_due_days)
        _adopt(agent, new)
        agent.alarms.settings = new
        log.info("alarm handling ([alerts]) changed")

    member.appliers.update({"hours": calendar, "checks": calendar, "rules": rules, "profile": rules,
                            "alerts": alarm_policy,
                            "equipment": lambda old, new: _equipment(agent, old, new)})
    member.live_checks["equipment"] = probes_only
    # the scheduler reads require_time_sync once, at start
    member.live_checks["checks"] = lambda old, new: old.checks.require_time_sync == new.checks.require_time_sync
    link.subscribe("config/desired", lambda msg: member.on_desired(msg.payload))
    link.on_connected.append(member.connected)
    agent.status_providers["fleet"] = member.status
    agent.status_providers["scheduled"] = agent.scheduler.jobs
    return member


def _adopt(agent: "Agent", new: Settings) -> None:
    """The running parts read the settings that are now in force."""
    agent.settings = new
    if hasattr(agent.checks, "settings"):
        agent.checks.settings = new


RELAY_KEYS = ("relay_pin", "relay_active_high", "power")


def probes_only(old: Settings, new: Settings) -> bool:
    """Equipment changes that are live: probes (added, removed, changed) and
    names; anything that touches a relay (GPIO) needs a restart."""
    before = {e.id: e for e in old.equipment}
    after = {e.id: e for e in new.equipment}
    for eid in set(before) | set(after):
        a, b = before.get(eid), after.get(eid)
        if a is None or b is None:
            if (a or b).relay_pin is not None:
                return False
        elif any(getattr(a, k) != getattr(b, k) for k in RELAY_KEYS):
            return False
    return True


def _equipment(agent: "Agent", old: Settings, new: Settings) -> None:
    """New probes: the equipment monitor is rebuilt on the new list; an added
    item publishes its state at once, a removed one's alerts are cleared."""
    from ..devices.equipment import EquipmentMonitor
    d = agent.devices
    previous = d.equipment
    previous.stop()
    d.settings = new
    d.equipment = EquipmentMonitor(new.equipment, d._on_probe, probe_fn=previous.probe_fn,
                                   interval_s=min((e.probe_interval_s for e in new.equipment), default=60),
                                   timeout_s=max((e.probe_timeout_s for e in new.equipment), default=3))
    _adopt(agent, new)
    gone = {e.id for e in old.equipment} - {e.id for e in new.equipment}
    for eid in gone:
        with d._lock:
            d.equipment_state.pop(eid, None)
    if gone:  # their alerts (equipment-unreachable) clear: the part is no longer configured
        agent.alerts.feed(lambda now: agent.engine.forget_sources(
            {src for _, src in agent.engine.active} - gone, now))
    for e in new.equipment:
        if e.id not in {x.id for x in old.equipment}:
            d._publish_equipment(e.id, None)
    d.equipment.start()
    log.info("equipment probes rebuilt from the new configuration (%d item(s))", len(new.equipment))
