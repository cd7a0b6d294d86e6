"""What a demo-trained model makes of real HPA images: its outlier flags, and its labels of real single-class images.

    python tools/demo_against_real.py RUN HELD_OUT_DEMO [--real ../shared/data] [--out FILE.json]

RUN: a run trained on generated data (`make demo` writes runs/demo); HELD_OUT_DEMO: generated images it never saw
(`make demo`'s data/demo-eval). Real: every stain file of the HPA 2018 sample, each read as its own stain with the
others dark (`--gray-as`; yellow files only for 4-channel runs), and the Zero-to-GANs sample's RGB composite.

Prints and writes: the share of real and of held-out demo images flagged as outliers, the AUROC of the outlier
score between the two; on the real single-class green images (one 2018 class that maps to the 10), the share
whose most probable class is the true one and the share whose predicted labels include it; and, among those
images, the share whose nearest neighbour by the model's embedding (cosine) has the same class.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import protloc
from protloc.data.readers import read_dataset
from protloc.data.stains import run_stains

FROM_2018 = {23: 0, 5: 1, 2: 2, 7: 3, 0: 4, 3: 5, 25: 6, 21: 7, 19: 8, 4: 9}  # data/README.md


def real_scores(run: Path, real: Path) -> tuple[np.ndarray, list[str]]:
    """Outlier scores of every real image the run can read, and their names."""
    config = protloc.load(run).config
    scores, names = [], []
    for stain in run_stains(config.in_chans):
        files = sorted((real / "hpa2018-sample" / "train").glob(f"*_{stain}.png"))
        predictor = protloc.load(run, gray_as=stain)
        scores.append(predictor.predict(files).outlier_scores)
        names += [file.name for file in files]
    scores.append(protloc.load(run).predict([real / "z2g-sample" / "10034.png"]).outlier_scores)
    names.append("z2g-sample/10034.png")
    return np.concatenate(scores), names


def single_class_green(real: Path) -> list[tuple[Path, int]]:
    with open(real / "hpa2018-sample" / "train.csv", newline="") as stream:
        targets = {row["Id"]: [int(x) for x in row["Target"].split()] for row in csv.DictReader(stream)}
    chosen = []
    for path in sorted((real / "hpa2018-sample" / "train").glob("*_green.png")):
        labels = targets.get(path.name.removesuffix("_green.png"), [])
        if len(labels) == 1 and labels[0] in FROM_2018:
            chosen.append((path, FROM_2018[labels[0]]))
    return chosen


def measure(run: Path, held_out: Path, real: Path) -> dict:
    predictor = protloc.load(run)
    threshold = predictor.config.outlier_threshold
    demo_table = read_dataset(held_out, split="train")
    demo = predictor.predict_table(demo_table).outlier_scores
    real_outlier_scores, _names = real_scores(run, real)
    auroc = roc_auc_score(np.r_[np.zeros(len(demo)), np.ones(len(real_outlier_scores))], np.r_[demo, real_outlier_scores])

    singles = single_class_green(real)
    green = protloc.load(run, gray_as="green", engine="torch")
    prediction = green.predict([path for path, _ in singles])
    truth = np.array([c for _, c in singles])
    top1 = prediction.probabilities.argmax(axis=1) == truth
    included = prediction.predicted[np.arange(len(truth)), truth]
    import torch

    # One by one through prepare(): read_images would group the stain files of an Id into one image.
    embeddings = green.engine.embed(torch.stack([green.prepare(path) for path, _ in singles])).numpy()
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbour_same = truth[similarity.argmax(axis=1)] == truth
    return {
        "run": str(run), "trained_on": predictor.config.trained_on, "outlier_threshold": threshold,
        "real_images": int(len(real_outlier_scores)), "real_flagged": float((real_outlier_scores > threshold).mean()),
        "held_out_demo_images": int(len(demo)), "held_out_demo_flagged": float((demo > threshold).mean()),
        "outlier_auroc": float(auroc),
        "median_score": {"real": float(np.median(real_outlier_scores)), "held_out_demo": float(np.median(demo))},
        # How the real share flagged would move with the threshold at other percentiles of like images' scores.
        "real_flagged_at_held_out_percentile": {str(q): float((real_outlier_scores > np.percentile(demo, q)).mean())
                                                for q in (90, 95, 97.5, 99)},
        "real_single_class_green_images": int(len(truth)),
        "real_top1_right": float(top1.mean()), "real_labels_include_truth": float(included.mean()),
        "real_nearest_neighbour_same_class": float(neighbour_same.mean()),
        "per_image": [{"image": path.name, "class": int(c), "top1": int(prediction.probabilities[i].argmax()),
                       "outlier": bool(prediction.outliers[i])} for i, (path, c) in enumerate(singles)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("held_out", type=Path)
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.run, args.held_out, args.real)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
