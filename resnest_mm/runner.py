"""Training and testing with mmengine's ``Runner`` for MMDetection and MMSegmentation configs.

``tools/train.py`` and ``tools/test.py`` are thin wrappers over this module. The toolbox is taken
from the config's ``default_scope`` (``'mmdet'`` or ``'mmseg'``); everything else is shared:

* :func:`load_config`: the config with ``--cfg-options``, work dir, resume, the checkpoint to
  test (``load_from``), ``--auto-scale-lr``, AMP and launcher;
* :func:`check_launch_environment`: a process its launcher did not start stops before any work;
* :func:`add_test_outputs` and :func:`use_tta`: ``tools/test.py``'s ``--out``, ``--show``,
  ``--show-dir``, ``--wait-time`` and ``--tta``, each with its toolbox's meaning;
* :func:`adapt_sync_bn`: SyncBN layers become BN, with one warning line, where there is no
  multi-GPU process group for them to synchronise over (one process, or DDP on CPUs);
* :func:`enable_safe_checkpoint_loading`: torch >= 2.6 loads with ``weights_only=True``, which
  refuses the numpy and mmengine objects of mmengine's checkpoints; the few types those hold are
  allow-listed (:func:`resnest_mm.checkpoint.mmengine_safe_globals`), safe loading stays on,
  for URL checkpoints too;
* :func:`prepare_data`: the synthetic demo data sets are written when a demo config needs them,
  and a missing data set is one error naming the paths and how to get the data;
* :func:`train` / :func:`test`: run, and return the final metrics for :func:`format_metrics`.
"""
import numbers
import os
import os.path as osp
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.config import DictAction as _MMDictAction
from mmengine.hooks import Hook
from mmengine.logging import print_log

from .checkpoint import (CheckpointMismatchError, is_remote, make_url_loading_safe,
                         mmengine_safe_globals, safe_torch_load, unwrap_state_dict)
from .det_checks import AnnotationError
from .seg_checks import LabelMapError

#: Toolboxes the tools serve: ``default_scope`` -> module with ``register_all_modules``.
TOOLBOXES = {'mmdet': 'mmdet.utils', 'mmseg': 'mmseg.utils'}
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN', 'TorchSyncBN')
#: Top-level config keys that mmengine's Runner (or these tools) read; any other top-level
#: name is a variable of the config file, already substituted where the file uses it.
RUNNER_KEYS = frozenset((
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator',
    'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from', 'resume',
    'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer', 'default_scope',
    'randomness', 'experiment_name', 'runner_type', 'model_wrapper_cfg',
    'find_unused_parameters', 'compile', 'activation_checkpointing', 'efficient_conv_bn_eval',
    'custom_imports', 'tta_model', 'tta_pipeline', 'sync_bn', 'load_from_strict'))


class DictAction(_MMDictAction):
    """mmengine's ``--cfg-options`` parser (``KEY=VALUE``; numbers, strings, ``[lists]``,
    ``(tuples)``), with a usage error naming the item it cannot read instead of a traceback: an
    item without ``=`` raised a bare ``ValueError``, a ``dict(a=1, b=2)`` value a
    ``RecursionError``. (A one-key ``dict(a=1)`` is read as that string, as by mmengine, and
    refused later by what receives it.)"""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values or ():
            if '=' not in item:
                parser.error(f'{option_string} {item!r}: expected KEY=VALUE')
            try:
                self._parse_iterable(item.split('=', 1)[1])
            except (RecursionError, AssertionError, ValueError, IndexError) as err:
                parser.error(f'{option_string} {item!r}: the value cannot be read '
                             f'({type(err).__name__}); values are numbers, strings, [lists] or '
                             '(tuples), not dicts: give a dict key by key '
                             '(KEY.type=Pretrained KEY.checkpoint=PATH)')
        super().__call__(parser, namespace, values, option_string)


class RunSetupError(ValueError):
    """The run cannot be set up from the config: a component refuses its arguments."""


class LaunchError(RunSetupError):
    """The process was not started the way its launcher needs (see
    :func:`check_launch_environment`)."""


#: What each multi-process launcher puts in the environment and mmengine reads while the runner
#: is built; the first is the process's rank, there before mmengine sets ``RANK``.
LAUNCH_VARIABLES = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK',
            'MASTER_ADDR'),
}
#: What sets those variables.
LAUNCHED_BY = {
    'pytorch': "torchrun (the repository's tools/dist_train.sh and dist_test.sh run it)",
    'slurm': "srun (the repository's tools/slurm_train.sh and slurm_test.sh run it)",
    'mpi': "Open MPI's mpirun (MASTER_ADDR: set it yourself, as for mmengine)",
}


#: Errors in the user's config, data or checkpoints found after the config was read, while the
#: runner is built or reads its data (a data set's missing files included); the tools report
#: them as one message (:func:`run_error_message`), exit status 2.
RUN_ERRORS = (AnnotationError, LabelMapError, CheckpointMismatchError, RunSetupError,
              FileNotFoundError)


# ------------------------------------------------------------------------------------------------
# Config
def toolbox_of(cfg: Mapping) -> str:
    """``'mmdet'`` or ``'mmseg'``: the config's ``default_scope``.

    Raises:
        ValueError: The scope is missing or another toolbox's.
    """
    scope = cfg.get('default_scope')
    if scope not in TOOLBOXES:
        raise ValueError(f'default_scope={scope!r} in the config is not supported; the tools run '
                         f'configs whose default_scope is one of {sorted(TOOLBOXES)} (inherit an '
                         "mmdet::/mmseg:: config, or the resnest_mm repository's "
                         'configs/_base_/default_runtime.py)')
    return scope


def register_toolbox(scope: str) -> None:
    """Register the modules of the toolbox of ``scope`` (``mmdet`` or ``mmseg``)."""
    import importlib
    if scope not in TOOLBOXES:
        raise ValueError(f'scope={scope!r} is not one of {sorted(TOOLBOXES)}')
    importlib.import_module(TOOLBOXES[scope]).register_all_modules(init_default_scope=False)


def _work_dir(config: str, cfg: Config, work_dir: Optional[str]) -> str:
    if work_dir:
        return work_dir
    if cfg.get('work_dir'):
        return cfg.work_dir
    return osp.join('work_dirs', osp.splitext(osp.basename(config))[0])


def _option_tops(cfg_options: Optional[Mapping]) -> set:
    """The top-level config names that ``--cfg-options`` keys change."""
    return {str(key).split('.')[0] for key in cfg_options or {}}


def check_cfg_options(cfg: Mapping, cfg_options: Mapping) -> None:
    """Refuse ``--cfg-options`` keys that would be merged and then ignored: a top-level name the
    config does not have and the runner does not read (``trian_cfg.max_iters``), or a variable of
    the config file (``max_iters``, ``data_root``), which is substituted where the file uses it
    before any option is applied."""
    runner_type = cfg_options.get('runner_type', cfg.get('runner_type', ''))
    for key in cfg_options:
        top = str(key).split('.')[0]
        if top == 'launcher':
            raise ValueError(f'--cfg-options {key}: the tools set the launcher from --launcher, '
                             'after the options; give --launcher instead')
        if top == 'strategy' and 'FlexibleRunner' not in str(runner_type):
            raise ValueError(f'--cfg-options {key}: only FlexibleRunner reads strategy; set '
                             "runner_type='FlexibleRunner' too")
        if top in RUNNER_KEYS or top == 'strategy':
            continue
        if top not in cfg:
            raise ValueError(f'--cfg-options {key}: the config has no {top!r} and the runner '
                             f'does not read it (misspelt? top-level keys: '
                             f'{", ".join(sorted(k for k in cfg if k in RUNNER_KEYS))})')
        raise ValueError(f'--cfg-options {key}: {top!r} is a variable of the config file, '
                         'already substituted where the file uses it, so changing it changes '
                         'nothing; override the entries that use it (e.g. train_cfg.max_iters, '
                         'train_dataloader.dataset.data_root)')


def stale_schedule_ends(cfg: Mapping, before: Mapping) -> list[str]:
    """Warnings for learning-rate schedulers that still end where ``train_cfg`` ended before
    ``--cfg-options`` changed its ``max_iters``/``max_epochs`` (``before``): the file's schedule
    was written with its own length, and mmengine keeps the last rate after a scheduler's end."""
    train = cfg.get('train_cfg') or {}
    schedulers = cfg.get('param_scheduler') or []
    listed = not isinstance(schedulers, Mapping)
    schedulers = list(schedulers) if listed else [schedulers]
    messages = []
    for key, by_epoch, unit in (('max_iters', False, 'iteration'), ('max_epochs', True, 'epoch')):
        old, new = before.get(key), train.get(key)
        if old is None or new is None or old == new:
            continue
        for i, scheduler in enumerate(schedulers):
            if (isinstance(scheduler, Mapping) and scheduler.get('by_epoch', True) == by_epoch
                    and scheduler.get('end') == old):
                name = f'param_scheduler.{i}' if listed else 'param_scheduler'
                messages.append(
                    f'--cfg-options train_cfg.{key}={new}: {name} ({scheduler.get("type")}) '
                    f'still ends at {unit} {old}, where the config\'s schedule ended; after it '
                    f'the learning rate stays at its last value. To stretch it, also set '
                    f'{name}.end={new} (and what else it derives from the length, e.g. T_max '
                    'or milestones)')
    return messages


def load_config(config: str, *, cfg_options: Optional[Mapping] = None,
                work_dir: Optional[str] = None, resume: Optional[str] = None,
                amp: bool = False, launcher: str = 'none', load_from: Optional[str] = None,
                auto_scale_lr: bool = False) -> Config:
    """Read a config and apply the tools' options to it.

    Args:
        config: Path of a ``.py`` config.
        cfg_options: ``key.path=value`` overrides (``--cfg-options``), applied after reading.
        work_dir: Output folder; default: the config's ``work_dir`` or
            ``work_dirs/<config name>``.
        resume: ``'auto'`` resumes from the latest checkpoint of the work dir, a path from that
            checkpoint; None starts afresh.
        amp: Train with automatic mixed precision (needs a GPU).
        launcher: ``'none'`` (one process), ``'pytorch'`` (torchrun), ``'slurm'`` or ``'mpi'``.
        auto_scale_lr: Scale the learning rate by the total batch size over the config's
            ``auto_scale_lr.base_batch_size`` (MMDetection's ``--auto-scale-lr``).
        load_from: Checkpoint whose weights initialise the model (testing, fine-tuning).
            With ``resume`` or ``load_from``, the config's own ``load_from`` (a fine-tuning
            starting point) is replaced, with a warning; ``resume='auto'`` falls back to it when
            the work dir holds no checkpoint yet.

    Returns:
        The config, toolbox registered, ready for :func:`train` or :func:`test`.

    Raises:
        FileNotFoundError: ``config`` (or ``resume``/``load_from``) does not exist.
        ValueError: An option's value is not allowed.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config {config!r} does not exist')
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher={launcher!r} is not one of {LAUNCHERS}')
    for name, path in (('resume checkpoint', resume), ('checkpoint', load_from)):
        if path not in (None, 'auto') and not is_remote(path) and not osp.isfile(path):
            raise FileNotFoundError(f'{name} {path!r} does not exist')
    if work_dir is not None and not work_dir:
        raise ValueError("work_dir='' is empty; give a folder, or leave it out for "
                         'work_dirs/<config name>')
    try:
        cfg = Config.fromfile(config)
        if cfg_options:
            check_cfg_options(cfg, cfg_options)
            ends = dict(cfg.get('train_cfg') or {})
            cfg.merge_from_dict(dict(cfg_options))
            for message in stale_schedule_ends(cfg, ends):
                print_log(message, logger='current', level=30)
            if 'custom_imports' in _option_tops(cfg_options):
                # Config.fromfile imported the file's list before the options changed it.
                from mmengine.utils import import_modules_from_strings
                import_modules_from_strings(**cfg.custom_imports)
    except (TypeError, KeyError, SyntaxError, NameError, AssertionError, ImportError) as err:
        # mmengine's message is precise; the traceback through its merge code is not.
        raise ValueError(f'config {config!r} (with --cfg-options {dict(cfg_options or {})}) '
                         f'cannot be read: {type(err).__name__}: {err}') from err
    register_toolbox(toolbox_of(cfg))
    cfg.work_dir = _work_dir(config, cfg, work_dir)
    if osp.exists(cfg.work_dir) and not osp.isdir(cfg.work_dir):
        raise ValueError(f'work_dir {cfg.work_dir!r} is a file; expected a folder')
    cfg.launcher = launcher
    given = cfg.get('load_from')
    if given and 'load_from' in _option_tops(cfg_options) and (
            resume is not None or load_from is not None):
        # Named on the command line next to another checkpoint: one would be dropped.
        other = '--resume' if resume is not None else 'the checkpoint to test'
        raise ValueError(f'--cfg-options load_from={given!r} and {other} both name a '
                         'checkpoint; give one')
    if resume == 'auto' and given:
        # A fine-tuning run: its own latest checkpoint if it has one, else where it starts from.
        from mmengine.runner import find_latest_checkpoint
        latest = find_latest_checkpoint(cfg.work_dir)
        if latest is None:
            print_log(f'--resume: no checkpoint in {cfg.work_dir!r}; training starts from '
                      f'load_from={given!r}', logger='current', level=30)
            resume = None
            cfg.resume = False  # mmengine would resume from load_from: not a run of this one
        else:
            print_log(f'--resume: resuming from {latest!r}; load_from={given!r} is not used',
                      logger='current', level=30)
            resume = latest
    elif given and (resume is not None or load_from is not None):
        # The config's starting point; resuming or testing reads the checkpoint named.
        print_log(f'load_from={given!r} is not used: '
                  + (f'resuming from {resume!r}' if resume is not None
                     else f'testing {load_from!r}'), logger='current', level=30)
    # Checked only where it is what the run starts from.
    if (given and resume is None and load_from is None and not is_remote(given)
            and not osp.isfile(given)):
        raise FileNotFoundError(f'load_from checkpoint {given!r} does not exist')
    if resume is not None:
        cfg.resume = True
        cfg.load_from = None if resume == 'auto' else resume
    if load_from is not None:
        cfg.load_from = load_from
    check_efficient_conv_bn_eval(cfg)
    if auto_scale_lr:
        scaling = cfg.get('auto_scale_lr')
        if not isinstance(scaling, Mapping) or 'base_batch_size' not in scaling:
            raise ValueError(f'--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N) in '
                             f'the config (the total batch size its learning rate is for); it '
                             f'has auto_scale_lr={scaling!r}')
        cfg.auto_scale_lr.enable = True
    if amp:
        if not torch.cuda.is_available():
            raise ValueError('--amp needs a CUDA GPU; none is available here')
        wrapper = cfg.optim_wrapper
        if wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            wrapper.type = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
    return cfg


def check_efficient_conv_bn_eval(cfg: Config) -> None:
    """Refuse ``efficient_conv_bn_eval`` on modules that hold one of our backbones: mmengine
    traces each named module with ``torch.fx.symbolic_trace``, which our backbones (their
    forward picks memory layouts and ways per input) do not support, nor MMDetection's ResNeSt;
    the run would fail at start with a tracing error."""
    names = cfg.get('efficient_conv_bn_eval')
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    if not names or not str(backbone.get('type', '')).startswith('resnest_mm.'):
        return
    for name in [names] if isinstance(names, str) else names:
        if name in ('', 'backbone') or str(name).startswith('backbone.'):
            raise ValueError(f'efficient_conv_bn_eval={names!r} is not supported with '
                             f'{backbone["type"]}: mmengine traces {name or "the model"!r} with '
                             'torch.fx, which cannot trace these backbones; leave the backbone '
                             'out of it')


# ------------------------------------------------------------------------------------------------
# Distributed set-up and SyncBN
def real_sync_bn_possible(launcher: str) -> bool:
    """Whether SyncBN layers can synchronise: several processes on CUDA GPUs."""
    return launcher != 'none' and torch.cuda.is_available()


def _replace_sync_bn(node: Any) -> int:
    count = 0
    if isinstance(node, Mapping):
        if node.get('type') in SYNC_BN_TYPES:
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_sync_bn(value)
    return count


def adapt_sync_bn(cfg: Config, *, launcher: Optional[str] = None,
                  warn: Callable[[str], None] = None) -> int:
    """Turn the model's SyncBN norm configs into BN where they cannot synchronise.

    One process has nobody to synchronise with, and torch's SyncBatchNorm works on GPUs only, so a
    SyncBN config trained on CPUs (one process or DDP over gloo) runs with BN, which computes the
    same thing per process. Under DDP on GPUs nothing changes.

    Args:
        cfg: The config (changed in place).
        launcher: Default: ``cfg.launcher``.
        warn: Where the one-line warning goes (default: mmengine's logger).

    Returns:
        How many norm configs were changed.
    """
    launcher = launcher or cfg.get('launcher', 'none')
    if real_sync_bn_possible(launcher):
        return 0
    count = _replace_sync_bn(cfg.model)
    if count:
        where = 'one process' if launcher == 'none' else 'DDP without CUDA'
        message = (f'SyncBN -> BN in {count} norm configs: {where} has nothing to synchronise '
                   'over (SyncBN needs several GPU processes); the paper\'s recipe uses SyncBN')
        if warn is None:
            print_log(message, logger='current', level=30)
        else:
            warn(message)
    return count


def check_launch_environment(launcher: str) -> None:
    """Fail before any work when the process was not started as ``launcher`` needs: mmengine
    would stop later, with a bare ``KeyError: 'SLURM_PROCID'`` while building the runner.

    Raises:
        LaunchError: ``'slurm'`` or ``'mpi'`` without CUDA (only torchrun's ``'pytorch'`` runs
            on CPUs), or a variable the launcher sets is missing or not a number where it must
            be one.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher={launcher!r} is not one of {LAUNCHERS}')
    if launcher == 'none':
        return
    if launcher != 'pytorch' and not torch.cuda.is_available():
        raise LaunchError(f"--launcher {launcher} on a machine without CUDA: only 'pytorch' "
                          '(torchrun) runs on CPUs, or --launcher none for one process')
    missing = [name for name in LAUNCH_VARIABLES[launcher] if not os.environ.get(name)]
    if missing:
        raise LaunchError(f'--launcher {launcher}: the environment lacks {missing}, which '
                          f'{LAUNCHED_BY[launcher]} sets; start the run that way, or use '
                          '--launcher none for one process')
    rank = LAUNCH_VARIABLES[launcher][0]
    if not os.environ[rank].isdigit():
        raise LaunchError(f'--launcher {launcher}: {rank}={os.environ[rank]!r} is not a '
                          'process rank (expected an integer >= 0)')


def launch_rank(launcher: str) -> int:
    """This process's rank under ``launcher``, read from what the launcher set, so it is known
    before mmengine sets ``RANK`` for Slurm and MPI. ``'none'`` reads ``RANK`` too (0 when unset):
    processes that torchrun started with ``--launcher none`` by mistake then still write the
    demo data once."""
    name = LAUNCH_VARIABLES[launcher][0] if launcher in LAUNCH_VARIABLES else 'RANK'
    value = os.environ.get(name, '0')
    return int(value) if value.isdigit() else 0


def setup_cpu_distributed(cfg: Config) -> None:
    """Prepare a ``pytorch``-launched run on CPUs: gloo process group, DDP without device ids,
    and validation with rank 0's norm statistics (``BuffersFromRankZeroHook``).

    mmengine's launcher code assumes a GPU per process; on a CPU-only machine the group is
    initialised here (mmengine then keeps it) and the model is wrapped by
    :class:`CPUDistributedDataParallel`.
    """
    import torch.distributed as dist
    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if not dist.is_initialized():
        if cfg.launcher != 'pytorch':
            raise ValueError(f'launcher={cfg.launcher!r} on a machine without CUDA: only '
                             "'pytorch' (torchrun) is supported there")
        dist.init_process_group(backend='gloo')
    _register_cpu_ddp()
    wrapper = cfg.get('model_wrapper_cfg') or {}
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        cfg.model_wrapper_cfg = dict(wrapper, type='CPUDistributedDataParallel')
    # Each process trains its own BN statistics (mmengine wraps with broadcast_buffers=False,
    # and SyncBN runs as BN here): validation then scored each rank's share with other
    # statistics than the checkpoint's (rank 0's) holds.
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'BuffersFromRankZeroHook' for h in hooks):
        cfg.custom_hooks = hooks + [dict(type='BuffersFromRankZeroHook')]


def shutdown_distributed() -> None:
    """Destroy the default process group, if there is one (a torchrun launch), and with it gloo's
    worker threads, before the interpreter exits. The command-line tools call this when they
    finish.

    Left to interpreter exit, a gloo worker thread could drop the last reference to a tensor
    that Python also knew (a gradient made by a Python autograd function) while Python was
    shutting down; taking the GIL then ended the thread inside C++ and aborted the process
    (rank 0 of the two-process CPU test, about 1 run in 25). The runner's DDP wrapper holds the
    group through reference cycles, so those are collected first: the group is then freed, and
    its threads joined, here.
    """
    import gc
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def _register_cpu_ddp() -> None:
    """Register, once, what :func:`setup_cpu_distributed` names in a config: the DDP wrapper for
    CPU modules and the hook that hands rank 0's buffers to every process before validation."""
    from mmengine.hooks import Hook
    from mmengine.model import MMDistributedDataParallel, is_model_wrapper
    from mmengine.registry import HOOKS, MODEL_WRAPPERS
    if MODEL_WRAPPERS.get('CPUDistributedDataParallel') is not None:
        return

    @HOOKS.register_module()
    class BuffersFromRankZeroHook(Hook):
        """Before each validation, every process takes rank 0's buffers (norm statistics):
        what is validated is then what rank 0's checkpoint of that step holds."""

        def before_val_epoch(self, runner) -> None:
            import torch.distributed as dist
            if not (dist.is_available() and dist.is_initialized()):
                return
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    @MODEL_WRAPPERS.register_module()
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """``MMDistributedDataParallel`` for CPU modules, which take no ``device_ids``."""

        def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs) -> None:
            super().__init__(module=module, device_ids=None, **kwargs)


# ------------------------------------------------------------------------------------------------
# Checkpoints
def enable_safe_checkpoint_loading() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine's checkpoints (resume, test, load_from).

    The allow-list is :func:`resnest_mm.checkpoint.mmengine_safe_globals`: numpy arrays and
    scalars, ``HistoryBuffer`` and ``ConfigDict``; any other pickled object is still refused.
    URL checkpoints are read the same way (:func:`resnest_mm.checkpoint.make_url_loading_safe`).
    """
    torch.serialization.add_safe_globals(mmengine_safe_globals())
    make_url_loading_safe()


# ------------------------------------------------------------------------------------------------
# Data
def _demo_writers() -> dict[str, Callable[[str], str]]:
    from . import demo_data
    return {'demo_coco': demo_data.make_demo_coco, 'demo_ade': demo_data.make_demo_ade}


def demo_roots(cfg: Mapping, *, dataloaders: Sequence[str]) -> list[tuple[str, str]]:
    """``(kind, root)`` of the synthetic demo data sets (``data_root`` named ``demo_coco`` or
    ``demo_ade``) the config reads."""
    from .seg_checks import dataloader_datasets
    found = []
    for _, ds in dataloader_datasets(cfg, dataloaders):
        root = ds.get('data_root')
        kind = osp.basename(osp.normpath(root)) if root else None
        if kind in ('demo_coco', 'demo_ade') and (kind, osp.normpath(root)) not in found:
            found.append((kind, osp.normpath(root)))
    return found


def ensure_demo_data(kind: str, root: str, *, rank: Optional[int] = None,
                     timeout_s: float = 600) -> bool:
    """Write a demo data set to ``root`` if it does not exist yet.

    The data is written to a temporary sibling folder and renamed, so an interrupted run leaves
    nothing half-written. Under a multi-process launcher only rank 0 writes; the others wait.

    Args:
        kind: ``'demo_coco'`` or ``'demo_ade'``.
        root: The data set's folder.
        rank: This process's rank (:func:`launch_rank`); default: the ``RANK`` variable, which
            only torchrun sets this early.
        timeout_s: How long another rank waits for rank 0's data.

    Returns:
        True when the data was written by this call.
    """
    if osp.isdir(root):
        return False
    rank = launch_rank('none') if rank is None else rank
    if rank != 0:
        deadline = time.monotonic() + timeout_s
        while not osp.isdir(root):
            if time.monotonic() > deadline:
                raise TimeoutError(f'rank {rank}: {root!r} did not appear in {timeout_s:.0f} s '
                                   '(rank 0 writes it; on several nodes it must be a folder '
                                   'they share, or write it there first: '
                                   f'resnest_mm.demo_data.make_{kind}(root), or '
                                   'tools/make_demo_data.py in a clone of the repository)')
            time.sleep(0.2)
        return False
    writer = _demo_writers()[kind]
    parent = osp.dirname(osp.abspath(root))
    os.makedirs(parent, exist_ok=True)
    print_log(f'{root} is missing: writing the synthetic {kind} data set there '
              f'(resnest_mm.demo_data)', logger='current')
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(root)}-', dir=parent)
    try:
        # mkdtemp makes the folder private (0700); the data set gets the permissions of a
        # folder made as usual (tools/make_demo_data.py's), which the umask decides.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        writer(tmp)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def prepare_data(cfg: Config, *, mode: str) -> None:
    """Write missing demo data, then fail early if data the run reads does not exist.

    Args:
        cfg: The config from :func:`load_config`.
        mode: ``'train'`` (train and, if configured, val data) or ``'test'`` (test data).

    Raises:
        FileNotFoundError: Naming every missing path and how to get the data.
    """
    if mode not in ('train', 'test'):
        raise ValueError(f"mode={mode!r} is not 'train' or 'test'")
    if mode == 'train':
        loaders = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])
    else:
        loaders = ['test_dataloader']
    for kind, root in demo_roots(cfg, dataloaders=loaders):
        ensure_demo_data(kind, root, rank=launch_rank(cfg.get('launcher', 'none')))
    if toolbox_of(cfg) == 'mmdet':
        from .det_checks import check_det_data
        check_det_data(cfg, dataloaders=loaders)
    else:
        from .seg_checks import check_seg_data
        check_seg_data(cfg, dataloaders=loaders)
    if mode == 'train':
        check_pretrained_files(cfg)


def _pretrained_paths(node: Any, where: str) -> list[tuple[str, str]]:
    found = []
    if isinstance(node, Mapping):
        init = node.get('init_cfg')
        inits = init if isinstance(init, (list, tuple)) else [init]
        for i, item in enumerate(inits):
            if isinstance(item, Mapping) and item.get('type') == 'Pretrained':
                key = f'{where}.init_cfg' + (f'[{i}]' if isinstance(init, (list, tuple)) else '')
                found.append((f'{key}.checkpoint', item.get('checkpoint')))
        for name, value in node.items():
            if name != 'init_cfg':
                found += _pretrained_paths(value, f'{where}.{name}')
    return found


def check_pretrained_files(cfg: Mapping) -> None:
    """Fail before training starts when an ``init_cfg=dict(type='Pretrained')`` of the model
    points at a local file that does not exist (URLs and ``open-mmlab://`` names are left to
    mmengine).

    Raises:
        FileNotFoundError: Naming the config key, the path and the ways out.
    """
    for key, path in _pretrained_paths(cfg.get('model', {}), 'model'):
        if isinstance(path, str) and not is_remote(path) and not osp.isfile(path):
            raise FileNotFoundError(
                f'{key}={path!r} does not exist. Download the ImageNet weights it names (where '
                'to get each file: configs/README.md of the resnest_mm repository, "ImageNet '
                'checkpoints") to that path, or '
                f'give their path with --cfg-options {key}=PATH, or train from random weights '
                f'with --cfg-options {key.rsplit(".", 1)[0]}=None')


# ------------------------------------------------------------------------------------------------
# Running
class MetricsRecorder(Hook):
    """Keeps the metrics of the last validation (``runner.train`` does not return them)."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.metrics: dict = {}

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        if metrics:
            self.metrics = dict(metrics)


def build_runner(cfg: Config):
    """mmengine's ``Runner`` (or ``cfg.runner_type``) for the config, after the CPU-DDP and SyncBN
    adjustments."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    enable_safe_checkpoint_loading()
    setup_cpu_distributed(cfg)
    adapt_sync_bn(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def check_checkpoint_fits(model: torch.nn.Module, path: str, *, what: str,
                          strict: bool = True) -> None:
    """Fail unless ``path`` holds exactly ``model``'s parameters and buffers, by name and shape.

    mmengine loads a model's weights non-strictly: a checkpoint of another network, or one with
    keys missing, only logs a warning and leaves the rest randomly initialised. A URL (any
    scheme mmengine's ``CheckpointLoader`` knows) is read the way the runner then reads it: an
    ``https://`` file is downloaded once into torch's hub cache, and the runner loads that copy.

    With ``strict=False`` (a ``load_from`` the config marks ``load_from_strict=False``, to
    fine-tune with another head) a checkpoint that does not fit is logged as a warning that
    lists the same keys, and mmengine loads what fits.

    Raises:
        CheckpointMismatchError: The file cannot be read as a checkpoint, or does not fit; the
            message lists the missing, unexpected and wrongly shaped keys.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    try:
        if is_remote(path):
            from mmengine.runner import CheckpointLoader
            enable_safe_checkpoint_loading()  # weights only, as for a file
            ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        else:
            ckpt = safe_torch_load(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # a truncated, empty or foreign file, or unsafe pickled objects
        raise CheckpointMismatchError(f'{what} {path!r} cannot be read as a checkpoint: '
                                      f'{type(err).__name__}: {err}') from err
    try:
        have = unwrap_state_dict(ckpt)  # without DDP's 'module.' prefix, as mmengine loads it
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f'{what} {path!r}: {err}') from err
    # mmengine loads into the wrapped model of DDP and of test-time augmentation alike, and
    # peels both from DDP(TTA(model)) (a multi-process --tta test).
    module = model
    while is_model_wrapper(module) or isinstance(module, BaseTTAModel):
        module = module.module
    want = module.state_dict()
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = [f'{k}: {tuple(have[k].shape)} in the file, {tuple(want[k].shape)} in the model'
             for k in sorted(set(want) & set(have))
             if hasattr(have[k], 'shape') and tuple(have[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or wrong:
        parts = [f'{len(items)} {name}: {", ".join(items[:5])}' + (' ...' if len(items) > 5 else '')
                 for name, items in (('missing', missing), ('unexpected', unexpected),
                                     ('wrongly shaped', wrong)) if items]
        if not strict:
            print_log(f'{what} {path!r} does not fit the model of this config '
                      f'({"; ".join(parts)}); with load_from_strict=False what fits is loaded '
                      'and the rest keeps its initialisation', logger='current', level=30)
            return
        hint = (' To fine-tune with layers it does not fit (e.g. another number of classes), '
                'set load_from_strict=False (--cfg-options load_from_strict=False): they keep '
                'their initialisation, with a warning listing them.' if what == 'load_from'
                else '')
        raise CheckpointMismatchError(
            f'{what} {path!r} does not fit the model of this config ({"; ".join(parts)}). It '
            'was not loaded: the unmatched weights would have stayed random. Is it a checkpoint '
            f'of this config?{hint}')


def _setup(cfg: Config, *, mode: str):
    """The runner with its train or test loop built (data sets and evaluators included), so that
    a component refusing its arguments fails before any work, as :class:`RunSetupError`."""
    check_launch_environment(cfg.get('launcher', 'none'))
    try:
        runner = build_runner(cfg)
        loop = runner.train_loop if mode == 'train' else runner.test_loop  # built here
    except (TypeError, ValueError, KeyError) as err:
        if isinstance(err, RUN_ERRORS):
            raise
        raise RunSetupError(f'the {mode} run cannot be set up from the config: '
                            f'{type(err).__name__}: {err}') from err
    if mode == 'train' and getattr(loop, 'max_iters', 1) < 1:
        raise RunSetupError(f'train_cfg={cfg.train_cfg.to_dict()!r}: nothing to train; '
                            'max_iters (or max_epochs) must be >= 1')
    if mode == 'train':
        check_checkpoint_hook_arguments(runner)
    return runner


#: What mmengine's CheckpointHook passes to ``Runner.save_checkpoint`` itself.
_SAVE_ARGS_PASSED = ('out_dir', 'filename', 'file_client_args', 'save_optimizer',
                     'save_param_scheduler', 'meta', 'by_epoch', 'backend_args')


def check_checkpoint_hook_arguments(runner) -> None:
    """Refuse arguments that mmengine's ``CheckpointHook`` does not know, now rather than at
    the first save: it keeps them (``**kwargs``) for ``runner.save_checkpoint``, which fails
    on them then, after a whole interval of training (``max_keep_ckpt=3`` for
    ``max_keep_ckpts``)."""
    import difflib
    import inspect
    from mmengine.hooks import CheckpointHook
    params = inspect.signature(runner.save_checkpoint).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a runner that takes anything
    takes = [n for n in params if n not in _SAVE_ARGS_PASSED]
    known = [n for n in inspect.signature(CheckpointHook.__init__).parameters
             if n not in ('self', 'kwargs')]
    for hook in runner.hooks:
        # mmengine's own hook only: a subclass may give ``args`` or extra arguments a meaning.
        args = getattr(hook, 'args', None)
        extra = sorted(args) if type(hook) is CheckpointHook and isinstance(args, dict) else []
        bad = [k for k in extra if k not in takes]
        if bad:
            close = {k: difflib.get_close_matches(k, known + takes, n=1) for k in bad}
            hints = ''.join(f' (did you mean {c[0]!r} for {k!r}?)' for k, c in close.items() if c)
            raise RunSetupError(
                f'{type(hook).__name__}: unknown argument {", ".join(map(repr, bad))}{hints}; '
                f'it takes {known}, and passes others to Runner.save_checkpoint, which would '
                'fail on them at the first save')


def _checkpoint_to_load(cfg: Config, runner) -> Optional[str]:
    """The file mmengine's ``load_or_resume`` will read, if any."""
    if cfg.get('resume'):
        if cfg.get('load_from'):
            return cfg.load_from
        from mmengine.runner import find_latest_checkpoint
        latest = find_latest_checkpoint(runner.work_dir)
        if latest is None:
            print_log(f'--resume: no checkpoint in {runner.work_dir!r}; training starts from '
                      'the beginning', logger='current', level=30)
        return latest
    return cfg.get('load_from') or None


def train(cfg: Config) -> dict:
    """Train (and validate as configured); returns the last validation metrics (may be empty).

    A checkpoint to resume from or to start from (``load_from``) must fit the model exactly,
    unless the config sets ``load_from_strict=False`` for its ``load_from`` (fine-tuning with
    another head: the layers it does not fit keep their initialisation, listed in a warning).
    """
    strict = cfg.get('load_from_strict', True)
    if not isinstance(strict, bool):
        raise RunSetupError(f'load_from_strict={strict!r} is not valid; expected True (the '
                            'default: load_from must fit the model) or False')
    runner = _setup(cfg, mode='train')
    path = _checkpoint_to_load(cfg, runner)
    if path is not None:
        resuming = bool(cfg.get('resume'))
        check_checkpoint_fits(runner.model, path, what='resume' if resuming else 'load_from',
                              strict=strict or resuming)
    recorder = MetricsRecorder()
    runner.register_hook(recorder)
    runner.train()
    return recorder.metrics


def add_test_outputs(cfg: Config, *, out: Optional[str] = None, show: bool = False,
                     show_dir: Optional[str] = None, wait_time: float = 2.0) -> None:
    """MMDetection's and MMSegmentation's ``tools/test.py`` options ``--out``, ``--show``,
    ``--show-dir`` and ``--wait-time``, each with its toolbox's meaning.

    Args:
        cfg: The config from :func:`load_config`.
        out: MMDetection: a ``.pkl`` file for the raw predictions (``DumpDetResults``).
            MMSegmentation: a folder for the predicted label maps (``output_dir`` and
            ``keep_results`` of the test metrics, e.g. ``IoUMetric``).
        show: Show each image with its predictions in a window (needs a display).
        show_dir: Also draw them into files: MMDetection's ``<work_dir>/<timestamp>/<show_dir>``,
            every image; MMSegmentation's ``<show_dir>/vis_data/vis_image``, the images of
            every ``default_hooks.visualization.interval``-th test batch (50 in its configs
            and ours, so none of a smaller test set; a warning says so).
        wait_time: Seconds each shown image stays up.

    Raises:
        ValueError: ``out`` of the wrong kind, or no visualization hook to draw with.
    """
    toolbox = toolbox_of(cfg)
    if show or show_dir:
        hook = (cfg.get('default_hooks') or {}).get('visualization')
        if not hook:
            kind = 'DetVisualizationHook' if toolbox == 'mmdet' else 'SegVisualizationHook'
            raise ValueError(f'--show and --show-dir draw with the visualization hook, and '
                             f'the config has none; add default_hooks.visualization='
                             f"dict(type='{kind}')")
        hook['draw'] = True
        if show:
            hook['show'] = True
            hook['wait_time'] = wait_time
        if show_dir:
            if toolbox == 'mmdet':
                hook['test_out_dir'] = show_dir
            else:
                cfg.visualizer['save_dir'] = show_dir
                interval = hook.get('interval', 50)
                if interval != 1:
                    print_log(f'--show-dir: MMSegmentation draws the images of every '
                              f'{interval}th test batch only (default_hooks.visualization.'
                              f'interval={interval}); --cfg-options '
                              'default_hooks.visualization.interval=1 draws all',
                              logger='current', level=30)
    if out is None:
        return
    evaluators = cfg.test_evaluator
    metrics = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
    if toolbox == 'mmdet':
        if not out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out {out!r}: MMDetection dumps the predictions to a pickle '
                             "file; expected a name ending in '.pkl' or '.pickle'")
        cfg.test_evaluator = metrics + [dict(type='DumpDetResults', out_file_path=out)]
        return
    # As MMSegmentation's test.py: every metric is told (IoUMetric and CityscapesMetric write
    # there, and keep_results keeps CityscapesMetric's files after it has scored them).
    for metric in metrics:
        metric['output_dir'] = out
        metric['keep_results'] = True


#: What MMDetection's ``tools/test.py --tta`` uses for a config without a ``tta_model``: the
#: flipped and unflipped detections merged by NMS.
DET_TTA_MODEL = dict(type='DetTTAModel',
                     tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
#: What its default flip pipeline packs (``flip`` and ``flip_direction`` undo the flip).
DET_TTA_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                     'flip_direction')


def _default_det_tta(cfg: Config) -> None:
    """MMDetection's defaults for a detection config without ``tta_model``/``tta_pipeline``:
    the test pipeline with its packing step replaced by a horizontal flip and no flip."""
    if not cfg.get('tta_model'):
        print_log(f'--tta: the config has no tta_model; using {DET_TTA_MODEL} (MMDetection\'s '
                  'default)', logger='current', level=30)
        cfg.tta_model = dict(DET_TTA_MODEL)
    if cfg.get('tta_pipeline'):
        return
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # a wrapper's inner data set holds the pipeline
        dataset = dataset['dataset']
    pipeline = [dict(step) for step in dataset.get('pipeline') or ()]
    if not pipeline or str(pipeline[-1].get('type')).rsplit('.', 1)[-1] != 'PackDetInputs':
        raise ValueError('--tta: the config has no tta_pipeline, and its test pipeline does not '
                         'end in PackDetInputs to build the default flip pipeline from; add a '
                         'tta_pipeline')
    print_log('--tta: the config has no tta_pipeline; using its test pipeline with a flip and '
              "no flip (MMDetection's default)", logger='current', level=30)
    pipeline[-1] = dict(type='TestTimeAug', transforms=[
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
        [dict(type='PackDetInputs', meta_keys=DET_TTA_META_KEYS)]])
    cfg.tta_pipeline = pipeline


def use_tta(cfg: Config) -> None:
    """Switch the config to its test-time augmentation (``tta_model`` and ``tta_pipeline``); a
    detection config without them gets MMDetection's defaults (flip and no flip, merged by NMS),
    as its ``tools/test.py --tta`` does. Boxes only: MMDetection's ``DetTTAModel`` does not merge
    masks, so a config with a mask head is refused."""
    if toolbox_of(cfg) == 'mmdet':
        if (cfg.model.get('roi_head') or {}).get('mask_head') and str(
                (cfg.get('tta_model') or DET_TTA_MODEL).get('type')).endswith('DetTTAModel'):
            # DetTTAModel asserts at the first test batch, a traceback after the model is built.
            raise ValueError("--tta: MMDetection's DetTTAModel does not merge masks (instance "
                             'segmentation), and this config has a mask head; test without '
                             '--tta')
        _default_det_tta(cfg)
    missing = [k for k in ('tta_model', 'tta_pipeline') if not cfg.get(k)]
    if missing:
        raise ValueError(f'--tta needs {missing} in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.model = dict(cfg.tta_model, module=cfg.model)


def test(cfg: Config, *, checkpoint: str) -> dict:
    """Evaluate ``checkpoint`` (a file, or a URL mmengine reads) on the test data; returns the
    metrics."""
    if not is_remote(checkpoint) and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    if cfg.get('load_from') and cfg.load_from != checkpoint:
        # A fine-tuning config's starting point: what is tested is the checkpoint given.
        print_log(f'load_from={cfg.load_from!r} of the config is not used: testing '
                  f'{checkpoint!r}', logger='current', level=30)
    cfg.load_from = checkpoint
    cfg.resume = False
    runner = _setup(cfg, mode='test')
    check_checkpoint_fits(runner.model, checkpoint, what='checkpoint')
    return runner.test()


def run_error_message(err: BaseException) -> str:
    """The message of one of :data:`RUN_ERRORS`, without the traceback text that PyTorch puts
    in front of it when a DataLoader worker process raised it (the error is re-raised in the
    main process with the worker's whole traceback as its message)."""
    text = str(err)
    if text.startswith('Caught ') and '\nOriginal Traceback' in text:
        # The traceback's last entry is "module.Class: the original message", or for a built-in
        # exception (a worker's FileNotFoundError) "Class: the original message".
        module = type(err).__module__
        marker = (f'\n{type(err).__qualname__}: ' if module == 'builtins'
                  else f'{module}.{type(err).__qualname__}: ')
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker):].strip()
    return text


#: Metrics shown first, under a readable name.
HEADLINES = {
    'coco/bbox_mAP_50': 'bbox mAP@0.5',
    'coco/bbox_mAP': 'bbox mAP@[.5:.95]',
    'coco/segm_mAP_50': 'mask mAP@0.5',
    'coco/segm_mAP': 'mask mAP@[.5:.95]',
    'mIoU': 'mIoU (%)',
    'mAcc': 'mean class accuracy (%)',
    'aAcc': 'pixel accuracy (%)',
}


def format_metrics(metrics: Mapping, *, title: str = 'final metrics') -> str:
    """The metrics as text: headline metrics first (``bbox mAP@0.5: 0.612``), then the rest."""
    if not metrics:
        # Also after an evaluation that gave none: format_only, or nothing predicted.
        return (f'{title}: none (no evaluation ran, or the evaluator returned no metrics, e.g. '
                'with format_only or when there were no predictions to score)')
    lines = [f'{title}:']
    for key, name in HEADLINES.items():
        if key in metrics:
            lines.append(f'  {name}: {float(metrics[key]):.4f}')
    rest = [k for k in metrics if k not in HEADLINES]
    for key in rest:
        value = metrics[key]
        # numpy scalars too (mmseg's are float32 or float64); integers and strings as they are.
        real = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
        shown = f'{float(value):.4f}' if real else str(value)
        lines.append(f'  {key}: {shown}')
    return '\n'.join(lines)


def print_metrics(metrics: Mapping, *, title: str = 'final metrics') -> None:
    """Print :func:`format_metrics` once (on the main process)."""
    from mmengine.dist import is_main_process
    if is_main_process():
        print(format_metrics(metrics, title=title), flush=True)
