"""The intensity scale of a dataset: its bit depth, decided once from a sample of its images.

A 16-bit file may hold 12-bit camera data (0..4095) or full 16-bit data (0..65535). Deciding that per image,
from its brightest pixel, maps one raw value to different grey levels in different images; deciding it once
for the dataset, at training, and storing it in the run's config.json, maps it alike everywhere. At prediction
the input's depth may be stated (--bit-depth); `describe_depth_reading` says in one line how inputs whose depth
differs from the run's are read.
"""
from __future__ import annotations

import numpy as np

from protloc.data.images import ImageReadError, container_depth, read_pixels
from protloc.data.readers import DatasetTable

DEFAULT_SAMPLE = 64  # images read to decide; evenly spread over the table, so the choice is reproducible
NOTE_SAMPLE = 8  # images read to describe how a run reads an input: a note, not a decision
TWELVE_BIT_MAX = 4095


def sample_files(table: DatasetTable, sample: int) -> list[str]:
    """The files of up to `sample` rows evenly spread over the table (every stain file of a stain set)."""
    if not len(table):
        return []
    rows = np.unique(np.linspace(0, len(table) - 1, num=min(sample, len(table))).round().astype(int))
    files = []
    for row in rows:
        source = table.frame["source"].iloc[row]
        files.extend([source] if isinstance(source, str) else source)
    return files


def survey_depths(paths: list[str]) -> tuple[set[int], int | None]:
    """(the container depths of the readable integer files, 8 or 16; the brightest pixel of the wide ones, None
    when there are none). Floating-point files hold 0..1 intensities and count for neither."""
    depths, brightest = set(), None
    for path in paths:
        try:
            pixels = read_pixels(path)
        except ImageReadError:
            continue  # check and the prediction itself name it
        if not np.issubdtype(pixels.dtype, np.integer):
            continue
        depths.add(container_depth(pixels.dtype))
        if pixels.dtype.itemsize > 1 and pixels.size:
            brightest = max(brightest or 0, int(pixels.max()))
    return depths, brightest


def detect_bit_depth(table: DatasetTable, sample: int = DEFAULT_SAMPLE) -> int:
    """8 when every sampled file holds 8-bit (or floating-point) pixels; else 12 when no wider pixel of the
    sample exceeds 4095, and 16 otherwise. Unreadable files are skipped (check reports them). 10 and 14 are
    never guessed: a dim sample would make brighter images saturate; `protloc train --bit-depth` states them."""
    _depths, brightest = survey_depths(sample_files(table, sample))
    if brightest is None:
        return 8
    return 12 if brightest <= TWELVE_BIT_MAX else 16


def describe_depth_reading(table: DatasetTable, run_depth: int | None, stated: int | None = None,
                           sample: int = NOTE_SAMPLE) -> str | None:
    """One line on how the input's pixels are read where their depth differs from the run's, or None when
    nothing needs saying. From a sample of the table's files; `run_depth` is the run's bit_depth, `stated`
    the input's (--bit-depth). A run from before bit depths were stored (None) scales each image by its own
    maximum, as it always did."""
    depth = stated if stated is not None else run_depth
    if depth is None:
        return None
    depths, brightest = survey_depths(sample_files(table, sample))
    run = f"a run of {run_depth}-bit images" if run_depth else "the run"
    if depth == 8 and brightest is not None:
        given = "with --bit-depth 8" if stated == 8 else f"in {run}"
        return (f"16-bit images {given} are read by their container's depth, 0..65535 as 0..1; if they hold camera "
                f"data of fewer bits, say so with --bit-depth 10, 12 or 14")
    if brightest is not None and brightest > 2**depth - 1:
        scale = f"the --bit-depth {stated}" if stated is not None else f"the run's {depth}-bit"
        return (f"pixel values up to {brightest} exceed {scale} scale (full at {2**depth - 1}) and saturate; "
                f"state the depth the images were recorded at, e.g. --bit-depth 16")
    if stated is None and 8 in depths and depth > 8:
        return f"8-bit images in {run} are read on their own scale, 0..255 as 0..1"
    return None
