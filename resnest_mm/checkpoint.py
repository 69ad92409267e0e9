"""Checkpoint layouts, strict loading and safe ``torch.load``.

Every ImageNet or downstream checkpoint of these networks differs from the project's own layout
(which is MMDetection's and MMSegmentation's) in a few predictable ways. Each way is a row of
:data:`LAYOUTS`; :func:`convert_state_dict` detects the layout, applies its renames, drops the
classifier, and checks the result against the model: any key left over, any parameter not covered
and any shape that does not fit is an error that names the keys. Nothing is ever silently left
randomly initialised.

Supported layouts:

* ``mm``: MMDetection/MMSegmentation backbones with a deep stem (``stem.0`` ... ``stem.7``), bare
  or inside a detector/segmentor ``state_dict`` (``backbone.`` prefix); the project's own layout.
* ``deep-stem``: the official ResNeSt releases (PyPI ``resnest`` and its .pth files), timm's
  ``resnest*``, ``res2net50d``/``res2net101d`` and the official Res2Net-v1b release
  (``conv1.0`` ... ``conv1.6`` and ``bn1`` for the stem).
* ``plain-stem``: torchvision and timm ResNet/ResNeXt, the original (7x7 stem) Res2Net release
  and MMDetection's plain-stem ResNet/ResNeXt (``conv1``, ``bn1``).
"""
import os
import pickle
import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import torch
import torch.nn as nn

StateDict = 'OrderedDict[str, torch.Tensor]'


# ------------------------------------------------------------------------------------------------
# Safe loading
def _history_buffer_getattr(obj: Any, name: str) -> Any:
    from mmengine.logging.history_buffer import HistoryBuffer
    # Only public methods HistoryBuffer itself defines (its statistics: min, max, mean...).
    if obj is HistoryBuffer and not name.startswith('_') and callable(vars(obj).get(name)):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


def mmengine_safe_globals() -> list:
    """Non-tensor objects that mmengine/MMDetection checkpoints hold in their ``meta`` and
    ``message_hub`` entries. Only these are allowed besides what ``weights_only`` allows."""
    import numpy as np
    allowed: list = [np.dtype, np.ndarray]
    for path in ('numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
                 'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar'):
        module, _, name = path.rpartition('.')
        try:
            allowed.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    allowed += [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32',
                                              'int8', 'uint8', 'bool')]
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        allowed.append(HistoryBuffer)
        # A pickled HistoryBuffer refers to its statistics methods through builtins.getattr.
        # That name is mapped to a getattr that only reaches those methods, nothing else.
        allowed.append((_history_buffer_getattr, 'builtins.getattr'))
    except ImportError:
        pass
    try:
        from mmengine.config import ConfigDict
        allowed.append(ConfigDict)
    except ImportError:
        pass
    return allowed


@contextmanager
def _mmengine_types_allowed() -> Iterator[None]:
    """Allow :func:`mmengine_safe_globals` for ``torch.load(weights_only=True)`` inside the block.

    Only those not allowed already are added and then removed: torch's ``safe_globals`` context
    removes its whole list on exit, which would undo a process-wide ``add_safe_globals`` (the
    tools make one so that mmengine's own loading can read its checkpoints).
    """
    allowed = torch.serialization.get_safe_globals()
    extra = [g for g in mmengine_safe_globals() if g not in allowed]
    with torch.serialization.safe_globals(extra):
        yield


def is_remote(path: str) -> bool:
    """Whether mmengine reads ``path`` through a scheme (``https://``, ``s3://``,
    ``open-mmlab://`` ...) rather than as a local file."""
    return '://' in path


def _load_url_weights_only(url: str, *args: Any, **kwargs: Any) -> Any:
    """``torch.hub.load_state_dict_from_url`` with ``weights_only=True`` whatever is asked."""
    kwargs['weights_only'] = True
    return torch.hub.load_state_dict_from_url(url, *args, **kwargs)


def make_url_loading_safe() -> None:
    """Make mmengine read URL checkpoints (``http(s)://``, and ``open-mmlab://``,
    ``torchvision://``, ``mmcls://``, which resolve to one) with ``weights_only=True``.

    mmengine downloads them with ``torch.hub.load_state_dict_from_url``, whose ``weights_only``
    defaults to False: a URL checkpoint was unpickled whole, where the same file on disk is
    refused. The ``load_url`` that mmengine's HTTP loader calls is replaced, once per process, by
    one that loads weights only (with :func:`mmengine_safe_globals` allowed where the caller
    allows them, as :func:`_mmengine_types_allowed` and the tools do).
    """
    from mmengine.runner import checkpoint as mm_checkpoint
    mm_checkpoint.load_url = _load_url_weights_only


def safe_torch_load(path: str, map_location: Any = 'cpu') -> Any:
    """``torch.load`` with ``weights_only=True`` plus the few mmengine/numpy types its checkpoints
    contain (torch >= 2.6 refuses them by default). Arbitrary pickled objects stay refused.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        pickle.UnpicklingError: the file holds objects outside that allow-list.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    with _mmengine_types_allowed():
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(
                f'{path}: the checkpoint holds objects that are not safe to unpickle, so it was '
                f'not loaded. If you trust the file, convert it once: '
                f'resnest_mm.checkpoint.convert_file(src, dst, variant, trust=True), or '
                f'tools/convert_weights.py --trust in a clone of the repository. '
                f'Details: {err}') from err


# ------------------------------------------------------------------------------------------------
# Layouts
@dataclass(frozen=True)
class Layout:
    """One checkpoint layout: how to recognise it and how its keys map onto ours."""
    name: str
    description: str
    marker: str  # a key only this layout has
    renames: tuple[tuple[str, str], ...] = ()  # regex -> replacement, applied in order
    inverse: tuple[tuple[str, str], ...] = ()  # our keys back to this layout's


LAYOUTS: tuple[Layout, ...] = (
    Layout('mm', 'MMDetection/MMSegmentation/resnest_mm (deep stem)', 'stem.0.weight'),
    Layout('deep-stem', 'official ResNeSt, Res2Net-v1b release, timm resnest*/res2net*d',
           'conv1.0.weight',
           renames=((r'^conv1\.(\d+)\.', r'stem.\1.'), (r'^bn1\.', 'stem.7.')),
           inverse=((r'^stem\.7\.', 'bn1.'), (r'^stem\.(\d+)\.', r'conv1.\1.'))),
    Layout('plain-stem', 'torchvision/timm ResNet and ResNeXt, original Res2Net, MM plain stem',
           'conv1.weight'),
)

#: Classifier heads of ImageNet checkpoints: dropped, never loaded.
CLASSIFIER_KEYS = re.compile(r'^(fc|head\.fc|classifier|last_linear)\.')
#: Wrappers around the state dict in saved files.
CONTAINER_KEYS = ('state_dict', 'model', 'module', 'state_dict_ema')


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model; the message lists every key that did not match."""


@dataclass
class ConversionReport:
    layout: str
    prefix: str
    dropped_classifier: list[str] = field(default_factory=list)
    dropped_other_modules: int = 0
    filled_counters: list[str] = field(default_factory=list)
    #: Tensors of modules the backbone adds to the ImageNet network (deformable convs' offset
    #: branches, plugins) that the checkpoint has none of: they keep their own initialisation.
    kept_initialised: list[str] = field(default_factory=list)
    #: Keys of stages the model does not build (``num_stages`` < the checkpoint's).
    dropped_unbuilt_stages: list[str] = field(default_factory=list)
    #: Floating dtypes of the checkpoint other than the model's, cast on loading.
    cast_from: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f'layout {self.layout!r}'
        if self.prefix:
            text += f', taken from the {self.prefix!r} entries'
        if self.dropped_other_modules:
            text += f' ({self.dropped_other_modules} keys of other modules ignored)'
        if self.dropped_classifier:
            text += f', classifier dropped ({", ".join(self.dropped_classifier)})'
        if self.filled_counters:
            text += f', {len(self.filled_counters)} BN num_batches_tracked counters absent'
        if self.dropped_unbuilt_stages:
            stages = sorted({k.split('.')[0] for k in self.dropped_unbuilt_stages})
            text += (f', {len(self.dropped_unbuilt_stages)} keys of {", ".join(stages)} '
                     'ignored (num_stages does not build them)')
        if self.kept_initialised:
            modules = sorted({k.rsplit('.', 1)[0] for k in self.kept_initialised})
            text += (f', {len(self.kept_initialised)} tensors of {len(modules)} modules the '
                     'checkpoint lacks (deformable offsets, plugins) keep their initialisation: '
                     + ', '.join(modules[:4]) + (', ...' if len(modules) > 4 else ''))
        if self.cast_from:
            text += f', cast from {"/".join(self.cast_from)}'
        return text


def unwrap_state_dict(obj: Any) -> 'OrderedDict[str, torch.Tensor]':
    """The tensor dict inside a loaded checkpoint (``state_dict``/``model`` wrappers, DDP's
    ``module.`` prefix removed)."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        for key in CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            raise CheckpointMismatchError(
                f'no state dict found in the checkpoint; top-level keys: {sorted(obj)[:20]}')
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f'a checkpoint must hold a dict, got {type(obj).__name__}')
    out = OrderedDict()
    for k, v in obj.items():
        out[k[len('module.'):] if k.startswith('module.') else k] = v
    return out


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def detect_layout(keys) -> Layout:
    keys = set(keys)
    for layout in LAYOUTS:
        if layout.marker in keys:
            return layout
    sample = sorted(keys)[:8]
    raise CheckpointMismatchError(
        'unrecognised checkpoint layout: no stem weights (stem.0.weight, conv1.0.weight or '
        f'conv1.weight) found. First keys: {sample}. If the backbone sits under a prefix, pass '
        "init_cfg=dict(type='Pretrained', checkpoint=..., prefix='...').")


def _select_prefix(state: 'OrderedDict[str, torch.Tensor]', prefix: Optional[str]
                   ) -> tuple['OrderedDict[str, torch.Tensor]', str, int]:
    if prefix is None:
        if any(k.startswith('backbone.') for k in state):
            prefix = 'backbone'  # a detector's or segmentor's state dict
        else:
            return state, '', 0
    lead = prefix.rstrip('.') + '.'
    picked = OrderedDict((k[len(lead):], v) for k, v in state.items() if k.startswith(lead))
    if not picked:
        raise CheckpointMismatchError(f'no key of the checkpoint starts with {lead!r}')
    return picked, prefix.rstrip('.'), len(state) - len(picked)


def convert_state_dict(state: dict, model: nn.Module, prefix: Optional[str] = None
                       ) -> tuple['OrderedDict[str, torch.Tensor]', ConversionReport]:
    """Map a checkpoint's tensors onto ``model``'s keys, strictly.

    Args:
        state: A loaded checkpoint (any supported layout, wrapped or not).
        model: The backbone to load into.
        prefix: Take only the keys under this prefix (default: ``backbone`` when present).

    Returns:
        The state dict in the model's layout, and what was done.

    Raises:
        CheckpointMismatchError: Keys left over, parameters or buffers not covered, or shapes
            that differ; the message lists all of them.
    """
    state, used_prefix, others = _select_prefix(unwrap_state_dict(state), prefix)
    layout = detect_layout(state)
    report = ConversionReport(layout=layout.name, prefix=used_prefix,
                              dropped_other_modules=others)
    converted: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for key, value in state.items():
        if CLASSIFIER_KEYS.match(key):
            report.dropped_classifier.append(key)
            continue
        converted[_renamed(key, layout.renames)] = value

    target = model.state_dict()
    unbuilt = _unbuilt_stage_prefixes(model)
    report.dropped_unbuilt_stages = [k for k in converted if k.startswith(unbuilt)]
    unexpected = [k for k in converted if k not in target and not k.startswith(unbuilt)]
    missing = [k for k in target if k not in converted]
    # Old checkpoints carry no BN step counters; those buffers do not affect any output.
    report.filled_counters = [k for k in missing if k.endswith('num_batches_tracked')]
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    # An ImageNet checkpoint cannot hold what dcn/plugins add; all of it absent is that case,
    # part of it absent is a checkpoint that does not fit.
    added = _added_module_prefixes(model)
    if added and not any(k.startswith(added) for k in converted):
        report.kept_initialised = [k for k in missing if k.startswith(added)]
        missing = [k for k in missing if not k.startswith(added)]
    for k in report.filled_counters + report.kept_initialised:
        converted[k] = target[k]
    wrong_shape = [f'{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(target[k].shape)}'
                   for k in converted if k in target and converted[k].shape != target[k].shape]
    # load_state_dict would cast an integer tensor into a float parameter without a word.
    wrong_kind = [f'{k}: checkpoint {converted[k].dtype} vs model {target[k].dtype}'
                  for k in converted if k in target
                  and converted[k].is_floating_point() != target[k].is_floating_point()
                  and not k.endswith('num_batches_tracked')]
    if unexpected or missing or wrong_shape or wrong_kind:
        raise CheckpointMismatchError(_mismatch_message(model, layout, unexpected, missing,
                                                        wrong_shape, wrong_kind))
    report.cast_from = sorted({str(converted[k].dtype).replace('torch.', '') for k in target
                               if target[k].is_floating_point()
                               and converted[k].dtype != target[k].dtype})
    return OrderedDict((k, converted[k]) for k in target), report


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for pattern, repl in renames:
        key = re.sub(pattern, repl, key)
    return key


def _added_module_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the modules a backbone adds to its ImageNet network: the offset branch of
    every deformable conv and every plugin."""
    prefixes = []
    for name, module in model.named_modules():
        if name.rsplit('.', 1)[-1] == 'conv_offset':
            prefixes.append(name + '.')
        for names in getattr(module, 'plugin_names', {}).values():
            prefixes += [f'{name}.{n}.' for n in names]
    return tuple(prefixes)


def _unbuilt_stage_prefixes(model: nn.Module) -> tuple[str, ...]:
    """``layerN.`` for the stages a backbone with ``num_stages`` < 4 leaves out (MMDetection's C4
    detectors start from ImageNet weights of the whole network)."""
    built = getattr(model, 'num_stages', 4)
    return tuple(f'layer{i}.' for i in range(built + 1, 5))


def _mismatch_message(model: nn.Module, layout: Layout, unexpected: list, missing: list,
                      wrong_shape: list, wrong_kind: list) -> str:
    def block(title: str, items: list) -> str:
        if not items:
            return ''
        shown = '\n    '.join(items[:40])
        more = f'\n    ... and {len(items) - 40} more' if len(items) > 40 else ''
        return f'\n  {title} ({len(items)}):\n    {shown}{more}'

    hints = []
    model_deep = any(k.startswith('stem.') for k in model.state_dict())
    if layout.name in ('mm', 'deep-stem') and not model_deep:
        hints.append('the checkpoint has a deep (3x3 x3) stem but the model a 7x7 one: set '
                     'deep_stem=True')
    if layout.name == 'plain-stem' and model_deep:
        hints.append('the checkpoint has a 7x7 stem but the model a deep one: set '
                     'deep_stem=False (and avg_down=False for the original Res2Net/ResNet)')
    if any(s.startswith('stem.') for s in wrong_shape):
        hints.append('stem widths differ: ResNeSt-50 and smaller use stem_channels=64, '
                     'ResNeSt-101 and deeper 128')
    if any('downsample.' in k for k in unexpected + missing):
        hints.append('shortcut layout differs: check avg_down')
    if wrong_kind:
        hints.append('integer tensors where the model has floating ones (or the reverse): is '
                     'this a checkpoint of weights?')
    text = (f'checkpoint (layout {layout.name!r}: {layout.description}) does not fit '
            f'{type(model).__name__}:'
            + block('keys in the checkpoint that the model does not have', unexpected)
            + block('model parameters/buffers the checkpoint does not provide', missing)
            + block('shape mismatches', wrong_shape)
            + block('integer vs floating tensors', wrong_kind))
    if hints:
        text += '\n  hints: ' + '; '.join(hints)
    return text


def load_pretrained(model: nn.Module, checkpoint: Union[str, 'os.PathLike', dict],
                    prefix: Optional[str] = None,
                    logger: Optional[Callable[[str], None]] = None,
                    map_location: Any = 'cpu') -> ConversionReport:
    """Load a checkpoint file (or an already loaded dict) of any supported layout into ``model``
    strictly. See :func:`convert_state_dict` for the rules; ``map_location`` is ``torch.load``'s,
    for a file or URL (the tensors are then copied into the model's own)."""
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    if not isinstance(checkpoint, (str, dict)):
        raise TypeError(f'checkpoint={checkpoint!r} is not valid; expected a path, a URL or a '
                        'loaded checkpoint dict')
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix={prefix!r} is not valid; expected None or a key prefix such as "
                        "'backbone.'")
    if isinstance(checkpoint, str) and is_remote(checkpoint):
        # URLs and open-mmlab:// style names go through mmengine's loaders (they download).
        from mmengine.runner import CheckpointLoader
        make_url_loading_safe()
        with _mmengine_types_allowed():
            state = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    elif isinstance(checkpoint, str):
        state = safe_torch_load(checkpoint, map_location=map_location)
    else:
        state = checkpoint
    converted, report = convert_state_dict(state, model, prefix=prefix)
    model.load_state_dict(converted, strict=True)
    source = checkpoint if isinstance(checkpoint, str) else 'state dict'
    message = f'{type(model).__name__}: loaded {source} ({report.summary()})'
    if logger is None:
        from mmengine.logging import print_log
        print_log(message, logger='current')
    else:
        logger(message)
    return report


# ------------------------------------------------------------------------------------------------
# Offline conversion
@dataclass
class ConversionResult:
    report: ConversionReport
    num_tensors: int
    reference: Optional[str] = None
    max_abs_diff: Optional[float] = None


def _official_keys(state: 'OrderedDict[str, torch.Tensor]') -> 'OrderedDict[str, torch.Tensor]':
    """resnest_mm's (MM) keys renamed to the official deep-stem layout."""
    inverse = next(layout.inverse for layout in LAYOUTS if layout.name == 'deep-stem')
    return OrderedDict((_renamed(key, inverse), value) for key, value in state.items())


def _official_reference(variant: str):
    """The official ``resnest`` package's network for a variant name, if it has one."""
    try:
        import resnest.torch as official
        from resnest.torch import ablation
    except ImportError:
        return None
    for module in (official, ablation):
        fn = getattr(module, variant, None)
        if fn is not None:
            return fn(pretrained=False)
    return None


def convert_file(src: str, dst: str, variant: str, overrides: Optional[dict] = None,
                 prefix: Optional[str] = None, verify: bool = False, trust: bool = False,
                 log: Callable[[str], None] = print) -> ConversionResult:
    """Convert a checkpoint file to resnest_mm's layout and save it as ``{'state_dict': ...}``.

    Args:
        src: Source checkpoint (any supported layout).
        dst: Output path.
        variant: Named variant it belongs to (see ``resnest_mm.models.VARIANTS``).
        overrides: Extra backbone arguments (e.g. ``pool_first_stage=False``).
        prefix: Take the keys under this prefix only.
        verify: Reload the saved file into a fresh model strictly, check every tensor, and when
            the official ``resnest`` package has the variant, compare all stage outputs.
        trust: Allow arbitrary pickled objects in ``src`` (only for files you trust).
        log: Where the progress and verification lines go.
    """
    from .models import build_backbone
    from .report import check_output_file
    overrides = dict(overrides or {})
    ignored = sorted(set(overrides) & {'init_cfg', 'pretrained'})
    if ignored:
        raise ValueError(f'overrides {ignored} would not be used: the conversion reads only '
                         f'src={src!r}')
    check_output_file(dst, name='dst')
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f'dst={dst!r} is the source file itself: the conversion would replace '
                         'the original (and drop what it does not keep, e.g. the classifier); '
                         'give another path')
    try:
        model = build_backbone(variant, **overrides)
    except TypeError as err:  # an argument the backbone does not take
        raise ValueError(f'overrides={overrides!r}: {err}') from err
    if trust:
        raw = torch.load(src, map_location='cpu', weights_only=False)
    else:
        raw = safe_torch_load(src)
    converted, report = convert_state_dict(raw, model, prefix=prefix)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({'state_dict': converted,
                'meta': {'resnest_mm_variant': variant, 'overrides': overrides,
                         'source': os.path.basename(src), 'layout': report.layout}}, dst)
    log(f'{src} -> {dst}: {len(converted)} tensors ({report.summary()})')
    result = ConversionResult(report=report, num_tensors=len(converted))
    if not verify:
        return result
    fresh = build_backbone(variant, **overrides)
    load_pretrained(fresh, dst, logger=lambda m: None)
    for key, value in fresh.state_dict().items():
        if not torch.equal(value, converted[key]):
            raise CheckpointMismatchError(f'verify: {key} differs after reloading {dst}')
    log(f'verify: reloaded {dst} strictly, all {len(converted)} tensors identical')
    reference = _official_reference(variant) if not overrides else None
    if reference is not None:
        # From the converted tensors, not the source: the source may be in another layout.
        missing, unexpected = reference.load_state_dict(_official_keys(converted), strict=False)
        if unexpected or any(not k.startswith('fc.') for k in missing):
            raise CheckpointMismatchError(
                f'verify: the official resnest.torch.{variant} does not take the converted '
                f'tensors (missing {missing[:5]}, unexpected {unexpected[:5]})')
        reference.eval()
        fresh.eval()
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
            ref_outs = []
            for layer in (reference.layer1, reference.layer2, reference.layer3,
                          reference.layer4):
                y = layer(y)
                ref_outs.append(y)
            ours = fresh(x)
        diff = max(float((a - b).abs().max()) for a, b in zip(ref_outs, ours))
        result.reference, result.max_abs_diff = f'resnest.torch.{variant}', diff
        log(f'verify: stage outputs vs the official resnest.torch.{variant}: '
            f'max abs diff {diff:.3g}')
        if diff > 1e-4:
            raise CheckpointMismatchError(f'verify: outputs differ from the official network '
                                          f'by {diff:.3g}')
    return result
