"""The command-line tools end to end, as a user runs them (subprocesses, tiny schedules):
the demo configs train and evaluate through CocoMetric / IoUMetric, a run resumes at the right
iteration, tools/test.py evaluates a saved checkpoint, a 2-process DDP run (gloo, CPU) trains,
and bad data (a missing data set, a malformed annotation file, an out-of-range label map) stops
the run with one clear error."""
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_DEMO = 'configs/demo/faster_rcnn_resnest14_demo.py'
SEG_DEMO = 'configs/demo/deeplabv3_resnest14-d8_demo-ade.py'


def run_tool(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def det_data_options(root: str) -> list[str]:
    root = root.rstrip('/') + '/'
    ann = root + 'annotations/instances_val2017.json'
    return [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')
            ] + [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def tiny_det(root: str, iters: int) -> list[str]:
    return ['--cfg-options', *det_data_options(root), f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={iters}', 'default_hooks.checkpoint.interval=2',
            'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    from resnest_mm.demo_data import make_demo_coco
    root = str(tmp_path_factory.mktemp('data') / 'demo_coco')
    make_demo_coco(root, num_train=6, num_val=3, size=96)
    return root


@pytest.fixture(scope='module')
def trained(coco_root, tmp_path_factory):
    """A 4-iteration demo training run: its work dir and output."""
    work = str(tmp_path_factory.mktemp('work'))
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', work, *tiny_det(coco_root, 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc.stdout + proc.stderr


def test_det_demo_trains_and_evaluates_with_coco_metric(trained):
    work, out = trained
    # The final validation went through CocoMetric and the tool printed its headline.
    assert re.search(r'bbox mAP@0\.5: \d\.\d{4}', out), out[-2000:]
    assert 'coco/bbox_mAP' in out
    assert osp.isfile(osp.join(work, 'iter_4.pth'))
    # One process, BN instead of SyncBN is announced once (the demo is BN already: no warning).
    assert 'Iter(train) [4/4]' in out
    assert 'SyncBN -> BN' not in out


def test_resume_continues_at_the_saved_iteration(trained, coco_root):
    work, _ = trained
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', work, '--resume',
                    *tiny_det(coco_root, 6))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 4' in out, out[-2000:]
    # Training went on from iteration 5, not from the start.
    assert 'Iter(train) [5/6]' in out and 'Iter(train) [1/6]' not in out
    assert osp.isfile(osp.join(work, 'iter_6.pth'))


def test_test_tool_prints_metrics_of_a_saved_checkpoint(trained, coco_root, tmp_path):
    work, _ = trained
    import pickle
    out = str(tmp_path / 'preds.pkl')
    proc = run_tool('tools/test.py', DET_DEMO, osp.join(work, 'iter_4.pth'), '--work-dir',
                    str(tmp_path), '--out', out, '--show-dir', 'vis', *tiny_det(coco_root, 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'test metrics:' in proc.stdout
    assert re.search(r'bbox mAP@0\.5: \d\.\d{4}', proc.stdout)
    # MMDetection's --out (raw predictions) and --show-dir (drawn under <work_dir>/<timestamp>).
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 3 and {'img_id', 'pred_instances'} <= set(preds[0])
    drawn = [n for _, _, names in os.walk(tmp_path) for n in names if n.endswith('.jpg')]
    assert len(drawn) == 3, drawn


def test_test_tool_reads_a_checkpoint_url(trained, coco_root, tmp_path):
    # Refused before ("does not exist"), where MMDetection's test.py lets mmengine read it. A
    # scheme registered at start-up (sitecustomize) serves the work dir, as https:// would.
    work, _ = trained
    (tmp_path / 'sitecustomize.py').write_text(
        'import os, torch\n'
        'from mmengine.runner import CheckpointLoader\n'
        'def load(name, map_location):\n'
        '    path = os.path.join(os.environ["CKPT_DIR"], name.split("://", 1)[1])\n'
        '    return torch.load(path, map_location=map_location, weights_only=False)\n'
        'CheckpointLoader.register_scheme("resnestmm-test://", loader=load)\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CKPT_DIR=work, OMP_NUM_THREADS='1')
    # With --tta: the detection configs have no tta_model; MMDetection's defaults apply.
    proc = subprocess.run([sys.executable, 'tools/test.py', DET_DEMO,
                           'resnestmm-test://iter_4.pth', '--tta', '--work-dir',
                           str(tmp_path / 'w'), *tiny_det(coco_root, 4)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'bbox mAP@0\.5: \d\.\d{4}', proc.stdout)
    out = proc.stdout + proc.stderr
    assert "--tta: the config has no tta_model; using {'type': 'DetTTAModel'" in out
    assert 'TestTimeAug' in out and "type='DetTTAModel'" in out  # the config mmengine logs


def test_a_checkpoint_that_does_not_fit_is_not_loaded(trained, coco_root, tmp_path):
    import torch
    work, _ = trained
    ckpt = torch.load(osp.join(work, 'iter_4.pth'), map_location='cpu', weights_only=False)
    ckpt['state_dict'] = {k: v for k, v in ckpt['state_dict'].items()
                          if not k.startswith('rpn_head.')}
    partial = str(tmp_path / 'partial.pth')
    torch.save(ckpt, partial)
    # mmengine would load the rest, warn, and evaluate or train with a random RPN head.
    for args in (['tools/test.py', DET_DEMO, partial, '--work-dir', str(tmp_path / 't')],
                 ['tools/train.py', DET_DEMO, '--resume', partial, '--work-dir',
                  str(tmp_path / 'r')]):
        proc = run_tool(*args, *tiny_det(coco_root, 6))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{partial!r} does not fit the model of this config" in proc.stderr
        assert 'missing: rpn_head.' in proc.stderr and 'Traceback' not in proc.stderr
    # Fine-tuning from it (a head it does not fit): refused with the way out, which then loads
    # what fits and lists the rest in a warning.
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', str(tmp_path / 'f'),
                    *tiny_det(coco_root, 1), f'load_from={partial}')
    assert proc.returncode == 2 and 'set load_from_strict=False' in proc.stderr, proc.stderr[-2000:]
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', str(tmp_path / 'f'),
                    *tiny_det(coco_root, 1), f'load_from={partial}', 'load_from_strict=False')
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"load_from '.*partial\.pth' does not fit the model of this config "
                     r"\(\d+ missing: rpn_head\..*with load_from_strict=False what fits is", out)


@pytest.mark.parametrize('option, message', [
    ('train_cfg.max_itres=1', "cannot be set up from the config: TypeError: .*'max_itres'"),
    ('train_cfg.max_iters=0', 'nothing to train'),
    ('max_iters=1', "'max_iters' is a variable of the config file"),
    # mmengine would fail at start tracing the backbone with torch.fx.
    ("efficient_conv_bn_eval=['backbone']", r"efficient_conv_bn_eval=\['backbone'\] is not "
                                            r'supported with resnest_mm\.ResNeSt'),
    # mmengine keeps it for Runner.save_checkpoint, which fails on it at the first save.
    ('default_hooks.checkpoint.max_keep_ckpt=2', r"CheckpointHook: unknown argument "
                                                 r"'max_keep_ckpt' \(did you mean "
                                                 r"'max_keep_ckpts'"),
])
def test_config_options_that_cannot_work_are_one_clear_error(coco_root, tmp_path, option,
                                                            message):
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', str(tmp_path / 'w'),
                    *tiny_det(coco_root, 2), option)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(message, proc.stderr) and 'Traceback' not in proc.stderr


def test_dist_scripts_check_the_process_count():
    proc = subprocess.run(['bash', 'tools/dist_train.sh', DET_DEMO, '--work-dir', 'x'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and 'GPUS=--work-dir is not valid' in proc.stderr


def _fake_srun(tmp_path) -> dict:
    """An environment whose ``srun`` prints its arguments (one per line) and MASTER_PORT and
    PYTHONPATH, and a working folder holding a file that an unquoted glob would match."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / 'srun'
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n'
                    'echo "MASTER_PORT=${MASTER_PORT:-unset}"\necho "PYTHONPATH=$PYTHONPATH"\n')
    srun.chmod(0o755)
    (tmp_path / '--exclude=node2').touch()
    env = {k: v for k, v in os.environ.items()
           if k not in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PORT',
                        'MASTER_PORT', 'PYTHONPATH')}
    env['PATH'] = f'{bin_dir}:{env["PATH"]}'
    return env


@pytest.mark.parametrize('args,env,want,unwanted', [
    # No WORK_DIR: nothing in its place (an empty array under set -u failed on bash <= 4.3).
    (['p', 'j', 'cfg.py'], {}, ['--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8',
                                '--cpus-per-task=5', 'cfg.py', '--launcher', 'slurm',
                                'MASTER_PORT=unset', f'PYTHONPATH={ROOT}'], ['--work-dir']),
    (['p', 'j', 'cfg.py', 'work', '--amp'], {}, ['--work-dir', 'work', '--amp'], []),
    # An option is not a WORK_DIR; fewer tasks than a node's GPUs ask for those GPUs only.
    (['p', 'j', 'cfg.py', '-h'], {'GPUS': '2'}, ['-h', '--gres=gpu:2', '--ntasks=2',
                                                 '--ntasks-per-node=2'], ['--work-dir']),
    # SRUN_ARGS split into words but not glob-expanded; PORT is mmengine's MASTER_PORT.
    (['p', 'j', 'cfg.py'], {'SRUN_ARGS': '--exclude=node[1-3] --time 5', 'PORT': '29611'},
     ['--exclude=node[1-3]', '--time', '5', 'MASTER_PORT=29611'], ['--exclude=node2']),
])
def test_slurm_train_script_passes_what_srun_needs(tmp_path, args, env, want, unwanted):
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'slurm_train.sh'), *args],
                          cwd=tmp_path, env=dict(_fake_srun(tmp_path), **env),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert not [w for w in want if w not in lines], lines
    assert not [u for u in unwanted if u in lines], lines
    assert lines[lines.index('-u') + 1] == osp.join(ROOT, 'tools', 'train.py')


def test_slurm_scripts_check_their_counts(tmp_path):
    for script, args in (('slurm_train.sh', ['p', 'j', 'cfg.py']),
                         ('slurm_test.sh', ['p', 'j', 'cfg.py', 'ckpt.pth'])):
        for name, value in (('GPUS', '0'), ('GPUS_PER_NODE', 'x'), ('CPUS_PER_TASK', '-1')):
            proc = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args],
                                  cwd=tmp_path, env=dict(_fake_srun(tmp_path), **{name: value}),
                                  capture_output=True, text=True)
            assert proc.returncode == 2 and not proc.stdout, (script, name, proc.stdout)
            assert f'{name}={value} is not valid; expected a number >= 1' in proc.stderr
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'slurm_test.sh'), 'p', 'j', 'c.py',
                           'k.pth', '--tta'], cwd=tmp_path, env=_fake_srun(tmp_path),
                          capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[lines.index('-u') + 1:lines.index('-u') + 7] == [
        osp.join(ROOT, 'tools', 'test.py'), 'c.py', 'k.pth', '--launcher', 'slurm', '--tta']


def test_mmdetection_options_reach_the_run(tmp_path):
    # --auto-scale-lr and --out were unknown options (argparse: exit 2, "unrecognized").
    proc = run_tool('tools/train.py', DET_DEMO, '--auto-scale-lr', '--cfg-options',
                    'auto_scale_lr=None')
    assert proc.returncode == 2 and proc.stderr.startswith(
        'error: --auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N)'), proc.stderr
    ckpt = tmp_path / 'c.pth'
    ckpt.touch()
    proc = run_tool('tools/test.py', DET_DEMO, str(ckpt), '--out', 'preds.json')
    assert proc.returncode == 2 and proc.stderr.startswith(
        "error: --out 'preds.json': MMDetection dumps"), proc.stderr


@pytest.mark.parametrize('item, message', [
    # mmengine's parser recursed until Python stopped it: a RecursionError traceback.
    ("model.backbone.init_cfg=dict(type='Pretrained',checkpoint='x.pth')",
     r"the value cannot be read \(RecursionError\); .* not dicts: give a dict key by key"),
    ('train_cfg.max_iters', "'train_cfg.max_iters': expected KEY=VALUE"),
])
def test_unreadable_cfg_options_are_a_usage_error(item, message):
    proc = run_tool('tools/train.py', DET_DEMO, '--cfg-options', item)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r'train\.py: error: --cfg-options .*' + message, proc.stderr), proc.stderr


def test_test_tool_names_a_missing_checkpoint(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    proc = run_tool('tools/test.py', DET_DEMO, missing)
    assert proc.returncode == 2 and missing in proc.stderr


def test_train_tool_names_a_launcher_that_did_not_start_it(tmp_path):
    # Without torchrun: one message before any data is written, not mmengine's KeyError while
    # building the runner reported as a config error.
    root = str(tmp_path / 'demo_coco')
    proc = run_tool('tools/train.py', DET_DEMO, '--launcher', 'pytorch', '--work-dir',
                    str(tmp_path / 'w'), *tiny_det(root, 2))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith('error: --launcher pytorch: the environment lacks'), proc.stderr
    assert "which torchrun (the repository's tools/dist_train.sh" in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not osp.exists(root)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_process_ddp_on_cpu_trains(coco_root, tmp_path):
    work = str(tmp_path / 'ddp')
    proc = run_tool('-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                    str(_free_port()), 'tools/train.py', DET_DEMO, '--launcher', 'pytorch',
                    '--work-dir', work, *tiny_det(coco_root, 2))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    # mmengine's environment report: two processes under torchrun, wrapped for CPU DDP.
    assert 'Distributed launcher: pytorch' in out and 'Distributed training: True' in out
    assert 'GPU number: 2' in out, out[-2000:]  # mmengine's name for the world size
    assert "model_wrapper_cfg = dict(type='CPUDistributedDataParallel')" in out
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
    assert re.search(r'bbox mAP@0\.5: \d\.\d{4}', out)
    assert out.count('final metrics:') == 1  # by the main process only
    proc = run_tool('-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                    str(_free_port()), 'tools/test.py', DET_DEMO, osp.join(work, 'iter_2.pth'),
                    '--launcher', 'pytorch', '--work-dir', work, *tiny_det(coco_root, 2))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (proc.stdout + proc.stderr).count('test metrics:') == 1


def test_missing_dataset_is_one_clear_error(tmp_path):
    root = str(tmp_path / 'nowhere')
    proc = run_tool('tools/train.py', 'configs/faster_rcnn_resnest50_fpn.py', '--work-dir',
                    str(tmp_path / 'w'), '--cfg-options', *det_data_options(root))
    assert proc.returncode == 2
    assert root in proc.stderr and 'demo' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_malformed_annotation_file_is_one_clear_error(coco_root, tmp_path):
    import shutil
    root = str(tmp_path / 'broken')
    shutil.copytree(coco_root, root)
    ann = osp.join(root, 'annotations', 'instances_train2017.json')
    with open(ann) as f:
        data = json.load(f)
    data['annotations'][0]['bbox'] = [1, 2, 3]  # a box needs four numbers
    with open(ann, 'w') as f:
        json.dump(data, f)
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', str(tmp_path / 'w'),
                    *tiny_det(root, 2))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ann in proc.stderr and 'bbox' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_seg_demo_trains_and_evaluates_with_iou_metric(tmp_path):
    from resnest_mm.demo_data import make_demo_ade
    root = str(tmp_path / 'demo_ade')
    make_demo_ade(root, num_train=4, num_val=2, size=64)
    options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    options += [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
                for key in ('num_workers=0', 'persistent_workers=False')]
    proc = run_tool('tools/train.py', SEG_DEMO, '--work-dir', str(tmp_path / 'w'),
                    '--cfg-options', *options, 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                    'train_dataloader.batch_size=2', 'model.data_preprocessor.size=(64,64)',
                    'default_hooks.checkpoint.interval=2')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'mIoU \(%\): \d+\.\d{4}', proc.stdout), proc.stdout[-2000:]
    assert osp.isfile(str(tmp_path / 'w' / 'iter_2.pth'))
    # Test-time augmentation wraps the model; the checkpoint is the plain model's. A config's
    # load_from (a fine-tuning start) gives way to the checkpoint to test, with a warning.
    start = str(tmp_path / 'start.pth')
    os.link(str(tmp_path / 'w' / 'iter_2.pth'), start)
    finetune = tmp_path / 'finetune.py'
    finetune.write_text(f'_base_ = {osp.join(ROOT, SEG_DEMO)!r}\nload_from = {start!r}\n')
    proc = run_tool('tools/test.py', str(finetune), str(tmp_path / 'w' / 'iter_2.pth'), '--tta',
                    '--work-dir', str(tmp_path / 't'), '--out', str(tmp_path / 'maps'),
                    '--show-dir', str(tmp_path / 'vis'), '--cfg-options', *options,
                    'default_hooks.visualization.interval=1')  # mmseg draws every 50th
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'mIoU \(%\): \d+\.\d{4}', proc.stdout), proc.stdout[-2000:]
    assert f'load_from={start!r} is not used: testing' in proc.stdout + proc.stderr
    # MMSegmentation's --out (predicted label maps) and --show-dir (drawn images).
    assert len(os.listdir(tmp_path / 'maps')) == 2
    drawn = [osp.join(d, n) for d, _, names in os.walk(tmp_path / 'vis') for n in names
             if n.endswith('.png')]
    assert len(drawn) == 2 and all('/vis_data/vis_image/' in p for p in drawn), drawn


def test_out_of_range_label_map_is_one_clear_error(tmp_path):
    import glob
    import numpy as np
    from PIL import Image
    from resnest_mm.demo_data import make_demo_ade
    root = str(tmp_path / 'demo_ade')
    make_demo_ade(root, num_train=2, num_val=1, size=64)
    for path in glob.glob(osp.join(root, 'annotations', 'training', '*.png')):
        seg = np.array(Image.open(path))
        seg[0, 0] = 200  # the demo has 5 classes (1..5 in the files)
        Image.fromarray(seg).save(path)
    # One worker process, as the demo config has: the error crosses the DataLoader's wrapping.
    options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    proc = run_tool('tools/train.py', SEG_DEMO, '--work-dir', str(tmp_path / 'w'),
                    '--cfg-options', *options, 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                    'train_dataloader.batch_size=1', 'train_dataloader.num_workers=1',
                    'train_dataloader.persistent_workers=False',
                    'model.data_preprocessor.size=(64,64)')
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(r"error: label map '[^']*training[^']*\.png' is not valid: 1 pixels hold "
                     r"class ids outside 0\.\.4 and the ignore index 255: 199", proc.stderr), \
        proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


def test_a_missing_label_map_is_one_clear_error(tmp_path):
    from resnest_mm.demo_data import make_demo_ade
    root = str(tmp_path / 'demo_ade')
    make_demo_ade(root, num_train=2, num_val=1, size=64)
    os.remove(osp.join(root, 'annotations', 'training', 'demo_00001.png'))
    options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    proc = run_tool('tools/train.py', SEG_DEMO, '--work-dir', str(tmp_path / 'w'),
                    '--cfg-options', *options)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert '1 of 2 images have no label map' in proc.stderr and 'Traceback' not in proc.stderr


def test_run_error_message_drops_a_worker_traceback():
    from torch._utils import ExceptionWrapper
    from resnest_mm.runner import run_error_message
    from resnest_mm.seg_checks import LabelMapError
    try:
        raise LabelMapError("label map 'x.png' is not valid:\n  a second line")
    except LabelMapError:
        wrapped = ExceptionWrapper(where='in DataLoader worker process 0')
    with pytest.raises(LabelMapError) as info:
        wrapped.reraise()  # what the DataLoader does in the main process
    assert 'Original Traceback' in str(info.value)
    assert run_error_message(info.value) == "label map 'x.png' is not valid:\n  a second line"
    assert run_error_message(LabelMapError('plain')) == 'plain'
    # A built-in exception's traceback line has no module (mmcv's image loading in a worker).
    try:
        raise FileNotFoundError(2, 'No such file or directory', '/data/x.jpg')
    except FileNotFoundError:
        wrapped = ExceptionWrapper(where='in DataLoader worker process 0')
    with pytest.raises(FileNotFoundError) as info:
        wrapped.reraise()
    assert 'Original Traceback' in str(info.value)
    assert run_error_message(info.value) == "[Errno 2] No such file or directory: '/data/x.jpg'"


def test_make_demo_data_errors_are_one_line(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    proc = run_tool('tools/make_demo_data.py', '--kind', 'coco', '--root', str(blocker))
    assert proc.returncode == 1 and f"cannot write '{blocker}/demo_coco'" in proc.stderr
    assert 'Traceback' not in proc.stderr
    proc = run_tool('tools/make_demo_data.py', '--kind', 'ade', '--num-train', '0', '--root',
                    str(tmp_path))
    assert proc.returncode == 2 and 'num_train' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_config_that_cannot_merge_is_one_clear_error(tmp_path):
    cfg = tmp_path / 'bad_merge.py'
    cfg.write_text(f"_base_ = {osp.join(ROOT, DET_DEMO)!r}\n"
                   "model = dict(backbone=dict(init_cfg=dict(type='Pretrained')))\n")
    proc = run_tool('tools/train.py', str(cfg))
    assert proc.returncode == 2 and 'cannot be read' in proc.stderr and str(cfg) in proc.stderr
    assert '_delete_=True' in proc.stderr and 'Traceback' not in proc.stderr


def test_train_tool_rejects_a_config_of_another_toolbox(tmp_path):
    cfg = tmp_path / 'other.py'
    cfg.write_text("default_scope = 'mmpretrain'\n")
    proc = run_tool('tools/train.py', str(cfg))
    assert proc.returncode == 2 and "default_scope='mmpretrain'" in proc.stderr


def test_missing_imagenet_checkpoint_is_one_clear_error(coco_root, tmp_path):
    missing = str(tmp_path / 'resnest14.pth')
    cfg = tmp_path / 'pretrained_demo.py'
    cfg.write_text(f"_base_ = {osp.join(ROOT, DET_DEMO)!r}\n"
                   f"model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained', "
                   f"checkpoint={missing!r})))\n")
    proc = run_tool('tools/train.py', str(cfg), '--work-dir', str(tmp_path / 'w'),
                    *tiny_det(coco_root, 2))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"model.backbone.init_cfg.checkpoint='{missing}' does not exist" in proc.stderr
    assert 'configs/README.md' in proc.stderr and 'Traceback' not in proc.stderr


def test_mmdetections_own_train_tool_runs_our_config(coco_root, tmp_path):
    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    if not osp.isfile(tool):
        pytest.skip('this mmdet wheel ships no tools/')
    proc = run_tool(tool, DET_DEMO, '--work-dir', str(tmp_path / 'w'), *tiny_det(coco_root, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert osp.isfile(str(tmp_path / 'w' / 'iter_2.pth'))
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
