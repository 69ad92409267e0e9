"""Choosing between a plain and a deformable conv."""
from typing import Optional


def register_dcn() -> None:
    """Register mmcv's deformable convs (DCN, DCNv2) in its conv registry: importing mmcv.ops
    does it. MMDetection imports it; a script that builds our backbone alone may not have."""
    import mmcv.ops  # noqa: F401


def conv_or_dcn_cfg(conv_cfg: Optional[dict], dcn: Optional[dict], stride: int
                    ) -> Optional[dict]:
    """The conv config for a 3x3 conv that may be deformable.

    ``dcn['fallback_on_stride']`` keeps strided convs plain. The dict given is never mutated
    (it is shared by every block of the network).
    """
    if dcn is None:
        return conv_cfg
    if dcn.get('fallback_on_stride', False) and stride > 1:
        return conv_cfg
    register_dcn()
    return {k: v for k, v in dcn.items() if k != 'fallback_on_stride'}
