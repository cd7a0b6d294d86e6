"""Dataset conversions. hpa2018 -> hpa10: the Zero-to-GANs dataset is the 2018 dataset reduced to 10 classes.

The composites are 8-bit: wider stain files are scaled by one bit depth for the whole dataset (intensity.py)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from protloc.data.images import load_image
from protloc.data.intensity import detect_bit_depth
from protloc.data.readers import DatasetTable, read_hpa2018
from protloc.data.workers import DECODE_THREADS
from protloc.errors import DataError
from protloc.files import atomic_path, write_csv
from protloc.labels import HPA10, HPA28, HPA28_TO_HPA10
from protloc.progress import progress_bar

MAX_LISTED = 20


def hpa2018_to_hpa10_labels(table: DatasetTable) -> pd.DataFrame:
    """Keep the images that carry at least one of the 10 classes, with only those labels, renumbered."""
    rows = []
    for identifier, labels in zip(table.frame["id"], table.frame["labels"]):
        kept = sorted(HPA28_TO_HPA10[label] for label in labels if label in HPA28_TO_HPA10)
        if kept:
            rows.append((identifier, " ".join(map(str, kept))))
    return pd.DataFrame(rows, columns=["Image", "Label"])


def _compose(job: tuple[tuple[str, ...], Path, int]) -> None:
    sources, target, bit_depth = job
    with atomic_path(target) as temp:
        Image.fromarray(load_image(sources, channels=3, bit_depth=bit_depth)).save(temp, format="PNG")


def convert_hpa2018_to_hpa10(source: Path, out: Path, *, labels_only: bool = False, show_progress: bool = True) -> int:
    """Write a Zero-to-GANs-layout dataset (train.csv + RGB composites) from an HPA 2018 one; returns rows kept."""
    table = read_hpa2018(Path(source), label_set=HPA28, channels=3)
    converted = hpa2018_to_hpa10_labels(table)
    sources = dict(zip(table.frame["id"], table.frame["source"]))
    out = Path(out)
    if not labels_only:
        missing = [path for identifier in converted["Image"] for path in sources[identifier] if not Path(path).is_file()]
        if missing:
            listed = [f"{path}: stain image not found (each Id needs _red, _green and _blue PNGs)" for path in missing[:MAX_LISTED]]
            more = len(missing) - MAX_LISTED
            raise DataError(*listed, f"... and {more} more missing stain images" if more > 0 else "",
                            "use --labels-only to convert train.csv alone")
        (out / "train").mkdir(parents=True, exist_ok=True)
        bit_depth = detect_bit_depth(table.subset(table.frame.index[table.frame["id"].isin(converted["Image"])]))
        jobs = [(sources[identifier], out / "train" / f"{identifier}.png", bit_depth) for identifier in converted["Image"]]
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            list(progress_bar(pool.map(_compose, jobs), total=len(jobs), desc="composing RGB", unit="image", disable=not show_progress))
    write_csv(out / "train.csv", converted)
    return len(converted)


assert len(HPA10) == len(HPA28_TO_HPA10)
