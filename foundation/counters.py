"""Counter-based random numbers: every draw is a pure function of (seed, counters...).

A draw that depends only on the seed and on what it is about (an exchange number, a robot, an edge, a
channel, an entry) is the same whether the robots live in one process or in many, in any order, and it
needs no generator state in a checkpoint beyond the counters themselves. Batch orders, lost messages and
random compressors all draw this way.
"""

from __future__ import annotations

import zlib

import torch

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply), element-wise on int64 tensors holding 32-bit values."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


def code(name: str) -> int:
    """A stable 32-bit number for a name (a channel, say)."""
    return zlib.crc32(name.encode("utf-8")) & MASK32


def hash_keys(seed: int, *keys) -> torch.Tensor:
    """int64 hashes of (seed, key_1, ..., key_m), broadcast over the keys (ints or int64 tensors)."""
    h = mix32(torch.tensor(int(seed) & MASK32, dtype=torch.long))
    for key in keys:
        key = torch.as_tensor(key, dtype=torch.long)
        h = mix32(h ^ mix32((key + _GOLDEN) & MASK32))
    return h


def uniform(seed: int, *keys) -> torch.Tensor:
    """float64 numbers in (0, 1), one per broadcast element of the keys (see :func:`hash_keys`)."""
    return (hash_keys(seed, *keys).to(torch.float64) + 0.5) / 2.0**32


class CounterStream:
    """Uniform draws for a block of robots: call k gives row i the numbers uniform(seed, k, robot_i, j) for
    entries j. The robots' global ids make a robot's draws independent of the block it is in."""

    def __init__(self, seed: int, robots: torch.Tensor):
        self.seed = int(seed)
        self.robots = torch.as_tensor(robots, dtype=torch.long)
        self.calls = 0

    def uniform(self, width: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        self.calls += 1
        values = uniform(self.seed, self.calls, self.robots.unsqueeze(1), torch.arange(width).unsqueeze(0))
        return values.to(dtype=dtype, device=device)

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, saved: dict) -> None:
        self.calls = int(saved["calls"])
