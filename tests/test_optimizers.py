"""The optimizers on the node stack against slow, obvious per-node references, and on a convex problem."""


import numpy as np
import pytest
import torch
from torch import nn

from foundation.schedules import learning_rates
from optimizers import DSGD, DSGT, DiNNO, LocalTraining
from optimizers.comm.network import InProcessNetwork
from problems.base import SupervisedProblem
from tests.helpers.convex import (
    DT,
    graph,
    make_problem,
    reference_theta,
    run_convex,
)


def run_stack(cls, cfg, rounds=5):
    problem = make_problem()
    net = InProcessNetwork(graph(), dtype=DT)
    opt = cls(problem, net, {"outer_iterations": rounds, **cfg})
    with torch.no_grad():
        opt.setup()
        for k in range(1, rounds + 1):
            opt.round(k)
    return problem.theta


@pytest.mark.parametrize("cfg", [{"alpha0": 0.1, "mu": 0.5}, {"alpha0": 0.1, "adapt_then_combine": True}])
def test_dsgd_matches_its_per_robot_reference(cfg):
    theta = run_stack(DSGD, cfg)
    assert torch.allclose(theta, reference_theta(DSGD, cfg), atol=1e-5, rtol=0)
    assert not torch.allclose(theta, make_problem().theta, atol=1e-3)  # it did move


@pytest.mark.parametrize("init_grads", [True, False])
def test_dsgt_matches_its_per_robot_reference(init_grads):
    cfg = {"alpha": 0.05, "init_grads": init_grads}
    assert torch.allclose(run_stack(DSGT, cfg), reference_theta(DSGT, cfg), atol=1e-5, rtol=0)


@pytest.mark.parametrize("primal_optimizer,persistent,decay", [("adam", False, "log"), ("sgd", False, "linear"),
                                                               ("adamw", True, "constant")])
def test_dinno_matches_its_per_robot_reference(primal_optimizer, persistent, decay):
    cfg = {"rho_init": 0.5, "rho_scaling": 1.1, "primal_iterations": 3, "primal_optimizer": primal_optimizer,
           "persistant_primal_opt": persistent, "primal_lr_start": 0.05, "primal_lr_finish": 0.005,
           "lr_decay_type": decay}
    assert torch.allclose(run_stack(DiNNO, cfg), reference_theta(DiNNO, cfg), atol=1e-5, rtol=0)


@pytest.mark.parametrize("primal_optimizer,persistent,decay", [("adam", True, "log"), ("adam", False, "constant"),
                                                               ("sgd", False, "linear")])
def test_proximal_dinno_matches_its_per_robot_reference(primal_optimizer, persistent, decay):
    cfg = {"rho_init": 0.5, "rho_scaling": 1.1, "primal_iterations": 3, "primal_optimizer": primal_optimizer,
           "persistant_primal_opt": persistent, "primal_lr_start": 0.05, "primal_lr_finish": 0.005,
           "lr_decay_type": decay, "primal_penalty": "proximal"}
    theta = run_stack(DiNNO, cfg)
    assert torch.allclose(theta, reference_theta(DiNNO, cfg), atol=1e-5, rtol=0)
    gradient_form = run_stack(DiNNO, {**cfg, "primal_penalty": "gradient"})
    assert not torch.allclose(theta, gradient_form, atol=1e-4)  # a different step from the penalty's gradient


@pytest.mark.parametrize("primal_optimizer", ["adam", "sgd"])
def test_proximal_dinno_without_penalty_is_the_plain_optimizer(primal_optimizer):
    """rho = 0: the closed form reduces to torch's own Adam / SGD step on f_i (the gradient form with rho 0)."""
    cfg = {"rho_init": 0.0, "primal_iterations": 3, "primal_optimizer": primal_optimizer,
           "persistant_primal_opt": True, "primal_lr_start": 0.02}
    proximal = run_stack(DiNNO, {**cfg, "primal_penalty": "proximal"})
    assert torch.allclose(proximal, run_stack(DiNNO, cfg), atol=1e-6, rtol=0)


def test_proximal_dinno_refuses_adamw():
    from foundation.schema import ConfigError

    with pytest.raises(ConfigError, match="primal_penalty proximal takes adam or sgd"):
        DiNNO.check_config("opt", {**DiNNO.example_config, "outer_iterations": 3, "primal_optimizer": "adamw",
                                   "primal_penalty": "proximal", "primal_lr_start": 0.01, "primal_lr_finish": None,
                                   "primal_lr": None, "lr_decay_type": "constant"})


@pytest.mark.parametrize("steps", [1, 2])
def test_local_training_is_independent_adam_per_node(steps):
    cfg = {"optimizer": "adam", "lr": 0.01, "steps_per_round": steps}
    assert torch.allclose(run_stack(LocalTraining, cfg), reference_theta(LocalTraining, cfg), atol=1e-5, rtol=0)


# ----------------------------------------------------------------- convex: distributed least squares


def test_dsgt_reaches_centralized_least_squares_solution():
    errors, _ = run_convex(DSGT, {"alpha": 0.05, "init_grads": True}, 1500)
    assert errors.max() < 1e-3


def test_dinno_reaches_centralized_least_squares_solution():
    errors, _ = run_convex(DiNNO, {"rho_init": 1.0, "rho_scaling": 1.0, "primal_iterations": 30,
                                   "primal_optimizer": "sgd", "primal_lr_start": 0.05,
                                   "lr_decay_type": "constant"}, 300)
    assert errors.max() < 1e-3


@pytest.mark.parametrize("primal_optimizer,lr,rounds,tolerance", [("sgd", 0.05, 1000, 1e-10),
                                                                   ("adam", 0.01, 3000, 1e-3)])
def test_proximal_dinno_reaches_centralized_least_squares_solution(primal_optimizer, lr, rounds, tolerance):
    """One primal step a round with the penalty solved exactly (linearized ADMM): the exact optimum, SGD to
    rounding error, Adam with its moments kept across rounds to within its tolerance."""
    errors, start = run_convex(DiNNO, {"rho_init": 1.0, "primal_iterations": 1, "primal_optimizer": primal_optimizer,
                                       "primal_lr_start": lr, "primal_penalty": "proximal",
                                       "persistant_primal_opt": True}, rounds)
    assert start > 1.0 and errors.max() < tolerance


def test_dsgd_with_decaying_step_gets_50x_closer_and_keeps_improving():
    # DSGD's bias shrinks with its step (alpha_k ~ 1 / (mu k)): 50x closer after 1500 rounds,
    # and closer still after twice as many.
    errors, start = run_convex(DSGD, {"alpha0": 0.1, "mu": 0.5}, 1500)
    assert errors.max() < start / 50
    longer, _ = run_convex(DSGD, {"alpha0": 0.1, "mu": 0.5}, 3000)
    assert longer.max() < 0.7 * errors.max()


def test_individual_training_does_not_reach_consensus_optimum():
    # Sanity check that the problem really needs communication.
    errors, _ = run_convex(LocalTraining, {"optimizer": "sgd", "lr": 0.05}, 1500)
    assert errors.min() > 0.1


def test_learning_rate_schedules():
    assert np.allclose(learning_rates("log", 1e-2, 1e-4, 3), [1e-2, 1e-3, 1e-4])
    assert np.allclose(learning_rates("linear", 1.0, 0.0, 5), [1, 0.75, 0.5, 0.25, 0])
    assert np.allclose(learning_rates("constant", 0.3, 0.1, 2), [0.3, 0.3])
    # a schedule shorter than the run holds its finish rate; a longer one is cut at the run's last round
    assert np.allclose(learning_rates("log", 1e-2, 1e-4, 5, decay_rounds=3), [1e-2, 1e-3, 1e-4, 1e-4, 1e-4])
    assert np.allclose(learning_rates("linear", 1.0, 0.0, 3, decay_rounds=5), [1, 0.75, 0.5])
    assert np.allclose(learning_rates("constant", 0.3, 0.1, 3, decay_rounds=1), [0.3, 0.3, 0.3])


@pytest.mark.parametrize("primal_penalty", ["gradient", "proximal"])
def test_dinno_decay_rounds_holds_the_finish_rate(primal_penalty):
    """lr_decay_rounds 2 of 5: the stack and its per-robot reference both hold the finish rate from round 2,
    which moves the result against the schedule over all 5 rounds."""
    cfg = {"rho_init": 0.5, "primal_iterations": 2, "primal_optimizer": "adam", "primal_lr_start": 0.05,
           "primal_lr_finish": 0.005, "lr_decay_type": "log", "primal_penalty": primal_penalty}
    held = run_stack(DiNNO, {**cfg, "lr_decay_rounds": 2})
    assert torch.allclose(held, reference_theta(DiNNO, {**cfg, "lr_decay_rounds": 2}), atol=1e-5, rtol=0)
    assert not torch.allclose(held, run_stack(DiNNO, cfg), atol=1e-4)


@pytest.mark.parametrize("alg", ["local", "choco_sgd", "beer", "deepsqueeze"])
def test_every_rate_schedule_takes_decay_rounds(alg):
    """The optimizers with an ``lr`` schedule read ``lr_decay_rounds`` too: their per-round rates are the held
    schedule, and (the baselines) the per-robot reference follows it."""
    from optimizers import BASELINES, OPTIMIZERS

    cls = {**OPTIMIZERS, **BASELINES}[alg]
    cfg = {**cls.example_config, "lr": 0.05, "lr_finish": 0.005, "lr_decay_type": "log", "lr_decay_rounds": 2}
    opt = cls(make_problem(), InProcessNetwork(graph(), dtype=DT), {"outer_iterations": 5, **cfg})
    opt.setup()
    assert np.allclose(opt.lrs, [0.05, 0.005, 0.005, 0.005, 0.005])
    if alg == "local":
        assert torch.allclose(run_stack(cls, cfg), reference_theta(cls, cfg), atol=1e-5, rtol=0)


# ------------------------------------------------- buffered rounds against the allocating originals

class AllocatingDSGD(DSGD):
    """DSGD's round as it was before workspace buffers."""

    def round(self, k):
        self.alpha *= 1.0 - float(self.config["mu"]) * self.alpha
        theta = self.problem.theta
        theta.copy_(self.network.mix(theta, "theta"))
        _, grads = self.problem.local_grads(theta)
        theta.sub_(grads, alpha=self.alpha)


class AllocatingDSGT(DSGT):
    def round(self, k):
        alpha = float(self.config["alpha"])
        theta = self.problem.theta
        theta.copy_(self.network.mix(torch.add(theta, self.tracker, alpha=-alpha), "theta"))
        _, new_grads = self.problem.local_grads(theta)
        self.tracker = self.network.mix(self.tracker, "tracker").add_(new_grads).sub_(self.grads)
        self.grads = new_grads


class AllocatingDiNNO(DiNNO):
    """DiNNO's round as it was: temporaries everywhere and, unless persistent, a new torch optimizer."""

    def round(self, k):
        from optimizers.base import make_torch_optimizer
        cfg = self.config
        theta = self.problem.theta
        self.rho *= float(cfg["rho_scaling"])
        rho = self.rho
        anchor = theta.clone()
        neighbours = self.network.neighbor_sum(anchor, "theta")
        degree = self.network.degrees.unsqueeze(1)
        self.duals += rho * (degree * anchor - neighbours)
        pull = 0.5 * (degree * anchor + neighbours)
        opt = self.primal_opt
        if opt is None:
            opt = make_torch_optimizer(cfg["primal_optimizer"], [theta], float(self.lrs[k - 1]))
        for group in opt.param_groups:
            group["lr"] = float(self.lrs[k - 1])
        for _ in range(int(cfg["primal_iterations"])):
            _, grads = self.problem.local_grads(theta)
            grads += self.duals + 2.0 * rho * (degree * theta - pull)
            theta.grad = grads
            opt.step()
        theta.grad = None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls, old_cls, cfg", [
    (DSGD, AllocatingDSGD, {"alpha0": 0.05, "mu": 0.01}),
    (DSGT, AllocatingDSGT, {"alpha": 0.05}),
    (DiNNO, AllocatingDiNNO, {"rho_init": 0.3, "rho_scaling": 1.01, "primal_iterations": 2,
                              "primal_lr_start": 0.01, "primal_lr_finish": 0.001, "lr_decay_type": "log"}),
    (DiNNO, AllocatingDiNNO, {"rho_init": 0.3, "primal_iterations": 1, "primal_optimizer": "adamw",
                              "primal_lr_start": 0.01}),
    (DiNNO, AllocatingDiNNO, {"rho_init": 0.3, "primal_iterations": 2, "primal_optimizer": "sgd",
                              "primal_lr_start": 0.01}),
    (DiNNO, AllocatingDiNNO, {"rho_init": 0.3, "primal_iterations": 2, "persistant_primal_opt": True,
                              "primal_lr_start": 0.01}),
])
def test_buffered_rounds_are_bit_identical_to_allocating_rounds(cls, old_cls, cfg, dtype, monkeypatch):
    """Workspace buffers, the in-place DiNNO penalty, the reset (not rebuilt) Adam and column-blocked
    sparse mixing change no bit against the allocating rounds with one-call products, on 40 robots."""
    from optimizers.comm import network as network_module
    from optimizers.comm.graphs import make_graph
    nodes, per_node = 40, 6
    g = torch.Generator().manual_seed(5)
    x = torch.randn(nodes * per_node, 8, generator=g, dtype=dtype)
    y = torch.randn(nodes * per_node, 3, generator=g, dtype=dtype)
    split = [torch.arange(i * per_node, (i + 1) * per_node) for i in range(nodes)]
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 40), nn.Tanh(), nn.Linear(40, 3))
    graph = make_graph("disk", nodes, seed=2, radius=0.3)
    results = []
    for opt_cls in (old_cls, cls):
        if opt_cls is old_cls:  # the plain one-call product of before
            monkeypatch.setattr(network_module, "graph_product", lambda op, v, out=None: op @ v)
        else:  # blocks of 64 columns
            monkeypatch.undo()
            monkeypatch.setattr(network_module, "_BLOCK_BYTES", 64 * nodes * x.element_size())
        problem = SupervisedProblem("p", model, split, x, y, x[:6], y[:6], loss="MSE", metrics=["validation_loss"],
                                    train_batch_size=3, val_batch_size=6, dtype=dtype, seed=11, execution="grouped")
        problem.theta.add_(0.1 * torch.randn(problem.theta.shape, generator=torch.Generator().manual_seed(6),
                                             dtype=dtype))
        opt = opt_cls(problem, InProcessNetwork(graph, dtype=dtype), {"outer_iterations": 6, **cfg})
        with torch.no_grad():
            opt.setup()
            for k in range(1, 7):
                opt.round(k)
        results.append((problem.theta.clone(), getattr(opt, "duals", None), getattr(opt, "tracker", None)))
    assert problem.theta.shape[1] > 64 and opt.network._mixing.layout == torch.sparse_csr
    for old, new in zip(*results):
        assert (old is None) == (new is None)
        if old is not None:
            assert torch.equal(old, new)


@pytest.mark.parametrize("cls, kwargs", [(torch.optim.Adam, {}), (torch.optim.Adam, {"weight_decay": 0.01}),
                                         (torch.optim.AdamW, {}), (torch.optim.AdamW, {"weight_decay": 0.1}),
                                         (torch.optim.Adam, {"amsgrad": True})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_step_into_a_buffer_is_torchs_step_bit_for_bit(cls, kwargs, dtype):
    from optimizers.base import adam_step_into, reset_torch_optimizer
    g = torch.Generator().manual_seed(1)
    start = torch.randn(7, 50, generator=g, dtype=dtype)
    grads = [torch.randn(7, 50, generator=g, dtype=dtype) for _ in range(6)]
    thetas = [start.clone(), start.clone()]
    opts = [cls([t], lr=0.01, **kwargs) for t in thetas]
    scratch = torch.full_like(start, float("nan"))
    for i, grad in enumerate(grads):
        if i == 3:  # as DiNNO's non-persistent primal optimizer: start over from a fresh state
            opts[0] = cls([thetas[0]], lr=0.01, **kwargs)
            reset_torch_optimizer(opts[1])
        for group in opts[1].param_groups:
            group["lr"] = 0.01 / (i + 1)
        for group in opts[0].param_groups:
            group["lr"] = 0.01 / (i + 1)
        for t in thetas:
            t.grad = grad.clone()
        opts[0].step()
        adam_step_into(opts[1], lambda p: scratch)
        assert torch.equal(thetas[0], thetas[1]), i
    assert not torch.isnan(scratch).all() or kwargs.get("amsgrad")
