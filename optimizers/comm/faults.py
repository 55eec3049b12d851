"""Faulty and hostile robots (``experiment.faults``): what a robot sends, changed where the radio layer hands a
message over, so that every optimizer meets the faults unchanged.

    faults:
      - {robots: [3], kind: nan, from_round: 100}
      - {robots: [5, 7], kind: alie, from_round: 0, z: 1.0}

From round ``from_round`` on (rounds count from 1; 0 means from the start), every message a listed robot sends on
any channel is replaced as its kind says. Faults that need no knowledge of others:

- ``crash``: nothing is sent any more (a dead radio). Receivers treat it as a lost message: the last row they
  heard where links lose messages (held rows are kept only then), else their own row in its place.
- ``nan``: every entry is NaN (a broken sensor or a diverged robot); dropped on arrival, as a lost message.
- ``noise``: Gaussian noise of ``scale`` times the row's norm (per entry std scale ||x|| / sqrt(n)) is added.
- ``stale``: the row sent at ``from_round`` is sent again every time (a frozen model).
- ``sign_flip``: -``scale`` times its row is sent.

Byzantine attacks from the literature, which know what the honest robots send (omniscient attackers, as the papers
assume); a message to receiver r is crafted from the honest rows r receives on that exchange:

- ``random``: a Gaussian row of the honest rows' mean norm.
- ``alie`` ("a little is enough", Baruch, Baruch and Goldberg 2019): the honest rows' coordinate-wise mean shifted by
  ``z`` of their coordinate-wise standard deviation (r's own row counted among them).
- ``dissensus`` (He, Karimireddy and Jaggi 2022): x_r - ``epsilon`` sum_h w_rh (x_h - x_r) / sum_b w_rb over r's
  honest neighbours h and attackers b: with plain averaging r then moves (1 - epsilon) times its gossip step,
  away from its honest neighbours for epsilon > 1.

Draws are counter-based on (seed, exchange, sender, receiver, channel, entry): the same whichever process hosts
which robot. A faulty robot's own metrics are left out of the team's (``honest_*`` columns of summary.csv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from foundation import counters
from foundation.schema import (
    NON_NEGATIVE,
    REQUIRED,
    SEED_RANGE,
    Choice,
    ConfigError,
    Custom,
    Float,
    Int,
    ListOf,
    excerpt,
    validate_mapping,
)

_NOISE = counters.code("fault noise")


@dataclass(frozen=True)
class FaultKind:
    name: str
    meaning: str
    schema: dict  # the keys of its own (besides robots, kind, from_round)
    needs_honest: bool = False  # crafted from what the honest robots send to the receiver
    lost: bool = False  # the message is not sent at all


FAULT_KINDS: dict[str, FaultKind] = {kind.name: kind for kind in (
    FaultKind("crash", "stops sending for good (a dead radio)", {}, lost=True),
    FaultKind("nan", "sends rows of NaN", {}),
    FaultKind("noise", "adds Gaussian noise of scale x the row's norm", {"scale": (Float, 0.1, NON_NEGATIVE)}),
    FaultKind("stale", "keeps sending the row it sent at from_round", {}),
    FaultKind("sign_flip", "sends -scale x its row", {"scale": (Float, 1.0, NON_NEGATIVE)}),
    FaultKind("random", "sends Gaussian rows of the honest rows' norm", {}, needs_honest=True),
    FaultKind("alie", "sends the honest rows' mean shifted by z of their spread (Baruch et al. 2019)",
              {"z": (Float, 1.0, NON_NEGATIVE)}, needs_honest=True),
    FaultKind("dissensus", "pushes each receiver away from its honest neighbours (He et al. 2022)",
              {"epsilon": (Float, 1.5, NON_NEGATIVE)}, needs_honest=True),
)}


def _validate_entry(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping like {{robots: [3], kind: nan, from_round: 100}}, "
                          f"got {excerpt(value)}")
    kind = value.get("kind")
    if kind not in FAULT_KINDS:
        raise ConfigError(f"{key}.kind: {excerpt(kind)} is not a fault kind; allowed: {', '.join(FAULT_KINDS)}")
    schema = {"robots": (ListOf(Int), REQUIRED), "kind": (Choice(tuple(FAULT_KINDS)), REQUIRED),
              "from_round": (Int, 0, NON_NEGATIVE), "seed": (Int, 0, SEED_RANGE), **FAULT_KINDS[kind].schema}
    entry = validate_mapping(key, schema, value)
    if not entry["robots"]:
        raise ConfigError(f"{key}.robots: expected at least one robot index")
    for i, robot in enumerate(entry["robots"]):
        if robot < 0:
            raise ConfigError(f"{key}.robots[{i}]: robot indices start at 0, got {robot}")
    return entry


def validate_faults(key: str, value: Any) -> list[dict]:
    """``experiment.faults``: a list of fault entries, no robot in two of them."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of faults like [{{robots: [3], kind: nan, from_round: 100}}], "
                          f"got {excerpt(value)}")
    entries = [_validate_entry(f"{key}[{i}]", v) for i, v in enumerate(value)]
    seen: dict[int, int] = {}
    for i, entry in enumerate(entries):
        for robot in entry["robots"]:
            if robot in seen:
                raise ConfigError(f"{key}[{i}].robots: robot {robot} is already faulty in {key}[{seen[robot]}]; "
                                  f"a robot has one fault")
            seen[robot] = i
    return entries


FAULTS = Custom(validate_faults, "list of fault mappings")


def check_faults(entries: list[dict], num_robots: int, key: str = "experiment.faults") -> None:
    """Every listed robot exists and at least one robot is honest."""
    faulty = set()
    for i, entry in enumerate(entries):
        for robot in entry["robots"]:
            if robot >= num_robots:
                raise ConfigError(f"{key}[{i}].robots: robot {robot} does not exist; the team has robots 0 to "
                                  f"{num_robots - 1}")
            faulty.add(robot)
    if entries and len(faulty) >= num_robots:
        raise ConfigError(f"{key}: every one of the {num_robots} robots is faulty; at least one must be honest")


def faulty_robots(entries: list[dict]) -> list[int]:
    return sorted({robot for entry in entries for robot in entry["robots"]})


def gaussian(seed: int, exchange: int, src: torch.Tensor, dst: torch.Tensor, channel: str, width: int,
             dtype, device) -> torch.Tensor:
    """Standard normal draws (edges, width), counter-based (Box-Muller on two uniform streams)."""
    entries = torch.arange(width).unsqueeze(0)
    a = counters.uniform(seed, _NOISE, exchange, src.unsqueeze(1), dst.unsqueeze(1), counters.code(channel), entries)
    b = counters.uniform(seed + 1, _NOISE, exchange, src.unsqueeze(1), dst.unsqueeze(1), counters.code(channel),
                         entries)
    return (torch.sqrt(-2.0 * torch.log(a)) * torch.cos(2.0 * math.pi * b)).to(dtype=dtype, device=device)


class Faults:
    """The faults of one pair: which robot misbehaves how, from which round (a per-round hook keeps the round)."""

    def __init__(self, entries: list[dict], num_robots: int):
        self.entries = entries
        self.round = 0
        self.kind_of = [None] * num_robots  # per robot: its entry or None
        for entry in entries:
            for robot in entry["robots"]:
                self.kind_of[robot] = entry
        self.faulty = torch.tensor([entry is not None for entry in self.kind_of], dtype=torch.bool)
        never = 2 ** 62
        self.start = torch.tensor([never if entry is None else max(1, entry["from_round"]) for entry in self.kind_of],
                                  dtype=torch.long)

    def __call__(self, k: int) -> None:  # before round k
        self.round = k

    def state_dict(self) -> dict:
        return {"round": self.round}

    def load_state_dict(self, saved: dict) -> None:
        self.round = int(saved["round"])

    def active(self, robots: torch.Tensor) -> torch.Tensor:
        """Which of ``robots`` (global ids) misbehave in the current round."""
        return self.start[robots.cpu()] <= self.round

    def transform(self, held, exchange: int, channel: str, links: dict, messages: torch.Tensor,
                  x_local: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What arrives over every edge into a local robot: (messages with the faulty senders' replaced, which
        edges carry a message at all). ``links``: the network's directed edges into local robots. ``messages`` (the
        caller's own per-edge copy) is changed in place."""
        src, dst_local = links["src"], links["dst_local"]
        sent = torch.ones(len(src), dtype=torch.bool, device=messages.device)
        bad = self.active(src).to(messages.device)
        if not bool(bad.any()):
            return messages, sent
        honest = ~self.faulty[src].to(messages.device)
        needs_honest = any(FAULT_KINDS[entry["kind"]].needs_honest for entry in self.entries)
        stats = _HonestStats(messages, honest, dst_local, x_local, weight) if needs_honest else None
        for entry in self.entries:
            edges = bad & torch.isin(src, torch.tensor(entry["robots"])).to(messages.device)
            if not bool(edges.any()):
                continue
            kind = entry["kind"]
            rows = messages[edges]
            receivers = dst_local[edges]
            if kind == "crash":
                sent[edges] = False
                continue
            if kind == "nan":
                rows = torch.full_like(rows, math.nan)
            elif kind == "noise":
                noise = gaussian(entry["seed"], exchange, src[edges.cpu()], links["dst"][edges.cpu()], channel,
                                 rows.shape[1], rows.dtype, rows.device)
                rows = rows + noise * (entry["scale"] * rows.norm(dim=1, keepdim=True) / math.sqrt(rows.shape[1]))
            elif kind == "stale":
                rows = _frozen(held, channel, links["ids"][edges], rows)
            elif kind == "sign_flip":
                rows = -entry["scale"] * rows
            elif kind == "random":
                assert stats is not None
                noise = gaussian(entry["seed"], exchange, src[edges.cpu()], links["dst"][edges.cpu()], channel,
                                 rows.shape[1], rows.dtype, rows.device)
                rows = noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-30) * stats.norm[receivers].unsqueeze(1)
            elif kind == "alie":
                assert stats is not None
                rows = stats.mean[receivers] + entry["z"] * stats.std[receivers]
            elif kind == "dissensus":
                assert stats is not None
                bad_weight = torch.zeros(len(x_local), dtype=weight.dtype, device=weight.device).index_add_(
                    0, dst_local[bad], weight[bad])
                push = stats.gossip[receivers] / bad_weight[receivers].clamp_min(1e-30).unsqueeze(1)
                rows = x_local[receivers] - entry["epsilon"] * push
            messages[edges] = rows
        return messages, sent


class _HonestStats:
    """Per local receiver: what its honest in-neighbours send (with its own row for the spread): the mean row, the
    coordinate-wise standard deviation, the mean norm, and the weighted gossip step sum_h w_rh (x_h - x_r)."""

    def __init__(self, messages, honest, dst_local, x_local, weight):
        count = torch.ones(len(x_local), dtype=x_local.dtype, device=x_local.device)  # the receiver itself
        count = count.index_add(0, dst_local[honest], torch.ones_like(weight[honest]))
        total = x_local.clone().index_add_(0, dst_local[honest], messages[honest])
        squares = (x_local * x_local).index_add_(0, dst_local[honest], messages[honest] ** 2)
        self.mean = total / count.unsqueeze(1)
        self.std = (squares / count.unsqueeze(1) - self.mean ** 2).clamp_min(0.0).sqrt()
        norms = x_local.norm(dim=1).index_add(0, dst_local[honest], messages[honest].norm(dim=1))
        self.norm = norms / count
        step = weight[honest].unsqueeze(1) * (messages[honest] - x_local[dst_local[honest]])
        self.gossip = torch.zeros_like(x_local).index_add_(0, dst_local[honest], step)


def _frozen(held, channel: str, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The first row each of these edges carried once the robot went stale (kept with the network's held rows, so
    that it is checkpointed and joined across processes like them)."""
    frozen, kept = held.buffers(f"{channel}#stale", rows)
    fresh = ~kept[ids]
    frozen[ids[fresh]] = rows[fresh]
    kept[ids] = True
    return frozen[ids]
