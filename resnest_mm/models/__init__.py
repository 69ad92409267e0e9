"""Models of resnest_mm. Importing this module registers every backbone in ``resnest_mm.MODELS``.

It needs torch, mmengine and mmcv only: neither MMDetection nor MMSegmentation.
"""
import torch

from ..checkpoint import mmengine_safe_globals
from .backbones import Res2Net, ResNeSt, ResNet, ResNetV1c, ResNetV1d, ResNeXt
from .layers import SplitAttentionConv2d
from .variants import VARIANTS, build_backbone, variant_config

# PyTorch >= 2.6 loads with weights_only=True, which refuses the numpy values and mmengine
# objects every mmengine checkpoint holds: MMDetection's and MMSegmentation's own loaders
# (DetInferencer, init_detector, their tools/test.py) failed on a checkpoint of our configs,
# which import this module. Only those types are allowed; any other object is still refused.
torch.serialization.add_safe_globals(mmengine_safe_globals())

__all__ = ['ResNet', 'ResNetV1c', 'ResNetV1d', 'ResNeXt', 'ResNeSt', 'Res2Net',
           'SplitAttentionConv2d', 'VARIANTS', 'build_backbone', 'variant_config']
