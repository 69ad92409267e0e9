"""Small synthetic data sets for the CPU demos and the tests.

* :func:`make_demo_coco` (``resnest_mm.demo_data.coco``): shapes on textured backgrounds in COCO's
  instance format, for the detection demos.
* :func:`make_demo_ade` (``resnest_mm.demo_data.ade``): toy street scenes in ADE20K's layout, for
  the segmentation demo.

Both are imported lazily, so that one generator's missing dependency does not break the other.
"""
from typing import Any

__all__ = ['make_demo_coco', 'make_demo_ade']


def make_demo_coco(root: str, **kwargs: Any) -> str:
    """See :func:`resnest_mm.demo_data.coco.make_demo_coco`."""
    from .coco import make_demo_coco as make
    return make(root, **kwargs)


def make_demo_ade(root: str, **kwargs: Any) -> str:
    """See :func:`resnest_mm.demo_data.ade.make_demo_ade`."""
    from .ade import make_demo_ade as make
    return make(root, **kwargs)
