"""The one ResNet-family engine.

It owns everything the families share: the stem (plain 7x7 or deep 3x3 x3), the shortcut
downsampling (strided 1x1 conv, or average pool + 1x1 conv), the stages with their strides,
dilations, multi-grid and contracted dilation, frozen stages and ``norm_eval``, the outputs and
their metadata, weight initialisation and checkpoint loading. A family subclass contributes only its
block class, its table of depths and its block arguments.
"""
import re
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from ..checks import (check_bool, check_bool_seq, check_cfg, check_choice, check_int, check_int_seq,
                      check_layer_type, check_norm_kind, fail)
from ..layers.dcn import register_dcn
from ..layers.fold import conv_norm, run_sequential
from ..layers.layout import (SavedAsNCHW, arrange_parameter, graph_capture, no_hooks,
                             settle_module_once, to_nchw)
from ..layers.pointwise import (PointwiseConv2d, build_pointwise_conv, layout_agnostic_conv,
                               layout_agnostic_norm)
from ..layers.pool import ShapeOnlyAvgPool2d
from ..layers.spatial import SpatialConv2d, build_spatial_conv
from .blocks import ResidualBlock

ArchTable = dict[int, tuple[type[ResidualBlock], tuple[int, ...]]]

#: Convs whose forward takes a weight in any memory layout.
_PLAIN_CONVS = (nn.Conv2d, PointwiseConv2d, SpatialConv2d)
#: Keys of ``init_cfg=dict(type='Pretrained', ...)``, all passed to the strict loader.
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location')


@contextmanager
def _naming_norm_errors(owner: str, norm_cfg: dict) -> Iterator[None]:
    """GroupNorm's own error says neither the argument nor the width it was built for."""
    try:
        yield
    except ValueError as err:
        if 'divisible by num_groups' in str(err):
            fail(owner, 'norm_cfg', norm_cfg, f'GN needs num_groups to divide every normalised '
                 f'width ({err})')
        raise


@contextmanager
def _naming_block_errors(owner: str) -> Iterator[None]:
    """A block's own refusal (``name=value is not valid; ...``) with the backbone's name first."""
    try:
        yield
    except ValueError as err:
        if re.match(r'[A-Za-z_]\w*=', str(err)):
            raise ValueError(f'{owner}: {err}') from err
        raise


def _is_pretrained(cfg: dict) -> bool:
    """A 'Pretrained' entry, named or given as mmengine's class (as mmengine reads it)."""
    layer = cfg['type']
    return layer == 'Pretrained' or getattr(layer, '__name__', None) == 'PretrainedInit'


def _init_entries(init_cfg: Any) -> list:
    """``init_cfg`` as the list of its entries (mmengine takes one dict or a list of them)."""
    if isinstance(init_cfg, (list, tuple)):
        return list(init_cfg)
    return [init_cfg] if init_cfg else []


def _forget_after_load(module: 'ResNetEngine', incompatible_keys: Any) -> None:
    # A module-level function, not a lambda: the backbone stays picklable (torch.save(model)).
    module._forget_arranged_params()


class ResNetEngine(BaseModule):
    """ResNet-family backbone: stem, four residual stages, multi-scale outputs.

    Subclasses set ``arch_settings`` (depth -> block class and blocks per stage) and pass their
    block arguments as ``block_kwargs``. All arguments are keyword-only; an unknown one raises.

    Args:
        depth: Network depth, a key of the family's ``arch_settings``.
        in_channels: Channels of the input image.
        stem_channels: Output channels of the stem (default: ``base_channels``).
        base_channels: ``planes`` of the first stage; stage ``i`` has ``base_channels * 2**i``.
        num_stages: Number of residual stages, 1 to 4.
        strides: Stride of the first block of each stage.
        dilations: Dilation of each stage.
        out_indices: Stages whose outputs are returned, in order.
        style: ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'`` (stride on the first 1x1).
        deep_stem: Three 3x3 convs instead of one 7x7 conv (ResNet-C / V1c).
        avg_down: Average-pool then 1x1 conv in strided shortcuts (ResNet-D / V1d).
        frozen_stages: Stages whose parameters are frozen and norms kept in eval mode
            (-1: none, 0: the stem, ``i``: the stem and stages ``1..i``).
        conv_cfg: Config of the convolutions (None for ``nn.Conv2d``).
        norm_cfg: Config of the norm layers (BN, SyncBN, GN...).
        norm_eval: Keep every batch-norm layer in eval mode while training (statistics frozen).
        dcn: Config of a deformable conv for the 3x3 convs of the stages in ``stage_with_dcn``
            (e.g. ``dict(type='DCNv2', deform_groups=1, fallback_on_stride=False)``); needs
            ``conv_cfg=None``, as in MMDetection.
        stage_with_dcn: Which stages use ``dcn``, one boolean per stage; with ``dcn`` at least
            one must be True. Without ``dcn`` it may only hold False (of any length, so a base
            config's four-stage default fits fewer stages).
        plugins: MMDetection-style plugins: dicts with ``cfg``, ``position`` (``after_conv1``,
            ``after_conv2`` or ``after_conv3``) and optionally ``stages`` (one bool per stage).
        with_cp: Recompute each block in the backward pass (saves memory, costs time).
        zero_init_residual: Zero the last norm of every block at initialisation, whatever the
            family, so each block starts as an identity.
        contract_dilation: Halve the dilation of the first block of a dilated stage (the
            DeepLabV3 recipe, and what the official dilated ResNeSt does).
        multi_grid: Dilation of each block of the last stage (MMSegmentation's meaning),
            overriding ``dilations[-1]``.
        channels_last: Compute the stages in channels-last memory layout (outputs are returned
            in the input's layout). None (default) picks it where it is faster: on CPU (oneDNN's
            convolutions prefer it), and on CUDA under autocast. Results are the same up to
            floating-point rounding. True also builds the conv weights channels-last, the
            layout they keep under ``torch.distributed``. Stages with ``dcn`` or mmcv's
            ``MMSyncBN`` need NCHW, so auto picks False there (and True is refused).
        pretrained: Deprecated; path of a checkpoint, same as
            ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH[, prefix=..., map_location=...])``
            loads a checkpoint of any supported layout strictly (see :mod:`resnest_mm.checkpoint`),
            also as an entry of a list; other mmengine init configs are applied as usual, then
            ``zero_init_residual``; None gives Kaiming init.
        block_kwargs: Family-specific block arguments (set by the family subclass).
    """

    arch_settings: ClassVar[ArchTable] = {}

    def __init__(self, *, depth: int, in_channels: int = 3, stem_channels: Optional[int] = None,
                 base_channels: int = 64, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = 'pytorch',
                 deep_stem: bool = False, avg_down: bool = False, frozen_stages: int = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None, norm_eval: bool = True,
                 dcn: Optional[dict] = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 plugins: Optional[list] = None, with_cp: bool = False,
                 zero_init_residual: bool = True, contract_dilation: bool = False,
                 multi_grid: Optional[Sequence[int]] = None,
                 channels_last: Optional[bool] = None, pretrained: Optional[str] = None,
                 init_cfg: Optional[Any] = None,
                 block_kwargs: Optional[dict] = None) -> None:
        owner = type(self).__name__
        if pretrained is not None:
            if not isinstance(pretrained, str):
                fail(owner, 'pretrained', pretrained, 'expected the path or URL of a checkpoint')
            if init_cfg is not None:
                fail(owner, 'pretrained', pretrained, 'give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        self._check_init_cfg(owner, init_cfg)
        super().__init__(init_cfg=init_cfg)
        norm_cfg = dict(type='BN', requires_grad=True) if norm_cfg is None else norm_cfg

        check_choice(owner, 'depth', depth, tuple(self.arch_settings))
        check_int(owner, 'in_channels', in_channels, 1)
        check_int(owner, 'base_channels', base_channels, 1)
        check_int(owner, 'num_stages', num_stages, 1)
        if num_stages > 4:
            fail(owner, 'num_stages', num_stages, 'expected 1 to 4')
        n = num_stages
        strides = check_int_seq(owner, 'strides', strides, n, 1, f'one per stage, num_stages={n}')
        dilations = check_int_seq(owner, 'dilations', dilations, n, 1,
                                  f'one per stage, num_stages={n}')
        if (not isinstance(out_indices, Sequence) or not out_indices
                or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n
                       for i in out_indices)
                or list(out_indices) != sorted(set(out_indices))):
            # MMDetection returns the outputs in stage order whatever the order given; refused
            # rather than reordered, so that no config means two things.
            fail(owner, 'out_indices', out_indices,
                 f'expected increasing stage indices in [0, {n - 1}] (num_stages={n})')
        check_choice(owner, 'style', style, ('pytorch', 'caffe'))
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) \
                or not -1 <= frozen_stages <= n:
            fail(owner, 'frozen_stages', frozen_stages, f'expected an integer in [-1, {n}]')
        check_cfg(owner, 'conv_cfg', conv_cfg)
        check_cfg(owner, 'norm_cfg', norm_cfg, optional=False)
        check_cfg(owner, 'dcn', dcn)
        if dcn is None:
            if any(check_bool_seq(owner, 'stage_with_dcn', stage_with_dcn, None)):
                fail(owner, 'stage_with_dcn', stage_with_dcn, 'a stage uses DCN but dcn is None')
            stage_with_dcn = (False,) * n
        else:
            stage_with_dcn = check_bool_seq(owner, 'stage_with_dcn', stage_with_dcn, n,
                                            f'one per stage, num_stages={n}')
            if not any(stage_with_dcn):
                fail(owner, 'stage_with_dcn', stage_with_dcn,
                     'dcn is set but no stage uses it; mark the stages with DCN True')
            if conv_cfg is not None:
                fail(owner, 'conv_cfg', conv_cfg, 'must be None with dcn (the 3x3 convs take '
                     "dcn's config; MMDetection asserts the same)")
            register_dcn()
        for name, cfg in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg), ('dcn', dcn)):
            if cfg is not None:
                check_layer_type(owner, name, cfg)
        if 'requires_grad' in norm_cfg:
            check_bool(owner, "norm_cfg['requires_grad']", norm_cfg['requires_grad'])
        check_norm_kind(owner, norm_cfg)
        if norm_cfg['type'] == 'GN' and 'num_groups' not in norm_cfg:
            fail(owner, 'norm_cfg', norm_cfg, "GN needs num_groups, e.g. dict(type='GN', "
                 'num_groups=32)')
        for name, flag in (('deep_stem', deep_stem), ('avg_down', avg_down),
                           ('norm_eval', norm_eval), ('with_cp', with_cp),
                           ('zero_init_residual', zero_init_residual),
                           ('contract_dilation', contract_dilation)):
            check_bool(owner, name, flag)
        block, stage_blocks = self.arch_settings[depth]
        stage_blocks = stage_blocks[:n]
        if multi_grid is not None:
            check_int_seq(owner, 'multi_grid', multi_grid, stage_blocks[-1], 1,
                          f'one dilation per block of the last stage, which has '
                          f'{stage_blocks[-1]} blocks at depth={depth}')
        stem_channels = base_channels if stem_channels is None else stem_channels
        check_int(owner, 'stem_channels', stem_channels, 2 if deep_stem else 1)
        if deep_stem and stem_channels % 2:
            fail(owner, 'stem_channels', stem_channels, 'a deep stem needs an even width')
        stage_plugins = self._split_plugins(owner, plugins, n)

        self.depth = depth
        self.block = block
        self.stage_blocks = stage_blocks
        self.in_channels = in_channels
        self.stem_channels = stem_channels
        self.base_channels = base_channels
        self.num_stages = n
        self.strides = strides
        self.dilations = dilations
        self.out_indices = tuple(out_indices)
        self.style = style
        self.deep_stem = deep_stem
        self.avg_down = avg_down
        self.frozen_stages = frozen_stages
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.norm_eval = norm_eval
        self.dcn = dcn
        self.stage_with_dcn = stage_with_dcn
        self.plugins = plugins
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        self.contract_dilation = contract_dilation
        self.multi_grid = None if multi_grid is None else tuple(multi_grid)
        if channels_last is not None and not isinstance(channels_last, bool):
            fail(owner, 'channels_last', channels_last, 'expected None (auto), True or False')
        self._nchw_only = ((self.dcn is not None and any(self.stage_with_dcn))
                           or not layout_agnostic_conv(conv_cfg)
                           or not layout_agnostic_norm(norm_cfg))
        if channels_last and self._nchw_only:
            # mmcv's deformable conv kernels and its SyncBatchNorm index the input as NCHW (and
            # so may other convs).
            fail(owner, 'channels_last', channels_last,
                 'mmcv deformable convs (dcn, or a conv_cfg other than Conv/ConvWS/ConvAWS) and '
                 "norms other than PyTorch's (e.g. mmcv's 'MMSyncBN') need NCHW input; use None "
                 'or False')
        self.channels_last = channels_last
        self.block_kwargs = dict(block_kwargs or {})

        with _naming_norm_errors(owner, norm_cfg):
            self._make_stem()
        channels = stem_channels
        self.res_layers: list[str] = []
        stage_channels, stage_strides = [], []
        total_stride = 4  # stem conv and max pool
        for i, num_blocks in enumerate(stage_blocks):
            with _naming_norm_errors(owner, norm_cfg), _naming_block_errors(owner):
                layer = self._make_stage(i, num_blocks, channels, stage_plugins[i])
            name = f'layer{i + 1}'
            self.add_module(name, layer)
            self.res_layers.append(name)
            channels = layer[-1].out_channels
            total_stride *= strides[i]
            stage_channels.append(channels)
            stage_strides.append(total_stride)
        self.stage_channels = tuple(stage_channels)
        self.stage_strides = tuple(stage_strides)
        self.feat_dim = channels
        for name, m in self.named_modules():
            groups = getattr(m, 'deform_groups', None)
            if isinstance(groups, int) and m.in_channels % groups:
                fail(owner, 'dcn', dcn, f'deform_groups={groups} must divide the input width of '
                     f'every deformable conv; {name} has {m.in_channels} channels')
        self._freeze_stages()
        self._forget_arranged_params()
        self.register_load_state_dict_post_hook(_forget_after_load)
        if channels_last:
            self._build_weights_channels_last()

    # ----------------------------------------------------------------------------------------
    # Construction
    @staticmethod
    def _check_init_cfg(owner: str, init_cfg: Any) -> None:
        """Fail at build time, not in ``init_weights``, on an init config that cannot work."""
        if init_cfg is None:
            return
        items = _init_entries(init_cfg)
        if not items or not all(isinstance(c, dict) and 'type' in c for c in items):
            fail(owner, 'init_cfg', init_cfg,
                 "expected None, a config dict with a 'type' key, or a list of them")
        from mmengine.registry import WEIGHT_INITIALIZERS
        for c in items:
            if isinstance(c['type'], str) and WEIGHT_INITIALIZERS.get(c['type']) is None \
                    and WEIGHT_INITIALIZERS.get(c['type'] + 'Init') is None:
                fail(owner, 'init_cfg', c, f"no weight initializer {c['type']!r} is registered "
                     "in mmengine (e.g. 'Kaiming', 'Constant', 'Normal', 'Xavier', 'Pretrained')")
        pretrained = [c for c in items if _is_pretrained(c)]
        if len(pretrained) > 1:
            fail(owner, 'init_cfg', init_cfg, "expected at most one 'Pretrained' entry")
        for cfg in pretrained:
            unknown = set(cfg) - set(PRETRAINED_KEYS)
            if unknown:
                fail(owner, 'init_cfg', cfg, f"keys {sorted(unknown)} are not used by "
                     f"'Pretrained'; allowed: {', '.join(PRETRAINED_KEYS[1:])}")
            if not isinstance(cfg.get('checkpoint'), str) or not cfg['checkpoint']:
                fail(owner, 'init_cfg', cfg, "'Pretrained' needs checkpoint=PATH (a file or URL)")

    @staticmethod
    def _split_plugins(owner: str, plugins: Optional[list], num_stages: int) -> list[list]:
        """Per stage, the plugins that apply to it, each as ``dict(cfg=..., position=...)``."""
        per_stage: list[list] = [[] for _ in range(num_stages)]
        if plugins is not None and not isinstance(plugins, (list, tuple)):
            fail(owner, 'plugins', plugins, 'expected a list of dict(cfg=..., position=...), '
                 'one per plugin')
        for plugin in plugins or []:
            if not isinstance(plugin, dict) or 'cfg' not in plugin or 'position' not in plugin:
                fail(owner, 'plugins', plugin, "each plugin needs 'cfg' and 'position' keys")
            unknown = set(plugin) - {'cfg', 'position', 'stages'}
            if unknown:
                fail(owner, 'plugins', plugin, f'unknown keys {sorted(unknown)}; allowed: '
                     "'cfg', 'position', 'stages'")
            check_choice(owner, "plugins[...]['position']", plugin['position'],
                         ('after_conv1', 'after_conv2', 'after_conv3'))
            check_cfg(owner, "plugins[...]['cfg']", plugin['cfg'], optional=False)
            check_layer_type(owner, "plugins[...]['cfg']", plugin['cfg'])
            stages = plugin.get('stages')
            if stages is not None:
                stages = check_bool_seq(owner, "plugins[...]['stages']", stages, num_stages,
                                        f'one per stage, num_stages={num_stages}')
            for i in range(num_stages):
                if stages is None or stages[i]:
                    per_stage[i].append(dict(cfg=plugin['cfg'], position=plugin['position']))
        return per_stage

    def _norm(self, channels: int, postfix=1) -> tuple[str, nn.Module]:
        return build_norm_layer(self.norm_cfg, channels, postfix=postfix)

    def _conv(self, cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
        return build_spatial_conv(self.conv_cfg, cin, cout, k, stride=stride, padding=k // 2,
                                  bias=False)

    def _make_stem(self) -> None:
        c = self.stem_channels
        if self.deep_stem:
            # Index layout 0/1/3/4/6/7 is MMDetection's, so its checkpoints load as they are.
            self.stem = nn.Sequential(
                self._conv(self.in_channels, c // 2, 3, stride=2), self._norm(c // 2)[1],
                nn.ReLU(inplace=True),
                self._conv(c // 2, c // 2, 3), self._norm(c // 2)[1], nn.ReLU(inplace=True),
                self._conv(c // 2, c, 3), self._norm(c)[1], nn.ReLU(inplace=True))
        else:
            self.conv1 = self._conv(self.in_channels, c, 7, stride=2)
            self.norm1_name, norm1 = self._norm(c)
            self.add_module(self.norm1_name, norm1)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _make_downsample(self, cin: int, cout: int, stride: int) -> Optional[nn.Module]:
        if stride == 1 and cin == cout:
            return None
        conv_stride = stride
        layers: list[nn.Module] = []
        if self.avg_down:
            # The pool sits at index 0 even when it is an identity (stride 1, dilated stages), so
            # the conv and norm keep the keys downsample.1/.2 of every avg-down checkpoint.
            layers.append(ShapeOnlyAvgPool2d(stride, stride, ceil_mode=True,
                                             count_include_pad=False)
                          if stride > 1 else nn.Identity())
            conv_stride = 1
        layers += [build_pointwise_conv(self.conv_cfg, cin, cout, stride=conv_stride),
                   self._norm(cout)[1]]
        return nn.Sequential(*layers)

    def _block_dilations(self, i: int, num_blocks: int) -> list[int]:
        if i == self.num_stages - 1 and self.multi_grid is not None:
            return list(self.multi_grid)
        d = self.dilations[i]
        first = d // 2 if (self.contract_dilation and d > 1) else d
        return [first] + [d] * (num_blocks - 1)

    def _make_stage(self, i: int, num_blocks: int, cin: int, plugins: list) -> nn.Sequential:
        planes = self.base_channels * 2 ** i
        cout = planes * self.block.expansion
        common = dict(planes=planes, style=self.style, conv_cfg=self.conv_cfg,
                      norm_cfg=self.norm_cfg, dcn=self.dcn if self.stage_with_dcn[i] else None,
                      plugins=plugins, with_cp=self.with_cp, stage_index=i,
                      base_channels=self.base_channels, **self.block_kwargs)
        blocks = []
        for j, dilation in enumerate(self._block_dilations(i, num_blocks)):
            first = j == 0
            stride = self.strides[i] if first else 1
            blocks.append(self.block(
                in_channels=cin if first else cout, stride=stride, dilation=dilation,
                downsample=self._make_downsample(cin, cout, stride) if first else None,
                first_in_stage=first, **common))
        return nn.Sequential(*blocks)

    # ----------------------------------------------------------------------------------------
    # Metadata
    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned feature map."""
        return tuple(self.stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Stride (relative to the input) of each returned feature map."""
        return tuple(self.stage_strides[i] for i in self.out_indices)

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    # ----------------------------------------------------------------------------------------
    # Freezing and train mode
    def _stem_modules(self) -> list[nn.Module]:
        return [self.stem] if self.deep_stem else [self.conv1, self.norm1]

    def _freeze_stages(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen += self._stem_modules()
        for i in range(1, self.frozen_stages + 1):
            frozen.append(getattr(self, f'layer{i}'))
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'ResNetEngine':
        """Set train mode, keeping frozen stages frozen and, with ``norm_eval``, every BN layer
        (those inside split attention and Res2Net's splits included) in eval mode."""
        super().train(mode)
        self._forget_arranged_params()  # modules may have been swapped since the last forward
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ----------------------------------------------------------------------------------------
    # Initialisation
    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint strictly (a 'Pretrained' entry, alone or in a list),
        or apply the other init configs, or initialise (Kaiming); then zero-init residual."""
        items = _init_entries(self.init_cfg)
        pretrained = next((c for c in items if _is_pretrained(c)), None)
        if pretrained is not None:
            # Like mmengine: the other entries first (they matter for what the checkpoint does
            # not hold, e.g. plugins), then the checkpoint, strictly.
            others = [c for c in items if not _is_pretrained(c)]
            if others:
                from mmengine.model import initialize
                initialize(self, others)
            from ...checkpoint import load_pretrained
            # An ImageNet checkpoint has no deformable offsets: those keep their zero start.
            self._zero_deform_offsets()
            load_pretrained(self, pretrained['checkpoint'], prefix=pretrained.get('prefix'),
                            map_location=pretrained.get('map_location', 'cpu'))
        elif items:
            super().init_weights()
            self._zero_init_residual()
        else:
            self._default_init()
        self._is_init = True

    def _default_init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        self._zero_deform_offsets()
        self._zero_init_residual()

    def _zero_deform_offsets(self) -> None:
        for m in self.modules():
            # Deformable convs start as plain convs: zero offsets (and masks at 0.5).
            offset = getattr(m, 'conv_offset', None)
            if isinstance(offset, nn.Conv2d):
                nn.init.zeros_(offset.weight)
                if offset.bias is not None:
                    nn.init.zeros_(offset.bias)

    def _zero_init_residual(self) -> None:
        if self.zero_init_residual:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    # ----------------------------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.deep_stem:
            x = run_sequential(self.stem, x)
        else:
            x = self.relu(conv_norm(self.conv1, self.norm1, x))
        return self.maxpool(x)

    def _use_channels_last(self, x: torch.Tensor) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        if self._nchw_only:
            return False
        if x.is_cpu:
            return True
        return x.device.type == 'cuda' and torch.is_autocast_enabled('cuda')

    def _forget_arranged_params(self) -> None:
        self._arranged_params: Optional[tuple[list[nn.Parameter], list[nn.Parameter]]] = None

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .half() may replace parameters (and always may change their layout).
        self._forget_arranged_params()
        return super()._apply(fn, recurse)

    def _build_weights_channels_last(self) -> None:
        """Lay out the plain conv weights channels-last now, while nothing holds them.

        Under ``torch.distributed`` a weight keeps the layout it has when the model is wrapped
        (:func:`layouts_fixed`), and a forward pass comes too late to change it: with
        ``channels_last=True`` the weights are built in the layout the convs compute in, so DDP
        runs spare each conv a weight copy (``.to(device)`` keeps the layout).
        """
        with torch.no_grad():
            for m in self._layout_convs():
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)

    def _layout_convs(self) -> Iterator[nn.Module]:
        """The convs whose weight may be laid out channels-last: plain convs (``nn.Conv2d`` and
        ours) larger than 1x1, whose weight is stored (not computed by a parametrization)."""
        for m in self.modules():
            if (type(m) in _PLAIN_CONVS and m.weight.shape[2:] != (1, 1)
                    and not parametrize.is_parametrized(m)):
                yield m

    def _weights_to_channels_last(self, x: torch.Tensor) -> None:
        """Store the conv weights channels-last, as the convs will compute.

        That spares every conv a weight copy in the forward pass and a gradient copy in the
        backward pass (oneDNN and cuDNN compute both in that layout). Parameters keep their
        identity (optimisers, hooks); only their storage changes. Only the weights of plain
        convs (``nn.Conv2d`` and ours) larger than 1x1 (a 1x1 weight is both layouts at once):
        other conv types may read their weight as NCHW (mmcv's ``ConvWS2d`` views it). On CPU,
        :class:`SpatialConv2d` keeps its own weight in the layout its way computes in. The lists
        are kept between calls until ``train()``, ``_apply()`` or a state-dict load forgets them:
        walking the module tree on every call cost 1.4 ms of host time per ResNet-50 inference
        call on a GPU machine (under cProfile), a fifth of a batch-2 inference there.
        """
        if graph_capture():
            return
        if self._arranged_params is None:
            spatial, other = [], []
            for m in self._layout_convs():
                (spatial if type(m) is SpatialConv2d else other).append(m.weight)
            self._arranged_params = spatial, other
        spatial, other = self._arranged_params
        for params in (other,) if x.is_cpu else (other, spatial):
            for param in params:
                if not param.is_contiguous(memory_format=torch.channels_last):
                    arrange_parameter(param, torch.channels_last)

    def _forward_stages_nchw_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stages in channels-last, each returned output converted to NCHW once.

        The next stage reads the channels-last map itself. Autograd saves of that map (the
        closing activation's, the next block's) are kept as the NCHW output instead, which the
        caller holds anyway, and rebuilt in the backward pass (``SavedAsNCHW``): one forward copy
        per output and no map kept twice. The gradient reaching the NCHW output comes back in
        channels-last (``to_nchw``), so it adds up with the next stage's in one layout.
        """
        outs = []
        carry: Optional[SavedAsNCHW] = None
        last_stage = len(self.res_layers) - 1
        for i, name in enumerate(self.res_layers):
            stage = getattr(self, name)
            returned = i in self.out_indices
            saves_in, carry = carry, None
            for j, block in enumerate(stage):
                # Checkpointed blocks keep their input themselves.
                redirect = j == 0 and saves_in is not None and not block.with_cp
                with saves_in.saving() if redirect else nullcontext():
                    if j < len(stage) - 1 or not returned:
                        x = block(x)
                    elif i == last_stage:
                        # Nothing reads it after us: the activation runs on the NCHW copy.
                        x = block(x, contiguous_output=True)
                    else:
                        out = block.forward_preactivation(x)
            if not returned:
                continue
            if i == last_stage:
                outs.append(x)
            elif SavedAsNCHW.accepts(out) and type(block.relu) is nn.ReLU:
                # ReLU saves only its output; another activation (swapped in) saves its input,
                # which must not be handed its output in the backward pass.
                carry = SavedAsNCHW(out)
                with carry.saving():
                    x = block.relu(out)  # in place: saves its output, i.e. out's storage
                y = to_nchw(x)
                carry.set_nchw(y)
                outs.append(y)
            else:
                # Not a channels-last map (a plugin's layout), or another activation: the next
                # stage reads the output.
                x = block.relu(to_nchw(out))
                outs.append(x)
        return outs

    def _stages_unhooked(self) -> bool:
        """Whether no hook (forward or backward) is on a stage or its last block: the training
        path calls the blocks one by one and the last one of a stage in parts, and a hook needs
        its module called."""
        stages = [getattr(self, name) for name in self.res_layers]
        return no_hooks(*stages, *(stage[-1] for stage in stages))

    def _forward_stages_late_nchw_copies(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stages in channels-last, each returned output converted to NCHW after the next
        stage's first block has run (in inference, traced graphs, and training with hooks).

        That block's input (the channels-last output) lives through it anyway; copied before
        it, the NCHW output would live through it too, beside the block's own maps, where the
        network's peak memory lies (ResNeSt-50 at 2x224: 27.6 MB with the copy made first).
        A stage with forward hooks runs whole, and the copy waits for the stage.
        """
        outs = []
        pending = None  # a returned stage output, still channels-last
        for i, name in enumerate(self.res_layers):
            stage = getattr(self, name)
            blocks = iter(stage) if no_hooks(stage) else iter((stage,))
            x = next(blocks)(x)  # blocks leave their input as it is
            if pending is not None:
                outs.append(to_nchw(pending))
                pending = None
            for block in blocks:
                x = block(x)
            if i in self.out_indices:
                pending = x
        if pending is not None:  # the last stage's: no block follows it
            outs.append(to_nchw(pending))
        return outs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        to_channels_last = x.dim() == 4 and self._use_channels_last(x)
        restore = (to_channels_last
                   and not x.is_contiguous(memory_format=torch.channels_last))
        if to_channels_last:
            self._weights_to_channels_last(x)
            x = x.contiguous(memory_format=torch.channels_last)
        elif self._nchw_only and x.dim() == 4:
            # A channels-last (or channel-strided) input would keep the maps in that layout,
            # and mmcv's deformable convs read their input's memory as NCHW: wrong values.
            x = x.contiguous()
        x = self.forward_stem(x)
        # Necks and mmcv ops expect the layout they were given. When autograd records, the
        # outputs are converted so that no map lives twice through the backward pass.
        if (restore and torch.is_grad_enabled() and not graph_capture()
                and self._stages_unhooked()):
            outs = self._forward_stages_nchw_outputs(x)
        elif restore:
            outs = self._forward_stages_late_nchw_copies(x)
        else:
            outs = []
            for i, name in enumerate(self.res_layers):
                x = getattr(self, name)(x)
                if i in self.out_indices:
                    outs.append(x)
        if self.training and torch.is_grad_enabled() and not graph_capture():
            # The first training pass laid out each weight for its conv: from now on the
            # optimiser's state follows that layout, so it must stay (see settle_layouts).
            # Each conv settles the weights it records a gradient of; this settles the rest.
            settle_module_once(self)
        return tuple(outs)
