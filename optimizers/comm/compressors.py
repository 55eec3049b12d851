"""Message compressors Q(x), applied row-wise to a node stack, with the bytes one compressed row costs.

``compressor: {name: ..., ...}`` in an optimizer config picks one; each class below carries its own
``config_schema`` and the registry ``COMPRESSORS`` lists them (a new compressor is one class plus one entry).

- ``identity``: the dense row, n floats.
- ``top_k`` (``fraction``, ``scope``): the k = ceil(fraction n) largest-magnitude entries; k values + k int32
  indices.
- ``random_k`` (``fraction``, ``scope``, ``seed``): k entries chosen uniformly at random; k values + k indices.
- ``qsgd`` (``levels`` s or ``bits`` b, ``scope``, ``seed``): QSGD's stochastic rounding of |x_j| / ||x|| to
  one of s + 1 levels {0, 1/s, ..., 1} (b bits give s = 2^b - 1 levels), times sign(x_j) ||x||, then scaled
  by 1 / tau with tau = 1 + min(n / s^2, sqrt(n) / s): the unbiased QSGD message has variance up to
  (tau - 1) ||x||^2, and dividing by tau makes it a contraction, E||Q(x) - x||^2 <= (1 - 1/tau) ||x||^2
  (Koloskova et al. 2019), which compressed gossip needs. Per entry a sign bit and ceil(log2(s + 1)) level
  bits, plus the norm as one float.
- ``sign``: sign(x) times the row's mean absolute value; n bits plus one float.

``scope``: ``row`` (default) compresses a node's whole parameter row as one vector (one k, one norm);
``tensor`` compresses each parameter tensor of the model on its own (k = ceil(fraction n_t) entries of every
tensor, one norm per tensor), as reference implementations of CHOCO-SGD do. A whole-row top-k can leave
small-valued layers out of every message; per tensor, every layer sends its share.

Random choices are counter-based (:class:`foundation.counters.CounterStream`): the optimizer holds
``compressor.stream(robot_ids)`` as an attribute and passes it to every call, so a robot's draws depend
on the seed, the call and its own id, never on which process hosts it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from foundation.counters import CounterStream
from foundation.schema import (
    AT_LEAST_ONE,
    OPTIONAL,
    REQUIRED,
    ConfigError,
    Custom,
    Range,
    Str,
    did_you_mean,
    validate_mapping,
)

FRACTION = Range(0.0, 1.0, low_open=True)
SEED = Range(0, 2**32 - 1)
INDEX_BYTES = 4
SCOPES = ("row", "tensor")


class Compressor:
    """A compressor of rows; ``segments`` (the sizes of the model's parameter tensors, in row order) is what
    ``scope: tensor`` compresses one by one."""

    name = ""
    config_schema: dict = {}

    @classmethod
    def settle(cls, prefix: str, params: dict) -> dict:
        """Checks across its keys and the defaults that depend on them, for validated ``params`` (a one-line
        ConfigError naming ``prefix``); the params to build it from."""
        return params

    def __init__(self, segments: Sequence[int] | None = None, **params):
        self.params = params
        self.segments = list(segments) if segments is not None and params.get("scope") == "tensor" else None

    def stream(self, robots) -> CounterStream | None:
        """The draws of the random compressors for the robots ``robots`` (global ids; None for the
        deterministic compressors)."""
        return CounterStream(int(self.params["seed"]), robots) if "seed" in self.params else None

    def __call__(self, x: torch.Tensor, stream: CounterStream | None = None) -> torch.Tensor:
        draws = None
        if "seed" in self.params:
            if stream is None:
                raise ValueError("a random compressor needs its stream of draws (compressor.stream(robots))")
            draws = stream.uniform(x.shape[1], x.dtype, x.device)  # one call per message, whatever the scope
        if self.segments is None:
            return self.compress(x, draws)
        self._check_segments(x.shape[1])
        out, start = torch.empty_like(x), 0
        for size in self.segments:
            part = slice(start, start + size)
            out[:, part] = self.compress(x[:, part], None if draws is None else draws[:, part])
            start += size
        return out

    def compress(self, x: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
        """Q of every row of ``x`` (one vector each), given uniform ``draws`` shaped like x (random ones)."""
        raise NotImplementedError

    def row_bytes(self, n: int, value_bytes: int) -> int:
        """What one compressed row of ``n`` entries costs on the radio."""
        if self.segments is None:
            return self.vector_bytes(n, value_bytes)
        self._check_segments(n)
        return sum(self.vector_bytes(size, value_bytes) for size in self.segments)

    def vector_bytes(self, n: int, value_bytes: int) -> int:
        raise NotImplementedError

    def _check_segments(self, n: int) -> None:
        assert self.segments is not None  # called only for a compressor with tensor segments
        if sum(self.segments) != n:
            raise ValueError(f"{self.name}: the tensor sizes add up to {sum(self.segments)}, the rows have {n} entries")

    def _k(self, n: int) -> int:
        return max(1, math.ceil(self.params["fraction"] * n))


class Identity(Compressor):
    name = "identity"

    def compress(self, x, draws):
        return x.clone()

    def vector_bytes(self, n, value_bytes):
        return n * value_bytes


class TopK(Compressor):
    name = "top_k"
    config_schema = {"fraction": (float, 0.01, FRACTION), "scope": (SCOPES, "row")}

    def compress(self, x, draws):
        return self._keep(x, x.abs().topk(self._k(x.shape[1]), dim=1).indices)

    @staticmethod
    def _keep(x, idx):
        return torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))

    def vector_bytes(self, n, value_bytes):
        return self._k(n) * (value_bytes + INDEX_BYTES)


class RandomK(TopK):
    name = "random_k"
    config_schema = {**TopK.config_schema, "seed": (int, 0, SEED)}

    def compress(self, x, draws):
        return self._keep(x, draws.topk(self._k(x.shape[1]), dim=1).indices)  # k distinct uniform positions


class QSGD(Compressor):
    name = "qsgd"
    config_schema = {"levels": (int, OPTIONAL, AT_LEAST_ONE), "bits": (int, OPTIONAL, Range(1, 30)),
                     "scope": (SCOPES, "row"), "seed": (int, 0, SEED)}
    DEFAULT_LEVELS = 16

    @classmethod
    def settle(cls, prefix: str, params: dict) -> dict:
        if params.get("levels") is not None and params.get("bits") is not None:
            raise ConfigError(f"{prefix}: give qsgd either levels or bits, not both")
        if params.get("levels") is None and params.get("bits") is None:
            params = {**params, "levels": cls.DEFAULT_LEVELS}
        return params

    @property
    def levels(self) -> int:
        return self.params["levels"] if self.params.get("levels") is not None else 2 ** self.params["bits"] - 1

    def compress(self, x, draws):
        s, n = self.levels, x.shape[1]
        norm = x.norm(dim=1, keepdim=True)
        scaled = s * x.abs() / norm.clamp_min(torch.finfo(x.dtype).tiny)
        level = scaled.floor() + (draws < scaled - scaled.floor()).to(x.dtype)
        return norm * x.sign() * level / (s * self.tau(n))

    def tau(self, n: int) -> float:
        s = self.levels
        return 1.0 + min(n / s**2, math.sqrt(n) / s)

    def vector_bytes(self, n, value_bytes):
        bits = n * (1 + math.ceil(math.log2(self.levels + 1)))
        return math.ceil(bits / 8) + value_bytes


class Sign(Compressor):
    name = "sign"

    def compress(self, x, draws):
        return x.sign() * x.abs().mean(dim=1, keepdim=True)

    def vector_bytes(self, n, value_bytes):
        return math.ceil(n / 8) + value_bytes


COMPRESSORS = {cls.name: cls for cls in (Identity, TopK, RandomK, QSGD, Sign)}


def validate_compressor(prefix: str, data) -> dict:
    """``{name: ..., <that compressor's keys>}``, checked against the compressor's own schema."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping such as {{name: top_k, fraction: 0.01}}, got {data!r}")
    name = data.get("name")
    if name not in COMPRESSORS:
        raise ConfigError(f"{prefix}.name: {name!r} is not allowed{did_you_mean(name, COMPRESSORS)}; "
                          f"allowed: {', '.join(COMPRESSORS)}")
    out = validate_mapping(prefix, {"name": (Str, REQUIRED), **COMPRESSORS[name].config_schema}, data)
    return COMPRESSORS[name].settle(prefix, out)


COMPRESSOR = Custom(validate_compressor)  # the schema kind of an optimizer's ``compressor`` key


def make_compressor(config: dict | None, segments: Sequence[int] | None = None) -> Compressor:
    """A compressor from a validated ``{name: ..., ...}`` mapping (None: identity); ``segments``, the sizes of
    the model's parameter tensors, for ``scope: tensor``."""
    config = dict(config or {"name": "identity"})
    name = config.pop("name")
    cls = COMPRESSORS[name]
    defaults = {k: spec[1] for k, spec in cls.config_schema.items()}
    params = cls.settle(name, {**defaults, **config})
    if params.get("scope") == "tensor" and segments is None:
        raise ValueError(f"{name} with scope: tensor needs the sizes of the model's tensors")
    return cls(segments=segments, **params)
