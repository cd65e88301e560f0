"""The benchmark command runs end to end (speed itself is measured by `python -m bench`, not here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)  # a whole quick bench run (brokers, agents); its subprocess has 240 s
def test_bench_quick_prints_a_table_and_writes_json():
    r = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    for name in ("drain 2000 after outage", "panic edge -> alert received", "startup: process start",
                 "footprint: RSS", "fleet: 5 halls"):
        assert name in r.stdout, name
    rows = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())["rows"]
    assert all(row["ours"] > 0 and row["raw_paho"] >= 0 for row in rows)
