"""The ``credentials`` command: a new MQTT password, or a new client
certificate and key, proven before the agent switches to it.

Refused unless the hall's own ``[commands] allow_credentials = true``.

Arguments, one of:

- ``{"password": "…"}`` — needs ``mqtt.password_file`` (an inline
  ``mqtt.password`` cannot be rotated remotely);
- ``{"cert_pem": "-----BEGIN CERTIFICATE-----…", "key_pem": "-----BEGIN … KEY-----…"}``
  — needs ``mqtt.cert_file`` and ``mqtt.key_file`` (TLS);
- ``{"rollback": true}`` — back to the credentials the last rotation replaced;

and optionally ``"wait_s"`` (0 to 900, default 0): how long to keep trying
the proof. A broker with one password per user (mosquitto's password file)
accepts the new password only once the centre has set it, and on that reload
it drops the hall's connection made with the old one: send the command with
``wait_s`` first, then change the broker; the hall switches as soon as the
proof gets through and reconnects with the new password (docs/fleet.md).

Steps: the new secret is written beside the current file (``<file>.new``,
mode 0600); a second connection with the hall's settings and the new secret
(client id ``{client_id}-proof``) must get a successful CONNACK within
``PROOF_TIMEOUT_S``; only then the current file is kept as ``<file>.old``
(one rollback) and ``<file>.new`` replaces it (renames). A new password is
used from the next (re)connect on; a new certificate by a clean restart the
agent asks for at once (a TLS context cannot be changed in place). A failed
proof removes ``<file>.new`` and changes nothing. Secrets never appear in
replies, events or logs.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..commands import CommandError
from . import files

log = logging.getLogger(__name__)

PROOF_TIMEOUT_S = 10.0
MAX_SECRET_CHARS = 16 * 1024


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def prove(settings, timeout_s: float = PROOF_TIMEOUT_S) -> str | None:
    """Connect once with ``settings``; None on a successful CONNACK, else the reason."""
    from ..link import make_client
    m = settings.mqtt
    try:
        client = make_client(settings, f"{settings.client_id}-proof")
    except (OSError, ValueError, ssl.SSLError) as e:
        return f"the new credentials cannot be used: {e}"
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        outcome["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    client.on_connect_fail = lambda c, u: (outcome.setdefault("error", "connection failed"), done.set())
    try:
        client.connect_async(m.host, m.effective_port, m.keepalive_s)
        client.loop_start()
        if not done.wait(timeout_s):
            return f"no answer from the broker {m.host}:{m.effective_port} within {timeout_s:g} s"
        rc = outcome.get("rc")
        if rc is None:
            return f"the broker {m.host}:{m.effective_port} could not be reached: {outcome.get('error')}"
        if rc.is_failure:
            return f"the broker refused the new credentials: {rc}"
        return None
    finally:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - the proof's own connection, on its way out
            pass
        client.loop_stop()


class Rotation:
    def __init__(self, settings_fn: Callable[[], Any], set_password: Callable[[str], None],
                 restart: Callable[[str], None], prove_fn: Callable[[Any], str | None] = prove,
                 notify: Callable[[dict], None] = lambda outcome: None,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        """``notify(outcome)`` reports every outcome (the agent makes it an event
        on the outbox: it survives the connection the switch may cost)."""
        self.settings_fn = settings_fn
        self.set_password = set_password
        self.restart = restart
        self.prove = prove_fn
        self.notify = notify
        self.monotonic = monotonic
        self.sleep = sleep
        self._lock = threading.Lock()
        self._wait_s = 0.0

    def command(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self._lock.acquire(blocking=False):
            raise CommandError("busy", "a credentials rotation is already under way")
        try:
            return self._run(args)
        finally:
            self._lock.release()

    def _run(self, args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(args) - {"password", "cert_pem", "key_pem", "rollback", "wait_s"})
        if unknown:
            raise CommandError("bad-args", f"unknown arguments: {', '.join(unknown)}; "
                                           "give password, or cert_pem and key_pem, or rollback")
        wait = args.get("wait_s", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 900:
            raise CommandError("bad-args", "'wait_s' must be a number of seconds from 0 to 900")
        self._wait_s = float(wait)
        kinds = [k for k in ("password", "cert_pem", "rollback") if k in args]
        if len(kinds) != 1 or ("key_pem" in args) != ("cert_pem" in args):
            raise CommandError("bad-args", "give one of: password; cert_pem and key_pem; rollback")
        settings = self.settings_fn()
        m = settings.mqtt
        if "rollback" in args:
            if args["rollback"] is not True:
                raise CommandError("bad-args", "'rollback' must be true")
            return self._rollback(settings)
        if "password" in args:
            pw = args["password"]
            if not isinstance(pw, str) or not pw or len(pw) > 1024 or any(c in pw for c in "\r\n\0"):
                raise CommandError("bad-args", "'password' must be a non-empty string of at most 1024 characters "
                                               "without line breaks")
            if m.password_file is None:
                raise CommandError("refused", "this hall has no mqtt.password_file: an inline mqtt.password "
                                              "cannot be rotated remotely")
            return self._switch(settings, {"password_file": (m.password_file, (pw + "\n").encode())}, "password")
        cert, key = args["cert_pem"], args["key_pem"]
        for name, value in (("cert_pem", cert), ("key_pem", key)):
            if not isinstance(value, str) or "-----BEGIN" not in value or len(value) > MAX_SECRET_CHARS:
                raise CommandError("bad-args", f"'{name}' must be PEM text (-----BEGIN …)")
        if not m.tls or m.cert_file is None or m.key_file is None:
            raise CommandError("refused", "this hall has no mqtt.cert_file and key_file (TLS client certificate)")
        problem = _pem_pair_problem(cert, key)
        if problem:
            raise CommandError("bad-args", problem)
        return self._switch(settings, {"cert_file": (m.cert_file, cert.encode()),
                                       "key_file": (m.key_file, key.encode())}, "certificate")

    def _switch(self, settings, items: dict[str, tuple[Path, bytes]], what: str) -> dict[str, Any]:
        written: list[Path] = []
        try:
            for key, (path, data) in items.items():
                new = _new(path)
                files.write_atomic(new, data, like=None)
                os.chmod(new, 0o600)
                written.append(new)
        except OSError as e:
            for p in written:
                p.unlink(missing_ok=True)
            raise CommandError("failed", f"{_new(items[next(iter(items))][0])}: cannot be written "
                                         f"({e.strerror or e}); nothing changed") from None
        trial = settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update={
            key: _new(path) for key, (path, _) in items.items()})})
        deadline = self.monotonic() + self._wait_s
        while True:
            reason = self.prove(trial)
            if reason is None or self.monotonic() >= deadline:
                break
            self.sleep(min(1.0, max(0.0, deadline - self.monotonic())))
        if reason is not None:
            for p in written:
                p.unlink(missing_ok=True)
            log.warning("credentials rotation (%s) refused, nothing changed: %s", what, reason)
            self.notify({"outcome": "unchanged", "what": what, "reason": reason})
            raise CommandError("failed", f"{reason}; nothing changed")
        for key, (path, _) in items.items():
            if path.exists():
                files._copy_to(path, _old(path))
            os.replace(_new(path), path)
        log.warning("credentials rotated (%s): proven on a second connection; the previous kept as %s", what,
                    ", ".join(str(_old(p)) for p, _ in items.values()))
        return self._adopt(settings, what, [p for p, _ in items.values()])

    def _adopt(self, settings, what: str, paths: list[Path]) -> dict[str, Any]:
        result = {"switched": what, "proven": True, "previous_kept": [str(_old(p)) for p in paths]}
        self.notify({"outcome": "switched", "what": what, "previous_kept": result["previous_kept"]})
        if what == "password":
            self.set_password(paths[0].read_text().strip())
            result["takes_effect"] = "at the next connection"
        else:
            result["takes_effect"] = "now: the agent restarts with the new certificate"
            self.restart("new client certificate")
        return result

    def _rollback(self, settings) -> dict[str, Any]:
        m = settings.mqtt
        paths = [p for p in (m.password_file,) if p is not None and _old(p).exists()]
        what = "password"
        if not paths and m.cert_file is not None and m.key_file is not None \
                and _old(m.cert_file).exists() and _old(m.key_file).exists():
            paths, what = [m.cert_file, m.key_file], "certificate"
        if not paths:
            raise CommandError("failed", "no previous credentials are kept: nothing to roll back to")
        keys = ["password_file"] if what == "password" else ["cert_file", "key_file"]
        items = {k: (p, _old(p).read_bytes()) for k, p in zip(keys, paths)}
        return self._switch(settings, items, what)


def _pem_pair_problem(cert: str, key: str) -> str | None:
    """Whether the certificate and key are PEM that belong together."""
    with tempfile.TemporaryDirectory() as d:
        c, k = Path(d) / "c.pem", Path(d) / "k.pem"
        c.write_text(cert)
        k.write_text(key)
        os.chmod(k, 0o600)
        try:
            ssl.create_default_context().load_cert_chain(str(c), str(k))
        except ssl.SSLError as e:
            return f"cert_pem and key_pem are not a certificate and its key ({e.reason or e})"
        except OSError as e:
            return f"cert_pem/key_pem: {e}"
    return None
