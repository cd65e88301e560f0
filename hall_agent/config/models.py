"""The configuration schema: every key of SPEC section 7 with its default.

The models only check what one key (or one table) can check on its own;
checks across tables (duplicate ids, a GPIO pin used twice, references
between tables, secrets sent in clear) live in ``checks.py`` so that each
problem can name its own key path.
"""

from __future__ import annotations

import re
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")

I2C_DRIVERS = {"sht3x": 0x44, "sht4x": 0x44, "bme280": 0x76, "scd4x": 0x62, "sgp30": 0x58}
SERIAL_DRIVERS = {"mhz19", "pms5003", "ze08"}
FILE_DRIVERS = {"ds18b20"}
DRIVERS = tuple(sorted(set(I2C_DRIVERS) | SERIAL_DRIVERS | FILE_DRIVERS))
SENSOR_BAUDRATES = {"mhz19": 9600, "pms5003": 9600, "ze08": 9600}
#: the shortest ``interval_s`` each part allows, and why (its own measurement period,
#: from its datasheet); each driver class declares the same figure as ``period_s``
MIN_INTERVAL_S = {
    "scd4x": (5.0, "an SCD4x gives a new sample only every 5 s in periodic measurement (datasheet 3.5.1)"),
    "sgp30": (1.0, "an SGP30 must be measured exactly once a second (datasheet 6.2); "
                   "it is sampled at 1 Hz and published every interval_s"),
    "pms5003": (2.3, "a PMS5003 sends a frame every 2.3 s in stable mode (datasheet, appendix I)"),
    "mhz19": (1.0, "an MH-Z19 updates its reading about once a second"),
    "ze08": (1.0, "a ZE08-CH2O uploads once a second"),
    "ds18b20": (1.0, "a DS18B20 conversion takes 750 ms at 12 bits"),
}
#: per-part switches: key -> (the driver that takes it, its default there)
PART_SWITCHES = {"asc": ("scd4x", True), "abc": ("mhz19", True), "sleep_when_closed": ("pms5003", False)}

VALUE_KEYS = (
    "temperature_c", "humidity_pct", "pressure_hpa", "co2_ppm", "tvoc_ppb", "eco2_ppm",
    "pm1_ugm3", "pm25_ugm3", "pm10_ugm3", "hcho_mgm3",
)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

Driver = Literal["bme280", "ds18b20", "mhz19", "pms5003", "scd4x", "sgp30", "sht3x", "sht4x", "ze08"]
ValueKey = Literal[
    "temperature_c", "humidity_pct", "pressure_hpa", "co2_ppm", "tvoc_ppb", "eco2_ppm",
    "pm1_ugm3", "pm25_ugm3", "pm10_ugm3", "hcho_mgm3",
]
Severity = Literal["info", "warning", "critical"]
Category = Literal["internal", "business", "system", "emergency"]


def check_id(value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a valid id: use lower-case letters, digits, '.' and '-'")
    return value


def parse_hours(text: str) -> tuple[time, time] | None:
    """``"08:30-17:30"`` -> (08:30, 17:30); ``"closed"`` -> None."""
    text = text.strip().lower()
    if text == "closed":
        return None
    match = re.fullmatch(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", text)
    if not match:
        raise ValueError(f"{text!r} is not opening hours: write \"08:30-17:30\" or \"closed\"")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r} has an impossible time of day")
    start, end = time(h1, m1), time(h2, m2)
    if end <= start:
        raise ValueError(f"{text!r} closes before it opens")
    return start, end


def parse_months(value: Any) -> list[int]:
    """``[5, 6, 7]``, ``"5-9"`` or ``"11-3"`` (wrapping the new year) -> month numbers."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", value)
        if not match:
            raise ValueError(f"{value!r} is not a month range such as \"5-9\"")
        first, last = int(match[1]), int(match[2])
        if not (1 <= first <= 12 and 1 <= last <= 12):
            raise ValueError(f"{value!r}: months are 1 to 12")
        months, m = [first], first
        while m != last:
            m = m % 12 + 1
            months.append(m)
        return months
    if isinstance(value, list):
        for m in value:
            if not isinstance(m, int) or not 1 <= m <= 12:
                raise ValueError(f"{m!r} is not a month number 1 to 12")
        return list(value)
    raise ValueError("write a month range such as \"5-9\" or a list of month numbers")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HallSection(Section):
    id: str
    name: str = ""
    city: str
    branch: str
    timezone: str = "Asia/Shanghai"

    _ids = field_validator("id", "city", "branch")(check_id)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as \"Asia/Shanghai\"") from None
        return value


def _host_port(item: str) -> str:
    """One entry of ``[mqtt] hosts``: ``"host"`` or ``"host:port"``."""
    host, sep, port = item.rpartition(":")
    if not sep:
        host, port = item, ""
    if not host or any(c.isspace() for c in item) or "/" in item:
        raise ValueError(f"{item!r} is not \"host\" or \"host:port\"")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{item!r}: the port must be a number from 1 to 65535")
    return item


class MqttSection(Section):
    host: str = "localhost"
    port: int | None = Field(default=None, ge=1, le=65535)
    hosts: list[Annotated[str, AfterValidator(_host_port)]] | None = None
    # ["host:port", ...]: several brokers (a cluster), tried in turn
    protocol: Literal[5, 311] = 5
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = None
    topic_root: str = "halls"
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    telemetry_qos: Literal[0, 1] = 0
    drain_s: float = Field(default=5.0, ge=0, le=600)

    @field_validator("topic_root")
    @classmethod
    def _topic_root(cls, value: str) -> str:
        if not value or any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"{value!r} is not a topic prefix: no '+', '#' or leading/trailing '/'")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError('must name at least one broker ("host:port"), or leave hosts out and use host/port')
        return value

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls else 1883)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """The brokers to try, in order: ``hosts`` (a port left out: the default port), else host/port."""
        if not self.hosts:
            return [(self.host, self.effective_port)]
        out = []
        for item in self.hosts:
            host, sep, port = item.rpartition(":")
            if not sep:
                host, port = item, ""
            out.append((host.strip("[]"), int(port) if port else self.effective_port))
        return out


class AgentSection(Section):
    health_interval_s: float = Field(default=60.0, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class StorageSection(Section):
    dir: Path | None = None
    max_outbox_mb: float = Field(default=256.0, gt=0)


class HoursSection(Section):
    monday: str = "08:30-17:30"
    tuesday: str = "08:30-17:30"
    wednesday: str = "08:30-17:30"
    thursday: str = "08:30-17:30"
    friday: str = "08:30-17:30"
    saturday: str = "08:30-17:30"
    sunday: str = "08:30-17:30"
    holidays: str = "CN"
    closed: list[date] = []
    open: dict[date, str] = {}

    @field_validator(*WEEKDAYS)
    @classmethod
    def _day(cls, value: str) -> str:
        parse_hours(value)
        return value

    @field_validator("open")
    @classmethod
    def _open(cls, value: dict[date, str]) -> dict[date, str]:
        for day, hours in value.items():
            if parse_hours(hours) is None:
                raise ValueError(f"{day}: an open date needs hours such as \"09:00-16:00\"")
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Z]{2}(-[A-Z0-9]{1,3})?", value):
            raise ValueError(f"{value!r} is not a country code such as \"CN\" (or \"\" for none)")
        return value


class ChecksSection(Section):
    opening_lead_min: int = Field(default=30, ge=0, le=720)
    closing_delay_min: int = Field(default=15, ge=0, le=720)
    settle_s: float = Field(default=20.0, ge=0, le=3600)
    misfire_grace_min: int = Field(default=20, ge=0)
    require_time_sync: bool = True


class CommandsSection(Section):
    allow_reset: bool = False
    allow_power: bool = False
    allow_ack: bool = True
    allow_credentials: bool = False  # the credentials command (password / client certificate rotation)


class FleetSection(Section):
    """Local only: a desired configuration may not change it (docs/fleet.md)."""
    # after applying a desired configuration: back to the previous file if `online`
    # is not published within this many seconds (keep it well above a reconnect's time)
    revert_after_s: float = Field(default=300.0, ge=1, le=86400)


class AlertsSection(Section):
    """Alarm handling (SPEC section 4, docs/alerts.md)."""
    escalate_branch_s: float = Field(default=120.0, gt=0)
    escalate_city_s: float = Field(default=900.0, gt=0)
    flap_count: int = Field(default=4, ge=2)
    flap_window_s: float = Field(default=600.0, gt=0)
    drill_due_days: float = Field(default=90.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "AlertsSection":
        if self.escalate_city_s <= self.escalate_branch_s:
            raise ValueError(f"escalate_city_s ({self.escalate_city_s:g}) must be later than escalate_branch_s "
                             f"({self.escalate_branch_s:g})")
        return self


def parse_clock(value: Any) -> time:
    """``"18:00"`` -> 18:00."""
    if isinstance(value, time):
        return value
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip()) if isinstance(value, str) else None
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{value!r} is not a time of day such as \"18:00\"")
    return time(int(match[1]), int(match[2]))


class MaintenanceConfig(Section):
    """A scheduled maintenance window (``[[maintenance]]``): the cleaners' nightly hour."""
    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    rule: str
    source: str = "*"
    weekdays: list[Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]] = \
        list(WEEKDAYS)
    from_: time = Field(alias="from")
    to: time
    reason: str = Field(min_length=1, max_length=200)

    _times = field_validator("from_", "to", mode="before")(parse_clock)

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if value == "panic":
            raise ValueError("panic alarms can never be suppressed: no maintenance window may name 'panic'")
        return value if value == "*" else check_id(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return value if value == "*" else check_id(value)

    @model_validator(mode="after")
    def _span(self) -> "MaintenanceConfig":
        if self.from_ == self.to:
            raise ValueError("from and to are the same time: the window would be empty")
        if not self.weekdays:
            raise ValueError("weekdays is empty: the window would never run")
        return self


class ProfileSection(Section):
    name: Literal["gbt18883-2022", "none"] = "gbt18883-2022"
    summer_months: list[int] = [5, 6, 7, 8, 9]
    winter_months: list[int] = [11, 12, 1, 2, 3]

    _months = field_validator("summer_months", "winter_months", mode="before")(parse_months)


class HomeAssistantSection(Section):
    enabled: bool = False
    prefix: str = "homeassistant"


class SensorConfig(Section):
    id: str
    driver: Driver
    bus: int = Field(default=1, ge=0)
    address: int | None = None
    port: str | None = None
    baudrate: int | None = Field(default=None, gt=0)
    device: str | None = None
    w1_root: Path = Path("/sys/bus/w1/devices")
    interval_s: float = Field(default=30.0, ge=0.1)
    fault_after: int = Field(default=3, ge=1)
    # SCD4x compensation (datasheet 3.6): altitude above sea level, or ambient pressure
    altitude_m: int | None = Field(default=None, ge=0, le=3000)
    pressure_hpa: float | None = Field(default=None, ge=700, le=1200)
    # self-calibration (SCD4x ASC, MH-Z19 ABC) and PMS5003 sleep outside business hours
    asc: bool | None = None
    abc: bool | None = None
    sleep_when_closed: bool | None = None

    _id = field_validator("id")(check_id)

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise ValueError(f"{value!r} is not an I2C address such as 0x44") from None
        if isinstance(value, int) and not isinstance(value, bool) and not 0x08 <= value <= 0x77:
            raise ValueError(f"{value:#04x} is not a 7-bit I2C address (0x08-0x77)")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> "SensorConfig":
        if self.address is None and self.driver in I2C_DRIVERS:
            self.address = I2C_DRIVERS[self.driver]
        if self.baudrate is None and self.driver in SENSOR_BAUDRATES:
            self.baudrate = SENSOR_BAUDRATES[self.driver]
        for key, (driver, default) in PART_SWITCHES.items():
            if getattr(self, key) is None and self.driver == driver:
                setattr(self, key, default)
        return self


def _pin(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 53:
            raise ValueError(f"{value} is not a GPIO number (BCM 0-27 on a Raspberry Pi)")
        return value
    if isinstance(value, str) and re.fullmatch(r"(GPIO|BCM|BOARD|WPI)\d+|J8:\d+", value.strip(), re.I):
        return value.strip().upper()
    raise ValueError(f"{value!r} is not a pin: write a BCM number such as 17, or \"GPIO17\"/\"BOARD11\"")


class InputConfig(Section):
    id: str
    kind: Literal["door", "panic", "motion", "reset"]
    pin: int | str
    contact: Literal["no", "nc"] = "no"
    contact_checked: bool = False   # a panic on an NO contact whose wiring is supervised otherwise: no warning
    pull_up: bool = True
    bounce_ms: int = Field(default=50, ge=0, le=10_000)
    min_pulse_ms: int | None = Field(default=None, ge=0, le=10_000)   # panic 10, else 0
    held_open_s: float | None = Field(default=None, gt=0)
    resets: list[str] = []

    _id = field_validator("id")(check_id)
    _pin = field_validator("pin", mode="before")(_pin)

    @model_validator(mode="after")
    def _defaults(self) -> "InputConfig":
        if self.held_open_s is None and self.kind == "door":
            self.held_open_s = 120.0
        if self.min_pulse_ms is None:
            self.min_pulse_ms = 10 if self.kind == "panic" else 0
        return self


class PrinterConfig(Section):
    id: str
    port: str
    baudrate: int = Field(default=9600, gt=0)
    poll_s: float = Field(default=10.0, ge=0.2)
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    fault_after: int = Field(default=3, ge=1, le=100)   # silent polls in a row before printer-offline

    _id = field_validator("id")(check_id)


class EquipmentConfig(Section):
    id: str
    name: str = ""
    probe: str | None = None
    relay_pin: int | str | None = None
    relay_active_high: bool = True   # false for relay boards that switch on a low pin
    power: Literal["auto", "manual"] = "manual"
    required: bool = True
    probe_interval_s: float = Field(default=60.0, ge=1)
    probe_timeout_s: float = Field(default=3.0, gt=0, le=30)

    _id = field_validator("id")(check_id)

    @field_validator("relay_pin", mode="before")
    @classmethod
    def _relay_pin(cls, value: Any) -> Any:
        return None if value is None else _pin(value)

    @field_validator("probe")
    @classmethod
    def _probe(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if re.fullmatch(r"tcp://[^\s:/]+:\d{1,5}", value) or re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            return value
        raise ValueError(f"{value!r} is not a probe: write tcp://host:port, http://… or https://…")


class RuleConfig(Section):
    id: str
    source: str | None = None
    value: ValueKey | None = None
    above: float | None = None
    below: float | None = None
    clear_below: float | None = None
    clear_above: float | None = None
    for_s: float = Field(default=0.0, ge=0)
    mean_s: float = Field(default=0.0, ge=0)
    severity: Severity = "warning"
    category: Category = "internal"
    priority: int = Field(default=2, ge=1, le=4)

    _id = field_validator("id")(check_id)

    @model_validator(mode="after")
    def _threshold(self) -> "RuleConfig":
        if self.above is not None and self.below is not None:
            raise ValueError("give either above or below, not both")
        if self.above is not None and self.clear_above is not None:
            raise ValueError("clear_above goes with below; with above use clear_below")
        if self.below is not None and self.clear_below is not None:
            raise ValueError("clear_below goes with above; with below use clear_above")
        if self.above is not None and self.clear_below is not None and self.clear_below > self.above:
            raise ValueError(f"clear_below ({self.clear_below}) must not exceed above ({self.above})")
        if self.below is not None and self.clear_above is not None and self.clear_above < self.below:
            raise ValueError(f"clear_above ({self.clear_above}) must not be under below ({self.below})")
        return self


class Settings(BaseSettings):
    """The whole configuration. File values are overridden by environment
    variables ``HALL_AGENT_<SECTION>__<KEY>``."""

    model_config = SettingsConfigDict(
        env_prefix="HALL_AGENT_", env_nested_delimiter="__", extra="forbid",
        case_sensitive=False, validate_default=True,
    )

    hall: HallSection
    mqtt: MqttSection = MqttSection()
    agent: AgentSection = AgentSection()
    storage: StorageSection = StorageSection()
    hours: HoursSection = HoursSection()
    checks: ChecksSection = ChecksSection()
    commands: CommandsSection = CommandsSection()
    alerts: AlertsSection = AlertsSection()
    maintenance: list[MaintenanceConfig] = []
    profile: ProfileSection = ProfileSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    fleet: FleetSection = FleetSection()
    sensors: list[SensorConfig] = []
    inputs: list[InputConfig] = []
    printers: list[PrinterConfig] = []
    equipment: list[EquipmentConfig] = []
    rules: list[RuleConfig] = []

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values; the environment overrides it.
        return env_settings, init_settings

    @property
    def base_topic(self) -> str:
        h = self.hall
        return f"{self.mqtt.topic_root}/{h.city}/{h.branch}/{h.id}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"hall-agent-{self.hall.id}"
