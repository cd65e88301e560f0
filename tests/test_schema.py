"""docs/envelope.schema.json describes what the agent really sends."""

import json
from pathlib import Path

import jsonschema
import pytest

from hall_agent.commands import Dispatcher
from hall_agent.envelope import Events
from hall_agent.outbox import Outbox
from mqtt_helpers import AgentProcess, Recorder, publish, write_config

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "envelope.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(SCHEMA)
ENVELOPE = jsonschema.Draft202012Validator(SCHEMA)


def sub_validator(name):
    return jsonschema.Draft202012Validator({**SCHEMA["$defs"][name], "$defs": SCHEMA["$defs"]})


def test_built_envelopes_validate(tmp_path):
    ev = Events("zg-001", "Asia/Shanghai", "halls/z/b/zg-001")
    box = Outbox(tmp_path / "o.db")
    for env in (ev.reading("env.hall", "sht3x", {"temperature_c": 23.41, "humidity_pct": 45.2}),
                ev.state("door.side", {"state": "open"}),
                ev.command(Dispatcher().handle(b'{"id":"x","command":"nope"}').audit),
                ev.agent("started", {"version": "0"})):
        box.enqueue(env)
    for row in box.take(100):
        ENVELOPE.validate(json.loads(row.payload))


def test_schema_rejects_what_it_should():
    good = {"schema": 1, "id": "a", "seq": 1, "ts": "2026-11-26T08:30:00.123+08:00", "hall": "zg-001",
            "type": "reading", "source": "s", "severity": "info", "moment": {"category": "internal", "priority": 4},
            "data": {"model": "sht3x", "values": {"temperature_c": 1.0}}}
    ENVELOPE.validate(good)
    for bad in ({**good, "seq": 0}, {**good, "ts": "2026-11-26 08:30"},
                {**good, "data": {"model": "x", "values": {"temp": 1}}}, {**good, "extra": 1},
                {**good, "moment": None}, {**good, "moment": {"category": "fun", "priority": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            ENVELOPE.validate(bad)


def test_live_traffic_validates(broker, tmp_path):
    base = "halls/zigong/ziliujing/zg-001"
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", "[agent]\nhealth_interval_s = 1\n")
    rec = Recorder(broker.port, [f"{base}/#"])
    agent = AgentProcess(cfg).start()
    try:
        assert rec.wait_for(lambda r: r.payloads("/status"))
        publish(broker.port, f"{base}/cmd", '{"id":"s1","command":"status"}')
        publish(broker.port, f"{base}/cmd", '{"id":"s2","command":"reset","args":{"source":"panic.1"}}')
        assert rec.wait_for(lambda r: len(r.payloads("/cmd/reply")) == 2 and r.payloads("/health"))
        assert agent.terminate() == 0
        assert rec.wait_for(lambda r: r.payloads("/status")[-1]["state"] == "offline")
    finally:
        agent.kill()
        rec.close()
    for p in rec.payloads("/event") + rec.payloads("/health"):
        ENVELOPE.validate(p)
    for p in rec.payloads("/status"):
        sub_validator("status").validate(p)
    for p in rec.payloads("/cmd/reply"):
        sub_validator("reply").validate(p)
