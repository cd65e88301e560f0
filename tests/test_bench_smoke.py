"""The benchmark command runs end to end (speed itself is measured by `python -m bench`, not here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_a_table_and_writes_json():
    r = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "drain 2000 after outage" in r.stdout and "raw paho" in r.stdout
    rows = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())["rows"]
    assert all(row["ours"] > 0 and row["raw_paho"] > 0 for row in rows)
