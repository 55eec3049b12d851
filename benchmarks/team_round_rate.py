"""Rounds per second of a team of robot processes (``experiments/team.py``, one process per robot over Zenoh on this
machine) against the one-process run of the same config, each pair measured alone, one after the other.

    venv/bin/python benchmarks/team_round_rate.py [--config experiments/configs/mnist_demo.yaml] [--pairs dinno,dsgt]
                                                  [--rounds 300] [--set KEY=VALUE ...]

A pair's rate is its rounds over its training seconds as its manifest records them (for the team: the slowest
robot's; neither counts starting the processes or loading the data). Both runs take one thread per process
(``experiment.threads=1``) and evaluate only at the end. The target is a team at least 1/3 of the one-process rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pair_rates(folder: Path) -> dict[str, tuple[int, float]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {p["problem_name"]: (p.get("rounds_completed", 0), p.get("seconds", 0.0)) for p in manifest["pairs"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "configs" / "mnist_demo.yaml"))
    parser.add_argument("--pairs", default="dinno,dsgt")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    common = ["--rounds", str(args.rounds), "--eval-every", str(args.rounds), "--set", "experiment.threads=1",
              "--set", "experiment.centralized=false"] + [x for o in args.overrides for x in ("--set", o)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs.split(","):
            one, team = Path(tmp) / f"one_{pair}", Path(tmp) / f"team_{pair}"
            start = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), args.config, "--output-dir", str(one),
                            "--pairs", pair, "--quiet", *common], check=True, stdout=subprocess.DEVNULL)
            one_wall = time.perf_counter() - start
            start = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "experiments" / "team.py"), args.config, "--output-dir",
                            str(team), "--pairs", pair, "--quiet", *common], check=True, stdout=subprocess.DEVNULL)
            team_wall = time.perf_counter() - start
            (r1, s1), (r2, s2) = pair_rates(one)[pair], pair_rates(team)[pair]
            facts = json.loads((team / "manifest.json").read_text())["pairs"][0].get("team", {})
            rows.append((pair, r1 / s1, r2 / s2, one_wall, team_wall, facts))
    print(f"{'pair':8} {'one process (rounds/s)':>24} {'team (rounds/s)':>17} {'team / one':>11} "
          f"{'wall one / team (s)':>20}  team messages")
    for pair, one_rate, team_rate, one_wall, team_wall, facts in rows:
        used = {k: v for k, v in facts.items() if k in ("used_fresh", "used_held", "missing")}
        print(f"{pair:8} {one_rate:24.2f} {team_rate:17.2f} {team_rate / one_rate:11.2f} "
              f"{one_wall:9.1f} / {team_wall:8.1f}  {used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
