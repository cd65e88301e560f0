"""A desired configuration (``config/desired``): parsing and the limits that
protect the hall. Pure: no I/O, no threads.

The TOML is validated by the same code as ``hall-agent config check``
(``config.validate``), so the key-path messages are the same. On top of that:

- no secrets: ``mqtt.password`` is refused;
- local keys stay local: ``mqtt.password_file``, ``mqtt.ca_file``,
  ``mqtt.cert_file`` and ``mqtt.key_file``, the ``[commands]`` and ``[fleet]``
  sections may not be changed (written the same as the hall's own file is
  accepted, left out is the usual case: the hall's own values are kept);
- the state folder stays: ``storage.dir`` (the outbox and this cycle's own
  state live there; carried over from the hall's file like the mqtt keys);
- the hall stays where it is: ``hall.id``, ``hall.city``, ``hall.branch`` and
  ``mqtt.topic_root`` may not change (the hall would leave its base topic and
  its broker ACL).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, Settings, validate

MAX_DESIRED_BYTES = 256 * 1024
LOCAL_MQTT_KEYS = ("password_file", "ca_file", "cert_file", "key_file")
#: other single keys that stay local: the state folder holds the outbox and the cycle's own state
LOCAL_KEYS = (("storage", "dir"),)
LOCAL_SECTIONS = ("commands", "fleet")
IDENTITY = (("hall", "id"), ("hall", "city"), ("hall", "branch"), ("mqtt", "topic_root"))


class Rejected(Exception):
    """The desired configuration is refused: ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Desired:
    version: str
    sha256: str
    toml: str

    @property
    def key(self) -> str:
        """What identifies one push: the same text pushed under a new version is tried again."""
        return f"{self.version}@{self.sha256}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def payload(version: str, toml_text: str) -> bytes:
    """The ``config/desired`` message for ``toml_text`` (used by ``fleet push``)."""
    return json.dumps({"version": version, "sha256": sha256_text(toml_text), "toml": toml_text},
                      ensure_ascii=False).encode()


def parse(raw: bytes) -> Desired:
    """The ``config/desired`` message, or Rejected."""
    if len(raw) > MAX_DESIRED_BYTES:
        raise Rejected([f"config/desired: {len(raw)} bytes; the limit is {MAX_DESIRED_BYTES}"])
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Rejected(["config/desired: not UTF-8 text"]) from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise Rejected([f"config/desired: not JSON: {getattr(e, 'msg', e)}"]) from None
    if not isinstance(doc, dict):
        raise Rejected(["config/desired: must be a JSON object {\"version\", \"sha256\", \"toml\"}"])
    errors = []
    for field in ("version", "sha256", "toml"):
        if not isinstance(doc.get(field), str) or not doc.get(field):
            errors.append(f"config/desired.{field}: required, a non-empty string")
    unknown = sorted(set(doc) - {"version", "sha256", "toml"})
    if unknown:
        errors.append(f"config/desired: unknown fields: {', '.join(unknown)}")
    if errors:
        raise Rejected(errors)
    if sha256_text(doc["toml"]) != doc["sha256"].lower():
        raise Rejected([f"config/desired.sha256: {doc['sha256']} is not the sha256 of the toml text "
                        f"({sha256_text(doc['toml'])}): the message was altered or truncated"])
    return Desired(doc["version"], doc["sha256"].lower(), doc["toml"])


def merge(desired: Desired, local: dict[str, Any]) -> tuple[dict[str, Any], Settings]:
    """The file the hall will run: the desired TOML with the hall's local keys
    (``local`` is the hall's own file, as parsed TOML), validated; or Rejected
    with every problem at once."""
    try:
        data = tomllib.loads(desired.toml)
    except tomllib.TOMLDecodeError as e:
        raise Rejected([f"config/desired: TOML syntax error: {e}"]) from None
    errors: list[str] = []
    mqtt = data.get("mqtt") if isinstance(data.get("mqtt"), dict) else {}
    local_mqtt = local.get("mqtt", {}) if isinstance(local.get("mqtt"), dict) else {}
    if "password" in mqtt:
        errors.append("mqtt.password: a desired configuration may not contain secrets "
                      "(the password stays in the hall's password_file; rotate it with the credentials command)")
    for key in LOCAL_MQTT_KEYS:
        if key in mqtt and mqtt[key] != local_mqtt.get(key):
            errors.append(f"mqtt.{key}: stays local: a desired configuration may not change it "
                          f"(leave it out; the hall keeps its own)")
    for section in LOCAL_SECTIONS:
        if section not in data:
            continue
        mine, theirs = local.get(section, {}), data[section]
        if not isinstance(theirs, dict):
            errors.append(f"{section}: a local decision: a desired configuration may not change it")
            continue
        for key in sorted(set(mine) | set(theirs)):
            if key in theirs and _effective(section, key, theirs) != _effective(section, key, mine):
                errors.append(f"{section}.{key}: a local decision: a desired configuration may not change it")
    for section, key in IDENTITY:
        theirs = data.get(section, {}) if isinstance(data.get(section), dict) else {}
        mine = local.get(section, {}) if isinstance(local.get(section), dict) else {}
        if key in theirs and theirs[key] != mine.get(key, "halls" if key == "topic_root" else None):
            errors.append(f"{section}.{key}: {theirs[key]!r} would move the hall off its base topic "
                          f"(it is {mine.get(key)!r}); a desired configuration may not change it")
    for section, key in LOCAL_KEYS:
        theirs = data.get(section, {}) if isinstance(data.get(section), dict) else {}
        mine = local.get(section, {}) if isinstance(local.get(section), dict) else {}
        if key in theirs and theirs[key] != mine.get(key):
            errors.append(f"{section}.{key}: stays local: a desired configuration may not change it "
                          f"(the outbox and the configuration cycle's state live there)")
    merged = copy.deepcopy(data)
    for section, key in LOCAL_KEYS:
        mine = local.get(section, {}) if isinstance(local.get(section), dict) else {}
        target = merged.get(section)
        if key in mine:
            if not isinstance(target, dict):
                target = merged[section] = {}
            target[key] = mine[key]
        elif isinstance(target, dict):
            target.pop(key, None)
    if local_mqtt or mqtt:
        m = merged.setdefault("mqtt", {}) if isinstance(merged.get("mqtt", {}), dict) else None
        if m is not None:
            for key in (*LOCAL_MQTT_KEYS, "password"):
                if key in local_mqtt:
                    m[key] = local_mqtt[key]
                else:
                    m.pop(key, None)
    for section in LOCAL_SECTIONS:
        if section in local:
            merged[section] = copy.deepcopy(local[section])
        else:
            merged.pop(section, None)
    settings = None
    try:
        settings = validate(merged)
    except ConfigError as e:
        errors.extend(e.problems)
    if errors:
        raise Rejected(errors)
    assert settings is not None
    return merged, settings


def _effective(section: str, key: str, table: dict) -> Any:
    """A local section's value with its default, so writing the default is no change."""
    if key in table:
        return table[key]
    model = Settings.model_fields[section].default
    return getattr(model, key, None) if model is not None else None
