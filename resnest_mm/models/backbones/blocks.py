"""Residual blocks shared by every family, and the small protocol the engine builds them through.

The engine (``engine.py``) builds every block with the same keyword arguments (channels, stride,
dilation, shortcut, norm/conv/DCN/plugin configs, checkpointing and where the block sits in the
network); a family adds its own keyword arguments on top. A block builds all of its own layers:
nothing is built by a parent and then deleted or overwritten.
"""
import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer, build_plugin_layer
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _NormBase

from ..layers.dcn import conv_or_dcn_cfg
from ..layers.fold import conv_norm, run_sequential
from ..layers.layout import to_nchw
from ..layers.pointwise import build_pointwise_conv
from ..layers.spatial import build_spatial_conv


def mid_channels(planes: int, base_width: Optional[int], base_channels: int, groups: int) -> int:
    """Width of a bottleneck's 3x3 stage: ``planes * base_width / base_channels`` per group.

    With ``base_channels=64`` this is torchvision's and the official ResNeSt's rule (ResNeXt-50
    32x4d: 32 groups of 4 channels in the first stage, 128 in all). ``base_width=None`` means
    ``planes`` per group at any ``base_channels``: MMDetection's ResNet, and its ResNeXt/ResNeSt
    with one group, whose width is ``planes`` whatever ``base_channels`` is.
    """
    if base_width is None:
        return planes * groups
    return int(planes * base_width / base_channels) * groups


class ResidualBlock(BaseModule):
    """Base of all blocks: the shortcut, activation checkpointing and the block protocol.

    Args:
        in_channels: Channels of the block input.
        planes: Base channels of the block; its output has ``planes * expansion`` channels.
        stride: Spatial stride of the block.
        dilation: Dilation of its 3x3 convolution(s).
        downsample: Shortcut branch, or None for the identity.
        style: ``'pytorch'`` puts the stride on the 3x3 conv, ``'caffe'`` on the first 1x1 conv.
        conv_cfg: Config of the convolutions (None for ``nn.Conv2d``).
        norm_cfg: Config of the norm layers.
        dcn: Config of deformable 3x3 convs, or None.
        plugins: Plugins of this block, each ``dict(cfg=..., position=...)``.
        with_cp: Recompute the block in the backward pass to save memory.
        first_in_stage: Whether the block is the first of its stage.
        stage_index: Index of the stage (0 for the first).
        base_channels: The network's ``base_channels`` (widths scale with it).
        init_cfg: mmengine init config.
    """

    expansion = 1

    def __init__(self, *, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = 'pytorch',
                 conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None,
                 dcn: Optional[dict] = None, plugins: Optional[list] = None,
                 with_cp: bool = False, first_in_stage: bool = False, stage_index: int = 0,
                 base_channels: int = 64, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.planes = planes
        self.out_channels = planes * self.expansion
        self.stride = stride
        self.dilation = dilation
        self.style = style
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN', requires_grad=True)
        self.dcn = dcn
        self.with_cp = with_cp
        self.first_in_stage = first_in_stage
        self.stage_index = stage_index
        self.base_channels = base_channels
        self.plugins = list(plugins) if plugins else []
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def _add_norm(self, channels: int, postfix) -> str:
        """Add a norm layer under MMCV's name (``bn1``, ``gn1``...) and return the name, so the
        parameter names match MMDetection's checkpoints for every norm type."""
        name, norm = build_norm_layer(self.norm_cfg, channels, postfix=postfix)
        self.add_module(name, norm)
        return name

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch, without the final addition and activation."""
        raise NotImplementedError

    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch (zeroed by ``zero_init_last``)."""
        raise NotImplementedError

    def zero_init_last(self) -> None:
        """Start the block as an identity: zero the scale of its last norm layer."""
        norm = self.last_norm()
        if getattr(norm, 'weight', None) is not None:
            nn.init.zeros_(norm.weight)

    def _add_in_place(self) -> bool:
        """Whether the shortcut may be added into the residual branch's output in place: true when
        the branch ends with a norm that keeps its input, not its output, for the backward pass."""
        return isinstance(self.last_norm(), (_NormBase, nn.GroupNorm, nn.LayerNorm))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else run_sequential(self.downsample, x)
        out = self.residual(x)
        if self._add_in_place():
            return out.add_(identity)  # one feature map less to allocate per block
        return out + identity

    def forward_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch plus the shortcut, before the closing activation (recomputed in
        the backward pass when ``with_cp``)."""
        if self.with_cp and x.requires_grad:
            runs = []

            def run(x: torch.Tensor) -> torch.Tensor:
                # The backward pass runs this again; its training norms must not count the
                # batch into their running statistics a second time.
                with _running_stats_kept(self) if runs else contextlib.nullcontext():
                    runs.append(True)
                    return self._forward(x)
            return cp.checkpoint(run, x, use_reentrant=False)
        return self._forward(x)

    def forward(self, x: torch.Tensor, *, contiguous_output: bool = False) -> torch.Tensor:
        """Args:
            x: The block's input.
            contiguous_output: Return the output in the default (NCHW) layout. Converting
                before the activation makes that one tensor both the returned stage output and
                the activation's saved input, so it is stored only once.
        """
        out = self.forward_preactivation(x)
        if contiguous_output:
            out = to_nchw(out)
        return self.relu(out)


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Training norms in ``module`` normalise by the batch's statistics as usual but leave
    their running statistics and batch counter as they are. (They still update them, by a
    momentum of 0: without that update they would save fewer tensors for backward than in the
    first run, which checkpointing refuses.)"""
    # Any norm that keeps running statistics (torch's batch and instance norms, mmcv's SyncBN).
    norms = [(m, m.momentum, getattr(m, 'num_batches_tracked', None)) for m in module.modules()
             if m.training and getattr(m, 'track_running_stats', False)
             and getattr(m, 'running_mean', None) is not None and hasattr(m, 'momentum')]
    counts = [None if c is None else c.clone() for _, _, c in norms]
    for m, _, _ in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for (m, momentum, counter), count in zip(norms, counts):
                m.momentum = momentum
                if counter is not None:
                    counter.copy_(count)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Messages name the argument; the backbone building the block puts its name first.
        for name, value in (('dcn', self.dcn), ('plugins', self.plugins)):
            if value:
                raise ValueError(f'{name}={value!r} is not valid; BasicBlock (ResNet-18/34) '
                                 'supports no dcn or plugins, use depth >= 50.')
        self.conv1 = build_spatial_conv(self.conv_cfg, self.in_channels, self.planes, 3,
                                        stride=self.stride, padding=self.dilation,
                                        dilation=self.dilation, bias=False)
        self.norm1_name = self._add_norm(self.planes, 1)
        self.conv2 = build_spatial_conv(self.conv_cfg, self.planes, self.planes, 3, padding=1,
                                        bias=False)
        self.norm2_name = self._add_norm(self.planes, 2)

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    def last_norm(self) -> nn.Module:
        return self.norm2

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(conv_norm(self.conv1, self.norm1, x))
        return conv_norm(self.conv2, self.norm2, out)


class Bottleneck(ResidualBlock):
    """1x1 reduce, a middle part, 1x1 expand: the frame every bottleneck family shares.

    This class builds the two 1x1 convolutions, their norms and the plugins. A subclass builds its
    middle part in its own ``__init__`` (after this one) and implements ``middle``, which maps the
    ``width`` reduced channels to ``width`` channels and applies any stride the 1x1 conv does not.

    Args:
        width: Channels between the two 1x1 convolutions.
        **kwargs: See :class:`ResidualBlock`.
    """

    expansion = 4

    def __init__(self, *, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.width = width
        # 'caffe' style strides the first 1x1 conv, 'pytorch' style the 3x3 part.
        self.conv1_stride = self.stride if self.style == 'caffe' else 1
        self.conv2_stride = 1 if self.style == 'caffe' else self.stride
        self.conv1 = build_pointwise_conv(self.conv_cfg, self.in_channels, width,
                                          stride=self.conv1_stride)
        self.norm1_name = self._add_norm(width, 1)
        self.conv3 = build_pointwise_conv(self.conv_cfg, width, self.out_channels)
        self.norm3_name = self._add_norm(self.out_channels, 3)
        self.plugin_names = {'after_conv1': [], 'after_conv2': [], 'after_conv3': []}
        for plugin in self.plugins:
            channels = self.out_channels if plugin['position'] == 'after_conv3' else width
            cfg = dict(plugin['cfg'])
            name, layer = build_plugin_layer(cfg, postfix=cfg.pop('postfix', ''),
                                             in_channels=channels)
            if hasattr(self, name):
                raise ValueError(f'plugins={self.plugins!r} is not valid; two plugins are both '
                                 f"named {name!r} in one block, give them different 'postfix' "
                                 'values.')
            self.add_module(name, layer)
            self.plugin_names[plugin['position']].append(name)

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm3(self) -> nn.Module:
        return getattr(self, self.norm3_name)

    def last_norm(self) -> nn.Module:
        return self.norm3

    def _add_in_place(self) -> bool:
        # A plugin after conv3 may keep its output for its backward pass.
        return not self.plugin_names['after_conv3'] and super()._add_in_place()

    def _plugins(self, x: torch.Tensor, position: str) -> torch.Tensor:
        for name in self.plugin_names[position]:
            x = getattr(self, name)(x)
        return x

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(conv_norm(self.conv1, self.norm1, x))
        out = self._plugins(out, 'after_conv1')
        out = self.middle(out)
        out = self._plugins(out, 'after_conv2')
        out = conv_norm(self.conv3, self.norm3, out)
        return self._plugins(out, 'after_conv3')


class ConvBottleneck(Bottleneck):
    """ResNet and ResNeXt bottleneck: a (grouped, possibly deformable) 3x3 conv in the middle.

    Args:
        groups: Groups of the 3x3 conv (ResNeXt's cardinality; 1 for ResNet).
        base_width: Channels per group at ``base_channels`` planes; None: ``planes`` per group
            (ResNet's width at any ``base_channels``).
        **kwargs: See :class:`ResidualBlock`.
    """

    def __init__(self, *, groups: int = 1, base_width: Optional[int] = None, **kwargs) -> None:
        width = mid_channels(kwargs['planes'], base_width, kwargs.get('base_channels', 64),
                             groups)
        super().__init__(width=width, **kwargs)
        self.groups = groups
        self.conv2 = build_spatial_conv(
            conv_or_dcn_cfg(self.conv_cfg, self.dcn, self.conv2_stride), width, width, 3,
            stride=self.conv2_stride, padding=self.dilation, dilation=self.dilation,
            groups=groups, bias=False)
        self.norm2_name = self._add_norm(width, 2)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    def middle(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(conv_norm(self.conv2, self.norm2, x))
