"""TensorBoard event files of a pair (``experiment.tensorboard: true`` or ``run.py --tensorboard``).

At every evaluation: the node mean and the worst robot of every scalar metric of the catalogue
(``problems/metrics.py``: the worst robot is the lowest accuracy, the highest loss), the megabytes each
robot sent (mean), the training seconds, and for density runs robot 0's map as an image whenever the
mesh was kept. ``tensorboard --logdir experiments/outputs`` then compares runs and pairs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from foundation.schema import ConfigError
from problems.metrics import METRICS

INSTALL = "pip install tensorboard==2.21.0"


def check_available(where: str) -> None:
    """One clear line when TensorBoard is asked for but its package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(f"{where}: TensorBoard event files need the tensorboard package ({INSTALL})") from None


def evaluation_scalars(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """What an evaluation reports to a tracker: every scalar metric's node mean (``<name>/mean``) and worst robot
    (``<name>/worst_robot``: the lowest accuracy, the highest loss), the megabytes each robot sent (mean) and the
    training seconds."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        spec = METRICS.get(name)
        if spec is None or not spec.scalar or name == "bytes_sent":
            continue
        values = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        values = values[~values.isnan()]
        if values.numel() == 0:
            continue
        out[f"{name}/mean"] = float(values.mean())
        if spec.better is not None and values.numel() > 1:
            out[f"{name}/worst_robot"] = float(values.min() if spec.better == "higher" else values.max())
    if "bytes_sent" in metrics:
        out["megabytes_sent/mean"] = float(torch.as_tensor(metrics["bytes_sent"], dtype=torch.float64).mean()) / 1e6
    if "wall_time" in metrics:
        out["seconds"] = float(metrics["wall_time"])
    return out


class EvaluationLog:
    """One pair's (or one tuning trial's) event file in ``folder``."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, round_index: int, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in evaluation_scalars(metrics).items():
            self.writer.add_scalar(name, value, round_index)
        mesh = metrics.get("mesh_grid_density")
        if mesh is not None:
            self.writer.add_image("map/robot_0", torch.as_tensor(mesh)[0].clamp(0, 1).unsqueeze(0), round_index,
                                  dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
