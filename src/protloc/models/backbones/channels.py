"""Inputs with other than 3 channels (1: grey, 4: RGB + yellow): the stem's kernels and the normalisation.

Both derive the extra channels from the RGB ones in the same way, so a backbone's first convolution
and its input normalisation stay consistent.
"""
from __future__ import annotations

import torch
from torch import nn

from protloc.errors import ProtlocError


def expand_channels(values: tuple[float, float, float], in_chans: int) -> tuple[float, ...]:
    """Per-channel RGB statistics (mean or std) for `in_chans` inputs: the RGB average for the extra ones."""
    avg = sum(values) / 3
    if in_chans == 1:
        return (avg,)
    return tuple(values[:in_chans]) + (avg,) * max(0, in_chans - 3)


def adapt_stem(net: nn.Module, in_chans: int) -> None:
    """Make the first convolution take `in_chans` channels, derived from its RGB kernels (timm's approach).

    1 channel: the sum of the RGB kernels, so a grey image gives the response of its RGB copy.
    More channels: RGB kept, each extra one set to the RGB mean; all rescaled by 3/in_chans so that
    activations keep their scale when the channels carry similar intensities.
    """
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise ProtlocError(f"Cannot adapt this backbone's first convolution to {in_chans} channels.")
    rgb = conv.weight.detach()
    if in_chans == 1:
        new = rgb.sum(dim=1, keepdim=True)
    else:
        extra = rgb.mean(dim=1, keepdim=True).expand(-1, max(0, in_chans - 3), -1, -1)
        new = torch.cat([rgb[:, :in_chans], extra], dim=1) * (3 / in_chans)
    conv.weight = nn.Parameter(new.contiguous())
    conv.in_channels = in_chans
