"""Data every problem kind shares: the error for missing or unusable data, and splits of a labelled training
set across robots (random, by class, sorted, Dirichlet)."""

from __future__ import annotations

import numpy as np
import torch

SPLIT_TYPES = ("random", "hetero", "sorted", "dirichlet")
DIRICHLET_TRIES = 100


class DataError(RuntimeError):
    """Missing or unusable data, or an impossible split."""


def _as_label_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one-dimensional (got shape {labels.shape})")
    return labels.astype(np.int64)


def _to_tensors(parts: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.sort(part).astype(np.int64)) for part in parts]


def split_indices(
    labels: torch.Tensor,
    num_nodes: int,
    split_type: str,
    seed: int = 0,
    alpha: float = 0.5,
    min_size: int = 1,
) -> list[torch.Tensor]:
    """Disjoint, covering per-node index sets into the training set (each node's indices sorted ascending).

    random: equal shards of a seeded permutation (the first M % N nodes get one extra);
    hetero: the sorted class list is cut with np.array_split, each node gets all samples of its classes;
    sorted: stable sort by label, cut into N contiguous nearly equal chunks;
    dirichlet: per class, proportions ~ Dirichlet(alpha) over nodes, redrawn until every node has
    at least min_size samples.
    """
    if split_type not in SPLIT_TYPES:
        raise DataError(f"data_split_type {split_type!r} is not one of: {', '.join(SPLIT_TYPES)}")
    y = _as_label_array(labels)
    m = y.shape[0]
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise DataError(f"num_nodes must be an integer >= 1 (got {num_nodes!r})")
    n = int(num_nodes)
    if n > m:
        raise DataError(f"data_split_type {split_type}: {n} nodes but only {m} training samples")
    rng = np.random.default_rng(seed)

    if split_type == "random":
        return _to_tensors(np.array_split(rng.permutation(m), n))

    if split_type == "sorted":
        return _to_tensors(np.array_split(np.argsort(y, kind="stable"), n))

    classes = np.unique(y)
    if split_type == "hetero":
        if n > classes.shape[0]:
            raise DataError(
                f"data_split_type hetero: {n} nodes but only {classes.shape[0]} classes;"
                f" use at most {classes.shape[0]} nodes or split type sorted/dirichlet"
            )
        return _to_tensors([np.flatnonzero(np.isin(y, group)) for group in np.array_split(classes, n)])

    if not alpha > 0:
        raise DataError(f"data_split_type dirichlet: alpha must be > 0 (got {alpha})")
    if min_size < 0 or n * min_size > m:
        raise DataError(
            f"data_split_type dirichlet: min_size {min_size} is impossible for {n} nodes and {m} samples"
        )
    members = [np.flatnonzero(y == cls) for cls in classes]
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in members:
            idx = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(n, float(alpha)))
            cuts = np.floor(np.cumsum(proportions)[:-1] * idx.shape[0]).astype(np.int64)
            for node, piece in enumerate(np.split(idx, cuts)):
                parts[node].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(p.shape[0] for p in merged) >= min_size:
            return _to_tensors(merged)
    raise DataError(
        f"data_split_type dirichlet: no draw in {DIRICHLET_TRIES} gave every one of {n} nodes at least"
        f" {min_size} samples with alpha={alpha:g}; raise alpha or lower min_size or the number of nodes"
    )
