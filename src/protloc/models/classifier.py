"""The multi-label localisation classifier: an ImageNet backbone plus a linear head, with backbone freezing."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from protloc.models.backbones import Backbone, load_backbone


class ProtlocNet(nn.Module):
    """Backbone features -> Dropout -> Linear: one logit per localisation class."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, num_classes))
        self.num_classes = num_classes
        self.backbone_frozen = False
        self.frozen_early: list[nn.Module] = []  # the backbone's early stages kept frozen while fine-tuning

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass for both: the logits, and the features the outlier score reads (the pooled features,
        then the backbone's stages averaged over space: Backbone.features_and_stages)."""
        features = self.backbone.features_and_stages(x)
        return self.head(features[:, :self.backbone.num_features].to(self.head[1].weight.dtype)), features

    def train(self, mode: bool = True) -> ProtlocNet:
        super().train(mode)
        # BatchNorm in train mode updates its running stats even without gradients.
        for frozen in [self.backbone] if self.backbone_frozen else self.frozen_early:
            for m in frozen.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool,
    weights: str | Path | None = None,
    in_chans: int = 3,
    dropout: float = 0.0,
) -> ProtlocNet:
    net = load_backbone(backbone, pretrained=pretrained, weights=weights, in_chans=in_chans)
    return ProtlocNet(net, num_classes, dropout=dropout)


def freeze_backbone(model: ProtlocNet) -> None:
    """Train only the head: backbone weights get no gradients and its BatchNorm statistics stay fixed."""
    model.backbone.requires_grad_(False)
    model.backbone_frozen = True
    model.train(model.training)


def unfreeze_backbone(model: ProtlocNet) -> None:
    model.backbone.requires_grad_(True)
    model.backbone_frozen = False
    model.frozen_early = []
    model.train(model.training)


def freeze_early_stages(model: ProtlocNet, stages: int) -> None:
    """Fine-tune with the backbone's first `stages` stages frozen, the stem counting as the first: their weights
    get no gradients and their BatchNorm statistics stay fixed. Autograd then records nothing of them, and on a CPU
    their backward pass, over the largest maps, is much of a fine-tuning step (efficientnet_lite0 at 128 px, fp32,
    2 cores: fine-tuning ran at 90 images/s with the stem and blocks 0-1 or 0-2 frozen, 64 with none; docs/recipe.md)."""
    model.frozen_early = model.backbone.early_modules(stages)
    for module in model.frozen_early:
        module.requires_grad_(False)
    model.train(model.training)


__all__ = ["ProtlocNet", "build_model", "freeze_backbone", "freeze_early_stages", "unfreeze_backbone"]
