"""Candidate outlier scores of a demo-trained run, side by side: how each separates real HPA images from held-out
demo images (the measurement that chose the score in inference/outliers.py; docs/trust.md).

    python tools/compare_outlier_scores.py RUN HELD_OUT_DEMO [--real ../shared/data] [--out FILE.json]

Features (Backbone.features_and_stages: the pooled features, then each stage averaged over space) of the run's
own training and validation images (its recipe's split), the held-out demo images and both real sets of
tools/demo_against_real.py. Each candidate is fitted on the training images; its threshold is a percentile of
the validation images' scores. Candidates: the Mahalanobis distance (Ledoit-Wolf) of the pooled features alone
(the score before stages), of each stage alone, the mean distance of the 5 nearest training images (cosine, pooled
features), and the stage ensemble protloc uses (each part's distance over its validation median, averaged).
Printed and written per candidate: AUROC against the held-out demo images for each real set, and at the 95th,
97.5th and 99th percentile of the validation scores the shares flagged of held-out demo and of each real set.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import protloc
from protloc.data.readers import read_dataset
from protloc.inference.outliers import describe_features
from protloc.training.config import config_from_recipe
from protloc.training.splits import make_split
from protloc.training.train import read_training_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_against_real import parse_arguments, write_composites  # noqa: E402  (a sibling tool, not a package)

PERCENTILES = (95, 97.5, 99)


def features_of(run: Path, images: list, gray_as: str | None = None, batch: int = 64) -> np.ndarray:
    predictor = protloc.load(run, engine="torch", precision="fp32", gray_as=gray_as)
    model = predictor.model.eval()
    parts = []
    for start in range(0, len(images), batch):
        with torch.inference_mode():
            tensors = torch.stack([predictor.prepare(image) for image in images[start:start + batch]])
            parts.append(model.logits_and_features(tensors)[1].numpy())
    return np.concatenate(parts)


def image_sets(run: Path, held_out: Path, real: Path, folder: Path) -> dict[str, np.ndarray]:
    config = protloc.load(run).config
    recipe = config_from_recipe(config.training.recipe)
    table = read_training_table(recipe)
    train_rows, val_rows = make_split(recipe.validation_split, table.targets, recipe.val_fraction, recipe.seed)
    sources = list(table.frame["source"])
    z2g = [real / "z2g-sample" / "10034.png"]
    train_folder = real / "hpa2018-sample" / "train"
    single = [features_of(run, sorted(train_folder.glob(f"*_{stain}.png")), gray_as=stain)
              for stain in ("red", "green", "blue")] + [features_of(run, z2g)]
    composites = [path for path, _ in write_composites(real, folder)] + z2g
    return {"train": features_of(run, [sources[row] for row in train_rows]),
            "validation": features_of(run, [sources[row] for row in val_rows]),
            "held_out_demo": features_of(run, list(read_dataset(held_out, split="train").frame["source"])),
            "real_single_stains": np.concatenate(single), "real_composites": features_of(run, composites)}


def candidates(sets: dict[str, np.ndarray], widths: list[int]) -> dict[str, dict[str, np.ndarray]]:
    """Candidate name -> scores of every set but the training images."""
    scored = [name for name in sets if name != "train"]
    starts = np.cumsum([0] + widths)
    names = ["pooled"] + [f"stage {index}" for index in range(len(widths) - 1)]
    result = {}
    for part, name in enumerate(names):
        columns = slice(starts[part], starts[part + 1])
        description = describe_features(sets["train"][:, columns])
        result[f"Mahalanobis, {name} alone"] = {s: description.scores(sets[s][:, columns]) for s in scored}
    unit = sets["train"][:, :widths[0]] / np.linalg.norm(sets["train"][:, :widths[0]], axis=1, keepdims=True)
    result["5 nearest training images, pooled (cosine)"] = {
        s: 1 - np.sort((sets[s][:, :widths[0]] / np.linalg.norm(sets[s][:, :widths[0]], axis=1, keepdims=True)) @ unit.T,
                       axis=1)[:, -5:].mean(axis=1) for s in scored}
    ensemble = describe_features(sets["train"], widths)
    ensemble.calibrate(sets["validation"])
    result["stage ensemble (protloc)"] = {s: ensemble.scores(sets[s]) for s in scored}
    return result


def summary(scores: dict[str, np.ndarray]) -> dict:
    demo = scores["held_out_demo"]
    row = {f"auroc {name}": float(roc_auc_score(np.r_[np.zeros(len(demo)), np.ones(len(scores[name]))],
                                                 np.r_[demo, scores[name]]))
           for name in ("real_single_stains", "real_composites")}
    for q in PERCENTILES:
        threshold = np.percentile(scores["validation"], q)
        row[f"flagged at validation p{q}"] = {name: float((scores[name] > threshold).mean())
                                              for name in ("held_out_demo", "real_single_stains", "real_composites")}
    return row


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])
    widths = protloc.load(args.run, engine="torch").model.backbone.feature_widths()
    with tempfile.TemporaryDirectory() as folder:
        sets = image_sets(args.run, args.held_out, args.real, Path(folder))
    result = {"images": {name: len(value) for name, value in sets.items()},
              "candidates": {name: summary(scores) for name, scores in candidates(sets, widths).items()}}
    for name, row in result["candidates"].items():
        flagged = "  ".join(f"p{q}: " + "/".join(f"{100 * v:.1f}" for v in row[f"flagged at validation p{q}"].values())
                            for q in PERCENTILES)
        print(f"{name:45s} AUROC {row['auroc real_single_stains']:.3f} / {row['auroc real_composites']:.3f}   "
              f"flagged % held-out/single/composite  {flagged}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
