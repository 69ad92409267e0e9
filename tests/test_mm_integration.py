"""MMDetection's and MMSegmentation's own configs with the backbone swapped through
``custom_imports``: they build and train a step (what the README shows)."""
import pytest
import torch
from mmengine.config import Config


DET_CONFIG = """
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['resnest_mm.models'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='resnest_mm.ResNeSt', depth=14,
                           norm_eval=False))
"""

SEG_CONFIG = """
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['resnest_mm.models'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)  # one CPU process here; SyncBN on GPUs
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(_delete_=True, type='resnest_mm.ResNeSt', depth=14, norm_cfg=norm_cfg,
                  norm_eval=False, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                  contract_dilation=True),
    decode_head=dict(norm_cfg=norm_cfg), auxiliary_head=dict(norm_cfg=norm_cfg))
"""


def _load(tmp_path, text):
    path = tmp_path / 'user_config.py'
    path.write_text(text)
    cfg = Config.fromfile(str(path))
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    return cfg


def test_mmdet_faster_rcnn_config_with_resnest_trains_a_step(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    register_all_modules()
    cfg = _load(tmp_path, DET_CONFIG)
    model = MODELS.build(cfg.model)
    from resnest_mm.models import ResNeSt
    assert isinstance(model.backbone, ResNeSt)
    model.init_weights()
    h = w = 128
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 10., 60., 70.]]),
                                       labels=torch.tensor([3]))
    data = dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)] * 2,
                data_samples=[sample, sample])
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    from mmengine.optim import OptimWrapper
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    losses = model.train_step(data, OptimWrapper(optim))
    assert torch.isfinite(sum(v for k, v in losses.items() if 'loss' in k))
    # the step reached the backbone (zero-init residuals leave the branch convs for later steps)
    after = dict(model.backbone.named_parameters())
    assert not torch.equal(before['stem.0.weight'], after['stem.0.weight'])
    assert not torch.equal(before['layer4.0.bn3.weight'], after['layer4.0.bn3.weight'])


def test_mmseg_deeplabv3_config_with_resnest_trains_a_step(tmp_path):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    register_all_modules()
    cfg = _load(tmp_path, SEG_CONFIG)
    model = MODELS.build(cfg.model)
    model.init_weights()
    h = w = 64
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
    data = dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)] * 2,
                data_samples=[sample, sample])
    from mmengine.optim import OptimWrapper
    losses = model.train_step(data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert torch.isfinite(losses['decode.loss_ce']) and torch.isfinite(losses['aux.loss_ce'])
    assert model.backbone.out_strides == (4, 8, 8, 8)
