"""Decentralized SGD with a decaying step.

Per round: alpha <- alpha (1 - mu alpha); theta <- W theta (all nodes at once, Metropolis W);
theta_i <- theta_i - alpha grad f_i(theta_i) on a fresh batch.
"""

from __future__ import annotations

from optimizers.base import AT_LEAST_ONE, NON_NEGATIVE, REQUIRED, DistributedOptimizer


class DSGD(DistributedOptimizer):
    alg_name = "dsgd"
    config_schema = {
        "outer_iterations": (int, REQUIRED, AT_LEAST_ONE),
        "alpha0": (float, REQUIRED, NON_NEGATIVE),
        "mu": (float, 0.0, NON_NEGATIVE),
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
