"""Run every benchmark against a mosquitto of its own and print a table.

    python -m bench [--quick] [--only outbox,panic,startup,footprint,fleet]

Each figure is printed beside its baseline measured in the same run (raw
paho-mqtt, or the bare stack), with the ratio; medians where there are
repeats. Results also go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mqtt_helpers import Broker  # noqa: E402

ALL = ("outbox", "panic", "startup", "footprint", "fleet")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves each benchmark runs (the test suite)")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {', '.join(ALL)}")
    args = p.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HALL_AGENT_SIM_DAY", "1")
    q = args.quick
    rows, fleet_detail = [], []
    with tempfile.TemporaryDirectory() as d:
        broker = Broker(Path(d) / "broker").start()
        try:
            if "outbox" in only:
                from bench import outbox
                rows += outbox.run(broker.port, repeats=2 if q else 5, drain_n=2000 if q else 20_000)
            if "panic" in only:
                from bench import panic
                os.environ["HALL_AGENT_SIM_DAY"] = "0"
                rows += panic.run(broker.port, presses=30 if q else 500)
                os.environ["HALL_AGENT_SIM_DAY"] = "1"
            if "startup" in only:
                from bench import startup
                rows += startup.run(broker.port, n=2 if q else 10)
            if "footprint" in only:
                from bench import footprint
                rows += footprint.run(broker.port, seconds=6 if q else 120)
            if "fleet" in only:
                from bench import fleet
                sizes, speeds = ((5,), (1,)) if q else ((50, 200, 500), (1, 10))
                r, fleet_detail = fleet.run(broker.port, broker.proc.pid, sizes, speeds, seconds=3 if q else 10)
                rows += r
                if not q:  # where does it stop keeping up?
                    r, more = fleet.run(broker.port, broker.proc.pid, (500,), (40, 100), seconds=10)
                    rows += r
                    fleet_detail += more
        finally:
            broker.stop()
    print(f"{'benchmark':58} {'ours':>10} {'baseline':>10} {'ratio':>6}  {'goal':24} met")
    for r in rows:
        ratio = r["ours"] / r["raw_paho"] if r.get("raw_paho") else float("nan")
        r["ratio"] = ratio
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        print(f"{r['bench']:58} {r['ours']:>10.3g} {r['raw_paho']:>10.3g} {ratio:>6.2f}  {r.get('goal', ''):24} {met}"
              f"   ({r['unit']})")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "quick": q, "rows": rows, "fleet": fleet_detail}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
