from .engine import ResNetEngine
from .res2net import Res2Net
from .resnest import ResNeSt
from .resnet import ResNet, ResNetV1c, ResNetV1d
from .resnext import ResNeXt

__all__ = ['ResNetEngine', 'ResNet', 'ResNetV1c', 'ResNetV1d', 'ResNeXt', 'ResNeSt', 'Res2Net']
