"""Spatial (k x k) convolutions that pick their memory layout per call.

In a channels-last network, oneDNN computes a conv's weight gradient in the plain (NCHW) layout
and then copies it into the weight's channels-last layout. Where the weight is large and the map
small (ResNet's and ResNeSt's last stage at 224x224: a 9.4 MB weight, a 0.4 MB map), that copy
costs more than moving the map to NCHW and back; on the 2-core AVX-512 machine this package is
benchmarked on, forward + backward of ResNeSt-50's 512->1024 stage-4 convs took 0.84x to 0.86x
the channels-last time that way, and the largest copy left the peak memory. Inference has no
weight gradient, so it stays channels-last.

On CPUs without AVX-512 a second kind of conv computes in NCHW while training: one over a large
map. There oneDNN has no fast channels-last kernel for the weight gradient (its verbose log names
``jit:avx2`` for it; with AVX-512 it has brgemm ones); in NCHW it reorders the map to a blocked
layout and runs a blocked kernel. On a 2-core AMD EPYC (Zen 3, AVX2), forward + backward of
ResNeSt's radix-2 3x3 convs took 1.0x the NCHW time channels-last at 2x56x56 (6272 positions),
1.31x for 256->512 at 2x50x84 (8400), 1.49x-1.88x for 64->128 and 128->256 at 25088-49152
positions, and the deep stem's 32->64 conv 1.43x at 2x112x112. Grouped convs with few channels per
group go the other way (ResNeXt's 4 per group: 0.43x), so they stay channels-last, and so do 1x1
convs (0.46x-0.77x; not spatial convs anyway). In the model, a ResNeSt-50 training step at
2x3x512x768 took 1.13x-1.18x the time without this rule, ResNet-50 1.06x, Res2Net-50 1.03x; at
2x224 the times were the same within the runs' spread. Since then the wide convs among them take
the matrix products below, and the rule is left to wide convs that cannot (under autocast, or with
a non-zero padding mode): narrow ones lost in NCHW there (the deep stem's 32->32 conv at 2x112x112
took 1.29x-1.34x the channels-last time, Res2Net-50's 26->26 at 2x128x192 1.22x-1.25x, ResNeXt's
16-per-group convs at 4x50x76 to 2x100x152 1.35x-1.63x); a Res2Net-50 training step at 2x3x512x768
took 1.13x-1.16x less time after that change.

Better still there, for convs with wide groups: compute channels-last and take the weight gradient
as matrix products of the unfolded input (MKL's GEMM; :func:`weight_grad_by_gemm`). oneDNN's
weight-gradient kernels on that EPYC ran at 20-45 GMAC/s (its forward and input-gradient ones at
45-78) in either layout; the matrix products ran at 30-60. Forward + backward of ResNeSt-50's and
ResNet-50's 3x3 convs at 2x224 took 1.04x-1.33x less time than the ways above (those in NCHW
included), 1.2x-1.5x less for ResNeSt's at 2x3x512x768; a ResNeSt-50 training step 1.035x-1.06x
less at 2x224 and 1.18x-1.34x less at 2x3x512x768 (two sessions), ResNet-50's 1.04x, Res2Net-50's
1.02x (at 2x224). Narrow or many groups lost (ResNeXt-50: 0.24x-0.61x), so they keep the ways above
(:data:`GEMM_MIN_GROUP_WEIGHTS`). Ungrouped narrower convs (the deep stem's 32->32, Res2Net's
26->26) take the products on the largest maps (:data:`GEMM_NARROW_MIN_POSITIONS`): at 121600-262144
positions 1.06x-1.5x faster than channels-last, which is faster on smaller ones. The unfolded input
is built in blocks of at most :data:`GEMM_BLOCK_VALUES` values, so the extra memory stays small on
large maps.
"""
import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from .layout import (arrange_parameter, emulated_half_precision, graph_capture,
                     settle_if_recorded, to_nchw)
from .pointwise import is_plain_conv

#: A training conv computes in NCHW when its weight has at least this many values per output
#: channel (in_channels / groups x kernel area) per output position (batch x height x width).
#: Measured: 5.9 gained, 2.9 lost a little.
WEIGHT_HEAVY_RATIO = 4

#: On CPUs without AVX-512, a training conv with more than this many output positions (batch x
#: height x width), at least :data:`LARGE_MAP_MIN_GROUP_WIDTH` input channels per group and wide
#: groups (:data:`GEMM_MIN_GROUP_WEIGHTS`) that cannot take the matrix products (autocast, a
#: non-zero padding mode) computes in NCHW. Measured there: 6272 positions the same either way,
#: 8400 gained.
LARGE_MAP_POSITIONS = 8192
LARGE_MAP_MIN_GROUP_WIDTH = 16

#: On CPUs without AVX-512, a training conv whose groups each have at least this many input x
#: output channels computes its weight gradient as matrix products (:func:`weight_grad_by_gemm`).
#: Measured there: 32 x 64 (ResNeSt-50's radix-2 64->128 conv) gained; 32 x 32 in 32 groups
#: (ResNeXt-50's last stage) and 26 x 26 (Res2Net-50's first) lost.
GEMM_MIN_GROUP_WEIGHTS = 2048

#: On CPUs without AVX-512, an ungrouped training conv with narrower groups than that but at least
#: :data:`LARGE_MAP_MIN_GROUP_WIDTH` input channels takes the matrix products too on maps of more
#: than this many output positions. Measured there (the deep stem's 32->32, Res2Net's 26->26):
#: 121600-262144 positions gained 1.14x-2.0x over NCHW and 1.06x-1.5x over channels-last;
#: 25088-37632 lost to channels-last.
GEMM_NARROW_MIN_POSITIONS = 65536

#: Values in the largest block of the unfolded input that :func:`weight_grad_by_gemm` builds at
#: once (8 MB in float32): large maps are done a band of rows at a time.
GEMM_BLOCK_VALUES = 1 << 21


@functools.lru_cache(maxsize=None)
def slow_channels_last_weight_grad() -> bool:
    """Whether this CPU lacks AVX-512, and with it oneDNN's fast channels-last weight-gradient
    kernels for convs over large maps."""
    return torch.backends.cpu.get_cpu_capability() != 'AVX512'


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def weight_grad_by_gemm(x: torch.Tensor, grad: torch.Tensor, weight_shape: torch.Size,
                        stride: tuple[int, int], padding: tuple[int, int],
                        dilation: tuple[int, int], groups: int) -> torch.Tensor:
    """The gradient of a conv's weight, as matrix products: per group, the ``(positions, out)``
    matrix of the output's gradient ``grad`` (channels-last) against the ``(positions,
    kh * kw * in)`` matrix of the unfolded input ``x`` (any layout). The unfolded input is built
    :data:`GEMM_BLOCK_VALUES` values at most at a time (whole images, or bands of rows of one).
    Returned channels-last, the weight's layout on this path."""
    n, c, h, w = x.shape
    out_c, in_g, kh, kw = weight_shape
    out_g = out_c // groups
    ho, wo = grad.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    # Zero-padded (N, H, W, C): every kernel tap is then a strided view of it.
    padded = x.new_zeros(n, h + 2 * ph, w + 2 * pw, c)
    padded[:, ph:ph + h, pw:pw + w] = x.permute(0, 2, 3, 1)
    step_n, step_h, step_w, _ = padded.stride()
    cols = kh * kw * in_g
    if ho * wo * cols <= GEMM_BLOCK_VALUES:
        images = GEMM_BLOCK_VALUES // (ho * wo * cols)
        spans = [(i, i + images, 0, ho) for i in range(0, n, images)]
    else:
        band = max(1, GEMM_BLOCK_VALUES // (wo * cols))
        spans = [(i, i + 1, r, r + band) for i in range(n) for r in range(0, ho, band)]
    # MKL ran the transposed product, (kh * kw * in, out) per group, up to 1.3x faster; it then
    # costs a copy of the weight's size, which only pays where the map is the larger.
    transposed = n * ho * wo >= cols
    # Half-precision blocks add up in float32, as a conv's own kernels accumulate: rounded to
    # bfloat16 once per block, the sum was off by 5x a conv's error (16 blocks).
    half = x.dtype in (torch.float16, torch.bfloat16)
    out = x.new_empty((groups, cols, out_g) if transposed else (groups, out_g, cols),
                      dtype=torch.float32 if half else x.dtype)
    rows = grad.permute(0, 2, 3, 1)  # (N, Ho, Wo, out): a view of a channels-last grad
    for g in range(groups):
        taps = padded.as_strided(
            (n, ho, wo, kh, kw, in_g),
            (step_n, step_h * sh, step_w * sw, step_h * dh, step_w * dw, 1), g * in_g)
        for i, (i0, i1, r0, r1) in enumerate(spans):
            unfolded = taps[i0:i1, r0:r1].reshape(-1, cols)  # the unfolding copy
            grad_rows = rows[i0:i1, r0:r1, :, g * out_g:(g + 1) * out_g].reshape(-1, out_g)
            a, b = (unfolded.t(), grad_rows) if transposed else (grad_rows.t(), unfolded)
            if half:
                a, b = a.float(), b.float()
            if i:
                out[g].addmm_(a, b)
            else:
                torch.mm(a, b, out=out[g])
    if transposed:
        out = out.transpose(1, 2).contiguous()
    return out.to(x.dtype).view(out_c, kh, kw, in_g).permute(0, 3, 1, 2)


class _GemmWeightGradConv(torch.autograd.Function):
    """A conv (oneDNN's) whose backward pass computes the input's gradient with oneDNN and the
    weight's with :func:`weight_grad_by_gemm`. Not twice differentiable."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                groups: int) -> torch.Tensor:
        ctx.conv = (stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        # The weight's first: its padded and unfolded inputs are gone before grad_x exists.
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_by_gemm(x, grad, weight.shape, stride, padding, dilation,
                                         groups)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, (0, 0), groups,
                (True, False, False))[0]
        return grad_x, grad_w, grad_b, None, None, None, None


class SpatialConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that, given a channels-last CPU map (or a channel slice of one), picks
    per call how to compute. While training with a weight gradient:

    - on a CPU without AVX-512, with groups of at least :data:`GEMM_MIN_GROUP_WEIGHTS` input x
      output channels: channels-last, the weight's gradient computed as matrix products
      (:func:`weight_grad_by_gemm`; zero padding only, not under autocast, and not twice
      differentiable);
    - on such a CPU, ungrouped with at least :data:`LARGE_MAP_MIN_GROUP_WIDTH` input channels on
      a map of more than :data:`GEMM_NARROW_MIN_POSITIONS` output positions: the same;
    - otherwise in NCHW when its weight is heavy for the map (:data:`WEIGHT_HEAVY_RATIO`) or,
      on such a CPU, when it has wide groups that cannot take the products and the map is large
      (:data:`LARGE_MAP_POSITIONS`);
    - otherwise channels-last;
    - and channels-last too in a half-precision type this CPU has no kernels for
      (:func:`~.layout.emulated_half_precision`).

    In inference it is channels-last. It keeps its weight in the layout it computes in (the
    backbone leaves this weight to it), so no way copies the weight or its gradient, until a
    pass records the weight's gradient: from then on the weight keeps that layout (an
    optimiser's state takes it; see :func:`~.layout.settle_layouts`) and every way reads it as
    it is. The
    returned map is channels-last every way, and the input's gradient goes back channels-last
    (except with circular padding computed channels-last: its pad's backward returns NCHW).

    Parameters, state-dict keys and initialisation are the ``nn.Conv2d``'s; any other input
    (NCHW, CUDA, unbatched, traced or exported graphs) is the plain conv.

    Example:
        >>> import torch
        >>> conv = SpatialConv2d(64, 64, 3, padding=1, bias=False)
        >>> x = torch.rand(1, 64, 2, 2).contiguous(memory_format=torch.channels_last)
        >>> conv.path(x) in ('gemm', 'nchw')  # 'gemm' without AVX-512; else weight-heavy
        True
        >>> with torch.no_grad():
        ...     conv.path(x)
        'channels_last'
        >>> conv(x).is_contiguous(memory_format=torch.channels_last)
        True
    """

    @staticmethod
    def _channels_last_map(x: torch.Tensor) -> bool:
        # Channel-adjacent strides: a channels-last map, or a channel slice of one (Res2Net).
        return (x.is_cpu and x.dim() == 4 and not graph_capture() and x.stride(1) == 1
                and not x.is_contiguous())

    def path(self, x: torch.Tensor) -> str:
        """How ``forward(x)`` computes: ``'plain'`` (the ``nn.Conv2d``), ``'gemm'``
        (channels-last, weight gradient as matrix products), ``'nchw'`` or
        ``'channels_last'``."""
        if not self._channels_last_map(x) or parametrize.is_parametrized(self):
            return 'plain'  # a parametrized weight is computed anew at each read
        if isinstance(self.padding, str) or not (torch.is_grad_enabled()
                                                 and self.weight.requires_grad):
            return 'channels_last'  # no weight gradient: what the other ways save on
        if emulated_half_precision(x):
            return 'channels_last'  # the other ways were measured with native kernels
        slow = slow_channels_last_weight_grad()
        in_g, out_g = self.in_channels // self.groups, self.out_channels // self.groups
        wide = in_g * out_g >= GEMM_MIN_GROUP_WEIGHTS
        h, w = (_out_size(x.shape[i + 2], self.kernel_size[i], self.stride[i],
                          self.padding[i], self.dilation[i]) for i in range(2))
        positions = x.shape[0] * h * w
        # Zero padding only: the product's forward pads with zeros (the other ways pad as
        # nn.Conv2d does for its padding_mode).
        if (slow and self.padding_mode == 'zeros' and not torch.is_autocast_enabled('cpu')
                and (wide or (self.groups == 1 and in_g >= LARGE_MAP_MIN_GROUP_WIDTH
                              and positions > GEMM_NARROW_MIN_POSITIONS))):
            return 'gemm'
        if (self.weight[0].numel() >= WEIGHT_HEAVY_RATIO * positions
                or (slow and wide and positions > LARGE_MAP_POSITIONS
                    and in_g >= LARGE_MAP_MIN_GROUP_WIDTH)):
            return 'nchw'
        return 'channels_last'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.path(x)
        if path == 'plain':
            if not (graph_capture() or parametrize.is_parametrized(self)):
                settle_if_recorded(self.weight)  # e.g. a 1x1 map, which is NCHW as well
            return super().forward(x)
        if path == 'nchw':
            arrange_parameter(self.weight, torch.contiguous_format)
            return super().forward(to_nchw(x)).contiguous(memory_format=torch.channels_last)
        arrange_parameter(self.weight, torch.channels_last)
        if path == 'gemm':
            return _GemmWeightGradConv.apply(x, self.weight, self.bias, self.stride,
                                             self.padding, self.dilation, self.groups)
        return super().forward(x)

    def conv_with(self, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
        """This conv of ``x`` with another weight and bias of the same shapes (a norm folded in,
        see fold.py), in inference: channels-last for a channels-last map, as ``forward``."""
        if self._channels_last_map(x):
            arrange_parameter(self.weight, torch.channels_last)  # as forward does, for later calls
            weight = weight.contiguous(memory_format=torch.channels_last)
        return self._conv_forward(x, weight, bias)


def build_spatial_conv(conv_cfg: Optional[dict], in_channels: int, out_channels: int,
                       kernel_size: int, **kwargs) -> nn.Module:
    """A k x k conv: :class:`SpatialConv2d` for a plain conv, otherwise whatever ``conv_cfg``
    builds (mmcv's ``build_conv_layer``: deformable, weight-standardised, ...). ``kwargs`` are
    ``nn.Conv2d``'s (stride, padding, dilation, groups, bias)."""
    if is_plain_conv(conv_cfg):
        return SpatialConv2d(in_channels, out_channels, kernel_size, **kwargs)
    return build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size, **kwargs)
