"""Runs per minute of ``sgdlab compare``, vectorized populations against one run at a time, end to end.

Two workloads, each run both ways in this one invocation, as a user runs them (a fresh ``sgdlab
compare`` process: start-up, data, worker processes, every evaluation, checkpoints and the report
all count):

  race    the default race: gd, sgd, momentum, nesterov, adam, adamw x 3 seeds on mnist1d
  sweep   a 16-value learning-rate sweep of SGD with momentum (lr 1e-3 .. 0.3, log-spaced), one seed

and checks that both ways logged the same records (``runs.jsonl``: same runs, epochs and steps;
the largest difference of any loss or accuracy is printed; timings aside)::

    .venv/bin/python benchmarks/population_throughput.py                 # the tasks' budgets
    .venv/bin/python benchmarks/population_throughput.py --epochs 5      # shorter
    .venv/bin/python benchmarks/population_throughput.py --cluster tcp://host:8786
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "race": {"opts": [], "seeds": 3},
    "sweep": {"opts": [f"momentum:lr={0.001 * 300 ** (i / 15):.6g}" for i in range(16)], "seeds": 1},
}


def compare(workload: str, population: bool, out: Path, args: argparse.Namespace) -> dict:
    spec = WORKLOADS[workload]
    command = [sys.executable, "-c", "import sys; from sgdlab.cli import main; sys.exit(main())", "compare",
               "--task", args.task, "--seeds", str(spec["seeds"]), "--out", str(out), "--no-progress"]
    for opt in spec["opts"]:
        command += ["--opt", opt]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    if args.cluster:
        command += ["--cluster", args.cluster]
    if not population:
        command.append("--no-population")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    runs = len({json.loads(line)["run"] for line in (out / "runs.jsonl").read_text().splitlines()})
    race = re.search(r"(\d+) runs in ([\d.]+) s", done.stdout)
    return {"wall_s": round(wall, 2), "race_s": float(race.group(2)) if race else None, "runs": runs,
            "runs_per_min": round(runs / wall * 60, 2), "notes": [line for line in done.stderr.splitlines()
                                                                 if "warning" in line]}


def records(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    return {(r["run"], r["epoch"], r["step"]): r for r in rows}


def largest_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise SystemExit(f"different records: {len(a.keys() ^ b.keys())} keys differ")
    worst = 0.0
    for key, ra in a.items():
        for field, value in ra.items():
            other = b[key][field]
            if field == "time":
                continue
            if isinstance(value, float) and isinstance(other, float):
                worst = max(worst, abs(value - other))
            elif value != other:
                raise SystemExit(f"{key} {field}: {value!r} != {other!r}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the task's)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the usable cores)")
    parser.add_argument("--workloads", default="race,sweep")
    parser.add_argument("--cluster", default=None, help="run both ways on this cluster (sgdlab compare --cluster)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads.split(","):
            result = {}
            for population in (True, False):
                out = Path(tmp) / f"{workload}-{'population' if population else 'alone'}"
                result[population] = compare(workload, population, out, args)
            ratio = result[True]["runs_per_min"] / result[False]["runs_per_min"]
            difference = largest_difference(records(Path(tmp) / f"{workload}-population"),
                                            records(Path(tmp) / f"{workload}-alone"))
            rows.append({"workload": workload, "population": result[True], "one_at_a_time": result[False],
                         "ratio": round(ratio, 2), "max_abs_difference": difference})
            for note in result[True]["notes"]:
                print(f"  ({workload}) {note}")
    print(f"\n{args.task}, epochs {args.epochs or 'task default'}, {os.cpu_count()} CPUs, "
          f"torch threads/worker 1\n")
    print("| workload | runs | population: wall s (race s) | runs/min | one at a time: wall s (race s) | runs/min "
          "| ratio | max |diff| |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        p, o = row["population"], row["one_at_a_time"]
        print(f"| {row['workload']} | {p['runs']} | {p['wall_s']} ({p['race_s']}) | {p['runs_per_min']} | "
              f"{o['wall_s']} ({o['race_s']}) | {o['runs_per_min']} | {row['ratio']}x | "
              f"{row['max_abs_difference']:.2g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if any(not math.isfinite(row["ratio"]) for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
