"""Stochastic Gradient Push (Assran, Loizou, Ballas and Rabbat, ICML 2019): SGD over one-way links.

Robot i keeps a numerator z_i and a push-sum weight w_i (1 at the start); its model is x_i = z_i / w_i.
Per round:

    z_i <- z_i - lr_k grad f_i(x_i)           (on a fresh batch, at the de-biased model)
    (z, w) <- push(z, w)                       (column-stochastic, over this round's out-neighbours)
    x_i = z_i / w_i

``push`` is :class:`optimizers.push_sum.PushSum` (one message per out-edge: [z_i | w_i] shares;
robust running sums when links lose messages). lr_k = ``lr`` / (1 + ``lr_decay`` k).
"""

from __future__ import annotations

import torch

from foundation.schema import NON_NEGATIVE, POSITIVE, REQUIRED
from optimizers.base import DistributedOptimizer, optimizer_schema
from optimizers.push_sum import PUSH_SUM_SCHEMA, PushSum


class SGP(DistributedOptimizer):
    alg_name = "sgp"
    example_config = {"lr": 0.05}  # a small working config (contract tests, docs)
    derived = ("pusher",)
    config_schema = optimizer_schema({
        "lr": (float, REQUIRED, POSITIVE),
        "lr_decay": (float, 0.0, NON_NEGATIVE),
        **PUSH_SUM_SCHEMA,
    })

    def setup(self) -> None:
        theta = self.problem.theta
        self.weights = torch.ones(theta.shape[0], 1, dtype=theta.dtype, device=theta.device)
        self.pusher = PushSum(self, "sgp")

    def round(self, k: int) -> None:
        theta = self.problem.theta
        lr = float(self.config["lr"]) / (1.0 + float(self.config["lr_decay"]) * k)
        _, grads = self.local_grads(theta, "grads")
        numerators = theta * self.weights - lr * grads
        pushed = self.pusher.push(torch.cat([numerators, self.weights], dim=1), k)
        self.weights = pushed[:, -1:].clone()
        theta.copy_(pushed[:, :-1] / self.weights)
