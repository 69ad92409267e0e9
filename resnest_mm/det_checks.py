"""Early checks for detection data: missing COCO files and malformed annotation files.

Plain functions over configs and parsed JSON (no MMDetection import), used by
:class:`resnest_mm.datasets.coco.CheckedCocoDataset` and the training/testing tools, so that a
missing data set or a broken annotation file stops the run with a message naming the file and what
is wrong, instead of a ``KeyError`` from inside pycocotools or the data pipeline.
"""
import json
import math
import os.path as osp
from collections.abc import Mapping
from typing import Any, Optional, Sequence

from .seg_checks import DATALOADERS, dataloader_datasets, join_data_root

#: How to get the data, appended to every "missing data" message.
COCO_HELP = (
    'COCO 2017: download train2017.zip, val2017.zip and annotations_trainval2017.zip from '
    'https://cocodataset.org/#download and unzip them into data/coco/ so that '
    'data/coco/annotations/instances_train2017.json, data/coco/train2017/ and data/coco/val2017/ '
    'exist (MMDetection\'s layout), or point the config elsewhere with --cfg-options '
    'train_dataloader.dataset.data_root=... (and the same for val/test and the evaluator\'s '
    'ann_file). To try the pipeline without it, in a clone of the resnest_mm repository: python '
    'tools/train.py configs/demo/faster_rcnn_resnest14_demo.py (it writes the synthetic '
    'data/demo_coco first; resnest_mm.demo_data.make_demo_coco(root) writes it from Python).')

#: Most problems listed in one message.
_SHOWN = 5


class AnnotationError(ValueError):
    """A detection annotation file that cannot be used; the message names the file."""


def det_data_paths(cfg: Mapping, *, dataloaders: Sequence[str] = DATALOADERS
                   ) -> list[tuple[str, str, str]]:
    """The annotation files and image folders a detection config reads.

    Args:
        cfg: A full config (``mmengine.Config`` or dict).
        dataloaders: Which dataloaders to look at (absent or None ones are skipped); the evaluator
            of ``val_dataloader``/``test_dataloader`` is included.

    Returns:
        ``(owner, role, path)`` with ``role`` ``'annotation file'`` or ``'images'``.
    """
    out = []
    for name in dataloaders:
        datasets = [ds for _, ds in dataloader_datasets(cfg, [name])]
        if not datasets:
            continue
        for ds in datasets:
            if ds.get('backend_args'):
                continue  # remote storage: nothing to check here
            root = ds.get('data_root')
            if ds.get('ann_file'):
                out.append((name, 'annotation file', join_data_root(root, ds['ann_file'])))
            prefix = ds.get('data_prefix') or {}
            img = prefix.get('img', prefix.get('img_path'))
            if img is not None:
                out.append((name, 'images', join_data_root(root, img)))
        evaluator = cfg.get(name.replace('dataloader', 'evaluator'))
        for metric in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
            if isinstance(metric, Mapping) and metric.get('ann_file') and not metric.get(
                    'backend_args'):
                out.append((name.replace('dataloader', 'evaluator'), 'annotation file',
                            metric['ann_file']))
    return out


def check_det_data(cfg: Mapping, *, dataloaders: Sequence[str] = DATALOADERS,
                   help_text: str = COCO_HELP) -> None:
    """Fail early when a file or folder a detection config reads does not exist.

    Raises:
        FileNotFoundError: Naming every missing path, who reads it, and how to get the data.
    """
    missing = [(owner, role, path) for owner, role, path in det_data_paths(
        cfg, dataloaders=dataloaders) if not (osp.isdir(path) if role == 'images'
                                              else osp.isfile(path))]
    if missing:
        lines = '\n'.join(f'  {path} ({role} of {owner})' for owner, role, path in missing)
        raise FileNotFoundError(f'detection data not found:\n{lines}\n{help_text}')


def load_coco_json(path: str) -> Any:
    """Parse a COCO annotation file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AnnotationError: It is not valid JSON (the message gives the line and column).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'annotation file {path!r} does not exist. {COCO_HELP}')
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f'annotation file {path!r} is not valid JSON: {err}') from None


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _segmentation_problem(seg: Any) -> Optional[str]:
    if isinstance(seg, list):
        for poly in seg:
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(_number(v) for v in poly)):
                return ('a polygon must be a list of at least 6 numbers x1, y1, x2, y2, ... '
                        f'(got {str(poly)[:60]})')
        return None
    if isinstance(seg, Mapping):
        if 'counts' in seg and 'size' in seg:
            return None
        return f'an RLE mask needs "counts" and "size" (got keys {sorted(seg)})'
    return f'segmentation must be a list of polygons or an RLE dict (got {type(seg).__name__})'


def coco_problems(data: Any, *, classes: Optional[Sequence[str]] = None,
                  need_masks: bool = False) -> list[str]:
    """Everything that would break MMDetection's ``CocoDataset`` or ``CocoMetric`` in a parsed
    COCO instance annotation file (at most a few of each kind).

    Args:
        data: The parsed JSON.
        classes: The class names the config asks for; each must be a category of the file, in
            the file's order of categories (``CocoDataset`` numbers labels in that order).
        need_masks: The pipeline loads masks: every annotation that is not a crowd needs a
            polygon or RLE ``segmentation``.

    Returns:
        One line per problem; empty when the file is usable.
    """
    if not isinstance(data, Mapping):
        return [f'the top level is a {type(data).__name__}; a COCO file is an object with '
                '"images", "annotations" and "categories" lists']
    problems = [f'"{key}" is missing or not a list' for key in ('images', 'annotations',
                                                                 'categories')
                if not isinstance(data.get(key), list)]
    if problems:
        return problems

    def report(kind: str, index: int, item: Any, what: str) -> None:
        problems.append(f'{kind}[{index}] {what}: {str(item)[:120]}')

    cat_ids, names = set(), []
    for i, cat in enumerate(data['categories']):
        if not isinstance(cat, Mapping) or 'id' not in cat or not isinstance(cat.get('name'), str):
            report('categories', i, cat, 'needs an "id" and a "name"')
        else:
            cat_ids.add(cat['id'])
            names.append(cat['name'])
    img_ids, sizes = set(), {}
    for i, img in enumerate(data['images']):
        if not isinstance(img, Mapping) or 'id' not in img or not isinstance(
                img.get('file_name'), str):
            report('images', i, img, 'needs an "id" and a "file_name"')
        elif not all(_number(img.get(k)) and img[k] > 0 for k in ('width', 'height')):
            report('images', i, img, 'needs positive "width" and "height"')
        elif img['id'] in img_ids:
            report('images', i, img, f'repeats id {img["id"]!r}')
        else:
            img_ids.add(img['id'])
            sizes[img['id']] = img
    ann_ids = set()
    for i, ann in enumerate(data['annotations']):
        if len(problems) >= 4 * _SHOWN:
            break
        if not isinstance(ann, Mapping):
            report('annotations', i, ann, 'is not an object')
            continue
        missing = [k for k in ('id', 'image_id', 'category_id', 'bbox', 'area') if k not in ann]
        bbox = ann.get('bbox')
        if missing:
            report('annotations', i, ann, f'lacks {missing}')
        elif ann['id'] in ann_ids:
            report('annotations', i, ann, f'repeats id {ann["id"]!r}')
        elif ann['image_id'] not in img_ids:
            report('annotations', i, ann, f'refers to image_id {ann["image_id"]!r}, which is '
                   'not in "images"')
        elif ann['category_id'] not in cat_ids:
            report('annotations', i, ann, f'refers to category_id {ann["category_id"]!r}, '
                   f'which is not in "categories" (ids {sorted(cat_ids)[:10]})')
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)
                  and bbox[2] >= 0 and bbox[3] >= 0):
            report('annotations', i, ann, 'needs "bbox": [x, y, width, height] with 4 numbers '
                   'and width, height >= 0')
        elif not _number(ann['area']):
            report('annotations', i, ann, '"area" must be a number')
        elif ann.get('iscrowd') not in (0, 1) or isinstance(ann.get('iscrowd'), bool):
            # CocoMetric (pycocotools) reads it for every annotation.
            report('annotations', i, ann, 'needs "iscrowd": 0 or 1')
        elif need_masks and not ann['iscrowd'] and not ann.get('segmentation'):
            report('annotations', i, ann, 'needs a "segmentation" (polygons or RLE): the '
                   'pipeline loads masks')
        elif ann.get('segmentation') is not None and (
                problem := _segmentation_problem(ann['segmentation'])):
            report('annotations', i, ann, problem)
        else:
            ann_ids.add(ann['id'])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f'category names {repeated} are given to more than one id; CocoDataset '
                        'maps names to labels, so the boxes of all but one id would have none')
    if classes is not None:
        absent = [c for c in classes if c not in names]
        in_file_order = [n for n in names if n in classes]
        if absent:
            problems.append(f'classes {absent} of the config are not categories of the file '
                            f'(it has {names[:20]}{" ..." if len(names) > 20 else ""}); set '
                            'metainfo=dict(classes=...) to names the file uses')
        elif not repeated and in_file_order != list(classes):
            problems.append(f'classes {tuple(classes)} of the config are not in the order of '
                            f'the file\'s categories {tuple(in_file_order)}: CocoDataset numbers '
                            'labels in the file\'s order, so predictions and metrics would carry '
                            'the wrong names; list the classes in that order')
    return problems


def check_coco_annotations(data: Any, *, path: str, classes: Optional[Sequence[str]] = None,
                           need_masks: bool = False) -> None:
    """Raise if parsed COCO annotations cannot be used (see :func:`coco_problems`).

    Raises:
        AnnotationError: Naming ``path`` and the first problems found.
    """
    problems = coco_problems(data, classes=classes, need_masks=need_masks)
    if problems:
        shown = '\n'.join(f'  {p}' for p in problems[:_SHOWN])
        more = f'\n  ... and {len(problems) - _SHOWN} more' if len(problems) > _SHOWN else ''
        raise AnnotationError(f'annotation file {path!r} is not a usable COCO instance file:\n'
                              f'{shown}{more}')
