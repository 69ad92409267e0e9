"""Backbone benchmark: resnest_mm against MMDetection's built-in networks and the official ResNeSt.

For each network (a named variant such as ``resnest50``, or the ``model.backbone`` of a config
file) three implementations of the *same* architecture are built: ours
(:func:`resnest_mm.models.build_backbone`), MMDetection's built-in backbone, and the official
``resnest`` package's network where it has one (its stem and four stages only: the classifier is
not part of a backbone's work). All of them get the same weights (the official or our random
weights copied across with :func:`resnest_mm.checkpoint.load_pretrained`, and BN affine
parameters/statistics that are not trivial), ``norm_eval=False``, the same mode and the same input;
that their outputs agree is checked and reported.

Measured, per implementation:

* parameters, and FLOPs as mmengine's ``get_model_complexity_info`` counts them (one
  multiply-add = one FLOP, i.e. MACs), per image at the input size;
* inference latency (eval mode, ``torch.inference_mode``) and training-step time (train mode,
  gradients set to None, forward, the sum of the outputs' means, backward), as the median and
  inter-quartile range of the timed repetitions, and the throughput (batch / median);
* peak memory of one call: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated
  before the call; on CPU the same quantity rebuilt from the allocation and free records of the
  PyTorch profiler (``profile_memory=True``): the highest total of tensor bytes the CPU allocator
  held during the call above what it held at its start. Neither counts the weights or the input,
  which exist before the call; the training step's count includes the parameter gradients
  (the measured call starts with none).

With ``BenchmarkSettings.compile`` every implementation is timed as ``torch.compile`` makes it
(the same backend for all; the output check above runs eager).

Timing is interleaved round-robin: every warm-up and timed repetition runs all implementations of
all networks once each in turn, every other round in reverse order (A B C, C B A, A B C ...), so
slow drifts of a shared machine hit them all alike and none always runs first; ratios are taken
from the medians of that one run.
"""
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .models.checks import check_bool, check_int
from .report import ProgressBar, markdown_table

SOURCES = ('ours', 'mmdet', 'official')
OWNER = 'BenchmarkSettings'  # names the settings in error messages
MODES = ('infer', 'train')
#: Backbone arguments that do not change the architecture's arithmetic (or that the benchmark
#: sets itself) and are ignored when a config's backbone is matched to a named variant.
NON_ARCH_KEYS = ('out_indices', 'norm_eval', 'frozen_stages', 'init_cfg', 'pretrained',
                 'with_cp', 'zero_init_residual', 'norm_cfg', 'type')
#: Our class name -> MMDetection's registry name of the same network family.
MMDET_TYPES = {'ResNet': 'ResNet', 'ResNetV1c': 'ResNet', 'ResNetV1d': 'ResNet',
               'ResNeXt': 'ResNeXt', 'ResNeSt': 'ResNeSt', 'Res2Net': 'Res2Net'}


# ------------------------------------------------------------------------------------------------
# Settings and results
@dataclass
class BenchmarkSettings:
    """What to measure and how.

    Args:
        batch: Images per call.
        size: Input height and width.
        iters: Timed repetitions per implementation and mode.
        warmup: Untimed repetitions before them.
        device: ``'cpu'`` or ``'cuda'``.
        amp: Mixed precision (float16 on CUDA, bfloat16 on CPU) through ``torch.autocast``.
        channels_last: Models and input in channels-last memory format.
        modes: ``'infer'`` and/or ``'train'``.
        peers: Which peers to build: ``'mmdet'`` and/or ``'official'`` (empty: ours only).
        threads: ``torch.set_num_threads`` (None: PyTorch's default).
        memory: Measure peak memory.
        flops: Count FLOPs.
        compile: A ``torch.compile`` backend (``'inductor'``, ...) that every implementation is
            compiled with, each the same way (None: eager). Compiling happens in the first
            warm-up repetition of each mode, so ``warmup`` must be at least 1.
    """
    batch: int = 2
    size: int = 224
    iters: int = 10
    warmup: int = 3
    device: str = 'cpu'
    amp: bool = False
    channels_last: bool = False
    modes: tuple[str, ...] = MODES
    peers: tuple[str, ...] = ('mmdet', 'official')
    threads: Optional[int] = None
    memory: bool = True
    flops: bool = True
    compile: Optional[str] = None

    def check(self) -> None:
        """Fail early, naming the setting, on a value that cannot work."""
        for name in ('batch', 'size', 'iters'):
            check_int(OWNER, name, getattr(self, name), 1)
        check_int(OWNER, 'warmup', self.warmup, 0)
        for name in ('amp', 'channels_last', 'memory', 'flops'):
            check_bool(OWNER, name, getattr(self, name))
        for name, allowed in (('modes', MODES), ('peers', SOURCES[1:])):
            value = getattr(self, name)
            if (not isinstance(value, (tuple, list)) or len(set(value)) != len(value)
                    or not all(isinstance(v, str) for v in value)):
                raise ValueError(f'{name}={value!r} is not valid; expected a tuple of distinct '
                                 f'names from {allowed}')
        if 'train' in self.modes and self.batch < 2:
            raise ValueError(f'batch={self.batch} is not valid with the train mode: batch norm in '
                             'training needs more than one value per channel, and split '
                             "attention's norms see one per image; expected >= 2")
        if self.size < 32:
            raise ValueError(f'size={self.size} is not valid; the backbones downsample 32 times, '
                             'expected >= 32')
        if self.device not in ('cpu', 'cuda'):
            raise ValueError(f"device={self.device!r} is not valid; expected 'cpu' or 'cuda'")
        if self.device == 'cuda' and not torch.cuda.is_available():
            raise ValueError("device='cuda' is not available on this machine (no CUDA device "
                             "visible to PyTorch); use device='cpu'")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f'modes={self.modes!r} is not valid; expected a non-empty subset '
                             f'of {MODES}')
        bad = [p for p in self.peers if p not in SOURCES[1:]]
        if bad:
            raise ValueError(f'peers={self.peers!r} is not valid: {bad} unknown; expected a '
                             f'subset of {SOURCES[1:]}')
        if self.threads is not None:
            check_int(OWNER, 'threads', self.threads, 1)
        if self.compile is not None:
            from torch._dynamo import list_backends
            backends = list_backends(exclude_tags=())
            if self.compile not in backends:
                raise ValueError(f'compile={self.compile!r} is not valid; expected None (eager) '
                                 f'or a torch.compile backend: {", ".join(backends)}')
            if self.warmup < 1:
                raise ValueError(f'warmup={self.warmup} is not valid with compile='
                                 f'{self.compile!r}; compiling takes the first warm-up '
                                 'repetition, expected >= 1')


@dataclass
class NetworkSpec:
    """One network to benchmark: a label and our backbone's registry config.

    ``variant`` is the named variant the config equals (used to find the official network).
    """
    label: str
    config: dict
    variant: Optional[str] = None


@dataclass
class Implementation:
    network: str
    source: str
    label: str
    model: nn.Module
    forward: Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]]
    note: str = ''


@dataclass
class Measurement:
    """Everything measured for one implementation of one network."""
    network: str
    source: str
    label: str
    note: str
    params: int
    macs: Optional[int] = None
    depth: Optional[int] = None
    times: dict[str, list[float]] = field(default_factory=dict)  # mode -> seconds per call
    peak_bytes: dict[str, Optional[int]] = field(default_factory=dict)
    max_abs_diff_vs_ours: Optional[float] = None

    def median(self, mode: str) -> Optional[float]:
        t = self.times.get(mode)
        return statistics.median(t) if t else None

    def iqr(self, mode: str) -> Optional[float]:
        t = self.times.get(mode)
        if not t:
            return None
        if len(t) < 2:
            return 0.0
        q = statistics.quantiles(t, n=4, method='inclusive')
        return q[2] - q[0]


@dataclass
class BenchmarkResult:
    settings: BenchmarkSettings
    environment: dict
    measurements: list[Measurement]
    skipped_peers: list[dict]

    def get(self, network: str, source: str) -> Optional[Measurement]:
        for m in self.measurements:
            if m.network == network and m.source == source:
                return m
        return None

    @property
    def networks(self) -> list[str]:
        seen: list[str] = []
        for m in self.measurements:
            if m.network not in seen:
                seen.append(m.network)
        return seen


# ------------------------------------------------------------------------------------------------
# Networks and their peers
def resolve_spec(spec: str, **overrides: Any) -> NetworkSpec:
    """A variant name (``resnest50``) or a config file whose ``model.backbone`` is a resnest_mm
    backbone. ``overrides`` are extra backbone arguments (e.g. ``base_channels=8`` for tests)."""
    from .models import VARIANTS, variant_config
    if spec in VARIANTS:
        # Merged here: variant_config() refuses to override an argument the variant sets.
        return NetworkSpec(label=spec, config={**variant_config(spec), **overrides},
                           variant=None if overrides else spec)
    if spec.endswith('.py'):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f'network {spec!r}: config file does not exist')
        from mmengine.config import Config
        cfg = Config.fromfile(spec)
        backbone = cfg.get('model', {}).get('backbone') if isinstance(cfg.get('model'), dict) \
            else None
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise ValueError(f'network {spec!r}: the config has no model.backbone dict with a type')
        backbone = dict(backbone.to_dict() if hasattr(backbone, 'to_dict') else backbone)
        btype = str(backbone['type'])
        if not btype.startswith('resnest_mm.'):
            raise ValueError(f"network {spec!r}: model.backbone.type={btype!r} is not a "
                             "resnest_mm backbone; expected 'resnest_mm.<Class>'")
        # Benchmarked as a trainable four-output backbone with random weights.
        for key in ('init_cfg', 'pretrained'):
            backbone.pop(key, None)
        backbone.update(frozen_stages=-1, out_indices=(0, 1, 2, 3))
        backbone.update(overrides)
        label = os.path.splitext(os.path.basename(spec))[0]
        return NetworkSpec(label=label, config=backbone, variant=_matching_variant(backbone))
    raise ValueError(f'network {spec!r} is neither a known variant nor a .py config file; '
                     f'variants: {sorted(VARIANTS)}')


def _arch(cfg: dict) -> tuple[str, dict]:
    return str(cfg['type']).split('.')[-1], {k: v for k, v in cfg.items()
                                            if k not in NON_ARCH_KEYS}


def _matching_variant(cfg: dict) -> Optional[str]:
    """The named variant whose network ``cfg`` builds, if any (compared on built attributes so
    that defaults written out explicitly still match)."""
    from .models import VARIANTS, variant_config
    cls, _ = _arch(cfg)
    for name, (vcls, _) in VARIANTS.items():
        if vcls != cls:
            continue
        if _signature(variant_config(name)) == _signature(cfg):
            return name
    return None


def _signature(cfg: dict) -> tuple:
    """The architecture a backbone config builds (no weights are created: meta device)."""
    from .registry import MODELS
    from .models import backbones  # noqa: F401
    cfg = dict(cfg, norm_eval=False, frozen_stages=-1, out_indices=(0, 1, 2, 3))
    cfg.pop('init_cfg', None)
    cfg.pop('pretrained', None)
    with torch.device('meta'):
        model = MODELS.build(cfg)
    return tuple((n, tuple(p.shape)) for n, p in model.state_dict().items()) + (repr(model),)


def mmdet_peer_config(model: nn.Module) -> tuple[Optional[dict], str]:
    """MMDetection's built-in config for the same network as our ``model``, or None and why not.

    Only networks the built-in can express exactly are given a peer, except Res2Net: ours (the
    official network) has one stride-1 3x3 average pool on a quarter of the channels in the first
    block that MMDetection's lacks; the note says so.
    """
    cls = type(model).__name__
    if cls not in MMDET_TYPES:
        return None, f'no MMDetection built-in for {cls}'
    if model.dcn is not None or model.plugins or model.multi_grid or model.contract_dilation:
        return None, 'dcn/plugins/multi_grid/contract_dilation are not mapped to MMDetection'
    if model.conv_cfg is not None:
        return None, 'conv_cfg is not mapped to MMDetection'
    common = dict(depth=model.depth, in_channels=model.in_channels,
                  stem_channels=model.stem_channels, base_channels=model.base_channels,
                  num_stages=model.num_stages, strides=tuple(model.strides),
                  dilations=tuple(model.dilations), out_indices=tuple(model.out_indices),
                  style=model.style, norm_cfg=dict(model.norm_cfg), norm_eval=False,
                  frozen_stages=model.frozen_stages, with_cp=model.with_cp)
    kw = model.block_kwargs
    note = ''
    if cls in ('ResNet', 'ResNetV1c', 'ResNetV1d', 'ResNeXt'):
        common.update(deep_stem=model.deep_stem, avg_down=model.avg_down)
    else:  # MMDetection's ResNeSt/Res2Net are always deep-stem, average-pool-shortcut networks
        if not (model.deep_stem and model.avg_down):
            return None, f'MMDetection {cls} always has deep_stem=True and avg_down=True'
    if cls == 'ResNeXt' or cls == 'ResNeSt':
        common.update(groups=kw.get('groups', 1), base_width=kw.get('base_width', 64))
    if cls == 'ResNeSt':
        if not kw.get('avd', True) or kw.get('avd_first', False):
            return None, 'MMDetection ResNeSt has no avd=False or avd_first=True'
        dilated = any(s == 1 for s in model.strides[1:])
        if dilated and kw.get('avd_in_dilated_stages', True):
            return None, ('official dilated ResNeSt (avd_in_dilated_stages=True) differs from '
                          'MMDetection ResNeSt')
        common.update(radix=kw.get('radix', 2), reduction_factor=kw.get('reduction_factor', 4),
                      avg_down_stride=True)
    if cls == 'Res2Net':
        common.update(scales=kw['scales'], base_width=kw['base_width'])
        if kw.get('pool_first_stage', True):
            note = ('ours is the official network: +1 stride-1 avg pool in layer1[0] that '
                    'MMDetection lacks')
    return dict(type=MMDET_TYPES[cls], **common), note


class OfficialStages(nn.Module):
    """The official network's stem and four stages (its classifier is not built into the work)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return tuple(outs)


def official_network(variant: Optional[str]) -> Optional[nn.Module]:
    """The official ``resnest`` package's network of a named variant (stages only), if any."""
    if variant is None:
        return None
    try:
        from resnest.torch import ablation, resnest
    except ImportError:
        return None
    for module in (resnest, ablation):
        if variant in module.__all__:
            return OfficialStages(getattr(module, variant)(pretrained=False))
    return None


def randomize_norms(model: nn.Module, seed: int = 0,
                    last_norm_names: Sequence[str] = ('bn3', 'norm3')) -> None:
    """Non-trivial BN affine parameters and statistics, so outputs depend on every parameter
    (the default init and zero-init residual make branches vanish) and a diff check means
    something. Norms named in ``last_norm_names`` (those closing a residual branch) get small
    scales, which keep deep networks' activations tame."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            scale = 0.2 if name.rsplit('.', 1)[-1] in last_norm_names else 1.0
            with torch.no_grad():
                m.weight.copy_(scale * (0.5 + 0.5 * torch.rand(c, generator=g)))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _call(model: nn.Module, x: torch.Tensor) -> Sequence[torch.Tensor]:
    return model(x)


def build_implementations(spec: NetworkSpec, peers: Sequence[str]) -> tuple[
        list[Implementation], list[dict]]:
    """Ours and the requested peers of one network, all with the same weights.

    Returns:
        The implementations (ours first) and, for each requested peer that does not exist, a dict
        with the network, the peer and the reason.
    """
    from .checkpoint import load_pretrained
    from .registry import MODELS
    from .models import backbones  # noqa: F401
    cfg = dict(spec.config, norm_eval=False)
    cfg.pop('init_cfg', None)
    ours = MODELS.build(cfg)
    impls = [Implementation(spec.label, 'ours', f'resnest_mm.{type(ours).__name__}', ours, _call)]
    skipped: list[dict] = []
    official = None
    if 'official' in peers:
        # The official network computes and trains like ours only without these.
        # From the config, not the parameters: frozen_stages also turns requires_grad off.
        frozen_norms = ours.norm_cfg.get('requires_grad', True) is False
        if ours.with_cp:
            reason = 'with_cp=True: the official network has no activation checkpointing'
        elif frozen_norms:
            reason = ('norm_cfg requires_grad=False: the official network trains its norms\' '
                      'parameters')
        else:
            official = official_network(spec.variant)
            reason = ('the official resnest package has no such network'
                      if _installed('resnest') else
                      'the official resnest package is not installed (pip install resnest==0.0.5)')
        if official is None:
            skipped.append(dict(network=spec.label, peer='official', reason=reason))
    if official is not None:
        randomize_norms(official)
        load_pretrained(ours, official.state_dict(), logger=lambda m: None)
    else:
        randomize_norms(ours)
    if 'mmdet' in peers:
        mm_cfg, note = mmdet_peer_config(ours)
        if not _installed('mmdet'):
            skipped.append(dict(network=spec.label, peer='mmdet', reason='MMDetection is not '
                                'installed (pip install mmdet==3.3.0)'))
        elif mm_cfg is None:
            skipped.append(dict(network=spec.label, peer='mmdet', reason=note))
        else:
            from mmdet.registry import MODELS as MMDET_MODELS
            import mmdet.models  # noqa: F401  registers the built-ins
            try:
                peer = MMDET_MODELS.build(mm_cfg)
                reason = _shape_differences(ours, peer)
                if reason:
                    # E.g. the built-ins' bottleneck width is `planes` whatever base_channels is
                    # (for groups=1); ours is planes * base_width / base_channels.
                    reason = f'it builds a different network for these arguments ({reason})'
            except (KeyError, ValueError, TypeError, AssertionError) as err:
                reason = f'it refuses these arguments: {err}'
            if reason:
                skipped.append(dict(network=spec.label, peer='mmdet',
                                    reason=f'MMDetection {mm_cfg["type"]}: {reason}'))
            else:
                # Same layout as ours ('mm'): a strict load is the whole mapping.
                peer.load_state_dict(ours.state_dict(), strict=True)
                impls.append(Implementation(spec.label, 'mmdet', f'mmdet.{mm_cfg["type"]}',
                                            peer, _call, note))
    if official is not None:
        impls.append(Implementation(spec.label, 'official', f'resnest.torch.{spec.variant}',
                                    official, _call))
    return impls, skipped


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _shape_differences(ours: nn.Module, peer: nn.Module) -> str:
    a, b = ours.state_dict(), peer.state_dict()
    if a.keys() != b.keys():
        extra = sorted(set(a) ^ set(b))
        return f'{len(extra)} keys differ, e.g. {extra[0]}'
    wrong = [k for k in a if a[k].shape != b[k].shape]
    if wrong:
        k = wrong[0]
        return (f'{len(wrong)} shapes differ, e.g. {k}: {tuple(a[k].shape)} vs '
                f'{tuple(b[k].shape)}')
    return ''


# ------------------------------------------------------------------------------------------------
# Measuring
def count_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds per image (mmengine's "flops") at ``size`` x ``size``, in eval mode."""
    from mmengine.analysis import get_model_complexity_info
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('ERROR')  # its per-operator "unsupported" warnings (pools, softmax...)
    was_training = model.training
    model.eval()
    try:
        info = get_model_complexity_info(model, input_shape=(3, size, size), show_table=False,
                                         show_arch=False)
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return int(info['flops'])


def _set_mode(model: nn.Module, mode: str) -> None:
    model.train(mode == 'train')  # MMDetection's train() returns None: never chain it


def _runner(impl: Implementation, mode: str, x: torch.Tensor, settings: BenchmarkSettings
            ) -> Callable[[], None]:
    device_type = 'cuda' if settings.device == 'cuda' else 'cpu'
    dtype = torch.float16 if device_type == 'cuda' else torch.bfloat16

    def autocast():
        return torch.autocast(device_type, dtype=dtype) if settings.amp else nullcontext()

    model = impl.model
    if mode == 'infer':
        def run() -> None:
            with torch.inference_mode(), autocast():
                impl.forward(model, x)
    else:
        def run() -> None:
            model.zero_grad(set_to_none=True)  # fresh gradients, like optimizer.zero_grad()
            with autocast():
                outs = impl.forward(model, x)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()
    return run


def _compiled_forward(model: nn.Module, backend: str
                      ) -> Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]]:
    compiled = torch.compile(model, backend=backend)
    return lambda _, x: compiled(x)


@contextmanager
def _compiling(settings: BenchmarkSettings) -> Iterator[None]:
    """Every implementation and mode compiles its own graph of a forward method that all models
    of a family share: room for all of them, and an error, not a silent fall-back to eager, if
    there is not."""
    if settings.compile is None:
        yield
        return
    from torch._dynamo import config as dynamo_config
    with dynamo_config.patch(recompile_limit=256, fail_on_recompile_limit_hit=True):
        yield


def _sync(settings: BenchmarkSettings) -> None:
    if settings.device == 'cuda':
        torch.cuda.synchronize()


def peak_memory(run: Callable[[], None], settings: BenchmarkSettings) -> Optional[int]:
    """Peak bytes allocated during ``run`` above what was allocated at its start."""
    if settings.device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a PyTorch without these records: report nothing, not a guess
        return None
    records = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines and its warning about
    blocks allocated before it started); the profiled call already ran cleanly while timed."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some test runners): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _output_diff(ref: Implementation, impl: Implementation, x: torch.Tensor) -> float:
    with torch.no_grad():
        _set_mode(ref.model, 'infer')
        _set_mode(impl.model, 'infer')
        a, b = ref.forward(ref.model, x), impl.forward(impl.model, x)
    return max(float((p.float() - q.float()).abs().max()) for p, q in zip(a, b))


#: Environment variables that change how the C allocator reuses freed memory. On CPU that moves
#: every implementation's time (fresh memory costs page faults), the built-ins' more than ours, so
#: a run records which were set.
ALLOCATOR_ENV = ('LD_PRELOAD', 'GLIBC_TUNABLES', 'MALLOC_ARENA_MAX', 'MALLOC_TRIM_THRESHOLD_',
                 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_CONF', 'TCMALLOC_RELEASE_RATE')


def environment(settings: BenchmarkSettings) -> dict:
    env = dict(torch=torch.__version__, python=platform.python_version(),
               machine=platform.machine(), processor=_cpu_name(),
               threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
               time=time.strftime('%Y-%m-%d %H:%M:%S'),
               allocator_env={k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ})
    if settings.device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
    else:
        # The vector instructions ATen and oneDNN use (AVX2, AVX512, ...): CPU speed-ups differ
        # between them (see docs/benchmark.md), so a run says which it had.
        env['cpu_capability'] = torch.backends.cpu.get_cpu_capability()
    if settings.compile == 'inductor':
        from torch._inductor import config as inductor_config
        # Freezing (TORCHINDUCTOR_FREEZING=1) folds norms and prepacks weights for inference.
        env['inductor_freezing'] = bool(inductor_config.freezing)
    from . import __version__
    # Which copy was measured: a checkout's path tells it from an installed release.
    env['resnest_mm'] = __version__
    env['resnest_mm_path'] = os.path.dirname(os.path.abspath(__file__))
    # Installed distributions' versions: the official resnest module has no __version__.
    for pkg in ('mmengine', 'mmcv', 'mmdet', 'resnest'):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env[pkg] = None
    return env


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def check_specs(specs: Sequence[NetworkSpec]) -> None:
    """At least one network, each once (implementations are matched to networks by label)."""
    if not specs:
        raise ValueError('specs is empty; give at least one network')
    labels = [s.label for s in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f'networks {twice} are given more than once; give each once')


def run_benchmark(specs: Sequence[NetworkSpec], settings: BenchmarkSettings,
                  progress: bool = True) -> BenchmarkResult:
    """Build every network's implementations and measure them in one interleaved run."""
    settings.check()
    check_specs(specs)
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run_benchmark(specs, settings, progress)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, whatever this run used


def _run_benchmark(specs: Sequence[NetworkSpec], settings: BenchmarkSettings,
                   progress: bool) -> BenchmarkResult:
    torch.manual_seed(0)
    device = torch.device(settings.device)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format

    impls: list[Implementation] = []
    skipped: list[dict] = []
    for spec in specs:
        built, missing = build_implementations(spec, settings.peers)
        impls += built
        skipped += missing
    measurements = [Measurement(i.network, i.source, i.label, i.note,
                                params=sum(p.numel() for p in i.model.parameters()),
                                depth=getattr(i.model, 'depth', None) if i.source == 'ours'
                                else None)
                    for i in impls]
    n = len(impls)
    reps = settings.warmup + settings.iters
    total = n * (int(settings.flops) + 1 + len(settings.modes) * (reps + int(settings.memory)))
    bar = ProgressBar(enabled=progress, total=total, name='benchmark')
    with bar.running(), _compiling(settings):
        for impl, meas in zip(impls, measurements):
            if settings.flops:
                bar.step(f'FLOPs {impl.network} {impl.source}', 0)
                meas.macs = count_macs(impl.model, settings.size)
                bar.step(f'FLOPs {impl.network} {impl.source}')
            impl.model.to(device=device, memory_format=fmt)
        x = torch.randn(settings.batch, 3, settings.size, settings.size,
                        generator=torch.Generator().manual_seed(0))
        x = x.to(device=device).contiguous(memory_format=fmt)
        # Same network, same weights: the outputs must agree (a check on the comparison itself).
        small = x[:1, :, :64, :64]
        ours_by_net = {i.network: i for i in impls if i.source == 'ours'}
        for impl, meas in zip(impls, measurements):
            meas.max_abs_diff_vs_ours = _output_diff(ours_by_net[impl.network], impl, small)
            bar.step(f'check {impl.network} {impl.source}')
        if settings.compile is not None:
            for impl in impls:
                impl.forward = _compiled_forward(impl.model, settings.compile)
        for mode in settings.modes:
            for impl in impls:
                _set_mode(impl.model, mode)
            runs = [_runner(i, mode, x, settings) for i in impls]
            for rep in range(reps):
                timed = rep >= settings.warmup
                what = 'timed' if timed else 'warm-up'
                # Every other round in reverse order: what ran just before a call changes its
                # page faults and caches, and no implementation should always come first.
                order = list(zip(impls, measurements, runs))
                for impl, meas, run in (order if rep % 2 == 0 else order[::-1]):
                    bar.step(f'{mode} {what} {rep + 1 - settings.warmup * timed} '
                             f'{impl.network} {impl.source}', 0)
                    _sync(settings)
                    start = time.perf_counter()
                    run()
                    _sync(settings)
                    elapsed = time.perf_counter() - start
                    if timed:
                        meas.times.setdefault(mode, []).append(elapsed)
                    bar.step(f'{mode} {what} {impl.network} {impl.source}')
            if settings.memory:
                for impl, meas, run in zip(impls, measurements, runs):
                    bar.step(f'memory {mode} {impl.network} {impl.source}', 0)
                    # No gradients left from the timed calls: on CUDA the measured call would
                    # free them and net them out of its peak, on CPU the profiler cannot see
                    # that free. Starting without them counts the new ones on both.
                    impl.model.zero_grad(set_to_none=True)
                    meas.peak_bytes[mode] = peak_memory(run, settings)
                    bar.step(f'memory {mode} {impl.network} {impl.source}')
    return BenchmarkResult(settings=settings, environment=environment(settings),
                           measurements=measurements, skipped_peers=skipped)


# ------------------------------------------------------------------------------------------------
# Ratios
def _base_depth_resnet(result: BenchmarkResult, network: str) -> Optional[str]:
    """The ResNet of the same depth in this run (the ``resnet<depth>`` variant), the reference
    of the FLOP-ratio check; None for a ResNet itself (of any style or config name)."""
    ours = result.get(network, 'ours')
    if ours is None or ours.depth is None or ours.label.split('.')[-1].startswith('ResNet'):
        return None
    candidate = f'resnet{ours.depth}'
    ref = result.get(candidate, 'ours')
    return candidate if ref is not None and ref.label == 'resnest_mm.ResNet' else None


def paired_quartiles(numerator: list[float], denominator: list[float]
                     ) -> Optional[tuple[float, float]]:
    """First and third quartiles of the per-round ratios ``numerator[i] / denominator[i]``.

    Rounds are interleaved, so the two calls of one round ran seconds apart: their ratio cancels
    the machine's slow drifts, and the spread of these ratios says how far one run's ratio of
    medians can be trusted (on a shared machine it often spans a tenth)."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not ratios:
        return None
    if len(ratios) == 1:
        return ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4, method='inclusive')
    return q[0], q[2]


def peer_ratios(result: BenchmarkResult) -> list[dict]:
    """Per network and peer: the peer's time over ours (>1: ours is faster) for each mode, and
    our peak memory over the peer's (<1: ours uses less), all from this run's medians; with the
    quartiles of the per-round time ratios (``{mode}_speedup_quartiles``)."""
    rows = []
    for net in result.networks:
        ours = result.get(net, 'ours')
        for source in SOURCES[1:]:
            peer = result.get(net, source)
            if peer is None:
                continue
            row: dict[str, Any] = dict(network=net, peer=source, peer_label=peer.label)
            for mode in result.settings.modes:
                row[f'{mode}_speedup'] = peer.median(mode) / ours.median(mode)
                row[f'{mode}_speedup_quartiles'] = paired_quartiles(peer.times[mode],
                                                                    ours.times[mode])
                po, pp = ours.peak_bytes.get(mode), peer.peak_bytes.get(mode)
                row[f'{mode}_memory_ratio'] = po / pp if po is not None and pp else None
            rows.append(row)
    return rows


def flop_ratios(result: BenchmarkResult) -> list[dict]:
    """For each non-ResNet network with a ResNet of the same depth in the run: our time ratio
    against the ResNet's (with the quartiles of the per-round ratios) and the FLOP ratio it
    should stay within."""
    rows = []
    for net in result.networks:
        base = _base_depth_resnet(result, net)
        if base is None:
            continue
        ours, ref = result.get(net, 'ours'), result.get(base, 'ours')
        row: dict[str, Any] = dict(network=net, reference=base)
        row['flop_ratio'] = ours.macs / ref.macs if ours.macs and ref.macs else None
        for mode in result.settings.modes:
            ratio = ours.median(mode) / ref.median(mode)
            row[f'{mode}_time_ratio'] = ratio
            row[f'{mode}_time_ratio_quartiles'] = paired_quartiles(ours.times[mode],
                                                                   ref.times[mode])
            row[f'{mode}_within_flop_ratio'] = (None if row['flop_ratio'] is None
                                                else ratio <= row['flop_ratio'])
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# Output
def _f(value: Optional[float], digits: int = 2, suffix: str = '') -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{value:.{digits}f}{suffix}'


def _with_quartiles(value: Optional[float], quartiles: Optional[tuple[float, float]],
                    suffix: str = '') -> str:
    if value is None or quartiles is None:
        return _f(value, 2, suffix)
    return f'{value:.2f}{suffix} ({quartiles[0]:.2f}-{quartiles[1]:.2f})'


def _mb(value: Optional[int]) -> str:
    return 'n/a' if value is None else f'{value / 2 ** 20:.1f}'


def measurement_table(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    modes = result.settings.modes
    header = ['network', 'implementation', 'params (M)', 'GFLOPs (MACs)']
    for mode in modes:
        header += [f'{mode} ms (median)', f'{mode} ms (IQR)', f'{mode} img/s']
    header += [f'{mode} peak MB' for mode in modes]
    header.append('max |Δ| vs ours')
    rows = []
    batch = result.settings.batch
    for m in result.measurements:
        row = [m.network, m.label, f'{m.params / 1e6:.2f}',
               'n/a' if m.macs is None else f'{m.macs / 1e9:.2f}']
        for mode in modes:
            med = m.median(mode)
            row += [_f(med * 1e3, 1), _f(m.iqr(mode) * 1e3, 1), _f(batch / med, 1)]
        row += [_mb(m.peak_bytes.get(mode)) for mode in modes]
        row.append(f'{m.max_abs_diff_vs_ours:.1e}' if m.max_abs_diff_vs_ours is not None
                   else 'n/a')
        rows.append(row)
    return header, rows


def ratio_table(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    modes = result.settings.modes
    header = ['network', 'peer'] + [f'{mode} speed-up (peer time / ours)' for mode in modes] \
        + [f'{mode} peak memory (ours / peer)' for mode in modes]
    rows = []
    for r in peer_ratios(result):
        rows.append([r['network'], r['peer_label']]
                    + [_with_quartiles(r[f'{m}_speedup'], r[f'{m}_speedup_quartiles'], 'x')
                       for m in modes]
                    + [_f(r[f'{m}_memory_ratio'], 2) for m in modes])
    return header, rows


def flop_table(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    modes = result.settings.modes
    header = ['network', 'vs', 'FLOP ratio'] + [f'{mode} time ratio' for mode in modes] \
        + [f'{mode} within FLOP ratio' for mode in modes]
    rows = []
    for r in flop_ratios(result):
        rows.append([r['network'], r['reference'], _f(r['flop_ratio'], 2)]
                    + [_with_quartiles(r[f'{m}_time_ratio'], r[f'{m}_time_ratio_quartiles'])
                       for m in modes]
                    + ['n/a' if r[f'{m}_within_flop_ratio'] is None
                       else ('yes' if r[f'{m}_within_flop_ratio'] else 'no') for m in modes])
    return header, rows


def _compile_label(settings: BenchmarkSettings, env: dict) -> str:
    if settings.compile is None:
        return ''
    return (f', torch.compile ({settings.compile}'
            f'{", freezing" if env.get("inductor_freezing") else ""})')


def render_markdown(result: BenchmarkResult) -> str:
    s = result.settings
    env = result.environment
    where = env.get('gpu') or ', '.join(
        v for v in (env.get('processor'), env.get('cpu_capability')) if v)
    text = [f'Backbone benchmark: batch {s.batch}, {s.size}x{s.size}, '
            f'{"AMP" if s.amp else "fp32"}{", channels-last" if s.channels_last else ""}'
            f'{_compile_label(s, env)}, '
            f'{s.device} ({where}, {env["threads"]} threads), {s.warmup} warm-up + {s.iters} '
            f'timed repetitions, interleaved round-robin; torch {env["torch"]}'
            + ''.join(f'; {k}={v}' for k, v in env.get('allocator_env', {}).items()) + '.',
            '', markdown_table(*measurement_table(result))]
    header, rows = ratio_table(result)
    if rows:
        text += ['', 'Peers against ours, from the same run (ratio of medians; in brackets the '
                 'quartiles of the per-round ratios, the run\'s spread):', '',
                 markdown_table(header, rows)]
    header, rows = flop_table(result)
    if rows:
        text += ['', 'Our time over our ResNet of the same depth, against the FLOP ratio '
                 '(per-round quartiles in brackets):', '', markdown_table(header, rows)]
    notes = [f'- {m.network} {m.label}: {m.note}' for m in result.measurements if m.note]
    notes += [f'- {d["network"]}: no {d["peer"]} peer ({d["reason"]})'
              for d in result.skipped_peers]
    if notes:
        text += ['', 'Notes:'] + notes
    text += ['', 'GFLOPs are multiply-adds per image as mmengine counts them. Peak memory is '
             'the highest tensor memory allocated during one call above that at its start '
             + ('(torch.cuda.max_memory_allocated).' if s.device == 'cuda'
                else '(from the PyTorch profiler\'s CPU allocation records); training steps '
                     'include the gradients.')]
    return '\n'.join(text)


def to_json(result: BenchmarkResult) -> dict:
    out = dict(settings=asdict(result.settings), environment=result.environment,
               measurements=[], peer_ratios=peer_ratios(result), flop_ratios=flop_ratios(result),
               skipped_peers=result.skipped_peers)
    for m in result.measurements:
        d = asdict(m)
        d['median_s'] = {mode: m.median(mode) for mode in m.times}
        d['iqr_s'] = {mode: m.iqr(mode) for mode in m.times}
        d['throughput'] = {mode: result.settings.batch / m.median(mode) for mode in m.times}
        out['measurements'].append(d)
    return out


def save_json(result: BenchmarkResult, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(to_json(result), f, indent=2)


def chart_formats() -> list[str]:
    """The file extensions :func:`save_chart` can write (matplotlib's savefig formats)."""
    from matplotlib.figure import Figure
    return sorted(Figure().canvas.get_supported_filetypes())


def save_chart(result: BenchmarkResult, path: str) -> None:
    """Throughput against parameters, one panel per mode, one marker per implementation."""
    # A Figure of its own, not pyplot's: the caller's matplotlib backend stays as it is.
    from matplotlib.figure import Figure
    modes = result.settings.modes
    fig = Figure(figsize=(6 * len(modes), 4.5))
    axes = fig.subplots(1, len(modes), squeeze=False)
    markers = dict(ours='o', mmdet='s', official='^')
    for ax, mode in zip(axes[0], modes):
        for source in SOURCES:
            pts = [m for m in result.measurements if m.source == source and mode in m.times]
            if not pts:
                continue
            xs = [m.params / 1e6 for m in pts]
            ys = [result.settings.batch / m.median(mode) for m in pts]
            ax.scatter(xs, ys, marker=markers[source], s=60, label=source, alpha=0.8)
            if source == 'ours':
                for m, x, y in zip(pts, xs, ys):
                    ax.annotate(m.network, (x, y), textcoords='offset points', xytext=(5, 5),
                                fontsize=8)
        ax.set_xlabel('parameters (M)')
        ax.set_ylabel('images / s')
        ax.set_title(f'{mode}: batch {result.settings.batch}, {result.settings.size}px, '
                     f'{result.settings.device}')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
