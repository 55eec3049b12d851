"""Decentralized stochastic gradient tracking.

y_i = g_i = grad f_i(theta_i^0) at the start when ``init_grads`` (zeros otherwise); per round:
theta <- W (theta - alpha y); g' = grad f_i(theta_i); y <- W y + g' - g; g <- g'.
Two exchanges per round (parameters and tracker), each a dense row per neighbour.

Lossy links: a lost row is replaced by the last one received (own row before any arrived). The
parameter step stays an average (consensus is still a fixed point), but the invariant
sum_i y_i = sum_i g_i needs a column-stochastic mixing: stale rows add or lose tracker mass, which
stays as a bias, so under drops DSGT reaches a neighbourhood of the optimum, not the optimum
(with p = 1, y_i = g_i after the first round: plain local SGD).
"""

from __future__ import annotations

import torch

from foundation.schema import NON_NEGATIVE, REQUIRED
from optimizers.base import DistributedOptimizer, optimizer_schema


class DSGT(DistributedOptimizer):
    alg_name = "dsgt"
    example_config = {"alpha": 0.05}  # a small working config (contract tests, docs)
    config_schema = optimizer_schema({
        "alpha": (float, REQUIRED, NON_NEGATIVE),
        "init_grads": (bool, True),
    })

    def setup(self) -> None:
        theta = self.problem.theta
        if self.config["init_grads"]:
            _, self.grads = self.problem.local_grads(theta)
        else:
            self.grads = torch.zeros_like(theta)
        self.tracker = self.grads.clone()

    def round(self, k: int) -> None:
        alpha = float(self.config["alpha"])
        theta = self.problem.theta
        # stack-sized temporaries live in workspace buffers; the old tracker and gradients become the
        # buffers the next round writes into
        step = torch.add(theta, self.tracker, alpha=-alpha, out=self.workspace("step", theta))
        theta.copy_(self.network.mix(step, "theta", out=self.workspace("mixed", theta)))
        _, new_grads = self.local_grads(theta, "grads")
        tracker = self.network.mix(self.tracker, "tracker", out=self.workspace("tracker", theta))
        tracker.add_(new_grads).sub_(self.grads)
        self.recycle("tracker", self.tracker)
        self.recycle("grads", self.grads)
        self.tracker, self.grads = tracker, new_grads


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """DSGT robot by robot: x <- W (x - alpha y); y <- W y + g_new - g_old."""
    alpha = config["alpha"]
    grads = robots.gradients() if config["init_grads"] else [torch.zeros_like(x) for x in robots.x]
    tracker = list(grads)
    for _ in range(rounds):
        robots.x = robots.mix([x - alpha * y for x, y in zip(robots.x, tracker)])
        new = robots.gradients()
        tracker = [y + g_new - g_old for y, g_new, g_old in zip(robots.mix(tracker), new, grads)]
        grads = new
