"""resnest_mm: ResNeSt, ResNeXt, Res2Net and ResNet backbones for MMDetection and MMSegmentation."""
from .version import __version__

__all__ = ['__version__']
