"""Registries of resnest_mm.

``MODELS`` is a direct child of mmengine's root ``MODELS`` registry with its own scope, so configs
of MMDetection and MMSegmentation reach our backbones as ``type='resnest_mm.ResNeSt'`` (after
``custom_imports=dict(imports=['resnest_mm.models'])``) while their own ``ResNeSt``, ``ResNeXt`` and
``Res2Net`` keep resolving to their own classes.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='resnest_mm',
                  locations=['resnest_mm.models'])

__all__ = ['MODELS']
