"""N copies of one ``nn.Module`` architecture held as one stacked parameter tensor.

Every node's parameters are one row of ``theta`` (shape ``(N, n)``). A forward pass for a
block of nodes takes the matching rows, so one call evaluates every node on its own batch.

Two execution forms are used:

* **grouped kernels** for ``nn.Sequential`` models built from common layers (Conv2d as one
  grouped convolution with ``groups = nodes * groups``, Linear as ``baddbmm``, element-wise
  activations, pooling, Flatten, (Log)Softmax);
* ``torch.vmap`` over ``torch.func.functional_call`` for every other module.

Nodes are processed in chunks. With ``execution="auto"`` the stack measures the candidate forms
(grouped / vmap / a per-node loop, each with a few chunk sizes) on the first batch of each shape and
keeps the fastest; small batches usually run as one stacked call and very large (memory-bound)
ones node by node. The choice only changes speed and float rounding, never the math.

``compile`` (``auto | on | off``): a chunk's forward, loss and backward as one ``torch.compile``d graph
(inductor fuses the element-wise work: sine, ReLU masks, the loss and their gradients). ``on`` compiles the
chosen form; ``auto`` compiles it only where the run is long enough to pay for the compile and keeps it only
when it measures faster (recorded like the execution plan); a compiler that fails falls back to eager with
one note.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypeGuard, cast

import torch
from torch import nn
from torch.func import functional_call

# Layers that act element-wise (or per channel) and therefore need no node awareness.
_ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
    nn.Identity, nn.Hardtanh, nn.Mish,
)
_POOLING = (nn.MaxPool2d, nn.AvgPool2d)

EXECUTIONS = ("auto", "grouped", "vmap", "loop")
COMPILE_MODES = ("auto", "on", "off")
# ``compile: auto`` compiles a training step only when the eager steps the run expects take at least this
# many seconds (a CPU compile takes 10-40 s), and keeps it only when it saves more than it cost.
COMPILE_WORTH_SECONDS = 120.0
# ... and only for steps of at least this many seconds: in smaller ones launching kernels is the cost, which a
# compiled graph does not remove
COMPILE_MIN_STEP_SECONDS = 0.005

# Per-node samples per chunk that the automatic chunking aims for.
DEFAULT_SAMPLES_PER_CHUNK = 4096
# Evaluation blocks: at most this many nodes, and about this many bytes in the largest activation ...
EVAL_BLOCK_NODES = 16
EVAL_BLOCK_BYTES = 4 << 20
# ... but at least this many samples: every block reads its nodes' parameters again, from memory once the
# team's parameters outgrow the cache (1,000 MNIST robots: 114 MB), so a block of few samples spends its time
# reading them (1,000 robots, 2 cores, side by side in two runs: 20.8 / 21.8 s with 37 samples a block, 19.7 /
# 17.5 s with 128).
EVAL_MIN_SAMPLES = 128
# Smaller chunk sizes (nodes) that the automatic choice also measures.
INTERMEDIATE_CHUNKS = (16, 64, 256)


@dataclass(frozen=True)
class ParamSlot:
    name: str
    shape: torch.Size
    offset: int
    numel: int


def parameter_slots(model: nn.Module) -> list[ParamSlot]:
    slots, offset = [], 0
    for name, p in model.named_parameters():
        slots.append(ParamSlot(name, p.shape, offset, p.numel()))
        offset += p.numel()
    return slots


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy one flat parameter vector into ``model``'s parameters."""
    with torch.no_grad():
        for slot, p in zip(parameter_slots(model), model.parameters()):
            p.copy_(flat[slot.offset:slot.offset + slot.numel].view(slot.shape))


def is_elementwise(module: nn.Module) -> bool:
    return isinstance(module, _ELEMENTWISE) or getattr(module, "elementwise", False)


class Branches(nn.Module):
    """Sub-networks side by side on one input, their outputs concatenated along the last axis (e.g. a policy's
    actor and critic: one model, so one row of the node stack per robot). The stack runs each branch with grouped
    kernels when every branch has them."""

    def __init__(self, **branches: nn.Module):
        super().__init__()
        if not branches:
            raise ValueError("Branches needs at least one sub-network")
        for name, branch in branches.items():
            self.add_module(name, branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], dim=-1)


def supports_grouped(model: nn.Module) -> bool:
    """True when every layer of ``model`` has a grouped (node-batched) kernel."""
    if isinstance(model, Branches):
        return all(supports_grouped(branch) for branch in model.children())
    if not isinstance(model, nn.Sequential):
        return False
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                return False
        elif isinstance(layer, (nn.Linear, nn.Flatten, nn.LogSoftmax, nn.Softmax) + _POOLING):
            if isinstance(layer, nn.Flatten) and layer.end_dim != -1:
                return False
        elif not is_elementwise(layer):
            return False
    return True


class _GroupedForward:
    """Forward of an ``nn.Sequential`` for a block of nodes with grouped kernels.

    Activations live in one of three layouts: ``"nodes"`` = (k, B, *features) for linear
    layers, ``"channels"`` = (B, k * C, H, W) for convolution and pooling, and ``"filters"`` =
    (k * C, B, H, W), what a convolution of one input shared by every node gives when it runs as a
    single matrix product of all the nodes' filters with the input's patches.
    """

    fuse_conv_pool = True  # each node's own input: convolution + max-pool as one _ConvMaxPool (False: as before)

    def __init__(self, model: nn.Sequential, slots: Sequence[ParamSlot], prefix: str = ""):
        self.layers = list(model)
        by_name = {s.name: s for s in slots}
        self.layer_params: list[dict[str, str]] = []
        for idx, layer in enumerate(self.layers):  # each layer's own parameter names -> the model's
            self.layer_params.append({n: by_name[f"{prefix}{idx}.{n}"].name for n, _ in layer.named_parameters()})
        # (shared input, its patches as columns) of the last shared-input convolution
        self._columns: tuple[torch.Tensor, dict] | None = None

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        k = next(iter(params.values())).shape[0]
        layout = "shared" if shared_input else "nodes"
        relu_after_pool, next_layer = False, 0
        for index, (layer, names) in enumerate(zip(self.layers, self.layer_params)):
            if index < next_layer:  # taken by a shared-input convolution
                continue
            if isinstance(layer, nn.ReLU) and layout in ("channels", "filters") and self._max_pool_next(index, x):
                relu_after_pool = True  # max(relu(a), relu(b)) = relu(max(a, b)) on a quarter of the values
                continue
            if isinstance(layer, nn.Conv2d) and layout == "shared" and _is_plain_conv(layer):
                x, next_layer = self._shared_conv(x, index, params)
                layout = "filters"
            elif (self.fuse_conv_pool and isinstance(layer, nn.Conv2d) and layout == "nodes" and _is_plain_conv(layer)
                  and not x.requires_grad and (fused := self._node_conv(x, index, params))[0] is not None):
                x, next_layer = cast("tuple[torch.Tensor, int]", fused)  # its output: not None (checked above)
                layout = "channels"
            elif isinstance(layer, nn.Conv2d):
                weight = params[names["weight"]]
                weight = weight.reshape(k * weight.shape[1], *weight.shape[2:])
                bias = params[names["bias"]].reshape(-1) if "bias" in names else None
                # every node's filters on one shared input are one ordinary convolution with k times
                # the filters (no copy of the input per node)
                groups = 1 if layout == "shared" and layer.groups == 1 else layer.groups * k
                x = self._to_channels(x, layout, k, layer.groups)
                layout = "channels"
                x = nn.functional.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, groups)
            elif isinstance(layer, _POOLING):
                x = self._to_channels(x, layout, k)
                layout = "channels"
                x = _tiled_max_pool(x, layer) if _is_tiled_max_pool(layer, x) else layer(x)
                if relu_after_pool:
                    x = x.relu_()
                    relu_after_pool = False
            elif isinstance(layer, nn.Flatten):
                if layout == "filters":  # (k*C, B, H, W) -> (k, B, C*H*W)
                    x = x.reshape(k, x.shape[0] // k, x.shape[1], -1).transpose(1, 2).reshape(k, x.shape[1], -1)
                    layout = "nodes"
                elif layout == "channels":
                    batch = x.shape[0]
                    x = x.reshape(batch, k, -1).transpose(0, 1)
                    layout = "nodes"
                elif layout == "shared":
                    x = torch.flatten(x, layer.start_dim, layer.end_dim)
                else:
                    x = torch.flatten(x, layer.start_dim + 1, layer.end_dim)
            elif isinstance(layer, nn.Linear):
                weight = params[names["weight"]]
                if layout in ("channels", "filters"):
                    raise ValueError("nn.Linear directly after a convolution needs an nn.Flatten")
                if layout == "shared":
                    x = x.unsqueeze(0).expand(k, *x.shape)
                    layout = "nodes"
                if x.dim() == 3 and weight.requires_grad and x.shape[1] < weight.shape[-1]:
                    # (W x^T)^T: the weight's gradient comes out in the weight's own layout, not as a transposed
                    # copy, which costs more than the product when the batch is narrower than the layer's input
                    x_t = x.transpose(1, 2)
                    x = (torch.bmm(weight, x_t) if "bias" not in names else
                         torch.baddbmm(params[names["bias"]].unsqueeze(-1), weight, x_t)).transpose(1, 2)
                elif "bias" in names:
                    bias = params[names["bias"]].unsqueeze(1)
                    x = torch.baddbmm(bias, x, weight.transpose(1, 2)) if x.dim() == 3 else \
                        torch.matmul(x, weight.transpose(1, 2).unsqueeze(1)) + bias.unsqueeze(1)
                else:
                    x = torch.bmm(x, weight.transpose(1, 2)) if x.dim() == 3 else \
                        torch.matmul(x, weight.transpose(1, 2).unsqueeze(1))
            elif isinstance(layer, (nn.LogSoftmax, nn.Softmax)):
                x = self._to_nodes(x, layout, k)
                layout = "nodes"
                dim = layer.dim if layer.dim is not None else -1
                dim = dim + 1 if dim >= 0 else dim
                fn = torch.log_softmax if isinstance(layer, nn.LogSoftmax) else torch.softmax
                x = fn(x, dim)
            else:  # element-wise
                x = layer(x)
        x = self._to_nodes(x, layout, k)
        return x

    def release(self) -> None:
        """Forget the cached patches of the last shared input."""
        self._columns = None

    def _shared_conv(self, x: torch.Tensor, index: int, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Every node's filters of convolution ``index`` on one input batch (B, C_in, H, W) shared by all nodes,
        as matrix products of all the filters with the input's patches: (k * C_out, B, H_out, W_out), and
        the index of the next layer to run. A non-overlapping max-pool after it (with a ReLU between or
        not) is taken along outside autograd: one product per position in the pooling tile, on the patches
        of those positions only, folded with a running maximum; the bias (and the ReLU) come after the
        maximum, which gives the same values."""
        layer, names = cast(nn.Conv2d, self.layers[index]), self.layer_params[index]
        weight, bias = params[names["weight"]], params.get(names["bias"]) if "bias" in names else None
        if self._columns is None or self._columns[0] is not x:  # the same input for every chunk of nodes
            self._columns = (x, {})
        cache = self._columns[1]
        filters = weight.reshape(weight.shape[0] * weight.shape[1], -1)
        sizes = conv_output_size(layer, x.shape[2:])
        relu = index + 2 < len(self.layers) and isinstance(self.layers[index + 1], nn.ReLU)
        pool = self.layers[index + 1 + relu] if index + 1 + relu < len(self.layers) else None
        tiled = pool is not None and _is_tiled_max_pool(pool, x) and min(sizes) >= pool.kernel_size
        if not tiled:
            if index not in cache:
                cache[index] = shared_conv_columns(x, layer, 1, sizes)[0]
            out = filters @ cache[index] if bias is None else torch.addmm(bias.reshape(-1, 1), filters, cache[index])
            return out.view(filters.shape[0], x.shape[0], *sizes), index + 1
        tile = cast("_TiledMaxPool", pool).kernel_size
        pooled = [size // tile for size in sizes]
        if index not in cache:
            cache[index] = shared_conv_columns(x, layer, tile, pooled)
        out = filters @ cache[index][0]
        for columns in cache[index][1:]:
            torch.maximum(out, filters @ columns, out=out)
        if bias is not None:
            out.add_(bias.reshape(-1, 1))
        if relu:
            out.relu_()
        return out.view(filters.shape[0], x.shape[0], *pooled), index + 2 + relu

    def _node_conv(self, x: torch.Tensor, index: int,
                   params: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
        """Convolution ``index`` and the non-overlapping max-pool after it (with a ReLU between or not) of each
        node's own input batch (k, B, C_in, H, W), an input that needs no gradient (the data), as one
        ``_ConvMaxPool``: (B, k * C_out, P_h, P_w) in the channels layout, and the index of the next layer to
        run; (None, index) when no such max-pool follows."""
        layer, names = cast(nn.Conv2d, self.layers[index]), self.layer_params[index]
        relu = index + 2 < len(self.layers) and isinstance(self.layers[index + 1], nn.ReLU)
        pool = self.layers[index + 1 + relu] if index + 1 + relu < len(self.layers) else None
        sizes = conv_output_size(layer, x.shape[3:])
        if pool is None or not _is_tiled_max_pool(pool, x[0]) or min(sizes) < pool.kernel_size:
            return None, index
        weight, bias = params[names["weight"]], params.get(names["bias"]) if "bias" in names else None
        k = weight.shape[0]
        filters = weight.reshape(k * weight.shape[1], *weight.shape[2:])
        inputs = self._to_channels(x, "nodes", k)
        out = _ConvMaxPool.apply(filters, None if bias is None else bias.reshape(-1), inputs, layer,
                                 pool.kernel_size, relu)
        return out, index + 2 + relu

    def _max_pool_next(self, index: int, x: torch.Tensor) -> bool:
        following = self.layers[index + 1] if index + 1 < len(self.layers) else None
        return following is not None and _is_tiled_max_pool(following, x)

    @staticmethod
    def _to_channels(x: torch.Tensor, layout: str, k: int, conv_groups: int | None = None) -> torch.Tensor:
        """``x`` in the channels layout; a shared input that feeds an ungrouped convolution stays as it is."""
        if layout == "channels" or (layout == "shared" and conv_groups == 1):
            return x
        if layout == "filters":  # (k*C, B, H, W) -> (B, k*C, H, W)
            return x.transpose(0, 1).contiguous()
        if layout == "shared":  # (B, C, H, W) -> (B, k*C, H, W)
            return x.repeat(1, k, 1, 1)
        # (k, B, C, H, W) -> (B, k*C, H, W)
        return x.transpose(0, 1).reshape(x.shape[1], k * x.shape[2], *x.shape[3:])

    @staticmethod
    def _to_nodes(x: torch.Tensor, layout: str, k: int) -> torch.Tensor:
        if layout == "nodes":
            return x
        if layout == "shared":
            return x.unsqueeze(0).expand(k, *x.shape)
        if layout == "filters":  # (k*C, B, ...) -> (k, B, C, ...)
            return x.reshape(k, x.shape[0] // k, *x.shape[1:]).transpose(1, 2)
        batch = x.shape[0]
        return x.reshape(batch, k, x.shape[1] // k, *x.shape[2:]).transpose(0, 1)


class _BranchedForward:
    """Forward of a :class:`Branches` model for a block of nodes: each branch's grouped forward, concatenated."""

    def __init__(self, model: Branches, slots: Sequence[ParamSlot]):
        self.branches = [_GroupedForward(cast(nn.Sequential, branch), slots, prefix=f"{name}.")
                         for name, branch in model.named_children()]

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        return torch.cat([branch(params, x, shared_input) for branch in self.branches], dim=-1)

    def release(self) -> None:
        for branch in self.branches:
            branch.release()


def grouped_forward(model: nn.Module, slots: Sequence[ParamSlot]) -> _GroupedForward | _BranchedForward:
    """The grouped forward of a model that :func:`supports_grouped`."""
    if isinstance(model, Branches):
        return _BranchedForward(model, slots)
    return _GroupedForward(cast(nn.Sequential, model), slots)


class _ConvMaxPool(torch.autograd.Function):
    """Per-node convolution of inputs that need no gradient, then a non-overlapping max-pool, the bias and a
    ReLU if asked, in the channels layout: x (B, k * C_in, H, W), filters (k * C_out, C_in, kh, kw), bias
    (k * C_out,) or None -> (B, k * C_out, P_h, P_w). The backward sends each output's gradient to the
    position that won the pool (the first of equal ones, as max_pool2d does) and computes the filters'
    gradient as one grouped convolution of the input with that gradient (no patch matrices)."""

    @staticmethod
    def forward(ctx, filters, bias, x, layer, tile, relu):
        k = filters.shape[0] // layer.out_channels
        full = nn.functional.conv2d(x, filters, None, layer.stride, layer.padding, layer.dilation, k)
        rows, cols = full.shape[-2] // tile * tile, full.shape[-1] // tile * tile
        out = full[..., 0:rows:tile, 0:cols:tile].clone()
        winner = torch.zeros(out.shape, dtype=torch.uint8, device=out.device)
        for position in range(1, tile * tile):
            a, b = divmod(position, tile)
            candidate = full[..., a:rows:tile, b:cols:tile]
            better = candidate > out
            winner.mul_(better.logical_not()).add_(better, alpha=position)  # masked_fill_ is several times slower
            torch.maximum(out, candidate, out=out)
        if bias is not None:
            out.add_(bias.view(-1, 1, 1))
        if relu:
            out.relu_()
        ctx.layer, ctx.tile, ctx.relu, ctx.has_bias = layer, tile, relu, bias is not None
        ctx.full_size = full.shape
        ctx.save_for_backward(out, winner, x, filters)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, winner, x, filters = ctx.saved_tensors
        layer, tile = ctx.layer, ctx.tile
        if ctx.relu:
            grad = grad * (out > 0)
        rows, cols = grad.shape[-2] * tile, grad.shape[-1] * tile
        covered = rows == ctx.full_size[-2] and cols == ctx.full_size[-1]
        size = (ctx.full_size[1], ctx.full_size[0], *ctx.full_size[2:])  # (k * C_out, B, ...): the kernels' layout
        grad_full = (grad.new_empty(size) if covered else grad.new_zeros(size)).transpose(0, 1)
        for position in range(tile * tile):
            a, b = divmod(position, tile)
            torch.mul(grad, winner == position, out=grad_full[..., a:rows:tile, b:cols:tile])
        batch, k_in = x.shape[:2]
        c_in, (kh, kw) = filters.shape[1], filters.shape[2:]
        k = k_in // c_in
        # d filters[n, o, i] = sum over b of the correlation of x[b, n, i] with grad_full[b, n, o]
        inputs = x.reshape(batch, k, c_in, *x.shape[2:]).permute(2, 1, 0, 3, 4).reshape(c_in, k * batch, *x.shape[2:])
        kernels = grad_full.reshape(batch, k, -1, *grad_full.shape[2:]).permute(1, 2, 0, 3, 4)
        kernels = kernels.reshape(-1, batch, *grad_full.shape[2:])
        grad_filters = nn.functional.conv2d(inputs, kernels, None, layer.dilation, layer.padding, layer.stride, k)
        grad_filters = grad_filters[..., :kh, :kw].transpose(0, 1).reshape(filters.shape)
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_filters, grad_bias, None, None, None, None


def _is_plain_conv(layer: nn.Conv2d) -> bool:
    """An ungrouped convolution with numeric zero padding (what ``_shared_conv`` computes)."""
    return layer.groups == 1 and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def conv_output_size(layer: nn.Conv2d, size: Sequence[int]) -> list[int]:
    padding = cast("tuple[int, ...]", layer.padding)  # numeric (_is_plain_conv), not "same" / "valid"
    return [(s + 2 * pad - dil * (kernel - 1) - 1) // stride + 1 for s, pad, dil, kernel, stride in
            zip(size, padding, layer.dilation, layer.kernel_size, layer.stride)]


def shared_conv_columns(x: torch.Tensor, layer: nn.Conv2d, tile: int, positions: Sequence[int]) -> list[torch.Tensor]:
    """The patches of an input batch (B, C_in, H, W) that ``layer``'s filters see, as columns
    (C_in * kh * kw, B * P_h * P_w): one matrix per offset (a, b) in a tile x tile pooling tile, holding the
    patches of the output positions (tile * i + a, tile * j + b) for the P_h x P_w tiles (tile 1: every
    output position). Each matrix is one copy of a strided view of the input (``unfold`` followed by the
    transpose to this layout writes every patch twice and takes four times as long)."""
    pad_h, pad_w = cast("tuple[int, int]", layer.padding)  # numeric (_is_plain_conv), not "same" / "valid"
    padded = nn.functional.pad(x, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else x
    batch, channels = padded.shape[:2]
    (kh, kw), (dil_h, dil_w) = layer.kernel_size, layer.dilation
    s_batch, s_channel, s_row, s_col = padded.stride()
    shape = (channels, kh, kw, batch, positions[0], positions[1])
    strides = (s_channel, dil_h * s_row, dil_w * s_col, s_batch, tile * layer.stride[0] * s_row,
               tile * layer.stride[1] * s_col)
    matrices = []
    for a in range(tile):
        for b in range(tile):
            start = padded.storage_offset() + a * layer.stride[0] * s_row + b * layer.stride[1] * s_col
            patches = padded.as_strided(shape, strides, start)
            matrices.append(patches.reshape(channels * kh * kw, batch * positions[0] * positions[1]))
    return matrices


if TYPE_CHECKING:
    class _TiledMaxPool(nn.MaxPool2d):
        """What :func:`_is_tiled_max_pool` accepts: a max-pool whose ``kernel_size`` is one int."""
        kernel_size: int


def _is_tiled_max_pool(layer: nn.Module, x: torch.Tensor) -> TypeGuard[_TiledMaxPool]:
    """A max-pool over non-overlapping square tiles, outside autograd (where the strided maximum of
    ``_tiled_max_pool`` gives the same values much faster than the CPU max_pool2d kernel)."""
    if not isinstance(layer, nn.MaxPool2d) or x.requires_grad or layer.return_indices or layer.ceil_mode:
        return False
    size, stride = layer.kernel_size, layer.stride if layer.stride is not None else layer.kernel_size
    return (isinstance(size, int) and size >= 2 and size == stride and layer.padding == 0 and layer.dilation == 1
            and x.dim() == 4 and x.shape[-1] >= size and x.shape[-2] >= size)


def _tiled_max_pool(x: torch.Tensor, layer: _TiledMaxPool) -> torch.Tensor:
    size = layer.kernel_size
    rows, cols = x.shape[-2] // size * size, x.shape[-1] // size * size
    tiles = [x[..., i:rows:size, j:cols:size] for i in range(size) for j in range(size)]
    out = torch.maximum(tiles[0], tiles[1])
    for tile in tiles[2:]:
        torch.maximum(out, tile, out=out)
    return out


# Layers whose behaviour depends on train/eval mode or on running buffers: the stack keeps only
# parameters per node, so it refuses them rather than silently sharing statistics between nodes.
_MODE_DEPENDENT = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd, nn.AlphaDropout)


def check_stackable(model: nn.Module) -> None:
    """Refuse models the stack would get silently wrong (per-node buffers, train-mode behaviour)."""
    for name, module in model.named_modules():
        if isinstance(module, _MODE_DEPENDENT):
            raise ValueError(f"node stack: layer {name or type(module).__name__} ({type(module).__name__}) "
                             f"needs per-node running statistics or train/eval modes, which the stack does "
                             f"not keep; use a model without BatchNorm/Dropout (e.g. GroupNorm/LayerNorm)")
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ValueError(f"node stack: the model has buffers ({', '.join(buffers[:3])}), which would be shared "
                         f"by all nodes; use a model whose state is all parameters")


class ExecutionPlanCache:
    """Execution choices of the automatic node stack, kept in a JSON file so that reruns reuse them.

    Keyed by everything that decides which form is fastest (model, nodes, batch shape, dtype, device,
    threads, torch version): the first run measures, later runs on the same machine take the same
    decision and therefore compute bit-identical numbers. The file is input like any other: an entry of the wrong
    shape (an unknown execution, a chunk that is not a whole number from 1 to the robots, a compile decision that is
    not true or false) is ignored with one note naming the file, and measured again. Writes hold an ``fcntl`` lock
    and re-read the file first, so that of runs measuring at once the first to write is kept, as docs/running.md says.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._noted: set[str] = set()

    def _note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            from foundation.log import LOG

            LOG.warning(f"note: execution-plan cache {self.path}: {message}")

    def _read(self) -> dict:
        if self.path.is_dir():
            self._note("is a folder, not a file; plans are measured and not kept")
            return {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError):
            self._note("cannot be read (damaged or not JSON); plans are measured again and the file rewritten")
            return {}
        if not isinstance(data, dict):
            self._note("is not a mapping of plans; plans are measured again and the file rewritten")
            return {}
        return data

    def get(self, key: str):
        """The (execution, nodes per chunk) stored under ``key`` (a compile decision is stored as a bool), or None
        when there is none or it is not a valid one (then it is measured again)."""
        return self._valid(key, self._read().get(key))

    def _valid(self, key: str, entry):
        if entry is None:
            return None
        if key.startswith("compile | "):
            if isinstance(entry, bool):
                return entry
            self._note(f"the compile decision {entry!r} is not true or false; measured again")
            return None
        nodes = _nodes_of(key)
        if (isinstance(entry, list) and len(entry) == 2 and entry[0] in EXECUTIONS and entry[0] != "auto"
                and isinstance(entry[1], int) and not isinstance(entry[1], bool)
                and 1 <= entry[1] <= (nodes if nodes is not None else entry[1])):
            return entry[0], entry[1]
        self._note(f"the plan {entry!r} is not [grouped | vmap | loop, nodes per chunk from 1 to "
                   f"{nodes if nodes is not None else 'the robots'}]; measured again")
        return None

    def put(self, key: str, choice):
        """Keep ``choice`` under ``key`` unless another run kept a valid one first; returns what the file holds."""
        if self.path.is_dir():
            self._note("is a folder, not a file; plans are measured and not kept")
            return choice
        value = choice if isinstance(choice, bool) else list(choice)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                data = self._read()
                kept = self._valid(key, data.get(key))
                if kept is not None:
                    return kept  # the first measurement stays
                data[key] = value
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
        except OSError:  # a read-only cache only costs the measurement next time
            tmp.unlink(missing_ok=True)
        return choice


def _nodes_of(key: str) -> int | None:
    """The number of robots a plan key names ("... | nodes N | ...")."""
    for part in key.split(" | "):
        if part.startswith("nodes "):
            try:
                return int(part.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def default_plan_cache() -> ExecutionPlanCache:
    """``$NNDT_PLAN_CACHE``, else ``~/.cache/nn_distributed_training/execution_plans.json``."""
    path: str | Path | None = os.environ.get("NNDT_PLAN_CACHE")
    if not path:
        path = Path.home() / ".cache" / "nn_distributed_training" / "execution_plans.json"
    return ExecutionPlanCache(path)


class NodeStack:
    """All node models of one architecture as a stacked ``(N, n)`` parameter tensor.

    ``theta`` starts as N copies of ``model``'s parameters. The stack never modifies
    ``model`` itself; it keeps its own frozen template copy.
    """

    def __init__(self, model: nn.Module, num_nodes: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, execution: str = "auto",
                 chunk_size: int | None = None, plan_cache: ExecutionPlanCache | None = None,
                 team_size: int | None = None, compile: str = "off"):
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
        if team_size is not None and team_size < num_nodes:
            raise ValueError(f"team_size {team_size} is smaller than the {num_nodes} nodes held")
        check_stackable(model)
        self.num_nodes = num_nodes
        self.team_size = team_size or num_nodes  # the whole team, when this stack holds one process's block
        self.device = torch.device(device)
        self.dtype = dtype
        self.template = copy.deepcopy(model).to(device=self.device, dtype=dtype)
        for p in self.template.parameters():
            p.requires_grad_(False)
        self.template.eval()
        self.slots = parameter_slots(self.template)
        self.num_params = sum(s.numel for s in self.slots)
        initial = flatten_parameters(self.template)
        self.theta = initial.unsqueeze(0).repeat(num_nodes, 1).contiguous()
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
        grouped_ok = supports_grouped(self.template)
        if execution == "grouped" and not grouped_ok:
            raise ValueError("this model has layers without grouped kernels; use execution 'vmap'")
        self.autotune = execution == "auto"
        self.execution = ("grouped" if grouped_ok else "vmap") if self.autotune else execution
        self.chunk_size = chunk_size
        self._grouped = grouped_forward(self.template, self.slots) if grouped_ok else None
        self._activation_width: dict[tuple, int] = {}
        self.plans: dict[tuple, tuple[str, int]] = {}
        self.plan_sources: dict[tuple, str] = {}
        self.plan_cache = plan_cache
        self._buffers = {n: b for n, b in self.template.named_buffers()}
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        self.compile = compile
        self.expected_steps: int | None = None  # loss-and-gradient calls the run expects (compile: auto)
        self.compiled: dict[tuple, bool] = {}  # per batch shape: whether its training step runs compiled
        self.compile_sources: dict[tuple, str] = {}
        self.compile_facts: dict[tuple, dict] = {}  # seconds to compile, eager and compiled step times
        self._compiled_fns: dict[tuple, Callable] = {}
        self.notes: list[str] = []

    # ----------------------------------------------------------------------------- views
    def param_dict(self, theta_row: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-layer views of one node's flat parameter vector (or of a (k, n) block)."""
        lead = theta_row.shape[:-1]
        return {s.name: theta_row[..., s.offset:s.offset + s.numel].reshape(*lead, *s.shape)
                for s in self.slots}

    def node_model(self, node: int) -> nn.Module:
        """An ordinary ``nn.Module`` holding a copy of one node's parameters."""
        model = copy.deepcopy(self.template)
        load_flat_parameters(model, self.theta[node])
        return model

    def chunks(self, batch_size: int, size: int | None = None) -> list[slice]:
        size = size or self.chunk_size or auto_chunk(self.num_nodes, batch_size)
        return [slice(s, min(s + size, self.num_nodes)) for s in range(0, self.num_nodes, size)]

    def candidates(self, batch_size: int) -> list[tuple[str, int]]:
        """(execution, nodes per chunk) pairs that the automatic choice measures."""
        n = self.num_nodes
        if self.chunk_size:
            sizes = [self.chunk_size]
        else:  # also a few cache-sized chunks: many nodes of tiny batches run faster in blocks than in one call
            auto = auto_chunk(n, batch_size)
            sizes = sorted({auto, n, 1} | {s for s in INTERMEDIATE_CHUNKS if s < auto}, reverse=True)
        forms = (["grouped"] if self._grouped is not None else []) + ["vmap"]
        found = [(form, size) for form in forms for size in sizes]
        return found + [("loop", n)]

    def plan(self, theta, x, y, loss_fn) -> tuple[str, int]:
        """The execution and chunk size for this batch shape: fixed by the user, or the fastest
        of the candidates measured once on the first batch of this shape."""
        key = tuple(x.shape[1:])
        if key in self.plans:
            return self.plans[key]
        cache_key = self._cache_key(x) if self.autotune and self.plan_cache is not None else None
        cached = self.plan_cache.get(cache_key) if cache_key is not None and self.plan_cache is not None else None
        if not self.autotune:
            choice = (self.execution, self.chunk_size or auto_chunk(self.num_nodes, x.shape[1]))
            self.plan_sources[key] = "config"
        elif cached is not None and (cached[0] != "grouped" or self._grouped is not None):
            choice = cached
            self.plan_sources[key] = "cache"
        else:
            timings: dict[tuple[str, int], float] = {}
            for candidate in self.candidates(x.shape[1]):
                def run(candidate=candidate):
                    self._loss_and_grad(candidate, theta, x, y, loss_fn)
                warmup = _timed(run, theta.device)
                if timings and warmup > 3 * min(timings.values()):
                    continue  # clearly slower: not worth measuring again
                timings[candidate] = min(_timed(run, theta.device) for _ in range(2))
            choice = min(timings, key=timings.__getitem__)
            self.timings = {f"{form}/{size}": t for (form, size), t in timings.items()}
            self.plan_sources[key] = "measured"
            if cache_key is not None and self.plan_cache is not None:
                kept = self.plan_cache.put(cache_key, choice)  # another run's first measurement wins
                if tuple(kept) != tuple(choice):
                    choice, self.plan_sources[key] = (kept[0], kept[1]), "cache"
        self.plans[key] = choice
        self.execution = choice[0]
        return choice

    def _cache_key(self, x: torch.Tensor) -> str:
        model = " ".join(repr(self.template).split())
        return (f"torch {torch.__version__} | {self.device} | {str(self.dtype).replace('torch.', '')} | "
                f"threads {torch.get_num_threads()} | nodes {self.num_nodes} | chunk {self.chunk_size} | "
                f"batch {tuple(x.shape[1:])} | {model}")

    # --------------------------------------------------------------------------- forward
    def forward(self, theta: torch.Tensor, x: torch.Tensor, shared_input: bool = False,
                execution: str | None = None) -> torch.Tensor:
        """Outputs of ``theta.shape[0]`` nodes.

        ``x`` is (k, B, ...) with one batch per node, or (B, ...) fed to every node when
        ``shared_input``. Returns (k, B, ...).
        """
        return self.forward_params(self.param_dict(theta), x, shared_input, execution)

    def forward_params(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared_input: bool = False,
                       execution: str | None = None) -> torch.Tensor:
        """As :meth:`forward`, from per-layer parameters with a leading node axis."""
        execution = execution or self.execution
        if execution == "grouped":
            assert self._grouped is not None  # "grouped" only for a model with grouped kernels
            return self._grouped(params, x, shared_input)
        if execution == "loop":
            k = next(iter(params.values())).shape[0]
            outs = [functional_call(self.template, {**{n: v[i] for n, v in params.items()}, **self._buffers},
                                    (x if shared_input else x[i],)) for i in range(k)]
            return torch.stack(outs)

        def single(node_params, inputs):
            return functional_call(self.template, {**node_params, **self._buffers}, (inputs,))

        in_dims = (0, None if shared_input else 0)
        return torch.vmap(single, in_dims=in_dims)(params, x)

    def loss_and_grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each node's mean loss on its own batch and its gradient, for all nodes.

        ``loss_fn(out (k, B, ...), y (k, B, ...)) -> (k,)`` per-node losses.
        Returns ``(losses (N,), grads (N, n))``, both detached; ``grads`` is ``out`` when given
        (a buffer shaped like ``theta``, not overlapping it).
        """
        plan = self.plan(theta, x, y, loss_fn)
        compiled = self.compile != "off" and self.decide_compile(plan, theta, x, y, loss_fn)
        return self._loss_and_grad(plan, theta, x, y, loss_fn, out, compiled=compiled)

    def decide_compile(self, plan, theta, x, y, loss_fn) -> bool:
        """Whether this batch shape's training step runs compiled: ``on`` always (unless the compiler fails),
        ``auto`` when the run's expected eager time pays for the compile and the compiled step measures
        faster. Decided once per shape (and kept in the plan cache under ``auto``)."""
        key = tuple(x.shape[1:])
        if key in self.compiled:
            return self.compiled[key]
        cache_key = None
        if self.compile == "auto" and self.plan_cache is not None:
            cache_key = "compile | " + self._cache_key(x) + f" | plan {plan[0]}/{plan[1]}"
            cached = self.plan_cache.get(cache_key)
            if isinstance(cached, bool):
                self.compiled[key], self.compile_sources[key] = cached, "cache"
                return cached
        facts: dict = {}
        if self.compile == "auto":
            eager = min(_timed(lambda: self._loss_and_grad(plan, theta, x, y, loss_fn), theta.device)
                        for _ in range(2))
            facts["eager_step_s"] = round(eager, 5)
            expected = eager * (self.expected_steps or 0)
            if expected < COMPILE_WORTH_SECONDS or eager < COMPILE_MIN_STEP_SECONDS:
                self.compiled[key] = False
                self.compile_sources[key] = ("run too short to pay for a compile" if expected < COMPILE_WORTH_SECONDS
                                             else "steps too small to gain from a compile")
                self.compile_facts[key] = facts
                return False
        start = time.perf_counter()
        try:
            self._loss_and_grad(plan, theta, x, y, loss_fn, compiled=True)
        except Exception as exc:  # no working compiler here: eager, with one note
            if _caused_by_interrupt(exc):  # Ctrl-C / SIGTERM during the compile, wrapped by the compiler
                raise KeyboardInterrupt from exc
            note = (f"torch.compile failed ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}); "
                    f"training steps run eager")
            self.notes.append(note)
            warnings.warn(note, RuntimeWarning, stacklevel=2)
            self._compiled_fns.pop(self._compile_key(plan, x), None)
            self.compiled[key], self.compile_sources[key] = False, "compiler failed"
            self.compile_facts[key] = facts
            return False
        facts["compile_s"] = round(time.perf_counter() - start, 3)
        if self.compile == "on":
            self.compiled[key], self.compile_sources[key] = True, "config"
            self.compile_facts[key] = facts
            return True
        fast = min(_timed(lambda: self._loss_and_grad(plan, theta, x, y, loss_fn, compiled=True), theta.device)
                   for _ in range(3))
        facts["compiled_step_s"] = round(fast, 5)
        # decided on the recorded figures, so the decision can be read back from compile_facts
        saved = facts["eager_step_s"] - facts["compiled_step_s"]
        wins = facts["compiled_step_s"] < 0.95 * facts["eager_step_s"] and \
            saved * (self.expected_steps or 0) > facts["compile_s"]
        self.compiled[key], self.compile_sources[key] = wins, "measured"
        self.compile_facts[key] = facts
        if not wins:
            self._compiled_fns.pop(self._compile_key(plan, x), None)
        if cache_key is not None and self.plan_cache is not None:
            kept = self.plan_cache.put(cache_key, wins)  # another run's first decision wins
            if kept != wins:
                wins = self.compiled[key] = bool(kept)
                self.compile_sources[key] = "cache"
        return wins

    @staticmethod
    def _compile_key(plan, x) -> tuple:
        return (plan[0], plan[1], tuple(x.shape[1:]), x.dtype)

    def _chunk_losses_fn(self, plan, x, loss_fn) -> Callable:
        """One chunk's per-node losses from its per-layer parameters, compiled once per plan and shape."""
        key = self._compile_key(plan, x)
        fn = self._compiled_fns.get(key)
        if fn is None:
            execution = plan[0]

            def chunk_losses(leaves, xb, yb):
                return loss_fn(self.forward_params(leaves, xb, execution=execution), yb)

            _quiet_compiler()
            fn = self._compiled_fns[key] = torch.compile(chunk_losses, dynamic=False)
        return fn

    def _loss_and_grad(self, plan, theta, x, y, loss_fn, out=None, compiled: bool = False):
        execution, size = plan
        losses = torch.empty(theta.shape[0], device=theta.device, dtype=theta.dtype)
        grads = torch.empty_like(theta) if out is None else out
        compiled_losses = self._chunk_losses_fn(plan, x, loss_fn) if compiled else None
        for block in self.chunks(x.shape[1], size):
            # one leaf per layer parameter: gradients land in place, no full-row scatter
            leaves = {name: v.detach().requires_grad_(True) for name, v in self.param_dict(theta[block]).items()}
            with torch.enable_grad():
                if compiled_losses is not None:
                    try:
                        node_losses = compiled_losses(leaves, x[block], y[block])
                    except Exception as exc:
                        if _caused_by_interrupt(exc):  # Ctrl-C / SIGTERM during a (re)compile
                            raise KeyboardInterrupt from exc
                        raise
                else:
                    out = self.forward_params(leaves, x[block], execution=execution)
                    node_losses = loss_fn(out, y[block])
                layer_grads = torch.autograd.grad(node_losses.sum(), list(leaves.values()))
            losses[block] = node_losses.detach()
            for slot, grad in zip(self.slots, layer_grads):
                grads[block, slot.offset:slot.offset + slot.numel] = grad.reshape(grad.shape[0], -1)
        return losses, grads

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor, x: torch.Tensor,
                 fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
        """``fn(outputs (k, S, ...), rows)`` for the ``theta.shape[0]`` nodes on a shared input batch ``x``
        (B, ...), where ``rows`` says which S samples of ``x`` these are and ``fn`` returns them along its
        last axis: (num nodes, ..., B).

        The work goes in blocks of k nodes x S samples whose largest activation stays near
        ``EVAL_BLOCK_BYTES`` (a block that stays in the cache runs several times faster than whole batches), with
        S at least ``EVAL_MIN_SAMPLES`` (each block reads its nodes' parameters again)."""
        nodes, samples = self.eval_block(x)
        chunks = [self.param_dict(theta[start:start + nodes]) for start in range(0, theta.shape[0], nodes)]
        parts: list[list[torch.Tensor]] = [[] for _ in chunks]
        for start in range(0, x.shape[0], samples):  # one block of samples for every chunk of nodes in turn
            rows = slice(start, start + samples)
            block = x[rows]
            for part, params in zip(parts, chunks):
                part.append(fn(self.forward_params(params, block, shared_input=True), rows))
        if self._grouped is not None:
            self._grouped.release()
        return torch.cat([torch.cat(part, dim=-1) for part in parts], dim=0)

    def eval_block(self, x: torch.Tensor) -> tuple[int, int]:
        """(nodes, samples) per evaluation block for inputs shaped like ``x``'s samples. The samples per
        block follow from the whole team's size, not from the nodes this stack holds: a matrix product's
        rounding can depend on its row count, and a robot's validation numbers must not change with the
        process it runs in."""
        key = tuple(x.shape[1:])
        width = self._activation_width.get(key)
        if width is None:
            width = self._activation_width[key] = largest_activation(self.template, x[:1])
        per_block = max(1, EVAL_BLOCK_BYTES // (width * x.element_size()))
        nodes = min(self.team_size, EVAL_BLOCK_NODES, per_block)
        return min(self.num_nodes, nodes), max(1, per_block // nodes, EVAL_MIN_SAMPLES)


def _quiet_compiler() -> None:
    """Inductor compiles in this process (no pool of compile workers that a Ctrl-C could leave behind) and
    keeps its note about a missing CUDA runtime to itself (the CPU build of the kernels needs none)."""
    import logging

    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def largest_activation(model: nn.Module, sample: torch.Tensor) -> int:
    """Elements of the largest output of any layer of ``model`` for one input sample (batch of 1)."""
    sizes = [sample.numel()]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
             for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def auto_chunk(num_nodes: int, batch_size: int, samples_per_chunk: int = DEFAULT_SAMPLES_PER_CHUNK) -> int:
    """Nodes per chunk: all of them for small batches, one for batches beyond the target."""
    return max(1, min(num_nodes, samples_per_chunk // max(1, batch_size)))
