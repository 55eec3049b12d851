"""Per-round learning-rate schedules."""

from __future__ import annotations

import numpy as np

LR_DECAY_TYPES = ("constant", "linear", "log")


def learning_rates(kind: str, start: float, finish: float, rounds: int) -> np.ndarray:
    """Learning rate of each round: constant ``start``, or linear / log-spaced from ``start`` to ``finish``."""
    if kind == "constant":
        return np.full(rounds, start, dtype=np.float64)
    if kind == "linear":
        return np.linspace(start, finish, rounds)
    if kind == "log":
        if start <= 0 or finish <= 0:
            raise ValueError("lr_decay_type log needs positive primal_lr_start and primal_lr_finish")
        return np.logspace(np.log10(start), np.log10(finish), rounds)
    raise ValueError(f"unknown lr_decay_type {kind!r}; allowed: {', '.join(LR_DECAY_TYPES)}")
