"""Footprint: RSS and CPU seconds per minute of the agent running the example
hall in simulation, beside a bare interpreter that imports the stack's libraries."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.startup import STACK

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "config.example.toml"
TICKS = os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(argv: list[str], seconds: float, env: dict) -> tuple[float, float]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(min(5.0, seconds / 4))  # start-up is not the steady state
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            rss.append(_rss_mb(proc.pid))
        cpu = (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0) * 60
        return max(rss), cpu
    finally:
        proc.terminate()
        proc.wait(20)


def run(port: int, seconds: float = 120) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "HALL_AGENT_MQTT__PORT": str(port), "HALL_AGENT_STORAGE__DIR": f"{d}/state"}
        # a first start fills the state folder (holiday tables cached): measure the steady state after it
        measure([sys.executable, "-m", "hall_agent", "run", "--simulate", "-c", str(EXAMPLE)], 4, env)
        rss, cpu = measure([sys.executable, "-m", "hall_agent", "run", "--simulate", "-c", str(EXAMPLE)], seconds, env)
    base_rss, base_cpu = measure([sys.executable, "-c", STACK + "; import time; time.sleep(3600)"],
                                 min(seconds, 10), dict(os.environ))
    return [
        {"bench": f"footprint: RSS, example hall simulated {seconds:g} s", "unit": "MB", "ours": rss,
         "raw_paho": base_rss, "goal": "< 40 MB", "met": rss < 40, "baseline": "bare import of the stack"},
        {"bench": "footprint: CPU seconds per minute", "unit": "s/min", "ours": cpu, "raw_paho": base_cpu,
         "goal": "< 0.6", "met": cpu < 0.6, "baseline": "bare import of the stack, idle"},
    ]
