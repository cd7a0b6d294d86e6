"""How unlike the training images an image is: the outlier score of every prediction.

The score reads the backbone at several depths (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples", its feature ensemble): the pooled features, and each stage's map averaged over
space (Backbone.features_and_stages; efficientnet_lite0: its 7 blocks). At training, each of these parts of the
training images' features (the best weights, the eval preset) is described by its mean and a shrunk covariance
(Ledoit-Wolf: with fewer images than features the plain covariance cannot be inverted). An image's distance in a
part is the Mahalanobis distance from that part's mean; each part's distance is divided by its median over the
validation images, and the score is the mean of these ratios: about 1 for an image like the training images,
higher the less like them. The threshold that flags an image as an `outlier` is a high percentile of the
validation images' scores, recorded in config.json ("outlier_threshold").

Why several depths: fine-tuning makes the last layer's features about the classes, and there real images may
sit close to generated ones of the same class; the early and middle stages still see the pixels' texture,
contrast and spacing, where they differ (measured in docs/trust.md).

The description is RUN/outliers.safetensors (per part the mean and the precision matrix, and the validation
medians; never pickled). A description from before (tensors `mean` and `precision` only) describes the pooled
features alone and is still read. The score is computed from the same forward pass as the logits
(ScoredClassifier), and the ONNX export carries it as a second output. A K-fold folder scores with each fold's
own description and averages the folds' scores; its threshold, in ensemble.json, is the mean of theirs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protloc.errors import ProtlocError
from protloc.files import atomic_path

# The share of validation images left under the threshold: about 1 in 100 images like the training data is
# flagged, while images of another kind (other microscopes, stains, real cells for a demo model) lie far out.
OUTLIER_PERCENTILE = 99.0
LEGACY_TENSORS = ("mean", "precision")  # a description of the pooled features alone, written before stages
METHOD = "mahalanobis-stages-ledoit-wolf"


@dataclass
class FeatureDescription:
    """The training images' features, part by part (the pooled features, then each stage): each part's mean (W,)
    and the inverse of its shrunk covariance (W, W), and the median of its distances over the validation images
    (`scales`, (K,); ones until `calibrate`)."""

    means: list[np.ndarray]
    precisions: list[np.ndarray]
    scales: np.ndarray
    images: int
    legacy: bool = field(default=False)  # read from a file of the pooled features alone

    @property
    def widths(self) -> list[int]:
        return [int(mean.shape[0]) for mean in self.means]

    @property
    def num_features(self) -> int:
        return sum(self.widths)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, K): each part's Mahalanobis distance of each row of (N, >= num_features) features."""
        features = np.asarray(features, dtype=np.float64)
        columns, start = [], 0
        for mean, precision in zip(self.means, self.precisions):
            centred = features[:, start:start + len(mean)] - mean
            squared = np.einsum("nf,fg,ng->n", centred, precision.astype(np.float64), centred)
            columns.append(np.sqrt(np.maximum(squared, 0.0)))
            start += len(mean)
        return np.stack(columns, axis=1)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The outlier score of each row of (N, F) features: the mean over parts of distance / scale; (N,) float32."""
        return (self.distances(features) / self.scales).mean(axis=1).astype(np.float32)

    def calibrate(self, validation_features: np.ndarray) -> None:
        """Each part's scale: the median of its distances over the validation images (never under a tiny floor)."""
        medians = np.median(self.distances(validation_features), axis=0)
        self.scales = np.maximum(medians, 1e-6).astype(np.float32)


def describe_features(features: np.ndarray, widths: list[int] | None = None) -> FeatureDescription:
    """Mean and Ledoit-Wolf precision of each part of (N, F) features, N >= 2; `widths`: the parts' widths in
    order (Backbone.feature_widths), summing to F; None: one part. Scales are ones until `calibrate`."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ProtlocError(f"describing training features needs 2 or more images, got {len(features)}")
    widths = list(widths) if widths is not None else [features.shape[1]]
    if sum(widths) != features.shape[1]:
        raise ProtlocError(f"feature parts of widths {widths} do not add up to the {features.shape[1]} features")
    means, precisions, start = [], [], 0
    for width in widths:
        estimate = LedoitWolf(assume_centered=False).fit(features[:, start:start + width])
        means.append(estimate.location_.astype(np.float32))
        precisions.append(estimate.precision_.astype(np.float32))
        start += width
    return FeatureDescription(means=means, precisions=precisions, scales=np.ones(len(widths), np.float32),
                              images=len(features))


def outlier_threshold(scores: np.ndarray, percentile: float = OUTLIER_PERCENTILE) -> float:
    """The score above which an image is an outlier: `percentile` of the (validation) images' scores."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        raise ProtlocError("no validation image has an outlier score to set the threshold from")
    return float(np.percentile(scores, percentile))


def save_description(path: str | Path, description: FeatureDescription) -> None:
    """Written as safetensors (temporary file, then renamed): mean.K and precision.K per part, and scales."""
    from safetensors.numpy import save_file

    tensors = {"scales": np.ascontiguousarray(description.scales, dtype=np.float32)}
    for index, (mean, precision) in enumerate(zip(description.means, description.precisions)):
        tensors[f"mean.{index}"] = np.ascontiguousarray(mean, dtype=np.float32)
        tensors[f"precision.{index}"] = np.ascontiguousarray(precision, dtype=np.float32)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"method": METHOD, "images": str(description.images),
                                                     "parts": str(len(description.means))})


def load_description(path: str | Path, widths: list[int] | None = None) -> FeatureDescription:
    """The description in `path`; a ProtlocError saying what is wrong with a missing, damaged or mismatched file.
    `widths`: the parts the backbone gives (Backbone.feature_widths); the description's parts must be the first
    of them (all of them; the pooled features alone for a description from before stages)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"{path}: not found, but config.json has an outlier_threshold (the run folder is "
                           f"incomplete; copy the whole folder, or train again)")
    try:
        with safe_open(str(path), framework="numpy") as stored:
            tensors = {name: stored.get_tensor(name) for name in stored.keys()}
            metadata = stored.metadata() or {}
        images = int(metadata.get("images", 0))
        parts = int(metadata["parts"]) if "parts" in metadata else None
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ProtlocError(f"{path}: not a readable safetensors file ({type(error).__name__}); the outlier "
                           f"description is damaged: train again, or restore the file") from None
    legacy = parts is None and set(tensors) == set(LEGACY_TENSORS)
    if legacy:
        means, precisions, scales = [tensors["mean"]], [tensors["precision"]], np.ones(1, np.float32)
    else:
        count = parts if parts is not None and parts > 0 else 0
        means = [tensors.get(f"mean.{index}") for index in range(count)]
        precisions = [tensors.get(f"precision.{index}") for index in range(count)]
        scales = tensors.get("scales")
    shapes_fit = bool(means) and all(
        mean is not None and precision is not None and mean.ndim == 1 and precision.shape == (len(mean), len(mean))
        for mean, precision in zip(means, precisions))
    if not shapes_fit or scales is None or scales.shape != (len(means),):
        raise ProtlocError(f"{path}: expected tensors mean.K (W,) and precision.K (W, W) for each part K, and scales, "
                           f"found { {name: list(value.shape) for name, value in tensors.items()} or 'none'}")
    if not all(np.isfinite(array).all() for array in [*means, *precisions, scales]) or not (scales > 0).all():
        raise ProtlocError(f"{path}: holds values that are not finite numbers, or scales that are not positive (damaged?)")
    description = FeatureDescription(means=means, precisions=precisions, scales=scales, images=images, legacy=legacy)
    if widths is not None and description.widths != list(widths)[:len(means)]:
        raise ProtlocError(f"{path}: describes feature parts of widths {description.widths}, but the backbone gives "
                           f"{list(widths)[:len(means)] if legacy else list(widths)} (the file is from another run?)")
    return description


class MahalanobisScore(nn.Module):
    """Features (N, W) -> outlier scores (N,), in torch: part of the forward pass and of the ONNX graph.
    `input_widths`: the parts of the features it is given (Backbone.feature_widths; default: the described
    ones); the description reads the first of them."""

    def __init__(self, description: FeatureDescription, input_widths: list[int] | None = None):
        super().__init__()
        self.input_widths = list(input_widths) if input_widths is not None else description.widths
        self.parts = len(description.means)
        for index, (mean, precision) in enumerate(zip(description.means, description.precisions)):
            self.register_buffer(f"mean_{index}", torch.from_numpy(np.asarray(mean, dtype=np.float32)))
            self.register_buffer(f"precision_{index}", torch.from_numpy(np.asarray(precision, dtype=np.float32)))
        self.register_buffer("scales", torch.from_numpy(np.asarray(description.scales, dtype=np.float32)))

    @property
    def input_width(self) -> int:
        return sum(self.input_widths)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # float32 also under bf16/fp16 autocast: a quadratic form over a thousand features loses its digits in bf16.
        with torch.autocast(features.device.type, enabled=False):
            parts = torch.split(features.float(), self.input_widths, dim=1)
            distances = []
            for index in range(self.parts):
                centred = parts[index] - getattr(self, f"mean_{index}")
                squared = ((centred @ getattr(self, f"precision_{index}")) * centred).sum(dim=1)
                distances.append(squared.clamp_min(0).sqrt())
            return (torch.stack(distances, dim=1) / self.scales).mean(dim=1)


class EnsembleScore(nn.Module):
    """The folds' features side by side (N, sum of the folds' widths) -> the mean of the folds' own scores (N,)."""

    def __init__(self, fold_scores: list[MahalanobisScore]):
        super().__init__()
        self.folds = nn.ModuleList(fold_scores)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(features, [fold.input_width for fold in self.folds], dim=1)
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
    widths = model.backbone.feature_widths() if model is not None else None
    return MahalanobisScore(load_description(Path(run_dir) / OUTLIER_FILE, widths), widths)
