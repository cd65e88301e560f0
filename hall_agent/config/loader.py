"""Loading the configuration: one line per problem, never a traceback."""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .checks import cross_checks
from .models import Settings

DEFAULT_PATH = Path("/etc/hall-agent/config.toml")


class ConfigError(Exception):
    """The configuration was refused; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def config_path(path: str | os.PathLike | None = None) -> Path:
    if path:
        return Path(path)
    env = os.environ.get("HALL_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_PATH


def load(path: str | os.PathLike | None = None, defaults: dict[str, Any] | None = None) -> Settings:
    """Read, validate and cross-check the configuration, or raise ConfigError.
    ``defaults``: whole sections used when the file has none (the staff console
    needs only ``[mqtt]``)."""
    file = config_path(path)
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file (give -c FILE or set HALL_AGENT_CONFIG)"]) from None
    except PermissionError:
        raise ConfigError([f"{file}: permission denied"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{file}: is a directory, not a TOML file"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: TOML syntax error: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{file}: not UTF-8 text ({e.reason})"]) from None
    for section, value in (defaults or {}).items():
        data.setdefault(section, value)
    return validate(data)


def validate(data: dict[str, Any]) -> Settings:
    try:
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError([f"{path}: {reason}" for path, reason in describe(e)]) from None
    problems = cross_checks(settings)
    if problems:
        raise ConfigError([f"{path}: {reason}" for path, reason in problems])
    return settings


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        kind = err["type"]
        if kind == "extra_forbidden":
            reason = "unknown key" + _did_you_mean(loc)
        elif kind == "missing":
            reason = "required key is missing"
        else:
            reason = err["msg"].removeprefix("Value error, ")
            if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
                reason += f" (got {err['input']!r})"
        problems.append((format_loc(loc), reason))
    return problems


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member's type name to the location of a union error
    return isinstance(part, str) and part in ("int", "str", "float", "bool", "function-after[_pin()]")


def _did_you_mean(loc: tuple) -> str:
    model = _model_at(loc[:-1])
    if model is None or not loc:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
        args = typing.get_args(model)
        if typing.get_origin(model) is list and args:
            model = args[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked (for ``config show``)."""
    data = settings.model_dump(mode="json")
    mqtt = data["mqtt"]
    if mqtt.get("password") is not None:
        mqtt["password"] = "********"
    mqtt["port"] = settings.mqtt.effective_port
    mqtt["client_id"] = settings.client_id
    return data
