"""Data sets and transforms with early checks, in resnest_mm's ``DATASETS``/``TRANSFORMS``.

Each toolbox's module is imported on its own, so that detection needs no MMSegmentation and
segmentation no MMDetection; configs import the one they use:

* ``resnest_mm.datasets.ade``: ``resnest_mm.CheckedADE20KDataset``, ``resnest_mm.CheckSegLabels``
  (MMSegmentation);
* ``resnest_mm.datasets.coco``: ``resnest_mm.CheckedCocoDataset`` (MMDetection).
"""
import importlib
from typing import Any

from .registry import DATASETS, TRANSFORMS

_LAZY = {'CheckedADE20KDataset': 'ade', 'CheckSegLabels': 'ade', 'CheckedCocoDataset': 'coco'}

__all__ = ['DATASETS', 'TRANSFORMS', *_LAZY]


def __getattr__(name: str) -> Any:
    # ``from resnest_mm.datasets import CheckedADE20KDataset`` imports only that toolbox's module.
    if name in _LAZY:
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
