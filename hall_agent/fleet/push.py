"""``hall-agent fleet push`` and ``hall-agent fleet status``: the centre's side.

``push DIR --scope CITY[/BRANCH[/HALL]]``: ``DIR`` holds one file per hall,
``DIR/<city>/<branch>/<hall>.toml``. The halls in scope get their file as a
retained ``config/desired`` wave by wave (``--wave N`` halls or ``N%`` of
them, default 10%), and each wave is awaited: a hall succeeds when it reports
``applied`` for this version and sha256 and its status is ``online``; it fails
on ``rejected``, ``reverted`` or no answer within ``--timeout`` seconds. After
``--max-failures`` failures no further wave starts (the wave under way is
awaited). A progress bar goes to stderr, the table to stdout; exit 0 when
every hall in scope applied it, 1 otherwise, 2 for a usage error.

``status --scope …``: each hall's online state, agent version, configuration
version, sha256 and state, from the retained ``status`` and
``config/reported`` (a table, or ``--json``).

The model (:class:`Rollout`) is pure; :class:`Wire` owns the MQTT client.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import desired as dz

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


# -- scope and files --------------------------------------------------------------------------------
def parse_scope(scope: str) -> tuple[str, ...]:
    parts = tuple(p for p in scope.strip("/").split("/") if p)
    if not 1 <= len(parts) <= 3 or any(p in ("+", "#") or not p for p in parts):
        raise UsageError(f"--scope {scope!r}: write CITY, CITY/BRANCH or CITY/BRANCH/HALL")
    return parts


def in_scope(hall: tuple[str, str, str], scope: tuple[str, ...]) -> bool:
    return hall[:len(scope)] == scope


@dataclass
class HallFile:
    hall: tuple[str, str, str]   # city, branch, id
    path: Path
    text: str

    @property
    def name(self) -> str:
        return "/".join(self.hall)


def collect(folder: Path, scope: tuple[str, ...]) -> list[HallFile]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder of <city>/<branch>/<hall>.toml files")
    found = []
    for path in sorted(folder.glob("*/*/*.toml")):
        hall = (path.parent.parent.name, path.parent.name, path.stem)
        if in_scope(hall, scope):
            found.append(HallFile(hall, path, path.read_text(encoding="utf-8")))
    return found


def wave_size(spec: str, total: int) -> int:
    text = spec.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(total * pct / 100))
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise UsageError(f"--wave {spec!r}: a number of halls (5) or a share of them (10%)") from None


def identity_problem(f: HallFile) -> str | None:
    """The file must be the hall's own (its [hall] matches its place in DIR)."""
    try:
        data = tomllib.loads(f.text)
    except tomllib.TOMLDecodeError:
        return None  # the hall reports the syntax error itself, with its position
    h = data.get("hall") if isinstance(data.get("hall"), dict) else {}
    got = (h.get("city"), h.get("branch"), h.get("id"))
    if got != f.hall:
        return f"{f.path}: its [hall] says {'/'.join(str(x) for x in got)}, its place in the folder {f.name}"
    return None


# -- the rollout model (pure) ------------------------------------------------------------------------
@dataclass
class HallRun:
    file: HallFile
    wave: int
    sha256: str
    result: str = "not-pushed"      # not-pushed | waiting | applied | rejected | reverted | timeout | refused
    detail: str = ""
    started: float | None = None
    reported: dict | None = None
    online: bool | None = None

    @property
    def done(self) -> bool:
        return self.result not in ("waiting", "not-pushed")

    @property
    def failed(self) -> bool:
        return self.result in ("rejected", "reverted", "timeout", "refused")


@dataclass
class Rollout:
    runs: list[HallRun]
    wave: int
    max_failures: int | None
    timeout_s: float
    version: str
    stopped: bool = False

    @classmethod
    def plan(cls, files: list[HallFile], wave: int, max_failures: int | None, timeout_s: float,
             version: str) -> "Rollout":
        runs = [HallRun(f, i // wave + 1, dz.sha256_text(f.text)) for i, f in enumerate(files)]
        return cls(runs, wave, max_failures, timeout_s, version)

    @property
    def waves(self) -> int:
        return max((r.wave for r in self.runs), default=0)

    @property
    def failures(self) -> int:
        return sum(r.failed for r in self.runs)

    def wave_runs(self, n: int) -> list[HallRun]:
        return [r for r in self.runs if r.wave == n]

    def observe(self, run: HallRun, now: float) -> None:
        """Judge a waiting hall from what is known of it."""
        if run.result != "waiting":
            return
        rep = run.reported
        if rep and rep.get("sha256") == run.sha256 and rep.get("version") == self.version:
            state = rep.get("state")
            if state in ("rejected", "reverted"):
                run.result = state
                run.detail = "; ".join(rep.get("errors") or [])
                return
            if state == "applied" and run.online:
                run.result, run.detail = "applied", ", ".join(rep.get("live") or rep.get("restart") or [])
                return
        if run.started is not None and now - run.started > self.timeout_s:
            run.result = "timeout"
            last = (rep or {}).get("state") if rep and rep.get("sha256") == run.sha256 else None
            run.detail = (f"no outcome within {self.timeout_s:g} s" + (f" (last: {last})" if last else "")
                          + ("" if run.online else "; offline"))

    def over_limit(self) -> bool:
        return self.max_failures is not None and self.failures >= self.max_failures


# -- rendering -----------------------------------------------------------------------------------------
def progress_bar(rollout: Rollout, width: int = 30) -> str:
    total = len(rollout.runs)
    done = sum(r.done for r in rollout.runs)
    filled = int(width * done / total) if total else width
    ok = sum(r.result == "applied" for r in rollout.runs)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  applied {ok}  failed {rollout.failures}"
            + ("  STOPPED" if rollout.stopped else ""))


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def rollout_table(rollout: Rollout) -> str:
    rows = [[r.file.name, str(r.wave), r.result, "online" if r.online else ("offline" if r.online is False else "?"),
             r.detail[:120]] for r in rollout.runs]
    return table(rows, ["hall", "wave", "result", "status", "detail"])


# -- MQTT ------------------------------------------------------------------------------------------------
class Wire:
    """One paho client with the console's [mqtt] settings, subscribed to the
    retained ``status`` and ``config/reported`` of the halls in scope."""

    def __init__(self, settings, scope: tuple[str, ...]):
        from ..link import make_client
        self.settings = settings
        self.root = settings.mqtt.topic_root
        filt = "/".join([self.root, *scope, *(["+"] * (3 - len(scope)))])
        self.filters = [f"{filt}/status", f"{filt}/config/reported"]
        self.status: dict[tuple[str, str, str], dict] = {}
        self.reported: dict[tuple[str, str, str], dict] = {}
        self.cond = threading.Condition()
        self.last_message = time.monotonic()
        self.error: str | None = None
        self._subacks = 0
        self.client = make_client(settings, f"hall-agent-fleet-{os.getpid()}-{time.monotonic_ns() % 10**6}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self, timeout: float = 15.0) -> None:
        m = self.settings.mqtt
        try:
            self.client.connect(m.host, m.effective_port, m.keepalive_s)
        except (OSError, ValueError) as e:
            raise UsageError(f"broker {m.host}:{m.effective_port}: {e}") from None
        self.client.loop_start()
        with self.cond:
            if not self.cond.wait_for(lambda: self._subacks >= len(self.filters) or self.error, timeout):
                raise UsageError(f"broker {m.host}:{m.effective_port}: no answer within {timeout:g} s")
        if self.error:
            raise UsageError(self.error)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            with self.cond:
                self.error = f"the broker refused the connection: {reason_code}"
                self.cond.notify_all()
            return
        for f in self.filters:
            client.subscribe(f, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self.cond:
            self._subacks += 1
            if any(getattr(rc, "is_failure", False) for rc in reason_codes):
                self.error = f"the broker refused the subscription to {', '.join(self.filters)} (ACL?)"
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        rest = msg.topic[len(self.root) + 1:].split("/")
        if len(rest) < 4:
            return
        hall, kind = (rest[0], rest[1], rest[2]), "/".join(rest[3:])
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if not isinstance(doc, dict):
            doc = None
        with self.cond:
            target = self.status if kind == "status" else self.reported
            if doc is None:
                target.pop(hall, None)
            else:
                target[hall] = doc
            self.last_message = time.monotonic()
            self.cond.notify_all()

    def settle(self, quiet_s: float = 0.5, max_s: float = 5.0) -> None:
        """Wait for the retained messages to arrive: until quiet for ``quiet_s``."""
        end = time.monotonic() + max_s
        while time.monotonic() < end:
            with self.cond:
                if time.monotonic() - self.last_message >= quiet_s:
                    return
                self.cond.wait(0.05)

    def publish_desired(self, hall: tuple[str, str, str], payload: bytes) -> bool:
        topic = "/".join([self.root, *hall, "config", "desired"])
        info = self.client.publish(topic, payload, 1, True)
        try:
            info.wait_for_publish(10)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the commands ----------------------------------------------------------------------------------------
def push(settings, folder: str, scope_text: str, wave_spec: str = "10%", max_failures: int | None = None,
         timeout_s: float = 600.0, version: str | None = None, out=None, err=None,
         clock: Callable[[], float] = time.monotonic) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        scope = parse_scope(scope_text)
        files = collect(Path(folder), scope)
        if not files:
            raise UsageError(f"{folder}: no <city>/<branch>/<hall>.toml file in scope {scope_text}")
        size = wave_size(wave_spec, len(files))
        if max_failures is not None and max_failures < 1:
            raise UsageError("--max-failures must be at least 1")
    except UsageError as e:
        print(f"fleet push: {e}", file=err)
        return EXIT_USAGE
    version = version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rollout = Rollout.plan(files, size, max_failures, timeout_s, version)
    wire = Wire(settings, scope)
    try:
        wire.connect()
    except UsageError as e:
        print(f"fleet push: {e}", file=err)
        return EXIT_USAGE
    tty = getattr(err, "isatty", lambda: False)()
    try:
        wire.settle()
        print(f"fleet push: {len(files)} hall(s) in {scope_text}, waves of {size}, version {version}", file=err)
        for n in range(1, rollout.waves + 1):
            if rollout.over_limit():
                rollout.stopped = True
                break
            runs = rollout.wave_runs(n)
            for run in runs:
                problem = identity_problem(run.file)
                if problem:
                    run.result, run.detail = "refused", problem
                    continue
                run.started = clock()
                run.result = "waiting"
                if not wire.publish_desired(run.file.hall, dz.payload(version, run.file.text)):
                    run.result, run.detail = "timeout", "the broker did not acknowledge config/desired"
            while not all(r.done for r in runs):
                with wire.cond:
                    wire.cond.wait(0.2)
                    for r in runs:
                        r.reported = wire.reported.get(r.file.hall)
                        st = wire.status.get(r.file.hall)
                        r.online = None if st is None else st.get("state") == "online"
                now = clock()
                for r in runs:
                    rollout.observe(r, now)
                if tty:
                    print("\r" + progress_bar(rollout), end="", file=err, flush=True)
            print(("\r" if tty else "") + progress_bar(rollout) + f"  (wave {n}/{rollout.waves})", file=err,
                  flush=True)
        if rollout.over_limit() and any(r.result == "not-pushed" for r in rollout.runs):
            rollout.stopped = True
            print(f"fleet push: stopped after {rollout.failures} failure(s) (--max-failures {max_failures}); "
                  f"{sum(r.result == 'not-pushed' for r in rollout.runs)} hall(s) not pushed", file=err)
    finally:
        wire.close()
    print(rollout_table(rollout), file=out)
    return EXIT_OK if all(r.result == "applied" for r in rollout.runs) else EXIT_PROBLEM


def status(settings, scope_text: str, as_json: bool = False, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        scope = parse_scope(scope_text)
    except UsageError as e:
        print(f"fleet status: {e}", file=err)
        return EXIT_USAGE
    wire = Wire(settings, scope)
    try:
        wire.connect()
        wire.settle()
    except UsageError as e:
        print(f"fleet status: {e}", file=err)
        return EXIT_USAGE
    finally:
        wire.close()
    halls = sorted(set(wire.status) | set(wire.reported))
    items: list[dict[str, Any]] = []
    for hall in halls:
        st, rep = wire.status.get(hall) or {}, wire.reported.get(hall) or {}
        items.append({"hall": "/".join(hall), "online": st.get("state") == "online",
                      "status_reason": st.get("reason"), "agent_version": st.get("version"),
                      "config_version": rep.get("version"), "config_sha256": rep.get("sha256"),
                      "state": rep.get("state"), "errors": rep.get("errors") or [], "at": rep.get("at")})
    if as_json:
        print(json.dumps(items, ensure_ascii=False), file=out)
    else:
        rows = [[i["hall"], "online" if i["online"] else "offline", i["agent_version"] or "-",
                 i["config_version"] or "-", (i["config_sha256"] or "-")[:12], i["state"] or "-",
                 (i["errors"][0] if i["errors"] else "")[:80]] for i in items]
        print(table(rows, ["hall", "status", "agent", "config", "sha256", "state", "detail"]), file=out)
        if not items:
            print(f"no hall under {scope_text} has published anything on this broker", file=out)
    return EXIT_OK
