"""How unlike the training images an image is: the outlier score of every prediction.

At training, the pooled backbone features of the training images (the best weights, the eval preset) are
described by their mean and a shrunk covariance (Ledoit-Wolf: with fewer images than features the plain
covariance cannot be inverted). An image's outlier score is the Mahalanobis distance of its features from
that mean; higher means less like the training images. The threshold that flags an image as an `outlier` is
a high percentile of the validation images' scores, recorded in config.json ("outlier_threshold").

The description is RUN/outliers.safetensors (the mean and the precision matrix, never pickled). The score is
computed from the same forward pass as the logits (ScoredClassifier), and the ONNX export carries it as a
second output, so scoring costs one matrix product per batch. A K-fold folder scores with each fold's own
description and averages the folds' scores; its threshold, in ensemble.json, is the mean of theirs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protloc.errors import ProtlocError
from protloc.files import atomic_path

# The share of validation images left under the threshold: about 1 in 100 images like the training data is
# flagged, while images of another kind (other microscopes, stains, real cells for a demo model) lie far out.
OUTLIER_PERCENTILE = 99.0
DESCRIPTION_TENSORS = ("mean", "precision")


@dataclass
class FeatureDescription:
    """The training images' features: their mean (F,) and the inverse of their shrunk covariance (F, F)."""

    mean: np.ndarray
    precision: np.ndarray
    images: int

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of (N, F) features; (N,) float32."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        squared = np.einsum("nf,fg,ng->n", centred, self.precision.astype(np.float64), centred)
        return np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)


def describe_features(features: np.ndarray) -> FeatureDescription:
    """Mean and Ledoit-Wolf precision of (N, F) features, N >= 2."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ProtlocError(f"describing training features needs 2 or more images, got {len(features)}")
    estimate = LedoitWolf(assume_centered=False).fit(features)
    return FeatureDescription(mean=estimate.location_.astype(np.float32), precision=estimate.precision_.astype(np.float32),
                              images=len(features))


def outlier_threshold(scores: np.ndarray, percentile: float = OUTLIER_PERCENTILE) -> float:
    """The score above which an image is an outlier: `percentile` of the (validation) images' scores."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        raise ProtlocError("no validation image has an outlier score to set the threshold from")
    return float(np.percentile(scores, percentile))


def save_description(path: str | Path, description: FeatureDescription) -> None:
    """Written as safetensors (temporary file, then renamed)."""
    from safetensors.numpy import save_file

    tensors = {"mean": np.ascontiguousarray(description.mean, dtype=np.float32),
               "precision": np.ascontiguousarray(description.precision, dtype=np.float32)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"method": "mahalanobis-ledoit-wolf", "images": str(description.images)})


def load_description(path: str | Path, num_features: int | None = None) -> FeatureDescription:
    """The description in `path`; a ProtlocError saying what is wrong with a missing, damaged or mismatched file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"{path}: not found, but config.json has an outlier_threshold (the run folder is "
                           f"incomplete; copy the whole folder, or train again)")
    try:
        with safe_open(str(path), framework="numpy") as stored:
            names = set(stored.keys())
            tensors = {name: stored.get_tensor(name) for name in DESCRIPTION_TENSORS if name in names}
            images = int((stored.metadata() or {}).get("images", 0))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ProtlocError(f"{path}: not a readable safetensors file ({type(error).__name__}); the outlier "
                           f"description is damaged: train again, or restore the file") from None
    mean, precision = tensors.get("mean"), tensors.get("precision")
    width = mean.shape[0] if mean is not None and mean.ndim == 1 else None
    if width is None or precision is None or precision.shape != (width, width):
        raise ProtlocError(f"{path}: expected tensors mean (F,) and precision (F, F), found "
                           f"{ {name: list(value.shape) for name, value in tensors.items()} or 'neither'}")
    if not (np.isfinite(mean).all() and np.isfinite(precision).all()):
        raise ProtlocError(f"{path}: holds values that are not finite numbers (damaged?)")
    if num_features is not None and width != num_features:
        raise ProtlocError(f"{path}: describes {width} features, but the backbone gives {num_features} "
                           f"(the file is from another run?)")
    return FeatureDescription(mean=mean, precision=precision, images=images)


class MahalanobisScore(nn.Module):
    """Features (N, F) -> outlier scores (N,), in torch: part of the forward pass and of the ONNX graph."""

    def __init__(self, description: FeatureDescription):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.asarray(description.mean, dtype=np.float32)))
        self.register_buffer("precision", torch.from_numpy(np.asarray(description.precision, dtype=np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # float32 also under bf16/fp16 autocast: a quadratic form over a thousand features loses its digits in bf16.
        with torch.autocast(features.device.type, enabled=False):
            centred = features.float() - self.mean
            return ((centred @ self.precision) * centred).sum(dim=1).clamp_min(0).sqrt()


class EnsembleScore(nn.Module):
    """The folds' features side by side (N, K x F) -> the mean of the folds' own scores (N,)."""

    def __init__(self, fold_scores: list[MahalanobisScore]):
        super().__init__()
        self.folds = nn.ModuleList(fold_scores)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        widths = [int(fold.mean.shape[0]) for fold in self.folds]
        parts = torch.split(features, widths, dim=1)
        return torch.stack([fold(part) for fold, part in zip(self.folds, parts)]).mean(dim=0)


class ScoredClassifier(nn.Module):
    """images -> (logits, outlier scores) in one forward pass; the model gives `logits_and_features`."""

    def __init__(self, model: nn.Module, scorer: nn.Module):
        super().__init__()
        self.model = model
        self.scorer = scorer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.model.logits_and_features(images)
        return logits, self.scorer(features)


def load_scorer(run_dir: str | Path, config, model: nn.Module | None = None) -> nn.Module | None:
    """The run's scorer (a K-fold folder's: EnsembleScore over its folds), or None for a run trained before
    outlier scores (no outlier_threshold in its config). With `model` (its ProtlocNet or FoldEnsemble), the
    description must fit its features. A missing, damaged or mismatched description raises ProtlocError."""
    from protloc.runs import OUTLIER_FILE, EnsembleConfig

    if config.outlier_threshold is None:
        return None
    if isinstance(config, EnsembleConfig):
        fold_models = list(model.folds) if model is not None else [None] * len(config.folds)
        folds = [load_scorer(Path(run_dir) / fold, fold_config, fold_model)
                 for fold, fold_config, fold_model in zip(config.folds, config.fold_configs, fold_models)]
        return EnsembleScore(folds) if all(fold is not None for fold in folds) else None
    width = model.backbone.num_features if model is not None else None
    return MahalanobisScore(load_description(Path(run_dir) / OUTLIER_FILE, width))
