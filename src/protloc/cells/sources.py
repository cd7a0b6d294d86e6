"""What segmentation reads: the images predict reads (dataset folders, CSVs, image folders, image files, stain
files <Id>_<stain>.png), each as the stains that find cells: blue (nuclei), red and yellow (cell bodies).

A composite is red, green, blue (and yellow as a fourth channel); a stain set needs its blue file, and uses its
red and yellow files where they are there. Wide pixels (16-bit) are read as they are: segmentation thresholds
each image on its own scale.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from protloc.cells.segment import NoNuclei, Stains, segment_cells
from protloc.data.images import IMAGE_SUFFIXES, ImageReadError, read_pixels, stain_plane
from protloc.data.readers import list_images, read_inputs
from protloc.data.stains import split_stain_name
from protloc.errors import DataError

Source = str | dict[str, str]  # a composite's path, or {stain: path}


def segmentation_sources(inputs: Sequence[str | Path], layout: str | None = None,
                         recursive: bool = False) -> tuple[list[str], list[Source], list[str]]:
    """(ids, sources, problems) of every image the inputs name; a problem is a stain set without its blue file.
    `recursive`: a folder of images with its subfolders, each id the image's path relative to the folder."""
    paths = [Path(item) for item in inputs]
    files = None if recursive else _image_files(paths)
    if files is not None and any(split_stain_name(path) for path in files):
        return _stain_sets(files)
    table = read_inputs(inputs, layout=layout, split="test", channels=3, recursive=recursive)
    ids, sources = [], []
    for identifier, source in zip(table.frame["id"], table.frame["source"]):
        ids.append(str(identifier))
        sources.append(source if isinstance(source, str) else _with_yellow(source))
    return ids, sources, []


def _image_files(paths: list[Path]) -> list[Path] | None:
    """The image files of a folder of images or of files given one by one; None for a dataset (folder or CSV)."""
    if all(path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES for path in paths):
        return paths
    if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "train.csv").exists() \
            and not (paths[0] / "test").is_dir() and not (paths[0] / "sample_submission.csv").exists():
        return list_images(paths[0])
    return None


def _stain_sets(files: list[Path]) -> tuple[list[str], list[Source], list[str]]:
    by_id: dict[str, dict[str, str]] = defaultdict(dict)
    for path in files:
        parts = split_stain_name(path)
        if parts is None:
            raise DataError(f"{path}: a whole image among stain files (<Id>_<stain>.png); give them separately")
        by_id[parts[0]].setdefault(parts[1], str(path))
    missing = [f"{os.path.dirname(next(iter(s.values()))) or '.'}: Id {i} has no blue stain file ({i}_blue.png): "
               "nuclei are found in the blue stain" for i, s in by_id.items() if "blue" not in s]
    complete = {i: s for i, s in by_id.items() if "blue" in s}
    return list(complete), list(complete.values()), missing


def _with_yellow(stain_set: tuple[str, ...]) -> dict[str, str]:
    """An RGB stain set read for predict, with its yellow file when one lies beside it."""
    named = dict(zip(("red", "green", "blue"), stain_set))
    blue = Path(stain_set[2])
    identifier = split_stain_name(blue)[0]
    for suffix in (blue.suffix, ".png", ".tif", ".tiff", ".jpg"):
        yellow = blue.with_name(f"{identifier}_yellow{suffix}")
        if yellow.is_file():
            named["yellow"] = str(yellow)
            break
    return named


def read_stains(source: Source) -> Stains:
    """The planes of one image, float32. Raises DataError naming the file."""
    if isinstance(source, str):
        named = _named_stains(source)
        if named is not None:
            return named
        pixels = _pixels(source)
        channels = pixels.shape[-1]
        if channels == 1:
            raise DataError(f"{source}: a grayscale image; segmentation needs the blue (nucleus) stain: give an RGB "
                            "composite or stain files <Id>_blue.png (with <Id>_red.png, <Id>_yellow.png)")
        planes = pixels.astype(np.float32)
        # A fourth channel is the yellow stain, unless it is flat (an alpha channel).
        yellow = planes[..., 3] if channels == 4 and np.ptp(planes[..., 3]) > 0 else None
        return Stains(blue=planes[..., 2], red=planes[..., 0], yellow=yellow)
    planes = {stain: stain_plane(_pixels(path)).astype(np.float32) for stain, path in source.items()
              if stain in ("blue", "red", "yellow")}
    shapes = {plane.shape for plane in planes.values()}
    if len(shapes) > 1:
        raise DataError(f"{source['blue']}: the stain files of this Id differ in size "
                        f"({', '.join(f'{s}: {p.shape[1]}x{p.shape[0]}' for s, p in planes.items())})")
    return Stains(blue=planes["blue"], red=planes.get("red"), yellow=planes.get("yellow"))


def _named_stains(path: str) -> Stains | None:
    """The planes of a microscope file whose channels are named (OME-TIFF, CZI...), picked by their names
    (stains.channel_stains); None for other files."""
    from protloc.data.images import read_image
    from protloc.data.stains import channel_stains

    try:
        stored = read_image(path)
    except ImageReadError as error:
        raise DataError(f"{path}: {error}") from None
    if not stored.channel_names:
        return None
    stains, problems = channel_stains(stored.channel_names)
    if problems or "blue" not in stains:
        why = "; ".join(problems) or "no channel is the blue (nucleus) stain, where nuclei are found"
        raise DataError(f"{path}: {why}")
    planes = {stain: stored.pixels[..., stains.index(stain)].astype(np.float32) for stain in ("blue", "red", "yellow")
              if stain in stains}
    return Stains(blue=planes["blue"], red=planes.get("red"), yellow=planes.get("yellow"))


def _pixels(path: str) -> np.ndarray:
    try:
        return read_pixels(path)
    except ImageReadError as error:
        raise DataError(f"{path}: {error}") from None


def source_path(source: Source) -> str:
    """The file that names an image in messages: the composite, or the blue stain."""
    return source if isinstance(source, str) else source["blue"]


def segment_source(source: Source) -> np.ndarray:
    """The uint16 cell mask of one image. Raises DataError naming the file: unreadable, or no nuclei."""
    stains = read_stains(source)
    try:
        return segment_cells(stains)
    except NoNuclei as error:
        raise DataError(f"{source_path(source)}: {error}") from None
