"""Reproduce the paper's transfer tables: run every row, collect the results, render the tables.

Each row of :mod:`resnest_mm.paper_results` is trained with ``tools/dist_train.sh`` into
``<work root>/<row key>`` and its last checkpoint evaluated with ``tools/dist_test.sh``. A row's
state is read back from what mmengine leaves in its work dir, never from memory:

* ``<work dir>/<timestamp>/vis_data/config.py``: the config of that run; the newest training
  run's ``train_cfg`` says where training ends (``max_epochs``/``max_iters``); the config
  dumped at the top of the work dir (rewritten by every run, tests too) is the fallback;
* ``<work dir>/last_checkpoint``: the path of the newest checkpoint (``epoch_N.pth``/``iter_N.pth``),
  i.e. how far training got;
* ``<work dir>/<timestamp>/vis_data/scalars.json``: JSON lines of the training logs and, after each
  validation, the evaluator's metrics (``coco/bbox_mAP`` ... as fractions, ``mIoU`` in %) with
  their ``step`` (the epoch, or the iteration for iteration-based loops);
* ``<work dir>/<timestamp>/<timestamp>.json``: a test run's metrics (one JSON object);
* ``<work dir>/reproduce_status.json``: written by this module, the command, start and end time
  and exit status of every stage it ran (``reproduce_<stage>.log`` holds the stage's output).

A row is *finished* when training reached its end and final metrics exist (a test run after it,
or the validation at the last step); *failed* when the last stage this module ran exited
non-zero; *unfinished* when there are logs or checkpoints but no final metrics; *not run*
otherwise. ``--demo`` runs the same pipeline on the CPU demo configs with tiny schedules.
"""
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Optional, Sequence

from .paper_results import (FRACTION_METRICS, LOG_KEYS, ROWS, SOURCES, TABLES, PaperRow,
                            Reference)
from .report import ProgressBar, markdown_table

STATUS_FILE = 'reproduce_status.json'
#: The exit status recorded for a test stage that found no checkpoint to test.
NO_CHECKPOINT = -3
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The repository's scripts that the stages run, relative to :data:`REPO_ROOT`.
TOOLS = ('tools/train.py', 'tools/test.py', 'tools/dist_train.sh', 'tools/dist_test.sh')


# ------------------------------------------------------------------------------------------------
# Rows to run
@dataclass(frozen=True)
class RunRow(PaperRow):
    """A row as run: the paper row's facts plus how to run it.

    Attributes:
        cfg_options: ``--cfg-options`` for training (the demo's tiny schedule).
        derived_from: For a demo row whose backbone is swapped: the demo config it derives from
            (the derived config is written to ``config`` before running).
        backbone_cfg: That swapped backbone.
    """
    cfg_options: tuple[str, ...] = ()
    derived_from: Optional[str] = None
    backbone_cfg: Optional[dict] = None


def full_rows(keys: Optional[Sequence[str]] = None,
              tables: Optional[Sequence[str]] = None) -> list[RunRow]:
    """The paper's rows (all, or those whose key matches one of ``keys`` as a regex)."""
    rows = [RunRow(**{f.name: getattr(r, f.name) for f in fields(PaperRow)}) for r in ROWS]
    return _select(rows, keys, tables)


def with_gpus(row: RunRow, gpus: int) -> RunRow:
    """The row run on ``gpus`` GPUs instead of its recipe's.

    The configs fix the images per GPU, so another GPU count changes the total batch; the
    learning rate then follows it (``auto_scale_lr.enable=True``: mmengine scales it by the total
    batch over the configs' ``auto_scale_lr.base_batch_size``, 16).
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f'gpus={gpus!r} is not valid; expected an integer >= 1')
    if gpus == row.gpus:
        return row
    return replace(row, gpus=gpus, cfg_options=row.cfg_options + ('auto_scale_lr.enable=True',))


def _select(rows: list[RunRow], keys: Optional[Sequence[str]],
            tables: Optional[Sequence[str]]) -> list[RunRow]:
    if tables:
        bad = [t for t in tables if t not in TABLES]
        if bad:
            raise ValueError(f'tables={list(tables)!r}: {bad} unknown; choose from {sorted(TABLES)}')
        rows = [r for r in rows if r.table in tables]
    if keys:
        for k in keys:
            try:
                re.compile(k)
            except re.error as err:
                raise ValueError(f'rows: {k!r} is not a regular expression ({err})') from None
        picked = [r for r in rows if any(re.search(k, r.key) for k in keys)]
        if not picked:
            raise ValueError(f'rows={list(keys)!r} match no row; rows: {[r.key for r in rows]}')
        rows = picked
    return rows


# Demo: the demo configs as they are (ResNeSt) and with a ResNet of the same output widths.
_METHOD_PREFIXES = (('cascade_mask_rcnn', 'coco_inst'), ('cascade_rcnn', 'coco_det'),
                    ('mask_rcnn', 'coco_inst'), ('faster_rcnn', 'coco_det'),
                    ('deeplabv3', 'ade20k'))


def demo_rows(demo_dir: str, work_root: str, iters: int = 20,
              keys: Optional[Sequence[str]] = None,
              tables: Optional[Sequence[str]] = None) -> list[RunRow]:
    """Two rows per demo config: its own (tiny ResNeSt) backbone, and a ResNet-18 whose stage
    widths equal it (``base_channels`` = its first stage's output) so that the same neck and
    heads fit. Each stands in for the paper row of the same method with ResNeSt-50/ResNet-50,
    whose published numbers are shown (the differences of a miniature run mean nothing; the
    point is that the pipeline runs end to end).

    Args:
        demo_dir: Folder of the demo configs (``configs/demo``).
        work_root: Where derived configs go (``<work_root>/_configs``).
        iters: Training iterations (iteration-based configs; epoch-based ones train one epoch).
        keys: Keep the rows whose key matches one of these regular expressions (None: all).
        tables: Keep the rows of these tables (None: all).
    """
    from mmengine.config import Config
    # Absolute: the stages run in the repository root, not where the caller is.
    demo_dir, work_root = os.path.abspath(demo_dir), os.path.abspath(work_root)
    paths = sorted(glob.glob(os.path.join(demo_dir, '*.py')))
    if not paths:
        raise FileNotFoundError(f'demo_dir={demo_dir!r} holds no config (*.py)')
    rows: list[RunRow] = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        prefix, table = next(((p, t) for p, t in _METHOD_PREFIXES if name.startswith(p)),
                             (None, None))
        if prefix is None:
            continue
        cfg = Config.fromfile(path)
        backbone = cfg.model.backbone.to_dict()
        width = _first_stage_width(backbone)
        options = _tiny_schedule(cfg, iters)
        stand_in = {r.backbone: r for r in ROWS if r.key.startswith(prefix + '_')}
        label = _backbone_label(backbone)
        ref = stand_in.get('ResNeSt-50')
        rows.append(RunRow(key=f'demo_{name}', table=table, method=ref.method if ref else name,
                           backbone=f'{label} (for ResNeSt-50)', config=path,
                           published=ref.published if ref else None, gpus=1,
                           cfg_options=options))
        resnet = dict(type='resnest_mm.ResNet', depth=18, base_channels=width)
        for k in ('strides', 'dilations', 'contract_dilation', 'out_indices', 'norm_cfg',
                  'norm_eval', 'frozen_stages', 'num_stages'):
            if k in backbone:
                resnet[k] = backbone[k]
        resnet['init_cfg'] = None  # from scratch, like the demo's own backbone
        ref = stand_in.get('ResNet-50')
        key = f'demo_{name}_resnet18'
        rows.append(RunRow(key=key, table=table, method=ref.method if ref else name,
                           backbone=f'ResNet-18 w{width} (for ResNet-50)',
                           config=os.path.join(work_root, '_configs', f'{key}.py'),
                           published=ref.published if ref else None, gpus=1,
                           cfg_options=options, derived_from=path, backbone_cfg=resnet))
    if not rows:
        raise FileNotFoundError(f'demo_dir={demo_dir!r}: no config name starts with one of '
                                f'{[p for p, _ in _METHOD_PREFIXES]}')
    return _select(rows, keys, tables)


def _first_stage_width(backbone: dict) -> int:
    from .registry import MODELS
    from .models import backbones  # noqa: F401
    import torch
    cfg = {k: v for k, v in backbone.items() if k != 'init_cfg'}
    with torch.device('meta'):
        model = MODELS.build(cfg)
    return int(model.stage_channels[0])


def _backbone_label(backbone: dict) -> str:
    family = str(backbone.get('type', '?')).split('.')[-1]
    width = backbone.get('base_channels')
    return f'{family}-{backbone.get("depth", "?")}' + (f' w{width}' if width else '')


def _tiny_schedule(cfg: Any, iters: int) -> tuple[str, ...]:
    loop = cfg.get('train_cfg', {}) or {}
    if 'max_iters' in loop:
        options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                   f'default_hooks.checkpoint.interval={iters}']
        # A run shorter than the logging interval logs no loss, and its logs would not show
        # that it was a training run (see planned_end).
        interval = ((cfg.get('default_hooks') or {}).get('logger') or {}).get('interval')
        if isinstance(interval, int) and interval > iters:
            options.append(f'default_hooks.logger.interval={iters}')
        return tuple(options)
    return ('train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1')


def write_derived_config(row: RunRow) -> None:
    """The demo config with its backbone replaced (``_delete_``: no argument of the old one
    survives)."""
    os.makedirs(os.path.dirname(os.path.abspath(row.config)), exist_ok=True)
    text = ('# Written by resnest_mm.reproduce (demo): the demo config with another backbone.\n'
            f'_base_ = {os.path.abspath(row.derived_from)!r}\n'
            f'model = dict(backbone=dict(_delete_=True, **{row.backbone_cfg!r}))\n')
    with open(row.config, 'w') as f:
        f.write(text)


# ------------------------------------------------------------------------------------------------
# Collecting a work dir
@dataclass
class RowResult:
    """What a work dir says about a row."""
    key: str
    status: str  # 'finished', 'unfinished', 'failed', 'not run'
    metrics: dict[str, float] = field(default_factory=dict)  # percent
    detail: str = ''
    progress: Optional[tuple[str, int, Optional[int]]] = None  # (unit, done, planned)
    trained: bool = False
    tested: bool = False


_CKPT = re.compile(r'(epoch|iter)_(\d+)\.pth$')


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _json_lines(path: str) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut off by a crash
    except OSError:
        pass
    return out


def _timestamp_dirs(work_dir: str) -> list[str]:
    """mmengine's per-run folders (``YYYYmmdd_HHMMSS``), oldest first."""
    return sorted(d for d in glob.glob(os.path.join(work_dir, '[0-9]' * 8 + '_' + '[0-9]' * 6))
                  if os.path.isdir(d))


def _train_loop_end(path: str) -> Optional[tuple[str, int]]:
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception:  # noqa: BLE001  a half-written or foreign file: no answer from it
        return None
    loop = cfg.get('train_cfg') or {}
    if loop.get('max_iters'):
        return 'iter', int(loop['max_iters'])
    if loop.get('max_epochs'):
        return 'epoch', int(loop['max_epochs'])
    return None


def planned_end(work_dir: str) -> Optional[tuple[str, int]]:
    """``('epoch', max_epochs)`` or ``('iter', max_iters)`` of the newest training run.

    Read from the config that run saved with its logs (``<timestamp>/vis_data/config.py``): the
    config dumped at the top of the work dir is rewritten by every later run, a test run
    included, which does not carry the training's ``--cfg-options``. That dump is the fallback.
    A training run is one that logged a loss, else (a run shorter than the logging interval)
    one that left no test metrics (``<timestamp>/<timestamp>.json``).
    """
    runs = list(reversed(_timestamp_dirs(work_dir)))
    trained = [d for d in runs
               if any('loss' in e for e in _json_lines(os.path.join(d, 'vis_data',
                                                                     'scalars.json')))]
    # A training run shorter than the logging interval logs no loss; unlike a test run it
    # leaves no ``<timestamp>.json`` of metrics.
    unlogged = [d for d in runs if d not in trained
                and not os.path.isfile(os.path.join(d, os.path.basename(d) + '.json'))]
    for ts_dir in trained + unlogged:
        end = _train_loop_end(os.path.join(ts_dir, 'vis_data', 'config.py'))
        if end is not None:
            return end
    dumped = sorted(glob.glob(os.path.join(work_dir, '*.py')), key=os.path.getmtime)
    for path in reversed(dumped):
        end = _train_loop_end(path)
        if end is not None:
            return end
    return None


def _metrics_of(entry: dict) -> dict[str, float]:
    out = {}
    for name, log_key in LOG_KEYS.items():
        value = entry.get(log_key)
        if isinstance(value, (int, float)) and value >= 0:  # COCO writes -1 for "no data"
            out[name] = float(value) * (100.0 if name in FRACTION_METRICS else 1.0)
    return out


def collect_row(work_dir: str, key: Optional[str] = None,
                metrics: Sequence[str] = ()) -> RowResult:
    """Read a row's state and final metrics from its work dir (see the module docstring).

    Args:
        work_dir: The row's work dir.
        key: The row's key (default: the folder's name).
        metrics: The metrics the row's table shows (``TABLES[table][1]``). Each is taken from
            the newest test run after training, else from the validation at the last step; the
            row is finished only when all of them were found. Empty: any metric will do.
    """
    key = key or os.path.basename(os.path.normpath(work_dir))
    if not os.path.isdir(work_dir) or not os.listdir(work_dir):
        return RowResult(key, 'not run')
    plan = planned_end(work_dir)
    done: Optional[tuple[str, int]] = None
    marker = os.path.join(work_dir, 'last_checkpoint')
    if os.path.isfile(marker):
        with open(marker) as f:
            match = _CKPT.search(f.read().strip())
        if match:
            done = match.group(1), int(match.group(2))
    val: list[tuple[int, dict]] = []
    test: dict[str, float] = {}
    trained_to = 0
    for ts_dir in _timestamp_dirs(work_dir):
        for entry in _json_lines(os.path.join(ts_dir, 'vis_data', 'scalars.json')):
            logged = _metrics_of(entry)
            if logged:
                val.append((int(entry.get('step', 0)), logged))
            elif 'loss' in entry:
                unit = plan[0] if plan else 'iter'
                trained_to = max(trained_to, int(entry.get(unit, entry.get('step', 0)) or 0))
                test = {}  # a test run before this training run tested an older checkpoint
        result = _read_json(os.path.join(ts_dir, os.path.basename(ts_dir) + '.json'))
        if isinstance(result, dict) and _metrics_of(result):
            test = _metrics_of(result)  # the newest test run after the last training run wins
    trained = bool(plan and done and done[0] == plan[0] and done[1] >= plan[1])
    unit = plan[0] if plan else (done[0] if done else 'iter')
    progress_done = done[1] if done and done[0] == unit else trained_to
    result = RowResult(key, 'unfinished', trained=trained, tested=bool(test),
                       progress=(unit, progress_done, plan[1] if plan else None))
    missing: list[str] = []
    if trained:
        final_val = [m for step, m in val if step >= plan[1]]
        final = final_val[-1] if final_val else {}
        result.metrics = dict(test) if test else dict(final)
        for name in metrics:
            if name not in result.metrics and name in final:
                result.metrics[name] = final[name]
        missing = [m for m in metrics if m not in result.metrics]
    status = _read_json(os.path.join(work_dir, STATUS_FILE))
    stages = status.get('stages', []) if isinstance(status, dict) else []
    last = stages[-1] if stages else None
    if last is not None and last.get('returncode') not in (0, None):
        result.status = 'failed'
        result.detail = (f"{last.get('stage', '?')} exited with {last['returncode']}"
                         + (f" (log: {last['log']})" if last.get('log') else ''))
    elif trained and result.metrics and not missing:
        result.status = 'finished'
        result.detail = 'test' if test else 'final validation'
    elif trained and result.metrics:
        result.detail = (f'{unit} {progress_done}/{plan[1]}, trained; no '
                         + ', '.join(missing) + ' in the test run or the final validation')
    else:
        running = last is not None and last.get('returncode') is None
        planned = f'/{plan[1]}' if plan else ''
        result.detail = (('running: ' if running else '')
                         + f'{unit} {progress_done}{planned}'
                         + (', trained, not evaluated' if trained else ''))
        if val and not trained:
            step, metrics = val[-1]
            shown = ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())
            result.detail += f'; last validation at {unit} {step}: {shown}'
    return result


def row_work_dir(row: RunRow, work_root: str) -> str:
    """The row's work dir, absolute: the stages run in the repository root, and their
    ``--work-dir`` must be the folder this process reads the row's state from."""
    return os.path.join(os.path.abspath(work_root), row.key)


def _row_state(row: RunRow, work_root: str) -> RowResult:
    """A row's state from its work dir under ``work_root``, judged by its table's metrics."""
    return collect_row(row_work_dir(row, work_root), row.key, TABLES[row.table][1])


# ------------------------------------------------------------------------------------------------
# Commands
def _ckpt_path(work_dir: str) -> Optional[str]:
    marker = os.path.join(work_dir, 'last_checkpoint')
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        path = f.read().strip()
    return path or None


def commands(row: RunRow, work_root: str, demo: bool, state: Optional[RowResult] = None,
             python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """The stages still to run for a row: ``[(stage, argv), ...]`` (empty when finished).

    Full scale: ``tools/dist_train.sh CONFIG GPUS --work-dir DIR`` then ``tools/dist_test.sh
    CONFIG CHECKPOINT GPUS --work-dir DIR``; the demo runs ``tools/train.py``/``tools/test.py`` in
    one CPU process. A row whose training stopped part way resumes (``--resume``).
    """
    work_dir = row_work_dir(row, work_root)
    state = state or _row_state(row, work_root)
    if state.status == 'finished':
        return []
    stages: list[tuple[str, list[str]]] = []
    ckpt = _ckpt_path(work_dir)
    if not state.trained:
        if demo:
            argv = [python, 'tools/train.py', row.config, '--work-dir', work_dir]
        else:
            argv = ['bash', 'tools/dist_train.sh', row.config, str(row.gpus),
                    '--work-dir', work_dir]
        if ckpt is not None:
            argv.append('--resume')
        if row.cfg_options:
            argv += ['--cfg-options', *row.cfg_options]
        stages.append(('train', argv))
    # Before training has run, the checkpoint is named by the marker file the runner will write.
    ckpt_arg = ckpt if state.trained and ckpt else f'$(cat {work_dir}/last_checkpoint)'
    if demo:
        stages.append(('test', [python, 'tools/test.py', row.config, ckpt_arg,
                                '--work-dir', work_dir]))
    else:
        stages.append(('test', ['bash', 'tools/dist_test.sh', row.config, ckpt_arg,
                                str(row.gpus), '--work-dir', work_dir]))
    return stages


def requested_end(row: RunRow) -> Optional[tuple[str, int]]:
    """``('iter', N)`` or ``('epoch', N)`` when the row's ``--cfg-options`` set where training
    ends (the demo rows' ``--demo-iters``), else None (the config's own schedule)."""
    given = {}
    for option in row.cfg_options:  # the last one given wins, as in mmengine
        name, _, value = option.partition('=')
        unit = {'train_cfg.max_iters': 'iter', 'train_cfg.max_epochs': 'epoch'}.get(name)
        if unit is not None and value.strip().isdigit():
            given[unit] = int(value)
    # max_iters first, as the run's own config is read (planned_end).
    for unit in ('iter', 'epoch'):
        if unit in given:
            return unit, given[unit]
    return None


def other_schedule(row: RunRow, state: RowResult) -> Optional[str]:
    """For a finished row trained to another end than the row asks for now (e.g. ``--demo``
    run again with another ``--demo-iters``), what was trained and what is asked; else None.
    Such a row is still skipped: its folder holds a finished run."""
    asked = requested_end(row)
    if state.status != 'finished' or asked is None or state.progress is None:
        return None
    unit, _, planned = state.progress
    if (unit, planned) == asked:
        return None
    return (f'trained to {unit} {planned}, not to the {asked[0]} {asked[1]} asked for now; '
            'to run it again, remove its folder or use another --work-root')


def shell_line(argv: Sequence[str]) -> str:
    """A command as a shell line (the ``$(cat ...)`` checkpoint placeholder left unquoted)."""
    return ' '.join(a if a.startswith('$(') else shlex.quote(a) for a in argv)


def _record(work_dir: str, key: str, entry: dict, replace_last: bool) -> None:
    path = os.path.join(work_dir, STATUS_FILE)
    status = _read_json(path)
    if not isinstance(status, dict):
        status = dict(row=key, stages=[])
    if replace_last and status['stages']:
        status['stages'][-1] = entry
    else:
        status['stages'].append(entry)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(status, f, indent=2)
    os.replace(tmp, path)


class NotACheckout(FileNotFoundError):
    """The repository's tools or configs are not beside this copy of the package."""


def check_checkout(stages: Sequence[Sequence[str]], configs: Sequence[str] = ()) -> None:
    """Fail unless the repository's tools that the ``stages`` run and the ``configs`` exist,
    relative paths read from :data:`REPO_ROOT` as the stages will."""
    wanted = {a for argv in stages for a in argv if a in TOOLS} | set(configs)
    missing = sorted((p for p in wanted if not os.path.isfile(os.path.join(REPO_ROOT, p))),
                     key=lambda p: (p not in TOOLS, p))  # the tools first: they tell most
    if missing:
        named = ', '.join(missing[:4]) + (f' and {len(missing) - 4} more' if missing[4:] else '')
        raise NotACheckout(
            f'the stages run the repository\'s tools and configs from {REPO_ROOT}, which lacks '
            f'{named}: a pip-installed resnest_mm holds the library only. Run '
            'tools/reproduce.py from a clone of the repository (bash tools/install.sh installs '
            'it editable).')


def run_stage(row: RunRow, stage: str, argv: list[str], work_root: str) -> int:
    """Run one stage, its output into ``<work dir>/reproduce_<stage>.log``, its exit status
    into the status file (a stage that dies with this process stays ``returncode: null``; a
    test stage with no checkpoint to test is recorded as failed with :data:`NO_CHECKPOINT`)."""
    work_dir = row_work_dir(row, work_root)
    os.makedirs(work_dir, exist_ok=True)
    log = os.path.join(work_dir, f'reproduce_{stage}.log')
    missing = None
    if stage == 'test' and any(a.startswith('$(cat ') for a in argv):
        ckpt = _ckpt_path(work_dir)
        if ckpt is None:
            missing = f'{work_dir}/last_checkpoint is missing: training left no checkpoint to test'
        else:
            argv = [ckpt if a.startswith('$(cat ') else a for a in argv]
    entry: dict[str, Any] = dict(stage=stage, command=shell_line(argv), log=log,
                                 started=time.strftime('%Y-%m-%d %H:%M:%S'), returncode=None)
    if missing is not None:
        with open(log, 'w') as out:
            out.write(missing + '\n')
        entry.update(ended=entry['started'], returncode=NO_CHECKPOINT, error=missing)
        _record(work_dir, row.key, entry, replace_last=False)
        return NO_CHECKPOINT
    _record(work_dir, row.key, entry, replace_last=False)
    rc = -2  # what an interrupted stage (Ctrl-C) is recorded with
    try:
        with open(log, 'w') as out:
            rc = subprocess.call(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    finally:
        entry.update(returncode=rc, ended=time.strftime('%Y-%m-%d %H:%M:%S'))
        _record(work_dir, row.key, entry, replace_last=True)
    return rc


def run_rows(rows: Sequence[RunRow], work_root: str, demo: bool, dry_run: bool = False,
             echo: Callable[[str], None] = print, progress: bool = True) -> None:
    """Run (or with ``dry_run`` print) every stage still missing, row after row. A failed stage
    is recorded and the next row goes on.

    Raises:
        NotACheckout: The repository's tools or configs that the stages run are not beside this
            copy of the package (a pip-installed copy holds the library only).
    """
    # Absolute: the stages run in the repository root, and their --work-dir must be the folder
    # that this process reads the rows' states from.
    work_root = os.path.abspath(work_root)
    plans = []
    for row in rows:
        state = _row_state(row, work_root)
        plans.append((row, state, commands(row, work_root, demo, state)))
    check_checkout([argv for _, _, stages in plans for _, argv in stages],
                   [row.config for row, _, stages in plans if stages and not row.derived_from])
    if dry_run:
        for row, state, stages in plans:
            head = f'# {row.key} ({row.method}, {row.backbone}): {state.status}'
            echo(head + ('' if stages else ', skipped'))
            note = other_schedule(row, state)
            if note:
                echo(f'#   {note}')
            if row.derived_from:
                echo(f'#   writes {row.config} ({row.derived_from} with backbone '
                     f'{row.backbone_cfg})')
            for _, argv in stages:
                echo(shell_line(argv))
        return
    total = sum(len(s) for _, _, s in plans)
    bar = ProgressBar(enabled=progress, total=total, name='reproduce')
    with bar.running():
        for row, state, stages in plans:
            if not stages:
                note = other_schedule(row, state)
                echo(f'{row.key}: finished, skipped' + (f' ({note})' if note else ''))
                continue
            if row.derived_from:
                write_derived_config(row)
            work_dir = row_work_dir(row, work_root)
            for stage, argv in stages:
                # Logged before the stage, so that logs without a live bar (nohup, Slurm) show
                # what runs now and where its output goes.
                echo(f'{row.key}: {stage} started (log: {work_dir}/reproduce_{stage}.log)')
                bar.step(f'{row.key}: {stage}', 0)
                rc = run_stage(row, stage, argv, work_root)
                bar.step(f'{row.key}: {stage}')
                echo(f'{row.key}: {stage} ' + ('done' if rc == 0 else
                                               f'FAILED (exit {rc}, see '
                                               f'{work_dir}/reproduce_{stage}.log)'))
                if rc != 0:
                    # The row's later stages will not run: count them as done.
                    bar.step(f'{row.key}: {stage} failed',
                             len(stages) - 1 - stages.index((stage, argv)))
                    break


# ------------------------------------------------------------------------------------------------
# Tables
def collect(rows: Sequence[RunRow], work_root: str) -> dict[str, RowResult]:
    return {r.key: _row_state(r, work_root) for r in rows}


def _status_cell(res: RowResult) -> str:
    if res.status == 'finished':
        return 'finished'
    return f'{res.status}: {res.detail}' if res.detail else res.status


def _num(value: Optional[float]) -> str:
    return '—' if value is None else f'{value:.2f}'


def _diff(ours: Optional[float], ref: Optional[float]) -> str:
    return '—' if ours is None or ref is None else f'{ours - ref:+.2f}'


def table_markdown(table: str, rows: Sequence[RunRow], results: dict[str, RowResult]) -> str:
    """One table: published, ours and the difference for each metric, side by side."""
    title, metrics = TABLES[table]
    rows = [r for r in rows if r.table == table]
    if not rows:
        return ''
    short = {'bbox_mAP': 'box AP', 'segm_mAP': 'mask AP', 'mIoU': 'mIoU'}
    header = ['method', 'backbone']
    for m in metrics:
        header += [f'{short[m]} published', f'{short[m]} ours', 'Δ']
    header += ['published in', 'toolbox result', 'status']
    sources: list[str] = []

    def cite(source: Optional[str]) -> str:
        if source is None:
            return '—'
        if source not in sources:
            sources.append(source)
        return f'[{sources.index(source) + 1}]'

    table_rows = []
    for r in rows:
        res = results[r.key]
        cells = [r.method, r.backbone]
        for m in metrics:
            ref = r.published.values.get(m) if r.published else None
            ours = res.metrics.get(m) if res.status == 'finished' else None
            cells += [_num(ref), _num(ours), _diff(ours, ref)]
        cells.append(f'{r.published.schedule} {cite(r.published.source)}' if r.published
                     else '—')
        also = '; '.join('/'.join(_num(a.values.get(m)) for m in metrics if m in a.values)
                         + f' ({a.schedule}) {cite(a.source)}' for a in r.also)
        cells += [also or '—', _status_cell(res)]
        table_rows.append(cells)
    notes = [f'[{i + 1}] {SOURCES[s]}' for i, s in enumerate(sources)]
    return '\n'.join([f'### {title}', '', markdown_table(header, table_rows)]
                     + ([''] + notes if notes else []))


def render_markdown(rows: Sequence[RunRow], results: dict[str, RowResult],
                    demo: bool = False) -> str:
    parts = []
    if demo:
        parts.append('Demo: miniature runs of the CPU demo configs (tiny schedules, synthetic '
                     'data). Each stands in for the paper row named in brackets; the published '
                     'numbers are shown to exercise the same tables, the differences mean '
                     'nothing.\n')
    for table in TABLES:
        text = table_markdown(table, rows, results)
        if text:
            parts.append(text)
    counts: dict[str, int] = {}
    for res in results.values():
        counts[res.status] = counts.get(res.status, 0) + 1
    parts.append('Rows: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items())))
    return '\n\n'.join(parts)


def to_json(rows: Sequence[RunRow], results: dict[str, RowResult]) -> list[dict]:
    out = []
    for r in rows:
        res = results[r.key]
        out.append(dict(key=r.key, table=r.table, method=r.method, backbone=r.backbone,
                        config=r.config,
                        published=asdict(r.published) if r.published else None,
                        also=[asdict(a) for a in r.also], result=asdict(res)))
    return out


def save_chart(rows: Sequence[RunRow], results: dict[str, RowResult], path: str,
               demo: bool = False) -> None:
    """One panel per table and metric: the published and the reproduced value of each row, the
    difference above the bar, the row's state where it has no result."""
    # A Figure of its own, not pyplot's: the caller's matplotlib backend stays as it is.
    from matplotlib.figure import Figure
    short = {'bbox_mAP': 'box AP', 'segm_mAP': 'mask AP', 'mIoU': 'mIoU'}
    panels = [(t, m) for t in TABLES if any(r.table == t for r in rows) for m in TABLES[t][1]]
    fig = Figure(figsize=(11, 3.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (table, metric) in zip(axes[:, 0], panels):
        trs = [r for r in rows if r.table == table]
        pub = [r.published.values.get(metric) if r.published else None for r in trs]
        ours = [results[r.key].metrics.get(metric) if results[r.key].status == 'finished'
                else None for r in trs]
        xs = list(range(len(trs)))
        w = 0.4
        ax.bar([x - w / 2 for x in xs], [v or 0 for v in pub], w, label='published',
               color='#9aa7b8')
        ax.bar([x + w / 2 for x in xs], [v or 0 for v in ours], w, label='reproduced',
               color='#d9822b')
        for x, r, p, o in zip(xs, trs, pub, ours):
            if o is None:
                ax.text(x + w / 2, 0.5, results[r.key].status, ha='center', va='bottom',
                        fontsize=6, rotation=90)
            elif p is not None:
                ax.text(x + w / 2, o, f'{o - p:+.1f}', ha='center', va='bottom', fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([f'{r.method}\n{r.backbone}' for r in trs], fontsize=6,
                           rotation=20, ha='right')
        ax.set_ylabel(short[metric])
        ax.set_title(f'{TABLES[table][0]}: {short[metric]}'
                     + (' (demo: miniature runs)' if demo else ''), fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def write_outputs(rows: Sequence[RunRow], results: dict[str, RowResult], out_dir: str,
                  demo: bool = False) -> dict[str, str]:
    """``results.md``, ``results.json`` and ``results.png`` in ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f'results.{ext}') for ext in ('md', 'json', 'png')}
    with open(paths['md'], 'w') as f:
        f.write(render_markdown(rows, results, demo) + '\n')
    with open(paths['json'], 'w') as f:
        json.dump(to_json(rows, results), f, indent=2)
    save_chart(rows, results, paths['png'], demo)
    return paths
