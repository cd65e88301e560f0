"""A new user's first hour: the CLI refusals and hints around the demo, and the docs' links."""

import logging
import re
import subprocess
import sys
from pathlib import Path

from hall_agent.checks import CheckRunner
from hall_agent.config import load
from mqtt_helpers import CLOSED_HOURS, AgentProcess, Recorder, write_config

ROOT = Path(__file__).resolve().parent.parent


def test_check_simulate_beside_a_running_simulated_agent_is_refused(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", CLOSED_HOURS)
    rec = Recorder(broker.port, ["halls/#"])
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert rec.wait_for(lambda r: any(p["state"] == "online" for p in r.payloads("/status")), 20)
        r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "opening", "--simulate", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "a simulated agent already runs with the state folder" in r.stderr
        assert '"command":"check","args":{"kind":"opening"}' in r.stderr  # how to ask it instead
        assert not [p for p in rec.payloads("/status") if p["state"] == "offline"]  # the agent was not disturbed
        seqs = [p["seq"] for p in rec.payloads("/event")]
        assert len(seqs) == len(set(seqs))  # no seq went out twice
    finally:
        assert agent.terminate() == 0
        rec.close()


def test_opening_check_counts_its_settle_time_down(tmp_path, caplog):
    cfg = write_config(tmp_path / "c.toml", 1883, tmp_path / "state", "[checks]\nsettle_s = 12\n")
    settings = load(str(cfg))
    slept: list[float] = []

    class Nothing:
        relays, inputs, printers, runners, unavailable = {}, {}, {}, {}, {}
    runner = CheckRunner(settings, Nothing(), Nothing(), lambda: __import__("datetime").datetime.now().astimezone(),
                         sleep=slept.append)
    with caplog.at_level(logging.INFO, logger="hall_agent.checks"):
        runner._settle("opening", 12)
    assert slept == [5, 5, 2]
    text = caplog.text
    assert "giving the equipment 12 s to start" in text and "7 s to go" in text and "2 s to go" in text


def test_readme_links_stay_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert not target.startswith(".."), f"README links outside the repository: {target}"
        assert (ROOT / target.split("#")[0]).exists(), f"README links to a missing file: {target}"


def test_topic_filters_in_the_docs_are_valid_mqtt():
    """Every filter the docs show a user: '#' only as the last level, wildcards whole levels."""
    bad = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for filt in re.findall(r"`([^`\s]*halls/[^`\s]*)`", doc.read_text()):
            filt = filt.strip("'\"")
            levels = filt.split("/")
            if any("#" in lv and (lv != "#" or i != len(levels) - 1) for i, lv in enumerate(levels)) or \
                    any("+" in lv and lv != "+" for lv in levels):
                bad.append(f"{doc.name}: {filt}")
    assert not bad, bad
