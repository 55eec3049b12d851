"""BEER (Zhao, Li, Li, Richtarik, Chi 2022): gradient tracking with compressed messages and error feedback.

Every node keeps a public copy h_i of its parameters and g_i of its gradient tracker, which all its
neighbours also hold, and updates both with compressed increments (error feedback: what a message leaves
out stays in the next difference). Per round, all nodes at once, with Metropolis weights w_ij:

    x_i   <- x_i + gamma sum_j w_ij (h_j - h_i) - eta_k v_i
    h_i   <- h_i + Q(x_i - h_i)                              (message 1)
    v_i   <- v_i + gamma sum_j w_ij (g_j - g_i) + grad f_i(x_i) - grad_prev_i      (fresh batch)
    g_i   <- g_i + Q(v_i - g_i)                              (message 2)

v_i tracks the mean gradient (sum_i v_i = sum_i grad f_i at every round, since sum_i sum_j w_ij (g_j - g_i)
= 0 for symmetric W), which removes the bias that different data per robot gives DSGD-like methods; the
public copies make compressed gossip converge to the exact optimum. Two compressed messages a round, each
at Q's price. Start: h_i = x_i (the shared initial model, which every robot knows without a message),
g_i = 0, v_i = grad f_i(x_i^0).

Lossy links: a receiver uses the last copy it could rebuild from a neighbour (its own before any arrived,
which makes that neighbour's term vanish); the gossip terms still vanish at consensus of the copies, but
lost tracker increments break sum_i v_i = sum_i grad f_i, as for DSGT.
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


class BEER(DistributedOptimizer):
    alg_name = "beer"
    example_config = {"lr": 0.05, "consensus_stepsize": 0.5, "compressor": {"name": "top_k", "fraction": 0.3}}  # a small working config (contract tests, docs)
    derived: tuple[str, ...] = ("lrs", "compressor")
    config_schema = optimizer_schema({
        **LEARNING_RATE_KEYS,
        **COMPRESSED_GOSSIP_KEYS,
    })

    def setup(self) -> None:
        cfg = self.config
        theta = self.problem.theta
        self.lrs = self.lr_schedule(cfg["lr"], cfg["lr_finish"], cfg["lr_decay_type"])
        self.compressor, self.compression_rng = self.build_compressor()
        self.public = theta.clone()
        self.public_tracker = torch.zeros_like(theta)
        _, self.grads = self.problem.local_grads(theta)
        self.grads = self.grads.clone()
        self.tracker = self.grads.clone()

    def gossip(self, public: torch.Tensor, channel: str) -> torch.Tensor:
        """sum_j w_ij (public_j - public_i) for every node: one exchange of the compressed public copies."""
        mixed = self.network.mix(public, channel, self.message_bytes(self.compressor),
                                 out=self.workspace(channel, public))
        return mixed.sub_(public)

    def round(self, k: int) -> None:
        gamma = float(self.config["consensus_stepsize"])
        theta = self.problem.theta
        theta.add_(self.gossip(self.public, "public"), alpha=gamma).sub_(self.tracker, alpha=float(self.lrs[k - 1]))
        self.public += self.compressor(theta - self.public, self.compression_rng)
        _, new_grads = self.local_grads(theta, "grads")
        self.tracker.add_(self.gossip(self.public_tracker, "public_tracker"), alpha=gamma)
        self.tracker.add_(new_grads).sub_(self.grads)
        self.recycle("grads", self.grads)
        self.grads = new_grads
        self.public_tracker += self.compressor(self.tracker - self.public_tracker, self.compression_rng)


def reference_rounds(robots, config: dict, rounds: int, segments=None) -> None:
    """BEER robot by robot: gossip on the public copies, the tracked gradient step, the compressed updates of
    the copies (of the model, then of the tracker)."""
    lrs = config_learning_rates(config)
    gamma = config["consensus_stepsize"]
    compressor = make_compressor(config["compressor"], segments)
    streams = [compressor.stream([i]) for i in range(robots.n)]
    public = list(robots.x)  # the shared initial model
    public_tracker = [torch.zeros_like(x) for x in robots.x]
    grads = robots.gradients()
    tracker = list(grads)
    for k in range(1, rounds + 1):
        robots.x = [robots.x[i] + gamma * robots.gossip(public, i) - float(lrs[k - 1]) * tracker[i]
                    for i in range(robots.n)]
        public = [p + compressor((x - p).unsqueeze(0), s)[0] for p, x, s in zip(public, robots.x, streams)]
        new = robots.gradients()
        tracker = [tracker[i] + gamma * robots.gossip(public_tracker, i) + new[i] - grads[i] for i in range(robots.n)]
        grads = new
        public_tracker = [p + compressor((v - p).unsqueeze(0), s)[0] for p, v, s in zip(public_tracker, tracker, streams)]
