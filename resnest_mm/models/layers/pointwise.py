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

from .layout import graph_capture

#: The matrix product is used up to this many output positions (batch x height x width) per call.
GEMM_MAX_POSITIONS = 8192


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, ungrouped ``nn.Conv2d`` that computes channels-last CPU inputs of at most
    :data:`GEMM_MAX_POSITIONS` output positions as a matrix product, and everything else as the
    conv. A stride subsamples the input first (what a strided 1x1 conv computes), which also
    spares oneDNN's copy of the weight gradient that a strided conv makes.

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
        # following norm.
        if graph_capture() or x.dim() != 4 or x.device.type != 'cpu':
            return False
        sh, sw = self.stride
        positions = x.shape[0] * -(-x.shape[2] // sh) * -(-x.shape[3] // sw)
        return (positions <= GEMM_MAX_POSITIONS
                and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_gemm(x):
            if self.stride != (1, 1):
                x = x[:, :, ::self.stride[0], ::self.stride[1]].contiguous(
                    memory_format=torch.channels_last)
            # (N, H, W, C) is a contiguous view of a channels-last x; so is the result's permute.
            out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
            return out.permute(0, 3, 1, 2)
        return super().forward(x)


def build_pointwise_conv(conv_cfg: Optional[dict], in_channels: int, out_channels: int, *,
                         stride: int = 1, bias: bool = False) -> nn.Module:
    """A 1x1 conv: :class:`PointwiseConv2d` for a plain conv, otherwise whatever ``conv_cfg``
    builds (mmcv's ``build_conv_layer``), e.g. weight-standardised convs."""
    plain = conv_cfg is None or dict(conv_cfg) in ({'type': 'Conv2d'}, {'type': 'Conv'})
    if plain:
        return PointwiseConv2d(in_channels, out_channels, stride=stride, bias=bias)
    return build_conv_layer(conv_cfg, in_channels, out_channels, 1, stride=stride, bias=bias)
