"""Commands on ``{base}/cmd`` (SPEC section 3): parsing, dispatch and replies.

Pure: the dispatcher turns a payload into a reply and an audit record and
never raises.  Handlers are registered by the parts that own them (``ping``
and ``status`` by the agent; ``check``, ``reset`` and ``power`` by later
parts), each with an optional ``allowed`` switch from ``[commands]``.

Error codes in replies: ``too-large``, ``malformed``, ``unknown-command``,
``refused``, ``bad-args``, ``failed``, ``busy`` (a check or a drill is already running);
alarm handling adds ``not-found`` and ``conflict``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
MAX_ID_CHARS = 128


class CommandError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Command:
    id: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    reply: dict[str, Any]   # what goes to cmd/reply
    audit: dict[str, Any]   # the data of the ``command`` envelope on ``event``

    @property
    def ok(self) -> bool:
        return bool(self.reply.get("ok"))


def parse(payload: bytes) -> Command:
    """Parse a request or raise CommandError (with ``.id`` when it could be read)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("too-large", f"command is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError:
        raise CommandError("malformed", "command is not UTF-8 text") from None
    except CommandError:
        raise
    except (json.JSONDecodeError, RecursionError) as e:
        raise CommandError("malformed", f"command is not JSON: {getattr(e, 'msg', e)}") from None
    except ValueError as e:  # an integer of more than 4300 digits (int's string conversion limit)
        raise CommandError("malformed", f"command is not usable JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CommandError("malformed", "command must be a JSON object")
    try:
        bad = _lone_surrogate(doc)
    except RecursionError:
        raise CommandError("malformed", "command is nested too deeply") from None
    if bad is not None:
        error = CommandError("malformed", f"command contains a lone surrogate ({bad!r} is not Unicode text)")
        cid = doc.get("id")
        if isinstance(cid, str) and _lone_surrogate(cid) is None and 0 < len(cid) <= MAX_ID_CHARS:
            raise _with_id(error, cid)
        raise error
    cid = doc.get("id")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_ID_CHARS:
        raise CommandError("malformed", f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters")
    name = doc.get("command")
    if not isinstance(name, str) or not name:
        raise _with_id(CommandError("malformed", "'command' must be a non-empty string"), cid)
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _with_id(CommandError("malformed", "'args' must be a JSON object"), cid)
    unknown = set(doc) - {"id", "command", "args"}
    if unknown:
        raise _with_id(CommandError("malformed", f"unknown fields: {', '.join(sorted(unknown))}"), cid)
    return Command(cid, name, args)


def _no_constant(name: str):
    raise CommandError("malformed", f"command is not JSON: {name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309: valid JSON, but Python reads it as inf (no envelope may hold one)
        raise CommandError("malformed", f"command is not usable JSON: {text[:40]} is too large for a number")
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The first string (or key) in ``value`` holding a lone surrogate (JSON's "\\ud800"), which
    cannot be written as UTF-8 (a reply or an audit envelope with it could not be sent)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return value[e.start:e.end]
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _lone_surrogate(k) or _lone_surrogate(v)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _lone_surrogate(v)
            if found:
                return found
    return None


def _with_id(error: CommandError, cid: str) -> CommandError:
    error.id = cid  # type: ignore[attr-defined]
    return error


@dataclass
class _Entry:
    handler: Callable[[dict[str, Any]], Any]
    allowed: Callable[[], bool] | None
    refusal: str


class Dispatcher:
    def __init__(self) -> None:
        self._commands: dict[str, _Entry] = {}

    def register(self, name: str, handler: Callable[[dict[str, Any]], Any],
                 allowed: Callable[[], bool] | None = None, refusal: str = "") -> None:
        self._commands[name] = _Entry(handler, allowed, refusal or f"command {name!r} is not enabled")

    @property
    def names(self) -> list[str]:
        return sorted(self._commands)

    def handle(self, payload: bytes) -> Outcome:
        try:
            cmd = parse(payload)
        except CommandError as e:
            cid = getattr(e, "id", None)
            return self._error(cid, None, {}, e)
        entry = self._commands.get(cmd.command)
        if entry is None:
            return self._error(cmd.id, cmd.command, cmd.args, CommandError(
                "unknown-command", f"unknown command {cmd.command!r}; known: {', '.join(self.names)}"))
        if entry.allowed is not None and not entry.allowed():
            return self._error(cmd.id, cmd.command, cmd.args, CommandError("refused", entry.refusal))
        try:
            result = entry.handler(cmd.args)
        except CommandError as e:
            return self._error(cmd.id, cmd.command, cmd.args, e)
        except Exception as e:  # a handler bug must not stop the agent
            log.exception("command %s failed", cmd.command)
            return self._error(cmd.id, cmd.command, cmd.args, CommandError("failed", f"{type(e).__name__}: {e}"))
        reply = {"id": cmd.id, "ok": True, "result": result}
        return Outcome(reply, {"id": cmd.id, "command": cmd.command, "args": _small(cmd.args), "ok": True,
                               "error": None})

    @staticmethod
    def _error(cid: str | None, name: str | None, args: dict, e: CommandError) -> Outcome:
        error = {"code": e.code, "message": e.message}
        return Outcome({"id": cid, "ok": False, "error": error},
                       {"id": cid, "command": name, "args": _small(args), "ok": False, "error": error})


#: argument names whose values never reach the audit event (the credentials command)
SECRET_ARGS = ("password", "key_pem")


def _small(args: dict[str, Any]) -> dict[str, Any] | str:
    args = {k: ("********" if k in SECRET_ARGS and v is not None else v) for k, v in args.items()}
    try:
        text = json.dumps(args, default=str, allow_nan=False)
    except (ValueError, RecursionError):  # nothing a parsed command holds; kept out of the audit anyway
        return "<arguments that are not plain JSON>"
    return args if len(text) <= 1024 else f"<{len(text)} bytes of arguments>"
