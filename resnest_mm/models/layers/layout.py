"""Memory-layout helpers for backbones that compute channels-last but return NCHW.

A stage output that is both returned (NCHW, for necks and mmcv ops) and read by the next stage
(channels-last, for oneDNN) would otherwise live twice through the backward pass: once held by the
caller and once saved by autograd. These helpers keep only the NCHW tensor and rebuild the
channels-last one when the backward pass needs it.
"""
import threading
from contextlib import contextmanager
from typing import Iterator

import torch


def graph_capture() -> bool:
    """Whether the code is being traced, scripted, compiled or exported: graphs get the plain
    ops (no custom autograd functions or saved-tensor hooks)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting())


def arrange_parameter(param: torch.Tensor, memory_format: torch.memory_format) -> None:
    """Store ``param`` (and its gradient) in ``memory_format``. It stays the same Parameter object
    (optimisers, hooks); only its storage changes. Done outside inference mode, so a first call
    under it leaves no inference tensor behind."""
    if param.is_contiguous(memory_format=memory_format):
        return
    with torch.inference_mode(False), torch.no_grad():
        param.data = param.data.contiguous(memory_format=memory_format)
        if param.grad is not None:
            param.grad = param.grad.contiguous(memory_format=memory_format)


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


_any_layout_saves = threading.local()


@contextmanager
def saves_take_any_layout() -> Iterator[None]:
    """Marks the tensors autograd saves inside this block (for a backward pass that works with
    any memory layout) so that :func:`save_as_nchw` hands them back without a copy."""
    before = getattr(_any_layout_saves, 'on', False)
    _any_layout_saves.on = True
    try:
        yield
    finally:
        _any_layout_saves.on = before


@contextmanager
def save_as_nchw(channels_last: torch.Tensor, nchw: torch.Tensor) -> Iterator[None]:
    """Inside this block, autograd saves ``nchw`` wherever it would save ``channels_last`` (the
    same values in the other layout) or a view of it, and converts it back in the backward pass:
    one copy per use there instead of a second feature map kept alive until then. Whole-tensor
    saves marked by :func:`saves_take_any_layout` get ``nchw`` itself back."""
    storage = channels_last.untyped_storage().data_ptr()
    whole = (channels_last.size(), channels_last.stride(), channels_last.storage_offset())

    def pack(t: torch.Tensor):
        if t.device == nchw.device and t.untyped_storage().data_ptr() == storage:
            geometry = (t.size(), t.stride(), t.storage_offset())
            if geometry == whole and getattr(_any_layout_saves, 'on', False):
                return (nchw,)
            return (nchw, *geometry)
        return t

    def unpack(packed):
        if isinstance(packed, tuple):
            if len(packed) == 1:
                return packed[0]
            source, size, stride, offset = packed
            # Same shape, so the new channels-last copy has the original's strides.
            return source.contiguous(memory_format=torch.channels_last).as_strided(
                size, stride, offset)
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
