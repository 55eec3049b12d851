"""The compiled node stack (``compile: on | auto | off``): the same losses and gradients as per-node modules,
chosen by measurement only where a run pays for the compile, a failing compiler means eager with one note,
and the decision is kept across a resume."""

from __future__ import annotations

import json

import pytest
import torch

from problems import node_stack
from problems.base import per_node_loss
from problems.density import fourier_net
from problems.mnist import mnist_cnn
from problems.node_stack import NodeStack
from tests.helpers.stack import DT, nll, perturbed_stack, reference_loss_and_grad


def bce(out, y):
    return per_node_loss("BCE", out, y).mean(1)


def density_batch(n, batch, gen):
    x = (torch.rand(n, batch, 2, generator=gen, dtype=DT) - 0.5) * 400
    return x, (torch.rand(n, batch, 1, generator=gen, dtype=DT) > 0.8).to(DT)


@pytest.mark.integration  # each compiles with inductor: tens of seconds
@pytest.mark.parametrize("execution,chunk", [("grouped", None), ("grouped", 1), ("loop", None)])
def test_compiled_density_steps_match_per_node_modules_in_float64(execution, chunk):
    torch.manual_seed(2)
    stack, theta = perturbed_stack(fourier_net([2, 32, 16, 16, 1], 0.05), 3, execution, chunk)
    stack.compile = "on"
    x, y = density_batch(3, 300, torch.Generator().manual_seed(1))
    losses, grads = stack.loss_and_grad(theta, x, y, bce)
    assert stack.compiled == {(300, 2): True} and stack.compile_sources[(300, 2)] == "config"
    ref_losses, ref_grads = reference_loss_and_grad(stack, theta, x, y, bce)
    assert torch.allclose(losses, ref_losses, atol=1e-10, rtol=0)
    assert torch.allclose(grads, ref_grads, atol=1e-10, rtol=0)
    x2, y2 = density_batch(3, 300, torch.Generator().manual_seed(2))  # a second batch: the compiled graph again
    losses2, grads2 = stack.loss_and_grad(theta, x2, y2, bce)
    assert torch.allclose(grads2, reference_loss_and_grad(stack, theta, x2, y2, bce)[1], atol=1e-10, rtol=0)


@pytest.mark.integration  # each compiles with inductor: tens of seconds
def test_compiled_cnn_steps_match_per_node_modules_in_float64():
    torch.manual_seed(1)
    stack, theta = perturbed_stack(mnist_cnn(3, 5, 16), 4, "grouped")
    stack.compile = "on"
    x = torch.randn(4, 6, 1, 28, 28, dtype=DT)
    y = torch.randint(0, 10, (4, 6))
    losses, grads = stack.loss_and_grad(theta, x, y, nll)
    ref_losses, ref_grads = reference_loss_and_grad(stack, theta, x, y, nll)
    assert torch.allclose(losses, ref_losses, atol=1e-10, rtol=0)
    assert torch.allclose(grads, ref_grads, atol=1e-10, rtol=0)


@pytest.mark.integration  # each compiles with inductor: tens of seconds
def test_auto_compiles_only_where_the_run_pays_for_it(monkeypatch, tmp_path):
    x, y = density_batch(2, 200, torch.Generator().manual_seed(3))
    short = NodeStack(fourier_net([2, 16, 1], 0.05), 2, dtype=DT, execution="grouped", compile="auto")
    short.expected_steps = 10
    short.loss_and_grad(short.theta, x, y, bce)
    assert short.compiled == {(200, 2): False}
    assert short.compile_sources[(200, 2)] in ("run too short to pay for a compile",
                                               "steps too small to gain from a compile")
    assert not short._compiled_fns  # nothing was compiled
    # a long run: measured, compiled where faster, and the decision kept in the plan cache for the next run
    monkeypatch.setattr(node_stack, "COMPILE_WORTH_SECONDS", 0.0)
    monkeypatch.setattr(node_stack, "COMPILE_MIN_STEP_SECONDS", 0.0)
    cache = node_stack.ExecutionPlanCache(tmp_path / "plans.json")
    long = NodeStack(fourier_net([2, 16, 1], 0.05), 2, dtype=DT, execution="grouped", compile="auto",
                     plan_cache=cache)
    long.expected_steps = 10 ** 9
    long.loss_and_grad(long.theta, x, y, bce)
    assert long.compile_sources[(200, 2)] == "measured"
    facts = long.compile_facts[(200, 2)]
    assert facts["compile_s"] > 0 and facts["eager_step_s"] > 0 and facts["compiled_step_s"] > 0
    assert long.compiled[(200, 2)] == (facts["compiled_step_s"] < 0.95 * facts["eager_step_s"])
    stored = [v for k, v in json.loads((tmp_path / "plans.json").read_text()).items() if k.startswith("compile |")]
    assert stored == [long.compiled[(200, 2)]]
    again = NodeStack(fourier_net([2, 16, 1], 0.05), 2, dtype=DT, execution="grouped", compile="auto",
                      plan_cache=cache)
    again.expected_steps = 10 ** 9
    again.loss_and_grad(again.theta, x, y, bce)
    assert again.compile_sources[(200, 2)] == "cache" and again.compiled == long.compiled


def test_a_compiler_that_fails_means_eager_steps_and_one_note(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    stack, theta = perturbed_stack(fourier_net([2, 16, 1], 0.05), 2, "grouped")
    stack.compile = "on"
    x, y = density_batch(2, 100, torch.Generator().manual_seed(4))
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler here.*run eager"):
        losses, grads = stack.loss_and_grad(theta, x, y, bce)
    assert stack.compiled == {(100, 2): False} and stack.compile_sources[(100, 2)] == "compiler failed"
    assert len(stack.notes) == 1
    assert torch.allclose(grads, reference_loss_and_grad(stack, theta, x, y, bce)[1], atol=1e-10, rtol=0)
    stack.loss_and_grad(theta, x, y, bce)  # decided once: no second note
    assert len(stack.notes) == 1


def test_an_interrupt_during_the_compile_stays_an_interrupt(monkeypatch):
    def interrupted(fn, **kwargs):
        def call(*args):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise RuntimeError("backend compiler failed") from exc  # how a compiler wraps it
        return call

    monkeypatch.setattr(torch, "compile", interrupted)
    stack, theta = perturbed_stack(fourier_net([2, 16, 1], 0.05), 2, "grouped")
    stack.compile = "on"
    x, y = density_batch(2, 100, torch.Generator().manual_seed(5))
    with pytest.raises(KeyboardInterrupt):
        stack.loss_and_grad(theta, x, y, bce)
