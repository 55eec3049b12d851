"""Execute the shipped notebooks on small runs of the shipped configs and store their outputs, so that a reader who
browses the repository sees every picture (``make notebooks``).

    venv/bin/python -m experiments.refresh_notebooks [--keep DIR] [--only NAME ...]

The runs (into a temporary folder, or ``--keep DIR``): the MNIST demo and the density demo cut short, a small
scaling sweep, and the paper's RL setup cut short (DiNNO and the centralized policy). The lidar and planner examples
need no run. Each notebook is executed from the repository root and written back in place with its outputs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "experiments" / "configs"

SWEEP = {
    "experiment": {"name": "notebook_sweep", "dataset": "auto", "validation_size": 1000, "execution": "grouped",
                   "scaling": {"const": "num_nodes", "num_nodes": 10, "min_fied": 0.2, "max_fied": 2.0,
                               "num_trials": 4, "target_accuracy": 0.6}},
    "problem_configs": {
        "dsgd": {"problem_name": "dsgd", "train_batch_size": 32, "metrics_config": {"evaluate_frequency": 20},
                 "optimizer_config": {"alg_name": "dsgd", "outer_iterations": 200, "alpha0": 0.05}},
        "dsgt": {"problem_name": "dsgt", "train_batch_size": 32, "metrics_config": {"evaluate_frequency": 20},
                 "optimizer_config": {"alg_name": "dsgt", "outer_iterations": 200, "alpha": 0.02}},
    },
}


def runs(base: Path) -> dict[str, Path]:
    """The small runs the results notebooks draw: {notebook: output folder}."""
    from experiments import api

    out = {}
    out["mnist"] = api.run(CONFIGS / "mnist_demo.yaml", output_dir=base / "mnist",
                           overrides=["problem_configs.*.optimizer_config.outer_iterations=300",
                                      "problem_configs.*.metrics_config.evaluate_frequency=20"])
    out["density"] = api.run(CONFIGS / "density_demo.yaml", output_dir=base / "density",
                             overrides=["problem_configs.*.optimizer_config.outer_iterations=300",
                                        "problem_configs.*.metrics_config.evaluate_frequency=50",
                                        "experiment.individual_training.epochs=2"])
    out["scaling"] = api.run(SWEEP, output_dir=base / "scaling")
    out["rl"] = api.run(CONFIGS / "rl_tag_paper.yaml", output_dir=base / "rl", pairs=["dinno", "centralized"],
                        overrides=["problem_configs.*.optimizer_config.outer_iterations=300",
                                   "experiment.individual_training.rounds=300"])
    return out


NOTEBOOKS = {"mnist": "visualization/mnist.ipynb", "density": "visualization/density.ipynb",
             "scaling": "visualization/scaling.ipynb", "rl": "visualization/rl.ipynb",
             "lidar": "lidar/lidar_example.ipynb", "planner": "planner/planner_example.ipynb"}


def execute(path: Path, env: dict[str, str], timeout: int = 600) -> None:
    """Run ``path`` from the repository root with ``env`` set, and write it back with its outputs."""
    import nbclient
    import nbformat

    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    from foundation.results_io import write_text

    write_text(path, nbformat.writes(nb))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the runs here (default: a temporary folder, deleted at the end)")
    parser.add_argument("--only", nargs="+", choices=list(NOTEBOOKS), help="refresh these notebooks only")
    args = parser.parse_args(argv)
    wanted = args.only or list(NOTEBOOKS)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        folders = runs(base) if any(name in wanted for name in ("mnist", "density", "scaling", "rl")) else {}
        for name in wanted:
            env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
            if name in folders:
                env["NNDT_RESULTS"] = str(folders[name])
            else:
                env["NNDT_FIGURE_DIR"] = str(base / f"{name}_figures")
            execute(REPO / NOTEBOOKS[name], env)
            print(f"refreshed {NOTEBOOKS[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
