"""ResNeSt (Zhang et al., 2020): split-attention bottlenecks on a ResNet-D frame."""
from typing import Any, Optional

import torch
import torch.nn as nn

from ...registry import MODELS
from ..checks import check_bool, check_int, fail, layer_class
from ..layers import SplitAttentionConv2d
from ..layers.pool import ShapeOnlyAvgPool2d
from .blocks import Bottleneck, mid_channels
from .engine import ResNetEngine


class ResNeStBottleneck(Bottleneck):
    """Bottleneck whose 3x3 conv is a split-attention conv, with average-pool downsampling (avd).

    Where the block downsamples, a 3x3 average pool carries the stride instead of the conv
    (after the split-attention conv, or before it with ``avd_first``).

    Args:
        groups: Cardinality.
        base_width: Channels per cardinal group at ``base_channels`` planes (64 for ResNeSt).
        radix: Splits per cardinal group.
        reduction_factor: Reduction of the attention's hidden width.
        avd: Use the average pool for downsampling.
        avd_first: Pool before the split-attention conv instead of after it.
        avd_in_dilated_stages: Also pool (stride 1) in the first block of a stage that does not
            downsample, as the official network does in the first block of every stage after the
            first: this is what its dilated (output stride 8/16) variant computes. False
            reproduces MMDetection's and MMSegmentation's ResNeSt, which pool only where the
            block downsamples.
        **kwargs: See :class:`~resnest_mm.models.backbones.blocks.ResidualBlock`.
    """

    def __init__(self, *, groups: int = 1, base_width: int = 64, radix: int = 2,
                 reduction_factor: int = 4, avd: bool = True, avd_first: bool = False,
                 avd_in_dilated_stages: bool = True, **kwargs) -> None:
        width = mid_channels(kwargs['planes'], base_width, kwargs.get('base_channels', 64),
                             groups)
        super().__init__(width=width, **kwargs)
        in_dilated_first = (avd_in_dilated_stages and self.first_in_stage
                            and self.stage_index > 0)
        self.avd = avd and (self.conv2_stride > 1 or in_dilated_first)
        self.avd_first = avd_first
        conv_stride = 1 if self.avd else self.conv2_stride
        if self.avd:
            self.avd_layer = ShapeOnlyAvgPool2d(3, self.conv2_stride, padding=1)
        self.conv2 = SplitAttentionConv2d(
            in_channels=width, channels=width, kernel_size=3, stride=conv_stride,
            padding=self.dilation, dilation=self.dilation, groups=groups, radix=radix,
            reduction_factor=reduction_factor, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
            dcn=self.dcn)

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        if self.avd and self.avd_first:
            x = self.avd_layer(x)
        x = self.conv2(x)
        if self.avd and not self.avd_first:
            x = self.avd_layer(x)
        return x


def _is_instance_norm(layer: Any) -> bool:
    from torch.nn.modules.instancenorm import _InstanceNorm
    layer = layer_class(layer)
    return isinstance(layer, type) and issubclass(layer, _InstanceNorm)


@MODELS.register_module()
class ResNeSt(ResNetEngine):
    """ResNeSt backbone. ``ResNeSt(depth=D)`` is the paper's ResNeSt-D, the official network.

    Defaults: deep stem (64 channels for depth <= 50, 128 deeper, i.e. the official stem width 32
    or 64 doubled), average-pool shortcut, radix 2, cardinality 1, bottleneck width 64, average
    pool downsampling after the split-attention conv. Depths 14 and 26 (one and two blocks per
    stage) are for quick runs; 269 is the official deepest network.

    Args:
        depth: 14, 26, 50, 101, 152, 200 or 269.
        groups: Cardinality K.
        base_width: Bottleneck width per cardinal group at ``base_channels`` planes (default:
            ``base_channels``, i.e. 64 in the paper's networks; 40 in the 2s2x40d variant). With
            one group and no ``base_width`` the width is ``planes`` whatever ``base_channels``
            is, as in MMDetection's ResNeSt.
        radix: Splits per cardinal group R (1 gives a sigmoid gate).
        reduction_factor: Reduction of the attention's hidden width.
        avd: Average-pool downsampling inside the block (default True).
        avg_down_stride: MMDetection's and MMSegmentation's name for ``avd``, accepted so that
            their configs build; give one of the two.
        avd_first: Pool before the split-attention conv (the "fast" variants).
        avd_in_dilated_stages: Keep the official stride-1 pool in the first block of dilated
            stages (True, the official network); False reproduces MMDetection/MMSegmentation's
            ResNeSt, which differs from the official one when ``strides``/``dilations`` make a
            stage after the first keep its resolution (output stride 8 or 16).
        deep_stem: Three 3x3 convs in the stem.
        avg_down: Average-pool shortcut downsampling.
        stem_channels: Stem width (default from the depth, see above).
        **kwargs: See :class:`ResNetEngine`.

    Example:
        >>> import torch
        >>> from resnest_mm.models import ResNeSt
        >>> model = ResNeSt(depth=50).eval()
        >>> model.out_channels, model.out_strides
        ((256, 512, 1024, 2048), (4, 8, 16, 32))
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))]
        [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    """

    arch_settings = {
        14: (ResNeStBottleneck, (1, 1, 1, 1)),
        26: (ResNeStBottleneck, (2, 2, 2, 2)),
        50: (ResNeStBottleneck, (3, 4, 6, 3)),
        101: (ResNeStBottleneck, (3, 4, 23, 3)),
        152: (ResNeStBottleneck, (3, 8, 36, 3)),
        200: (ResNeStBottleneck, (3, 24, 36, 3)),
        269: (ResNeStBottleneck, (3, 30, 48, 8)),
    }

    def __init__(self, *, depth: int = 50, groups: int = 1, base_width: Optional[int] = None,
                 radix: int = 2, reduction_factor: int = 4, avd: Optional[bool] = None,
                 avg_down_stride: Optional[bool] = None,
                 avd_first: bool = False, avd_in_dilated_stages: bool = True,
                 deep_stem: bool = True, avg_down: bool = True,
                 stem_channels: Optional[int] = None, **kwargs) -> None:
        owner = type(self).__name__
        check_int(owner, 'radix', radix, 1)
        check_int(owner, 'groups', groups, 1)
        if avg_down_stride is not None:
            check_bool(owner, 'avg_down_stride', avg_down_stride)
            if avd is not None:
                fail(owner, 'avg_down_stride', avg_down_stride,
                     f'it is another name for avd, and avd={avd!r} is given too; give one')
            avd = avg_down_stride
        avd = True if avd is None else avd
        base_channels = kwargs.get('base_channels', 64)
        base_width = base_channels if base_width is None else base_width
        check_int(owner, 'base_width', base_width, 1)
        check_int(owner, 'reduction_factor', reduction_factor, 1)
        num_stages = kwargs.get('num_stages', 4)
        if isinstance(base_channels, int) and not isinstance(base_channels, bool) \
                and base_channels >= 1 and num_stages in (1, 2, 3, 4):
            # The split conv has groups * radix groups over each stage's width, and the
            # attention's two grouped 1x1 convs ``groups`` groups over its hidden width.
            for i in range(num_stages):
                per_group = int(base_channels * 2 ** i * base_width / base_channels)
                if per_group % radix:
                    fail(owner, 'radix', radix, f'it must divide the width of each cardinal '
                         f'group, which is {per_group} in stage {i + 1} (base_channels='
                         f'{base_channels}, base_width={base_width})')
                hidden = max(per_group * groups * radix // reduction_factor, 32)
                if hidden % groups:
                    fail(owner, 'groups', groups, f"it must divide the split attention's "
                         f'hidden width, max(width * radix // reduction_factor, 32) = {hidden} '
                         f'in stage {i + 1}')
        norm_cfg = kwargs.get('norm_cfg')
        if isinstance(norm_cfg, dict) and _is_instance_norm(norm_cfg.get('type')):
            fail(owner, 'norm_cfg', norm_cfg, "instance norm cannot normalise split attention's "
                 "1x1 maps; use 'BN', 'SyncBN' or 'GN'")
        for name, flag in (('avd', avd), ('avd_first', avd_first),
                           ('avd_in_dilated_stages', avd_in_dilated_stages)):
            check_bool(owner, name, flag)
        if avd_first and not avd:
            fail(owner, 'avd_first', avd_first, 'it places the avd pool, so it needs avd=True')
        if kwargs.get('style', 'pytorch') != 'pytorch':
            raise ValueError(f"{owner}: style={kwargs['style']!r} is not valid; ResNeSt "
                             "strides its 3x3 part, expected 'pytorch'.")
        if stem_channels is None and isinstance(depth, int):
            base = kwargs.get('base_channels', 64)
            stem_channels = base if depth <= 50 else 2 * base
        block_kwargs = dict(groups=groups, base_width=base_width, radix=radix,
                            reduction_factor=reduction_factor, avd=avd, avd_first=avd_first,
                            avd_in_dilated_stages=avd_in_dilated_stages)
        super().__init__(depth=depth, deep_stem=deep_stem, avg_down=avg_down,
                         stem_channels=stem_channels, block_kwargs=block_kwargs, **kwargs)
        self.radix = radix
        self.groups = groups
        self.base_width = base_width
