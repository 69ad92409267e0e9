"""Pointwise (1x1) convolutions that run as one matrix product where that is faster.

A channels-last feature map is, in memory, an ``(N*H*W, C)`` matrix, so a 1x1, stride-1,
ungrouped convolution of it is exactly one matrix product with the ``(C_out, C_in)`` weight, and so
are both products of its backward pass; no copy is needed on the way in or out. On CPU, MKL's
GEMM computes that product faster than oneDNN's direct convolution when the map is small: on the
2-core AVX-512 machine this package is benchmarked on, forward + backward of ResNet-50's 1x1
convs over 7x7 to 50x76 maps (batch 2) took 0.5x to 0.9x the convolution's time, while on the
largest maps (200x304) the convolution was faster. Outputs agree with the convolution's to
floating-point rounding (the sums run in a different order).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from torch.autograd.function import once_differentiable

from .layout import emulated_half_precision, graph_capture, saves_take_any_layout

#: The matrix product is used up to this many output positions (batch x height x width) per call.
GEMM_MAX_POSITIONS = 8192
#: A strided conv with fewer input channels takes the matrix product at any size: the backward
#: of oneDNN's strided 1x1 conv on a channels-last float32 map with 3 to 6 input channels
#: corrupts the heap ("double free or corruption", PyTorch 2.13 CPU; toy widths such as
#: ``ResNet(depth=18, base_channels=4)`` at 640x640).
NARROW_STRIDED_CHANNELS = 8


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, ungrouped ``nn.Conv2d`` that computes channels-last CPU inputs of at most
    :data:`GEMM_MAX_POSITIONS` output positions as a matrix product (unless in a half-precision
    type this CPU has no kernels for, see :func:`~.layout.emulated_half_precision`), and
    everything else as the conv. A strided one multiplies only the positions it reads (what a
    strided 1x1 conv computes), which also spares oneDNN's copy of the weight gradient that a
    strided conv makes, and keeps its input for backward rather than that subsampled copy (see
    :class:`_SubsampledProduct`). Not twice differentiable when strided.

    Parameters, state-dict keys and initialisation are the ``nn.Conv2d``'s.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride.
        bias: Add a learnable bias.

    Example:
        >>> import torch
        >>> conv = PointwiseConv2d(16, 32, bias=False)
        >>> x = torch.rand(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
        >>> torch.allclose(conv(x), conv._conv_forward(x, conv.weight, None), atol=1e-6)
        True
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=bias)

    def uses_gemm(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the matrix-product path."""
        # Graphs (tracing, export) keep the conv op, which deployment runtimes fuse with the
        # following norm. The device first: it is the cheapest check (host time per conv
        # counts on GPUs).
        if not x.is_cpu or x.dim() != 4 or graph_capture() or not x.numel():
            return False
        sh, sw = self.stride
        positions = x.shape[0] * -(-x.shape[2] // sh) * -(-x.shape[3] // sw)
        narrow_strided = (sh, sw) != (1, 1) and self.in_channels < NARROW_STRIDED_CHANNELS
        return ((positions <= GEMM_MAX_POSITIONS or narrow_strided)
                and x.is_contiguous(memory_format=torch.channels_last)
                and not emulated_half_precision(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_with(x, self.weight, self.bias)

    def conv_with(self, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
        """This conv of ``x`` with another weight and bias of the same shapes (a norm folded in,
        see fold.py), by the same path as ``forward``."""
        if not self.uses_gemm(x):
            return self._conv_forward(x, weight, bias)
        weight = weight.flatten(1)
        if self.stride != (1, 1):
            if not torch.is_grad_enabled():
                return _strided_product(x, weight, bias, self.stride)
            # Autograd packs the saved tensors as apply returns, so the mark spans the call.
            with saves_take_any_layout():
                return _SubsampledProduct.apply(x, weight, bias, self.stride)
        # (N, H, W, C) is a contiguous view of a channels-last x; so is the result's permute.
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def _subsample(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """The positions a strided 1x1 conv reads, as a channels-last copy (of ``x`` in any layout)."""
    return x[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=torch.channels_last)


def _strided_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     stride: tuple[int, int]) -> torch.Tensor:
    """A strided 1x1 conv as one matrix product over the positions it reads (channels-last)."""
    return F.linear(_subsample(x, stride).permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """The ``(N*H*W, C)`` matrix that a channels-last ``x`` is in memory (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class _SubsampledProduct(torch.autograd.Function):
    """A strided 1x1 conv as one matrix product over the positions it reads, and the two
    products of its backward pass.

    It keeps ``x`` itself for backward (alive anyway: the block's input), not the subsampled
    copy, which it rebuilds there from ``x`` in whatever layout it gets back (see
    layout.SavedAsNCHW). The input's gradient is one channels-last tensor. Not twice
    differentiable.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                stride: tuple[int, int]) -> torch.Tensor:
        ctx.stride = stride
        ctx.save_for_backward(x, weight)
        return _strided_product(x, weight, bias, stride)

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')  # under the forward's autocast state
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        (sh, sw), (n, c, _, _) = ctx.stride, x.shape
        ho, wo = grad.shape[2:]
        rows = _rows(grad.contiguous(memory_format=torch.channels_last))
        grad_x = grad_w = grad_b = None
        # The weight's gradient first: its subsampled copy is gone before grad_x exists.
        if ctx.needs_input_grad[1]:
            grad_w = rows.t() @ _rows(_subsample(x, ctx.stride))
        if ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x, memory_format=torch.channels_last)
            grad_x[:, :, ::sh, ::sw] = (rows @ weight).view(n, ho, wo, c).permute(0, 3, 1, 2)
        return grad_x, grad_w, grad_b, None


def is_plain_conv(conv_cfg: Optional[dict]) -> bool:
    """Whether ``conv_cfg`` builds a plain ``nn.Conv2d``."""
    return conv_cfg is None or dict(conv_cfg) in ({'type': 'Conv2d'}, {'type': 'Conv'})


#: conv_cfg types whose convs compute any memory layout (``F.conv2d`` underneath); others, such
#: as mmcv's deformable convs used through ``conv_cfg``, are given NCHW input.
LAYOUT_AGNOSTIC_CONVS = ('Conv', 'Conv2d', 'ConvWS', 'ConvAWS')
#: Norm classes whose kernels follow their input's strides (SyncBatchNorm is a _BatchNorm).
TORCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
               nn.modules.instancenorm._InstanceNorm)


def layout_agnostic_conv(conv_cfg: Optional[dict]) -> bool:
    """Whether the convs ``conv_cfg`` builds take channels-last input."""
    if conv_cfg is None:
        return True
    layer = conv_cfg.get('type')
    if isinstance(layer, type):
        return issubclass(layer, nn.Conv2d) and not hasattr(layer, 'deform_groups')
    return layer in LAYOUT_AGNOSTIC_CONVS


def layout_agnostic_norm(norm_cfg: dict) -> bool:
    """Whether the norms ``norm_cfg`` builds take channels-last input: PyTorch's batch, group and
    instance norms do; mmcv's SyncBatchNorm ('MMSyncBN') reads its input's memory as NCHW."""
    from ..checks import layer_class
    layer = layer_class(norm_cfg['type'])
    return isinstance(layer, type) and issubclass(layer, TORCH_NORMS)


def build_pointwise_conv(conv_cfg: Optional[dict], in_channels: int, out_channels: int, *,
                         stride: int = 1, bias: bool = False) -> nn.Module:
    """A 1x1 conv: :class:`PointwiseConv2d` for a plain conv, otherwise whatever ``conv_cfg``
    builds (mmcv's ``build_conv_layer``), e.g. weight-standardised convs."""
    if is_plain_conv(conv_cfg):
        return PointwiseConv2d(in_channels, out_channels, stride=stride, bias=bias)
    return build_conv_layer(conv_cfg, in_channels, out_channels, 1, stride=stride, bias=bias)
