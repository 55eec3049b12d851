"""Decentralized SGD with a decaying step, optionally with compressed messages.

Per round: alpha <- alpha (1 - mu alpha); theta <- W theta (all nodes at once, Metropolis W);
theta_i <- theta_i - alpha grad f_i(theta_i) on a fresh batch. With ``adapt_then_combine`` the
gradient step comes first: theta <- W (theta - alpha grad f(theta)).

With a ``compressor`` Q other than identity, nodes send q_i = Q(theta_i) and mix the compressed
differences: theta_i <- theta_i + sum_j w_ij (q_j - q_i), paying what q costs on the radio.
Lossy links: a lost row is replaced by the last one received (its own row before any arrived);
W stays row-stochastic, so the step is still an average and consensus stays a fixed point.
"""

from __future__ import annotations

from optimizers.base import DistributedOptimizer
from optimizers.schema import AT_LEAST_ONE, NON_NEGATIVE, REQUIRED
from optimizers.compressors import COMPRESSOR, make_compressor


class DSGD(DistributedOptimizer):
    alg_name = "dsgd"
    config_schema = {
        "outer_iterations": (int, REQUIRED, AT_LEAST_ONE),
        "alpha0": (float, REQUIRED, NON_NEGATIVE),
        "mu": (float, 0.0, NON_NEGATIVE),
        "adapt_then_combine": (bool, False),
        "compressor": (COMPRESSOR, {"name": "identity"}),
        "profile": (bool, False),
    }

    def setup(self) -> None:
        self.alpha = float(self.config["alpha0"])
        self.compressor = make_compressor(self.config["compressor"])
        self.compression_rng = self.compressor.stream(self.network.robot_ids())

    def combine(self, theta) -> None:
        if self.compressor.name == "identity":
            theta.copy_(self.network.mix(theta, "theta", out=self.workspace("mixed", theta)))
            return
        q = self.compressor(theta, self.compression_rng)
        theta.add_(self.network.mix(q, "theta", self.message_bytes(self.compressor)) - q)

    def round(self, k: int) -> None:
        self.alpha *= 1.0 - float(self.config["mu"]) * self.alpha
        theta = self.problem.theta
        if not self.config["adapt_then_combine"]:
            self.combine(theta)
        _, grads = self.local_grads(theta, "grads")
        theta.sub_(grads, alpha=self.alpha)
        if self.config["adapt_then_combine"]:
            self.combine(theta)
