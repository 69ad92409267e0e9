"""ADE20K with early checks: missing folders, images without label maps, out-of-range classes."""
import os.path as osp

from mmcv.transforms import BaseTransform
from mmseg.datasets import ADE20KDataset

from ..models.checks import check_int
from ..seg_checks import ADE20K_HELP, LabelMapError, check_label_map, check_seg_dirs
from .registry import DATASETS, TRANSFORMS


@DATASETS.register_module()
class CheckedADE20KDataset(ADE20KDataset):
    """MMSegmentation's ``ADE20KDataset`` that fails early, naming the path, when

    * the image or label-map folder (or the ``ann_file`` list) does not exist,
    * no ``.jpg`` image is found (an empty data set would make the infinite sampler spin),
    * an image has no label map.

    Everything else (classes, palette, ``reduce_zero_label=True``, a ``metainfo`` subset of the
    150 classes) is ``ADE20KDataset``'s. Data sets on remote storage (``backend_args`` set) skip
    the file-system checks. Label values are checked per sample by :class:`CheckSegLabels`.

    Args:
        **kwargs: See ``mmseg.datasets.ADE20KDataset``.
    """

    def load_data_list(self) -> list:
        img_dir = self.data_prefix.get('img_path', '')
        ann_dir = self.data_prefix.get('seg_map_path', None)
        local = not self.backend_args
        if local:
            if self.ann_file and not osp.isdir(self.ann_file) and not osp.isfile(self.ann_file):
                raise FileNotFoundError(f'{type(self).__name__}: ann_file {self.ann_file!r} '
                                        f'does not exist. {ADE20K_HELP}')
            check_seg_dirs(img_dir=img_dir, ann_dir=ann_dir)
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(f'{type(self).__name__}: no {self.img_suffix!r} image in '
                                    f'{img_dir!r}. {ADE20K_HELP}')
        if local and ann_dir is not None:
            missing = [d['seg_map_path'] for d in data_list if not osp.isfile(d['seg_map_path'])]
            if missing:
                raise FileNotFoundError(
                    f'{type(self).__name__}: {len(missing)} of {len(data_list)} images have no '
                    f'label map, e.g. {missing[:3]}; every image NAME{self.img_suffix} in '
                    f'{img_dir!r} needs NAME{self.seg_map_suffix} in {ann_dir!r}.')
        return data_list


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Pipeline step after ``LoadAnnotations``: the label map has its image's size and holds only
    class ids and the ignore index, else a ``ValueError`` names the file. A sample without a
    label map (no ``seg_map_path``, as in MMSegmentation's inference APIs) passes unchecked.

    Without it an out-of-range id crashes the loss deep inside a CUDA kernel (no file named) or,
    in evaluation, is silently dropped from the confusion counts. The check is a vectorised
    comparison, negligible next to decoding the PNG.

    Args:
        num_classes: Number of classes (valid ids ``0 .. num_classes - 1``).
        ignore_index: The ignored id (255 in MMSegmentation).
    """

    def __init__(self, *, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        check_int('CheckSegLabels', 'num_classes', num_classes, 1)
        check_int('CheckSegLabels', 'ignore_index', ignore_index, 0)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        if 'gt_seg_map' not in results:
            if results.get('seg_map_path') is None:
                # An image without a label map: MMSegmentation's inference_model and
                # MMSegInferencer drop LoadAnnotations from the test pipeline and keep this step.
                return results
            raise KeyError('CheckSegLabels: no gt_seg_map in the results; put it after '
                           'LoadAnnotations in the pipeline.')
        path = results.get('seg_map_path', '<in memory>')
        seg = results['gt_seg_map']
        check_label_map(seg, path=path, num_classes=self.num_classes,
                        ignore_index=self.ignore_index,
                        reduce_zero_label=bool(results.get('reduce_zero_label')))
        # As loaded, or resized with the image (test pipelines resize the image only).
        shapes = {tuple(results[k][:2]) for k in ('ori_shape', 'img_shape') if k in results}
        if shapes and tuple(seg.shape[:2]) not in shapes:
            # Resizing and cropping would misalign them; IoUMetric fails without a file name.
            raise LabelMapError(f'label map {path!r} is {tuple(seg.shape[:2])} (height, width) '
                                f'but its image {results.get("img_path", "")!r} is '
                                f'{tuple(results.get("ori_shape", ())[:2])}; a label map must '
                                'have its image\'s size')
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index})')
