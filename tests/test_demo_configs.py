"""Every demo config under configs/demo/ builds through its toolbox's registry, takes a training
step on a real batch of the demo data (through the config's own data set and pipeline) and runs
inference on a validation image."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMOS = sorted(glob.glob(osp.join(ROOT, 'configs', 'demo', '*.py')))


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    from resnest_mm.demo_data import make_demo_ade, make_demo_coco
    root = tmp_path_factory.mktemp('data')
    make_demo_coco(str(root / 'demo_coco'), num_train=2, num_val=1, size=96)
    make_demo_ade(str(root / 'demo_ade'), num_train=2, num_val=1, size=64)
    return root


def test_there_are_detection_instance_and_segmentation_demos():
    names = [osp.basename(p) for p in DEMOS]
    for method in ('faster_rcnn', 'mask_rcnn', 'deeplabv3'):
        assert any(n.startswith(method) for n in names), (method, names)


@pytest.mark.parametrize('path', DEMOS, ids=osp.basename)
def test_demo_config_builds_steps_and_infers(path, demo_data):
    from mmengine.optim import OptimWrapper
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings
    from resnest_mm.runner import register_toolbox
    cfg = Config.fromfile(path)
    scope = cfg.default_scope
    register_toolbox(scope)
    import_modules_from_strings(**cfg.custom_imports)
    kind = 'demo_coco' if scope == 'mmdet' else 'demo_ade'
    for split in ('train_dataloader', 'val_dataloader'):
        cfg[split].dataset.data_root = str(demo_data / kind)
    if scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 64)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS', 'DATASETS'])
    with DefaultScope.overwrite_default_scope(scope):
        train_set = registry.DATASETS.build(cfg.train_dataloader.dataset)
        val_set = registry.DATASETS.build(cfg.val_dataloader.dataset)
        model = registry.MODELS.build(cfg.model)
        assert type(model.backbone).__module__.startswith('resnest_mm.')
        model.init_weights()
        batch = dict(inputs=[], data_samples=[])
        for i in range(2):
            item = train_set[i]
            batch['inputs'].append(item['inputs'])
            batch['data_samples'].append(item['data_samples'])
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
        losses = model.train_step(batch, optim)
        assert torch.isfinite(losses['loss'])
        if 'mask' in osp.basename(path):
            assert 'loss_mask' in losses
        model.eval()
        item = val_set[0]
        with torch.no_grad():
            out = model.test_step(dict(inputs=[item['inputs']],
                                       data_samples=[item['data_samples']]))
    assert len(out) == 1
    if scope == 'mmdet':
        pred = out[0].pred_instances
        assert pred.bboxes.shape[-1] == 4
        assert ('masks' in pred) == ('mask' in osp.basename(path))
    else:
        assert out[0].pred_sem_seg.data.shape[-2:] == item['data_samples'].gt_sem_seg.shape


@pytest.mark.parametrize('path', DEMOS, ids=osp.basename)
def test_demo_config_runs_through_its_toolboxs_inference_api(path):
    """``mmdet.apis.inference_detector`` and ``mmseg.apis.inference_model`` on an image array
    (no annotation): they drop ``LoadAnnotations`` from the config's test pipeline and keep the
    rest, which must then take an image alone. ``CheckSegLabels`` raised there."""
    import numpy as np
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(path)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    # The APIs set the toolbox's default scope for the process: undone on leaving.
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if cfg.default_scope == 'mmdet':
            from mmdet.apis import inference_detector, init_detector
            model = init_detector(cfg, device='cpu')
            out = inference_detector(model, image)
            assert out.pred_instances.bboxes.shape[-1] == 4
        else:
            from mmseg.apis import inference_model, init_model
            cfg.model.data_preprocessor.size = None  # the demo crop; one image is padded to 32
            model = init_model(cfg, device='cpu')
            out = inference_model(model, image)
            assert out.pred_sem_seg.data.shape == (1, 48, 64)
