"""Scale-out benchmark: throughput through HAProxy with 1 and 2 replicas. Not a test.

Real ``clipseg-serve`` replicas (random weights, CPU, one torch thread each, each pinned to
a core of its own: one replica = one device) behind Debian's HAProxy running the shipped
deploy/haproxy/haproxy.cfg (bench/lb.py). Closed-loop clients send 2048 x 2048 JPEG
text-prompt requests (RLE answers); each run starts fresh replicas and measures 1 replica,
then 2. Reports the median and range over the runs, and the machine.

    python bench/scale_out.py --runs 3 --seconds 10 --clients 4
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lb import HAProxy
from bench.machine import cpu_description
from bench.replicas import spawn, throughput


def machine() -> str:
    return f"{cpu_description()}, Python {platform.python_version()}"


def one_run(args: argparse.Namespace) -> dict[int, float]:
    replicas = [spawn(core=i, CLIPSEG_WEIGHTS=f"random:{args.variant}") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait("/readyz", 200, timeout=900)
        curve = {}
        for count in (1, 2):
            with HAProxy([r.address for r in replicas[:count]]) as lb:
                for i in range(count):
                    lb.wait_for(f"r{i}", "UP")
                curve[count] = throughput(lb.url, args.clients, args.seconds, warmup=2.0)
        return curve
    finally:
        for replica in replicas:
            replica.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        curve = one_run(args)
        runs.append(curve)
        print(f"run {run + 1}: 1 replica {curve[1]:.1f} req/s, 2 replicas {curve[2]:.1f} req/s "
              f"(x{curve[2] / curve[1]:.2f})", flush=True)  # fmt: skip
    print(f"\nmachine: {machine()}; {args.clients} clients, {args.seconds:.0f} s per point, "
          f"variant {args.variant}, {args.runs} runs")  # fmt: skip
    summary = {}
    for count in (1, 2):
        values = [run[count] for run in runs]
        summary[count] = (statistics.median(values), min(values), max(values))
        print(f"{count} replica{'s' if count > 1 else ' '}: median {summary[count][0]:.1f} "
              f"req/s (range {summary[count][1]:.1f}-{summary[count][2]:.1f})")  # fmt: skip
    ratios = [run[2] / run[1] for run in runs]
    print(f"speed-up 2 vs 1: median x{statistics.median(ratios):.2f} "
          f"(range x{min(ratios):.2f}-x{max(ratios):.2f})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
