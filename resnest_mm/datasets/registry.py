"""Data set and transform registries of resnest_mm.

Children of mmengine's root ``DATASETS`` and ``TRANSFORMS`` with the ``resnest_mm`` scope, like
:data:`resnest_mm.registry.MODELS`: an MMSegmentation config reaches them as
``type='resnest_mm.CheckedADE20KDataset'`` once ``custom_imports`` imports
``resnest_mm.datasets.ade`` (``resnest_mm.datasets.coco`` for ``resnest_mm.CheckedCocoDataset``).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='resnest_mm',
                    locations=['resnest_mm.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='resnest_mm',
                      locations=['resnest_mm.datasets'])

__all__ = ['DATASETS', 'TRANSFORMS']
