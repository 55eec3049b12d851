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


class EvaluationLog:
    """One pair's (or one tuning trial's) event file in ``folder``."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, round_index: int, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            spec = METRICS.get(name)
            if spec is None or not spec.scalar or name == "bytes_sent":
                continue
            values = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
            values = values[~values.isnan()]
            if values.numel() == 0:
                continue
            self.writer.add_scalar(f"{name}/mean", float(values.mean()), round_index)
            if spec.better is not None and values.numel() > 1:
                worst = values.min() if spec.better == "higher" else values.max()
                self.writer.add_scalar(f"{name}/worst_robot", float(worst), round_index)
        if "bytes_sent" in metrics:
            sent = torch.as_tensor(metrics["bytes_sent"], dtype=torch.float64).reshape(-1)
            self.writer.add_scalar("megabytes_sent/mean", float(sent.mean()) / 1e6, round_index)
        if "wall_time" in metrics:
            self.writer.add_scalar("seconds", float(metrics["wall_time"]), round_index)
        mesh = metrics.get("mesh_grid_density")
        if mesh is not None:
            self.writer.add_image("map/robot_0", torch.as_tensor(mesh)[0].clamp(0, 1).unsqueeze(0), round_index,
                                  dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
