"""Relaxed consensus ADMM over lossy links (Bastianello, Carli, Schenato and Todescato, "Asynchronous
distributed optimization over lossy networks via relaxed ADMM", IEEE TAC 2021), with DiNNO's inexact
primal steps.

Robot i keeps one row z_ij per neighbour j (its end of the edge). Per round k, with s_i = sum_j z_ij:

    x_i  <- ``primal_iterations`` optimizer steps on  f_i(x) - <x, s_i> + rho d_i / 2 ||x||^2
    y_ij  = 2 rho x_i - z_ij                      sent to j (one message per edge and direction)
    z_ij <- (1 - alpha) z_ij + alpha y_ji         when y_ji arrived; otherwise z_ij stays as it is

At a fixed point z_ij + z_ji = 2 rho x_j and z_ji + z_ij = 2 rho x_i on every edge (consensus), and the
primal conditions grad f_i(x) = s_i - rho d_i x summed over the robots give sum_i grad f_i(x) = 0 (the
optimum). A lost message only delays one update; no invariant between the two ends of an edge has to
survive it, which is what keeps DiNNO's fixed point on the optimum only when links are lossless.
``relaxation`` is alpha in (0, 1): 1/2 is plain ADMM on the edge-consensus problem. An edge seen for the
first time (the first round, or a new edge of a dynamic graph) starts at z_ij = rho x_i, which makes its
first primal step a proximal step around x_i.
"""

from __future__ import annotations

import torch

from foundation.schedules import learning_rates
from foundation.schema import POSITIVE, REQUIRED, Range
from optimizers.dinno import DiNNO

_PRIMAL_KEYS = ("outer_iterations", "primal_iterations", "primal_optimizer", "persistant_primal_opt",
                "primal_lr_start", "primal_lr_finish", "primal_lr", "lr_decay_type", "lr_decay_rounds", "profile")


class RelaxedADMM(DiNNO):
    alg_name = "relaxed_admm"
    example_config = {"rho": 1.0, "primal_iterations": 2, "primal_lr_start": 0.01}  # a small working config (contract tests, docs)
    config_schema = {"rho": (float, REQUIRED, POSITIVE),
                     "relaxation": (float, 0.5, Range(0.0, 1.0, low_open=True, high_open=True)),
                     **{key: DiNNO.config_schema[key] for key in _PRIMAL_KEYS}}

    def setup(self) -> None:
        self.setup_primal()

    def round(self, k: int) -> None:
        theta = self.problem.theta
        net = self.network
        rho, alpha = float(self.config["rho"]), float(self.config["relaxation"])
        receiver = net.in_edges()
        z, fresh = net.edge_rows("relaxed_admm_z", theta)
        z[fresh] = rho * theta[receiver[fresh]]
        sums = torch.zeros_like(theta).index_add_(0, receiver, z)  # s_i
        degree = net.degrees.unsqueeze(1)

        def penalty_grad(x: torch.Tensor) -> torch.Tensor:  # rho d_i x - s_i
            return torch.mul(degree, x, out=self.workspace("penalty", theta)).mul_(rho).sub_(sums)

        self.primal_update(k, penalty_grad)
        replies = (2.0 * rho) * theta[receiver] - z  # y_ij, sent back over each edge into robot i
        received, arrived = net.edge_exchange(replies, "relaxed_admm_y")
        relaxed = torch.lerp(z, received, alpha)
        net.keep_edge_rows("relaxed_admm_z", torch.where(arrived.unsqueeze(1), relaxed, z))


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """Relaxed ADMM robot by robot, every message delivered: primal optimizer steps on f_i(x) - <x, s_i>
    + rho d_i / 2 ||x||^2, then each edge end z_ij <- (1 - alpha) z_ij + alpha (2 rho x_j - z_ji)."""
    rho, alpha = config["rho"], config["relaxation"]
    start = config["primal_lr_start"] if config["primal_lr_start"] is not None else config["primal_lr"]
    finish = config["primal_lr_finish"] if config["primal_lr_finish"] is not None else start
    lrs = learning_rates(config["lr_decay_type"], start, finish, config["outer_iterations"],
                         config.get("lr_decay_rounds"))
    z = {(i, j): rho * robots.x[i] for i in range(robots.n) for j in robots.neighbours(i)}
    for k in range(1, rounds + 1):
        sums = [sum(z[i, j] for j in robots.neighbours(i)) for i in range(robots.n)]
        leaves, optimizers = robots.optimizers(config["primal_optimizer"], float(lrs[k - 1]))
        for _ in range(config["primal_iterations"]):
            robots.step(leaves, optimizers, lambda i, x: rho * robots.degree(i) * x - sums[i])
        replies = {(i, j): 2.0 * rho * robots.x[i] - z[i, j] for (i, j) in z}
        z = {(i, j): (1.0 - alpha) * z[i, j] + alpha * replies[j, i] for (i, j) in z}
