"""Validate a whole dataset and report every problem at once."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from protloc.data.images import ImageReadError, decode_image
from protloc.data.readers import DatasetTable, read_dataset
from protloc.errors import DataError
from protloc.labels import LabelSet

# Channels each file of a layout must have; generic data may have any of 1, 3 or 4.
EXPECTED_FILE_CHANNELS = {"z2g": (3,), "hpa2018": (1,)}
# Layouts whose images all share one size, so an odd one out is a problem.
UNIFORM_SIZE_LAYOUTS = ("z2g", "hpa2018")


@dataclass
class CheckReport:
    layout: str
    n_images: int = 0
    n_test_images: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is allowed but worth knowing

    @property
    def ok(self) -> bool:
        return not self.problems


def _probe(path: str) -> tuple[str, tuple[int, ...] | None, str | None]:
    """Decode one file fully (a truncated PNG only fails on full decode) -> (path, shape, error)."""
    try:
        return path, decode_image(path).shape, None
    except ImageReadError as error:
        return path, None, str(error)


def _file_paths(table: DatasetTable) -> list[str]:
    paths = []
    for source in table.frame["source"]:
        paths.extend([source] if isinstance(source, str) else source)
    return paths


def find_image_problems(table: DatasetTable, *, show_progress: bool = True, description: str = "checking images") -> list[str]:
    """One line per missing, unreadable or oddly shaped image file of the table."""
    paths = _file_paths(table)
    where_of = {}
    for _, row in table.frame.iterrows():
        for path in [row["source"]] if isinstance(row["source"], str) else row["source"]:
            where_of[path] = table.where(row)
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes outside the GIL
        results = list(tqdm(pool.map(_probe, paths), total=len(paths), desc=description, disable=not show_progress, unit="file"))
    problems = []
    shapes = {}
    for path, shape, error in results:
        where = where_of[path] if where_of[path] != path else path
        if error:
            problems.append(f"{path}: {error}" + (f" [{where}]" if where != path else ""))
        else:
            shapes[path] = shape
    allowed = EXPECTED_FILE_CHANNELS.get(table.layout)
    if allowed:
        for path, shape in shapes.items():
            if shape[2] not in allowed:
                problems.append(f"{path}: {shape[2]} channels (expected {' or '.join(map(str, allowed))} in the {table.layout} layout)")
    if table.layout in UNIFORM_SIZE_LAYOUTS and shapes:
        usual, _ = Counter(shape[:2] for shape in shapes.values()).most_common(1)[0]
        for path, shape in shapes.items():
            if shape[:2] != usual:
                problems.append(f"{path}: unexpected size {shape[1]}x{shape[0]} (expected {usual[1]}x{usual[0]} like the other images)")
    return problems


def outside_notes(table: DatasetTable) -> list[str]:
    """A generic CSV may name images by absolute paths, outside its folder (other layouts may not): say so."""
    if table.layout != "generic":
        return []
    root = os.path.abspath(table.root)
    outside = [source for source in table.frame["source"] if os.path.relpath(os.path.abspath(source), root).startswith(os.pardir)]
    if not outside:
        return []
    return [f"{len(outside)} rows of {table.csv_path} name images by absolute paths outside its folder, e.g. {outside[0]} "
            "(allowed in a generic CSV only; moving the dataset will not move them)"]


def check_dataset(
    path: str | Path,
    *,
    layout: str | None = None,
    label_set: LabelSet | None = None,
    channels: int = 3,
    show_progress: bool = True,
) -> CheckReport:
    """Every problem of a dataset: CSV format, labels, duplicate ids, missing, corrupt or odd images."""
    path = Path(path)
    problems: list[str] = []
    try:
        table = read_dataset(path, layout=layout, label_set=label_set, channels=channels, collect=problems)
    except DataError as error:  # the CSV itself is unusable: nothing more can be checked
        return CheckReport(layout or "unknown", problems=problems + error.lines)
    report = CheckReport(table.layout, n_images=len(table), notes=outside_notes(table))
    problems.extend(find_image_problems(table, show_progress=show_progress, description="checking train images"))
    if table.layout == "z2g" and (table.root / "test").is_dir():
        try:
            test_table = read_dataset(table.root, layout="z2g", split="test", label_set=table.label_set)
        except DataError as error:
            problems.extend(error.lines)
        else:
            report.n_test_images = len(test_table)
            problems.extend(find_image_problems(test_table, show_progress=show_progress, description="checking test images"))
    report.problems = problems
    return report
