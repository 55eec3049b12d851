"""Decentralized SGD with a decaying step.

Per round: alpha <- alpha (1 - mu alpha); theta <- W theta (all nodes at once, Metropolis W);
theta_i <- theta_i - alpha grad f_i(theta_i) on a fresh batch. With ``adapt_then_combine`` the
gradient step comes first: theta <- W (theta - alpha grad f(theta)).

Messages are the dense model: a compressed model without error feedback does not average (coordinates one
neighbour sends and another does not are pulled toward zero; top-k of the model never sends most of them).
Compressed gossip with error feedback is ``deepsqueeze``; with public copies, ``choco_sgd`` and ``beer``.

Lossy links: a lost row is replaced by the last one received (its own row before any arrived);
W stays row-stochastic, so the step is still an average and consensus stays a fixed point.
"""

from __future__ import annotations

from foundation.schema import NON_NEGATIVE, REQUIRED
from optimizers.base import DistributedOptimizer, optimizer_schema


class DSGD(DistributedOptimizer):
    alg_name = "dsgd"
    example_config = {"alpha0": 0.05, "mu": 0.1}  # a small working config (contract tests, docs)
    retired_keys = {"compressor": "dsgd sends its model uncompressed (a compressed model without error feedback "
                                  "does not average); for compressed messages use deepsqueeze, choco_sgd or beer"}
    config_schema = optimizer_schema({
        "alpha0": (float, REQUIRED, NON_NEGATIVE),
        "mu": (float, 0.0, NON_NEGATIVE),
        "adapt_then_combine": (bool, False),
    })

    def setup(self) -> None:
        self.alpha = float(self.config["alpha0"])

    def combine(self, theta) -> None:
        theta.copy_(self.network.mix(theta, "theta", out=self.workspace("mixed", theta)))

    def round(self, k: int) -> None:
        self.alpha *= 1.0 - float(self.config["mu"]) * self.alpha
        theta = self.problem.theta
        if not self.config["adapt_then_combine"]:
            self.combine(theta)
        _, grads = self.local_grads(theta, "grads")
        theta.sub_(grads, alpha=self.alpha)
        if self.config["adapt_then_combine"]:
            self.combine(theta)


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """DSGD robot by robot (see :mod:`optimizers.reference`): mix, then each robot's gradient step."""
    alpha = config["alpha0"]
    for _ in range(rounds):
        alpha *= 1.0 - config["mu"] * alpha
        if not config["adapt_then_combine"]:
            robots.x = robots.mix(robots.x)
        grads = robots.gradients()
        robots.x = [x - alpha * g for x, g in zip(robots.x, grads)]
        if config["adapt_then_combine"]:
            robots.x = robots.mix(robots.x)
