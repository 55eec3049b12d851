"""NEXT (Di Lorenzo, Scutari 2016) with the linearized surrogate and a diminishing step.

Node i tracks the average gradient with y_i (y = g = grad f(x^0) at the start) and estimates the
gradient of the other nodes' losses by pi_i = N y_i - grad f_i(x_i). Its surrogate
grad f_i(x_i)^T (x - x_i) + pi_i^T (x - x_i) + tau / 2 ||x - x_i||^2 has the minimizer
x~_i = x_i - (N / tau) y_i. Per round, all nodes at once:

    alpha <- alpha (1 - mu alpha)
    z     = x + alpha (x~ - x)
    x     <- W z
    y     <- W y + grad f(x_new) - grad f(x_old)

Two exchanges per round (z and y). Lossy links: as for DSGT, a lost row is replaced by the last one
received (own row before any arrived); the x-step stays an average but the tracker's sum is only
kept by column-stochastic mixing, so drops leave a bias that the diminishing step damps but does
not remove.
"""

from __future__ import annotations

from foundation.schema import NON_NEGATIVE, POSITIVE, REQUIRED, Range
from optimizers.base import DistributedOptimizer, optimizer_schema


class NEXT(DistributedOptimizer):
    alg_name = "next"
    example_config = {"alpha0": 0.5, "mu": 0.1, "tau": 20.0}  # a small working config (contract tests, docs)
    config_schema = optimizer_schema({
        "alpha0": (float, REQUIRED, Range(0.0, 1.0, low_open=True)),
        "mu": (float, 0.0, NON_NEGATIVE),
        "tau": (float, REQUIRED, POSITIVE),
    })

    def setup(self) -> None:
        self.alpha = float(self.config["alpha0"])
        _, self.grads = self.problem.local_grads(self.problem.theta)
        self.tracker = self.grads.clone()

    def round(self, k: int) -> None:
        self.alpha *= 1.0 - float(self.config["mu"]) * self.alpha
        theta = self.problem.theta
        surrogate_min = theta - (self.network.num_nodes / float(self.config["tau"])) * self.tracker
        theta.copy_(self.network.mix(theta + self.alpha * (surrogate_min - theta), "theta"))
        _, new_grads = self.problem.local_grads(theta)
        self.tracker = self.network.mix(self.tracker, "tracker").add_(new_grads).sub_(self.grads)
        self.grads = new_grads


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """NEXT robot by robot: each robot minimizes its linearized surrogate (the others' gradient estimated as
    N y_i - g_i), steps alpha toward it, mixes; the tracker follows the mean gradient."""
    alpha, tau, n = config["alpha0"], config["tau"], robots.n
    grads = robots.gradients()
    tracker = list(grads)
    for _ in range(rounds):
        alpha *= 1.0 - config["mu"] * alpha
        towards = []
        for i in range(n):
            others = n * tracker[i] - grads[i]
            surrogate_min = robots.x[i] - (grads[i] + others) / tau
            towards.append(robots.x[i] + alpha * (surrogate_min - robots.x[i]))
        robots.x = robots.mix(towards)
        new = robots.gradients()
        tracker = [y + g_new - g_old for y, g_new, g_old in zip(robots.mix(tracker), new, grads)]
        grads = new
