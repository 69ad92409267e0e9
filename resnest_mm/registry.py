"""Registries of resnest_mm.

Each is a direct child of mmengine's root registry of its kind with the ``resnest_mm`` scope, so
configs of MMDetection and MMSegmentation reach our classes as ``type='resnest_mm.ResNeSt'``,
``type='resnest_mm.CheckedCocoDataset'`` and so on, while their own ``ResNeSt``, ``ResNeXt`` and
``Res2Net`` keep resolving to their own classes. They live in this module because mmengine
imports ``<scope>.registry`` when it meets a scoped name: a config that names one of them finds
it even where ``custom_imports`` did not import the module that defines it (the locations are
imported on the first lookup; data sets and transforms of the toolboxes that are installed).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='resnest_mm',
                  locations=['resnest_mm.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='resnest_mm',
                    locations=['resnest_mm.datasets.installed'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='resnest_mm',
                      locations=['resnest_mm.datasets.installed'])

__all__ = ['MODELS', 'DATASETS', 'TRANSFORMS']
