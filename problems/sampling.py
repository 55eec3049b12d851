"""Per-node mini-batches drawn for all nodes at once.

Each node reads its own data as an endless stream of random permutations of its local sample
indices; a batch is the next ``B`` entries of that stream. Node data sets may have different sizes.
Everything is tensor indexing on the device: no Python loop over nodes.

The permutations are counter-based: epoch ``e`` of robot ``r`` is the argsort of hash(seed, r, e, j)
over its sample slots ``j``. A robot's batches therefore depend only on the seed, its own id and its own
data, never on how many robots share a process or in which order they are stored.
"""

from __future__ import annotations

from typing import Sequence

import torch

from foundation import state
from foundation.counters import MASK32 as _MASK32
from foundation.counters import mix32 as _mix32


def shuffle_keys(seed: int, robots: torch.Tensor, epochs: torch.Tensor, width: int) -> torch.Tensor:
    """(len(robots), width) pseudo-random int64 sort keys, a pure function of (seed, robot, epoch, slot)."""
    device = robots.device
    row = _mix32(torch.full_like(robots, seed & _MASK32) ^ _mix32(robots & _MASK32))
    row = _mix32(row ^ _mix32((epochs + 0x632BE5AB) & _MASK32))
    slots = _mix32((torch.arange(width, device=device) + 0x9E3779B9) & _MASK32)
    return _mix32(row.unsqueeze(1) ^ slots.unsqueeze(0))


class NodeBatchSampler:
    """Shuffled mini-batch indices for N nodes.

    ``node_indices[i]`` holds indices (into a data tensor) that node ``i`` owns.
    ``next_indices(B)`` returns a (N, B) tensor of data indices, one batch per node.
    ``epochs[i]`` counts completed passes over node ``i``'s data; ``samples_seen[i]`` the
    samples it has processed.
    """

    def __init__(self, node_indices: Sequence[torch.Tensor], device: str | torch.device = "cpu",
                 seed: int = 0, robot_ids: Sequence[int] | None = None):
        self.device = torch.device(device)
        self.num_nodes = len(node_indices)
        sizes = [len(ix) for ix in node_indices]
        if min(sizes) < 1:
            empty = sizes.index(min(sizes))
            raise ValueError(f"node {empty} has no training data")
        self.sizes = torch.tensor(sizes, device=self.device)
        width = max(sizes)
        table = torch.zeros(self.num_nodes, width, dtype=torch.long)
        for i, ix in enumerate(node_indices):
            table[i, :len(ix)] = torch.as_tensor(ix, dtype=torch.long)
        self.table = table.to(self.device)
        self.seed = int(seed)
        ids = range(self.num_nodes) if robot_ids is None else robot_ids
        self.robot_ids = torch.as_tensor(list(ids), dtype=torch.long, device=self.device)
        self.position = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        self.epochs = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        self.samples_seen = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        every = torch.arange(self.num_nodes, device=self.device)
        self.current = self._permutations(every, self.epochs)
        self.upcoming = self._permutations(every, self.epochs + 1)

    def _permutations(self, rows: torch.Tensor, epochs: torch.Tensor) -> torch.Tensor:
        """Each requested node's permutation of ``range(size_i)`` for the given epoch, padded at the end."""
        width = self.table.shape[1]
        keys = shuffle_keys(self.seed, self.robot_ids[rows], epochs, width)
        valid = torch.arange(width, device=self.device) < self.sizes[rows].unsqueeze(1)
        keys = torch.where(valid, keys, torch.full_like(keys, 1 << 40))
        return torch.argsort(keys, dim=1, stable=True)

    def next_indices(self, batch_size: int) -> torch.Tensor:
        if batch_size > int(self.sizes.min()):
            node = int(torch.argmin(self.sizes))
            raise ValueError(f"batch size {batch_size} is larger than node {node}'s "
                             f"{int(self.sizes[node])} training samples")
        offsets = self.position.unsqueeze(1) + torch.arange(batch_size, device=self.device)
        sizes = self.sizes.unsqueeze(1)
        wrapped = offsets >= sizes
        local = torch.where(
            wrapped,
            torch.gather(self.upcoming, 1, torch.where(wrapped, offsets - sizes, 0)),
            torch.gather(self.current, 1, torch.where(wrapped, 0, offsets)),
        )
        self.position += batch_size
        self.samples_seen += batch_size
        finished = self.position >= self.sizes
        if bool(finished.any()):
            rows = torch.nonzero(finished).squeeze(1)
            self.position[rows] -= self.sizes[rows]
            self.epochs[rows] += 1
            self.current[rows] = self.upcoming[rows]
            self.upcoming[rows] = self._permutations(rows, self.epochs[rows] + 1)
        return torch.gather(self.table, 1, local)

    # the permutations are a function of the epochs (counter-based), so they are not saved: the state is
    # the same whatever the block's widest robot, and a robot's rows can move to another block
    _stream_state = ("position", "epochs", "samples_seen")

    def state_dict(self) -> dict:
        return state.capture(self, self._stream_state)

    def load_state_dict(self, saved: dict) -> None:
        state.restore(self, {k: saved[k] for k in self._stream_state})
        every = torch.arange(self.num_nodes, device=self.device)
        self.current = self._permutations(every, self.epochs)
        self.upcoming = self._permutations(every, self.epochs + 1)
