"""The simulated hall's plausible day, step by step over synthetic time."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hall_agent.agent import Agent
from hall_agent.config import validate
from hall_agent.simday import SimulatedDay

TZ = ZoneInfo("Asia/Shanghai")


def test_a_day_in_the_simulated_hall(tmp_path):
    agent = Agent(validate({
        "hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
        "storage": {"dir": str(tmp_path / "s")}, "hours": {"holidays": ""},
        "sensors": [{"id": "co2", "driver": "scd4x"}, {"id": "env", "driver": "sht3x"}],
        "inputs": [{"id": "door.side", "kind": "door", "pin": 17, "contact": "nc", "bounce_ms": 0}],
        "printers": [{"id": "printer.q", "port": "/dev/ttyUSB1"}],
    }), simulate=True)
    sim = agent.hardware
    day = SimulatedDay(sim, agent.calendar, lambda: None, step_s=60, seed=7)
    start = datetime(2026, 11, 27, 0, 0, tzinfo=TZ)  # a Friday; open 08:30-17:30
    co2, paper, door_opened = {}, [], []
    try:
        for minute in range(0, 24 * 60):
            at = start + timedelta(minutes=minute)
            day.step(at)
            co2[at.strftime("%H:%M")] = sim.devices["co2"].values["co2_ppm"]
            paper.append(sim.devices["printer.q"].paper)
            if agent.devices.inputs["door.side"].device.pin.contact_closed is False:
                door_opened.append(at.hour)
        assert co2["03:00"] < 500 and co2["10:00"] > 1200 and co2["12:30"] < co2["10:00"] and co2["20:00"] < 500
        assert "near_end" in paper  # the roll runs low during the day ...
        assert paper[0] == "ok"
        assert door_opened and all(8 <= h < 18 for h in door_opened)  # ... and doors open only in hours
        # a part driven over sim/… is left alone
        sim.control_sensor("co2", b'{"co2_ppm": 2500}')
        day.manual.add("co2")
        day.step(start + timedelta(hours=10))
        assert sim.devices["co2"].values["co2_ppm"] == 2500
    finally:
        agent.outbox.close()
        sim.close()
