"""The hall's side of the desired/reported cycle (SPEC sections 3 and 7).

    config/desired ──> parse ──> merge with the local keys ──> validate
        │ refused: reported "rejected" with the key paths; nothing changed
        └─ accepted: file replaced (previous kept), reported "applying"
             ├─ only live sections changed: appliers run, reported "applied"
             └─ anything else: the agent restarts itself (systemd starts it
                again); the new process reports "applied" once it has reached
                the broker and published ``online``, or — past
                ``[fleet] revert_after_s`` or after ``MAX_BOOTS`` starts
                without that — puts the previous file back, restarts, and
                reports "reverted" with the reason.

A desired configuration is identified by version and sha256: one that was
applied, rejected or reverted is not tried again when the broker hands the
retained message over on the next connection; a new version is.

What the cycle remembers lives in ``fleet.json`` in the state folder.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..config import Settings
from . import desired as dz
from . import files, live, tomlw

log = logging.getLogger(__name__)

MAX_BOOTS = 3          # starts of a restart-applied file without reaching the broker, then revert
MAX_OUTCOMES = 50      # remembered rejected/reverted pushes

Applier = Callable[[Settings, Settings], None]


class Member:
    def __init__(self, settings: Settings, config_file: Path, state_dir: Path,
                 publish: Callable[[bytes, float], bool], restart: Callable[[str], None],
                 now_iso: Callable[[], str], monotonic: Callable[[], float] = time.monotonic):
        """``publish(payload, wait_s)`` sends the retained ``config/reported`` and
        says whether the broker acknowledged it within ``wait_s`` (no wait with 0);
        ``restart(reason)`` asks the agent for a clean stop and a restart."""
        self.settings = settings
        self.config_file = config_file
        self.state = files.StateFile(state_dir / "fleet.json")
        self.publish = publish
        self.restart = restart
        self.now_iso = now_iso
        self.monotonic = monotonic
        self.appliers: dict[str, Applier] = {}
        self.live_checks: dict[str, Callable[[Settings, Settings], bool]] = {}
        self._lock = threading.RLock()
        self._doc = self.state.load()
        self._deadline: float | None = None
        self._connected = threading.Event()   # set by connected() only
        self._wake = threading.Event()        # wakes the watcher (a connection, or stop)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_reported: bytes | None = None
        self._reported_acked = False
        self.restarting = False
        self.config_sha256 = _sha256(config_file)  # of the running file (health)
        reported = self._doc.get("reported")
        if isinstance(reported, dict):
            self.last_reported = json.dumps(reported).encode()

    # -- what the agent calls ------------------------------------------------------------------
    def boot(self) -> None:
        """At start, before connecting: a pending restart-applied file is given
        ``revert_after_s`` to reach the broker; a revert done before the restart
        is reported."""
        with self._lock:
            pending = self._doc.get("pending")
            if not isinstance(pending, dict):
                return
            if pending.get("phase") == "reverted":
                self._doc.pop("pending")
                self._remember(pending["key"], "reverted")
                self._report(pending, "reverted", [pending.get("reason", "reverted")])
                log.warning("configuration %s was reverted: %s", pending.get("version"), pending.get("reason"))
                return
            pending["boots"] = int(pending.get("boots", 0)) + 1
            self._save()
            if pending["boots"] > MAX_BOOTS:
                self._revert(pending, f"the agent started {MAX_BOOTS} times with it without reaching the broker")
                return
            self._deadline = self.monotonic() + self.settings.fleet.revert_after_s
            log.info("configuration %s applied by a restart: waiting up to %.0f s for the broker",
                     pending.get("version"), self.settings.fleet.revert_after_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def connected(self) -> None:
        """The link's on-connect hook (the network thread: must not block)."""
        self._reported_acked = False
        self._connected.set()
        self._wake.set()

    def retained(self) -> list[tuple[str, bytes]]:
        """What the cycle holds on retained topics (suffix under the base, payload),
        for a republish after the broker lost its session (the link's rebirth).
        The cycle itself republishes it on every connect until acknowledged."""
        return [("config/reported", self.last_reported)] if self.last_reported else []

    @property
    def pending(self) -> dict | None:
        p = self._doc.get("pending")
        return p if isinstance(p, dict) else None

    def status(self) -> dict[str, Any]:
        reported = self._doc.get("reported") or {}
        current = self._doc.get("current") or {}
        return {"version": current.get("version"), "sha256": current.get("sha256"),
                "state": reported.get("state"), "pending": bool(self.pending)}

    # -- config/desired ----------------------------------------------------------------------------
    def on_desired(self, raw: bytes) -> None:
        if not raw:
            return  # the centre cleared its desired message: nothing to do
        with self._lock:
            if self.restarting:
                return
            try:
                d = dz.parse(raw)
            except dz.Rejected as e:
                self._report({"sha256": None, "version": None}, "rejected", e.errors)
                log.warning("config/desired refused: %s", "; ".join(e.errors))
                return
            current = self._doc.get("current") or {}
            if current.get("key") == d.key:
                if not self._reported_acked and self.last_reported:
                    self.publish(self.last_reported, 0)
                return
            if d.key in (self._doc.get("outcomes") or {}) or (self.pending or {}).get("key") == d.key:
                return  # already rejected or reverted (or being applied): a new version is needed
            self._apply(d)

    def _apply(self, d: dz.Desired) -> None:
        info = {"key": d.key, "version": d.version, "sha256": d.sha256}
        try:
            local = tomllib.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            self._reject(info, [f"{self.config_file}: the hall's own file cannot be read ({e})"])
            return
        try:
            merged, new = dz.merge(d, local)
        except dz.Rejected as e:
            self._reject(info, e.errors)
            return
        plan = live.plan(self.settings, new, self.appliers, self.live_checks)
        if not plan.live and not plan.restart:
            log.info("configuration %s: no change to the running settings", d.version)
        header = (f"# written by hall-agent from config/desired version {d.version!r} "
                  f"(sha256 {d.sha256}) at {self.now_iso()}\n"
                  f"# the file it replaced: {files.prev_path(self.config_file).name}\n")
        try:
            files.replace_keeping_previous(self.config_file, (header + tomlw.dumps(merged)).encode())
        except OSError as e:
            self._reject(info, [f"{self.config_file}: cannot be written ({e.strerror or e}); nothing changed"])
            return
        self._report(info, "applying", [], live=plan.live, restart=plan.restart)
        if plan.needs_restart:
            self._doc["pending"] = {**info, "phase": "restart", "boots": 0, "at": self.now_iso(),
                                    "restart": plan.restart}
            self._save()
            log.warning("configuration %s changes %s: restarting to apply it", d.version, ", ".join(plan.restart))
            self.restarting = True
            self.restart(f"configuration {d.version} changes {', '.join(plan.restart)}")
            return
        old = self.settings
        done: list[str] = []
        try:
            for name in plan.live:
                self.appliers[name](old, new)
                done.append(name)
        except Exception as e:
            log.exception("configuration %s: applying %s live failed", d.version, name)
            files.restore_previous(self.config_file)
            for back in reversed(done):
                try:
                    self.appliers[back](new, old)
                except Exception:
                    log.exception("putting %s back failed", back)
            self._remember(d.key, "reverted")
            self._report(info, "reverted", [f"{name}: could not be applied live ({type(e).__name__}: {e}); "
                                            "the previous file is back"])
            return
        self.settings = new
        self.config_sha256 = _sha256(self.config_file)
        self._doc["current"] = info
        self._report(info, "applied", [], live=plan.live)
        log.info("configuration %s applied live (%s)", d.version, ", ".join(plan.live) or "no change")

    def _reject(self, info: dict, errors: list[str]) -> None:
        self._remember(info["key"], "rejected")
        self._report(info, "rejected", errors)
        log.warning("configuration %s rejected: %s", info.get("version"), "; ".join(errors))

    # -- the watcher thread: confirm a restart-applied file, or revert it ----------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._turn()
            except Exception:
                log.exception("fleet watcher error")
                self._stop.wait(1.0)

    def _turn(self) -> None:
        with self._lock:
            if self.restarting or self._stop.is_set():
                return  # this process is going away: the restarted one confirms, or reverts
            pending = self.pending
            if self._connected.is_set():
                self._connected.clear()
                if pending is not None and pending.get("phase") == "restart":
                    payload = self._reported_payload(pending, "applied", [])
                    if self.publish(payload, 5.0):
                        self._doc.pop("pending", None)
                        self._doc["current"] = {k: pending[k] for k in ("key", "version", "sha256")}
                        self._set_reported(payload, acked=True)
                        self._deadline = None
                        log.info("configuration %s applied: the broker answered", pending.get("version"))
                        return
                    self._connected.set()  # not acknowledged: try again
                    self._wake.set()
                elif self.last_reported is not None and not self._reported_acked:
                    self._reported_acked = self.publish(self.last_reported, 5.0)
            if pending is not None and self._deadline is not None and self.monotonic() > self._deadline \
                    and not self.restarting:
                self._revert(pending, f"no connection to the broker within {self.settings.fleet.revert_after_s:g} s "
                                      "of applying it")

    def _revert(self, pending: dict, reason: str) -> None:
        restored = files.restore_previous(self.config_file)
        if not restored:
            log.error("configuration %s should be reverted (%s) but there is no previous file",
                      pending.get("version"), reason)
        pending.update(phase="reverted", reason=reason)
        self._doc["pending"] = pending
        self._save()
        log.error("configuration %s reverted: %s; restarting with the previous file", pending.get("version"), reason)
        self.restarting = True
        self._deadline = None
        self.restart(f"reverting configuration {pending.get('version')}")

    # -- reported ------------------------------------------------------------------------------------
    def _reported_payload(self, info: dict, state: str, errors: list[str], **extra: Any) -> bytes:
        doc = {"sha256": info.get("sha256"), "version": info.get("version"), "state": state,
               "errors": errors, "at": self.now_iso(), "agent_version": __version__}
        doc.update({k: v for k, v in extra.items() if v})
        return json.dumps(doc, ensure_ascii=False).encode()

    def _report(self, info: dict, state: str, errors: list[str], **extra: Any) -> None:
        payload = self._reported_payload(info, state, errors, **extra)
        self._set_reported(payload, acked=False)
        self._reported_acked = self.publish(payload, 0)

    def _set_reported(self, payload: bytes, acked: bool) -> None:
        self.last_reported = payload
        self._reported_acked = acked
        self._doc["reported"] = json.loads(payload)
        self._save()

    def _remember(self, key: str, outcome: str) -> None:
        outcomes = self._doc.setdefault("outcomes", {})
        outcomes[key] = outcome
        while len(outcomes) > MAX_OUTCOMES:
            outcomes.pop(next(iter(outcomes)))
        self._save()

    def _save(self) -> None:
        try:
            self.state.save(self._doc)
        except OSError as e:
            log.error("fleet state %s cannot be written: %s", self.state.path, e)


def _sha256(path: Path) -> str | None:
    import hashlib
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
