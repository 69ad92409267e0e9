"""Memory-layout helpers for backbones that compute channels-last but return NCHW.

A stage output that is both returned (NCHW, for necks and mmcv ops) and read by the next stage
(channels-last, for oneDNN) would otherwise live twice through the backward pass: once held by the
caller and once saved by autograd. These helpers keep only the NCHW tensor and rebuild the
channels-last one when the backward pass needs it.
"""
from contextlib import contextmanager
from typing import Iterator

import torch


def graph_capture() -> bool:
    """Whether the code is being traced, scripted, compiled or exported: graphs get the plain
    ops (no custom autograd functions or saved-tensor hooks)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting())


class _ToNCHW(torch.autograd.Function):
    """``x.contiguous()`` whose gradient goes back channels-last, the layout of the ops before
    it (oneDNN's batch-norm backward is slow when input and gradient layouts differ)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """A contiguous (NCHW) copy of a channels-last ``x``; ``x`` itself when it already is."""
    if x.is_contiguous():
        return x
    if torch.is_grad_enabled() and x.requires_grad and not graph_capture():
        return _ToNCHW.apply(x)
    return x.contiguous()


@contextmanager
def save_as_nchw(channels_last: torch.Tensor, nchw: torch.Tensor) -> Iterator[None]:
    """Inside this block, autograd saves ``nchw`` wherever it would save ``channels_last`` (the
    same values in the other layout) or a view of it, and converts it back in the backward pass:
    one copy per use there instead of a second feature map kept alive until then."""
    storage = channels_last.untyped_storage().data_ptr()

    def pack(t: torch.Tensor):
        if t.device == nchw.device and t.untyped_storage().data_ptr() == storage:
            return nchw, t.size(), t.stride(), t.storage_offset()
        return t

    def unpack(packed):
        if isinstance(packed, tuple):
            source, size, stride, offset = packed
            # Same shape, so the new channels-last copy has the original's strides.
            return source.contiguous(memory_format=torch.channels_last).as_strided(
                size, stride, offset)
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
