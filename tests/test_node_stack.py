"""The node stack's executions against ordinary per-node modules."""

import copy

import pytest
import torch
from torch import nn

from problems import node_stack
from problems.mnist import mnist_cnn
from problems.node_stack import NodeStack, auto_chunk, flatten_parameters, supports_grouped
from problems.sampling import NodeBatchSampler
from tests.helpers.stack import DT, nll, perturbed_stack, reference_loss_and_grad


class Sine(nn.Module):
    elementwise = True

    def forward(self, x):
        return torch.sin(3.0 * x)


class NotSequential(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 5)
        self.b = nn.Linear(5, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x[..., :1]


@pytest.mark.parametrize("execution,chunk", [("grouped", None), ("grouped", 3), ("vmap", None), ("vmap", 2),
                                             ("loop", None)])
def test_cnn_losses_and_grads_match_per_node_modules(execution, chunk):
    torch.manual_seed(1)
    stack, theta = perturbed_stack(mnist_cnn(3, 5, 16), 7, execution, chunk)
    x = torch.randn(7, 6, 1, 28, 28, dtype=DT)
    y = torch.randint(0, 10, (7, 6))
    losses, grads = stack.loss_and_grad(theta, x, y, nll)
    ref_losses, ref_grads = reference_loss_and_grad(stack, theta, x, y, nll)
    assert torch.allclose(losses, ref_losses, atol=1e-10)
    assert torch.allclose(grads, ref_grads, atol=1e-10)


@pytest.mark.parametrize("model_fn,sample", [
    (lambda: mnist_cnn(3, 5, 16), (1, 28, 28)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(3 * 3 * 3, 4), nn.LogSoftmax(-1)), (2, 7, 7)),  # 7 x 7: a row and column left over
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2), nn.ReLU(), nn.MaxPool2d(3),
                           nn.Flatten(), nn.Linear(3 * 2 * 2, 4), nn.LogSoftmax(-1)), (2, 13, 14)),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 2), nn.ReLU(),
                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 4), nn.LogSoftmax(-1)), (1, 12, 12))])
def test_fused_convolution_and_max_pool_gradients_match_per_node_modules(model_fn, sample, monkeypatch):
    """Each node's own batch through the first convolution + (ReLU) + max-pool as one fused step, whose
    backward routes each gradient to the pool's winner: gradients as each node's module gives them,
    also where the pool's candidates tie (constant regions, as a digit's blank background)."""
    calls = []
    original = node_stack._ConvMaxPool.apply
    monkeypatch.setattr(node_stack._ConvMaxPool, "apply", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(3)
    stack, theta = perturbed_stack(model_fn(), 5, "grouped")
    x = torch.randn(5, 4, *sample, dtype=DT)
    x[:, :2, ..., : sample[-1] // 2] = 0.25  # ties in every tile there
    y = torch.randint(0, 4, (5, 4))
    losses, grads = stack.loss_and_grad(theta, x, y, nll)
    ref_losses, ref_grads = reference_loss_and_grad(stack, theta, x, y, nll)
    assert calls, "the fused convolution and max-pool did not run"
    torch.testing.assert_close(losses, ref_losses, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=0, atol=1e-12)


@pytest.mark.parametrize("conv,tile,contiguous", [
    (nn.Conv2d(1, 3, 5), 2, True),
    (nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2), 3, True),
    (nn.Conv2d(2, 3, (2, 3), padding=(1, 0)), 1, False),
    (nn.Conv2d(3, 1, 3, stride=(1, 2)), 2, False)])
def test_shared_conv_columns_are_the_unfolded_patches_of_each_tile_offset(conv, tile, contiguous):
    """The strided columns against their definition: ``unfold`` of the (padded) input at the positions
    (tile * i + a, tile * j + b) of the convolution's output, for each offset (a, b) in the tile."""
    from problems.node_stack import conv_output_size, shared_conv_columns

    torch.manual_seed(4)
    x = torch.randn(5, 15, 14, conv.in_channels, dtype=DT).permute(0, 3, 1, 2)  # channels last: not contiguous
    x = x.contiguous() if contiguous else x[1:]
    sizes = conv_output_size(conv, x.shape[2:])
    positions = [size // tile for size in sizes]
    every = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    every = every.reshape(x.shape[0], every.shape[1], *sizes)
    columns = shared_conv_columns(x, conv, tile, positions)
    assert len(columns) == tile * tile
    for (a, b), matrix in zip([(a, b) for a in range(tile) for b in range(tile)], columns):
        picked = every[:, :, a:tile * positions[0]:tile, b:tile * positions[1]:tile]
        assert torch.equal(matrix, picked.transpose(0, 1).reshape(every.shape[1], -1))


def test_grouped_is_chosen_for_common_layers_and_vmap_otherwise():
    assert NodeStack(mnist_cnn(), 2).execution == "grouped"
    fourier = nn.Sequential(nn.Linear(2, 8), Sine(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    assert supports_grouped(fourier)
    assert NodeStack(NotSequential(), 2).execution == "vmap"
    with pytest.raises(ValueError, match="grouped"):
        NodeStack(NotSequential(), 2, execution="grouped")


@pytest.mark.parametrize("model_fn,sample", [
    (lambda: nn.Sequential(nn.Linear(2, 8), Sine(), nn.Linear(8, 1), nn.Sigmoid()), (2,)),
    (NotSequential, (2,)),
    (mnist_cnn, (1, 28, 28)),
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)),
     (2, 11, 11)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=2), nn.ReLU(), nn.Conv2d(3, 2, 2),
                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), (2, 11, 12)),
    (lambda: nn.Sequential(nn.Conv2d(1, 3, 2, bias=False), nn.Softmax(dim=1)), (1, 4, 5))])
@pytest.mark.parametrize("block_bytes,min_samples", [(256, 1), (256, 4), (1 << 30, 1)])
def test_shared_input_evaluation_matches_per_node_modules(model_fn, sample, block_bytes, min_samples, monkeypatch):
    """Blocks of nodes and samples (small ones: several of each), the shared input's convolution as one
    ordinary convolution, tiled max-pools: every node's outputs as its own module gives them."""
    monkeypatch.setattr(node_stack, "EVAL_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(node_stack, "EVAL_MIN_SAMPLES", min_samples)
    torch.manual_seed(2)
    stack, theta = perturbed_stack(model_fn(), 5, "auto", chunk_size=2)
    x = torch.randn(9, *sample, dtype=DT)
    seen = []

    def keep(out, rows):
        seen.append(rows)
        return out.movedim(1, -1)

    out = stack.evaluate(theta, x, keep)
    if block_bytes == 256:
        assert len(seen) > 2 and {r.start for r in seen} != {0}
        assert all(r.stop - r.start >= min_samples for r in seen[:-1])
    for i in range(5):
        model = copy.deepcopy(stack.template)
        nn.utils.vector_to_parameters(theta[i].clone(), model.parameters())
        assert torch.allclose(out[i], model(x).movedim(0, -1), atol=1e-12)


def test_a_nodes_validation_outputs_do_not_depend_on_how_many_nodes_its_stack_holds():
    """Processes hold blocks of robots of different sizes (10 robots on 1, 2 or 3 processes), each stack
    knowing the team's size; with ``execution: loop`` a robot's evaluation is the same bit for bit, though a
    matrix product's rounding can depend on its row count (the other executions batch the nodes of a
    block, so they need not be)."""
    execution = "loop"
    torch.manual_seed(4)
    team, theta = perturbed_stack(mnist_cnn(3, 5, 64), 10, execution)
    x = torch.randn(200, 1, 28, 28, dtype=DT)

    def logits(out, rows):
        return out.movedim(1, -1)

    whole = team.evaluate(theta, x, logits)
    for blocks in ([5, 5], [4, 3, 3], [1] * 10):
        start = 0
        for size in blocks:
            part = NodeStack(team.template, size, dtype=DT, execution=execution, team_size=10)
            assert torch.equal(part.evaluate(theta[start:start + size], x, logits), whole[start:start + size])
            start += size
    with pytest.raises(ValueError, match="team_size 3 is smaller than the 5 nodes held"):
        NodeStack(team.template, 5, team_size=3)


@pytest.mark.parametrize("size,side", [(2, 24), (2, 7), (3, 11)])
def test_tiled_max_pool_is_max_pool2d_bit_for_bit(size, side):
    x = torch.randn(4, 6, side, side).relu()  # ties at zero
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 1, 1] = float("-inf")
    layer = nn.MaxPool2d(size)
    assert node_stack._is_tiled_max_pool(layer, x)
    torch.testing.assert_close(node_stack._tiled_max_pool(x, layer), nn.functional.max_pool2d(x, size),
                               rtol=0, atol=0, equal_nan=True)
    assert not node_stack._is_tiled_max_pool(nn.MaxPool2d(3, stride=2), x)
    assert not node_stack._is_tiled_max_pool(layer, x.clone().requires_grad_(True))


def test_every_node_starts_from_the_base_model_which_stays_untouched():
    model = mnist_cnn()
    before = flatten_parameters(model).clone()
    stack = NodeStack(model, 4)
    stack.theta.add_(1.0)
    assert torch.equal(flatten_parameters(model), before)
    assert torch.equal(flatten_parameters(stack.node_model(2)), before + 1.0)


def test_auto_chunk_uses_all_nodes_for_small_batches_and_one_for_huge():
    assert auto_chunk(10, 64) == 10
    assert auto_chunk(100, 8) == 100
    assert auto_chunk(7, 12500) == 1


def test_sampler_streams_are_per_node_permutations():
    sizes = [5, 7, 12]
    split = [torch.arange(100 * i, 100 * i + s) for i, s in enumerate(sizes)]
    sampler = NodeBatchSampler(split, seed=4)
    drawn = torch.cat([sampler.next_indices(3) for _ in range(28)], dim=1)  # 84 samples per node
    for i, size in enumerate(sizes):
        stream = drawn[i]
        assert set(stream.tolist()) <= set(split[i].tolist())
        full_epochs = len(stream) // size
        for e in range(full_epochs):  # every epoch is a permutation of the node's data
            assert sorted(stream[e * size:(e + 1) * size].tolist()) == split[i].tolist()
        assert int(sampler.epochs[i]) == full_epochs
    assert sampler.samples_seen.tolist() == [84, 84, 84]
    again = NodeBatchSampler(split, seed=4)
    assert torch.equal(torch.cat([again.next_indices(3) for _ in range(28)], dim=1), drawn)


def test_a_robots_batches_depend_only_on_the_seed_its_id_and_its_data():
    split = [torch.arange(10 * i, 10 * i + 6 + i) for i in range(5)]
    everyone = NodeBatchSampler(split, seed=9)
    block = NodeBatchSampler(split[3:], seed=9, robot_ids=[3, 4])  # robots 3 and 4 hosted elsewhere
    alone = NodeBatchSampler(split[1:2], seed=9, robot_ids=[1])
    for _ in range(12):
        full = everyone.next_indices(4)
        assert torch.equal(block.next_indices(4), full[3:])
        assert torch.equal(alone.next_indices(4), full[1:2])
    other_seed = NodeBatchSampler(split, seed=10)
    assert not torch.equal(other_seed.next_indices(4), NodeBatchSampler(split, seed=9).next_indices(4))


def test_shuffles_put_each_sample_in_each_slot_about_equally_often():
    sampler = NodeBatchSampler([torch.arange(8)] * 3, seed=2)
    counts = torch.zeros(8, 8)
    for _ in range(1500):  # 1500 epochs of robot 0: slot -> sample histogram
        batch = sampler.next_indices(8)[0]
        counts[torch.arange(8), batch] += 1
    expected = 1500 / 8
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100, chi2  # 49 degrees of freedom: far below for a fair shuffle


def test_sampler_refuses_batches_larger_than_a_node():
    sampler = NodeBatchSampler([torch.arange(4), torch.arange(4, 20)])
    with pytest.raises(ValueError, match="node 0"):
        sampler.next_indices(5)


def test_auto_execution_measures_candidates_and_keeps_one_per_batch_shape():
    torch.manual_seed(5)
    stack, theta = perturbed_stack(mnist_cnn(2, 5, 8), 5, "auto")
    x = torch.randn(5, 4, 1, 28, 28, dtype=DT)
    y = torch.randint(0, 10, (5, 4))
    losses, grads = stack.loss_and_grad(theta, x, y, nll)
    (plan,) = stack.plans.values()
    assert plan in stack.candidates(4) and plan[0] == stack.execution
    assert ("loop", 5) in stack.candidates(4) and ("grouped", 1) in stack.candidates(4)
    ref_losses, ref_grads = reference_loss_and_grad(stack, theta, x, y, nll)
    assert torch.allclose(grads, ref_grads, atol=1e-10)
    stack.loss_and_grad(theta, x, y, nll)
    assert len(stack.plans) == 1  # measured once per shape


def test_mean_model_accuracy_is_the_accuracy_of_the_averaged_parameters():
    """mean_model_top1_accuracy: one number for the team, the top-1 accuracy of the mean of every robot's
    parameters (knowledge the robots hold before they agree on it), against a slow per-model reference."""
    from problems.base import ClassificationProblem

    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    split = [torch.arange(i * 30, (i + 1) * 30) for i in range(3)]
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    problem = ClassificationProblem("c", model, split, x, y, x, y, loss="CE",
                                    metrics=["top1_accuracy", "mean_model_top1_accuracy"], train_batch_size=10,
                                    val_batch_size=25, dtype=torch.float64)
    problem.theta.add_(torch.randn(problem.theta.shape, generator=g, dtype=torch.float64))
    values = problem.evaluate(0)
    mean = copy.deepcopy(model).double()
    nn.utils.vector_to_parameters(problem.theta.mean(0), mean.parameters())
    expected = (mean(x).argmax(1) == y).double().mean()
    assert values["mean_model_top1_accuracy"].shape == (1,)
    assert float(values["mean_model_top1_accuracy"]) == pytest.approx(float(expected), abs=1e-12)
    each = torch.stack([(problem.stack.node_model(i)(x).argmax(1) == y).double().mean() for i in range(3)])
    assert torch.allclose(values["top1_accuracy"], each)


def test_evaluation_blocks_hold_at_least_the_floor_of_samples(monkeypatch):
    """A small activation budget gives few samples per block; the floor raises them (each block reads its
    nodes' parameters again), and the block follows the team's size, not the stack's."""
    stack = NodeStack(mnist_cnn(), 4, team_size=100)
    x = torch.zeros(500, 1, 28, 28)
    monkeypatch.setattr(node_stack, "EVAL_MIN_SAMPLES", 1)
    nodes, samples = stack.eval_block(x)
    assert (nodes, samples) == (4, (node_stack.EVAL_BLOCK_BYTES // (3 * 24 * 24 * 4)) // 16)
    monkeypatch.setattr(node_stack, "EVAL_MIN_SAMPLES", 128)
    assert stack.eval_block(x) == (4, max(samples, 128))
