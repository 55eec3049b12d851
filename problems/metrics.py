"""The one catalogue of recorded metrics: what each is, whether it has a row per robot, whether it goes
into the tidy CSV and the summary, and how plots label it.

The runner (CSV columns, ``summary.csv``, the printed table, the progress lines), the gather across
processes (rows per robot are concatenated in robot order on rank 0) and the plots (standard figures, log
axes) read this table; a problem that records a new metric adds one entry here.
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
    log_scale: bool = False  # plotted on a log axis
    figure: bool = False  # a standard figure figures/<name>.png against round
    progress: bool = False  # its range over the robots in the per-evaluation progress lines
    table: tuple = ()  # columns of the printed table: (statistic of summary.csv, header, format) each
    target: float | None = None  # the level tables count rounds and megabytes to (None: none by default)


# The names that code outside the registry refers to
TOP1_ACCURACY = "top1_accuracy"
MEAN_MODEL_TOP1_ACCURACY = "mean_model_top1_accuracy"
VALIDATION_LOSS = "validation_loss"
CONSENSUS_ERROR = "consensus_error"
FORWARD_PASS_COUNT = "forward_pass_count"

METRICS: dict[str, Metric] = {
    FORWARD_PASS_COUNT: Metric("training samples processed", summary=True),
    VALIDATION_LOSS: Metric("validation loss", summary=True, better="lower", figure=True, progress=True,
                              table=(("mean", "val loss (mean)", "{:.4f}"),)),
    "validation_loss_wall": Metric("validation loss on wall points", summary=True, better="lower"),
    "validation_loss_free": Metric("validation loss on free points", summary=True, better="lower"),
    TOP1_ACCURACY: Metric("top-1 accuracy", summary=True, better="higher", figure=True, progress=True,
                            table=(("mean", "top-1 mean", "{:.4f}"), ("min", "top-1 min", "{:.4f}")), target=0.9),
    MEAN_MODEL_TOP1_ACCURACY: Metric("top-1 accuracy of the robots' mean model", per_robot=False, summary=True,
                                       better="higher", figure=True, table=(("mean", "mean model top-1", "{:.4f}"),),
                                       target=0.9),
    "optimality_gap": Metric("optimality gap f(x) - f*", summary=True, better="lower", log_scale=True, figure=True,
                             progress=True, table=(("mean", "gap mean", "{:.3g}"), ("max", "gap worst", "{:.3g}")),
                             target=1e-6),
    "mean_optimality_gap": Metric("optimality gap of the robots' mean, f(mean x) - f*", per_robot=False,
                                  summary=True, better="lower", log_scale=True, figure=True,
                                  table=(("mean", "mean-model gap", "{:.3g}"),), target=1e-6),
    "validation_as_vector": Metric("per-sample correctness on the validation set", scalar=False),
    CONSENSUS_ERROR: Metric("consensus error (unit-normalized parameters)", summary=True, better="lower",
                              log_scale=True, figure=True, progress=True,
                              table=(("mean", "consensus err", "{:.3g}"),)),
    "current_epoch": Metric("passes over the robot's data", summary=True),
    "train_loss_moving_average": Metric("training loss (moving average)", summary=True, better="lower",
                                        progress=True),
    "bytes_sent": Metric("bytes sent", summary=True),
    "messages_dropped": Metric("received messages dropped as non-finite", summary=True),
    "messages_clipped": Metric("received rows clipped by the robust rule", summary=True),
    "robot_resets": Metric("restarts from the neighbourhood after a non-finite state", summary=True),
    "map_balanced_accuracy": Metric("map balanced accuracy", summary=True, better="higher",
                                    table=(("mean", "map bal. acc.", "{:.3f}"),), target=0.9),
    "map_wall_iou": Metric("map wall IoU", summary=True, better="higher", table=(("mean", "wall IoU", "{:.3f}"),)),
    "episode_reward": Metric("team episode reward (training episodes, summed over robots)", per_robot=False,
                             summary=True, better="higher", figure=True, progress=True,
                             table=(("mean", "episode reward", "{:.1f}"),), target=0.0),
    "policy_reward": Metric("team episode reward with every robot playing this robot's policy", summary=True,
                            better="higher", figure=True, progress=True,
                            table=(("mean", "policy reward mean", "{:.1f}"), ("min", "policy reward min", "{:.1f}")),
                            target=0.0),
    "catches_per_episode": Metric("catches per episode (robot-evader contacts, summed over steps)", per_robot=False,
                                  summary=True, better="higher"),
    "timesteps": Metric("timesteps (every agent's turn, as the original counts them)", per_robot=False, summary=True),
    "mesh_grid_density": Metric("density on the mesh grid", scalar=False),
    "current_position": Metric("position", scalar=False),
    "current_graph": Metric("communication graph", per_robot=False, scalar=False),
}

# Views of the registry, read when used (so that an entry added at run time counts too).
def per_robot() -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if m.per_robot)


def csv_columns() -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if m.scalar)


def summary_metrics() -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if m.summary)


def figure_metrics() -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if m.figure)


def progress_metrics() -> tuple[str, ...]:
    return tuple(name for name, m in METRICS.items() if m.progress)


def table_columns() -> tuple[tuple[str, str, str], ...]:
    """(summary.csv column, header, format) of every column the printed table shows."""
    return tuple((f"{name}_{stat}", header, fmt) for name, m in METRICS.items() for stat, header, fmt in m.table)


def label(name: str) -> str:
    """How plots name ``name`` (the name itself for metrics outside the catalogue)."""
    metric = METRICS.get(name)
    return metric.label if metric is not None else name
