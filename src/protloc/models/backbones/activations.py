"""ReLU6 that is in place for autograd too: the backbones' activations without a hidden copy.

PyTorch's in-place ReLU6 (`nn.ReLU6(inplace=True)`, which runs `hardtanh_`) keeps a copy of its input for the
backward pass, so "in place" saves no memory in training (pytorch/pytorch#95432; the fix, #190506, is not in
a release yet). efficientnet_lite0 and MobileNetV2 put one after nearly every convolution: at batch 32 and
224 px the copies are about 0.5 GiB of efficientnet_lite0's 2.4 GiB of saved activations, which made
fine-tuning on the CPU peak over 4 GB.

`InplaceReLU6` saves its output instead, as PyTorch's own `relu_` does. The output is clamped to [0, 6], so
"input strictly between 0 and 6" and "output strictly between 0 and 6" pick the same elements:
`hardtanh_backward` given the output returns the same gradients bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _ReLU6SavingOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        x.clamp_(0.0, 6.0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad_output, output, 0.0, 6.0)


class InplaceReLU6(nn.ReLU6):
    """`nn.ReLU6(inplace=True)` whose backward keeps the output, not a copy of the input."""

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Only where autograd records the step; elsewhere (inference, ONNX export, tracing) PyTorch's own op.
        if x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return _ReLU6SavingOutput.apply(x)
        return F.relu6(x, inplace=True)


def use_inplace_relu6(net: nn.Module) -> int:
    """Replace each `nn.ReLU6(inplace=True)` inside `net` by `InplaceReLU6`; returns how many. Out-of-place
    ReLU6 modules stay: their input may be needed elsewhere."""
    targets = [name for name, module in net.named_modules()
               if type(module) is nn.ReLU6 and module.inplace]
    for name in targets:
        net.set_submodule(name, InplaceReLU6())
    return len(targets)
