"""Shared training loop of every distributed optimizer.

An optimizer implements ``setup()`` and ``round(k)``; it reads and writes the node stack
``problem.theta`` (shape (N, n)) in place, gets gradients from ``problem.local_grads`` and talks
to neighbours only through ``network``. The loop here evaluates metrics, detects divergence,
profiles the first rounds on request and reports progress.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from foundation import state
from foundation.results_io import atomic_path
from foundation.schedules import learning_rates
from foundation.schema import AT_LEAST_ONE, POSITIVE, REQUIRED, Range, defaults
from optimizers.comm.compressors import COMPRESSOR, make_compressor
from optimizers.comm.graphs import adjacency

PROFILED_ROUNDS = 5
# metrics the optimizer adds to the problem's from what the network counted (the last three with faults or a
# robust rule configured)
NETWORK_METRICS = ("bytes_sent", "messages_dropped", "messages_clipped", "robot_resets")



# Keys shared by the optimizers' schemas: a learning-rate schedule, and the compressed-gossip pair
LEARNING_RATE_KEYS: dict[str, tuple[Any, ...]] = {
    "lr": (float, REQUIRED, POSITIVE),
    "lr_finish": (float, None, POSITIVE),
    "lr_decay_type": (("constant", "linear", "log"), "constant"),
    "lr_decay_rounds": (int, None, AT_LEAST_ONE),
}
COMPRESSED_GOSSIP_KEYS: dict[str, tuple[Any, ...]] = {
    "consensus_stepsize": (float, REQUIRED, Range(0.0, 1.0, low_open=True)),
    "compressor": (COMPRESSOR, {"name": "identity"}),
}


def optimizer_schema(keys: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """An optimizer's config schema: ``outer_iterations`` first, its own ``keys``, ``profile`` last."""
    return {"outer_iterations": (int, REQUIRED, AT_LEAST_ONE), **keys, "profile": (bool, False)}


def config_learning_rates(config: dict) -> np.ndarray:
    """The learning rate of every round of a validated config with ``LEARNING_RATE_KEYS``."""
    finish = config["lr"] if config["lr_finish"] is None else config["lr_finish"]
    return learning_rates(config["lr_decay_type"], config["lr"], finish, config["outer_iterations"],
                          config.get("lr_decay_rounds"))


class DivergedError(RuntimeError):
    """A non-finite loss or parameter: the pair stops and is reported as diverged at ``round_index``."""

    def __init__(self, round_index: int, what: str = "loss"):
        super().__init__(f"non-finite {what} at round {round_index}")
        self.round_index = round_index


def make_torch_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """An element-wise optimizer over stacked node parameters: exactly N independent optimizers.
    Adam(W) takes torch's fused kernel on CPU and CUDA (one pass over the stack instead of about ten)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown primal optimizer {name!r}; allowed: adam, adamw, sgd")


def reset_torch_optimizer(opt: torch.optim.Optimizer) -> None:
    """Put ``opt`` back in the state of a newly built one. Adam(W) moments and step counts are zeroed in
    place, which is exactly what a new Adam starts from, and saves allocating (and page-faulting) two
    stack-sized moment buffers each time; any other state is dropped (the next step rebuilds it)."""
    exact = isinstance(opt, (torch.optim.Adam, torch.optim.AdamW))
    for param, param_state in list(opt.state.items()):
        if exact and set(param_state) <= {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"} and all(
                isinstance(v, torch.Tensor) for v in param_state.values()):
            for value in param_state.values():
                value.zero_()
        else:
            del opt.state[param]


def _plain_adam(opt: torch.optim.Optimizer) -> bool:
    """True for a torch Adam / AdamW on CPU tensors that takes the plain single-tensor path of
    ``torch.optim.adam`` (no amsgrad, fused, foreach, capturable, differentiable or maximize) with its
    state already built: the path :func:`adam_step_into` reproduces operation for operation."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    for group in opt.param_groups:
        if group.get("amsgrad") or group.get("maximize") or group.get("capturable") or group.get("differentiable") \
                or group.get("fused") or group.get("foreach") or isinstance(group["lr"], torch.Tensor) \
                or not all(isinstance(b, float) for b in group["betas"]):
            return False
        if group["weight_decay"] != 0 and "decoupled_weight_decay" not in group:
            return False
        for p in group["params"]:
            state = opt.state.get(p)
            if p.device.type != "cpu" or p.is_complex() or not state or set(state) != {"step", "exp_avg", "exp_avg_sq"}:
                return False
    return True


def adam_step_into(opt: torch.optim.Optimizer, scratch: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``opt.step()`` for a plain Adam / AdamW (see :func:`_plain_adam`, else it calls ``opt.step()``),
    with its one stack-sized temporary, the denominator, in ``scratch(param)`` instead of two fresh
    tensors. The same operations in the same order as ``torch.optim.adam._single_tensor_adam``: bit-identical
    (tests/test_optimizers.py checks it against torch's step)."""
    if not _plain_adam(opt):
        opt.step()
        return
    for group in opt.param_groups:
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            state = opt.state[param]
            exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
            step_t += 1
            if weight_decay != 0:
                if group["decoupled_weight_decay"]:
                    param.mul_(1 - lr * weight_decay)
                else:
                    grad = grad.add(param, alpha=weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2 ** 0.5
            denom = torch.sqrt(exp_avg_sq, out=scratch(param)).div_(bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


class DistributedOptimizer:
    """Base class. ``config_schema`` maps each config key to (type, default) or
    (type, default, Range); default ``REQUIRED`` marks keys a config must give, a Range the
    values the config validator accepts."""

    alg_name = ""
    config_schema: dict[str, tuple[Any, ...]] = {}
    # keys this optimizer no longer takes, each with the one line that says why and what to use instead
    retired_keys: dict[str, str] = {}
    asynchrony = None  # an optimizers.comm.asynchrony.Asynchrony when robots wake at random

    def __init__(self, problem, network, config: dict[str, Any]):
        self.problem = problem
        self.network = network
        self.config = defaults(self.config_schema)
        self.config.update(config)
        self.outer_iterations = int(self.config["outer_iterations"])
        self.elapsed = 0.0
        self.last_finite: tuple[int, torch.Tensor] | None = None  # (round, parameters) of the last finite evaluation

    @classmethod
    def check_config(cls, prefix: str, config: dict) -> None:
        """Checks across keys of a validated config (raise ConfigError); none by default."""

    def setup(self) -> None:
        pass

    def workspace(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A scratch buffer shaped like ``like`` that lives across rounds (contents undefined): reusing
        it instead of allocating a stack-sized temporary each round saves its page faults."""
        buffers = self.__dict__.setdefault("_workspace", {})
        buf = buffers.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = buffers[name] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def recycle(self, name: str, tensor: torch.Tensor) -> None:
        """Hand a tensor that is no longer needed back as the workspace buffer ``name``."""
        self.__dict__.setdefault("_workspace", {})[name] = tensor

    def local_grads(self, theta: torch.Tensor, buffer: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``problem.local_grads(theta)``, written into the workspace buffer ``buffer`` when given and the
        problem takes an ``out`` buffer (use the returned tensor: a problem may ignore the buffer)."""
        takes_out = self.__dict__.get("_grads_take_out")
        if takes_out is None:
            try:
                takes_out = "out" in inspect.signature(self.problem.local_grads).parameters
            except (TypeError, ValueError):
                takes_out = False
            self._grads_take_out = takes_out
        if buffer is None or not takes_out:
            return self.problem.local_grads(theta)
        return self.problem.local_grads(theta, out=self.workspace(buffer, theta))

    def round(self, k: int) -> None:
        raise NotImplementedError

    def lr_schedule(self, start: float, finish: float | None, kind: str):
        """Learning rate of every round (``finish`` None: constant ``start``), decaying over ``lr_decay_rounds``
        rounds when the config sets it."""
        return learning_rates(kind, start, start if finish is None else finish, self.outer_iterations,
                              self.config.get("lr_decay_rounds"))

    def primal_steps(self, opt: torch.optim.Optimizer, lr: float, steps: int,
                     penalty_grad: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """``steps`` steps of ``opt`` on theta, each on a fresh batch, with gradient
        grad f_i(theta_i) + penalty_grad(theta) (the inexact primal step of DiNNO and Prox-PDA)."""
        theta = self.problem.theta
        for group in opt.param_groups:
            group["lr"] = lr
        for _ in range(steps):
            _, grads = self.local_grads(theta, "grads")
            grads += penalty_grad(theta)
            theta.grad = grads
            adam_step_into(opt, lambda p: self.workspace("adam_denom", p))
        theta.grad = None

    def build_compressor(self):
        """(compressor, its stream of draws for this process's robots) from ``config["compressor"]``; a
        ``scope: tensor`` compressor gets the sizes of the model's parameter tensors from the node stack."""
        slots = getattr(getattr(self.problem, "stack", None), "slots", None)
        compressor = make_compressor(self.config["compressor"], [s.numel for s in slots] if slots else None)
        return compressor, compressor.stream(self.network.robot_ids())

    def message_bytes(self, compressor) -> int:
        """What one compressed row of the node stack costs on the radio."""
        theta = self.problem.theta
        return compressor.row_bytes(theta[0].numel(), theta.element_size())

    def evaluate(self, round_index: int) -> dict[str, torch.Tensor] | None:
        """The problem's metrics after ``round_index`` rounds, with what the network and this optimizer
        know: ``bytes_sent`` per robot, ``wall_time`` (training seconds) and, when the problem records it,
        ``current_graph`` (the team's adjacency)."""
        extras = {"bytes_sent": self.network.bytes_sent.clone(),
                  "wall_time": torch.tensor(self.elapsed, dtype=torch.float64)}
        network = self.network
        if getattr(network, "faults", None) is not None or getattr(network, "aggregation", None) is not None:
            resets = self.__dict__.get("robot_resets")
            extras.update(messages_dropped=network.tallies.dropped.clone(),
                          messages_clipped=network.tallies.clipped.clone(),
                          robot_resets=resets.clone() if resets is not None else torch.zeros_like(network.bytes_sent))
        if "current_graph" in self.problem.metrics:
            extras["current_graph"] = adjacency(self.network.graph)
        return self.problem.evaluate(round_index, extras=extras)

    def _check_finite(self, k: int, parameters_too: bool) -> None:
        """Losses every round; the (large) parameter stack only when asked (a non-finite parameter shows up in the
        next round's loss anyway, and its rows are dropped by the receivers meanwhile). Robots whose loss or
        parameters are not finite are reset (:meth:`reset_robots`); the pair diverges only when most honest robots
        are non-finite at once."""
        problem, network = self.problem, self.network
        bad = ~torch.isfinite(problem.last_losses).cpu()
        if parameters_too:
            bad |= ~torch.isfinite(problem.theta).all(dim=1).cpu()
        if not network.anywhere(bool(bad.any())):  # every process takes the same branch
            return
        faults = getattr(network, "faults", None)
        honest = torch.ones_like(bad) if faults is None else ~faults.faulty[network.robot_ids()]
        failing, everyone = network.total(int((bad & honest).sum())), network.total(int(honest.sum()))
        if 2 * failing > everyone:
            raise DivergedError(k, "training loss" if not parameters_too else "parameter")
        self.reset_robots(bad)

    def reset_robots(self, bad: torch.Tensor) -> None:
        """Robots ``bad`` (local rows) restart from their neighbourhood: their parameters become the network's
        combination of their finite neighbours' parameters (two exchanges: the parameters with the bad rows
        zeroed, and which rows were finite), every other row of their state (duals, trackers, moments) zero. Each
        reset is counted in ``robot_resets``. A robot with no finite neighbour restarts from zero."""
        from optimizers.comm.asynchrony import robot_rows

        theta = self.problem.theta
        ok = (~bad).to(theta.device)
        values = torch.where(ok.unsqueeze(1), theta, torch.zeros_like(theta))
        sums = self.network.mix(values, "reset")
        weights = self.network.mix(ok.to(theta.dtype).unsqueeze(1), "reset_weight", row_bytes=theta.element_size())
        restart = torch.where(weights > 1e-12, sums / weights.clamp_min(1e-12), torch.zeros_like(sums))
        rows = bad.to(theta.device)
        theta[rows] = restart[rows]
        for name, tensor in robot_rows(self).items():
            if name != "problem.theta":
                tensor[rows.to(tensor.device)] = 0
        self.problem.train_loss_ma[bad] = float("nan")
        resets = self.__dict__.get("robot_resets")
        if resets is None:
            resets = self.robot_resets = torch.zeros(len(bad), dtype=torch.float64)
        resets += bad.to(torch.float64)

    # ----------------------------------------------------------------------- checkpoints
    # Attributes every optimizer has that are wiring, not state that evolves in training; a subclass names the
    # attributes it rebuilds from its config in setup() in its own ``derived``.
    _WIRING = ("problem", "network", "config", "outer_iterations", "_workspace", "asynchrony", "_grads_take_out")
    derived: tuple[str, ...] = ()
    example_config: dict[str, Any] = {}  # the keys a working config needs besides outer_iterations

    @property
    def _not_state(self) -> frozenset[str]:
        names = set(self._WIRING)
        for cls in type(self).__mro__:
            names.update(cls.__dict__.get("derived", ()))
        return frozenset(names)

    def state_dict(self) -> dict[str, Any]:
        """Everything this optimizer has learned or counted (tensors, schedules, torch optimizers)."""
        return state.capture(self, [n for n in vars(self) if n not in self._not_state])

    def checkpoint(self, round_index: int) -> dict[str, Any]:
        """The state after ``round_index`` rounds: optimizer, problem and network."""
        return {"round": round_index, "optimizer": self.state_dict(), "problem": self.problem.state_dict(),
                "network": self.network.state_dict()}

    def resume(self, checkpoint: dict[str, Any]) -> int:
        """Set up, then continue from ``checkpoint``; returns the round it was taken after."""
        self._expect_rounds(self.outer_iterations - int(checkpoint["round"]))
        with torch.no_grad():
            self.setup()
            state.restore(self, checkpoint["optimizer"])
            self.problem.load_state_dict(checkpoint["problem"])
            self.network.load_state_dict(checkpoint["network"])
        return int(checkpoint["round"])

    # -------------------------------------------------------------------------- training
    def gradient_steps_per_round(self) -> int:
        """Local gradient evaluations a robot makes per round (for the node stack's compile decision)."""
        return int(self.config.get("primal_iterations") or self.config.get("steps_per_round") or 1)

    def _expect_rounds(self, rounds: int) -> None:
        stack = getattr(self.problem, "stack", None)
        if stack is not None:
            stack.expected_steps = rounds * self.gradient_steps_per_round()

    def begin(self) -> dict[str, torch.Tensor] | None:
        """Set up and evaluate at round 0; returns the metrics (None on a process that does not keep them)."""
        self._expect_rounds(self.outer_iterations)
        start = time.perf_counter()
        with torch.no_grad():
            self.setup()
        self.elapsed = time.perf_counter() - start
        self.last_finite = (0, self.problem.theta.clone())
        return self.evaluate(0)

    def train(self, progress: Callable[[int, dict | None], None] | None = None,
              profile_dir: str | Path | None = None, before_round: Callable[[int], None] | None = None,
              ) -> None:
        """Run ``outer_iterations`` rounds from the start (see :meth:`run_rounds`)."""
        self.begin()
        self.run_rounds(1, progress=progress, profile_dir=profile_dir, before_round=before_round)

    def run_rounds(self, first_round: int, progress: Callable[[int, dict | None], None] | None = None,
                   profile_dir: str | Path | None = None, before_round: Callable[[int], None] | None = None,
                   on_checkpoint: Callable[[int], None] | None = None, checkpoint_every: int | None = None,
                   ) -> None:
        """Rounds ``first_round``..``outer_iterations``, evaluating every ``evaluate_frequency`` rounds and
        at the last round. ``progress(k, metrics_or_None)`` is called after each round;
        ``on_checkpoint(k)`` after every evaluation, or every ``checkpoint_every`` rounds when given."""
        problem = self.problem
        freq = max(1, int(problem.evaluate_frequency))
        profiler = self._profiler(profile_dir) if first_round == 1 else None
        begin_round = getattr(problem, "begin_round", None)  # a problem whose data come from the round (RL episodes)
        for k in range(first_round, self.outer_iterations + 1):
            if before_round is not None:
                before_round(k)
            t0 = time.perf_counter()
            with torch.no_grad():
                if begin_round is not None:
                    begin_round(k)
                if self.asynchrony is None:
                    self.round(k)
                else:  # asleep robots' rows are put back after the round
                    self.asynchrony.run_round(self, k)
            self.elapsed += time.perf_counter() - t0
            evaluating = k % freq == 0 or k == self.outer_iterations
            self._check_finite(k, parameters_too=evaluating)
            if evaluating:
                self.last_finite = (k, problem.theta.clone())
            if profiler is not None:
                profiler.step()
                if k >= PROFILED_ROUNDS or k == self.outer_iterations:
                    profiler.__exit__(None, None, None)
                    assert profile_dir is not None  # _profiler returns one only with a profile_dir
                    with atomic_path(Path(profile_dir) / f"{problem.name}_profile.json") as partial:
                        profiler.export_chrome_trace(str(partial))
                    profiler = None
            metrics = None
            if evaluating:
                metrics = self.evaluate(k)
            if on_checkpoint is not None and k < self.outer_iterations and (
                    k % checkpoint_every == 0 if checkpoint_every else evaluating):
                on_checkpoint(k)
            if progress is not None:
                progress(k, metrics)

    def _profiler(self, profile_dir):
        if not self.config.get("profile") or profile_dir is None:
            return None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.problem.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=activities, record_shapes=True)
        prof.__enter__()
        return prof
