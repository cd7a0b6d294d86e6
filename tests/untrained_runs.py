"""Real run folders around untrained networks, for tests of what reads a run back (predict, tune, reports)."""
from __future__ import annotations

from pathlib import Path

import torch

from protloc.labels import HPA10, LabelSet
from protloc.models.classifier import build_model
from protloc.runs import RunConfig, save_config, save_run


def make_untrained_run(
    run_dir: Path,
    *,
    backbone: str = "test_resnet",
    label_set: LabelSet = HPA10,
    in_chans: int = 3,
    image_size: int = 32,
    thresholds: list[float] | None = None,
    layout: str = "z2g",
    training: dict | None = None,
    spread: float | None = None,
    weights: bool = True,
) -> Path:
    """config.json (normalisation from the backbone's spec, thresholds 0.5 unless given) and, with `weights`,
    the seeded network's model.safetensors.

    `spread` scales the head's weights: an untrained head gives every image probabilities near 0.5, so
    tests whose labels must differ between images spread them out.
    """
    torch.manual_seed(0)
    model = build_model(backbone, len(label_set), pretrained=False, in_chans=in_chans)
    if spread is not None:
        with torch.no_grad():
            model.head[1].weight.mul_(spread)
    mean, std = model.backbone.spec.normalization(in_chans)
    config = RunConfig(backbone=backbone, label_set=label_set.name, label_names=list(label_set.names),
                       image_size=image_size, in_chans=in_chans, mean=list(mean), std=list(std),
                       thresholds=list(thresholds) if thresholds is not None else [0.5] * len(label_set),
                       layout=layout, training=dict(training or {}))
    if weights:
        save_run(run_dir, config, model)
    else:
        save_config(run_dir, config)
    return run_dir
