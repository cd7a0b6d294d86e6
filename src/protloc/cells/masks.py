"""Cell masks on disk: label images named by their image's id (uint16 PNG or TIFF: 0 background, cell k = k), as
`protloc segment`, cellpose, CellProfiler and HPA-Cell-Segmentation write them; and each cell's geometry.

A mask is checked where it is read: one channel of whole numbers, the size of its image, at least one cell.
Each problem is one line naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from protloc.data.images import ImageReadError, read_pixels
from protloc.errors import DataError
from protloc.files import atomic_path

MASK_SUFFIXES = (".png", ".tif", ".tiff")
CELLS_CSV = "cells.csv"
GEOMETRY_COLUMNS = ["centroid_y", "centroid_x", "area", "touches_border"]
MAX_CELL_NUMBER = np.iinfo(np.uint16).max


def find_mask(masks_dir: str | Path, image_id: str) -> Path:
    """DIR/<id>.png (or .tif, .tiff). Raises DataError naming the file looked for."""
    folder = Path(masks_dir)
    for suffix in MASK_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"{folder / (image_id + '.png')}: no mask for image {image_id} (expected <id>.png or .tif in "
                    f"{folder}, a label image with 0 for background and k for cell k)")


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A label image -> (H, W) int32. Raises DataError naming the file: unreadable, not one channel of whole
    numbers, another size than `shape` (its image's height and width), or no cells."""
    try:
        pixels = read_pixels(path)
    except ImageReadError as error:
        raise DataError(f"{path}: {error}") from None
    if pixels.shape[-1] != 1:
        raise DataError(f"{path}: a mask of {pixels.shape[-1]} channels; expected one channel of cell numbers "
                        "(0 background, k for cell k)")
    mask = pixels[:, :, 0]
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)) or mask.min(initial=0) < 0:
            raise DataError(f"{path}: a mask of {mask.dtype} values that are not whole numbers; expected cell "
                            "numbers (0 background, k for cell k)")
    elif not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise DataError(f"{path}: a mask of {mask.dtype}; expected whole cell numbers")
    if np.issubdtype(mask.dtype, np.signedinteger) and mask.min(initial=0) < 0:
        raise DataError(f"{path}: negative cell numbers; expected 0 for background and k for cell k")
    if mask.max(initial=0) > MAX_CELL_NUMBER:
        raise DataError(f"{path}: cell number {int(mask.max())}; expected numbers up to {MAX_CELL_NUMBER:,} (a uint16 "
                        "mask; number the cells 1..K)")
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(f"{path}: a {mask.shape[1]}x{mask.shape[0]} mask for a {shape[1]}x{shape[0]} image; a "
                        "mask must be the size of its image")
    if not mask.any():
        raise DataError(f"{path}: no cells in the mask (every pixel is 0)")
    return mask.astype(np.int32)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """A uint16 PNG, written whole or not at all."""
    with atomic_path(path) as temp:
        Image.fromarray(mask.astype(np.uint16)).save(temp, format="PNG", compress_level=6)


def cell_numbers(mask: np.ndarray) -> np.ndarray:
    """The cell numbers a mask holds, in increasing order."""
    present = np.flatnonzero(np.bincount(mask.ravel()))
    return present[present > 0]


def cell_geometry(mask: np.ndarray) -> pd.DataFrame:
    """One row per cell: Cell, centroid (y, x, pixels), area (pixels), whether it touches the image's edge."""
    numbers = cell_numbers(mask)
    size = int(mask.max()) + 1
    rows, cols = np.indices(mask.shape)
    flat = mask.ravel()
    area = np.bincount(flat, minlength=size)
    cy = np.bincount(flat, weights=rows.ravel(), minlength=size)
    cx = np.bincount(flat, weights=cols.ravel(), minlength=size)
    edge = np.zeros(size, dtype=bool)
    edge[np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])] = True
    return pd.DataFrame({
        "Cell": numbers,
        "centroid_y": np.round(cy[numbers] / area[numbers], 1),
        "centroid_x": np.round(cx[numbers] / area[numbers], 1),
        "area": area[numbers],
        "touches_border": edge[numbers],
    })


def bounding_boxes(mask: np.ndarray, numbers: np.ndarray) -> list[tuple[slice, slice]]:
    """Each cell's bounding box, as slices into the mask."""
    from scipy import ndimage

    boxes = ndimage.find_objects(mask)
    return [boxes[k - 1] for k in numbers]
