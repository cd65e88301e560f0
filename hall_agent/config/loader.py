"""Loading the configuration: one line per problem, never a traceback."""

from __future__ import annotations

import copy
import math
import difflib
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

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


TABLES = ("sensors", "inputs", "printers", "equipment", "rules", "maintenance")
_PLACEHOLDER_ID = "x"


def validate(data: dict[str, Any]) -> Settings:
    """Every problem in one pass: the schema's, then (on what is left once the parts with
    schema problems are set aside) the checks across parts and the run-time limits."""
    problems: list[tuple[str, str]] = []
    work = copy.deepcopy(data)
    _fold_case(work)
    kept = {t: list(range(len(work[t]))) for t in TABLES if isinstance(work.get(t), list)}
    placeholders: set[tuple] = set()
    aside: set[str] = set()  # ids of the list items set aside (their problems already said)
    settings = None
    previous: set[tuple] = set()
    for _ in range(12):
        try:
            settings = Settings(**work)
            break
        except SettingsError as e:  # an environment variable that is not JSON where a list/table is due
            raise ConfigError([_env_problem(e)]) from None
        except ValidationError as e:
            errors = [err for err in e.errors()]
            locs = {tuple(p for p in err["loc"] if not _is_union_tag(p)) for err in errors}
            for (path, reason), err in zip(describe(e), errors):
                loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
                if err["type"] == "missing" and loc in placeholders:
                    continue
                problems.append((_remap(path, kept), _remap(reason, kept)))
            if locs <= previous:  # nothing left that setting aside can fix (an environment variable)
                break
            previous |= locs
            _set_aside(work, errors, kept, placeholders, aside)
    if settings is not None:
        from .checks import limits
        for path, reason in cross_checks(settings, frozenset(aside)) + limits(settings):
            problems.append((_remap(path, kept), _remap(reason, kept)))
    problems = list(dict.fromkeys(problems))
    if problems:
        raise ConfigError([f"{path}: {reason}" for path, reason in problems])
    return settings


def _env_problem(e: SettingsError) -> str:
    m = re.search(r'field "([^"]+)"', str(e))
    field = m[1] if m else "?"
    names = sorted(k for k in os.environ if k.upper() == f"HALL_AGENT_{field.upper()}"
                   or k.upper().startswith(f"HALL_AGENT_{field.upper()}__"))
    detail = f": {e.__cause__}" if e.__cause__ else ""
    return (f"{field}: the environment variable {' or '.join(names) or 'HALL_AGENT_' + field.upper()} "
            f"is not valid JSON{detail}")


def _remap(text: str, kept: dict[str, list[int]]) -> str:
    """Paths on the set-aside copy (in a key path or a reason) -> the same parts' paths in the file."""
    def one(match: re.Match) -> str:
        table, i = match[1], int(match[2])
        if table in kept and i < len(kept[table]):
            return f"{table}[{kept[table][i]}]"
        return match[0]
    return re.sub(r"\b(" + "|".join(TABLES) + r")\[(\d+)\]", one, text)


def _set_aside(work: dict, errors: list[dict], kept: dict[str, list[int]], placeholders: set[tuple],
               aside: set[str] | None = None) -> None:
    """Remove what the schema refused, so the rest can still be checked: a refused list item
    goes whole, a refused key goes (its default applies), a missing id gets a placeholder."""
    drop: dict[str, set[int]] = {}
    for err in errors:
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        if not loc:
            continue
        if loc[0] in TABLES and len(loc) >= 2 and isinstance(loc[1], int):
            drop.setdefault(loc[0], set()).add(loc[1])
            continue
        if err["type"] == "missing":
            parent = work
            for part in loc[:-1]:
                parent = parent.setdefault(part, {}) if isinstance(parent, dict) else None
                if parent is None:
                    break
            if isinstance(parent, dict):
                parent[loc[-1]] = {} if loc == ("hall",) else _PLACEHOLDER_ID
                placeholders.add(loc)
            if loc == ("hall",):
                for key in ("id", "city", "branch"):
                    work["hall"][key] = _PLACEHOLDER_ID
            continue
        # inside a list that is not a table of parts (hours.closed[0]): the whole key goes
        ints = [n for n, part in enumerate(loc) if isinstance(part, int)]
        if ints and ints[0] > 0:
            loc = loc[:ints[0]]
        parent = work
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and loc[-1] in parent:
            if loc == ("hall",) or (len(loc) == 2 and loc[0] == "hall" and loc[1] in ("id", "city", "branch")):
                parent[loc[-1]] = {"id": "x", "city": "x", "branch": "x"} if loc == ("hall",) else _PLACEHOLDER_ID
            else:
                del parent[loc[-1]]
        elif loc[0] in work and len(loc) == 1:
            del work[loc[0]]
    for table, indexes in drop.items():
        items = work.get(table)
        if not isinstance(items, list):
            continue
        for i in sorted(indexes, reverse=True):
            if i < len(items):
                if aside is not None and isinstance(items[i], dict) and isinstance(items[i].get("id"), str):
                    aside.add(items[i]["id"])
                del items[i]
                del kept[table][i]


def _fold_case(data: dict) -> None:
    """Choices a person types in any case (``contact = "NC"``, ``driver = "SHT3x"``) are read as the
    lower-case choice; values that are not a choice are left for the schema to refuse."""
    def walk(model: type[BaseModel], node: Any) -> None:
        if not isinstance(node, dict):
            return
        for name, info in model.model_fields.items():
            if name not in node:
                continue
            ann = info.annotation
            choices = _literal_strings(ann)
            value = node[name]
            if choices and isinstance(value, str):
                folded = {c.lower(): c for c in choices}
                if value not in choices and value.strip().lower() in folded:
                    node[name] = folded[value.strip().lower()]
                continue
            sub = _model_of(ann)
            if sub is not None:
                if isinstance(value, list):
                    for item in value:
                        walk(sub, item)
                else:
                    walk(sub, value)
    walk(Settings, data)


def _literal_strings(ann: Any) -> tuple[str, ...]:
    if typing.get_origin(ann) is typing.Literal:
        return tuple(a for a in typing.get_args(ann) if isinstance(a, str))
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        out: tuple[str, ...] = ()
        for a in typing.get_args(ann):
            out += _literal_strings(a)
        return out
    return ()


def _model_of(ann: Any) -> type[BaseModel] | None:
    if typing.get_origin(ann) is list and typing.get_args(ann):
        ann = typing.get_args(ann)[0]
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _got(err: dict) -> str:
    value = err.get("input")
    if isinstance(value, (dict, list)) or value is None:
        return ""
    return f" (got {value!r})"


def _choices(err: dict) -> str:
    expected = (err.get("ctx") or {}).get("expected", "")
    names = re.findall(r"'([^']*)'", str(expected))
    return ", ".join(f'"{n}"' for n in names) if names else str(expected)


def _reason(err: dict) -> str:
    """The project's wording for a schema problem (not pydantic's)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    got = _got(err)
    value = err.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {value}"
    if kind == "literal_error":
        return f"must be one of {_choices(err)}{got}"
    if kind == "finite_number":
        return f"must be a finite number, not inf or nan{got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number{got}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false{got}"
    if kind in ("string_type",):
        return f"must be text in quotes{got}"
    if kind in ("list_type",):
        return f"must be a list such as [1, 2]{got}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a table{got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}{got}"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}{got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}{got}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}{got}"
    if kind in ("date_from_datetime_parsing", "date_parsing", "date_type"):
        return f"must be a date such as 2026-12-31{got}"
    if kind in ("path_type",):
        return f"must be a file path in quotes{got}"
    reason = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind not in ("value_error", "assertion_error"):
        reason += got
    return reason


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
            reason = _reason(err)
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
