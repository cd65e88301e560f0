"""Checks across tables: each returns ``(key path, reason)`` problems."""

from __future__ import annotations

import ipaddress
import os
import re

from .models import I2C_DRIVERS, MIN_INTERVAL_S, PART_SWITCHES, SERIAL_DRIVERS, Settings

Problem = tuple[str, str]


def _pin_key(pin: int | str) -> str:
    """17, "17", "GPIO17" and "BCM17" are the same pin; BOARD/J8 names stay apart."""
    if isinstance(pin, int):
        return f"GPIO{pin}"
    match = re.fullmatch(r"(?:GPIO|BCM)(\d+)", pin)
    return f"GPIO{int(match[1])}" if match else pin


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cross_checks(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    problems += _unique_ids(s)
    problems += _unique_pins(s)
    problems += _sensor_options(s)
    problems += _references(s)
    problems += _mqtt(s)
    overlap = set(s.profile.summer_months) & set(s.profile.winter_months)
    if overlap:
        problems.append(("profile.winter_months",
                         f"months {sorted(overlap)} are in both summer_months and winter_months"))
    return problems


def _unique_ids(s: Settings) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    for table in ("sensors", "inputs", "printers", "equipment"):
        for i, item in enumerate(getattr(s, table)):
            path = f"{table}[{i}]"
            if item.id in seen:
                problems.append((f"{path}.id", f"duplicate id {item.id!r}, already used by {seen[item.id]}"))
            else:
                seen[item.id] = path
    rule_keys: dict[tuple[str, str | None], str] = {}
    for i, rule in enumerate(s.rules):
        key = (rule.id, rule.source)
        if key in rule_keys:
            problems.append((f"rules[{i}].id", f"rule {rule.id!r} for source {rule.source!r} "
                                                f"is already defined by {rule_keys[key]}"))
        rule_keys[key] = f"rules[{i}]"
    return problems


def _unique_pins(s: Settings) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    pins = [(f"inputs[{i}].pin", x.pin) for i, x in enumerate(s.inputs)]
    pins += [(f"equipment[{i}].relay_pin", x.relay_pin) for i, x in enumerate(s.equipment)
             if x.relay_pin is not None]
    for path, pin in pins:
        key = _pin_key(pin)
        if key in seen:
            problems.append((path, f"pin {pin} is already used by {seen[key]}"))
        else:
            seen[key] = path
    return problems


def _sensor_options(s: Settings) -> list[Problem]:
    problems = []
    i2c_seen: dict[tuple, str] = {}
    for i, sensor in enumerate(s.sensors):
        path = f"sensors[{i}]"
        if sensor.driver in SERIAL_DRIVERS and not sensor.port:
            problems.append((f"{path}.port", f"required by driver {sensor.driver!r} (a serial port such as /dev/ttyAMA0)"))
        if sensor.driver == "ds18b20":
            if not sensor.device:
                problems.append((f"{path}.device", "required by driver 'ds18b20' (the 28-… id under w1_root)"))
            elif not re.fullmatch(r"28-[0-9a-f]{12}", sensor.device):
                problems.append((f"{path}.device", f"{sensor.device!r} is not a DS18B20 id such as 28-0316a2791eff"))
        if sensor.driver in I2C_DRIVERS:
            where = (sensor.bus, sensor.address)
            if where in i2c_seen:
                problems.append((f"{path}.address", f"bus {sensor.bus} address {sensor.address:#04x} "
                                                    f"is already used by {i2c_seen[where]}"))
            i2c_seen.setdefault(where, path)
        if sensor.driver not in I2C_DRIVERS and "address" in sensor.model_fields_set:
            problems.append((f"{path}.address", f"driver {sensor.driver!r} is not an I2C part; remove address"))
        for key in ("altitude_m", "pressure_hpa"):
            if getattr(sensor, key) is not None and sensor.driver != "scd4x":
                problems.append((f"{path}.{key}", "only the scd4x driver takes this setting"))
        if sensor.driver not in SERIAL_DRIVERS and sensor.port:
            problems.append((f"{path}.port", f"driver {sensor.driver!r} is not a serial part; remove port"))
        minimum = MIN_INTERVAL_S.get(sensor.driver)
        if minimum is not None and sensor.interval_s < minimum[0]:
            problems.append((f"{path}.interval_s", f"{sensor.interval_s:g} s is below {minimum[0]:g} s: {minimum[1]}"))
        for key, (driver, _) in PART_SWITCHES.items():
            if key in sensor.model_fields_set and sensor.driver != driver:
                problems.append((f"{path}.{key}", f"only the {driver} driver takes this setting"))
    return problems


def _references(s: Settings) -> list[Problem]:
    problems = []
    panic_ids = {x.id for x in s.inputs if x.kind == "panic"}
    for i, inp in enumerate(s.inputs):
        if inp.resets and inp.kind != "reset":
            problems.append((f"inputs[{i}].resets", "only an input of kind 'reset' resets panic alarms"))
        for j, target in enumerate(inp.resets):
            if target not in panic_ids:
                problems.append((f"inputs[{i}].resets[{j}]", f"{target!r} is not a panic input"))
    from ..rules.profile import FIXED, gbt18883, Seasons
    profile_ids = {r.id for r in gbt18883(Seasons())}
    sensor_ids = {x.id for x in s.sensors}
    for i, rule in enumerate(s.rules):
        if rule.id in FIXED:
            extra = sorted(rule.model_fields_set - {"id", "severity", "category", "priority"})
            if extra:
                problems.append((f"rules[{i}]", f"{rule.id!r} is a fixed rule: only severity, category and "
                                                f"priority can be changed, not {', '.join(extra)}"))
            continue
        if rule.source is not None and rule.source not in sensor_ids:
            problems.append((f"rules[{i}].source", f"{rule.source!r} is not a sensor id"))
        if rule.id not in profile_ids:
            if rule.value is None:
                problems.append((f"rules[{i}].value", f"required for a rule of our own ({rule.id!r} is not a "
                                                     "profile rule): the value key such as co2_ppm"))
            if rule.above is None and rule.below is None:
                problems.append((f"rules[{i}]", "give above or below"))
    return problems


def _mqtt(s: Settings) -> list[Problem]:
    m = s.mqtt
    problems = []
    if m.password is not None and m.password_file is not None:
        problems.append(("mqtt.password_file", "give either password or password_file, not both"))
    if m.password_file is not None and not os.access(m.password_file, os.R_OK):
        problems.append(("mqtt.password_file", f"{m.password_file}: missing or not readable"))
    has_password = m.password is not None or m.password_file is not None
    if has_password and not m.tls and not is_loopback(m.host):
        problems.append(("mqtt.tls", f"refusing to send the password in clear text to {m.host}: "
                                     "set tls = true (or use a loopback broker)"))
    if has_password and m.username is None:
        problems.append(("mqtt.username", "a password needs a username"))
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(m, key)
        if path is not None and not os.access(path, os.R_OK):
            problems.append((f"mqtt.{key}", f"{path}: missing or not readable"))
        if path is not None and not m.tls:
            problems.append((f"mqtt.{key}", "only used with tls = true"))
    if (m.cert_file is None) != (m.key_file is None):
        problems.append(("mqtt.key_file" if m.key_file is None else "mqtt.cert_file",
                         "a client certificate needs both cert_file and key_file"))
    if m.tls_insecure and not m.tls:
        problems.append(("mqtt.tls_insecure", "only used with tls = true"))
    return problems
