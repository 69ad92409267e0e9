"""COCO with early checks: missing files, malformed annotation files, classes the file lacks.

Importing this module registers ``resnest_mm.CheckedCocoDataset`` (needs MMDetection).
"""
import os.path as osp

from mmdet.datasets import CocoDataset
from mmengine.fileio import get_local_path

from ..det_checks import COCO_HELP, check_coco_annotations, load_coco_json
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
      all its boxes),
    * no image is left.

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
        check_coco_annotations(data, path=self.ann_file, classes=self.metainfo['classes'])
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
        return data_list
