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
        if self.backbone_frozen:
            # BatchNorm in train mode updates its running stats even without gradients.
            for m in self.backbone.modules():
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
    model.train(model.training)


__all__ = ["ProtlocNet", "build_model", "freeze_backbone", "unfreeze_backbone"]
