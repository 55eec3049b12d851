"""Message compressors Q(x), applied row-wise to a node stack, with the bytes one compressed row costs.

``compressor: {name: ..., ...}`` in an optimizer config picks one (schemas below, one per name):

- ``identity``: the dense row, n floats.
- ``top_k`` (``fraction``): the k = ceil(fraction n) largest-magnitude entries; k values + k int32 indices.
- ``random_k`` (``fraction``, ``seed``): k entries chosen uniformly at random per row; k values + k indices.
- ``qsgd`` (``levels`` s, ``seed``): QSGD's stochastic rounding of |x_j| / ||x|| to s levels, scaled by
  1 / (1 + min(n / s^2, sqrt(n) / s)) so that it contracts (Koloskova et al. 2019); per entry a sign bit
  and ceil(log2(s + 1)) level bits, plus the norm as one float.
- ``sign``: sign(x) times the row's mean absolute value; n bits plus one float.

Random choices are counter-based (:class:`optimizers.counters.CounterStream`): the optimizer holds
``compressor.stream(robot_ids)`` as an attribute and passes it to every call, so a robot's draws depend
on the seed, the call and its own id, never on which process hosts it.
"""

from __future__ import annotations

import math

import torch

from optimizers.counters import CounterStream
from optimizers.schema import AT_LEAST_ONE, REQUIRED, ConfigError, Custom, Range, Str, did_you_mean, validate_mapping

FRACTION = Range(0.0, 1.0, low_open=True)
SEED = Range(0, 2**32 - 1)
INDEX_BYTES = 4

COMPRESSOR_SCHEMAS = {
    "identity": {},
    "top_k": {"fraction": (float, 0.01, FRACTION)},
    "random_k": {"fraction": (float, 0.01, FRACTION), "seed": (int, 0, SEED)},
    "qsgd": {"levels": (int, 16, AT_LEAST_ONE), "seed": (int, 0, SEED)},
    "sign": {},
}


class Compressor:
    name = ""

    def __init__(self, **params):
        self.params = params

    def stream(self, robots) -> CounterStream | None:
        """The draws of the random compressors for the robots ``robots`` (global ids; None for the
        deterministic compressors)."""
        return CounterStream(int(self.params["seed"]), robots) if "seed" in self.params else None

    def __call__(self, x: torch.Tensor, stream: CounterStream | None = None) -> torch.Tensor:
        raise NotImplementedError

    def row_bytes(self, n: int, value_bytes: int) -> int:
        raise NotImplementedError

    @staticmethod
    def _uniform(x: torch.Tensor, stream: CounterStream) -> torch.Tensor:
        if stream is None:
            raise ValueError("a random compressor needs its stream of draws (compressor.stream(robots))")
        return stream.uniform(x.shape[1], x.dtype, x.device)

    def _k(self, n: int) -> int:
        return max(1, math.ceil(self.params["fraction"] * n))


class Identity(Compressor):
    name = "identity"

    def __call__(self, x, stream=None):
        return x.clone()

    def row_bytes(self, n, value_bytes):
        return n * value_bytes


class TopK(Compressor):
    name = "top_k"

    def __call__(self, x, stream=None):
        idx = x.abs().topk(self._k(x.shape[1]), dim=1).indices
        return torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))

    def row_bytes(self, n, value_bytes):
        return self._k(n) * (value_bytes + INDEX_BYTES)


class RandomK(TopK):
    name = "random_k"

    def __call__(self, x, stream=None):
        idx = self._uniform(x, stream).topk(self._k(x.shape[1]), dim=1).indices  # k distinct uniform positions
        return torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))


class QSGD(Compressor):
    name = "qsgd"

    def __call__(self, x, stream=None):
        s, n = self.params["levels"], x.shape[1]
        norm = x.norm(dim=1, keepdim=True)
        scaled = s * x.abs() / norm.clamp_min(torch.finfo(x.dtype).tiny)
        level = scaled.floor() + (self._uniform(x, stream) < scaled - scaled.floor()).to(x.dtype)
        tau = 1.0 + min(n / s**2, math.sqrt(n) / s)
        return norm * x.sign() * level / (s * tau)

    def row_bytes(self, n, value_bytes):
        bits = n * (1 + math.ceil(math.log2(self.params["levels"] + 1)))
        return math.ceil(bits / 8) + value_bytes


class Sign(Compressor):
    name = "sign"

    def __call__(self, x, stream=None):
        return x.sign() * x.abs().mean(dim=1, keepdim=True)

    def row_bytes(self, n, value_bytes):
        return math.ceil(n / 8) + value_bytes


COMPRESSORS = {cls.name: cls for cls in (Identity, TopK, RandomK, QSGD, Sign)}


def validate_compressor(prefix: str, data) -> dict:
    """``{name: ..., <that compressor's keys>}``, checked against the compressor's own schema."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping such as {{name: top_k, fraction: 0.01}}, got {data!r}")
    name = data.get("name")
    if name not in COMPRESSOR_SCHEMAS:
        raise ConfigError(f"{prefix}.name: {name!r} is not allowed{did_you_mean(name, COMPRESSOR_SCHEMAS)}; "
                          f"allowed: {', '.join(COMPRESSOR_SCHEMAS)}")
    return validate_mapping(prefix, {"name": (Str, REQUIRED), **COMPRESSOR_SCHEMAS[name]}, data)


COMPRESSOR = Custom(validate_compressor)  # the schema kind of an optimizer's ``compressor`` key


def make_compressor(config: dict | None) -> Compressor:
    """A compressor from a validated ``{name: ..., ...}`` mapping (None: identity)."""
    config = dict(config or {"name": "identity"})
    name = config.pop("name")
    defaults = {k: spec[1] for k, spec in COMPRESSOR_SCHEMAS[name].items()}
    return COMPRESSORS[name](**{**defaults, **config})
