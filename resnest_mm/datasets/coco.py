"""COCO with early checks: missing files, malformed annotation files, classes the file lacks.

Importing this module registers ``resnest_mm.CheckedCocoDataset`` (needs MMDetection).
"""
import os.path as osp

from mmdet.datasets import CocoDataset
from mmengine.fileio import get_local_path

from ..det_checks import COCO_HELP, AnnotationError, check_coco_annotations, load_coco_json
from .registry import DATASETS


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """MMDetection's ``CocoDataset`` that validates its annotation file before parsing it.

    It fails with one message naming the file when

    * the annotation file or the image folder does not exist (with how to get COCO or use the
      demo data),
    * the file is not JSON, or an image, category or annotation entry lacks a field or holds a
      value ``CocoDataset``/``CocoMetric`` cannot use (ids that do not resolve, a ``bbox`` that is
      not four numbers, a malformed polygon...),
    * a class of ``metainfo`` is not a category of the file (``CocoDataset`` would silently drop
      all its boxes), or the classes are not in the file's order of categories (labels would
      carry the wrong names), or two categories share a name,
    * the pipeline loads masks and an annotation that is not a crowd has no segmentation,
    * an image file it lists does not exist,
    * no image is listed, or none is left after ``filter_cfg``.

    The file is read once: the validated dict is handed to the COCO API. Everything else is
    ``CocoDataset``'s.

    Args:
        **kwargs: See ``mmdet.datasets.CocoDataset``.
    """

    def load_data_list(self) -> list:
        img_dir = self.data_prefix.get('img', '')
        if not self.backend_args and img_dir and not osp.isdir(img_dir):
            raise FileNotFoundError(f'{type(self).__name__}: image folder {img_dir!r} does not '
                                    f'exist. {COCO_HELP}')
        with get_local_path(self.ann_file, backend_args=self.backend_args) as local_path:
            data = load_coco_json(local_path)
        need_masks = any(getattr(t, 'with_mask', False) for t in self.pipeline.transforms)
        check_coco_annotations(data, path=self.ann_file, classes=self.metainfo['classes'],
                               need_masks=need_masks)
        coco = type(self).COCOAPI()
        coco.dataset = data
        coco.createIndex()
        # The snake-case aliases MMDetection's wrapper sets in its constructor.
        coco.img_ann_map, coco.cat_img_map = coco.imgToAnns, coco.catToImgs
        # CocoDataset.load_data_list builds its COCO object from a path; hand it this one instead
        # of parsing the file a second time.
        self.COCOAPI = lambda _path: coco
        try:
            data_list = super().load_data_list()
        finally:
            del self.COCOAPI
        if not data_list:
            raise FileNotFoundError(f'{type(self).__name__}: {self.ann_file!r} lists no image. '
                                    f'{COCO_HELP}')
        if not self.backend_args:
            # Found here, not at the first read of each image in the middle of a run.
            missing = [d['img_path'] for d in data_list if not osp.isfile(d['img_path'])]
            if missing:
                raise FileNotFoundError(
                    f'{type(self).__name__}: {len(missing)} of the {len(data_list)} images that '
                    f'{self.ann_file!r} lists do not exist, e.g. {missing[:3]}')
        return data_list

    def filter_data(self) -> list:
        kept = super().filter_data()
        if not kept and not self.test_mode:
            raise AnnotationError(
                f'{type(self).__name__}: none of the {len(self.data_list)} images of '
                f'{self.ann_file!r} is left after filtering (filter_cfg={self.filter_cfg}): no '
                f'image has a usable box of the classes {tuple(self.metainfo["classes"])}')
        return kept
