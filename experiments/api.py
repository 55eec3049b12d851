"""Run configs and read their results from Python (a notebook, a script) without a subprocess.

    from experiments import api
    folder = api.run("experiments/configs/mnist_demo.yaml", overrides=["problem_configs.*.optimizer_config.outer_iterations=50"])
    results = api.load(folder)
    results.summary                      # summary.csv as a pandas DataFrame, one row per pair
    results.metrics                      # every pair's <pair>_metrics.csv in one frame, with a "pair" column

``run`` does what ``experiments/run.py`` does (the same validation, output folder, files and exit statuses) and
returns the output folder; a run that would exit non-zero raises :class:`RunError` with its status and its error line.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml


class RunError(RuntimeError):
    """A run that ended with a non-zero exit status (2: refused before anything ran, 1: a pair failed or diverged,
    130: interrupted)."""

    def __init__(self, status: int, message: str, folder: Path | None):
        super().__init__(f"run ended with exit status {status}: {message}")
        self.status, self.folder = status, folder


def run(config: str | Path | dict, output_dir: str | Path | None = None, overrides: Sequence[str] = (),
        quiet: bool = True, device: str | None = None, pairs: Sequence[str] | None = None) -> Path:
    """Run ``config`` (a YAML path or a config mapping) with ``overrides`` (``dotted.key=value``, as ``--set``) into
    ``output_dir`` (default: a new ``<output_metadir>/<timestamp>_<name>/``); returns the output folder. ``quiet``:
    nothing is printed (run.py's notes, progress and table are not shown; they are in the folder)."""
    from experiments import runner
    from experiments.config import load_yaml
    from experiments.kinds.base import resolve_path
    from experiments.run_record import DEFAULT_OUTPUT_DIR, new_output_dir

    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(config, dict):
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        else:
            path = Path(config)
        if output_dir is None:
            raw = load_yaml(path) if path.is_file() else {}
            experiment = raw.get("experiment") if isinstance(raw, dict) else None
            experiment = experiment if isinstance(experiment, dict) else {}
            base = resolve_path(experiment.get("output_metadir"), DEFAULT_OUTPUT_DIR)
            output_dir = new_output_dir(base, str(experiment.get("name", "run")))
        folder = Path(output_dir).resolve()
        argv = [str(path), "--output-dir", str(folder)]
        argv += [arg for item in overrides for arg in ("--set", item)]
        if quiet:
            argv.append("--quiet")
        if device is not None:
            argv += ["--device", device]
        if pairs:
            argv += ["--pairs", ",".join(pairs)]
        errors = io.StringIO()
        with contextlib.ExitStack() as quieted:
            if quiet:  # nothing printed: the table is in the folder, an error comes back as RunError
                quieted.enter_context(contextlib.redirect_stderr(errors))
                quieted.enter_context(contextlib.redirect_stdout(io.StringIO()))
            status = runner.main(argv)
    if status != 0:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else "see the output above"
        raise RunError(status, message, folder if folder.exists() else None)
    return folder


@dataclass
class RunResults:
    """An output folder of ``run.py``, read: its manifest, resolved config, summary and per-round metrics."""

    folder: Path
    manifest: dict
    config: dict
    summary: Any  # pandas.DataFrame
    metrics: Any  # pandas.DataFrame: every pair's rows, with a "pair" column

    def history(self, pair: str) -> dict:
        """``<pair>_results.pt``: every recorded metric at every evaluation (tensors included). ``pair`` is one of
        the manifest's problem names (a KeyError names the ones there are)."""
        import torch

        names = [p.get("problem_name") for p in self.manifest.get("pairs", [])]
        if pair not in names:
            raise KeyError(f"{pair!r} is not a pair of {self.folder}; its pairs: {', '.join(map(str, names))}")
        return torch.load(self.folder / f"{pair}_results.pt", weights_only=True)


def load(folder: str | Path) -> RunResults:
    """Read an output folder of ``run.py`` (a finished or an interrupted one)."""
    import pandas as pd

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not an output folder of run.py (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    summary = pd.read_csv(folder / "summary.csv") if (folder / "summary.csv").is_file() else pd.DataFrame()
    frames = []
    for pair in manifest.get("pairs", []):
        path = folder / f"{pair['problem_name']}_metrics.csv"
        if path.is_file():
            frames.append(pd.read_csv(path).assign(pair=pair["problem_name"]))
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return RunResults(folder, manifest, config, summary, metrics)
