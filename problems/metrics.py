"""The one catalogue of recorded metrics: what each is, whether it has a row per robot, whether it goes
into the tidy CSV and the summary, and how plots label it.

The runner (CSV columns, ``summary.csv``, the printed table), the gather across processes (rows per
robot are concatenated in robot order on rank 0) and the plots read this table; a problem kind that
records a new metric adds one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    label: str
    per_robot: bool = True  # one row per robot (gathered across processes); else one value for the team
    scalar: bool = True  # one number (per robot, or for the team) per evaluation: a column of <pair>_metrics.csv
    summary: bool = False  # final mean / min / max in summary.csv and the printed table
    better: str | None = None  # "higher" or "lower": which robot is the worst one (TensorBoard, tuning)


METRICS: dict[str, Metric] = {
    "forward_pass_count": Metric("training samples processed", summary=True),
    "validation_loss": Metric("validation loss", summary=True, better="lower"),
    "validation_loss_wall": Metric("validation loss on wall points", summary=True, better="lower"),
    "validation_loss_free": Metric("validation loss on free points", summary=True, better="lower"),
    "top1_accuracy": Metric("top-1 accuracy", summary=True, better="higher"),
    "mean_model_top1_accuracy": Metric("top-1 accuracy of the robots' mean model", per_robot=False, summary=True,
                                       better="higher"),
    "optimality_gap": Metric("optimality gap f(x) - f*", summary=True, better="lower"),
    "mean_optimality_gap": Metric("optimality gap of the robots' mean, f(mean x) - f*", per_robot=False,
                                  summary=True, better="lower"),
    "validation_as_vector": Metric("per-sample correctness on the validation set", scalar=False),
    "consensus_error": Metric("consensus error (unit-normalized parameters)", summary=True, better="lower"),
    "current_epoch": Metric("passes over the robot's data", summary=True),
    "train_loss_moving_average": Metric("training loss (moving average)", summary=True, better="lower"),
    "bytes_sent": Metric("bytes sent", summary=True),
    "map_balanced_accuracy": Metric("map balanced accuracy", summary=True, better="higher"),
    "map_wall_iou": Metric("map wall IoU", summary=True, better="higher"),
    "mesh_grid_density": Metric("density on the mesh grid", scalar=False),
    "current_position": Metric("position", scalar=False),
    "current_graph": Metric("communication graph", per_robot=False, scalar=False),
}

PER_ROBOT = tuple(name for name, m in METRICS.items() if m.per_robot)
CSV_COLUMNS = tuple(name for name, m in METRICS.items() if m.scalar)
SUMMARY = tuple(name for name, m in METRICS.items() if m.summary)


def label(name: str) -> str:
    """How plots name ``name`` (the name itself for metrics outside the catalogue)."""
    metric = METRICS.get(name)
    return metric.label if metric is not None else name
