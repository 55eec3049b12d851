"""CHOCO-SGD (Koloskova, Stich, Jaggi 2019, Algorithm 2): gossip with compressed messages.

Every node keeps a public copy xhat_i of its parameters that all its neighbours also hold. Per round,
all nodes at once:

    x_half = x - eta_k grad f_i(x)                 (fresh batch; eta_k from the lr schedule)
    q_i    = Q(x_half_i - xhat_i)                   (the only message, at Q's price)
    xhat_j <- xhat_j + q_j                          (for itself and every neighbour j)
    x      = x_half + gamma sum_j w_ij (xhat_j - xhat_i)

With Q = identity and gamma = 1 this is adapt-then-combine DSGD, x <- W (x - eta grad f(x)).
Lossy links: the network hands node i the last xhat_j it could rebuild from j (its own xhat_i before
anything arrived, which makes that neighbour's term vanish); this assumes a delivered message
brings the receiver's copy up to date (missed increments folded into it) at the price of one
compressed row. The gossip term still vanishes at consensus of the copies, so the step stays
an average.
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


class CHOCOSGD(DistributedOptimizer):
    alg_name = "choco_sgd"
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
        self.public = torch.zeros_like(self.problem.theta)

    def round(self, k: int) -> None:
        theta = self.problem.theta
        _, grads = self.problem.local_grads(theta)
        theta.sub_(grads, alpha=float(self.lrs[k - 1]))
        self.public += self.compressor(theta - self.public, self.compression_rng)
        mixed = self.network.mix(self.public, "public", self.message_bytes(self.compressor))
        theta.add_(mixed - self.public, alpha=float(self.config["consensus_stepsize"]))


def reference_rounds(robots, config: dict, rounds: int, segments=None) -> None:
    """CHOCO-SGD robot by robot: a gradient step, the compressed update of the public copy, gossip on the
    copies."""
    lrs = config_learning_rates(config)
    compressor = make_compressor(config["compressor"], segments)
    streams = [compressor.stream([i]) for i in range(robots.n)]  # robot i's draws, as in the team's stream
    public = [torch.zeros_like(x) for x in robots.x]
    for k in range(1, rounds + 1):
        grads = robots.gradients()
        half = [x - float(lrs[k - 1]) * g for x, g in zip(robots.x, grads)]
        public = [p + compressor((h - p).unsqueeze(0), s)[0] for p, h, s in zip(public, half, streams)]
        robots.x = [half[i] + config["consensus_stepsize"] * robots.gossip(public, i) for i in range(robots.n)]
