"""Named variants: each is a backbone class and its arguments, nothing more.

``build_backbone('resnest50')`` is ``ResNeSt(depth=50)``; the names follow the official releases
and timm so that a checkpoint's name says which variant it fits.
"""
from typing import Any

from ..registry import MODELS


def _resnest_fast(radix: int, groups: int, width: int) -> dict:
    return dict(depth=50, radix=radix, groups=groups, base_width=width, avd_first=True)


VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{f'resnet{d}': ('ResNet', dict(depth=d)) for d in (18, 34, 50, 101, 152)},
    **{f'resnet{d}_v1c': ('ResNetV1c', dict(depth=d)) for d in (18, 34, 50, 101, 152)},
    **{f'resnet{d}_v1d': ('ResNetV1d', dict(depth=d)) for d in (18, 34, 50, 101, 152)},
    'resnext50_32x4d': ('ResNeXt', dict(depth=50, groups=32, base_width=4)),
    'resnext101_32x4d': ('ResNeXt', dict(depth=101, groups=32, base_width=4)),
    'resnext101_64x4d': ('ResNeXt', dict(depth=101, groups=64, base_width=4)),
    'resnext101_32x8d': ('ResNeXt', dict(depth=101, groups=32, base_width=8)),
    'resnext152_32x4d': ('ResNeXt', dict(depth=152, groups=32, base_width=4)),
    **{f'resnest{d}': ('ResNeSt', dict(depth=d)) for d in (14, 26, 50, 101, 200, 269)},
    'resnest50_fast_1s1x64d': ('ResNeSt', _resnest_fast(1, 1, 64)),
    'resnest50_fast_2s1x64d': ('ResNeSt', _resnest_fast(2, 1, 64)),
    'resnest50_fast_4s1x64d': ('ResNeSt', _resnest_fast(4, 1, 64)),
    'resnest50_fast_1s2x40d': ('ResNeSt', _resnest_fast(1, 2, 40)),
    'resnest50_fast_2s2x40d': ('ResNeSt', _resnest_fast(2, 2, 40)),
    'resnest50_fast_4s2x40d': ('ResNeSt', _resnest_fast(4, 2, 40)),
    'resnest50_fast_1s4x24d': ('ResNeSt', _resnest_fast(1, 4, 24)),
    'res2net50': ('Res2Net', dict(depth=50, scales=4, base_width=26)),
    'res2net101': ('Res2Net', dict(depth=101, scales=4, base_width=26)),
    'res2net152': ('Res2Net', dict(depth=152, scales=4, base_width=26)),
    **{f'res2net50_{w}w_{s}s': ('Res2Net', dict(depth=50, scales=s, base_width=w))
       for w, s in ((26, 4), (26, 6), (26, 8), (48, 2), (14, 8))},
    'res2net101_26w_4s': ('Res2Net', dict(depth=101, scales=4, base_width=26)),
}
# The original (7x7 stem, strided-conv shortcut) Res2Net release.
VARIANTS.update({
    f'{name}_v1': (cls, dict(kwargs, deep_stem=False, avg_down=False))
    for name, (cls, kwargs) in list(VARIANTS.items()) if name.startswith('res2net50_')
})


def variant_config(name: str, **overrides: Any) -> dict:
    """The registry config (``type='resnest_mm.X'`` plus arguments) of a named variant.

    ``overrides`` add arguments; one that the variant itself sets may only repeat its value
    (``depth=101`` for ``resnest50`` would be another network under the same name).
    """
    if name not in VARIANTS:
        raise ValueError(f'variant={name!r} is not known; choose one of {sorted(VARIANTS)}')
    cls, kwargs = VARIANTS[name]
    config = dict(type=f'resnest_mm.{cls}', **kwargs)
    clash = {k: v for k, v in overrides.items() if k in config and config[k] != v}
    if clash:
        raise ValueError(f'variant={name!r} sets {", ".join(f"{k}={config[k]!r}" for k in clash)}; '
                         f'the override {clash} would build another network; pick the variant '
                         'that has it')
    config.update(overrides)
    return config


def build_backbone(name: str, **overrides: Any):
    """Build a named variant, e.g. ``build_backbone('resnest50', out_indices=(3,))``."""
    from . import backbones  # noqa: F401  registers the classes
    return MODELS.build(variant_config(name, **overrides))
