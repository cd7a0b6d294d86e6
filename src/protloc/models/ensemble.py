"""A K-fold folder's folds as one classifier: the mean of their probabilities.

`FoldEnsemble` takes the image as the ensemble's eval preset leaves it (resized, scaled to 0..1: its config's
mean is 0 and std 1) and lets each fold normalise it with its own mean and std, exactly as that fold's own
preset would (the same subtraction and division, so each fold sees the same numbers as when run alone).

Its output is the log-odds of the mean probability. Every protloc classifier outputs logits and everything
downstream takes sigmoid(output) as the probability (the torch engine, the ONNX export, training code), so
the ensemble goes through them all unchanged; the round trip costs float32 rounding, under 1e-6.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from protloc.runs import RunConfig


class FoldEnsemble(nn.Module):
    def __init__(self, models: Sequence[nn.Module], fold_configs: Sequence[RunConfig]):
        super().__init__()
        if len(models) != len(fold_configs) or not models:
            raise ValueError("one config per fold model, and at least one fold")
        self.folds = nn.ModuleList(models)
        # (K, C, 1, 1): per fold, the per-channel statistics as torchvision's Normalize shapes them.
        self.register_buffer("mean", torch.tensor([config.mean for config in fold_configs])[..., None, None])
        self.register_buffer("std", torch.tensor([config.std for config in fold_configs])[..., None, None])

    def fold_inputs(self, images: torch.Tensor) -> Iterator[tuple[nn.Module, torch.Tensor]]:
        """(fold model, the images normalised as that fold was trained) for each fold."""
        images = images.to(self.mean.device)
        for index, fold in enumerate(self.folds):
            yield fold, images.sub(self.mean[index]).div(self.std[index])

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        # float32 before the sigmoid and the mean: under autocast the folds may give bf16/fp16 logits.
        per_fold = [torch.sigmoid(fold(inputs).float()) for fold, inputs in self.fold_inputs(images)]
        return torch.stack(per_fold).mean(dim=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return as_logits(self.probabilities(images))

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass per fold for both: the ensemble's logits and the folds' features side by side (as embed)."""
        outputs = [fold.logits_and_features(inputs) for fold, inputs in self.fold_inputs(images)]
        probabilities = torch.stack([torch.sigmoid(logits.float()) for logits, _ in outputs]).mean(dim=0)
        return as_logits(probabilities), torch.cat([features for _, features in outputs], dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The folds' pooled features side by side (N, K x F): each fold's feature space is its own, so they are
        concatenated, not averaged."""
        return torch.cat([fold.embed(inputs) for fold, inputs in self.fold_inputs(images)], dim=1)


def as_logits(probabilities: torch.Tensor) -> torch.Tensor:
    # log(p) - log(1 - p), not torch.logit: the ONNX exporter has no logit; p = 0 or 1 gives -inf or inf,
    # whose sigmoid is again 0 or 1.
    return torch.log(probabilities) - torch.log1p(-probabilities)
