"""Early checks for segmentation data: missing data set folders and bad label maps.

Plain functions over configs and arrays (no MMSegmentation import), used by
:class:`resnest_mm.datasets.CheckedADE20KDataset`, :class:`resnest_mm.datasets.CheckSegLabels`
and the training/testing tools, so that a missing ADE20K or a corrupt label map stops the run with a
message naming the path rather than a CUDA assert or a silently wrong mIoU.
"""
import os.path as osp
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Sequence

import numpy as np

#: How to get the data, appended to every "missing data" message.
ADE20K_HELP = (
    'ADE20K: download ADEChallengeData2016.zip '
    '(http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip) and unzip it into '
    'data/ade/ so that data/ade/ADEChallengeData2016/images/training exists (MMSegmentation\'s '
    'layout), or point the config elsewhere with --cfg-options train_dataloader.dataset.'
    'data_root=... (and the same for val/test). To try the pipeline without it, in a clone of '
    'the resnest_mm repository: python tools/train.py '
    'configs/demo/deeplabv3_resnest14-d8_demo-ade.py (it writes the synthetic data/demo_ade '
    'first; resnest_mm.demo_data.make_demo_ade(root) writes it from Python).')

DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class LabelMapError(ValueError):
    """A segmentation label map that cannot be used; the message names the file."""


def join_data_root(data_root: Optional[str], prefix: str) -> str:
    """``prefix`` resolved as mmengine's ``BaseDataset`` resolves a relative path or data prefix:
    joined onto ``data_root`` unless absolute (an empty prefix means ``data_root`` itself)."""
    if data_root and not osp.isabs(prefix):
        return osp.join(data_root, prefix)
    return prefix


def leaf_datasets(dataset_cfg: Mapping) -> Iterator[Mapping]:
    """The data set configs inside ``dataset_cfg``, through ``ConcatDataset`` (``datasets``) and
    ``RepeatDataset``/``ClassBalancedDataset`` (``dataset``) wrappers."""
    if 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from leaf_datasets(sub)
    elif isinstance(dataset_cfg.get('dataset'), Mapping):
        yield from leaf_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def dataloader_datasets(cfg: Mapping, dataloaders: Sequence[str]
                        ) -> Iterator[tuple[str, Mapping]]:
    """``(dataloader name, leaf data set config)`` for each of ``dataloaders`` the config has
    (absent, None and dataset-less dataloaders are skipped)."""
    for name in dataloaders:
        loader = cfg.get(name)
        if loader and loader.get('dataset'):
            for ds in leaf_datasets(loader['dataset']):
                yield name, ds


def seg_data_dirs(cfg: Mapping, *, dataloaders: Sequence[str] = DATALOADERS
                  ) -> list[tuple[str, str, str]]:
    """The image and label-map folders a segmentation config reads.

    Args:
        cfg: A full config (``mmengine.Config`` or dict).
        dataloaders: Which dataloaders to look at (absent or None ones are skipped).

    Returns:
        ``(dataloader, role, path)`` for every folder, ``role`` being ``'images'`` or
        ``'label maps'``; label maps only where the data set reads them.
    """
    out = []
    for name, ds in dataloader_datasets(cfg, dataloaders):
        prefix = ds.get('data_prefix') or {}
        root = ds.get('data_root')
        out.append((name, 'images', join_data_root(root, prefix.get('img_path', ''))))
        if prefix.get('seg_map_path') is not None:
            out.append((name, 'label maps', join_data_root(root, prefix['seg_map_path'])))
    return out


def check_seg_data(cfg: Mapping, *, dataloaders: Sequence[str] = DATALOADERS,
                   help_text: str = ADE20K_HELP) -> None:
    """Fail early when a folder a segmentation config reads does not exist.

    Meant for the tools before they build the runner (``train`` checks all three dataloaders,
    ``test`` only ``test_dataloader``). Data sets on remote storage (``backend_args`` set) are not
    checked.

    Args:
        cfg: A full config.
        dataloaders: Which dataloaders to check.
        help_text: How to get the data, appended to the message.

    Raises:
        FileNotFoundError: Naming every missing folder, its dataloader, and how to get the data.
    """
    remote = {name for name, ds in dataloader_datasets(cfg, dataloaders) if ds.get('backend_args')}
    missing = [(name, role, path)
               for name, role, path in seg_data_dirs(cfg, dataloaders=dataloaders)
               if name not in remote and not osp.isdir(path)]
    if missing:
        lines = '\n'.join(f'  {path} ({role} of {name})' for name, role, path in missing)
        raise FileNotFoundError(f'segmentation data not found:\n{lines}\n{help_text}')


def check_seg_dirs(*, img_dir: str, ann_dir: Optional[str], help_text: str = ADE20K_HELP
                   ) -> None:
    """Fail when an image or label-map folder of one data set does not exist.

    Raises:
        FileNotFoundError: Naming the folder and how to get the data.
    """
    for role, path in (('images', img_dir), ('label maps', ann_dir)):
        if path is not None and not osp.isdir(path):
            raise FileNotFoundError(f'{role} folder {path!r} does not exist. {help_text}')


def label_map_problem(seg: Any, *, num_classes: int, ignore_index: int = 255) -> Optional[str]:
    """What is wrong with a label map, or None if it is a valid map of class ids.

    Args:
        seg: The map as loaded (after ``reduce_zero_label`` and any ``label_map``).
        num_classes: Valid ids are ``0 .. num_classes - 1`` ...
        ignore_index: ... and this one.
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        return (f'it has shape {seg.shape}; expected a single-channel (H, W) map of class ids '
                '(is it a colour-coded PNG?)')
    bad = (seg >= num_classes) & (seg != ignore_index) | (seg < 0)
    if bad.any():
        values = np.unique(seg[bad])
        shown = ', '.join(str(int(v)) for v in values[:10]) + (' ...' if len(values) > 10 else '')
        return (f'{int(bad.sum())} pixels hold class ids outside 0..{num_classes - 1} and the '
                f'ignore index {ignore_index}: {shown}')
    return None


def check_label_map(seg: Any, *, path: str, num_classes: int, ignore_index: int = 255,
                    reduce_zero_label: bool = False) -> None:
    """Raise if a loaded label map holds anything but class ids and the ignore index.

    Args:
        seg: The map as loaded (after ``reduce_zero_label`` and any ``label_map``).
        path: Its file, for the message.
        num_classes: Number of classes of the data set.
        ignore_index: The ignored id.
        reduce_zero_label: Whether the ids were shifted down by one on loading (ADE20K), so the
            message can give the values as stored in the file.

    Raises:
        LabelMapError: Naming the file, the offending values and what is allowed.
    """
    problem = label_map_problem(seg, num_classes=num_classes, ignore_index=ignore_index)
    if problem is None:
        return
    if reduce_zero_label:
        problem += (f' (after reduce_zero_label; in the file they are one more, and valid '
                    f'values are 0 = other/ignored, 1..{num_classes} and 255)')
    raise LabelMapError(f'label map {path!r} is not valid: {problem}. Check num_classes, '
                     'reduce_zero_label and the data set\'s classes.')
