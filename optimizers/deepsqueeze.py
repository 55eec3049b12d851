"""DeepSqueeze (Tang, Lian, Yu, Zhang, Liu 2019): decentralized SGD whose compressed messages carry error
feedback.

Each node sends a compressed copy of its (error-compensated) model and keeps what the compression left
out for its next message. Per round, all nodes at once, with Metropolis weights w_ij:

    x_half_i = x_i - eta_k grad f_i(x_i)              (fresh batch)
    v_i      = x_half_i + e_i                         (add what earlier messages left out)
    q_i      = Q(v_i)                                 (the only message, at Q's price)
    e_i     <- v_i - q_i
    x_i     <- x_half_i + gamma sum_j w_ij (q_j - q_i)

Sending Q(x) without the error term (top-k of the model itself) never averages: coordinates one
neighbour sends and the other does not are pulled toward zero, and with top-k most coordinates are never
sent. With e the left-out mass is sent later, so over time every coordinate is exchanged. With Q =
identity and gamma = 1 this is adapt-then-combine DSGD with a per-round rate.

Lossy links: a lost q_j is replaced by the last one received (own q_i before any arrived, which makes that
neighbour's term vanish).
"""

from __future__ import annotations

import torch

from optimizers.base import (
    COMPRESSED_GOSSIP_KEYS,
    LEARNING_RATE_KEYS,
    DistributedOptimizer,
    config_learning_rates,
    optimizer_schema,
)
from optimizers.comm.compressors import make_compressor


class DeepSqueeze(DistributedOptimizer):
    alg_name = "deepsqueeze"
    example_config = {"lr": 0.05, "consensus_stepsize": 0.5, "compressor": {"name": "top_k", "fraction": 0.3}}  # a small working config (contract tests, docs)
    derived = ("lrs", "compressor")
    config_schema = optimizer_schema({
        **LEARNING_RATE_KEYS,
        **COMPRESSED_GOSSIP_KEYS,
    })

    def setup(self) -> None:
        cfg = self.config
        self.lrs = self.lr_schedule(cfg["lr"], cfg["lr_finish"], cfg["lr_decay_type"])
        self.compressor, self.compression_rng = self.build_compressor()
        self.error = torch.zeros_like(self.problem.theta)

    def round(self, k: int) -> None:
        theta = self.problem.theta
        _, grads = self.local_grads(theta, "grads")
        theta.sub_(grads, alpha=float(self.lrs[k - 1]))
        compensated = self.error.add_(theta)
        sent = self.compressor(compensated, self.compression_rng)
        self.error = compensated.sub_(sent)
        mixed = self.network.mix(sent, "sent", self.message_bytes(self.compressor), out=self.workspace("mixed", theta))
        theta.add_(mixed.sub_(sent), alpha=float(self.config["consensus_stepsize"]))


def reference_rounds(robots, config: dict, rounds: int, segments=None) -> None:
    """DeepSqueeze robot by robot: a gradient step, the compressed error-compensated model, gossip on what
    was sent."""
    lrs = config_learning_rates(config)
    compressor = make_compressor(config["compressor"], segments)
    streams = [compressor.stream([i]) for i in range(robots.n)]
    error = [torch.zeros_like(x) for x in robots.x]
    for k in range(1, rounds + 1):
        grads = robots.gradients()
        half = [x - float(lrs[k - 1]) * g for x, g in zip(robots.x, grads)]
        sent = [compressor((h + e).unsqueeze(0), s)[0] for h, e, s in zip(half, error, streams)]
        error = [h + e - q for h, e, q in zip(half, error, sent)]
        robots.x = [half[i] + config["consensus_stepsize"] * robots.gossip(sent, i) for i in range(robots.n)]
