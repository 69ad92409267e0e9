"""Models of resnest_mm. Importing this module registers every backbone in ``resnest_mm.MODELS``.

It needs torch, mmengine and mmcv only: neither MMDetection nor MMSegmentation.
"""
from .backbones import Res2Net, ResNeSt, ResNet, ResNetV1c, ResNetV1d, ResNeXt
from .layers import SplitAttentionConv2d
from .variants import VARIANTS, build_backbone, variant_config

__all__ = ['ResNet', 'ResNetV1c', 'ResNetV1d', 'ResNeXt', 'ResNeSt', 'Res2Net',
           'SplitAttentionConv2d', 'VARIANTS', 'build_backbone', 'variant_config']
