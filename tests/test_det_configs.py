"""Every detection config under configs/ loads, builds through MMDetection's registry with the
resnest_mm backbone it names, takes a training step and runs inference on tiny inputs; the data
set bases read COCO-format files through their pipelines."""
import glob
import os
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config

from .conftest import assert_same_architecture

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FULL_CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '*_fpn.py')))
DEMO_CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', 'demo', '*rcnn*.py')))
EXPECTED = {
    f'configs/{det}_{bb}_fpn.py'
    for det in ('faster_rcnn', 'cascade_rcnn', 'mask_rcnn', 'cascade_mask_rcnn')
    for bb in ('resnet50', 'resnet101', 'resnest50', 'resnest101')
} | {f'configs/{det}_{bb}_fpn.py' for det in ('faster_rcnn', 'mask_rcnn')
     for bb in ('resnext101_32x4d', 'res2net101')}
BACKBONE = {'resnet': 'ResNet', 'resnest': 'ResNeSt', 'resnext': 'ResNeXt', 'res2net': 'Res2Net'}


def _load(path: str) -> Config:
    from resnest_mm.runner import adapt_sync_bn, register_toolbox
    cfg = Config.fromfile(osp.join(ROOT, path))
    register_toolbox(cfg.default_scope)
    adapt_sync_bn(cfg, launcher='none', warn=lambda _msg: None)
    return cfg


def _batch(size: int, with_mask: bool, n: int = 1):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples = []
    for _ in range(n):
        sample = DetDataSample(metainfo=dict(
            img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
            scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
        boxes = torch.tensor([[4., 6., 40., 44.], [30., 20., 60., 62.]])
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 2]))
        if with_mask:
            masks = np.zeros((2, size, size), np.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            sample.gt_instances.masks = BitmapMasks(masks, size, size)
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 255, (3, size, size), dtype=torch.uint8)] * n,
                data_samples=samples)


def test_all_issue_configs_exist():
    assert EXPECTED <= set(FULL_CONFIGS), sorted(EXPECTED - set(FULL_CONFIGS))
    assert DEMO_CONFIGS, 'no detection demo config'


@pytest.mark.parametrize('path', FULL_CONFIGS)
def test_full_config_recipe_builds_and_steps(path):
    from mmdet.registry import MODELS
    from mmengine.optim import OptimWrapper
    raw = Config.fromfile(osp.join(ROOT, path))
    # The recipe as written: SyncBN everywhere, the pretrained backbone file, COCO at data/coco.
    assert raw.default_scope == 'mmdet'
    assert 'resnest_mm.models' in raw.custom_imports.imports
    assert raw.model.backbone.norm_cfg.type == 'SyncBN' and raw.model.neck.norm_cfg.type == 'SyncBN'
    heads = raw.model.roi_head.bbox_head
    for head in heads if isinstance(heads, list) else [heads]:
        assert head.type == 'Shared4Conv1FCBBoxHead' and head.norm_cfg.type == 'SyncBN'
    assert raw.model.backbone.init_cfg.type == 'Pretrained'
    # The ImageNet file of this very network (resnest50-528c19ca.pth, res2net101_v1b_26w_4s-...).
    variant = re.search(r'_(res(?:net|nest|next|2net)\w*?)_fpn\.py$', path).group(1)
    checkpoint = raw.model.backbone.init_cfg.checkpoint
    assert re.fullmatch(rf'checkpoints/{variant}[-_].*\.pth', checkpoint), checkpoint
    # Each row's ImageNet weights with the input convention they were trained on: MSRA's caffe
    # ResNets (the paper's detectron2 baselines) take BGR minus the mean; the others RGB, scaled.
    pre, caffe = raw.model.data_preprocessor, bool(re.search(r'_resnet\d', path))
    assert raw.model.backbone.get('style', 'pytorch') == ('caffe' if caffe else 'pytorch')
    assert bool(re.search(r'_msra-\w+\.pth$', checkpoint)) == caffe, checkpoint
    if caffe:
        assert (pre.mean, pre.std, pre.bgr_to_rgb) == ([103.53, 116.28, 123.675], [1.0] * 3, False)
    else:
        assert (pre.mean, pre.std, pre.bgr_to_rgb) == (
            [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], True)
    assert raw.train_dataloader.dataset.data_root == 'data/coco/'
    assert raw.train_dataloader.batch_size * 8 == 16 and raw.optim_wrapper.optimizer.lr == 0.02
    resize = raw.train_dataloader.dataset.pipeline[2]
    if 'mask' in path:
        assert resize.type == 'RandomChoiceResize' and [s[1] for s in resize.scales] == list(
            range(640, 801, 32))
    else:
        assert resize.type == 'RandomResize' and resize.scale == [(1333, 640), (1333, 800)]
    assert raw.test_dataloader.dataset.pipeline[1].scale == (1333, 800)

    cfg = _load(path)
    assert cfg.model.backbone.norm_cfg.type == 'BN'  # one CPU process
    cfg.model.backbone.init_cfg = None  # the ImageNet file is not here
    model = MODELS.build(cfg.model)
    name = osp.basename(path)
    cls = next(c for key, c in BACKBONE.items() if f'_{key}5' in name or f'_{key}1' in name)
    assert type(model.backbone).__name__ == cls
    assert type(model.backbone).__module__.startswith('resnest_mm.')
    assert_same_architecture(model.backbone, variant)  # depth, groups, widths, scales
    assert model.backbone.out_channels == (256, 512, 1024, 2048)
    assert model.backbone.layer2[0].conv1_stride == (2 if caffe else 1)
    assert model.data_preprocessor.mean.flatten().tolist() == pytest.approx(pre.mean)
    model.init_weights()
    with_mask = 'mask' in path
    data = _batch(64, with_mask, n=2)  # BN in the attention needs 2 values per channel
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = model.train_step(data, optim)
    assert torch.isfinite(losses['loss'])
    assert any('loss_mask' in k for k in losses) == with_mask
    model.eval()
    with torch.no_grad():
        results = model.test_step(_batch(64, with_mask))
    assert len(results) == 1 and 'pred_instances' in results[0]
    assert results[0].pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize('base,with_mask', [('coco_detection', False), ('coco_instance', True)])
def test_dataset_bases_read_coco_files_through_their_pipelines(tmp_path, base, with_mask):
    from mmdet.registry import DATASETS
    from resnest_mm.demo_data import make_demo_coco
    from resnest_mm.runner import register_toolbox
    make_demo_coco(str(tmp_path / 'coco'), num_train=3, num_val=2, size=96)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets', f'{base}.py'))
    register_toolbox('mmdet')
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(['resnest_mm.datasets.coco'])
    for split in ('train_dataloader', 'test_dataloader'):
        ds_cfg = cfg[split].dataset
        ds_cfg.data_root = str(tmp_path / 'coco') + '/'
        ds_cfg.ann_file = ds_cfg.ann_file.replace('instances_', 'instances_')
        ds_cfg.metainfo = dict(classes=('circle', 'square', 'triangle'))
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmdet'):
            dataset = DATASETS.build(ds_cfg)
            item = dataset[0]
        inputs, sample = item['inputs'], item['data_samples']
        # 96-pixel images come out with the shorter side in 640..800
        assert 640 <= min(inputs.shape[1:]) <= 800
        if split == 'train_dataloader':
            assert len(sample.gt_instances) > 0
            assert hasattr(sample.gt_instances, 'masks') == with_mask


def _checked_coco(tmp_path, edit, *, base='coco_detection', split='train_dataloader',
                  classes=('circle', 'square', 'triangle')):
    """CheckedCocoDataset over 3 demo training images whose annotation file ``edit`` changed."""
    import json
    from mmdet.registry import DATASETS
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings
    from resnest_mm.demo_data import make_demo_coco
    from resnest_mm.runner import register_toolbox
    root = tmp_path / 'coco'
    make_demo_coco(str(root), num_train=3, num_val=2, size=64)
    ann = root / 'annotations' / 'instances_train2017.json'
    data = json.loads(ann.read_text())
    edit(data, root)
    ann.write_text(json.dumps(data))
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets', f'{base}.py'))
    register_toolbox('mmdet')
    import_modules_from_strings(['resnest_mm.datasets.coco'])
    ds_cfg = cfg[split].dataset
    ds_cfg.update(data_root=str(root) + '/', ann_file='annotations/instances_train2017.json',
                  data_prefix=dict(img='train2017/'), metainfo=dict(classes=classes))
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(ds_cfg)


def _drop(key):
    def edit(data, root):
        for ann in data['annotations']:
            ann.pop(key)
    return edit


@pytest.mark.parametrize('edit, kwargs, error, message', [
    # CocoDataset numbers labels in the file's category order: another order mislabels.
    (lambda d, r: None, dict(classes=('triangle', 'circle', 'square')), 'AnnotationError',
     r"not in the order of the file's categories \('circle', 'square', 'triangle'\)"),
    (lambda d, r: d['categories'].append(dict(id=9, name='circle')), {}, 'AnnotationError',
     r"category names \['circle'\] are given to more than one id"),
    (_drop('iscrowd'), {}, 'AnnotationError', r'needs "iscrowd": 0 or 1'),
    (_drop('segmentation'), dict(base='coco_instance'), 'AnnotationError',
     r'needs a "segmentation" \(polygons or RLE\): the pipeline loads masks'),
    (lambda d, r: os.remove(r / 'train2017' / d['images'][1]['file_name']), {},
     'FileNotFoundError', r'1 of the 3 images that .* lists do not exist, e\.g\. \[.*\.jpg'),
    (lambda d, r: d['annotations'].clear(), {}, 'AnnotationError',
     r'none of the 3 images of .* is left after filtering'),
])
def test_coco_files_that_would_mislabel_or_fail_later_are_refused(tmp_path, edit, kwargs,
                                                                  error, message):
    with pytest.raises(Exception) as err:
        _checked_coco(tmp_path, edit, **kwargs)
    assert type(err.value).__name__ == error and re.search(message, str(err.value)), err.value
    assert 'instances_train2017.json' in str(err.value)


def test_boxes_only_need_no_segmentation(tmp_path):
    dataset = _checked_coco(tmp_path, _drop('segmentation'))
    assert len(dataset) == 3 and len(dataset[0]['data_samples'].gt_instances) > 0
