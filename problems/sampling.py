"""Per-node mini-batches drawn for all nodes at once.

Each node reads its own data as an endless stream of independent random permutations of its
local sample indices; a batch is the next ``B`` entries of that stream. Node data sets may have
different sizes. Everything is tensor indexing on the device: no Python loop over nodes.
"""

from __future__ import annotations

from typing import Sequence

import torch

from optimizers import state


class NodeBatchSampler:
    """Shuffled mini-batch indices for N nodes.

    ``node_indices[i]`` holds indices (into a data tensor) that node ``i`` owns.
    ``next_indices(B)`` returns a (N, B) tensor of data indices, one batch per node.
    ``epochs[i]`` counts completed passes over node ``i``'s data; ``samples_seen[i]`` the
    samples it has processed.
    """

    def __init__(self, node_indices: Sequence[torch.Tensor], device: str | torch.device = "cpu",
                 seed: int = 0):
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
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.position = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        self.epochs = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        self.samples_seen = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        self.current = self._permutations(torch.arange(self.num_nodes))
        self.upcoming = self._permutations(torch.arange(self.num_nodes))

    def _permutations(self, rows: torch.Tensor) -> torch.Tensor:
        """A random permutation of ``range(size_i)`` for each requested node, padded at the end."""
        width = self.table.shape[1]
        keys = torch.rand(len(rows), width, generator=self.generator).to(self.device)
        valid = torch.arange(width, device=self.device) < self.sizes[rows.to(self.device)].unsqueeze(1)
        keys = torch.where(valid, keys, torch.full_like(keys, 2.0))
        return torch.argsort(keys, dim=1)

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
            self.upcoming[rows] = self._permutations(rows.cpu())
        return torch.gather(self.table, 1, local)

    _stream_state = ("generator", "position", "epochs", "samples_seen", "current", "upcoming")

    def state_dict(self) -> dict:
        return state.capture(self, self._stream_state)

    def load_state_dict(self, saved: dict) -> None:
        state.restore(self, saved)
