"""What a demo-trained model makes of real HPA images: its outlier flags, and its labels of real single-class images.

    python tools/demo_against_real.py RUN HELD_OUT_DEMO [--real ../shared/data] [--out FILE.json]

RUN: a run trained on generated data (`make demo` writes runs/demo); HELD_OUT_DEMO: generated images it never saw
(`make demo`'s data/demo-eval). Two sets of real images, each measured on its own:

- single stains (153): every stain file of the HPA 2018 sample, each read as its own stain with the others dark
  (`--gray-as`; yellow files only for 4-channel runs), and the Zero-to-GANs sample's RGB composite;
- composites (51): what a user's real image looks like to a 3-channel model: for each of the 50 green files a
  real red and a real blue file of other Ids (fixed shuffles, seed 0; the sample holds one stain per Id, so no
  Id is complete), stacked as an RGB image (red microtubules, green protein, blue nucleus, as the Zero-to-GANs
  composites are), and the Zero-to-GANs sample's RGB composite. In a 4-channel run the yellow channel is dark.

Prints and writes, per set: the share flagged as outliers and the AUROC of the outlier score against the held-out
demo images (and the share of those flagged); on the single-class images of each set (one 2018 class that maps
to the 10; 23 green files), the share whose most probable class is the true one and the share whose predicted
labels include it; and among them, the share whose nearest neighbour by the model's embedding (cosine) has the
same class.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import protloc
from protloc.data.readers import read_dataset
from protloc.data.stains import run_stains

FROM_2018 = {23: 0, 5: 1, 2: 2, 7: 3, 0: 4, 3: 5, 25: 6, 21: 7, 19: 8, 4: 9}  # data/README.md


def single_stain_scores(run: Path, real: Path) -> np.ndarray:
    """Outlier scores of every real stain file the run can read (each as its own stain), and of the z2g image."""
    config = protloc.load(run).config
    scores = []
    for stain in run_stains(config.in_chans):
        files = sorted((real / "hpa2018-sample" / "train").glob(f"*_{stain}.png"))
        scores.append(protloc.load(run, gray_as=stain).predict(files).outlier_scores)
    scores.append(protloc.load(run).predict([real / "z2g-sample" / "10034.png"]).outlier_scores)
    return np.concatenate(scores)


def write_composites(real: Path, folder: Path) -> list[tuple[Path, Path]]:
    """(RGB composite, its green file) for each green file of the 2018 sample: real red and blue files of other Ids
    beside it (fixed shuffles), written as 8-bit RGB PNGs into `folder`."""
    from PIL import Image

    train = real / "hpa2018-sample" / "train"
    reds, greens, blues = (sorted(train.glob(f"*_{stain}.png")) for stain in ("red", "green", "blue"))
    rng = np.random.default_rng(0)
    red_order, blue_order = rng.permutation(len(reds)), rng.permutation(len(blues))
    made = []
    for index, green in enumerate(greens):
        stains = (reds[red_order[index % len(reds)]], green, blues[blue_order[index % len(blues)]])
        rgb = np.stack([np.asarray(Image.open(path).convert("L")) for path in stains], axis=-1)
        path = folder / f"composite-{index:02d}.png"
        Image.fromarray(rgb).save(path)
        made.append((path, green))
    return made


def single_class_green(real: Path) -> list[tuple[Path, int]]:
    return [(path, label) for path, label in ((path, single_class(real, path)) for path in
            sorted((real / "hpa2018-sample" / "train").glob("*_green.png"))) if label is not None]


def single_class(real: Path, green: Path) -> int | None:
    """The 10-label class of a green file whose Id has exactly one 2018 class that maps to the 10, else None."""
    labels = train_targets(real).get(green.name.removesuffix("_green.png"), [])
    return FROM_2018[labels[0]] if len(labels) == 1 and labels[0] in FROM_2018 else None


@functools.lru_cache(maxsize=None)
def train_targets(real: Path) -> dict[str, list[int]]:
    """Id -> its 2018 class numbers (the sample's train.csv: 31,072 rows, read once)."""
    with open(real / "hpa2018-sample" / "train.csv", newline="") as stream:
        return {row["Id"]: [int(x) for x in row["Target"].split()] for row in csv.DictReader(stream)}


def labelling(run: Path, images: list[Path], truth: np.ndarray, gray_as: str | None) -> dict:
    """Top-1, labels including the truth, and nearest neighbour by embedding of the same class."""
    import torch

    predictor = protloc.load(run, gray_as=gray_as, engine="torch")
    prediction = predictor.predict(images)
    top1 = prediction.probabilities.argmax(axis=1) == truth
    included = prediction.predicted[np.arange(len(truth)), truth]
    # One by one through prepare(): read_images would group the stain files of an Id into one image.
    embeddings = predictor.engine.embed(torch.stack([predictor.prepare(path) for path in images])).numpy()
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbour_same = truth[similarity.argmax(axis=1)] == truth
    return {"single_class_images": int(len(truth)), "top1_right": float(top1.mean()),
            "labels_include_truth": float(included.mean()), "nearest_neighbour_same_class": float(neighbour_same.mean()),
            "per_image": [{"image": path.name, "class": int(c), "top1": int(prediction.probabilities[i].argmax()),
                           "outlier": None if prediction.outliers is None else bool(prediction.outliers[i])}
                          for i, (path, c) in enumerate(zip(images, truth))]}


def flagging(scores: np.ndarray, demo: np.ndarray, threshold: float) -> dict:
    auroc = roc_auc_score(np.r_[np.zeros(len(demo)), np.ones(len(scores))], np.r_[demo, scores])
    return {"images": int(len(scores)), "flagged": float((scores > threshold).mean()), "outlier_auroc": float(auroc),
            "median_score": float(np.median(scores)), "lowest_score": float(scores.min()),
            # How the share flagged would move with the threshold at other percentiles of like images' scores.
            "flagged_at_held_out_percentile": {str(q): float((scores > np.percentile(demo, q)).mean())
                                               for q in (90, 95, 97.5, 99)}}


def measure(run: Path, held_out: Path, real: Path) -> dict:
    predictor = protloc.load(run)
    threshold = predictor.config.outlier_threshold
    demo = predictor.predict_table(read_dataset(held_out, split="train")).outlier_scores
    single = single_stain_scores(run, real)
    singles = single_class_green(real)
    with tempfile.TemporaryDirectory() as folder:
        composites = write_composites(real, Path(folder))
        composite = np.r_[predictor.predict([path for path, _ in composites]).outlier_scores,
                          predictor.predict([real / "z2g-sample" / "10034.png"]).outlier_scores]
        labelled = [(path, single_class(real, green)) for path, green in composites]
        labelled = [(path, label) for path, label in labelled if label is not None]
        composite_labels = labelling(run, [path for path, _ in labelled], np.array([c for _, c in labelled]), None)
    return {
        "run": str(run), "trained_on": predictor.config.trained_on, "outlier_threshold": threshold,
        "held_out_demo": {"images": int(len(demo)), "flagged": float((demo > threshold).mean()),
                          "median_score": float(np.median(demo)), "highest_score": float(demo.max())},
        "real_single_stains": flagging(single, demo, threshold),
        "real_composites": flagging(composite, demo, threshold),
        "labels_single_stain_green": labelling(run, [path for path, _ in singles], np.array([c for _, c in singles]), "green"),
        "labels_composites": composite_labels,
    }


def parse_arguments(description: str) -> argparse.Namespace:
    """RUN, HELD_OUT, --real and --out: the arguments of this tool and of compare_outlier_scores.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", type=Path)
    parser.add_argument("held_out", type=Path)
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])
    result = measure(args.run, args.held_out, args.real)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
