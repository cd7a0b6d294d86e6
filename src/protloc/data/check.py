"""Validate a whole dataset and report every problem at once."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.data import GENERIC, HPA2018, Z2G
from protloc.data.images import ImageReadError, convert_channels, read_pixels
from protloc.data.readers import DatasetTable, read_dataset
from protloc.data.stains import describe_missing_stain
from protloc.data.workers import DECODE_THREADS
from protloc.errors import DataError
from protloc.labels import LabelSet
from protloc.progress import progress_bar

# Channels each file of a layout must have; other files need as many as the table is read for, at least
# (or any number, for a 1-channel table: the green one is read).
EXPECTED_FILE_CHANNELS = {Z2G: (3,), HPA2018: (1,)}
# Layouts whose images all share one size, so an odd one out is a problem.
UNIFORM_SIZE_LAYOUTS = (Z2G, HPA2018)


@dataclass
class CheckReport:
    layout: str
    labelled: bool = True
    n_images: int = 0
    n_test_images: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is allowed but worth knowing

    @property
    def ok(self) -> bool:
        return not self.problems


def find_missing_files(table: DatasetTable) -> list[str]:
    """'PATH: file not found' for each image file the table names that does not exist (for a stain set, with its Id
    and stain): cheap to know before running the model, unlike a corrupt file."""
    lines = []
    for source in table.frame["source"]:
        if isinstance(source, str):
            if not Path(source).is_file():
                lines.append(f"{source}: file not found")
            continue
        lines.extend(describe_missing_stain(path, len(source)) for path in source if not Path(path).is_file())
    return lines


def _probe(path: str) -> tuple[str, tuple[int, ...] | None, str | None]:
    """Decode one file fully (a truncated PNG only fails on full decode) -> (path, shape, error)."""
    try:
        return path, read_pixels(path).shape, None
    except ImageReadError as error:
        return path, None, str(error)


def _file_owners(table: DatasetTable) -> dict[str, tuple[str, int]]:
    """Each image file of the table -> (where its row came from, the size of its stain set; 0 for a lone file)."""
    owners = {}
    for _, row in table.frame.iterrows():
        source = row["source"]
        for path in [source] if isinstance(source, str) else source:
            owners[path] = (table.where(row), 0 if isinstance(source, str) else len(source))
    return owners


def _channel_problem(path: str, shape: tuple[int, ...], table: DatasetTable, in_stain_set: bool,
                     stain_map: dict | None = None) -> str | None:
    allowed = EXPECTED_FILE_CHANNELS.get(table.layout)
    if allowed and shape[2] not in allowed:
        return f"{path}: {shape[2]} channels (expected {' or '.join(map(str, allowed))} in the {table.layout} layout)"
    if in_stain_set:  # one stain each: any channel count reads as one plane (images.stain_plane)
        return None
    named = _named_channel_problem(path, table.channels, stain_map)
    if named is not False:
        return named
    try:
        convert_channels(np.zeros((1, 1, shape[2]), dtype=np.uint8), table.channels)
    except ImageReadError as error:
        return f"{path}: {error}"
    return None


def _named_channel_problem(path: str, channels: int, stain_map: dict | None) -> str | None | bool:
    """For a microscope file whose channels are named: why its names do not give the run's stains, or None when
    they do; False for other files, whose channel count decides (convert_channels)."""
    from protloc.data.images import read_image
    from protloc.data.microscopy import BIOIO_FORMATS, fit_named_channels

    if Path(path).suffix.lower() not in (".tif", ".tiff", *BIOIO_FORMATS):
        return False
    try:
        stored = read_image(path)
    except ImageReadError:
        return False  # the probe reported it
    if not stored.channel_names:
        return False
    try:
        fit_named_channels(np.zeros((1, 1, len(stored.channel_names)), np.uint8), stored.channel_names, channels,
                           stain_map=stain_map)
    except ImageReadError as error:
        return f"{path}: {error}"
    return None


def find_image_problems(table: DatasetTable, *, show_progress: bool = True, description: str = "checking images",
                        stain_map: dict | None = None,
                        probe=_probe) -> list[str]:
    """One line per missing, unreadable or oddly shaped image file of the table, and per file with fewer channels
    than the table was read for. `probe` (path -> (path, shape, error)) may be an image cache's, which skips files
    it holds and stores the others (protloc.data.cache)."""
    owners = _file_owners(table)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:  # PIL decodes outside the GIL
        results = list(progress_bar(pool.map(probe, owners), total=len(owners), desc=description, disable=not show_progress, unit="file"))
    problems = []
    shapes = {}
    for path, shape, error in results:
        where, stain_count = owners[path]
        if error == "file not found" and stain_count:
            problems.append(describe_missing_stain(path, stain_count) + (f" [{where}]" if where != path else ""))
        elif error:
            problems.append(f"{path}: {error}" + (f" [{where}]" if where != path else ""))
        else:
            shapes[path] = shape
    for path, shape in shapes.items():
        problem = _channel_problem(path, shape, table, in_stain_set=owners[path][1] > 0, stain_map=stain_map)
        if problem:
            problems.append(problem)
    if table.layout in UNIFORM_SIZE_LAYOUTS and shapes:
        usual, _ = Counter(shape[:2] for shape in shapes.values()).most_common(1)[0]
        for path, shape in shapes.items():
            if shape[:2] != usual:
                problems.append(f"{path}: unexpected size {shape[1]}x{shape[0]} (expected {usual[1]}x{usual[0]} like the other images)")
    return problems


def outside_notes(table: DatasetTable) -> list[str]:
    """A generic CSV may name images by absolute paths, outside its folder (other layouts may not): say so."""
    if table.layout != GENERIC:
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
    recursive: bool = False,
    stain_map: dict | None = None,
) -> CheckReport:
    """Every problem of a dataset: CSV format, labels, duplicate ids, missing, corrupt or odd images."""
    path = Path(path)
    problems: list[str] = []
    try:
        table = read_dataset(path, layout=layout, label_set=label_set, channels=channels, collect=problems,
                             recursive=recursive)
    except DataError as error:  # the CSV itself is unusable: nothing more can be checked
        return CheckReport(layout or "unknown", problems=problems + error.lines)
    report = CheckReport(table.layout, labelled=table.labelled, n_images=len(table), notes=outside_notes(table))
    problems.extend(find_image_problems(table, show_progress=show_progress, description="checking train images",
                                        stain_map=stain_map))
    if table.layout == Z2G and (table.root / "test").is_dir():
        try:
            test_table = read_dataset(table.root, layout=Z2G, split="test", label_set=table.label_set, channels=channels)
        except DataError as error:
            problems.extend(error.lines)
        else:
            report.n_test_images = len(test_table)
            problems.extend(find_image_problems(test_table, show_progress=show_progress, description="checking test images"))
    report.problems = problems
    return report
