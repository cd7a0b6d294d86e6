"""Multi-label losses on logits: plain BCE or focal loss, both optionally weighting positives per class.

Compartments are very unequal in frequency (nucleoplasm in half the images, some classes in under 1%),
so positives of rare classes can be weighted up (`auto_pos_weight`) and focal loss can quiet the many
easy negatives.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from protloc.errors import ProtlocError
from protloc.training.config import LOSSES


class FocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision's), averaged over all image-class pairs.

    alpha=None means no alpha balancing. `pos_weight` (one per class) multiplies the loss of positive
    targets, exactly as BCEWithLogitsLoss's does for 0/1 targets, so gamma=0 reduces to weighted BCE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, pos_weight: torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ProtlocError(f"focal loss gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ProtlocError(f"focal loss alpha must be between 0 and 1, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = alpha
        # A buffer so the weights follow the module to the GPU and into state_dict.
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        loss = sigmoid_focal_loss(
            logits, targets, alpha=-1.0 if self.alpha is None else self.alpha, gamma=self.gamma, reduction="none"
        )
        if self.pos_weight is not None:
            loss = loss * (1 + (self.pos_weight.to(logits.dtype) - 1) * targets)
        return loss.mean()


def auto_pos_weight(targets, min_weight: float = 1.0, max_weight: float = 50.0) -> torch.Tensor:
    """Per-class weight for positives: negatives / positives, clipped to [min_weight, max_weight].

    The clip keeps a class with a handful of positives from dominating the loss; a class with no
    positives gets max_weight, which is harmless because it has no positive terms to weight.
    """
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    labels = np.asarray(targets, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ProtlocError(f"targets: expected a non-empty 2-D (images, classes) array, got shape {labels.shape}")
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    ratio = np.divide(negatives, positives, out=np.full_like(positives, np.inf), where=positives > 0)
    return torch.as_tensor(np.clip(ratio, min_weight, max_weight), dtype=torch.float32)


def make_loss(name: str, pos_weight: torch.Tensor | None = None, *, gamma: float = 2.0) -> nn.Module:
    """The named training loss: "bce" (BCEWithLogitsLoss) or "focal" (FocalLoss with `gamma`)."""
    if name == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if name == "focal":
        return FocalLoss(gamma=gamma, pos_weight=pos_weight)
    raise ProtlocError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
