"""MLflow tracking of a run's pairs (``experiment.mlflow``: ``true`` for a local store in the output folder,
``OUTPUT_DIR/mlflow.db``, or a tracking URI such as ``http://host:5000`` or ``sqlite:///path.db``).

One MLflow experiment per ``experiment.name``, one MLflow run per pair (named after the pair; tags: the algorithm,
the output folder, the status it ended with). The resolved config goes in as parameters (dotted keys), and every
evaluation the scalars TensorBoard gets (:func:`experiments.tensorboard_log.evaluation_scalars`), by round.
``mlflow ui --backend-store-uri sqlite:///OUTPUT_DIR/mlflow.db`` shows them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from experiments.tensorboard_log import evaluation_scalars
from foundation.schema import ConfigError

INSTALL = "pip install mlflow-skinny==3.18.0"
MAX_PARAM = 500  # characters of a parameter's value kept (MLflow limits them)


def check_available(where: str) -> None:
    """One clear line when MLflow is asked for but its package is missing."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"{where}: MLflow tracking needs the mlflow-skinny package ({INSTALL})") from None


def tracking_uri(setting, out_dir: Path) -> str:
    """The store ``experiment.mlflow`` names (``true``: ``sqlite:///OUTPUT_DIR/mlflow.db``)."""
    if setting is True:
        return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"
    return str(setting)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{dotted}."))
        else:
            out[dotted] = str(value)[:MAX_PARAM]
    return out


class PairTracker:
    """One pair's MLflow run: parameters at the start, scalars at every evaluation, the status at the end."""

    def __init__(self, uri: str, experiment: str, pair: str, alg_name: str, config: dict, out_dir: Path | None):
        import logging

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        tags = {"pair": pair, "alg_name": alg_name, "output_dir": str(out_dir) if out_dir is not None else ""}
        self.run_id = self.client.create_run(experiment_id, run_name=pair, tags=tags).info.run_id
        params = [Param(key, value) for key, value in flat_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, round_index: int, metrics: dict[str, torch.Tensor]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(name.replace("/", "."), value, now, round_index)
                 for name, value in evaluation_scalars(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self, status: str | None) -> None:
        self.client.set_tag(self.run_id, "status", status or "unfinished")
        self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")
