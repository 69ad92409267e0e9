"""The ADE20K DeepLabV3 configs: they load with the stated recipe, build through MMSegmentation's
registry, take a training step and run 'whole', 'slide' and multi-scale+flip inference on tiny
inputs; their data set fails early on a missing folder or a bad label map, naming the path."""
import glob
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict

from .conftest import assert_same_architecture

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'deeplabv3_*_ade20k.py')))
#: Config -> (backbone class, depth, the named variant it is, the start of its ImageNet file).
EXPECTED = {
    'deeplabv3_resnet50_ade20k.py': ('ResNetV1c', 50, 'resnet50_v1c', 'resnet50_v1c-'),
    'deeplabv3_resnet101_ade20k.py': ('ResNetV1c', 101, 'resnet101_v1c', 'resnet101_v1c-'),
    'deeplabv3_resnest50_ade20k.py': ('ResNeSt', 50, 'resnest50', 'resnest50-'),
    'deeplabv3_resnest101_ade20k.py': ('ResNeSt', 101, 'resnest101', 'resnest101-'),
    'deeplabv3_resnext101_32x4d_ade20k.py': ('ResNeXt', 101, 'resnext101_32x4d',
                                             'resnext101_32x4d-'),
    'deeplabv3_res2net101_ade20k.py': ('Res2Net', 101, 'res2net101', 'res2net101_v1b_26w_4s-'),
}


@pytest.fixture(autouse=True)
def _mmseg_scope():
    """Build as the tools do: MMSegmentation registered, inside its default scope."""
    from mmengine.registry import DefaultScope
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


def load(path: str) -> Config:
    cfg = Config.fromfile(path)
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    return cfg


def cpu_model(cfg: Config, size=(64, 64)):
    """The config's model for a CPU test: no checkpoint (strict loading, files absent here),
    BN for SyncBN (one process), batches padded to ``size`` instead of 512x512."""
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    model_cfg = cfg.model.copy()
    model_cfg.backbone.init_cfg = None
    model_cfg.data_preprocessor.size = size
    # No init_weights(): with init_cfg=None it only re-draws random weights, and logs every one.
    return revert_sync_batchnorm(MODELS.build(model_cfg))


def seg_batch(n: int, h: int, w: int, num_classes: int = 150):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        label = torch.randint(0, num_classes, (1, h, w))
        label[:, :4] = 255  # some ignored pixels, as ADE20K's "other"
        s.gt_sem_seg = PixelData(data=label)
        samples.append(s)
    return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for _ in range(n)],
                data_samples=samples)


def test_all_six_configs_exist():
    assert sorted(osp.basename(p) for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_states_the_recipe(path):
    cfg = load(path)
    assert cfg.default_scope == 'mmseg'
    assert 'resnest_mm.models' in cfg.custom_imports.imports
    cls, depth, _, checkpoint = EXPECTED[osp.basename(path)]
    bb = cfg.model.backbone
    assert bb.type == f'resnest_mm.{cls}' and bb.depth == depth
    # Output stride 8: stages 3 and 4 dilated 2 and 4, contracted.
    assert tuple(bb.strides) == (1, 2, 1, 1) and tuple(bb.dilations) == (1, 1, 2, 4)
    assert bb.contract_dilation is True
    assert bb.norm_cfg.type == 'SyncBN' and cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert bb.init_cfg.type == 'Pretrained'
    assert bb.init_cfg.checkpoint.startswith(f'checkpoints/{checkpoint}')
    if cls == 'ResNeSt':
        assert bb.avd_in_dilated_stages is True  # the official dilated network
    if cls == 'Res2Net':
        assert bb.pool_first_stage is True  # the official v1b network
    # DeepLabV3 (ASPP) plus an auxiliary FCN head on stage 3, 150 classes.
    assert cfg.model.decode_head.type == 'ASPPHead' and cfg.model.decode_head.num_classes == 150
    aux = cfg.model.auxiliary_head
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.in_channels == 1024
    assert aux.num_classes == 150
    # ADE20K at MMSegmentation's path, 512x512 crops, 160k iterations of 4 GPUs x 4 images.
    ds = cfg.train_dataloader.dataset
    assert ds.data_root == 'data/ade/ADEChallengeData2016'
    assert ds.type == 'resnest_mm.CheckedADE20KDataset'
    crop = [t for t in ds.pipeline if t.type == 'RandomCrop'][0]
    assert tuple(crop.crop_size) == (512, 512)
    assert tuple(cfg.model.data_preprocessor.size) == (512, 512)
    assert cfg.train_cfg.max_iters == 160000 and cfg.param_scheduler[0].end == 160000
    assert cfg.train_dataloader.batch_size * 4 == 16 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer.lr == 0.01
    assert cfg.val_evaluator.type == 'IoUMetric'
    # Single-scale test and multi-scale + flip test (--tta) are both configured.
    assert cfg.model.test_cfg.mode == 'whole'
    assert cfg.tta_model.type == 'SegTTAModel'
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug' and len(tta.transforms[0]) == 6
    assert len(tta.transforms[1]) == 2  # without and with flip


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_builds_trains_a_step_and_infers_whole_and_slide(path):
    from mmengine.optim import OptimWrapper
    cfg = load(path)
    cls, depth, variant, _ = EXPECTED[osp.basename(path)]
    model = cpu_model(cfg)
    assert type(model.backbone).__name__ == cls and model.backbone.depth == depth
    assert_same_architecture(model.backbone, variant)  # groups, widths, scales, stem
    assert model.backbone.out_strides == (4, 8, 8, 8)
    assert type(model.decode_head).__name__ == 'ASPPHead'
    assert type(model.auxiliary_head).__name__ == 'FCNHead'
    if cls == 'ResNeSt':  # the official dilated network: stride-1 pools in dilated stages
        assert model.backbone.layer3[0].avd and model.backbone.layer4[0].avd
    # Training step: finite losses of both heads, gradients reach the stem.
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    stem = next(model.backbone.parameters())
    before = stem.detach().clone()
    losses = model.train_step(seg_batch(2, 64, 64), optim)
    assert torch.isfinite(losses['decode.loss_ce']) and torch.isfinite(losses['aux.loss_ce'])
    assert losses['aux.loss_ce'] < losses['decode.loss_ce']  # weight 0.4 on a similar loss
    assert not torch.equal(stem.detach(), before)  # the step reached the stem
    # Inference on a non-square image: the prediction covers the original size.
    model.eval()
    h, w = 56, 72
    outputs = {}
    for mode in ('whole', 'slide'):
        model.test_cfg = ConfigDict(mode=mode, crop_size=(48, 48), stride=(32, 32)) \
            if mode == 'slide' else ConfigDict(mode='whole')
        data = seg_batch(1, h, w)
        with torch.no_grad():
            out = model.test_step(data)[0]
        pred = out.pred_sem_seg.data
        assert pred.shape == (1, h, w)
        assert out.seg_logits.data.shape == (150, h, w)
        assert torch.equal(pred[0], out.seg_logits.data.argmax(0))  # the per-pixel best class
        outputs[mode] = out.seg_logits.data
    # Sliding 48x48 windows over a 56x72 image is not one pass: the logits differ.
    assert not torch.allclose(outputs['whole'], outputs['slide'])


def write_ade_tree(root: str, *, labels: dict, size=(40, 48)) -> None:
    """A tiny ADE20K tree: one image per entry of ``labels`` (name -> label array)."""
    for split in ('training', 'validation'):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for name, label in labels.items():
            img = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
            cv2.imwrite(osp.join(root, 'images', split, name + '.jpg'), img)
            cv2.imwrite(osp.join(root, 'annotations', split, name + '.png'), label)


def dataset_cfg(cfg: Config, root: str, *, loader: str = 'train_dataloader'):
    ds = cfg[loader].dataset.copy()
    ds.data_root = root
    return ds


def test_ade20k_dataset_and_pipelines_build_and_load(tmp_path):
    from mmseg.registry import DATASETS
    cfg = load(CONFIGS[0])
    label = np.zeros((40, 48), np.uint8)
    label[:20] = 1      # wall -> class 0
    label[20:] = 150    # the last class -> 149
    label[:, :4] = 0    # other -> ignored
    write_ade_tree(str(tmp_path), labels={'a': label, 'b': label})
    train = DATASETS.build(dataset_cfg(cfg, str(tmp_path)))
    assert type(train).__name__ == 'CheckedADE20KDataset' and len(train) == 2
    assert len(train.metainfo['classes']) == 150
    sample = train[0]
    # Scale jitter around a 512 short side, then a crop of at most 512x512.
    assert max(sample['inputs'].shape[1:]) <= 512 and min(sample['inputs'].shape[1:]) >= 200
    seg = sample['data_samples'].gt_sem_seg.data
    assert set(torch.unique(seg).tolist()) <= {0, 149, 255}
    val = DATASETS.build(dataset_cfg(cfg, str(tmp_path), loader='val_dataloader'))
    seg = val[1]['data_samples'].gt_sem_seg.data
    assert tuple(seg.shape[1:]) == (40, 48)  # compared at the original size
    assert torch.equal(torch.unique(seg), torch.tensor([0, 149, 255]))


def test_multi_scale_flip_test_runs_through_the_tta_pipeline(tmp_path):
    """The ms+flip path of tools/test.py --tta: tta_pipeline + SegTTAModel around the model."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS, MODELS
    cfg = load(CONFIGS[0])
    label = np.full((40, 48), 3, np.uint8)
    write_ade_tree(str(tmp_path), labels={'a': label})
    ds = dataset_cfg(cfg, str(tmp_path), loader='test_dataloader')
    ds.pipeline = cfg.tta_pipeline
    dataset = DATASETS.build(ds)
    item = dataset[0]
    assert len(item['inputs']) == 12  # 6 scales x (no flip, flip)
    model = cpu_model(cfg, size=None)
    model.eval()
    tta = MODELS.build(dict(cfg.tta_model, module=model))
    with torch.no_grad():
        out = tta.test_step(pseudo_collate([item]))[0]
    assert out.pred_sem_seg.data.shape[-2:] == (40, 48)


def test_missing_ade20k_names_the_path_and_how_to_get_it(tmp_path):
    from mmseg.registry import DATASETS
    from resnest_mm.seg_checks import check_seg_data
    cfg = load(CONFIGS[0])
    missing = str(tmp_path / 'ade' / 'ADEChallengeData2016')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = missing
    with pytest.raises(FileNotFoundError) as err:
        check_seg_data(cfg, dataloaders=['train_dataloader', 'val_dataloader'])
    text = str(err.value)
    assert osp.join(missing, 'images/training') in text
    assert osp.join(missing, 'annotations/validation') in text
    assert 'ADEChallengeData2016.zip' in text and 'demo' in text
    # Also for an installed copy, which has no tools/ or configs/.
    assert 'in a clone of the resnest_mm repository' in text and 'make_demo_ade(root)' in text
    with pytest.raises(FileNotFoundError, match='images/training'):
        DATASETS.build(dataset_cfg(cfg, missing))
    # A present data set passes.
    write_ade_tree(missing, labels={'a': np.ones((40, 48), np.uint8)})
    check_seg_data(cfg)


def test_image_without_label_map_and_empty_folder_are_named(tmp_path):
    from mmseg.registry import DATASETS
    cfg = load(CONFIGS[0])
    write_ade_tree(str(tmp_path), labels={'a': np.ones((40, 48), np.uint8)})
    os.remove(tmp_path / 'annotations' / 'training' / 'a.png')
    with pytest.raises(FileNotFoundError, match=r'1 of 1 images have no label map.*a\.png'):
        DATASETS.build(dataset_cfg(cfg, str(tmp_path)))
    os.remove(tmp_path / 'images' / 'training' / 'a.jpg')
    with pytest.raises(FileNotFoundError, match="no '.jpg' image in .*images/training"):
        DATASETS.build(dataset_cfg(cfg, str(tmp_path)))


@pytest.mark.parametrize('bad, message', [
    (200, r'outside 0\.\.149 and the ignore index 255: 199'),
    (151, r'outside 0\.\.149 and the ignore index 255: 150'),
])
def test_out_of_range_label_names_the_file(tmp_path, bad, message):
    from mmseg.registry import DATASETS
    from resnest_mm.seg_checks import LabelMapError
    cfg = load(CONFIGS[0])
    good = np.ones((40, 48), np.uint8)
    broken = good.copy()
    broken[5:9, 5:9] = bad
    broken[0, 0] = 255  # 255 is ignored, not an error
    write_ade_tree(str(tmp_path), labels={'fine': good, 'broken': broken})
    for loader in ('train_dataloader', 'val_dataloader'):
        dataset = DATASETS.build(dataset_cfg(cfg, str(tmp_path), loader=loader))
        names = [osp.basename(dataset.get_data_info(i)['seg_map_path'])
                 for i in range(len(dataset))]
        dataset[names.index('fine.png')]  # a valid map loads
        with pytest.raises(LabelMapError, match=message) as err:
            dataset[names.index('broken.png')]
        assert str(tmp_path / 'annotations') in str(err.value) and 'broken.png' in str(err.value)
        assert '16 pixels' in str(err.value)


def test_label_map_of_another_size_is_refused_with_its_name(tmp_path):
    from mmseg.registry import DATASETS
    from resnest_mm.seg_checks import LabelMapError
    cfg = load(CONFIGS[0])
    write_ade_tree(str(tmp_path), labels={'small': np.ones((20, 24), np.uint8)})  # images 40x48
    for loader in ('train_dataloader', 'val_dataloader'):
        dataset = DATASETS.build(dataset_cfg(cfg, str(tmp_path), loader=loader))
        with pytest.raises(LabelMapError, match=r"small\.png' is \(20, 24\) .* is \(40, 48\)"):
            dataset[0]


def test_colour_label_map_is_refused_with_its_name(tmp_path):
    from mmseg.registry import DATASETS
    from resnest_mm.seg_checks import LabelMapError
    cfg = load(CONFIGS[0])
    write_ade_tree(str(tmp_path), labels={'rgb': np.ones((40, 48, 3), np.uint8)})
    dataset = DATASETS.build(dataset_cfg(cfg, str(tmp_path), loader='val_dataloader'))
    with pytest.raises(LabelMapError, match=r"rgb\.png.*single-channel"):
        dataset[0]


def test_check_seg_labels_arguments_and_placement():
    from resnest_mm.datasets.ade import CheckSegLabels
    with pytest.raises(ValueError, match='num_classes=0'):
        CheckSegLabels(num_classes=0)
    with pytest.raises(KeyError, match='after LoadAnnotations'):
        CheckSegLabels(num_classes=3)(dict(img=np.zeros((2, 2, 3)), seg_map_path='x.png'))
    # An image without a label map (MMSegmentation's inference APIs) passes as it is.
    image_only = dict(img=np.zeros((2, 2, 3)), img_path='a.jpg')
    assert CheckSegLabels(num_classes=3)(image_only) is image_only
    ok = dict(gt_seg_map=np.array([[0, 2], [255, 1]], np.uint8), seg_map_path='x.png')
    assert CheckSegLabels(num_classes=3)(ok) is ok


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_test_pipeline_takes_an_image_without_label_map(path, tmp_path):
    """MMSegmentation's ``inference_model`` and ``MMSegInferencer`` drop ``LoadAnnotations`` from
    the test pipeline: the rest (``CheckSegLabels`` among it) must take an image alone."""
    from mmcv.transforms import Compose
    cfg = load(path)
    steps = [t for t in cfg.test_pipeline if t['type'] != 'LoadAnnotations']
    assert any(t['type'] == 'resnest_mm.CheckSegLabels' for t in steps)
    image = str(tmp_path / 'a.jpg')
    cv2.imwrite(image, np.zeros((40, 48, 3), np.uint8))
    packed = Compose(steps)(dict(img_path=image))
    assert packed['inputs'].shape[0] == 3 and 'gt_sem_seg' not in packed['data_samples']
