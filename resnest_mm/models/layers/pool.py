"""An average pool whose backward pass keeps only its input's shape.

``F.avg_pool2d`` saves its whole input for the backward pass, which needs only the input's size
and layout. Where nothing else keeps that input (ResNeSt's ``avd`` pool after split attention,
the ``avg_down`` shortcut reading a stage's NCHW output) it would be one more feature map alive
until the backward pass reaches it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .layout import graph_capture


class _AvgPoolKeepingShape(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor, args: tuple) -> torch.Tensor:
        ctx.args = args
        ctx.input_size = x.shape
        ctx.memory_format = (torch.channels_last
                             if x.is_contiguous(memory_format=torch.channels_last)
                             and not x.is_contiguous() else torch.contiguous_format)
        return F.avg_pool2d(x, *args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        # The kernel reads only the size and layout of this stand-in, never its values.
        like = torch.empty(ctx.input_size, dtype=grad.dtype, device=grad.device,
                           memory_format=ctx.memory_format)
        return torch.ops.aten.avg_pool2d_backward(grad, like, *ctx.args), None


class ShapeOnlyAvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` (same arguments, results and gradients) that keeps only its input's
    shape for the backward pass; traced, scripted and exported graphs get the plain op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not (torch.is_grad_enabled() and x.requires_grad) or graph_capture():
            return super().forward(x)
        # (nn.AvgPool2d already turned stride=None into the kernel size.)
        args = (list(_pair(self.kernel_size)), list(_pair(self.stride)), list(_pair(self.padding)),
                self.ceil_mode, self.count_include_pad, self.divisor_override)
        return _AvgPoolKeepingShape.apply(x, args)
