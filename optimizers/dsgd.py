"""Decentralized SGD with a decaying step.

Per round: alpha <- alpha (1 - mu alpha); theta <- W theta (all nodes at once, Metropolis W);
theta_i <- theta_i - alpha grad f_i(theta_i) on a fresh batch.
"""

from __future__ import annotations

from optimizers.base import REQUIRED, DistributedOptimizer


class DSGD(DistributedOptimizer):
    alg_name = "dsgd"
    config_schema = {
        "outer_iterations": (int, REQUIRED),
        "alpha0": (float, REQUIRED),
        "mu": (float, 0.0),
        "profile": (bool, False),
    }

    def setup(self) -> None:
        self.alpha = float(self.config["alpha0"])

    def round(self, k: int) -> None:
        self.alpha *= 1.0 - float(self.config["mu"]) * self.alpha
        theta = self.problem.theta
        theta.copy_(self.network.mix(theta))
        _, grads = self.problem.local_grads(theta)
        theta.sub_(grads, alpha=self.alpha)
