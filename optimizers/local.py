"""Training without communication: every node steps on its own data only.

Used for the individual-training baseline (N nodes, no messages) and, on a one-node problem holding
the pooled data, for the centralized baseline.
"""

from __future__ import annotations

from optimizers.base import DistributedOptimizer, make_torch_optimizer
from optimizers.schema import AT_LEAST_ONE, POSITIVE, REQUIRED


class LocalTraining(DistributedOptimizer):
    alg_name = "local"
    config_schema = {
        "outer_iterations": (int, REQUIRED, AT_LEAST_ONE),
        "optimizer": (("adam", "adamw", "sgd"), "adam"),
        "lr": (float, REQUIRED, POSITIVE),
        "profile": (bool, False),
    }

    def setup(self) -> None:
        self.opt = make_torch_optimizer(self.config["optimizer"], [self.problem.theta], self.config["lr"])

    def round(self, k: int) -> None:
        theta = self.problem.theta
        _, grads = self.problem.local_grads(theta)
        theta.grad = grads
        self.opt.step()
        theta.grad = None
