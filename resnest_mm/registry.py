"""Registries of resnest_mm.

Each is a direct child of mmengine's root registry of its kind with the ``resnest_mm`` scope, so
configs of MMDetection and MMSegmentation reach our classes as ``type='resnest_mm.ResNeSt'``,
``type='resnest_mm.CheckedCocoDataset'`` and so on, while their own ``ResNeSt``, ``ResNeXt`` and
``Res2Net`` keep resolving to their own classes. They live in this module because mmengine
imports ``<scope>.registry`` when it meets a scoped name: a config that names one of them finds
it even where ``custom_imports`` did not import the module that defines it: the models on the
first lookup, a toolbox's data sets and transforms on the first lookup after that toolbox was
imported (a detection run never imports MMSegmentation for them).
"""
import importlib
import sys

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

#: The data set module of each toolbox (its classes need that toolbox).
TOOLBOX_DATASET_MODULES = {'mmdet': 'resnest_mm.datasets.coco', 'mmseg': 'resnest_mm.datasets.ade'}


class _ToolboxDataRegistry(Registry):
    """Imports the data set module of every toolbox the process has imported, at each lookup
    until it is in (mmengine's own registries import their locations once, at the first)."""

    def import_from_location(self) -> None:
        for toolbox, module in TOOLBOX_DATASET_MODULES.items():
            if toolbox in sys.modules and module not in sys.modules:
                importlib.import_module(module)


MODELS = Registry('model', parent=MMENGINE_MODELS, scope='resnest_mm',
                  locations=['resnest_mm.models'])
DATASETS = _ToolboxDataRegistry('dataset', parent=MMENGINE_DATASETS, scope='resnest_mm')
TRANSFORMS = _ToolboxDataRegistry('transform', parent=MMENGINE_TRANSFORMS, scope='resnest_mm')

__all__ = ['MODELS', 'DATASETS', 'TRANSFORMS']
