"""The runner's GPU-dependent decisions, tested on CPU by stating what CUDA would report, and
its checks of options and checkpoints before a run starts."""
import os.path as osp

import pytest
import torch

from resnest_mm import runner as rr

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'faster_rcnn_resnest50_fpn.py')


def test_amp_needs_cuda_and_names_it():
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(ValueError, match='--amp needs a CUDA GPU'):
        rr.load_config(CONFIG, amp=True)


def test_amp_switches_to_amp_optim_wrapper_with_dynamic_loss_scale(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = rr.load_config(CONFIG, amp=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.optim_wrapper.optimizer.lr == 0.02  # the rest of the wrapper is kept


@pytest.mark.parametrize('launcher,cuda,changed', [
    ('none', False, True), ('none', True, True),  # one process: nothing to synchronise over
    ('pytorch', False, True),  # DDP over gloo on CPUs: torch's SyncBN is GPU-only
    ('pytorch', True, False), ('slurm', True, False),  # DDP on GPUs: real SyncBN
])
def test_sync_bn_kept_only_under_gpu_ddp(monkeypatch, launcher, cuda, changed):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    cfg = rr.load_config(CONFIG)
    messages = []
    count = rr.adapt_sync_bn(cfg, launcher=launcher, warn=messages.append)
    norms = [cfg.model.backbone.norm_cfg.type, cfg.model.neck.norm_cfg.type,
             cfg.model.roi_head.bbox_head.norm_cfg.type]
    if changed:
        assert count >= 3 and norms == ['BN'] * 3
        assert len(messages) == 1 and 'SyncBN -> BN' in messages[0]
    else:
        assert count == 0 and norms == ['SyncBN'] * 3 and not messages


def test_resume_and_launcher_options():
    cfg = rr.load_config(CONFIG, resume='auto', launcher='pytorch', work_dir='/tmp/w')
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.launcher == 'pytorch' and cfg.work_dir == '/tmp/w'
    with pytest.raises(ValueError, match="launcher='mpich'"):
        rr.load_config(CONFIG, launcher='mpich')
    with pytest.raises(FileNotFoundError, match='resume checkpoint'):
        rr.load_config(CONFIG, resume='/nonexistent/iter_4.pth')


def test_shutdown_distributed_destroys_the_process_group(tmp_path):
    import torch.distributed as dist
    rr.shutdown_distributed()  # no group: nothing to do
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    assert dist.is_initialized()
    rr.shutdown_distributed()
    assert not dist.is_initialized()


@pytest.mark.parametrize('key, message', [
    ('trian_cfg.max_iters', "the config has no 'trian_cfg' and the runner does not read it"),
    ('data_root', "'data_root' is a variable of the config file, already substituted"),
])
def test_cfg_options_that_would_be_ignored_are_refused(key, message):
    with pytest.raises(ValueError, match=message):
        rr.load_config(CONFIG, cfg_options={key: 1})
    # Keys the runner reads may be new to the config.
    cfg = rr.load_config(CONFIG, cfg_options={'randomness.seed': 3, 'train_cfg.max_epochs': 2})
    assert cfg.randomness.seed == 3 and cfg.train_cfg.max_epochs == 2


def test_work_dir_and_checkpoint_options_are_checked(tmp_path):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    with pytest.raises(ValueError, match='is a file; expected a folder'):
        rr.load_config(CONFIG, work_dir=str(a_file))
    with pytest.raises(ValueError, match="work_dir='' is empty"):
        rr.load_config(CONFIG, work_dir='')
    with pytest.raises(FileNotFoundError, match='load_from checkpoint .*nope.pth'):
        rr.load_config(CONFIG, cfg_options={'load_from': str(tmp_path / 'nope.pth')})



def test_a_fine_tuning_configs_load_from_gives_way_to_resume_and_test(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(rr, 'print_log', lambda msg, **kw: logged.append(msg))
    start = tmp_path / 'coco_detector.pth'
    start.write_text('')
    config = tmp_path / 'finetune.py'  # as MMDetection's fine-tuning configs do
    config.write_text(f'_base_ = {CONFIG!r}\nload_from = {str(start)!r}\nresume = True\n')
    config = str(config)
    work = tmp_path / 'work'
    # --resume before the first checkpoint: the fine-tuning starts from load_from.
    cfg = rr.load_config(config, resume='auto', work_dir=str(work))
    assert not cfg.resume and cfg.load_from == str(start)
    # ... and once the run has one, resumes from it, even with the starting file gone.
    work.mkdir()
    (work / 'iter_2.pth').write_text('')
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    start.unlink()
    cfg = rr.load_config(config, resume='auto', work_dir=str(work))
    assert cfg.resume and cfg.load_from == str(work / 'iter_2.pth')
    # A checkpoint to test or to resume from replaces it, with a warning.
    cfg = rr.load_config(config, load_from=str(work / 'iter_2.pth'))
    assert cfg.load_from == str(work / 'iter_2.pth')
    cfg = rr.load_config(config, resume=str(work / 'iter_2.pth'))
    assert cfg.resume and cfg.load_from == str(work / 'iter_2.pth')
    assert f'--resume: no checkpoint in {str(work)!r}; training starts from ' in logged[0]
    assert any(f'load_from={str(start)!r} is not used: testing' in m for m in logged)
    # Named on the command line beside another checkpoint, one of them would be dropped.
    with pytest.raises(ValueError, match='both name a checkpoint'):
        rr.load_config(CONFIG, cfg_options={'load_from': str(work / 'iter_2.pth')},
                       resume='auto')
    with pytest.raises(ValueError, match='both name a checkpoint'):
        rr.load_config(CONFIG, cfg_options={'load_from': str(work / 'iter_2.pth')},
                       load_from=str(work / 'iter_2.pth'))


@pytest.mark.parametrize('options, message', [
    ({'launcher': 'pytorch'}, 'give --launcher instead'),
    ({'strategy.type': 'DDPStrategy'}, "only FlexibleRunner reads strategy; set runner_type"),
    ({'strategy.type': 'DDPStrategy', 'runner_type': 'Runner'}, 'only FlexibleRunner reads'),
])
def test_options_the_tools_would_override_or_ignore_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        rr.load_config(CONFIG, cfg_options=options)


def test_options_mmengine_reads_are_accepted_and_imports_happen():
    import sys
    sys.modules.pop('json.tool', None)
    cfg = rr.load_config(CONFIG, cfg_options={
        'sync_bn': 'torch', 'runner_type': 'FlexibleRunner', 'strategy.type': 'DDPStrategy',
        'custom_imports.imports': ['json.tool']})
    assert cfg.sync_bn == 'torch' and cfg.strategy.type == 'DDPStrategy'
    assert 'json.tool' in sys.modules


def test_scoped_datasets_resolve_without_custom_imports():
    # mmengine imports resnest_mm.registry for a 'resnest_mm.' name; that must reach them.
    import subprocess
    import sys
    # A detection run imports no MMSegmentation for it, and a toolbox imported later is found.
    code = ('import sys\n'
            'from mmengine.registry import DefaultScope\n'
            'import mmdet.registry as D\n'
            'with DefaultScope.overwrite_default_scope("mmdet"):\n'
            '    print(D.DATASETS.get("resnest_mm.CheckedCocoDataset").__name__)\n'
            'print("mmseg" in sys.modules)\n'
            'import mmseg.registry as S\n'
            'with DefaultScope.overwrite_default_scope("mmseg"):\n'
            '    print(S.TRANSFORMS.get("resnest_mm.CheckSegLabels").__name__)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ['CheckedCocoDataset', 'False', 'CheckSegLabels']


def test_checkpoint_must_fit_the_model(tmp_path):
    from resnest_mm.checkpoint import CheckpointMismatchError
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = str(tmp_path / 'c.pth')
    state = dict(model.state_dict())
    # A DDP prefix is fine (mmengine strips it), as in mmengine's own checkpoints.
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}}, path)
    rr.check_checkpoint_fits(model, path, what='checkpoint')
    bad = dict(state, extra=torch.zeros(1))
    del bad['1.running_var']
    bad['0.weight'] = torch.zeros(4, 3, 5, 5)
    torch.save({'state_dict': bad}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        rr.check_checkpoint_fits(model, path, what='checkpoint')
    text = str(err.value)
    assert '1 missing: 1.running_var' in text and '1 unexpected: extra' in text
    assert '0.weight: (4, 3, 5, 5) in the file, (4, 3, 3, 3) in the model' in text
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    with pytest.raises(CheckpointMismatchError, match='cannot be read as a checkpoint'):
        rr.check_checkpoint_fits(model, str(tmp_path / 'text.pth'), what='checkpoint')


def test_safe_loading_keeps_process_wide_allowances(tmp_path):
    from resnest_mm.checkpoint import safe_torch_load
    before = torch.serialization.get_safe_globals()
    try:
        rr.enable_safe_checkpoint_loading()
        allowed = torch.serialization.get_safe_globals()
        torch.save({'a': torch.zeros(1)}, tmp_path / 'x.pth')
        safe_torch_load(str(tmp_path / 'x.pth'))
        # torch's safe_globals context removes its list on exit; ours must not undo the tools'.
        # (torch keeps them in a set: compared as one, in any order.)
        assert set(torch.serialization.get_safe_globals()) == set(allowed)
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_checkpoint_fit_check_sees_through_test_time_augmentation(tmp_path):
    from mmengine.model import BaseTTAModel

    class TTA(BaseTTAModel):
        def merge_preds(self, data_samples_list):
            return data_samples_list

    class Model(torch.nn.Sequential):
        def test_step(self, data):
            return data

    model = Model(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = str(tmp_path / 'c.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    rr.check_checkpoint_fits(TTA(module=model), path, what='checkpoint')
    # Under DDP (a multi-process --tta test) the wrapper holds the TTA model.
    rr.check_checkpoint_fits(torch.nn.DataParallel(TTA(module=model)), path, what='checkpoint')


def test_efficient_conv_bn_eval_is_refused_only_where_it_would_trace_our_backbone():
    for names in ('backbone', ['neck', 'backbone.layer1'], ['']):
        with pytest.raises(ValueError, match='not supported with resnest_mm.ResNeSt: mmengine '
                                             'traces .* with torch.fx'):
            rr.load_config(CONFIG, cfg_options={'efficient_conv_bn_eval': names})
    cfg = rr.load_config(CONFIG, cfg_options={'efficient_conv_bn_eval': ['neck']})
    assert cfg.efficient_conv_bn_eval == ['neck']


def test_no_metrics_names_the_evaluations_that_give_none():
    # format_only (results written, not scored) runs the test and returns no metrics.
    text = rr.format_metrics({}, title='test metrics')
    assert text.startswith('test metrics: none (no evaluation ran, or the evaluator returned')
    assert 'format_only' in text


def _buffers_worker(rank: int, world: int, folder: str) -> None:
    import types
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{folder}/store', rank=rank,
                            world_size=world)
    try:
        rr._register_cpu_ddp()
        from mmengine.registry import HOOKS
        hook = HOOKS.build(dict(type='BuffersFromRankZeroHook'))
        norm = torch.nn.BatchNorm2d(3)
        norm.train()(torch.randn(4, 3, 2, 2) + 10 * rank)  # each rank's own statistics
        hook.before_val_epoch(types.SimpleNamespace(model=norm))
        torch.save(dict(norm.named_buffers()), f'{folder}/rank{rank}.pth')
    finally:
        dist.destroy_process_group()


def test_cpu_ddp_validates_with_rank_zeros_norm_statistics(tmp_path):
    # Each process of CPU DDP (SyncBN runs as BN there) trains its own BN statistics; the
    # checkpoint holds rank 0's, and validation on the other ranks used their own (the demo
    # config's final validation differed from a test of the checkpoint it had just saved).
    import torch.multiprocessing as mp
    cfg = rr.load_config(CONFIG, launcher='pytorch')
    import torch.distributed as dist
    if not torch.cuda.is_available():
        dist.init_process_group('gloo', init_method=f'file://{tmp_path}/cfg_store', rank=0,
                                world_size=1)
        try:
            rr.setup_cpu_distributed(cfg)
        finally:
            dist.destroy_process_group()
        assert dict(type='BuffersFromRankZeroHook') in cfg.custom_hooks
    mp.spawn(_buffers_worker, args=(2, str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f'rank{r}.pth') for r in range(2)]
    assert got[0]['running_mean'].abs().max() < 0.5  # rank 0's, not rank 1's (about 1.0)
    for name in got[0]:
        assert torch.equal(got[0][name], got[1][name]), name


def test_demo_data_written_by_the_tools_gets_the_usual_permissions(tmp_path, monkeypatch):
    # Written in a temporary folder and renamed: mkdtemp's private 0700 stayed on the data set.
    import os
    import stat
    monkeypatch.setattr(rr, '_demo_writers', lambda: {
        'demo_ade': lambda root: open(os.path.join(root, 'x.txt'), 'w').close()})
    old = os.umask(0o022)
    try:
        assert rr.ensure_demo_data('demo_ade', str(tmp_path / 'demo_ade'))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'demo_ade').st_mode) == 0o755
    assert (tmp_path / 'demo_ade' / 'x.txt').is_file()


def test_metrics_print_alike_whatever_scalar_type_the_evaluator_returns():
    import numpy as np
    # mmseg's IoUMetric returns numpy scalars (float32 here), others Python floats.
    text = rr.format_metrics({'aAcc': np.float32(80.5), 'mIoU': np.float64(45.85),
                              'mAcc': np.float32(55.29), 'mDice': np.float32(60.5),
                              'count': np.int64(3), 'extra': 0.5, 'note': 'x'})
    assert text.splitlines() == ['final metrics:', '  mIoU (%): 45.8500',
                                 '  mean class accuracy (%): 55.2900',
                                 '  pixel accuracy (%): 80.5000', '  mDice: 60.5000',
                                 '  count: 3', '  extra: 0.5000', '  note: x']


LAUNCH_VARS = [v for names in rr.LAUNCH_VARIABLES.values() for v in names]


@pytest.mark.parametrize('launcher,cuda,env,message', [
    ('slurm', False, {}, "--launcher slurm on a machine without CUDA: only 'pytorch'"),
    ('mpi', False, {}, "--launcher mpi on a machine without CUDA"),
    ('slurm', True, {}, r"--launcher slurm: the environment lacks \['SLURM_PROCID', "
                        r"'SLURM_NTASKS', 'SLURM_NODELIST'\], which srun"),
    ('mpi', True, {'OMPI_COMM_WORLD_RANK': '0', 'OMPI_COMM_WORLD_SIZE': '2',
                   'OMPI_COMM_WORLD_LOCAL_RANK': '0'}, r"lacks \['MASTER_ADDR'\]"),
    ('pytorch', False, {'LOCAL_RANK': '0'},
     r"--launcher pytorch: the environment lacks \['RANK', 'WORLD_SIZE', 'MASTER_ADDR', "
     r"'MASTER_PORT'\], which torchrun"),
    ('pytorch', False, {'RANK': 'one', 'WORLD_SIZE': '2', 'LOCAL_RANK': '0',
                        'MASTER_ADDR': 'h', 'MASTER_PORT': '1'}, "RANK='one' is not a process"),
])
def test_a_process_not_started_by_its_launcher_is_named_before_any_work(
        monkeypatch, launcher, cuda, env, message):
    # mmengine failed while building the runner, reported as a config error: "the train run
    # cannot be set up from the config: KeyError: 'SLURM_PROCID'".
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(rr.LaunchError, match=message):
        rr.check_launch_environment(launcher)
    cfg = rr.load_config(CONFIG, launcher=launcher)
    with pytest.raises(rr.LaunchError, match=message):
        rr.train(cfg)  # the library path checks too, before the runner is built


def test_a_process_started_by_its_launcher_passes_and_knows_its_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    rr.check_launch_environment('none')
    assert rr.launch_rank('none') == 0
    monkeypatch.setenv('RANK', '2')  # torchrun with --launcher none by mistake: still one writer
    assert rr.launch_rank('none') == 2 and rr.launch_rank('pytorch') == 2
    monkeypatch.delenv('RANK')
    monkeypatch.setenv('SLURM_PROCID', '3')
    monkeypatch.setenv('SLURM_NTASKS', '4')
    monkeypatch.setenv('SLURM_NODELIST', 'node[1-2]')
    rr.check_launch_environment('slurm')
    # Slurm and MPI ranks are known before mmengine sets RANK (when the runner is built).
    assert rr.launch_rank('slurm') == 3 and rr.launch_rank('pytorch') == 0
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '5')
    assert rr.launch_rank('mpi') == 5


def test_demo_data_is_written_by_rank_zero_of_any_launcher(tmp_path, monkeypatch):
    # Under Slurm every task saw rank 0 (RANK is not set yet) and wrote the data at once:
    # all but the first crashed renaming into the folder the first had made.
    demo = osp.join(ROOT, 'configs', 'demo', 'deeplabv3_resnest14-d8_demo-ade.py')
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('SLURM_PROCID', '1')
    root = str(tmp_path / 'demo_ade')
    cfg = rr.load_config(demo, launcher='slurm', cfg_options={
        f'{split}_dataloader.dataset.data_root': root for split in ('train', 'val', 'test')})
    seen = []

    def ensure(kind, root, *, rank=None, timeout_s=600):
        seen.append((kind, rank))
        raise KeyboardInterrupt  # stop before the data checks

    monkeypatch.setattr(rr, 'ensure_demo_data', ensure)
    with pytest.raises(KeyboardInterrupt):
        rr.prepare_data(cfg, mode='train')
    assert seen == [('demo_ade', 1)]
    monkeypatch.undo()
    # A rank other than 0 waits for rank 0's folder, and says where it would come from.
    with pytest.raises(TimeoutError, match=r"rank 1: .* did not appear in 0 s \(rank 0 writes"):
        rr.ensure_demo_data('demo_ade', root, rank=1, timeout_s=0.3)
    assert not (tmp_path / 'demo_ade').exists()


def _local_scheme(tmp_path):
    """A URL scheme mmengine's CheckpointLoader reads from ``tmp_path`` (as https:// would read
    from a server), so that URL checkpoints are tested without a network."""
    from mmengine.runner import CheckpointLoader

    def load(filename, map_location):
        return torch.load(tmp_path / filename.split('://', 1)[1], map_location=map_location)

    CheckpointLoader.register_scheme(prefixes='resnestmm-test://', loader=load, force=True)
    return 'resnestmm-test://'


def test_checkpoint_urls_are_accepted_and_checked_like_files(tmp_path):
    # tools/test.py, --resume and load_from refused a URL ("does not exist"), which mmengine
    # (and MMDetection's test.py) reads; it is now read and held to the same fit check.
    from resnest_mm.models import build_backbone
    url = _local_scheme(tmp_path)
    cfg = rr.load_config(CONFIG, load_from=url + 'ckpt.pth')
    assert cfg.load_from == url + 'ckpt.pth'
    cfg = rr.load_config(CONFIG, resume='https://example.com/iter_4.pth')
    assert cfg.resume is True and cfg.load_from == 'https://example.com/iter_4.pth'
    model = build_backbone('resnet18', base_channels=4)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'ckpt.pth')
    rr.check_checkpoint_fits(model, url + 'ckpt.pth', what='checkpoint')
    other = build_backbone('resnet18', base_channels=8)
    with pytest.raises(rr.CheckpointMismatchError, match=r"checkpoint 'resnestmm-test://ckpt.pth'"
                                                         r" does not fit .* wrongly shaped"):
        rr.check_checkpoint_fits(other, url + 'ckpt.pth', what='checkpoint')


SEG_CONFIG = osp.join(ROOT, 'configs', 'deeplabv3_resnest50_ade20k.py')


def test_test_output_options_take_each_toolboxs_meaning(monkeypatch):
    logged = []
    monkeypatch.setattr(rr, 'print_log', lambda msg, **kw: logged.append(msg))
    cfg = rr.load_config(CONFIG)
    rr.add_test_outputs(cfg, out='preds.pkl', show=True, show_dir='vis', wait_time=0.5)
    assert cfg.test_evaluator[-1] == dict(type='DumpDetResults', out_file_path='preds.pkl')
    assert cfg.test_evaluator[0].type == 'CocoMetric'  # kept, not replaced
    hook = cfg.default_hooks.visualization
    assert (hook.draw, hook.show, hook.wait_time, hook.test_out_dir) == (True, True, 0.5, 'vis')
    with pytest.raises(ValueError, match=r"--out 'preds.json': .* expected a name ending in "
                                         r"'\.pkl' or '\.pickle'"):
        rr.add_test_outputs(rr.load_config(CONFIG), out='preds.json')
    cfg = rr.load_config(CONFIG, cfg_options={'default_hooks.visualization': None})
    with pytest.raises(ValueError, match=r"the config has none; add default_hooks\.visualization="
                                         r"dict\(type='DetVisualizationHook'\)"):
        rr.add_test_outputs(cfg, show_dir='vis')
    cfg = rr.load_config(SEG_CONFIG)
    assert not logged
    rr.add_test_outputs(cfg, out='maps', show_dir='vis')
    assert (cfg.test_evaluator.output_dir, cfg.test_evaluator.keep_results) == ('maps', True)
    assert cfg.visualizer.save_dir == 'vis' and cfg.default_hooks.visualization.draw is True
    # MMSegmentation's hook draws every 50th batch only: said, with the way to draw all.
    assert len(logged) == 1 and 'every 50th test batch only' in logged[0]
    assert 'default_hooks.visualization.interval=1 draws all' in logged[0]
    # Any metric gets the folder, as in MMSegmentation's test.py (CityscapesMetric writes there).
    cfg = rr.load_config(SEG_CONFIG, cfg_options={
        'test_evaluator': [dict(type='IoUMetric'), dict(type='CityscapesMetric', output_dir='x')],
        'default_hooks.visualization.interval': 1})
    rr.add_test_outputs(cfg, out='maps', show_dir='vis')
    assert [(m.output_dir, m.keep_results) for m in cfg.test_evaluator] == [('maps', True)] * 2
    assert len(logged) == 1  # interval 1: nothing to warn about
    rr.add_test_outputs(cfg)  # nothing asked, nothing changed
    assert cfg.default_hooks.visualization.get('show') is None


def test_auto_scale_lr_option_needs_the_configs_base_batch_size():
    assert rr.load_config(CONFIG).auto_scale_lr.enable is False
    cfg = rr.load_config(CONFIG, auto_scale_lr=True)
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    with pytest.raises(ValueError, match=r'--auto-scale-lr needs auto_scale_lr=dict\('
                                         r'base_batch_size=N\) .* it has auto_scale_lr=None'):
        rr.load_config(CONFIG, auto_scale_lr=True, cfg_options={'auto_scale_lr': None})


def test_tta_without_the_configs_own_takes_mmdetections_defaults_for_detection():
    # It was refused ("--tta needs ['tta_model', 'tta_pipeline']"); MMDetection's test.py
    # falls back to a flip TTA merged by NMS, and so does this now. MMSegmentation's does not.
    cfg = rr.load_config(CONFIG)
    test_pipeline = [dict(step) for step in cfg.test_dataloader.dataset.pipeline]
    rr.use_tta(cfg)
    assert cfg.model.type == 'DetTTAModel' and cfg.model.module.backbone.type.endswith('ResNeSt')
    assert cfg.model.tta_cfg == dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert [dict(s) for s in pipeline[:-1]] == test_pipeline[:-1]
    flips, pack = pipeline[-1].transforms
    assert pipeline[-1].type == 'TestTimeAug' and [f['prob'] for f in flips] == [1.0, 0.0]
    assert pack[0].type == 'PackDetInputs' and 'flip_direction' in pack[0].meta_keys
    cfg = rr.load_config(CONFIG)
    cfg.test_dataloader.dataset.pipeline = test_pipeline[:-1]
    with pytest.raises(ValueError, match='does not end in PackDetInputs'):
        rr.use_tta(cfg)
    cfg = rr.load_config(SEG_CONFIG, cfg_options={'tta_model': None})
    with pytest.raises(ValueError, match=r"--tta needs \['tta_model'\] in the config"):
        rr.use_tta(cfg)
    # Masks: DetTTAModel asserted at the first test batch (a traceback, exit status 1).
    cfg = rr.load_config(osp.join(ROOT, 'configs', 'mask_rcnn_resnest50_fpn.py'))
    with pytest.raises(ValueError, match="DetTTAModel does not merge masks"):
        rr.use_tta(cfg)


def test_load_from_strict_is_a_boolean_and_only_relaxes_load_from(tmp_path, monkeypatch):
    from resnest_mm.models import build_backbone
    cfg = rr.load_config(CONFIG, cfg_options={'load_from_strict': 'no'})
    with pytest.raises(rr.RunSetupError, match="load_from_strict='no' is not valid"):
        rr.train(cfg)
    model, other = (build_backbone('resnet18', base_channels=c) for c in (4, 8))
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'c.pth')
    logged = []
    monkeypatch.setattr(rr, 'print_log', lambda msg, **kw: logged.append(msg))
    rr.check_checkpoint_fits(other, str(tmp_path / 'c.pth'), what='load_from', strict=False)
    assert len(logged) == 1 and 'wrongly shaped' in logged[0]
    with pytest.raises(rr.CheckpointMismatchError, match='set load_from_strict=False'):
        rr.check_checkpoint_fits(other, str(tmp_path / 'c.pth'), what='load_from')
    with pytest.raises(rr.CheckpointMismatchError) as err:
        rr.check_checkpoint_fits(other, str(tmp_path / 'c.pth'), what='resume')
    assert 'set load_from_strict' not in str(err.value)  # a resume must fit


def test_http_checkpoints_are_loaded_weights_only(http_folder):
    # mmengine downloads with torch.hub.load_state_dict_from_url, whose weights_only defaults
    # to False: a URL checkpoint was unpickled whole where the same file on disk is refused.
    import argparse
    import numpy as np
    from mmengine.runner import CheckpointLoader
    from resnest_mm.models import build_backbone
    serve, url = http_folder
    model = build_backbone('resnet18', base_channels=4)
    # numpy metadata, as mmengine checkpoints hold: on the allow-list.
    torch.save({'state_dict': model.state_dict(), 'meta': {'lr': np.float64(0.1)}},
               serve / 'ok.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': argparse.Namespace(x=1)},
               serve / 'unsafe.pth')
    rr.check_checkpoint_fits(model, url + 'ok.pth', what='checkpoint')
    with pytest.raises(rr.CheckpointMismatchError,
                       match=r"(?s)cannot be read as a checkpoint: UnpicklingError: .*Namespace"):
        rr.check_checkpoint_fits(model, url + 'unsafe.pth', what='checkpoint')
    # The runner's own load (mmengine's http loader) is the same safe one now.
    with pytest.raises(Exception, match='Namespace'):
        CheckpointLoader.load_checkpoint(url + 'unsafe.pth', map_location='cpu')


def test_a_shorter_or_longer_run_warns_about_a_schedule_that_keeps_the_old_end(monkeypatch):
    # The demo's cosine decay ended at iteration 600 whatever train_cfg.max_iters became: the
    # last 900 iterations of a 1500-iteration run went at eta_min, without a word.
    demo = osp.join(ROOT, 'configs', 'demo', 'faster_rcnn_resnest14_demo.py')
    logged = []
    monkeypatch.setattr(rr, 'print_log', lambda msg, **kw: logged.append(msg))
    rr.load_config(demo, cfg_options={'train_cfg.max_iters': 1500})
    assert logged == ['--cfg-options train_cfg.max_iters=1500: param_scheduler.1 '
                      '(CosineAnnealingLR) still ends at iteration 600, where the config\'s '
                      'schedule ended; after it the learning rate stays at its last value. To '
                      'stretch it, also set param_scheduler.1.end=1500 (and what else it derives '
                      'from the length, e.g. T_max or milestones)']
    logged.clear()
    cfg = rr.load_config(demo, cfg_options={'train_cfg.max_iters': 1500,
                                            'param_scheduler.1.end': 1500,
                                            'param_scheduler.1.T_max': 1450})
    assert not logged and cfg.param_scheduler[1].end == 1500
    rr.load_config(CONFIG, cfg_options={'train_cfg.max_epochs': 24})  # MultiStepLR, end=12
    assert len(logged) == 1 and 'param_scheduler.1 (MultiStepLR) still ends at epoch 12' in logged[0]
