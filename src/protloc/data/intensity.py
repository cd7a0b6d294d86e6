"""The intensity scale of a dataset: its bit depth, decided once from a sample of its images.

A 16-bit file may hold 12-bit camera data (0..4095) or full 16-bit data (0..65535). Deciding that per image,
from its brightest pixel, maps one raw value to different grey levels in different images; deciding it once
for the dataset, at training, and storing it in the run's config.json, maps it alike everywhere.
"""
from __future__ import annotations

import numpy as np

from protloc.data.images import ImageReadError, read_pixels
from protloc.data.readers import DatasetTable

DEFAULT_SAMPLE = 64  # images read to decide; evenly spread over the table, so the choice is reproducible
TWELVE_BIT_MAX = 4095


def detect_bit_depth(table: DatasetTable, sample: int = DEFAULT_SAMPLE) -> int:
    """8 when every sampled file holds 8-bit (or floating-point) pixels; else 12 when no wider pixel of the
    sample exceeds 4095, and 16 otherwise. Unreadable files are skipped (check reports them)."""
    rows = np.unique(np.linspace(0, len(table) - 1, num=min(sample, len(table))).round().astype(int)) if len(table) else []
    brightest = None
    for row in rows:
        source = table.frame["source"].iloc[row]
        for path in [source] if isinstance(source, str) else source:
            try:
                pixels = read_pixels(path)
            except ImageReadError:
                continue
            if np.issubdtype(pixels.dtype, np.integer) and pixels.dtype.itemsize > 1:
                top = int(pixels.max()) if pixels.size else 0
                brightest = top if brightest is None else max(brightest, top)
    if brightest is None:
        return 8
    return 12 if brightest <= TWELVE_BIT_MAX else 16
