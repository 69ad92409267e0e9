"""ResNeXt (Xie et al., 2017): a ResNet whose 3x3 convs are grouped (cardinality)."""
from ...registry import MODELS
from ..checks import check_int
from .blocks import ConvBottleneck
from .engine import ResNetEngine


@MODELS.register_module()
class ResNeXt(ResNetEngine):
    """ResNeXt backbone (depth 50, 101 or 152), e.g. 32x4d, 64x4d, 32x8d.

    Args:
        depth: 50, 101 or 152.
        groups: Cardinality: groups of every 3x3 conv.
        base_width: Channels per group in the first stage (4 for 32x4d).
        **kwargs: See :class:`ResNetEngine`.

    Example:
        >>> import torch
        >>> from resnest_mm.models import ResNeXt
        >>> model = ResNeXt(depth=50, groups=32, base_width=4).eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))][-1]
        (1, 2048, 2, 2)
    """

    arch_settings = {
        50: (ConvBottleneck, (3, 4, 6, 3)),
        101: (ConvBottleneck, (3, 4, 23, 3)),
        152: (ConvBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, *, depth: int = 50, groups: int = 32, base_width: int = 4,
                 **kwargs) -> None:
        check_int(type(self).__name__, 'groups', groups, 1)
        check_int(type(self).__name__, 'base_width', base_width, 1)
        self_kwargs = dict(groups=groups, base_width=base_width)
        super().__init__(depth=depth, block_kwargs=self_kwargs, **kwargs)
        self.groups = groups
        self.base_width = base_width
