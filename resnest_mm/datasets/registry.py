"""Data set and transform registries of resnest_mm (defined in :mod:`resnest_mm.registry`).

An MMSegmentation config reaches them as ``type='resnest_mm.CheckedADE20KDataset'``, an
MMDetection config as ``type='resnest_mm.CheckedCocoDataset'``; ``custom_imports`` of
``resnest_mm.datasets.ade`` or ``resnest_mm.datasets.coco`` registers them up front.
"""
from ..registry import DATASETS, TRANSFORMS

__all__ = ['DATASETS', 'TRANSFORMS']
