"""Res2Net (Gao et al., 2019): hierarchical multi-scale 3x3 stage inside the bottleneck."""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from ...registry import MODELS
from ..checks import check_bool, check_int
from ..layers.dcn import conv_or_dcn_cfg
from ..layers.fold import conv_norm
from ..layers.spatial import build_spatial_conv
from .blocks import Bottleneck, mid_channels
from .engine import ResNetEngine


class Res2NetBottleneck(Bottleneck):
    """Bottle2neck: the reduced features are cut into ``scales`` splits of ``width`` channels.

    Split 0 goes through a 3x3 conv; split ``i`` is added to the previous conv output before its
    own 3x3 conv (in the first block of a stage each split is convolved on its own); the last split
    passes untouched, or through a 3x3 average pool in a stage's first block.

    Args:
        scales: Number of splits s (>= 2).
        base_width: Channels per split at ``base_channels`` planes (26 in 26w4s).
        pool_first_stage: Apply the last split's 3x3 average pool (stride 1) in the first block of
            the first stage too, as the official Res2Net and timm do (True). False reproduces
            MMDetection's Res2Net, which pools only where the block downsamples.
        **kwargs: See :class:`~resnest_mm.models.backbones.blocks.ResidualBlock`.
    """

    def __init__(self, *, scales: int = 4, base_width: int = 26, pool_first_stage: bool = True,
                 **kwargs) -> None:
        width = mid_channels(kwargs['planes'], base_width, kwargs.get('base_channels', 64), 1)
        super().__init__(width=width * scales, **kwargs)
        self.scales = scales
        self.split_width = width
        self.stage_block = self.first_in_stage
        self.with_pool = self.stage_block and (pool_first_stage or self.conv2_stride > 1)
        if self.with_pool:
            self.pool = nn.AvgPool2d(3, self.conv2_stride, padding=1)
        conv_cfg = conv_or_dcn_cfg(self.conv_cfg, self.dcn, self.conv2_stride)
        self.convs = nn.ModuleList(
            build_spatial_conv(conv_cfg, width, width, 3, stride=self.conv2_stride,
                               padding=self.dilation, dilation=self.dilation, bias=False)
            for _ in range(scales - 1))
        self.bns = nn.ModuleList(build_norm_layer(self.norm_cfg, width)[1]
                                 for _ in range(scales - 1))
        # DCN kernels need contiguous inputs; channel slices of a tensor are not.
        self._contiguous_splits = conv_cfg is not None and conv_cfg is not self.conv_cfg

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(x, self.split_width, dim=1)
        outs = []
        sp = None
        for i, (conv, norm) in enumerate(zip(self.convs, self.bns)):
            sp = splits[i] if (i == 0 or self.stage_block) else sp + splits[i]
            if self._contiguous_splits:
                sp = sp.contiguous()
            sp = self.relu(conv_norm(conv, norm, sp))
            outs.append(sp)
        outs.append(self.pool(splits[-1]) if self.with_pool else splits[-1])
        return torch.cat(outs, dim=1)


@MODELS.register_module()
class Res2Net(ResNetEngine):
    """Res2Net backbone (depth 50, 101 or 152): by default the v1b network (deep stem, average-pool
    shortcut) of the official release, timm's ``res2net50d``/``res2net101d`` and MMDetection.

    ``deep_stem=False, avg_down=False`` gives the original (7x7 stem) Res2Net.

    Args:
        depth: 50, 101 or 152.
        scales: Splits per block s (26w4s: 4).
        base_width: Channels per split w in the first stage (26w4s: 26).
        pool_first_stage: Official behaviour (True); False reproduces MMDetection's Res2Net,
            which skips the last split's pool in the first block of the first stage.
        deep_stem: Three 3x3 convs in the stem (v1b).
        avg_down: Average-pool shortcut downsampling (v1b).
        stem_channels: Output channels of the stem (default: ``base_channels``).
        **kwargs: See :class:`ResNetEngine`.

    Example:
        >>> import torch
        >>> from resnest_mm.models import Res2Net
        >>> model = Res2Net(depth=50, scales=4, base_width=26).eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))][0]
        (1, 256, 16, 16)
    """

    arch_settings = {
        50: (Res2NetBottleneck, (3, 4, 6, 3)),
        101: (Res2NetBottleneck, (3, 4, 23, 3)),
        152: (Res2NetBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, *, depth: int = 50, scales: int = 4, base_width: int = 26,
                 pool_first_stage: bool = True, deep_stem: bool = True, avg_down: bool = True,
                 stem_channels: Optional[int] = None, **kwargs) -> None:
        owner = type(self).__name__
        check_int(owner, 'scales', scales, 2)
        check_int(owner, 'base_width', base_width, 1)
        check_bool(owner, 'pool_first_stage', pool_first_stage)
        if kwargs.get('style', 'pytorch') != 'pytorch':
            raise ValueError(f"{owner}: style={kwargs['style']!r} is not valid; Res2Net "
                             "strides its 3x3 convs, expected 'pytorch'.")
        block_kwargs = dict(scales=scales, base_width=base_width,
                            pool_first_stage=pool_first_stage)
        super().__init__(depth=depth, deep_stem=deep_stem, avg_down=avg_down,
                         stem_channels=stem_channels, block_kwargs=block_kwargs, **kwargs)
        self.scales = scales
        self.base_width = base_width
