"""EXTRA (Shi, Ling, Wu, Yin 2015): exact first-order decentralized gradient method.

With W~ = (I + W) / 2 and a constant step alpha:

    x^1     = W x^0 - alpha grad f(x^0)
    x^{k+1} = (I + W) x^k - W~ x^{k-1} - alpha (grad f(x^k) - grad f(x^{k-1}))

W x^{k-1} is kept from the previous round, so each round is one exchange of a dense row.
Summed over rounds the update telescopes to x^{k+1} = W x^k - alpha grad f(x^k) + sum_t (W - W~) x^t,
whose correction term removes DSGD's bias: fixed points are consensual optima.
Lossy links: a lost row is replaced by the last one received (own row before any arrived). Both
W x^k and the stored W x^{k-1} then come from the mixing actually applied, and consensus is still a
fixed point; the exactness argument needs the same W every round, so while messages are lost the
iterates stay in a neighbourhood of the optimum rather than on it.
"""

from __future__ import annotations

import torch

from foundation.schema import POSITIVE, REQUIRED
from optimizers.base import DistributedOptimizer, optimizer_schema


class EXTRA(DistributedOptimizer):
    alg_name = "extra"
    example_config = {"alpha": 0.05}  # a small working config (contract tests, docs)
    config_schema = optimizer_schema({
        "alpha": (float, REQUIRED, POSITIVE),
    })

    def setup(self) -> None:
        theta = self.problem.theta
        self.prev_theta = torch.zeros_like(theta)
        self.prev_mixed = torch.zeros_like(theta)
        self.prev_grads = torch.zeros_like(theta)

    def round(self, k: int) -> None:
        alpha = float(self.config["alpha"])
        theta = self.problem.theta
        _, grads = self.problem.local_grads(theta)
        mixed = self.network.mix(theta, "theta")
        if k == 1:
            new = mixed - alpha * grads
        else:
            new = theta + mixed - 0.5 * (self.prev_theta + self.prev_mixed) - alpha * (grads - self.prev_grads)
        self.prev_theta, self.prev_mixed, self.prev_grads = theta.clone(), mixed, grads
        theta.copy_(new)


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """EXTRA robot by robot: x^1 = W x^0 - alpha g^0, then x^{k+1} = x^k + W x^k - (x^{k-1} + W x^{k-1}) / 2
    - alpha (g^k - g^{k-1})."""
    alpha = config["alpha"]
    previous = None
    for _ in range(rounds):
        grads = robots.gradients()
        mixed = robots.mix(robots.x)
        if previous is None:
            new = [m - alpha * g for m, g in zip(mixed, grads)]
        else:
            x_old, mixed_old, grads_old = previous
            new = [x + m - 0.5 * (xo + mo) - alpha * (g - go)
                   for x, m, xo, mo, g, go in zip(robots.x, mixed, x_old, mixed_old, grads, grads_old)]
        previous = (robots.x, mixed, grads)
        robots.x = new
