"""MoTEF (Islamov, Gao, Stich 2024): momentum tracking with compressed messages and error feedback.

BEER's compressed gradient tracking with the gradient replaced by a momentum of it. Every node keeps public copies
h_i of its parameters and q_i of its tracker (which its neighbours also hold, updated by compressed increments) and
a momentum m_i. Per round, all nodes at once, with Metropolis weights w_ij:

    x_i <- x_i + gamma sum_j w_ij (h_j - h_i) - eta_k v_i
    h_i <- h_i + Q(x_i - h_i)                                       (message 1)
    m_i' = (1 - lambda) m_i + lambda grad f_i(x_i)                  (fresh batch)
    v_i <- v_i + gamma sum_j w_ij (q_j - q_i) + m_i' - m_i;  m_i <- m_i'
    q_i <- q_i + Q(v_i - q_i)                                       (message 2)

v_i tracks the mean momentum (sum_i v_i = sum_i m_i at every round for symmetric W), so the drift that different
data per robot causes is tracked away as in BEER, while the momentum averages the stochastic gradients over about
1 / lambda rounds: the tracker carries less noise, which lets a compressed run take larger steps. lambda = 1 is
BEER. Start: h_i = x_i (the shared initial model), q_i = 0, m_i = v_i = grad f_i(x_i^0) (so that the tracking
identity holds from the first round). Two compressed messages a round, each at Q's price. ``gamma`` and ``eta``
may follow schedules (``consensus_stepsize_finish`` / ``consensus_decay_type``, ``lr_*``), and ``lr_warmup_rounds``
ramps the rate up linearly over the first rounds.

Lossy links: as for BEER, a receiver uses the last copy it could rebuild from a neighbour.
"""

from __future__ import annotations

import torch

from foundation.schedules import learning_rates
from foundation.schema import Range
from optimizers.base import config_learning_rates
from optimizers.beer import BEER
from optimizers.comm.compressors import make_compressor

UNIT_OPEN_LOW = Range(0.0, 1.0, low_open=True)


class MoTEF(BEER):
    alg_name = "motef"
    example_config = {"lr": 0.05, "consensus_stepsize": 0.5, "momentum": 0.5,
                      "compressor": {"name": "top_k", "fraction": 0.3}}
    derived = ("lrs", "gammas", "compressor")
    config_schema = {
        **BEER.config_schema,
        "momentum": (float, 0.1, UNIT_OPEN_LOW),
        "lr_warmup_rounds": (int, 0, Range(0, 10**9)),
        "consensus_stepsize_finish": (float, None, UNIT_OPEN_LOW),
        "consensus_decay_type": (("constant", "linear", "log"), "constant"),
    }

    def setup(self) -> None:
        super().setup()
        cfg = self.config
        self.lrs = warmed_up(self.lrs, cfg["lr_warmup_rounds"])
        self.gammas = consensus_steps(cfg)
        self.momentum = self.__dict__.pop("grads")  # m_i = v_i = the first gradient

    def round(self, k: int) -> None:
        gamma, lam = float(self.gammas[k - 1]), float(self.config["momentum"])
        theta = self.problem.theta
        theta.add_(self.gossip(self.public, "public"), alpha=gamma).sub_(self.tracker, alpha=float(self.lrs[k - 1]))
        self.public += self.compressor(theta - self.public, self.compression_rng)
        _, grads = self.local_grads(theta, "grads")
        fresh = grads.mul_(lam).add_(self.momentum, alpha=1.0 - lam)  # m' in the gradient's buffer
        self.tracker.add_(self.gossip(self.public_tracker, "public_tracker"), alpha=gamma)
        self.tracker.add_(fresh).sub_(self.momentum)
        self.recycle("grads", self.momentum)
        self.momentum = fresh
        self.public_tracker += self.compressor(self.tracker - self.public_tracker, self.compression_rng)


def warmed_up(rates, rounds: int):
    """``rates`` with the first ``rounds`` ramped up linearly (round k of them at k / (rounds + 1) of its rate)."""
    rates = torch.as_tensor(rates, dtype=torch.float64).clone()
    ramp = min(int(rounds), len(rates))
    if ramp:
        rates[:ramp] *= torch.arange(1, ramp + 1, dtype=torch.float64) / (ramp + 1)
    return rates


def consensus_steps(cfg: dict):
    """gamma per round: ``consensus_stepsize`` to ``consensus_stepsize_finish`` by ``consensus_decay_type``."""
    start = cfg["consensus_stepsize"]
    finish = start if cfg["consensus_stepsize_finish"] is None else cfg["consensus_stepsize_finish"]
    return torch.as_tensor(learning_rates(cfg["consensus_decay_type"], start, finish, cfg["outer_iterations"]),
                           dtype=torch.float64)


def reference_rounds(robots, config: dict, rounds: int, segments=None) -> None:
    """MoTEF robot by robot: gossip on the public copies, the tracked step, the compressed copy of the model, the
    momentum of a fresh gradient, the tracker, the compressed copy of the tracker."""
    lrs = warmed_up(config_learning_rates(config), config["lr_warmup_rounds"])
    gammas = consensus_steps(config)
    lam = config["momentum"]
    compressor = make_compressor(config["compressor"], segments)
    streams = [compressor.stream([i]) for i in range(robots.n)]
    public = list(robots.x)
    public_tracker = [torch.zeros_like(x) for x in robots.x]
    momentum = robots.gradients()
    tracker = list(momentum)
    for k in range(1, rounds + 1):
        gamma = float(gammas[k - 1])
        robots.x = [robots.x[i] + gamma * robots.gossip(public, i) - float(lrs[k - 1]) * tracker[i]
                    for i in range(robots.n)]
        public = [p + compressor((x - p).unsqueeze(0), s)[0] for p, x, s in zip(public, robots.x, streams)]
        fresh = [lam * g + (1 - lam) * m for g, m in zip(robots.gradients(), momentum)]
        tracker = [tracker[i] + gamma * robots.gossip(public_tracker, i) + fresh[i] - momentum[i]
                   for i in range(robots.n)]
        momentum = fresh
        public_tracker = [p + compressor((v - p).unsqueeze(0), s)[0] for p, v, s in zip(public_tracker, tracker, streams)]
