"""``hall-agent doctor``: what a field engineer checks first, each problem with its fix.

Exit 1 when anything is wrong. It opens buses and ports briefly, unless the
agent runs on this machine (it holds the state folder's lock): then the parts
are the agent's and doctor asks it for its ``status`` over MQTT instead. It
creates nothing (no state folder, no file).
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from .config import Settings, config_path
from .config.models import I2C_DRIVERS, SERIAL_DRIVERS


@dataclass
class Finding:
    ok: bool
    what: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok     " if self.ok else "PROBLEM"
        text = f"{mark}  {self.what}: {self.detail}"
        return text + (f"\n         fix: {self.fix}" if not self.ok and self.fix else "")


def check_config_file(settings: Settings, path: Path) -> list[Finding]:
    out = []
    try:
        st = path.stat()
    except OSError as e:
        return [Finding(False, "config file", str(e))]
    world = bool(st.st_mode & stat.S_IROTH)
    if settings.mqtt.password is not None and world:
        out.append(Finding(False, "config file", f"{path} holds the MQTT password and is world-readable",
                           f"chmod o-r {path}, or move the password to mqtt.password_file (mode 0600)"))
    else:
        out.append(Finding(True, "config file", f"{path} ({stat.filemode(st.st_mode)})"))
    pw = settings.mqtt.password_file
    if pw is not None:
        try:
            pst = pw.stat()
            if pst.st_mode & (stat.S_IRGRP | stat.S_IROTH):
                out.append(Finding(False, "password file", f"{pw} is readable by others ({stat.filemode(pst.st_mode)})",
                                   f"chmod 600 {pw}"))
            elif pst.st_size == 0:
                out.append(Finding(False, "password file", f"{pw} is empty", f"write the hall's password into {pw}"))
            else:
                out.append(Finding(True, "password file", f"{pw} ({stat.filemode(pst.st_mode)})"))
        except OSError as e:
            out.append(Finding(False, "password file", str(e), "create it, mode 0600"))
    return out


def check_sensors(settings: Settings, hardware, dev_root: Path = Path("/dev")) -> list[Finding]:
    """Each bus once; each sensor on a bus that is there. A missing bus (or 1-Wire folder) is
    one finding naming its sensors, not one per sensor."""
    from .sensors import DRIVERS, SensorError
    out = []
    unusable: set[str] = set()
    for bus in sorted({s.bus for s in settings.sensors if s.driver in I2C_DRIVERS}):
        dev = dev_root / f"i2c-{bus}"
        on_it = [s.id for s in settings.sensors if s.driver in I2C_DRIVERS and s.bus == bus]
        names = f" ({len(on_it)} sensor{'s' if len(on_it) > 1 else ''} on it not checked: {', '.join(on_it)})"
        if not dev.exists():
            out.append(Finding(False, f"I2C bus {bus}", f"{dev} missing{names}",
                               "enable I2C: sudo raspi-config nonint do_i2c 0 (then reboot), or fix sensors[].bus"))
            unusable.update(on_it)
        elif not os.access(dev, os.R_OK | os.W_OK):
            out.append(Finding(False, f"I2C bus {bus}", f"{dev} not accessible{names}",
                               "add the user to the i2c group: sudo usermod -aG i2c $USER"))
            unusable.update(on_it)
        else:
            out.append(Finding(True, f"I2C bus {bus}", str(dev)))
    for root in sorted({s.w1_root for s in settings.sensors if s.driver == "ds18b20"}):
        on_it = [s.id for s in settings.sensors if s.driver == "ds18b20" and s.w1_root == root]
        if not root.is_dir():
            out.append(Finding(False, "1-Wire", f"{root} missing ({', '.join(on_it)} not checked)",
                               "enable 1-Wire: add dtoverlay=w1-gpio to /boot/firmware/config.txt and reboot"))
            unusable.update(on_it)
    for cfg in settings.sensors:
        if cfg.id in unusable:
            continue
        where = (f"bus {cfg.bus} address {cfg.address:#04x}" if cfg.driver in I2C_DRIVERS else
                 cfg.port if cfg.driver in SERIAL_DRIVERS else f"{cfg.w1_root}/{cfg.device}")
        options = hardware.sensor_options(cfg)
        options.pop("baseline_file", None)  # doctor reads once: it neither restores nor saves a baseline
        sensor = DRIVERS[cfg.driver](**options)
        try:
            sensor.start()
            values = sensor.read()
            out.append(Finding(True, f"sensor {cfg.id}", f"{cfg.driver} at {where} answers: "
                               + ", ".join(f"{k} {v:g}" for k, v in values.items())))
        except SensorError as e:
            fix = {"absent": "check wiring, power and the address/port in the configuration",
                   "checksum": "check the cable (length, shielding) and the connectors",
                   "timeout": "check TX/RX and the baud rate, or wait for the part to warm up"}.get(e.kind, "")
            out.append(Finding(False, f"sensor {cfg.id}", f"{cfg.driver} at {where}: {e.reason}", fix))
        finally:
            try:
                sensor.close()
            except Exception:
                pass
    return out


def check_printers(settings: Settings) -> list[Finding]:
    from .devices.printer import EscPosStatusReader
    out = []
    for cfg in settings.printers:
        reader = EscPosStatusReader(cfg.port, cfg.baudrate, cfg.timeout_s)
        state = reader.read()
        reader.close()
        if state.online or state.error is None or not state.error.startswith("not answering"):
            out.append(Finding(True, f"printer {cfg.id}", f"{cfg.port}: " + json.dumps(state.as_dict())))
        else:
            out.append(Finding(False, f"printer {cfg.id}", state.error,
                               "check the port name (ls /dev/serial/by-id), the cable and the baud rate; "
                               "the user must be in the dialout group"))
    return out


def check_gpio(settings: Settings) -> list[Finding]:
    if not settings.inputs and not any(e.relay_pin is not None for e in settings.equipment):
        return []
    chips = sorted(Path("/dev").glob("gpiochip*"))
    if not chips:
        return [Finding(False, "GPIO", "no /dev/gpiochip*", "this is not a Raspberry Pi, or the kernel lacks GPIO")]
    bad = [c for c in chips if not os.access(c, os.R_OK | os.W_OK)]
    if bad:
        return [Finding(False, "GPIO", f"{', '.join(map(str, bad))} not accessible",
                        "add the user to the gpio group: sudo usermod -aG gpio $USER")]
    return [Finding(True, "GPIO", ", ".join(map(str, chips)))]


def check_clock() -> list[Finding]:
    from .scheduler import TimeSync
    if TimeSync().synchronised():
        return [Finding(True, "clock", "synchronised")]
    return [Finding(False, "clock", "not synchronised (no opening/closing check will be scheduled)",
                    "enable NTP: sudo timedatectl set-ntp true; check the network reaches an NTP server")]


def check_calendar(settings: Settings, today=None) -> list[Finding]:
    """Up to when the holiday calendar is official (SPEC: ``calendar-unconfirmed``)."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from .calendar import BusinessCalendar, package_version
    if not settings.hours.holidays:
        return [Finding(True, "calendar", "no public-holiday calendar ([hours] holidays = \"\")")]
    today = today or datetime.now(ZoneInfo(settings.hall.timezone)).date()
    first = BusinessCalendar(settings.hours, settings.hall.timezone).unconfirmed_from(today)
    version = f"holidays {package_version()}"
    if first is None:
        return [Finding(True, "calendar", f"{settings.hours.holidays} ({version}): rule-based, no yearly schedule")]
    if (first - today).days > 30:
        return [Finding(True, "calendar", f"{settings.hours.holidays} ({version}): official until "
                        f"{(first - timedelta(days=1)).isoformat()}")]
    return [Finding(False, "calendar", f"{settings.hours.holidays} ({version}): the official holiday schedule "
                    f"from {first.isoformat()} is not known (days off and make-up days are guessed)",
                    "pip install -U holidays once it has that year, or list that year's days off under "
                    "[hours] closed and its make-up working days under [hours.open]")]


def check_storage(state_dir: Path) -> list[Finding]:
    """Whether the agent could write its state folder and every file in it, and whether
    the outbox is sound; creates and writes nothing."""
    user = _user()
    if state_dir.is_dir():
        if os.access(state_dir, os.W_OK | os.X_OK):
            return check_state_files(state_dir, user)
        return [Finding(False, "state folder", f"{state_dir} is not writable by {user}",
                        f"chown {user} {state_dir} (the service's StateDirectory= does it), or set storage.dir")]
    if state_dir.exists():
        return [Finding(False, "state folder", f"{state_dir} is not a folder", "remove it, or set storage.dir")]
    parent = state_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return [Finding(True, "state folder", f"{state_dir} does not exist yet; the agent creates it")]
    return [Finding(False, "state folder", f"{state_dir} does not exist and {parent} is not writable by {user}",
                    "install with deploy/install.sh (systemd's StateDirectory= creates it), "
                    "or set storage.dir to a folder of this user")]


def _user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def ask_agent(settings: Settings, command: str = "status", timeout_s: float = 10.0) -> tuple[dict | None, str]:
    """Send ``command`` to the hall's running agent over MQTT; (result, "") or (None, why not)."""
    import json as _json
    import uuid
    from .link import make_client
    base = settings.base_topic
    cid = f"doctor-{uuid.uuid4().hex[:8]}"
    reply: dict = {}
    got = threading.Event()
    client = make_client(settings, f"hall-agent-doctor-{cid}")
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else c.subscribe(f"{base}/cmd/reply", qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: c.publish(
        f"{base}/cmd", _json.dumps({"id": cid, "command": command, "args": {}}), qos=1)

    def on_message(c, u, msg):
        try:
            doc = _json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == cid:
            reply.update(doc)
            got.set()
    client.on_message = on_message
    try:
        client.connect(settings.mqtt.host, settings.mqtt.effective_port, 30)
    except Exception as e:  # noqa: BLE001
        return None, f"cannot reach the broker to ask it: {e}"
    client.loop_start()
    try:
        if not got.wait(timeout_s):
            return None, f"it did not answer the {command} command within {timeout_s:g} s"
    finally:
        client.disconnect()
        client.loop_stop()
    if not reply.get("ok"):
        return None, f"it refused the {command} command: {(reply.get('error') or {}).get('message')}"
    return reply.get("result") or {}, ""


def check_running_agent(settings: Settings, timeout_s: float = 10.0) -> list[Finding]:
    """The agent owns the buses, ports and pins: ask it how its parts are instead of opening them."""
    result, why = ask_agent(settings, "status", timeout_s)
    if result is None:
        return [Finding(False, "running agent", why, "journalctl -u hall-agent -n 50; systemctl status hall-agent")]
    out = [Finding(True, "running agent", f"version {result.get('version')}, up {result.get('uptime_s')} s, "
                   f"{'connected' if result.get('connected') else 'NOT connected'} to the broker, outbox depth "
                   f"{(result.get('outbox') or {}).get('depth')}")]
    for sid, st in sorted((result.get("sensors") or {}).items()):
        st = st if isinstance(st, dict) else {"state": st}
        ok = st.get("state") == "ok"
        values = st.get("values") or {}
        detail = (", ".join(f"{k} {v}" for k, v in values.items()) if ok and isinstance(values, dict)
                  else f"{st.get('state')}: {st.get('error') or 'no reading yet'}")
        out.append(Finding(ok, f"sensor {sid}", f"(asked the agent) {detail}",
                           "" if ok else "check wiring, power and the address/port in the configuration"))
    for pid, st in sorted((result.get("printers") or {}).items()):
        ok = isinstance(st, dict) and st.get("online") and st.get("paper") in ("ok", "near_end") \
            and not st.get("cover_open")
        out.append(Finding(bool(ok), f"printer {pid}", f"(asked the agent) {_json_text(st)}",
                           "" if ok else "see the printer's state: paper, cover, cable, power"))
    return out


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def check_state_files(state_dir: Path, user: str) -> list[Finding]:
    """Each file the agent must read and write (an outbox left by a run as root stops the
    service), the outbox's quick_check (only when no agent has it open), the free space."""
    import sqlite3
    out = []
    for f in sorted(p for p in state_dir.iterdir() if p.is_file()):
        if not os.access(f, os.R_OK | os.W_OK):
            st = f.stat()
            out.append(Finding(False, f"state file {f.name}", f"{f}: not readable and writable by {user} "
                               f"(owner uid {st.st_uid}, mode {st.st_mode & 0o777:o})",
                               f"chown it to the agent's user: sudo chown -R {user} {state_dir}"))
    outbox = state_dir / "outbox.sqlite3"
    if outbox.exists() and not out and not Path(f"{outbox}-wal").exists():  # a WAL: in use (or after a crash)
        try:
            db = sqlite3.connect(f"file:{outbox}?immutable=1", uri=True, timeout=5)  # creates no -shm/-wal
            try:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as e:
            verdict = str(e)
        if verdict != "ok":
            out.append(Finding(False, "outbox", f"{outbox}: {verdict}",
                               "the agent sets a corrupt outbox aside when it meets it; check the SD card"))
    try:
        st = os.statvfs(state_dir)
        free = st.f_bavail * st.f_frsize
        if free < 16 * 1024 * 1024:
            out.append(Finding(False, "state disk", f"{state_dir}: only {free // 1024} KiB free",
                               "free space: while the disk is full the agent holds envelopes in memory only"))
    except OSError:
        pass
    return out or [Finding(True, "state folder", f"{state_dir} (its files readable and writable)")]


def check_broker(settings: Settings, timeout_s: float = 10.0) -> list[Finding]:
    from .link import make_client
    m = settings.mqtt
    host, port = m.endpoints[0]  # [mqtt] hosts: the first; the conformance probe tries each
    where = f"{host}:{port}" + (" (TLS)" if m.tls else "")
    done = threading.Event()
    result: dict = {}
    client = make_client(settings, f"{settings.client_id}-doctor")
    client.on_connect = lambda c, u, f, rc, p: (result.update(rc=rc), done.set())
    try:
        client.connect(host, port, 30)
    except Exception as e:  # DNS, refused, TLS handshake, certificate
        fix = "check mqtt.ca_file and that mqtt.host matches the broker's certificate" if "certificate" in str(e) \
            else "check mqtt.host and mqtt.port, the network, and that the broker runs"
        return [Finding(False, "broker", f"{where}: {e}", fix)]
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return [Finding(False, "broker", f"{where}: no CONNACK within {timeout_s:g} s", "check the port and TLS")]
        rc = result["rc"]
        if rc.is_failure:
            return [Finding(False, "broker", f"{where}: refused ({rc})",
                            "check mqtt.username and the password (file) against the broker's password file")]
        return [Finding(True, "broker", f"{where}: connected as {m.username or 'anonymous'}")]
    finally:
        client.disconnect()
        client.loop_stop()


# --- the service under systemd (deploy/install.sh's unit) -----------------------------------

SERVICE_USER = "hall-agent"
SERVICE_GROUPS = ("gpio", "i2c", "dialout")  # the unit's SupplementaryGroups
UNIT_STATE_DIR = Path("/var/lib/hall-agent")  # the unit's StateDirectory


def _systemctl_show(unit: str, *props: str) -> dict[str, str] | None:
    """The unit's properties, or None when systemd does not run here or the unit is not installed."""
    import shutil
    import subprocess
    if not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        return None
    try:
        out = subprocess.run(["systemctl", "show", unit, *[f"--property={p}" for p in props]],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return None if values.get("LoadState") in (None, "not-found") else values


def check_service(show=_systemctl_show) -> list[Finding]:
    """A failed unit is not restarted by ``systemctl restart`` alone: say what does."""
    v = show("hall-agent.service", "LoadState", "ActiveState", "SubState", "Result", "NRestarts")
    if v is None:
        return []
    state = f"{v.get('ActiveState')} ({v.get('SubState')})"
    if v.get("ActiveState") == "failed":
        return [Finding(False, "service", f"hall-agent.service {state}, result {v.get('Result')}: "
                        "systemd no longer starts it",
                        "find the cause (journalctl -u hall-agent -n 50), fix it, then "
                        "sudo systemctl reset-failed hall-agent && sudo systemctl start hall-agent")]
    if v.get("SubState") == "auto-restart" or v.get("ActiveState") == "activating":
        return [Finding(False, "service", f"hall-agent.service {state}, restarted {v.get('NRestarts')} "
                        "times: it keeps failing", "journalctl -u hall-agent -n 50 says why; once fixed it "
                        "starts by itself within 5 s")]
    return [Finding(True, "service", f"hall-agent.service {state}")]


def check_service_storage(state_dir: Path, show=_systemctl_show) -> list[Finding]:
    """storage.dir outside /var/lib/hall-agent is read-only to the unit (ProtectSystem=strict)
    unless a drop-in grants it, which deploy/install.sh writes."""
    v = show("hall-agent.service", "LoadState", "ReadWritePaths")
    state = Path(os.path.abspath(state_dir))
    if v is None or state == UNIT_STATE_DIR or UNIT_STATE_DIR in state.parents:
        return []
    granted = [Path(p.lstrip("-+")) for p in v.get("ReadWritePaths", "").split()]
    if any(g == state or g in state.parents for g in granted):
        return [Finding(True, "service storage", f"{state} is writable to the service")]
    return [Finding(False, "service storage", f"storage.dir {state} is read-only to hall-agent.service "
                    "(the unit makes all but /var/lib/hall-agent read-only): the agent cannot start",
                    "run deploy/install.sh again (it adds storage.dir to the unit), or remove storage.dir")]


def _service_can_open(st: os.stat_result, user_groups: dict[int, str]) -> bool:
    """Can the unit's user (groups gpio, i2c, dialout) open a node with this owner and mode?"""
    import pwd
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = ""
    mode = stat.S_IMODE(st.st_mode)
    if owner == SERVICE_USER:
        return mode & 0o600 == 0o600
    if st.st_gid in user_groups:
        return mode & 0o060 == 0o060
    return mode & 0o006 == 0o006


def check_device_permissions(settings: Settings, dev: Path = Path("/dev")) -> list[Finding]:
    """Device nodes the service user cannot open: a permission problem with its fix, not an
    absent part (plain Debian leaves /dev/i2c-* root:root 0600)."""
    import grp
    groups = {}
    for name in (SERVICE_USER, *SERVICE_GROUPS):
        try:
            groups[grp.getgrnam(name).gr_gid] = name
        except KeyError:
            pass
    nodes = [dev / f"i2c-{b}" for b in sorted({s.bus for s in settings.sensors if s.driver in I2C_DRIVERS})]
    if settings.inputs or any(e.relay_pin is not None for e in settings.equipment):
        nodes += sorted(dev.glob("gpiochip*"))
    nodes += [Path(s.port) for s in settings.sensors if s.driver in SERIAL_DRIVERS]
    nodes += [Path(p.port) for p in settings.printers]
    out = []
    for node in dict.fromkeys(nodes):
        try:
            st = node.stat()
        except OSError:
            continue  # missing: the bus, sensor and printer checks say so
        if not _service_can_open(st, groups):
            try:
                owner = f"{__import__('pwd').getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
            except KeyError:
                owner = f"{st.st_uid}:{st.st_gid}"
            out.append(Finding(False, "device permissions",
                               f"{node} is {owner} {stat.filemode(st.st_mode)}: the service (user {SERVICE_USER}, "
                               f"groups {' '.join(SERVICE_GROUPS)}) cannot open it (EACCES): the wiring is not "
                               "at fault", "run deploy/install.sh again (it adds udev rules giving I2C to the "
                               "group i2c and GPIO to gpio where the OS has none), then reboot or "
                               "sudo udevadm trigger"))
    return out


def check_broker_conformance(settings: Settings) -> list[Finding]:
    """What the agent needs from the broker, tried for real (hall_agent/broker/probe.py)."""
    from .broker.probe import check
    return [Finding(r.ok, r.what, r.detail, r.fix) for r in check(settings)]


def check_field(settings: Settings, path: Path) -> list[Finding]:
    """Version, configuration sha256, the Pi's power and throttling, certificate expiry."""
    from .fleet.health import doctor_findings
    return doctor_findings(settings, path)


def run(settings: Settings, path: str | None) -> int:
    from .agent import storage_dir
    from .hardware import Hardware
    from .oneshot import agent_running
    state_dir = storage_dir(settings, False)
    findings = (check_config_file(settings, config_path(path)) + check_storage(state_dir) + check_clock()
                + check_calendar(settings) + check_gpio(settings))
    if agent_running(state_dir):
        # the agent owns the parts: no iaq_init to its SGP30, no stop_periodic to its SCD4x, no DLE EOT
        # on its printer's line; it is asked for its status instead
        print(f"the agent runs on this machine (it holds {state_dir}/agent.lock): its parts are not touched, "
              "it is asked for its status")
        findings += check_broker(settings) + check_running_agent(settings)
    else:
        hardware = Hardware(settings, state_dir)
        findings += check_sensors(settings, hardware) + check_printers(settings) + check_broker(settings)
        hardware.close()
    findings += check_service() + check_service_storage(state_dir) + check_device_permissions(settings)
    if all(f.ok for f in findings if f.what == "broker"):
        findings += check_broker_conformance(settings)
    findings += check_field(settings, config_path(path))
    for f in findings:
        print(f.line())
    problems = sum(not f.ok for f in findings)
    print(f"\n{problems} problem(s)" if problems else "\nall good")
    return 1 if problems else 0
