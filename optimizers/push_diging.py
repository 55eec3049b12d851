"""Push-DIGing (Nedic, Olshevsky and Shi, "Achieving geometric convergence for distributed optimization
over time-varying graphs", SIAM J. Optim. 2017): gradient tracking over one-way links.

Robot i keeps a numerator u_i, a push-sum weight v_i (1 at the start), a tracker y_i (its first gradient
at the start) and its last gradient g_i; its model is x_i = u_i / v_i. Per round:

    (u, y, v) <- push(u - alpha y, y, v)       (one message per out-edge: [u_i - alpha y_i | y_i | v_i])
    x_i = u_i / v_i
    g'_i = grad f_i(x_i);  y_i <- y_i + g'_i - g_i;  g_i <- g'_i

The push keeps sum_i y_i = sum_i g_i (column-stochastic), so the trackers follow the team's gradient and
the fixed point is the optimum of sum_i f_i. ``push`` is :class:`optimizers.push_sum.PushSum`.
"""

from __future__ import annotations

import torch

from foundation.schema import POSITIVE, REQUIRED
from optimizers.base import DistributedOptimizer, optimizer_schema
from optimizers.push_sum import PUSH_SUM_SCHEMA, PushSum


class PushDIGing(DistributedOptimizer):
    alg_name = "push_diging"
    example_config = {"alpha": 0.05}  # a small working config (contract tests, docs)
    derived = ("pusher",)
    config_schema = optimizer_schema({
        "alpha": (float, REQUIRED, POSITIVE),
        **PUSH_SUM_SCHEMA,
    })

    def setup(self) -> None:
        theta = self.problem.theta
        self.weights = torch.ones(theta.shape[0], 1, dtype=theta.dtype, device=theta.device)
        _, grads = self.problem.local_grads(theta)
        self.grads, self.tracker = grads.clone(), grads.clone()
        self.pusher = PushSum(self, "push_diging")

    def round(self, k: int) -> None:
        theta = self.problem.theta
        n = theta.shape[1]
        numerators = theta * self.weights - float(self.config["alpha"]) * self.tracker
        pushed = self.pusher.push(torch.cat([numerators, self.tracker, self.weights], dim=1), k)
        self.weights = pushed[:, -1:].clone()
        theta.copy_(pushed[:, :n] / self.weights)
        _, grads = self.local_grads(theta, "grads")
        self.tracker = pushed[:, n:2 * n] + grads - self.grads
        self.grads = grads.clone()
