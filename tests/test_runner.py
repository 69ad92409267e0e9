"""The runner's GPU-dependent decisions, tested on CPU by stating what CUDA would report."""
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
