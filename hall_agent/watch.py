"""``hall-agent watch``: a live terminal console of halls and alerts for staff.

Built on the retained topics: every hall's ``status``, its active
``alert/#`` and its last ``check/opening`` and ``check/closing``. Labels in
Chinese and English. The model and the rendering are pure (tested by
rendering to a string); ``run`` connects with the ``[mqtt]`` settings (TLS
and credentials included) and redraws on every change.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

PRIORITY = {1: "I", 2: "II", 3: "III", 4: "IV"}
CATEGORY = {"emergency": "紧急 emergency", "business": "业务 business", "internal": "内部 internal",
            "system": "系统 system"}
RULE = {
    "panic": "紧急报警 panic button", "door-after-hours": "非营业时间门开 door open after hours",
    "door-held-open": "门长时间未关 door held open", "printer-paper-low": "叫号纸将尽 ticket paper low",
    "printer-paper-out": "叫号纸用尽 ticket paper out", "printer-cover-open": "打印机盖开 printer cover open",
    "printer-error": "打印机故障 printer error", "printer-offline": "打印机离线 printer offline",
    "sensor-fault": "传感器故障 sensor fault", "equipment-unreachable": "设备无响应 equipment unreachable",
    "check-failed": "开关店检查未通过 check failed", "temperature-high": "温度过高 temperature high",
    "temperature-low": "温度过低 temperature low", "humidity-high": "湿度过高 humidity high",
    "humidity-low": "湿度过低 humidity low", "co2-high": "二氧化碳超标 CO2 high", "pm25-high": "PM2.5超标 PM2.5 high",
    "pm10-high": "PM10超标 PM10 high", "tvoc-high": "TVOC超标 TVOC high", "hcho-high": "甲醛超标 formaldehyde high",
}
RESULT = {"pass": "通过 pass", "warn": "警告 warn", "fail": "未通过 FAIL"}


@dataclass
class Hall:
    base: str
    state: str = "?"
    since: str = ""
    checks: dict[str, dict] = field(default_factory=dict)


@dataclass
class Board:
    """What the retained topics say, kept up to date message by message."""
    root: str = "halls"
    halls: dict[str, Hall] = field(default_factory=dict)
    alerts: dict[tuple[str, str, str], dict] = field(default_factory=dict)

    def _hall(self, base: str) -> Hall:
        return self.halls.setdefault(base, Hall(base))

    def apply(self, topic: str, payload: bytes) -> bool:
        """Take one message; True if the board changed."""
        parts = topic.split("/")
        if len(parts) < 5:
            return False
        base, rest = "/".join(parts[:4]), parts[4:]
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            return False
        if rest == ["status"] and isinstance(doc, dict):
            hall = self._hall(base)
            hall.state, hall.since = doc.get("state", "?"), doc.get("ts", "")
            return True
        if rest[0] == "alert" and len(rest) == 3:
            key = (base, rest[1], rest[2])
            self._hall(base)
            if doc is None or (isinstance(doc, dict) and doc.get("data", {}).get("state") == "cleared"):
                return self.alerts.pop(key, None) is not None
            if isinstance(doc, dict):
                self.alerts[key] = doc
                return True
        if rest[0] == "check" and len(rest) == 2 and isinstance(doc, dict):
            self._hall(base).checks[rest[1]] = doc.get("data", {})
            return True
        return False

    def render(self, now: datetime | None = None, width: int = 100) -> str:
        now = now or datetime.now().astimezone()
        online = sum(h.state == "online" for h in self.halls.values())
        lines = [f"营业厅监控 hall console — {now:%Y-%m-%d %H:%M:%S}   "
                 f"营业厅 halls: {len(self.halls)}   在线 online: {online}   "
                 f"离线 offline: {len(self.halls) - online}   告警 alerts: {len(self.alerts)}", ""]
        lines.append("告警 ACTIVE ALERTS (优先级 priority, 时长 age)")
        if not self.alerts:
            lines.append("  无 none")

        def order(item):
            (_, _, _), doc = item
            return (doc.get("moment") or {}).get("priority", 9), doc.get("data", {}).get("raised_at", "")
        for (base, rule, source), doc in sorted(self.alerts.items(), key=order):
            moment = doc.get("moment") or {}
            data = doc.get("data", {})
            age = _age(data.get("raised_at"), now)
            lines.append(f"  {PRIORITY.get(moment.get('priority'), '?'):>3}  {doc.get('severity', ''):8} "
                         f"{_short(base):28} {RULE.get(rule, rule)} [{source}]  {age}")
            lines.append(f"       {CATEGORY.get(moment.get('category'), moment.get('category', ''))}: "
                         f"{data.get('message', '')}"[:width])
        lines += ["", "营业厅 HALLS (状态 status | 开店检查 opening | 关店检查 closing)"]
        for base in sorted(self.halls):
            hall = self.halls[base]
            state = {"online": "在线 online", "offline": "离线 OFFLINE"}.get(hall.state, hall.state)
            checks = " | ".join(
                f"{RESULT.get(hall.checks[k].get('result'), '-')} {hall.checks[k].get('finished_at', '')[:16]}"
                if k in hall.checks else "-" for k in ("opening", "closing"))
            lines.append(f"  {_short(base):28} {state:14} | {checks}")
        return "\n".join(lines)


def _short(base: str) -> str:
    return base.split("/", 1)[1] if "/" in base else base


def _age(raised_at: str | None, now: datetime) -> str:
    if not raised_at:
        return ""
    try:
        seconds = (now - datetime.fromisoformat(raised_at)).total_seconds()
    except (ValueError, TypeError):
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def topic_filters(root: str, scope: str | None) -> list[str]:
    parts = (scope or "").strip("/").split("/") if scope else []
    parts = (parts + ["+", "+", "+"])[:3]
    base = "/".join([root, *parts])
    return [f"{base}/status", f"{base}/alert/#", f"{base}/check/+"]


def run(settings, scope: str | None, out=sys.stdout, seconds: float | None = None) -> int:
    from .link import make_client
    board = Board(settings.mqtt.topic_root)
    changed = threading.Event()
    lock = threading.Lock()
    client = make_client(settings, f"hall-agent-watch-{int(time.time() * 1000) % 10**8}")

    def on_connect(c, u, flags, rc, props):
        for f in topic_filters(settings.mqtt.topic_root, scope):
            c.subscribe(f, qos=1)

    def on_message(c, u, msg):
        with lock:
            if board.apply(msg.topic, msg.payload):
                changed.set()

    client.on_connect, client.on_message = on_connect, on_message
    client.connect_async(settings.mqtt.host, settings.mqtt.effective_port, settings.mqtt.keepalive_s)
    client.loop_start()
    tty = out.isatty()
    deadline = time.monotonic() + seconds if seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            changed.wait(1.0)
            changed.clear()
            with lock:
                screen = board.render()
            out.write(("\033[H\033[2J" if tty else "\n") + screen + "\n")
            out.flush()
            time.sleep(0.5)  # at most two redraws a second
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
