"""Checkpointable state of training objects, as plain data that ``torch.load(weights_only=True)`` reads.

``capture(obj, names)`` records the named attributes of ``obj``: tensors, numbers, strings, numpy arrays,
``torch.Generator`` states, ``torch.optim`` optimizers, objects with ``state_dict`` / ``load_state_dict``
and lists / tuples / dicts of these.
``restore(obj, state)`` puts them back: generators and optimizers are loaded into the objects ``obj``
already holds (so a freshly set-up object continues exactly where the captured one stopped).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

_GENERATOR = "__generator_state__"
_OPTIMIZER = "__optimizer_state__"
_NDARRAY = "__ndarray__"
_STATEFUL = "__state_dict__"


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return {_GENERATOR: value.get_state()}
    if isinstance(value, torch.optim.Optimizer):
        return {_OPTIMIZER: value.state_dict()}
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict") and not isinstance(value, torch.nn.Module):
        return {_STATEFUL: _encode(value.state_dict())}
    if isinstance(value, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def _decode(stored: Any, current: Any) -> Any:
    if isinstance(stored, dict) and _GENERATOR in stored:
        current.set_state(stored[_GENERATOR])
        return current
    if isinstance(stored, dict) and _OPTIMIZER in stored:
        current.load_state_dict(stored[_OPTIMIZER])
        return current
    if isinstance(stored, dict) and _STATEFUL in stored:
        current.load_state_dict(_decode(stored[_STATEFUL], None))
        return current
    if isinstance(stored, dict) and _NDARRAY in stored:
        return stored[_NDARRAY].numpy()
    if isinstance(stored, torch.Tensor) and isinstance(current, torch.Tensor):
        return stored.to(device=current.device, dtype=current.dtype)
    if isinstance(stored, (list, tuple)):
        return type(stored)(_decode(v, None) for v in stored)
    if isinstance(stored, dict):
        old = current if isinstance(current, dict) else {}
        return {k: _decode(v, old.get(k)) for k, v in stored.items()}
    return stored


def capture(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    return {name: _encode(getattr(obj, name)) for name in names if hasattr(obj, name)}


def restore(obj: Any, state: dict[str, Any]) -> None:
    for name, stored in state.items():
        current = getattr(obj, name, None)
        value = _decode(stored, current)
        if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor) and current.shape == value.shape:
            current.copy_(value)  # keep tensors that others hold a reference to (e.g. theta)
        else:
            setattr(obj, name, value)


# ----------------------------------------------------------------- state of a block of robots
# Under torch.distributed each process holds a block of the robots: rows start..stop-1 of the team's
# per-robot tensors. A checkpoint keeps every block's state; resuming on another number of processes
# joins the blocks into the team's state and takes each new block's rows. Per robot is any tensor whose
# first dimension is the block's number of robots (parameters, duals, trackers, Adam moments, batch
# streams); anything else (round counters, step sizes, schedules) is the same in every block.


def _per_robot(value: Any, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows


def join_blocks(parts: list[tuple[int, int, Any]]) -> Any:
    """The team's state from ``(start, stop, state)`` of every block (in any order): per-robot tensors
    concatenated in robot order, everything else from the first block."""
    parts = sorted(parts, key=lambda p: p[0])
    values = [p[2] for p in parts]
    first = values[0]
    if isinstance(first, torch.Tensor):
        if all(_per_robot(v, stop - start) for start, stop, v in parts):
            return torch.cat(values)
        return first
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
        return {k: join_blocks([(s, e, v[k]) for s, e, v in parts if isinstance(v, dict) and k in v])
                for k in keys}
    if isinstance(first, (list, tuple)) and all(isinstance(v, type(first)) and len(v) == len(first) for v in values):
        return type(first)(join_blocks([(s, e, v[i]) for s, e, v in parts]) for i in range(len(first)))
    return first


def take_block(team: Any, start: int, stop: int, total: int) -> Any:
    """The rows start..stop-1 of every per-robot tensor of the team's state ``team`` (``total`` robots)."""
    if isinstance(team, torch.Tensor):
        return team[start:stop].clone() if _per_robot(team, total) else team
    if isinstance(team, dict):
        return {k: take_block(v, start, stop, total) for k, v in team.items()}
    if isinstance(team, (list, tuple)):
        return type(team)(take_block(v, start, stop, total) for v in team)
    return team
