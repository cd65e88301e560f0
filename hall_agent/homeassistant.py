"""Home Assistant MQTT discovery (``[homeassistant] enabled = true``; off by default).

One device per hall; an entity per reading value, input, printer and
equipment item, all using the agent's own topics (no extra traffic);
availability from the hall's ``status``. The configs are retained, sent on
every connect and again when Home Assistant announces itself online on
``{prefix}/status``. Topics: ``{prefix}/{component}/{hall_id}/{object_id}/config``
— outside the hall's base topic, so the broker ACL must also let the hall
write ``{prefix}/+/{hall_id}/#`` (see docs/deployment.md).
"""

from __future__ import annotations

import json
import re

from . import __version__

DRIVER_VALUES = {
    "sht3x": ("temperature_c", "humidity_pct"), "sht4x": ("temperature_c", "humidity_pct"),
    "bme280": ("temperature_c", "humidity_pct", "pressure_hpa"), "scd4x": ("co2_ppm", "temperature_c", "humidity_pct"),
    "sgp30": ("tvoc_ppb", "eco2_ppm"), "mhz19": ("co2_ppm",), "pms5003": ("pm1_ugm3", "pm25_ugm3", "pm10_ugm3"),
    "ze08": ("hcho_mgm3",), "ds18b20": ("temperature_c",),
}
#: value key -> (Home Assistant device class, unit)
VALUE_CLASS = {
    "temperature_c": ("temperature", "°C"), "humidity_pct": ("humidity", "%"), "pressure_hpa": ("pressure", "hPa"),
    "co2_ppm": ("carbon_dioxide", "ppm"), "eco2_ppm": ("carbon_dioxide", "ppm"),
    "tvoc_ppb": ("volatile_organic_compounds_parts", "ppb"), "pm1_ugm3": ("pm1", "µg/m³"),
    "pm25_ugm3": ("pm25", "µg/m³"), "pm10_ugm3": ("pm10", "µg/m³"), "hcho_mgm3": (None, "mg/m³"),
}
INPUT_CLASS = {"door": ("door", "open"), "panic": ("safety", "alarm"), "motion": ("motion", "motion"),
               "reset": (None, "pressed")}


def _oid(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", "_".join(parts))


def discovery(settings) -> list[tuple[str, bytes]]:
    """(topic, payload) of every entity's config."""
    hall, base, prefix = settings.hall, settings.base_topic, settings.homeassistant.prefix
    device = {"identifiers": [f"hall-agent-{hall.id}"], "name": hall.name or f"Hall {hall.id}",
              "manufacturer": "hall-agent", "model": "customer-service hall agent", "sw_version": __version__,
              "suggested_area": hall.branch}
    common = {"device": device, "availability_topic": f"{base}/status",
              "availability_template": "{{ value_json.state }}", "payload_available": "online",
              "payload_not_available": "offline"}
    out: list[tuple[str, dict]] = []

    def add(component: str, object_id: str, config: dict) -> None:
        oid = _oid(hall.id, object_id)
        out.append((f"{prefix}/{component}/{_oid(hall.id)}/{oid}/config",
                    {"unique_id": oid, "object_id": oid, **common, **config}))

    for s in settings.sensors:
        for key in DRIVER_VALUES[s.driver]:
            device_class, unit = VALUE_CLASS[key]
            config = {"name": f"{s.id} {key}", "state_topic": f"{base}/telemetry/{s.id}",
                      "value_template": f"{{{{ value_json.data['values']['{key}'] }}}}",
                      "unit_of_measurement": unit, "state_class": "measurement"}
            if device_class:
                config["device_class"] = device_class
            add("sensor", f"{s.id}_{key}", config)
    for i in settings.inputs:
        device_class, on = INPUT_CLASS[i.kind]
        config = {"name": i.id, "state_topic": f"{base}/state/{i.id}",
                  "value_template": "{{ value_json.data.state }}", "payload_on": on,
                  "payload_off": {"open": "closed", "alarm": "normal", "motion": "still", "pressed": "released"}[on]}
        if device_class:
            config["device_class"] = device_class
        add("binary_sensor", i.id, config)
    for p in settings.printers:
        add("sensor", f"{p.id}_paper", {"name": f"{p.id} paper", "state_topic": f"{base}/state/{p.id}",
                                        "value_template": "{{ value_json.data.paper }}", "icon": "mdi:receipt"})
        add("binary_sensor", f"{p.id}_online", {"name": f"{p.id} online", "state_topic": f"{base}/state/{p.id}",
                                                "device_class": "connectivity",
                                                "value_template": "{{ 'ON' if value_json.data.online else 'OFF' }}"})
    for e in settings.equipment:
        add("binary_sensor", f"{e.id}_reachable", {
            "name": f"{e.name or e.id} reachable", "state_topic": f"{base}/state/{e.id}",
            "device_class": "connectivity",
            "value_template": "{{ 'ON' if value_json.data.reachable else 'OFF' }}"})
    return [(topic, json.dumps(config, ensure_ascii=False).encode()) for topic, config in out]


class Discovery:
    """Sends the configs on every connect and when Home Assistant comes online."""

    def __init__(self, settings, link):
        self.messages = discovery(settings)
        self.link = link
        self.prefix = settings.homeassistant.prefix
        link.on_connected.append(self.send)
        link.subscribe_absolute(f"{self.prefix}/status", self._on_ha_status)

    def send(self) -> None:
        for topic, payload in self.messages:
            self.link.publish_now(topic, payload, qos=1, retain=True)

    def _on_ha_status(self, msg) -> None:
        if msg.payload.strip() == b"online":
            self.send()
