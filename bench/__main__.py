"""Run every benchmark against a mosquitto of its own and print a table.

    python -m bench [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mqtt_helpers import Broker  # noqa: E402

from bench import outbox  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        broker = Broker(Path(d) / "broker").start()
        try:
            rows = outbox.run(broker.port, repeats=2 if args.quick else args.repeats,
                              drain_n=2000 if args.quick else 20_000)
        finally:
            broker.stop()
    print(f"{'benchmark':48} {'ours':>12} {'raw paho':>12} {'ratio':>7}  goal")
    for r in rows:
        ratio = r["ours"] / r["raw_paho"] if r["raw_paho"] else float("nan")
        r["ratio"] = ratio
        print(f"{r['bench']:48} {r['ours']:>10.0f}/s {r['raw_paho']:>10.0f}/s {ratio:>7.2f}  {r.get('goal', '')}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                 "machine": platform.platform(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
