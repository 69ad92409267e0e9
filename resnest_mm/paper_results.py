"""The downstream transfer results of the ResNeSt paper, as data, with where each number comes from.

Three tables: COCO object detection (box AP), COCO instance segmentation (box and mask AP) and
ADE20K semantic segmentation (mIoU, single scale). Every row names the config of this repository
that reproduces it (its work dir under ``work_dirs/reproduce/`` is the row's key), the published
value(s), the source and the schedule the published number was trained with. Where MMDetection
or MMSegmentation publish their own number for the same network it is kept as a second reference.

Numbers are percentages (AP x 100, mIoU in %). Sources, with the checks made:

* ``resnest-d2``: the ResNeSt paper (Zhang et al., arXiv:2004.08955, Tables 5 and 6) and the
  official detectron2 model zoo in github.com/zhanghang1989/ResNeSt (README, "Transfer Learning
  Models"), COCO val2017, 1x schedule, the same recipe for all four backbones (SyncBN, multi-scale
  training). The paper rounds them to two digits; the zoo gives these values.
* ``encoding``: PyTorch-Encoding's ADE20K model zoo (hangzhang.org/PyTorch-Encoding), DeepLabV3,
  ADE20K val, single scale, the ResNeSt paper's Table 7 recipe.
* ``gluoncv``: GluonCV's ADE20K DeepLabV3 ResNet-101, quoted by the paper as its baseline.
* ``mmdet-*`` / ``mmseg-*``: the metafiles MMDetection 3.3 and MMSegmentation 1.2 ship
  (``mmdet/.mim/configs/<algo>/metafile.yml``, ``mmseg/.mim/configs/<algo>/metafile.yaml``);
  the values below were checked against the installed copies.
"""
from dataclasses import dataclass, field
from typing import Optional

#: Table key -> (title, metrics shown). Metric names are the ones the evaluators log, without
#: their prefix; COCO's are fractions in the logs and are scaled to percent when collected.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    'coco_det': ('COCO object detection (val2017, box AP)', ('bbox_mAP',)),
    'coco_inst': ('COCO instance segmentation (val2017, box AP / mask AP)',
                  ('bbox_mAP', 'segm_mAP')),
    'ade20k': ('ADE20K semantic segmentation (val, single-scale mIoU)', ('mIoU',)),
}

#: Metric -> the key the evaluator writes into mmengine's logs.
LOG_KEYS = {'bbox_mAP': 'coco/bbox_mAP', 'segm_mAP': 'coco/segm_mAP', 'mIoU': 'mIoU'}
#: Metrics logged as fractions (COCO) rather than percentages (MMSegmentation).
FRACTION_METRICS = ('bbox_mAP', 'segm_mAP')

SOURCES: dict[str, str] = {
    'resnest-d2': 'ResNeSt paper (arXiv:2004.08955) Tables 5-6 and the official detectron2 model '
                  'zoo, https://github.com/zhanghang1989/ResNeSt',
    'encoding': 'PyTorch-Encoding ADE20K model zoo, '
                'https://hangzhang.org/PyTorch-Encoding/model_zoo/segmentation.html',
    'resnest-paper': 'ResNeSt paper, arXiv:2004.08955, Table 7',
    'gluoncv': 'GluonCV ADE20K model zoo (DeepLabV3 ResNet-101), quoted in arXiv:2004.08955',
    'mmdet-faster_rcnn': 'MMDetection 3.3 configs/faster_rcnn/metafile.yml',
    'mmdet-mask_rcnn': 'MMDetection 3.3 configs/mask_rcnn/metafile.yml',
    'mmdet-res2net': 'MMDetection 3.3 configs/res2net/metafile.yml',
    'mmdet-resnest': 'MMDetection 3.3 configs/resnest/metafile.yml',
    'mmseg-deeplabv3': 'MMSegmentation 1.2 configs/deeplabv3/metafile.yaml',
    'mmseg-resnest': 'MMSegmentation 1.2 configs/resnest/metafile.yaml',
}


@dataclass(frozen=True)
class Reference:
    """A published result: metric -> value (%), its source key and training schedule.

    ``entry`` names the model in the toolbox's metafile for ``mmdet-*``/``mmseg-*`` sources, so
    that the tests can check every such value against the installed metafile.
    """
    values: dict[str, float]
    source: str
    schedule: str
    entry: Optional[str] = None


@dataclass(frozen=True)
class PaperRow:
    """One row of a transfer table.

    Attributes:
        key: Row id and work-dir name (``work_dirs/reproduce/<key>``).
        table: A key of :data:`TABLES`.
        method: Detector or segmentor.
        backbone: Backbone as the paper writes it.
        config: This repository's config that reproduces the row.
        published: The number(s) the row is compared with; None where none is published.
        also: Further published references (the toolboxes' own results).
        gpus: GPUs of the published recipe (the configs' batch sizes assume it).
    """
    key: str
    table: str
    method: str
    backbone: str
    config: str
    published: Optional[Reference]
    also: tuple[Reference, ...] = field(default=())
    gpus: int = 8


def _det(method: str, cfg: str, backbone: str, name: str, box: Optional[float] = None,
         mask: Optional[float] = None, source: str = 'resnest-d2', schedule: str = '1x',
         entry: Optional[str] = None, also: tuple = ()) -> PaperRow:
    table = 'coco_inst' if 'mask' in cfg else 'coco_det'
    values = {'bbox_mAP': box} if mask is None else {'bbox_mAP': box, 'segm_mAP': mask}
    return PaperRow(key=f'{cfg}_{name}', table=table, method=method, backbone=backbone,
                    config=f'configs/{cfg}_{name}_fpn.py',
                    published=None if box is None else Reference(values, source, schedule, entry),
                    also=also)


def _seg(backbone: str, name: str, miou: Optional[float], source: Optional[str],
         also: tuple = ()) -> PaperRow:
    # The paper's, PyTorch-Encoding's and GluonCV's numbers come from 120-epoch runs (crop 480);
    # MMSegmentation's, in ``also``, from 160k iterations.
    return PaperRow(key=f'deeplabv3_{name}_ade20k', table='ade20k', method='DeepLabV3',
                    backbone=backbone, config=f'configs/deeplabv3_{name}_ade20k.py',
                    published=None if miou is None else Reference({'mIoU': miou}, source,
                                                                  '120 ep'),
                    also=also, gpus=4)


ROWS: tuple[PaperRow, ...] = (
    # COCO detection
    _det('Faster R-CNN', 'faster_rcnn', 'ResNet-50', 'resnet50', 39.25),
    _det('Faster R-CNN', 'faster_rcnn', 'ResNet-101', 'resnet101', 41.37),
    _det('Faster R-CNN', 'faster_rcnn', 'ResNeXt-101 32x4d', 'resnext101_32x4d', 41.2,
         source='mmdet-faster_rcnn', entry='faster-rcnn_x101-32x4d_fpn_1x_coco'),
    _det('Faster R-CNN', 'faster_rcnn', 'Res2Net-101', 'res2net101', 43.0,
         source='mmdet-res2net', schedule='2x', entry='faster-rcnn_res2net-101_fpn_2x_coco'),
    _det('Faster R-CNN', 'faster_rcnn', 'ResNeSt-50', 'resnest50', 42.33,
         also=(Reference({'bbox_mAP': 42.0}, 'mmdet-resnest', '1x ms-range',
                         'faster-rcnn_s50_fpn_syncbn-backbone+head_ms-range-1x_coco'),)),
    _det('Faster R-CNN', 'faster_rcnn', 'ResNeSt-101', 'resnest101', 44.72,
         also=(Reference({'bbox_mAP': 44.5}, 'mmdet-resnest', '1x ms-range',
                         'faster-rcnn_s101_fpn_syncbn-backbone+head_ms-range-1x_coco'),)),
    _det('Cascade R-CNN', 'cascade_rcnn', 'ResNet-50', 'resnet50', 42.52),
    _det('Cascade R-CNN', 'cascade_rcnn', 'ResNet-101', 'resnet101', 44.03),
    _det('Cascade R-CNN', 'cascade_rcnn', 'ResNeSt-50', 'resnest50', 45.41,
         also=(Reference({'bbox_mAP': 44.5}, 'mmdet-resnest', '1x ms-range',
                         'cascade-rcnn_s50_fpn_syncbn-backbone+head_ms-range-1x_coco'),)),
    _det('Cascade R-CNN', 'cascade_rcnn', 'ResNeSt-101', 'resnest101', 47.50,
         also=(Reference({'bbox_mAP': 46.8}, 'mmdet-resnest', '1x ms-range',
                         'cascade-rcnn_s101_fpn_syncbn-backbone+head_ms-range-1x_coco'),)),
    # COCO instance segmentation
    _det('Mask R-CNN', 'mask_rcnn', 'ResNet-50', 'resnet50', 39.97, 36.05),
    _det('Mask R-CNN', 'mask_rcnn', 'ResNet-101', 'resnet101', 41.78, 37.51),
    _det('Mask R-CNN', 'mask_rcnn', 'ResNeXt-101 32x4d', 'resnext101_32x4d', 41.9, 37.5,
         source='mmdet-mask_rcnn', entry='mask-rcnn_x101-32x4d_fpn_1x_coco'),
    _det('Mask R-CNN', 'mask_rcnn', 'Res2Net-101', 'res2net101', 43.6, 38.7,
         source='mmdet-res2net', schedule='2x', entry='mask-rcnn_res2net-101_fpn_2x_coco'),
    _det('Mask R-CNN', 'mask_rcnn', 'ResNeSt-50', 'resnest50', 42.81, 38.14,
         also=(Reference({'bbox_mAP': 42.6, 'segm_mAP': 38.1}, 'mmdet-resnest', '1x ms',
                         'mask-rcnn_s50_fpn_syncbn-backbone+head_ms-1x_coco'),)),
    _det('Mask R-CNN', 'mask_rcnn', 'ResNeSt-101', 'resnest101', 45.75, 40.65,
         also=(Reference({'bbox_mAP': 45.2, 'segm_mAP': 40.2}, 'mmdet-resnest', '1x ms',
                         'mask-rcnn_s101_fpn_syncbn-backbone+head_ms-1x_coco'),)),
    _det('Cascade Mask R-CNN', 'cascade_mask_rcnn', 'ResNet-50', 'resnet50', 43.06, 37.19),
    _det('Cascade Mask R-CNN', 'cascade_mask_rcnn', 'ResNet-101', 'resnet101', 44.79, 38.52),
    _det('Cascade Mask R-CNN', 'cascade_mask_rcnn', 'ResNeSt-50', 'resnest50', 46.19, 39.55,
         also=(Reference({'bbox_mAP': 45.4, 'segm_mAP': 39.5}, 'mmdet-resnest', '1x ms',
                         'cascade-mask-rcnn_s50_fpn_syncbn-backbone+head_ms-1x_coco'),)),
    _det('Cascade Mask R-CNN', 'cascade_mask_rcnn', 'ResNeSt-101', 'resnest101', 48.30, 41.56,
         also=(Reference({'bbox_mAP': 47.7, 'segm_mAP': 41.4}, 'mmdet-resnest', '1x ms',
                         'cascade-mask-rcnn_s101_fpn_syncbn-backbone+head_ms-1x_coco'),)),
    # ADE20K semantic segmentation
    _seg('ResNet-50', 'resnet50', 42.1, 'resnest-paper',
         also=(Reference({'mIoU': 42.66}, 'mmseg-deeplabv3', '160k',
                         'deeplabv3_r50-d8_4xb4-160k_ade20k-512x512'),)),
    _seg('ResNet-101', 'resnet101', 44.1, 'gluoncv',
         also=(Reference({'mIoU': 45.0}, 'mmseg-deeplabv3', '160k',
                         'deeplabv3_r101-d8_4xb4-160k_ade20k-512x512'),)),
    _seg('ResNeXt-101 32x4d', 'resnext101_32x4d', None, None),
    _seg('Res2Net-101', 'res2net101', None, None),
    _seg('ResNeSt-50', 'resnest50', 45.12, 'encoding'),
    _seg('ResNeSt-101', 'resnest101', 46.91, 'encoding',
         also=(Reference({'mIoU': 45.71}, 'mmseg-resnest', '160k',
                         'resnest_s101-d8_deeplabv3_4xb4-160k_ade20k-512x512'),)),
)


def rows_of(table: str) -> list[PaperRow]:
    """The rows of one table, in the paper's order."""
    if table not in TABLES:
        raise ValueError(f'table={table!r} is not known; choose one of {sorted(TABLES)}')
    return [r for r in ROWS if r.table == table]


def row(key: str) -> PaperRow:
    for r in ROWS:
        if r.key == key:
            return r
    raise ValueError(f'row={key!r} is not known; choose one of {[r.key for r in ROWS]}')
