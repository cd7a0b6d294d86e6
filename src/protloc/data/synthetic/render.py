"""One synthetic image: a field of cells, its three channels, then the microscope's blur and noise."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from protloc.data.synthetic.cells import CellTruth, choose_cell_labels
from protloc.data.synthetic.drawing import blur, fine_noise, smooth_noise
from protloc.data.synthetic.field import Field
from protloc.data.synthetic.label_sets import N_CLASSES
from protloc.data.synthetic.patterns import green_channel, pattern_mask
from protloc.data.synthetic.stains import blue_channel, red_channel
from protloc.errors import ProtlocError

def render_image(labels: tuple[int, ...], size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic HPA-like RGB image (uint8, ``(size, size, 3)``) showing the given hpa10 classes.

    Red: microtubules; blue: nuclei; green: the sum of the labels' localisation patterns.
    """
    return _render(labels, size, rng)[0]


def render_image_with_masks(
    labels: tuple[int, ...], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Like :func:`render_image`, also returning the ground-truth masks of the field.

    The masks (all ``(size, size)``): ``cells`` (int32 cell number, -1 background), ``nucleus``,
    ``nucleoli``, ``cytoplasm`` and ``rim`` (cell boundary pixels), booleans.
    """
    image, field, _, _ = _render(labels, size, rng)
    masks = {
        "cells": field.label,
        "nucleus": field.nucleus,
        "nucleoli": field.nucleoli,
        "cytoplasm": field.cytoplasm,
        "rim": field.rim,
    }
    return image, masks


def render_field_with_masks(
    labels: tuple[int, ...], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Like :func:`render_image` (the same pixels), also returning where each label's green pattern lies.

    The masks are keyed by hpa10 class name, one per label: boolean ``(size, size)`` arrays, true on
    the brightest pixels of the class's pattern that together hold ``MASK_MASS_SHARE`` of it (see
    :func:`pattern_mask`). They are the ground truth for how well a saliency map (Grad-CAM) finds a
    class. Drawing them costs one sort per label; the image is the same as without them.
    """
    image, _, patterns, _ = _render(labels, size, rng)
    return image, {name: pattern_mask(pat) for name, pat in patterns.items()}


def render_image_with_cells(
    labels: tuple[int, ...], size: int, rng: np.random.Generator, cell_rng: np.random.Generator
) -> tuple[np.ndarray, CellTruth]:
    """An image whose cells differ: each shows each of the labels or not (drawn from `cell_rng`; see cells.py).

    Returns the uint8 RGB image and its CellTruth: the uint16 instance mask and each cell's labels. The image's
    labels are the union of its cells'."""
    image, _, _, truth = _render(labels, size, rng, cell_rng)
    return image, truth


def _check_request(labels: tuple[int, ...], size: int) -> tuple[tuple[int, ...], int]:
    labels = tuple(sorted(set(int(c) for c in labels)))
    for c in labels:
        if not 0 <= c < N_CLASSES:
            raise ProtlocError(f"unknown hpa10 class {c}: classes are 0..{N_CLASSES - 1}")
    size = int(size)
    if size < 8:
        raise ProtlocError(f"image size {size} is too small")
    return labels, size


def _render(
    labels: tuple[int, ...], size: int, rng: np.random.Generator, cell_rng: np.random.Generator | None = None
) -> tuple[np.ndarray, Field, dict[str, np.ndarray], CellTruth | None]:
    """The uint8 image, its field of cells, each label's green pattern by class name and, with `cell_rng`,
    which cells show which labels (otherwise every cell shows every label)."""
    labels, size = _check_request(labels, size)
    field = Field(size, rng)
    truth = None if cell_rng is None else choose_cell_labels(labels, field, cell_rng)
    n = len(field.cells)
    red = red_channel(field, rng) * microtubule_strength(rng)
    blue = blue_channel(field, rng, rng.uniform(0.45, 0.8, n))
    # Cells differ in expression up to tenfold: some are dim, a few saturate.
    ggain = np.clip(rng.lognormal(0.0, 0.5, n), 0.2, 2.5).astype(np.float32)
    green, patterns = green_channel(labels, field, rng, ggain, None if truth is None else truth.shown)
    # Nonspecific green: a grainy haze over the cells and a background over the whole field.
    grain = np.clip(0.7 + 0.4 * fine_noise(rng, field.shape, 0.8 * field.s), 0.05, None)
    haze = blur((field.cell_mask * grain).astype(np.float32), 1.0 * field.s)
    green = green + rng.uniform(0.02, 0.08) * haze + rng.uniform(0.0, 0.03)
    img = np.stack([red, green, blue], axis=-1).astype(np.float32, copy=False)
    return _photograph(img, field, rng), field, patterns, truth


def microtubule_strength(rng: np.random.Generator) -> float:
    """The red stain's strength: real HPA images sometimes have a weak or a missing microtubule stain."""
    draw = rng.uniform()
    return 0.05 if draw < 0.08 else rng.uniform(0.2, 0.5) if draw < 0.25 else 1.0


def _photograph(img: np.ndarray, field: Field, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination, a background level, defocus, per-channel brightness, shot and read noise; 8 bits."""
    s = field.s
    illum = 1.0 + rng.uniform(0.0, 0.35) * smooth_noise(rng, field.shape, 3)
    img *= illum[..., None]
    img += rng.uniform(0.0, 0.04, 3).astype(np.float32)  # camera offset and autofluorescence, per channel
    defocus = rng.uniform(0.0, 0.6) * s
    if defocus >= 0.3:
        img = ndimage.gaussian_filter(img, (defocus, defocus, 0), mode="constant", truncate=3.0)
    img *= np.array([rng.uniform(0.8, 1.3), rng.uniform(0.45, 1.1), rng.uniform(0.8, 1.25)], dtype=np.float32)
    photons = rng.uniform(40.0, 400.0)
    read = rng.uniform(0.003, 0.015)
    std = np.sqrt(np.clip(img, 0, None) * np.float32(1.0 / photons) + np.float32(read * read))
    img = img + std * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
