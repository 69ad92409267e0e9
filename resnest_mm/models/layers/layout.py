"""Memory-layout helpers for backbones that compute channels-last but return NCHW.

A stage output that is both returned (NCHW, for necks and mmcv ops) and read by the next stage
(channels-last, for oneDNN) would otherwise live twice through the backward pass: once held by the
caller and once saved by autograd. These helpers keep only the NCHW tensor and rebuild the
channels-last one when the backward pass needs it. Also here: the checks every layer makes
before it picks a way (graph capture, forward hooks, half precision this CPU has no kernels
for).
"""
import functools
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules import module as _module
from torch.optim.optimizer import register_optimizer_step_pre_hook


#: ``torch.compiler.is_exporting`` (December 2024); where a torch lacks it, is_compiling covers
#: export.
_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)


def graph_capture() -> bool:
    """Whether the code is being traced, scripted, compiled or exported: graphs get the plain
    ops (no custom autograd functions or saved-tensor hooks)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling() or _is_exporting())


def no_hooks(*modules: nn.Module) -> bool:
    """Whether no hook (global or of ``modules``; forward or backward) would see these modules
    run: a hook needs its module called whole."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or m._backward_pre_hooks for m in modules)


@functools.lru_cache(maxsize=None)
def _native_half_precision() -> dict:
    """Which half-precision types this CPU computes convs and products in natively (oneDNN's
    check: AVX-512 BF16/FP16 or AMX)."""
    try:
        return {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}
    except (AttributeError, RuntimeError):  # a PyTorch without the checks: assume native
        return {torch.bfloat16: True, torch.float16: True}


def emulated_half_precision(x: torch.Tensor) -> bool:
    """Whether a CPU conv or matrix product of ``x`` would compute in a half-precision type that
    this CPU lacks (``x``'s, or the CPU autocast type). PyTorch then falls back to generic
    kernels, for which this package's other ways (matrix-product 1x1 convs and weight gradients,
    NCHW convs) were never tuned: on a 2-core AMD EPYC (AVX2) a ResNeSt-50 training step under
    bfloat16 autocast spent over 6 s of its 14 in the matrix products and ran at 0.60x
    MMDetection's speed, and at 0.92x with plain channels-last convs instead (every
    implementation there ran 8x-30x slower than in float32)."""
    autocast = torch.is_autocast_enabled('cpu') and x.dtype != torch.float64  # left as it is
    dtype = torch.get_autocast_dtype('cpu') if autocast else x.dtype
    return not _native_half_precision().get(dtype, True)


def layouts_fixed() -> bool:
    """Whether parameters must keep the memory layout they have: under ``torch.distributed``.
    DDP lays out its gradient buckets by the parameters' strides when it wraps the model; a
    parameter re-laid out after that got its gradient's elements permuted (DDP over gloo,
    default settings: a relative error of 1.0 in the first step's conv weight gradients)."""
    return dist.is_available() and dist.is_initialized()


#: Set on a parameter whose memory layout must not change any more (see :func:`settle_layouts`).
SETTLED = '_resnest_mm_layout_settled'


def settle_layouts(params: Iterable[torch.Tensor]) -> None:
    """Keep these parameters in the layout they have from now on.

    Called after a backbone's first training forward pass (:func:`settle_module_once`), which
    laid out each weight as its conv computes at that input size, and for a weight whose
    gradient a pass records (:func:`settle_if_recorded`; in eval mode too, and for a parameter
    put in after training began). An optimiser's state (momentum, Adam's moments) takes the layout of the first
    gradients; PyTorch's fused optimisers (``fused=True``) then walk parameter, gradient and
    state by raw offset, so a weight re-laid out later (another input size in multi-scale
    training, a validation pass between epochs) got its update applied to the wrong elements
    (SGD, multi-scale: relative parameter errors up to 0.67)."""
    for p in params:
        setattr(p, SETTLED, True)


#: Set on a module's first parameter once :func:`settle_module_once` settled all of them.
MODULE_SETTLED = '_resnest_mm_module_layouts_settled'


def settle_module_once(module: nn.Module) -> None:
    """Settle all of ``module``'s parameters, once. Read from its first parameter, not from a
    flag of the module: a deepcopy or an assigning ``load_state_dict`` brings new parameters,
    which settle afresh."""
    first = next(module.parameters(), None)
    if first is None or getattr(first, MODULE_SETTLED, False):
        return
    settle_layouts(module.parameters())
    setattr(first, MODULE_SETTLED, True)


def layouts_settled(param: torch.Tensor) -> bool:
    """Whether :func:`settle_layouts` has fixed this parameter's layout."""
    return getattr(param, SETTLED, False)


def storage_shared(param: torch.Tensor) -> bool:
    """Whether another tensor views ``param``'s memory: e.g. mmengine's
    ``ExponentialMovingAverage``, which keeps ``state_dict()`` views of its model's parameters
    and updates them in place. Moved to new memory, the parameter would leave such views
    updating memory it no longer reads (an EMA model's weights stopped moving once it had been
    evaluated)."""
    use_count = getattr(torch._C, '_storage_Use_Count', None)
    if use_count is None:  # a PyTorch without the count: assume a view may exist
        return True
    # One reference is the parameter's own, one the storage object asked here.
    return use_count(param.untyped_storage()._cdata) > 2


def arrange_parameter(param: torch.Tensor, memory_format: torch.memory_format) -> None:
    """Store ``param`` (and its gradient) in ``memory_format``. It stays the same Parameter object
    (optimisers, hooks); only its storage changes. Done outside inference mode, so a first call
    under it leaves no inference tensor behind. Nothing changes under ``torch.distributed``
    (:func:`layouts_fixed`), once the parameter's layout is settled (:func:`settle_layouts`), or
    while another tensor views its memory (:func:`storage_shared`): the convs then read the
    weight in the layout it has. A call that records the parameter's gradient settles it."""
    if layouts_settled(param) or layouts_fixed():
        return
    if not param.is_contiguous(memory_format=memory_format) and not storage_shared(param):
        with torch.inference_mode(False), torch.no_grad():
            param.data = param.data.contiguous(memory_format=memory_format)
            if param.grad is not None:
                param.grad = param.grad.contiguous(memory_format=memory_format)
    settle_if_recorded(param)


def settle_if_recorded(param: torch.Tensor) -> None:
    """Settle ``param`` (:func:`settle_layouts`) when this pass records its gradient: an
    optimiser's state will take the layout it has now."""
    if torch.is_grad_enabled() and param.requires_grad:
        settle_layouts((param,))


def state_layouts_follow_parameters(optimizer: torch.optim.Optimizer, *_) -> None:
    """Before an optimiser's step: lay out each state tensor (momentum, Adam's moments) of a
    parameter's shape as that parameter is laid out.

    A state restored by ``load_state_dict`` keeps the layout it was saved with, which can differ
    from the resumed parameters' (a run saved outside ``torch.distributed`` and resumed under
    it, where the weights keep the layout they were built with; or resumed at another first
    input size). PyTorch's fused optimisers walk parameter, gradient and state by raw offset,
    whatever their strides: the update then went to the wrong elements (relative parameter
    errors of 0.2-0.4 after one step). The for-loop and foreach optimisers update right on any
    strides, but slower on mixed ones, for the rest of the run: a ResNeSt-50 SGD step (momentum,
    for-loop, one thread) took 27 ms instead of 17 with its 3x3 weights' states in the other
    layout. Registered for every optimiser when this module is imported; it re-lays out the
    state of fused optimisers and of PyTorch's own (``torch.optim``) for-loop and foreach ones,
    not of other optimisers, and not a state kept on another device than its parameter; a
    state that already matches is not copied."""
    fused = any(group.get('fused') for group in optimizer.param_groups)
    if not fused and not type(optimizer).__module__.startswith('torch.optim'):
        # Others may hold their state as they need it (views into a flat buffer, say): a
        # for-loop or foreach step only runs slower on mixed strides, never wrongly.
        return
    states = optimizer.state
    for group in optimizer.param_groups:
        for p in group['params']:
            # Only conv weights change layout: the rest is skipped first (host time per step
            # counts on GPUs: 1.1 ms for ResNeSt-101's 516 parameters checked in full).
            if p.dim() != 4 or p not in states:
                continue
            state, strides = states[p], p.stride()
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.dim() == 4
                        and value.stride() != strides and value.shape == p.shape
                        and value.device == p.device):  # offloaded state stays where it is
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


_STATE_HOOK = register_optimizer_step_pre_hook(state_layouts_follow_parameters)


#: Elements per block of :func:`nchw_copy`: the block read (every channel of a run of positions)
#: stays in the core's cache while it is written out channel by channel.
NCHW_COPY_BLOCK = 1 << 17


def nchw_copy(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()``; for a channels-last CPU map, copied a block of positions at a time.

    The plain copy writes each channel's plane in turn and so reads a channels-last ``x`` with a
    stride of ``C`` elements: on maps larger than the cache every read misses, and each cache line
    is fetched once per channel it holds. A run of positions at a time keeps the lines read in
    cache until all their channels are written: 2x to 4x faster on a 2-core AVX-512 machine for
    56x56 to 200x304 maps, the same below about 14x14. Same values; no autograd of its own (see
    :func:`to_nchw`).
    """
    if (not x.is_cpu or x.dim() != 4 or x.is_contiguous() or graph_capture()
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return x.contiguous()
    n, c, h, w = x.shape
    run = max(1, NCHW_COPY_BLOCK // c)
    if h * w <= run:
        return x.contiguous()
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: x is channels-last
    # Returned as allocated, not as a view: an activation may then run on it in place.
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    planes = out.view(n, c, h * w)
    for start in range(0, h * w, run):
        planes[:, :, start:start + run].copy_(rows[:, start:start + run].transpose(1, 2))
    return out


class _ToNCHW(torch.autograd.Function):
    """``x.contiguous()`` whose gradient goes back channels-last, the layout of the ops before
    it (oneDNN's batch-norm backward is slow when input and gradient layouts differ)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return nchw_copy(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """A contiguous (NCHW) copy of a channels-last ``x``; ``x`` itself when it already is."""
    if x.is_contiguous():
        return x
    if torch.is_grad_enabled() and x.requires_grad and not graph_capture():
        return _ToNCHW.apply(x)
    return nchw_copy(x)


_any_layout_saves = threading.local()


@contextmanager
def saves_take_any_layout() -> Iterator[None]:
    """Marks the tensors autograd saves inside this block (for a backward pass that works with
    any memory layout) so that :class:`SavedAsNCHW` hands them back without a copy."""
    before = getattr(_any_layout_saves, 'on', False)
    _any_layout_saves.on = True
    try:
        yield
    finally:
        _any_layout_saves.on = before


class SavedAsNCHW:
    """Autograd saves of one channels-last map, or of views of it, are kept as its NCHW copy.

    The copy may be made after the saves (``set_nchw``): a block's activation saves its output
    before that output is converted for the caller. In the backward pass each save that needs the
    channels-last map gets it rebuilt from the copy; whole-tensor saves marked by
    :func:`saves_take_any_layout` get the NCHW copy itself.

    Args:
        channels_last: The map whose saves are redirected: a channels-last tensor that is the
            whole of its storage (its views are recognised by that storage).
        nchw: Its NCHW copy, if it already exists.
    """

    def __init__(self, channels_last: torch.Tensor, nchw: Optional[torch.Tensor] = None) -> None:
        if not self.accepts(channels_last):
            raise ValueError('SavedAsNCHW: channels_last must be a channels-last tensor that is '
                             f'the whole of its storage; got size {tuple(channels_last.shape)}, '
                             f'stride {channels_last.stride()}, offset '
                             f'{channels_last.storage_offset()}')
        self._storage = channels_last.untyped_storage().data_ptr()
        self._device = channels_last.device
        self._whole = (channels_last.size(), channels_last.stride(), 0)
        self._nchw = None if nchw is None else nchw.detach()
        self._nchw_version = None if nchw is None else nchw._version

    @staticmethod
    def accepts(t: torch.Tensor) -> bool:
        """Whether ``t`` is a channels-last map that is the whole of its storage."""
        return (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
                and t.storage_offset() == 0
                and t.untyped_storage().nbytes() == t.numel() * t.element_size())

    def set_nchw(self, nchw: torch.Tensor) -> None:
        """Give the NCHW copy (same values); needed before the backward pass."""
        # Detached: the graph holds this object, and the copy's own graph may hold the saves
        # (an activation's); a tensor with its grad_fn would close a cycle that never frees.
        self._nchw = nchw.detach()
        self._nchw_version = nchw._version  # shared with the detached alias

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Redirect the saves made inside this block."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def _pack(self, t: torch.Tensor):
        if t.device != self._device or t.untyped_storage().data_ptr() != self._storage:
            # Detached: an op saving its own output would otherwise hold that output's grad_fn,
            # itself, and never be freed without a backward pass. Autograd rebuilds the
            # unpacked tensor's history from what it recorded at the save.
            return t.detach()
        geometry = (t.size(), t.stride(), t.storage_offset())
        if geometry == self._whole and getattr(_any_layout_saves, 'on', False):
            return (self, None)
        return (self, geometry)

    def _unpack(self, packed):
        if not (isinstance(packed, tuple) and len(packed) == 2 and packed[0] is self):
            return packed
        if self._nchw._version != self._nchw_version:
            # What autograd says of a saved tensor changed in place; rebuilt from the changed
            # copy, the gradients would be silently wrong.
            raise RuntimeError(
                'one of the variables needed for gradient computation has been modified by an '
                'inplace operation: a stage output the backbone returned (shape '
                f'{tuple(self._nchw.shape)}), which the backward pass reads; change a copy '
                '(out = out * s) instead')
        geometry = packed[1]
        if geometry is None:
            return self._nchw
        # Same shape, so the channels-last copy has the original's strides. Rebuilt per use:
        # keeping one copy for all the uses lengthens its life and raised the peak.
        rebuilt = self._nchw.contiguous(memory_format=torch.channels_last)
        return rebuilt.as_strided(*geometry)

