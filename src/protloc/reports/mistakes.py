"""The evaluation's most confident mistakes: which images, and their thumbnails for the page, so that a reader
sees what the model got wrong rather than only how often."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protloc.reports import html

MISTAKES_DIR = "mistakes"  # thumbnails of the worst mistakes, in the evaluation folder
WORST_SHOWN = 12
THUMBNAIL_SIDE = 200


def name_labels(row: np.ndarray, names: list[str]) -> str:
    return ", ".join(names[i] for i in np.flatnonzero(row)) or "(none)"


def worst_mistakes(ids: list[str], targets: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                   thresholds: np.ndarray, names: list[str], count: int = WORST_SHOWN) -> pd.DataFrame:
    """The images whose wrong decisions were the most confident: ranked by the largest distance between a wrongly
    decided class's probability and its threshold (a class given at 0.98, or missed at 0.02)."""
    wrong = targets != predicted
    distance = np.abs(probabilities - thresholds)
    confidence = np.where(wrong, distance, -1.0).max(axis=1)
    rows = [int(i) for i in np.argsort(-confidence, kind="stable") if confidence[i] >= 0][:count]

    def decisions(i: int, shown: int = 3) -> str:
        classes = sorted(np.flatnonzero(wrong[i]), key=lambda c: -distance[i, c])
        text = "; ".join(f"{names[c]} {probabilities[i, c]:.0%} ({'given, not true' if predicted[i, c] else 'true, missed'})"
                         for c in classes[:shown])
        return text + (f"; {len(classes) - shown} more" if len(classes) > shown else "")

    return pd.DataFrame({"row": rows, "id": [ids[i] for i in rows],
                         "true labels": [name_labels(targets[i], names) for i in rows],
                         "predicted labels": [name_labels(predicted[i], names) for i in rows],
                         "wrong decisions": [decisions(i) for i in rows], "picture": [""] * len(rows)})


def worst_blocks(evaluation, prefix: str) -> list[str]:
    """The most confident mistakes: their pictures where they were written, else a table."""
    worst = evaluation.worst
    if worst is None or not len(worst):
        return []
    blocks = [html.heading("The most confident mistakes", 3),
              html.paragraph("Images whose wrong decisions were the surest: a class given with a probability far above "
                             "its threshold, or a true class missed far below it. Each caption: the image, its true "
                             "labels, then the wrong decisions with their probabilities.")]
    if (worst["picture"] != "").all():
        captions = [f"{identifier}: true {true}; {wrong}"
                    for identifier, true, wrong in zip(worst["id"], worst["true labels"], worst["wrong decisions"])]
        flagged = getattr(evaluation, "outliers", None)  # unlike the training images: a reason for the mistake
        if flagged is not None:
            captions = [caption + ("; UNLIKE THE TRAINING IMAGES" if flagged[row] else "")
                        for caption, row in zip(captions, worst["row"])]
        return blocks + [html.gallery([(prefix + picture, caption) for picture, caption in zip(worst["picture"], captions)])]
    return blocks + [html.table(worst.drop(columns=["row", "picture"]))]


def write_mistake_pictures(evaluation, out_dir: Path, sources: list, read_image) -> None:
    """Thumbnails of the worst mistakes in out_dir/MISTAKES_DIR; `read_image(source)` gives an image as the run
    reads it, uint8 (H, W, C)."""
    from PIL import Image

    from protloc.files import atomic_path
    from protloc.plots import rgb_view

    folder = out_dir / MISTAKES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pictures = []
    for rank, row in enumerate(evaluation.worst["row"]):
        picture = Image.fromarray(np.ascontiguousarray(rgb_view(read_image(sources[row]))))
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        name = f"{rank + 1:02d}.png"  # by rank: ids may be paths, or characters a file name cannot hold
        with atomic_path(folder / name) as path:
            picture.save(path, format="PNG")
        pictures.append(f"{MISTAKES_DIR}/{name}")
    evaluation.worst["picture"] = pictures
