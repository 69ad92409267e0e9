"""Inference: a batch norm folded into the conv before it, where that is cheaper.

In evaluation a batch norm is a per-channel affine map with fixed statistics, so ``norm(conv(x))``
is one conv with the weight scaled per output channel and a bias:
``scale = gamma / sqrt(running_var + eps)``, ``weight * scale``, ``beta + (bias - mean) * scale``.
That spares a whole pass over the conv's output. The folded weight is computed per call (nothing
is cached, so it can never be stale), which costs about one pass over the weight: it pays where
the weight is light for the map (ResNets' first stages at 224x224), not in the last stage. On the
2-core AVX-512 machine this package is benchmarked on, ResNeSt-50's 64->128 split conv with its
norm and activation at 56x56 took 0.58x the time folded, the 256->512 one at 28x28 0.88x, while
the 512->1024 one at 14x14 took 1.06x (not folded).

Only where it is exactly the same computation up to float rounding: autograd off, CPU, float32
or float64 (a half-precision folded weight would round the scale into it), no autocast, not a
traced or exported graph (deployment runtimes fold on their own), a plain
:class:`~torch.nn.BatchNorm2d` or :class:`~torch.nn.SyncBatchNorm` in eval mode with running
statistics, one of this package's plain convs, and no forward hooks on either module (a hook
would not see the norm run). Everything else runs ``norm(conv(x))``.
"""
import torch
import torch.nn as nn

from .layout import graph_capture, no_hooks
from .pointwise import PointwiseConv2d
from .spatial import SpatialConv2d, _out_size

#: Fold where the conv's weight has at most this many values per output channel
#: (in_channels / groups x kernel area) per output position (batch x height x width).
#: Measured: 0.73 gained, 2.9 lost.
FOLD_MAX_RATIO = 1.0

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_CONVS = (PointwiseConv2d, SpatialConv2d)


def folds(conv: nn.Module, norm: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`conv_norm` folds ``norm`` into ``conv`` for this input."""
    # Cheapest and most often decisive first: this runs before every conv and its norm.
    if (not x.is_cpu or torch.is_grad_enabled() or type(conv) not in _CONVS
            or type(norm) not in _NORMS or norm.training or norm.running_mean is None
            or norm.running_var is None or x.dim() != 4
            or x.dtype not in (torch.float32, torch.float64)
            or torch.is_autocast_enabled('cpu') or graph_capture()
            or isinstance(conv.padding, str) or not no_hooks(conv, norm)):
        return False
    h, w = (_out_size(x.shape[i + 2], conv.kernel_size[i], conv.stride[i], conv.padding[i],
                      conv.dilation[i]) for i in range(2))
    return conv.weight[0].numel() <= FOLD_MAX_RATIO * x.shape[0] * h * w


def conv_norm(conv: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``, as one conv with the norm folded in where :func:`folds` says so."""
    if not folds(conv, norm, x):
        return norm(conv(x))
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean if conv.bias is None else conv.bias - norm.running_mean
    shift = shift * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    # Elementwise: the scaled weight keeps the weight's memory layout.
    return conv.conv_with(x, conv.weight * scale.view(-1, 1, 1, 1), shift)


def run_sequential(seq: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)``; for an ``nn.Sequential``, every conv followed by its norm runs through
    :func:`conv_norm`."""
    if not isinstance(seq, nn.Sequential) or not no_hooks(seq):
        return seq(x)
    pending = None  # a conv waiting to see whether a norm follows
    for m in seq:
        if pending is not None:
            x = conv_norm(pending, m, x) if isinstance(m, _NORMS) else m(pending(x))
            pending = None
        elif type(m) in _CONVS:
            pending = m
        else:
            x = m(x)
    return x if pending is None else pending(x)
