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
positions, and the deep stem's 32->64 conv 1.43x at 2x112x112. Grouped convs with few channels
per group go the other way (ResNeXt's 4 per group: 0.43x), so they stay channels-last, and so do
1x1 convs (0.46x-0.77x; not spatial convs anyway). In the model, a ResNeSt-50 training step at
2x3x512x768 took 1.13x-1.18x the time without this rule, ResNet-50 1.06x, Res2Net-50 1.03x; at
2x224 the times were the same within the runs' spread.
"""
import functools
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer

from .layout import arrange_parameter, graph_capture, to_nchw
from .pointwise import is_plain_conv

#: A training conv computes in NCHW when its weight has at least this many values per output
#: channel (in_channels / groups x kernel area) per output position (batch x height x width).
#: Measured: 5.9 gained, 2.9 lost a little.
WEIGHT_HEAVY_RATIO = 4

#: On CPUs without AVX-512, a training conv with more than this many output positions (batch x
#: height x width) and at least :data:`LARGE_MAP_MIN_GROUP_WIDTH` input channels per group
#: computes in NCHW. Measured there: 6272 positions the same either way, 8400 gained.
LARGE_MAP_POSITIONS = 8192
LARGE_MAP_MIN_GROUP_WIDTH = 16


@functools.lru_cache(maxsize=None)
def slow_channels_last_weight_grad() -> bool:
    """Whether this CPU lacks AVX-512, and with it oneDNN's fast channels-last weight-gradient
    kernels for convs over large maps."""
    return torch.backends.cpu.get_cpu_capability() != 'AVX512'


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class SpatialConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that, given a channels-last CPU map (or a channel slice of one) while
    training, computes in NCHW when its weight is heavy for the map (:data:`WEIGHT_HEAVY_RATIO`)
    or, on a CPU without AVX-512, when the map is large (:data:`LARGE_MAP_POSITIONS`), and
    channels-last otherwise. It keeps its weight in the layout it computes in (the backbone
    leaves this weight to it), so neither way copies the weight or its gradient. The returned map
    is channels-last either way, and the input's gradient goes back channels-last.

    Parameters, state-dict keys and initialisation are the ``nn.Conv2d``'s; any other input
    (NCHW, CUDA, unbatched, traced or exported graphs) is the plain conv.

    Example:
        >>> import torch
        >>> conv = SpatialConv2d(64, 64, 3, padding=1, bias=False)
        >>> x = torch.rand(1, 64, 2, 2).contiguous(memory_format=torch.channels_last)
        >>> conv.computes_nchw(x)  # 576 weight values per output channel, 4 positions
        True
        >>> conv(x).is_contiguous(memory_format=torch.channels_last)
        True
    """

    @staticmethod
    def _channels_last_map(x: torch.Tensor) -> bool:
        # Channel-adjacent strides: a channels-last map, or a channel slice of one (Res2Net).
        return (not graph_capture() and x.dim() == 4 and x.device.type == 'cpu'
                and x.stride(1) == 1 and not x.is_contiguous())

    def _nchw_for_weight_grad(self, x: torch.Tensor) -> bool:
        # For a channels-last map; the weight gradient is what NCHW saves on.
        if isinstance(self.padding, str) or not (torch.is_grad_enabled()
                                                 and self.weight.requires_grad):
            return False
        h, w = (_out_size(x.shape[i + 2], self.kernel_size[i], self.stride[i],
                          self.padding[i], self.dilation[i]) for i in range(2))
        positions = x.shape[0] * h * w
        if self.weight[0].numel() >= WEIGHT_HEAVY_RATIO * positions:
            return True
        return (positions > LARGE_MAP_POSITIONS
                and self.weight.shape[1] >= LARGE_MAP_MIN_GROUP_WIDTH
                and slow_channels_last_weight_grad())

    def computes_nchw(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` computes in NCHW."""
        return self._channels_last_map(x) and self._nchw_for_weight_grad(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._channels_last_map(x):
            return super().forward(x)
        if self._nchw_for_weight_grad(x):
            arrange_parameter(self.weight, torch.contiguous_format)
            return super().forward(to_nchw(x)).contiguous(memory_format=torch.channels_last)
        arrange_parameter(self.weight, torch.channels_last)
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
