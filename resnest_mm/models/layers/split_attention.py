"""Split attention (ResNeSt, Zhang et al. 2020, section 3), written radix-major.

The grouped conv produces ``radix`` splits of ``channels`` each, laid out as
``[split 0 | split 1 | ...]`` along the channel axis, every split ordered by cardinal group. That
layout is the official network's (its checkpoints load unchanged), and it lets the splits be viewed
as one ``(N, radix, channels, H, W)`` tensor: the sum, pooling, softmax and weighted sum are a few
whole-tensor operations, with no Python loop over splits and no copies of the feature map.

Two things keep the backward pass as lean as the forward one. On CPU the pooling is a sum scaled
by ``1 / (H * W)``: a sum's gradient is a broadcast view, where a mean's is a materialised map (in
NCHW, which then had to be added to a channels-last gradient). Float16 maps (whose sum overflows
on detection-size maps) and GPUs (one kernel less) take the mean. And the weighted sum has its own
backward (:class:`_WeightedSplitSum`): the gradient of all splits is one broadcast multiply into
one tensor in the input's layout, instead of one product per split concatenated afterwards.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from ..checks import check_cfg, check_int, check_layer_type
from .dcn import conv_or_dcn_cfg
from .fold import conv_norm
from .layout import graph_capture
from .pointwise import PointwiseConv2d
from .spatial import build_spatial_conv


def _split_views(x: torch.Tensor, g: torch.Tensor, weights: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int,
                            Callable[[torch.Tensor], torch.Tensor]]:
    """Broadcastable views of ``x (N, R*C, H, W)``, ``g (N, C, H, W)`` and ``weights (N, R, C)``
    in ``x``'s layout: ``(N, P, R, C)``, ``(N, P, 1, C)``, ``(N, 1, R, C)`` for channels-last or
    ``(N, R, C, P)``, ``(N, 1, C, P)``, ``(N, R, C, 1)`` for NCHW (P = H*W); the dimension of P;
    and the function that turns a tensor shaped like the first back into ``x``'s shape and
    layout. ``g`` is brought to ``x``'s layout (a no-op when it already has it)."""
    n, rc, h, w = x.shape
    r, c = weights.shape[1:]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        g = g.contiguous(memory_format=torch.channels_last)
        return (x.permute(0, 2, 3, 1).reshape(n, h * w, r, c),
                g.permute(0, 2, 3, 1).reshape(n, h * w, 1, c), weights.view(n, 1, r, c), 1,
                lambda t: t.view(n, h, w, rc).permute(0, 3, 1, 2))
    x, g = x.contiguous(), g.contiguous()
    return (x.view(n, r, c, h * w), g.view(n, 1, c, h * w), weights.view(n, r, c, 1), 3,
            lambda t: t.view(n, rc, h, w))


class _WeightedSplitSum(torch.autograd.Function):
    """``sum_r x_r * weights[:, r]`` over the ``R`` channel splits ``x_r`` of ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weights)
        return _weighted_split_sum(x, weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weights = ctx.saved_tensors
        xv, gv, wv, positions, as_x = _split_views(x, grad, weights)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = as_x(gv * wv)
        if ctx.needs_input_grad[1]:
            grad_w = (xv * gv).sum(positions)
        return grad_x, grad_w


def _weighted_split_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # Multiply-adds over channel slices: elementwise kernels keep x's memory layout (a reduction
    # over a split axis would return NCHW for a channels-last x). Accumulated in place: one
    # output map allocated, not one per split (fresh memory costs page faults on CPU).
    n, r, c = weights.shape
    weights = weights.view(n, r, c, 1, 1)
    splits = x.split(c, dim=1)
    out = splits[0] * weights[:, 0]
    for i in range(1, r):
        out.addcmul_(splits[i], weights[:, i])
    return out


def _softmax_upcast(t: torch.Tensor) -> bool:
    """Whether autocast would run a softmax of ``t`` in float32: CUDA autocast does (CPU
    autocast does not)."""
    return t.is_cuda and torch.is_autocast_enabled('cuda')


class SplitAttentionConv2d(BaseModule):
    """A ``kernel_size`` conv with ``groups * radix`` groups followed by split attention.

    Per cardinal group, the ``radix`` splits are summed, globally average-pooled, passed through
    two grouped 1x1 convs (``fc1`` to ``max(in_channels * radix // reduction_factor, 32)``
    channels with norm and ReLU, then ``fc2``), turned into weights by a softmax across the splits
    (a sigmoid when ``radix == 1``), and the splits are summed with those weights.

    Args:
        in_channels: Input channels.
        channels: Output channels (each split has this many).
        kernel_size: Kernel size of the split conv.
        stride: Stride of the split conv.
        padding: Padding of the split conv.
        dilation: Dilation of the split conv.
        groups: Cardinality K.
        radix: Splits per cardinal group R.
        reduction_factor: Reduction of the attention's hidden width.
        conv_cfg: Config of the split conv (None for ``nn.Conv2d``).
        norm_cfg: Config of the two norm layers.
        dcn: Config of a deformable split conv, or None.
        init_cfg: mmengine init config.

    Example:
        >>> import torch
        >>> layer = SplitAttentionConv2d(in_channels=64, channels=64, radix=2).eval()
        >>> tuple(layer(torch.rand(2, 64, 8, 8)).shape)
        (2, 64, 8, 8)
    """

    def __init__(self, *, in_channels: int, channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, dilation: int = 1, groups: int = 1,
                 radix: int = 2, reduction_factor: int = 4, conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None, dcn: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        for name, value, minimum in (('in_channels', in_channels, 1), ('channels', channels, 1),
                                     ('kernel_size', kernel_size, 1), ('stride', stride, 1),
                                     ('padding', padding, 0), ('dilation', dilation, 1),
                                     ('radix', radix, 1), ('groups', groups, 1),
                                     ('reduction_factor', reduction_factor, 1)):
            check_int(owner, name, value, minimum)
        for name, cfg in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg), ('dcn', dcn)):
            check_cfg(owner, name, cfg)
            if cfg is not None:
                check_layer_type(owner, name, cfg)
        if channels % groups:
            raise ValueError(f'{owner}: channels={channels} is not valid; expected a multiple '
                             f'of groups={groups}.')
        if in_channels % (groups * radix):
            # The split conv has groups * radix groups.
            raise ValueError(f'{owner}: in_channels={in_channels} is not valid; expected a '
                             f'multiple of groups * radix = {groups * radix}.')
        norm_cfg = dict(type='BN', requires_grad=True) if norm_cfg is None else norm_cfg
        self.radix = radix
        self.groups = groups
        self.channels = channels
        inter_channels = max(in_channels * radix // reduction_factor, 32)
        if inter_channels % groups:
            # fc1 and fc2 are grouped by cardinal group over this hidden width.
            raise ValueError(f'{owner}: groups={groups} is not valid; it must divide the '
                             f'hidden width max(in_channels * radix // reduction_factor, 32) = '
                             f'{inter_channels}.')
        self.conv = build_spatial_conv(
            conv_or_dcn_cfg(conv_cfg, dcn, stride), in_channels, channels * radix, kernel_size,
            stride=stride, padding=padding, dilation=dilation, groups=groups * radix, bias=False)
        self.with_dcn = dcn is not None
        self.norm0_name, norm0 = build_norm_layer(norm_cfg, channels * radix, postfix=0)
        self.add_module(self.norm0_name, norm0)
        self.relu = nn.ReLU(inplace=True)
        # Grouped by cardinal group; with one group, a matrix product on CPU (see pointwise.py).
        fc = (lambda cin, cout: PointwiseConv2d(cin, cout, bias=True)) if groups == 1 else \
            (lambda cin, cout: nn.Conv2d(cin, cout, 1, groups=groups))
        self.fc1 = fc(channels, inter_channels)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, inter_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.fc2 = fc(inter_channels, channels * radix)

    @property
    def norm0(self) -> nn.Module:
        return getattr(self, self.norm0_name)

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    def attention(self, pooled: torch.Tensor) -> torch.Tensor:
        """Split weights ``(N, radix, channels)`` from the pooled sum of the splits
        ``(N, channels, 1, 1)``."""
        n, r, k = pooled.shape[0], self.radix, self.groups
        logits = self.fc2(self.relu(self.norm1(self.fc1(pooled))))
        if r == 1:
            if _softmax_upcast(logits):
                # Float32 weights, as autocast gives the softmax of radix >= 2 (see forward);
                # autocast leaves a sigmoid in float16.
                logits = logits.float()
            return torch.sigmoid(logits).view(n, 1, self.channels)
        # fc2 is grouped by cardinal group, so its output is ordered (group, split, channel);
        # the softmax runs across splits and the result is reordered to the splits' layout.
        weights = logits.view(n, k, r, -1).softmax(dim=2)
        return weights.transpose(1, 2).reshape(n, r, self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(conv_norm(self.conv, self.norm0, x))
        n, r, c = x.shape[0], self.radix, self.channels
        # Pool first, then sum the splits: mean(sum) == sum(mean), and one pass reads x once.
        if x.is_cpu and x.dtype != torch.float16:
            pooled = x.sum((2, 3), keepdim=True)
            if pooled.dtype == torch.bfloat16:
                # Scaled and summed over the splits in float32, rounded once at the end: in
                # bfloat16 those two steps rounded twice more than the reference's pooling,
                # which gave fc1's and its norm's gradients 1.4x-1.7x its error. (Summing the
                # map itself in float32 would close the rest of the gap, but converts the
                # whole map first: 10x slower on detection-size maps.)
                pooled = pooled.float()
            pooled = pooled * (1.0 / (x.shape[2] * x.shape[3]))
        else:
            # A float16 sum over a detection-size map overflows (65504); elsewhere one kernel
            # less (the sum's lighter backward is a CPU concern, see the module docstring).
            pooled = x.mean((2, 3), keepdim=True)
        pooled = pooled.view(n, r, c, 1, 1).sum(1).to(x.dtype)
        # Under CUDA autocast the softmax returns float32 weights, kept so (as the reference
        # implementations do): the weighted sum is then float32 and so is the weights' gradient,
        # a sum over every position of the map that float16 could overflow under loss scaling.
        weights = self.attention(pooled)
        # The autograd Function only where there is a backward pass (its call costs ~0.1 ms).
        if not (torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad)
                ) or graph_capture():
            return _weighted_split_sum(x, weights)
        return _WeightedSplitSum.apply(x, weights)
