"""The logs command: the ring, journald (a stand-in journalctl), the filters,
and the answer in chunks of at most 64 KiB through a real mosquitto."""

import json
import logging
import stat
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from hall_agent.commands import CommandError
from hall_agent.fleet import logs
from fleet_helpers import Supervised
from mqtt_helpers import Recorder, publish, write_config

TZ = ZoneInfo("Asia/Shanghai")


def ring_with(*messages):
    ring = logs.Ring(100)
    log = logging.getLogger("test.fleet.logs")
    for level, msg in messages:
        log.makeRecord  # noqa: B018
        ring.emit(log.makeRecord(log.name, level, __file__, 1, msg, (), None))
    return ring


def test_grep_and_lines_pick_the_last_matching_lines():
    ring = ring_with(*[(logging.WARNING, f"door {i}") for i in range(10)], (logging.INFO, "other"))
    out = logs.command({"grep": "DOOR [5-9]", "lines": 3}, TZ, ring, use_journal=lambda: False)
    doc = out[0]
    assert doc["source"] == "ring" and doc["matched"] == 3
    assert [line.split(" ", 1)[1] for line in doc["lines"]] == [
        f"WARNING test.fleet.logs: door {i}" for i in (7, 8, 9)]
    assert doc["lines"][0].split(" ")[0].endswith("+08:00")  # the hall's time zone


def test_since_and_until_filter_by_time():
    ring = ring_with((logging.INFO, "a"), (logging.INFO, "b"))
    ring.records[0].created -= 3600
    cut = datetime.now(TZ) - timedelta(minutes=30)
    got = logs.command({"since": cut.isoformat()}, TZ, ring, use_journal=lambda: False)[0]["lines"]
    assert [line.rsplit(" ", 1)[1] for line in got] == ["b"]
    naive = cut.replace(tzinfo=None).isoformat()  # no offset: the hall's time zone
    got = logs.command({"until": naive}, TZ, ring, use_journal=lambda: False)[0]["lines"]
    assert [line.rsplit(" ", 1)[1] for line in got] == ["a"]


@pytest.mark.parametrize("args, expect", [
    ({"lines": 0}, "'lines'"), ({"lines": 2001}, "'lines'"), ({"lines": True}, "'lines'"),
    ({"since": "yesterday"}, "'since'"), ({"grep": "("}, "'grep'"), ({"grep": 5}, "'grep'"),
    ({"tail": 5}, "unknown arguments: tail"),
])
def test_bad_arguments_are_refused_with_a_reason(args, expect):
    with pytest.raises(CommandError) as e:
        logs.command(args, TZ, logs.Ring(), use_journal=lambda: False)
    assert e.value.code == "bad-args" and expect in e.value.message


def test_journald_answers_when_it_can_be_read(tmp_path):
    now = datetime.now(timezone.utc).timestamp()
    entries = [{"__REALTIME_TIMESTAMP": str(int((now - 10) * 1e6)), "PRIORITY": "4",
                "MESSAGE": "<4>hall_agent.link: MQTT connection lost"},
               {"__REALTIME_TIMESTAMP": str(int(now * 1e6)), "PRIORITY": "6",
                "MESSAGE": list("hall_agent.agent: started \xff".encode("latin-1"))}]
    fake = tmp_path / "journalctl"
    args_file = tmp_path / "args"
    fake.write_text("#!/bin/sh\necho \"$@\" > " + str(args_file) + "\ncat <<'EOF'\n"
                    + "\n".join(json.dumps(e) for e in entries) + "\nnot json\nEOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    doc = logs.command({"grep": "hall_agent", "since": "2026-01-01T00:00:00+08:00"}, TZ, logs.Ring(),
                       use_journal=lambda: True, journalctl=str(fake))[0]
    assert doc["source"] == "journald"
    assert [line.split(" ", 1)[1] for line in doc["lines"]] == [
        "WARNING hall_agent.link: MQTT connection lost", "INFO hall_agent.agent: started \ufffd"]
    called = args_file.read_text()
    assert "-t hall-agent" in called and "--since=@" in called
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'No journal files were opened due to insufficient permissions.' >&2\nexit 1\n")
    broken.chmod(0o755)
    ring = ring_with((logging.INFO, "from the ring"))
    doc = logs.command({}, TZ, ring, use_journal=lambda: True, journalctl=str(broken))[0]
    assert doc["source"] == "ring" and doc["lines"][0].endswith("from the ring")


def test_a_long_answer_is_split_into_chunks_of_at_most_64_kib():
    lines = [f"line {i} " + "x" * 300 for i in range(1000)] + ["y" * 200_000]
    reply = {"id": "q1", "ok": True, "result": logs.Chunks([{"source": "ring", "matched": 1001, "lines": lines}])}
    parts = [json.loads(p) for p in logs.split_reply(reply)]
    assert all(len(p) <= 64 * 1024 for p in logs.split_reply(reply))
    assert [p["chunk"] for p in parts] == list(range(len(parts))) and {p["of"] for p in parts} == {len(parts)}
    assert len(parts) >= 5 and all(p["id"] == "q1" and p["ok"] for p in parts)
    joined = [line for p in parts for line in p["result"]["lines"]]
    assert joined[:1000] == lines[:1000]
    assert joined[1000].startswith("yyyy") and joined[1000].endswith(logs.CUT)
    assert logs.split_reply({"id": "x", "ok": True, "result": {"a": 1}}) == [b'{"id": "x", "ok": true, "result": {"a": 1}}']
    from hall_agent.envelope import encode_json  # the agent's strict encoder: same limits
    wide = [f"门禁 {i} " + "告警" * 400 + "\ud800" for i in range(200)]  # 3-byte UTF-8, a lone surrogate
    out = logs.split_reply({"id": "q2", "ok": True, "result": logs.Chunks([{"lines": wide}])}, encode=encode_json)
    assert len(out) > 1 and all(len(p) <= 64 * 1024 for p in out)
    assert sum(len(json.loads(p)["result"]["lines"]) for p in out) == 200


def test_logs_fetched_with_a_grep_over_mqtt_in_chunks(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    base = "halls/zigong/ziliujing/zg-001"
    rec = Recorder(broker.port, [f"{base}/#"])
    agent = Supervised(cfg, tmp_path / "agent.log").start()  # its output to a file: 500 warnings
    try:
        assert rec.wait_for(lambda r: any(p["state"] == "online" for p in r.payloads("/status")), 30)
        for i in range(500):  # each is logged by the agent: "sim/sensor/marker-…: unknown sensor"
            publish(broker.port, f"{base}/sim/sensor/marker-{i:03d}-{'z' * 150}", b"{}")
        publish(broker.port, f"{base}/cmd", json.dumps({"id": "l1", "command": "logs",
                                                         "args": {"grep": "marker-", "lines": 2000}}))
        done = lambda r: (lambda got: got and len(got) == got[0]["of"])(
            [p for p in r.payloads("/cmd/reply") if p.get("id") == "l1"])
        assert rec.wait_for(done, 30), rec.payloads("/cmd/reply")
        parts = sorted((p for p in rec.payloads("/cmd/reply") if p.get("id") == "l1"), key=lambda p: p["chunk"])
        assert len(parts) >= 2 and all(len(m.payload) <= 64 * 1024 for m in rec.on("/cmd/reply"))
        lines = [line for p in parts for line in p["result"]["lines"]]
        assert len(lines) == 500 and all("marker-" in line for line in lines)
        assert [line.split("marker-")[1][:3] for line in lines] == [f"{i:03d}" for i in range(500)]
        assert parts[0]["result"]["source"] == "ring"
        from test_schema import sub_validator
        for p in parts:
            sub_validator("reply").validate(p)  # docs/envelope.schema.json knows chunked replies
    finally:
        agent.stop()
        rec.close()
    assert agent.exits == [0]
