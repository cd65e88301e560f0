"""``hall-agent watch``: a live terminal console of halls and alerts for staff.

Built on the retained topics: every hall's ``status`` and ``health``, its
active ``alert/#`` and its last ``check/opening`` and ``check/closing``.
Labels in Chinese and English.

The console shows only what it knows (SPEC section 8): the connection state is
always on screen; while it is not connected nothing is "none" or "online",
every hall and alert is marked stale with the age of what is known. The model
(:class:`Board`, :class:`Connection`) and the rendering are pure and take the
time as an argument; :class:`Console` owns the MQTT client, its own network
loop (so that a refused login, a TLS failure, an unreachable broker and a
broker that never answers CONNECT each get a reason) and the screen.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .clock import SYSTEM, Clock

PRIORITY = {1: "I", 2: "II", 3: "III", 4: "IV"}
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
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
    "drill-due": "应进行演练 drill due",
}
ESCALATION = {"branch": "已上报分公司 ESCALATED branch", "city": "已上报市公司 ESCALATED city"}
RESULT = {"pass": "通过 pass", "warn": "警告 warn", "fail": "未通过 FAIL"}
#: how long a hall's ``health`` may be silent, in health intervals, before the hall is shown as silent
HEALTH_MISSED = 3
DEFAULT_HEALTH_INTERVAL_S = 60.0

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def on_top(rule: str) -> bool:
    """Alerts a person must see first whatever else is active: a panic, anything after hours."""
    return rule == "panic" or "after-hours" in rule


# -- connection state ----------------------------------------------------------------------------

@dataclass
class Connection:
    """What the console knows about its own link to the broker."""
    host: str
    port: int
    user: str | None = None
    connected: bool = False
    since: datetime | None = None        # when the current state began (console's wall clock)
    reason: str = "connecting"           # why not connected
    kind: str = "connecting"             # connecting | refused | tls | unreachable | no-connack | lost | ok
    ever_connected: bool = False
    subscribed: bool = False
    denied: list[str] = field(default_factory=list)  # filters the broker refused

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def up(self, now: datetime) -> None:
        self.connected, self.since, self.kind, self.reason = True, now, "ok", ""
        self.ever_connected = True
        self.subscribed, self.denied = False, []

    def down(self, now: datetime, kind: str, reason: str) -> None:
        if self.connected or self.since is None or self.kind != kind:
            self.since = now
        self.connected, self.kind, self.reason, self.subscribed = False, kind, reason, False

    @property
    def is_error(self) -> bool:
        return not self.connected and self.kind != "connecting"

    def line(self, now: datetime) -> str:
        who = f" as {self.user}" if self.user else ""
        if self.connected:
            extra = ""
            if self.denied:
                extra = "   订阅被拒 SUBSCRIPTION REFUSED: " + ", ".join(self.denied)
            return f"已连接 connected to {self.target}{who} since {_clock(self.since, now)}{extra}"
        since = f" since {_clock(self.since, now)}" if self.since else ""
        return f"未连接 NOT CONNECTED to {self.target}{who}{since} - {self.reason}"


# -- the board -----------------------------------------------------------------------------------

@dataclass
class Hall:
    base: str
    state: str = "?"
    since: str = ""
    reason: str | None = None
    name: str = ""
    health_ts: str = ""
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    clock_synced: bool = True
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
        except (ValueError, UnicodeDecodeError):
            return False
        if isinstance(doc, dict) and doc.get("clock_synced") is False and rest != ["status"]:
            self._hall(base).clock_synced = False
        if rest == ["status"] and isinstance(doc, dict):
            hall = self._hall(base)
            hall.state, hall.since, hall.reason = str(doc.get("state", "?")), str(doc.get("ts") or ""), doc.get("reason")
            if isinstance(doc.get("name"), str) and doc["name"]:
                hall.name = doc["name"]
            return True
        if rest == ["health"] and isinstance(doc, dict):
            hall = self._hall(base)
            data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
            hall.health_ts = str(doc.get("ts") or "")
            if isinstance(data.get("name"), str) and data["name"]:
                hall.name = data["name"]
            interval = data.get("interval_s")
            if isinstance(interval, (int, float)) and not isinstance(interval, bool) and 0 < interval < 1e7:
                hall.health_interval_s = float(interval)
            hall.clock_synced = data.get("clock_synced") is not False and doc.get("clock_synced") is not False
            return True
        if rest[0] == "alert" and len(rest) == 3:
            key = (base, rest[1], rest[2])
            self._hall(base)
            data = doc.get("data") if isinstance(doc, dict) else None
            if doc is None or (isinstance(data, dict) and data.get("state") == "cleared"):
                return self.alerts.pop(key, None) is not None
            if isinstance(doc, dict):
                self.alerts[key] = doc
                return True
        if rest[0] == "check" and len(rest) == 2 and isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            self._hall(base).checks[rest[1]] = doc["data"]
            return True
        return False

    # -- ordering ---------------------------------------------------------------------------------
    def ordered_alerts(self) -> list[tuple[tuple[str, str, str], dict]]:
        """The order a person must act in: panic and after-hours alerts on top, then critical
        before warning, then priority (I first), then newest first."""
        def key(item):
            (_, rule, _), doc = item
            moment = doc.get("moment") if isinstance(doc.get("moment"), dict) else {}
            priority = moment.get("priority")
            raised = _parse(_data(doc).get("raised_at")) or _parse(doc.get("ts"))
            data = _data(doc)
            # a console ranks down what a maintenance window covers (never a panic: the agent never marks one)
            return (1 if data.get("suppressed") else 0, 0 if on_top(rule) else 1,
                    _look(SEVERITY_RANK, doc.get("severity"), 3),
                    priority if isinstance(priority, int) else 9,
                    -(raised.timestamp() if raised else float("-inf")), item[0])
        return sorted(self.alerts.items(), key=key)

    # -- rendering --------------------------------------------------------------------------------
    def render_lines(self, conn: Connection, now: datetime, width: int = 100, height: int | None = None,
                     loaded: bool = True, title: str = "") -> list[tuple[str, str]]:
        """The screen as (text, style) lines; style is '', 'alarm', 'warn', 'bad', 'ok' or 'dim'."""
        live = conn.connected and loaded and not conn.denied
        down_for = _age_s((now - conn.since).total_seconds()) if conn.since and not conn.connected else ""
        if conn.connected:
            stale_age = "" if live else "载入中 loading"
        else:
            stale_age = f"陈旧 STALE {down_for}".rstrip()
        online = sum(h.state == "online" for h in self.halls.values())
        head = [(_fit(f"营业厅监控 hall console{title} — {_clock(now)}   "
                      f"营业厅 halls: {len(self.halls)}   在线 online: {online if live else '?'}   "
                      f"告警 alerts: {len(self.alerts) if live else '?'}", width), ""),
                (_fit(("● " if conn.connected else "✖ ") + conn.line(now), width),
                 "ok" if live else ("warn" if conn.connected else "bad"))]
        if not conn.connected and conn.ever_connected:
            head.append((_fit(f"陈旧 STALE: everything below is what was known {down_for} ago; "
                              "it may have changed since", width), "bad"))
        elif conn.connected and not loaded:
            head.append(("载入中 loading the retained state…", "dim"))
        head.append(("", ""))

        alert_rows: list[tuple[str, str]] = []
        for (base, rule, source), doc in self.ordered_alerts():
            alert_rows.append(self._alert_line(base, rule, source, doc, now, width, live, stale_age))
        alerts_title = "告警 ACTIVE ALERTS (置顶 panic/after hours, 严重 severity, 优先级 priority, 最新 newest first)"
        if not alert_rows:
            if live:
                alert_rows = [("  无 none", "ok")]
            elif conn.connected:
                alert_rows = [("  未知 unknown: " + ("subscription refused" if conn.denied else "still loading"), "warn")]
            else:
                alert_rows = [("  未知 unknown: not connected, the console cannot know", "bad")]

        hall_rows = [self._hall_line(self.halls[b], now, width, live, stale_age) for b in self._ordered_halls(now)]
        if not hall_rows:
            hall_rows = [("  -" if live else "  未知 unknown: not connected", "" if live else "bad")]
        halls_title = "营业厅 HALLS (状态 status | 开店检查 opening | 关店检查 closing)"

        if height is not None:
            budget = max(height - len(head) - 3, 2)  # two titles and the blank line between the sections
            hall_budget = min(len(hall_rows), max(1, budget // 3))
            alert_budget = max(1, budget - hall_budget)
            if len(alert_rows) < alert_budget:  # halls take what alerts do not need
                hall_budget = min(len(hall_rows), budget - len(alert_rows))
                alert_budget = len(alert_rows)
            alert_rows = _cut(alert_rows, alert_budget, "条告警 alerts")
            hall_rows = _cut(hall_rows, hall_budget, "个营业厅 halls")
        lines = head + [(alerts_title, "")] + alert_rows + [("", ""), (halls_title, "")] + hall_rows
        lines = [(_fit(t, width), style) for t, style in lines]
        if height is not None and len(lines) > height:  # a tiny terminal: blank lines go, then the bottom
            lines = [line for line in lines if line[0]][:height]
        return lines

    def render(self, now: datetime | None = None, width: int = 160, conn: Connection | None = None,
               height: int | None = None, loaded: bool = True) -> str:
        now = now or datetime.now().astimezone()
        if conn is None:  # a board rebuilt from recorded messages (tests, tools): shown as live
            conn = Connection("-", 0, connected=True, since=now, ever_connected=True, subscribed=True)
        return "\n".join(text for text, _ in self.render_lines(conn, now, width, height, loaded))

    def _alert_line(self, base, rule, source, doc, now, width, live, stale_age) -> tuple[str, str]:
        moment = doc.get("moment") if isinstance(doc.get("moment"), dict) else {}
        data = _data(doc)
        hall = self.halls.get(base)
        raised = _parse(data.get("raised_at"))
        when = f"{_clock(raised, now)} ({_age(raised, now)})" if raised else ""
        name = f" {hall.name}" if hall and hall.name else ""
        severity = str(doc.get("severity", ""))
        flags = "" if live else f"  {stale_age}".rstrip()
        flags += handling_flags(data, now)
        text = (f"  {_look(PRIORITY, moment.get('priority'), '?'):>3} {severity:8} {_short(base)}{name}  "
                f"{RULE.get(rule, rule)} [{source}]  {when}{flags}  "
                f"{_look(CATEGORY, moment.get('category'), moment.get('category') or '')}: {data.get('message', '')}")
        style = "alarm" if on_top(rule) or severity == "critical" else ("warn" if severity == "warning" else "")
        if data.get("suppressed") or data.get("drill") or data.get("acknowledged_by"):
            style = "" if style == "alarm" else style  # being handled: no longer shouting
        if data.get("suppressed"):
            style = "dim"
        return _fit(text, width), style if live else ("dim" if not style else style)

    def ack_target(self) -> tuple[str, str, str] | None:
        """The alert ``a`` acknowledges: the first one on screen that nobody has acknowledged."""
        for key, doc in self.ordered_alerts():
            if not _data(doc).get("acknowledged_by") and _data(doc).get("state", "active") == "active":
                return key
        return None

    def _hall_problem(self, hall: Hall, now: datetime) -> str:
        if hall.state == "offline":
            return f"离线 OFFLINE since {_clock(_parse(hall.since), now)}" + (f" ({hall.reason})" if hall.reason else "")
        if hall.state != "online":
            return f"状态未知 status {hall.state}"
        health = _parse(hall.health_ts)
        if health is not None and (now - health).total_seconds() > HEALTH_MISSED * hall.health_interval_s:
            return (f"无心跳 SILENT: last health {_age(health, now)} ago "
                    f"(expected every {hall.health_interval_s:g} s)")
        return ""

    def _ordered_halls(self, now: datetime) -> list[str]:
        return sorted(self.halls, key=lambda b: (0 if self._hall_problem(self.halls[b], now) else 1, b))

    def _hall_line(self, hall: Hall, now: datetime, width: int, live: bool, stale_age: str) -> tuple[str, str]:
        problem = self._hall_problem(hall, now)
        state = problem or "在线 online"
        if not live:
            state = "上次所知 last known: " + state
        if not hall.clock_synced:
            state += "  时钟未同步 CLOCK NOT SYNCED"
        checks = " | ".join(
            f"{_look(RESULT, hall.checks[k].get('result'), '-')} {_clock(_parse(hall.checks[k].get('finished_at')), now)}"
            if k in hall.checks else "-" for k in ("opening", "closing"))
        stale = "" if live else f"  {stale_age}".rstrip()
        name = f" {hall.name}" if hall.name else ""
        text = f"  {_short(hall.base)}{name}  {state}{stale} | {checks}"
        style = "bad" if problem or not hall.clock_synced else ""
        return _fit(text, width), style if live else "dim"


def handling_flags(data: dict, now: datetime) -> str:
    """An alert's handling (docs/alerts.md): drill, escalation, acknowledgement, window, flapping."""
    flags = ""
    if data.get("drill"):
        flags += "  演练 DRILL (no police)"
    if _look(ESCALATION, data.get("escalation"), None):
        flags += f"  {ESCALATION[data['escalation']]}"
    if data.get("acknowledged_by"):
        when = _parse(data.get("acknowledged_at"))
        flags += f"  已确认 ack {data['acknowledged_by']}" + (f" {_clock(when, now)}" if when else "")
        if data.get("note"):
            flags += f" \"{data['note']}\""
    elif data.get("escalation"):
        flags += "  未确认 unacknowledged"
    suppressed = data.get("suppressed")
    if isinstance(suppressed, dict):
        until = _parse(suppressed.get("until"))
        flags += f"  维护中 suppressed ({suppressed.get('reason', '')}" + \
            (f", until {_clock(until, now)})" if until else ")")
    if data.get("flapping"):
        flags += "  抖动 flapping"
    return flags


def _cut(rows: list[tuple[str, str]], budget: int, what: str) -> list[tuple[str, str]]:
    if len(rows) <= budget:
        return rows
    keep = max(budget - 1, 0)
    return rows[:keep] + [(f"  +{len(rows) - keep} more {what}", "warn")]


def _look(table: dict, value, default):
    """``table.get(value, default)`` for a value from the wire: a list or an object (unhashable)
    in a field is garbage, shown as unknown, not a crash of the console."""
    try:
        return table.get(value, default)
    except TypeError:
        return default


def _data(doc: dict) -> dict:
    data = doc.get("data")
    return data if isinstance(data, dict) else {}


def _short(base: str) -> str:
    return base.split("/", 1)[1] if "/" in base else base


def _parse(value) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else None


def _offset(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _clock(dt: datetime | None, now: datetime | None = None) -> str:
    """A time in its own zone (the hall's, for a hall's timestamps) with the offset; the date
    only when it is not today there."""
    if dt is None:
        return "?"
    if now is not None and now.astimezone(dt.tzinfo).date() == dt.date():
        return f"{dt:%H:%M:%S}{_offset(dt)}"
    return f"{dt:%Y-%m-%d %H:%M:%S}{_offset(dt)}"


def _age_s(seconds: float) -> str:
    if seconds < 0:
        return "0 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return ""
    return _age_s((now - then).total_seconds())


def _cell(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(_cell(c) for c in text)


def _fit(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` terminal cells (CJK characters take two), so no line wraps."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        w = _cell(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


# -- scope ---------------------------------------------------------------------------------------

class ScopeError(ValueError):
    pass


def check_scope(scope: str | None) -> list[str]:
    """``CITY[/BRANCH[/HALL]]`` as up to three topic levels; ``+`` stands for any one level."""
    if scope is None:
        return []
    parts = scope.strip().strip("/").split("/") if scope.strip().strip("/") else []
    if not parts:
        raise ScopeError("--scope is empty: give CITY, CITY/BRANCH or CITY/BRANCH/HALL (e.g. zigong/ziliujing)")
    if len(parts) > 3:
        raise ScopeError(f"--scope {scope!r} has {len(parts)} levels: at most CITY/BRANCH/HALL")
    for p in parts:
        if p == "+":
            continue
        if not p:
            raise ScopeError(f"--scope {scope!r} has an empty level (two slashes)")
        if "#" in p or "+" in p:
            raise ScopeError(f"--scope {scope!r}: {p!r} is not a city, branch or hall id: '#' is not allowed and "
                             "'+' only as a whole level (zigong/+/zg-001); the console adds the topics itself")
        if "\0" in p or any(not c.isprintable() for c in p):
            raise ScopeError(f"--scope {scope!r} contains a control character")
    if len(scope.encode("utf-8", "surrogatepass")) > 1000:
        raise ScopeError("--scope is too long")
    return parts


def topic_filters(root: str, scope: str | None) -> list[str]:
    parts = (check_scope(scope) + ["+", "+", "+"])[:3]
    base = "/".join([root, *parts])
    return [f"{base}/status", f"{base}/health", f"{base}/alert/#", f"{base}/check/+"]


# -- the live console ----------------------------------------------------------------------------

STYLES = {"alarm": "\033[1;97;41m", "bad": "\033[1;31m", "warn": "\033[33m", "ok": "\033[32m", "dim": "\033[2m"}


def describe_failure(e: BaseException, host: str, port: int, tls: bool) -> tuple[str, str]:
    """(kind, reason) for an exception raised while connecting."""
    target = f"{host}:{port}"
    if isinstance(e, ssl.SSLCertVerificationError):
        return "tls", f"TLS failure with {target}: {e.verify_message or e.reason} (check ca_file / the broker's name)"
    if isinstance(e, ssl.SSLError):
        hint = " (is it a plain MQTT port? tls = true)" if "WRONG_VERSION" in str(e).upper() or \
            isinstance(e, ssl.SSLEOFError) else ""
        return "tls", f"TLS failure with {target}: {e.reason or e}{hint}"
    if isinstance(e, ConnectionRefusedError):
        return "unreachable", f"broker unreachable: {target} refused the connection (nothing listens there?)"
    if isinstance(e, socket.gaierror):
        return "unreachable", f"broker unreachable: cannot resolve {host!r} ({e.strerror})"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "unreachable", f"broker unreachable: {target} did not answer (timed out)"
    if isinstance(e, OSError) and tls and isinstance(e, ConnectionResetError):
        return "tls", f"TLS failure with {target}: the connection was reset during the handshake"
    if isinstance(e, OSError):
        return "unreachable", f"broker unreachable: {target}: {e.strerror or e}"
    return "unreachable", f"cannot connect to {target}: {e}"


class Console:
    """The MQTT side of the console: connects, retries with back-off, keeps the board and the
    connection state. ``screen()`` draws them; ``run()`` drives a terminal."""

    min_delay, max_delay = 1.0, 30.0

    def __init__(self, settings, scope: str | None, clock: Clock = SYSTEM, operator: str | None = None):
        self.settings = settings
        self.clock = clock
        self.operator = operator
        self.acks = 0
        self.status = ""  # the last key's outcome, under the board
        self.filters = topic_filters(settings.mqtt.topic_root, scope)
        m = settings.mqtt
        self.conn = Connection(m.host, m.effective_port, m.username)
        self.board = Board(m.topic_root)
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.attempted = threading.Event()   # the first connection attempt has an outcome
        self._stop = threading.Event()
        self.seen_alerts: set[tuple[str, str, str]] = set()
        self.bell_pending = False
        self._subscribed_at: float | None = None
        self._last_message = 0.0
        self._connack = self._connack_ok = False
        self.connack_timeout_s = float(min(max(m.keepalive_s, 5), 30))
        from .link import make_client
        self.client = make_client(settings, f"hall-agent-watch-{os.getpid()}-{int(clock.time() * 1000) % 10**8}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._thread = threading.Thread(target=self._net, name="watch-net", daemon=True)

    def _now(self) -> datetime:
        return self.clock.now().astimezone()

    # -- paho callbacks (network thread) -----------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, props):
        self._connack = True
        self._connack_ok = not reason_code.is_failure
        with self.lock:
            if reason_code.is_failure:
                who = f" for user {self.conn.user!r}" if self.conn.user else " (no username set)"
                self.conn.down(self._now(), "refused", f"login refused by the broker{who}: {reason_code}")
            else:
                self.conn.up(self._now())
                self._subscribed_at = None
        self.attempted.set()
        self.changed.set()
        if not reason_code.is_failure:
            client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, client, userdata, mid, reason_codes, props):
        with self.lock:
            self.conn.subscribed = True
            self.conn.denied = [f for f, rc in zip(self.filters, reason_codes) if rc.is_failure]
            self._subscribed_at = self.clock.monotonic()
        self.changed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, props):
        with self.lock:
            if self.conn.connected:
                self.conn.down(self._now(), "lost", f"connection lost ({reason_code}); retrying")
        self.changed.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self._last_message = self.clock.monotonic()
            if self.board.apply(msg.topic, msg.payload):
                self._note_new_alerts()
                self.changed.set()

    def _note_new_alerts(self) -> None:
        for key, doc in self.board.alerts.items():
            if key not in self.seen_alerts:
                self.seen_alerts.add(key)
                if doc.get("severity") == "critical":
                    self.bell_pending = True
        self.seen_alerts &= set(self.board.alerts)  # a cleared and raised again alert rings again

    # -- network loop -------------------------------------------------------------------------------
    def _fail(self, kind: str, reason: str) -> None:
        with self.lock:
            self.conn.down(self._now(), kind, reason)
        self.attempted.set()
        self.changed.set()

    def _net(self) -> None:
        m = self.settings.mqtt
        delay = self.min_delay
        while not self._stop.is_set():
            self._connack = self._connack_ok = False
            try:
                self.client.connect(m.host, m.effective_port, m.keepalive_s)
            except Exception as e:  # noqa: BLE001 - every failure is shown with its reason
                self._fail(*describe_failure(e, m.host, m.effective_port, m.tls))
            else:
                started = self.clock.monotonic()
                while not self._stop.is_set():
                    rc = self.client.loop(timeout=0.2)
                    if rc != 0:
                        break
                    if not self._connack and self.clock.monotonic() - started > self.connack_timeout_s:
                        self._fail("no-connack", f"no CONNACK from {m.host}:{m.effective_port} within "
                                   f"{self.connack_timeout_s:g} s: is it a TLS port? tls = {str(m.tls).lower()}")
                        break
                try:
                    self.client.disconnect()
                    self.client.loop(timeout=0.1)
                except Exception:  # noqa: BLE001
                    pass
                with self.lock:
                    if self.conn.connected:  # the loop ended without on_disconnect
                        self.conn.down(self._now(), "lost", "connection lost; retrying")
                self.changed.set()
                if self._connack_ok:  # it was up: the next attempt comes soon
                    delay = self.min_delay / 2
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.max_delay)

    def start(self) -> "Console":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # -- the screen ---------------------------------------------------------------------------------
    def loaded(self) -> bool:
        """Subscribed, and the retained messages that follow a SUBACK have had time to arrive."""
        if not (self.conn.connected and self.conn.subscribed) or self._subscribed_at is None:
            return False
        quiet = self.clock.monotonic() - max(self._subscribed_at, self._last_message)
        return quiet >= 0.3 or self.clock.monotonic() - self._subscribed_at >= 5.0

    def screen(self, width: int, height: int | None, color: bool) -> str:
        with self.lock:
            lines = self.board.render_lines(self.conn, self._now(), width, None if height is None else
                                            max(height - 1, 1), self.loaded())
            hint = ("a = 确认 acknowledge the first unacknowledged alert as " + self.operator) if self.operator \
                else "--operator ID: acknowledge with a"
            lines = lines + [(_fit(self.status or hint, width), "dim")]
        if not color:
            return "\n".join(text for text, _ in lines)
        return "\n".join(f"{STYLES[s]}{t}\033[0m" if s in STYLES else t for t, s in lines)

    def acknowledge(self, operator: str | None) -> str:
        """The ``a`` key: acknowledge the first unacknowledged alert on screen as ``operator``
        (command ``ack`` on its hall's ``cmd``); returns what the status line says."""
        if not operator:
            return "按 a 确认需要 --operator ID (to acknowledge, start watch with --operator ID)"
        with self.lock:
            if not self.conn.connected:
                return "未连接 not connected: cannot acknowledge"
            key = self.board.ack_target()
        if key is None:
            return "没有未确认的告警 no unacknowledged alert"
        base, rule, source = key
        self.acks += 1
        request = {"id": f"watch-{os.getpid()}-{self.acks}", "command": "ack",
                   "args": {"alert": f"{rule}/{source}", "by": operator, "note": "acknowledged in hall-agent watch"}}
        self.client.publish(f"{base}/cmd", json.dumps(request), qos=1)
        return f"已发送确认 ack sent: {_short(base)} {rule}/{source} by {operator}"

    def key(self, ch: str) -> None:
        """One key pressed in the interactive console."""
        if ch in ("a", "A"):
            message = self.acknowledge(self.operator)
            with self.lock:
                self.status = message
            self.changed.set()

    def take_bell(self) -> bool:
        with self.lock:
            ring, self.bell_pending = self.bell_pending, False
        return ring


class Keys:
    """Single key presses from the terminal (cbreak mode, restored on exit); nothing without a tty."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdin
        self.saved = None
        try:
            if self.stream.isatty():
                import termios
                import tty as _tty
                self.saved = termios.tcgetattr(self.stream.fileno())
                _tty.setcbreak(self.stream.fileno())
        except (OSError, ValueError, ImportError, AttributeError):
            self.saved = None

    def read(self, timeout: float) -> str | None:
        if self.saved is None:
            return None
        import select
        ready, _, _ = select.select([self.stream], [], [], timeout)
        return os.read(self.stream.fileno(), 1).decode(errors="replace") if ready else None

    def close(self) -> None:
        if self.saved is not None:
            import termios
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self.saved)
            self.saved = None


def run(settings, scope: str | None, out=None, seconds: float | None = None, once: bool = False,
        bell: bool = True, color: bool | None = None, clock: Clock = SYSTEM, operator: str | None = None) -> int:
    """Exit codes: 0 ok; 1 not connected (``--once``, or a non-interactive run, on an error);
    2 an invalid ``--scope`` (before connecting) or an unusable ``[mqtt]`` section."""
    out = out or sys.stdout
    err = sys.stderr
    try:
        check_scope(scope)
    except ScopeError as e:
        print(f"watch: {e}", file=err)
        return EXIT_USAGE
    try:
        console = Console(settings, scope, clock, operator)
    except (OSError, ValueError) as e:  # an unreadable CA, certificate, key or password file
        print(f"watch: cannot set up the MQTT connection: {e}", file=err)
        return EXIT_USAGE
    tty = out.isatty()
    interactive = tty and not once
    if color is None:
        color = tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    if tty and not once:
        out.write("\033[2J")
    console.start()
    deadline = clock.monotonic() + seconds if seconds else None
    code = EXIT_OK

    def draw() -> None:
        size = shutil.get_terminal_size((100, 40))
        width = size.columns if tty else 160
        text = console.screen(width, size.lines - 1 if tty else None, color)
        ring = bell and tty and console.take_bell()
        if tty:  # home, each line over the old one (erasing its rest), then erase below: no flicker
            out.write("\033[H" + text.replace("\n", "\033[K\n") + "\033[K\033[J" + ("\a" if ring else ""))
        else:
            out.write(text + "\n\n")
        out.flush()

    try:
        if once:
            limit = clock.monotonic() + console.connack_timeout_s + 5
            while clock.monotonic() < limit:
                if console.loaded() or (console.attempted.is_set() and console.conn.is_error):
                    break
                clock.sleep(0.05)
            draw()
            code = EXIT_OK if console.loaded() and not console.conn.denied else EXIT_PROBLEM
            if code:
                print(f"watch: {console.conn.reason or 'not connected'}", file=err)
            return code
        keys = Keys() if interactive else None
        while deadline is None or clock.monotonic() < deadline:
            ch = keys.read(0.2) if keys is not None and keys.saved is not None else None
            if ch is not None:
                console.key(ch)
            # redraw on a change, and every second for the clock and the ages
            console.changed.wait(0.0 if ch is not None else 0.8 if keys is not None and keys.saved else 1.0)
            console.changed.clear()
            draw()
            if not interactive and console.conn.is_error:
                print(f"watch: {console.conn.reason}", file=err)
                return EXIT_PROBLEM
            clock.sleep(0.2)  # at most five redraws a second
        code = EXIT_OK if console.conn.connected else EXIT_PROBLEM
    except KeyboardInterrupt:
        code = EXIT_OK
    finally:
        if "keys" in locals() and keys is not None:
            keys.close()
        console.stop()
        if tty and not once:
            out.write("\n")
    return code
