"""Per-round learning-rate schedules."""

from __future__ import annotations

import numpy as np

LR_DECAY_TYPES = ("constant", "linear", "log")


def learning_rates(kind: str, start: float, finish: float, rounds: int, decay_rounds: int | None = None) -> np.ndarray:
    """Learning rate of each of ``rounds`` rounds: constant ``start``, or linear / log-spaced from ``start`` to
    ``finish`` over ``decay_rounds`` rounds (default: all of them), then ``finish``; a schedule longer than the run
    is cut at its last round."""
    if kind == "constant":
        return np.full(rounds, start, dtype=np.float64)
    span = rounds if decay_rounds is None else int(decay_rounds)
    if kind == "linear":
        decay = np.linspace(start, finish, span)
    elif kind == "log":
        if start <= 0 or finish <= 0:
            raise ValueError("lr_decay_type log needs positive primal_lr_start and primal_lr_finish")
        decay = np.logspace(np.log10(start), np.log10(finish), span)
    else:
        raise ValueError(f"unknown lr_decay_type {kind!r}; allowed: {', '.join(LR_DECAY_TYPES)}")
    if span >= rounds:
        return decay[:rounds]
    return np.concatenate([decay, np.full(rounds - span, finish, dtype=np.float64)])
