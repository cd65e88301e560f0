"""Checks across tables: each returns ``(key path, reason)`` problems."""

from __future__ import annotations

import ipaddress
import math
import os
import re

from pydantic import BaseModel

from typing import Any

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


def cross_checks(s: Settings, aside: frozenset[str] = frozenset()) -> list[Problem]:
    """``aside``: ids of parts and rules the schema refused (already reported, set aside):
    a reference to one of them is not a second, misleading problem."""
    problems: list[Problem] = []
    problems += _unique_ids(s)
    problems += _unique_pins(s)
    problems += _sensor_options(s)
    problems += _references(s, aside)
    problems += _mqtt(s)
    problems += _parts(s)
    problems += _maintenance(s, aside)
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


def _references(s: Settings, aside: frozenset[str] = frozenset()) -> list[Problem]:
    problems = []
    panic_ids = {x.id for x in s.inputs if x.kind == "panic"} | aside
    for i, inp in enumerate(s.inputs):
        if inp.resets and inp.kind != "reset":
            problems.append((f"inputs[{i}].resets", "only an input of kind 'reset' resets panic alarms"))
        for j, target in enumerate(inp.resets):
            if target not in panic_ids:
                problems.append((f"inputs[{i}].resets[{j}]", f"{target!r} is not a panic input"))
    from ..rules.profile import FIXED, gbt18883, Seasons
    profile_ids = {r.id for r in gbt18883(Seasons())}
    sensor_ids = {x.id for x in s.sensors} | aside
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
    remote = [host for host, _ in m.endpoints if not is_loopback(host)]
    if has_password and not m.tls and remote:
        problems.append(("mqtt.tls", f"refusing to send the password in clear text to {remote[0]}: "
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


#: what each driver reports (the envelope's value keys)
DRIVER_VALUES = {
    "sht3x": {"temperature_c", "humidity_pct"}, "sht4x": {"temperature_c", "humidity_pct"},
    "bme280": {"temperature_c", "humidity_pct", "pressure_hpa"},
    "scd4x": {"co2_ppm", "temperature_c", "humidity_pct"}, "sgp30": {"tvoc_ppb", "eco2_ppm"},
    "mhz19": {"co2_ppm"}, "pms5003": {"pm1_ugm3", "pm25_ugm3", "pm10_ugm3"}, "ze08": {"hcho_mgm3"},
    "ds18b20": {"temperature_c"},
}
#: the Pi's 1-Wire pin (dtoverlay=w1-gpio, default gpiopin=4: header pin 7)
ONE_WIRE_PIN = "GPIO4"
_BOARD_TO_BCM = {3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10, 21: 9,
                 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19, 36: 16, 37: 26,
                 38: 20, 40: 21}
#: baud rates a Pi's UARTs and USB serial adapters take (termios' standard rates)
BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000,
              921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000)
MAX_I2C_BUS = 22  # /dev/i2c-0 ... /dev/i2c-22 (Pi 4: 0-6 and the HDMI buses 20-22; Pi 5: up to 14)
#: the longest a duration may be, by its key's unit suffix (longer ones overflow timers, or are typos)
MAX_BY_SUFFIX = {"_s": (7 * 86400, "s", "a week"), "_min": (7 * 1440, "min", "a week"),
                 "_ms": (60_000, "ms", "a minute"), "_mb": (1_048_576, "MB", "1 TB"),
                 "_days": (3660, "days", "ten years")}


def bcm(pin: int | str) -> int | None:
    """The BCM number of a pin as written in the file, where it can be known."""
    if isinstance(pin, int):
        return pin
    m = re.fullmatch(r"(?:GPIO|BCM)(\d+)", pin)
    if m:
        return int(m[1])
    m = re.fullmatch(r"(?:BOARD|J8:)(\d+)", pin)
    if m:
        return _BOARD_TO_BCM.get(int(m[1]), -1)
    return None


def _parts(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    # a rule on a value its source sensor does not report
    from ..rules.profile import Seasons, gbt18883
    profile_values = {r.id: r.value for r in gbt18883(Seasons())}
    drivers = {x.id: x.driver for x in s.sensors}
    for i, rule in enumerate(s.rules):
        value = rule.value or profile_values.get(rule.id)
        if rule.source in drivers and value and value not in DRIVER_VALUES.get(drivers[rule.source], {value}):
            reports = ", ".join(sorted(DRIVER_VALUES[drivers[rule.source]]))
            problems.append((f"rules[{i}].value" if rule.value else f"rules[{i}].source",
                             f"sensor {rule.source!r} ({drivers[rule.source]}) does not report {value}; "
                             f"it reports {reports}"))
    # two parts on one serial port
    ports: dict[str, str] = {}
    serial = [(f"sensors[{i}].port", x.port) for i, x in enumerate(s.sensors) if x.port]
    serial += [(f"printers[{i}].port", x.port) for i, x in enumerate(s.printers)]
    for path, port in serial:
        key = os.path.normpath(port) if port.startswith("/") else port
        if key in ports:
            problems.append((path, f"serial port {port} is already used by {ports[key]}: one part per port"))
        else:
            ports[key] = path
    # pins no Pi has, and the 1-Wire pin taken by an input or relay while a DS18B20 needs it
    one_wire = [f"sensors[{i}]" for i, x in enumerate(s.sensors) if x.driver == "ds18b20"]
    pins = [(f"inputs[{i}].pin", x.pin) for i, x in enumerate(s.inputs)]
    pins += [(f"equipment[{i}].relay_pin", x.relay_pin) for i, x in enumerate(s.equipment)
             if x.relay_pin is not None]
    for path, pin in pins:
        number = bcm(pin)
        if number is not None and not 0 <= number <= 27:
            problems.append((path, f"{pin} is not a GPIO pin of a Raspberry Pi's 40-pin header "
                                   "(BCM 0-27; BOARD pins 1, 2, 4, 6, 9, 14, 17, 20, 25, 30, 34, 39 are power "
                                   "and ground)"))
        elif one_wire and number == 4:
            problems.append((path, f"{pin} is the 1-Wire pin (GPIO4, header pin 7) and {one_wire[0]} is a "
                                   "ds18b20 on it: use another pin"))
    # buses and baud rates no Pi has
    for i, x in enumerate(s.sensors):
        if x.driver in I2C_DRIVERS and x.bus > MAX_I2C_BUS:
            problems.append((f"sensors[{i}].bus", f"{x.bus} is not an I2C bus of a Raspberry Pi "
                                                  f"(/dev/i2c-0 to /dev/i2c-{MAX_I2C_BUS}; usually 1)"))
        if x.baudrate is not None and x.driver in SERIAL_DRIVERS and x.baudrate not in BAUD_RATES:
            problems.append((f"sensors[{i}].baudrate", f"{x.baudrate} is not a standard baud rate "
                                                       "(9600 for this part)"))
    for i, x in enumerate(s.printers):
        if x.baudrate not in BAUD_RATES:
            problems.append((f"printers[{i}].baudrate", f"{x.baudrate} is not a standard baud rate "
                                                        "(9600, 19200, 38400 or 115200 for a ticket printer)"))
    return problems


def warnings(s: Settings) -> list[Problem]:
    """Accepted, but worth a line: ``config check`` prints them, ``run`` logs them."""
    out: list[Problem] = []
    for i, x in enumerate(s.inputs):
        if x.kind == "panic" and x.contact == "no" and not getattr(x, "contact_checked", False):
            out.append((f"inputs[{i}].contact", "a panic button on a normally-open contact: a cut wire is then "
                                                 "silent (no alarm, no fault). Wire it NC (contact = \"nc\"), or "
                                                 "set contact_checked = true once the loop is supervised"))
    return out


def limits(s: Settings) -> list[Problem]:
    """What would break the agent at run time: inf and nan anywhere, durations and sizes that
    overflow a timer or a date (interval_s = inf, misfire_grace_min = 10**12)."""
    problems: list[Problem] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name), f"{path}.{name}" if path else name)
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, float) and not math.isfinite(node):
            problems.append((path, f"must be a finite number, not {node}"))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            for suffix, (most, unit, words) in MAX_BY_SUFFIX.items():
                if path.endswith(suffix) and node > most:
                    why = "no disk is that large" if suffix == "_mb" else "a timer cannot run that long"
                    problems.append((path, f"{node:g} {unit} is more than {words} ({most:g} {unit}): {why}"))
    walk(s, "")
    return problems


#: alert rules the agent raises itself (besides the profile's and ``[[rules]]``)
OWN_RULES = ("storage-failed", "publish-refused", "subscribe-refused", "gpio-unavailable", "clock-unsynced",
             "calendar-unconfirmed", "certificate-expiring", "drill-due")


def _maintenance(s: Settings, aside: frozenset[str] = frozenset()) -> list[Problem]:
    """A scheduled window naming a rule or a part that does not exist would never apply: refused."""
    from ..rules.profile import FIXED, gbt18883, Seasons
    rules = set(FIXED) | set(OWN_RULES) | {r.id for r in gbt18883(Seasons())} | {r.id for r in s.rules}
    rules |= aside
    parts = {x.id for x in (*s.sensors, *s.inputs, *s.printers, *s.equipment)} | {"opening", "closing"} | aside
    problems = []
    for i, w in enumerate(s.maintenance):
        if w.rule != "*" and w.rule not in rules:
            problems.append((f"maintenance[{i}].rule", f"{w.rule!r} is not an alert rule of this hall "
                                                       f"(or \"*\" for every rule but panic)"))
        if w.source != "*" and w.source not in parts:
            problems.append((f"maintenance[{i}].source", f"{w.source!r} is not a sensor, input, printer or "
                                                         f"equipment id (or \"*\")"))
    return problems
