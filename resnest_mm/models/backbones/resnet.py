"""ResNet (He et al., 2016) and its C/D variants: the baseline of every table."""
from ...registry import MODELS
from ..checks import fail
from .blocks import BasicBlock, ConvBottleneck
from .engine import ResNetEngine


@MODELS.register_module()
class ResNet(ResNetEngine):
    """ResNet backbone (depth 18, 34, 50, 101 or 152).

    ``deep_stem=True`` gives ResNet-C (V1c, MMSegmentation's baselines), ``avg_down=True`` on top
    gives ResNet-D (V1d). All other arguments are those of :class:`ResNetEngine`.

    Example:
        >>> import torch
        >>> from resnest_mm.models import ResNet
        >>> model = ResNet(depth=18).eval()
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 64, 16, 16)
        (1, 128, 8, 8)
        (1, 256, 4, 4)
        (1, 512, 2, 2)
    """

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (ConvBottleneck, (3, 4, 6, 3)),
        101: (ConvBottleneck, (3, 4, 23, 3)),
        152: (ConvBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, *, depth: int = 50, **kwargs) -> None:
        super().__init__(depth=depth, **kwargs)


def _fixed_stem(owner: str, deep_stem: bool, avg_down: bool, want: tuple[bool, bool]) -> None:
    """Refuse a stem or shortcut other than the one the class name stands for (MMDetection's
    V1c/V1d fail on any such argument with a TypeError)."""
    for name, value, fixed in (('deep_stem', deep_stem, want[0]), ('avg_down', avg_down, want[1])):
        if value is not fixed:
            fail(owner, name, value, f'{owner} always has deep_stem={want[0]} and '
                 f'avg_down={want[1]}; for another stem or shortcut use ResNet(deep_stem=..., '
                 'avg_down=...)')


@MODELS.register_module()
class ResNetV1c(ResNet):
    """ResNet-C: :class:`ResNet` with the deep (3x3 x3) stem."""

    def __init__(self, *, deep_stem: bool = True, avg_down: bool = False, **kwargs) -> None:
        _fixed_stem(type(self).__name__, deep_stem, avg_down, (True, False))
        super().__init__(deep_stem=deep_stem, avg_down=avg_down, **kwargs)


@MODELS.register_module()
class ResNetV1d(ResNet):
    """ResNet-D: :class:`ResNet` with the deep stem and average-pool shortcut downsampling."""

    def __init__(self, *, deep_stem: bool = True, avg_down: bool = True, **kwargs) -> None:
        _fixed_stem(type(self).__name__, deep_stem, avg_down, (True, True))
        super().__init__(deep_stem=deep_stem, avg_down=avg_down, **kwargs)
