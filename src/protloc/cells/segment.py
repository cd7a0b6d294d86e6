"""Classical cell segmentation, the embedded default: nuclei from the blue stain, cell bodies from the red (and
yellow) stains grown from the nuclei. What CellProfiler's IdentifyPrimaryObjects and IdentifySecondaryObjects
do, with scikit-image: no downloaded weights, a fraction of a second per field.

Nuclei: the blue stain smoothed, Otsu's threshold, holes filled; touching nuclei split by a seeded watershed on
the distance transform, one seed per distance peak at least about a nucleus radius from the next. The typical
nucleus radius is measured on each image (the median of its blobs' largest inscribed radius), so one set of
rules fits fields of any magnification.

Cells: the cell stains (red, plus yellow when present) lightly smoothed (a twelfth of a nucleus radius), the
cell foreground
a threshold at half of Otsu's (the cytoplasm is much dimmer than the microtubule bundles that set Otsu's
threshold) joined with the nuclei; then a watershed seeded by the nuclei on the inverted smoothed stain plus the
distance to the nearest seed (CellProfiler's "propagation": boundaries follow dark seams between cells near half
way, and fall half way where there is none). Foreground far from every nucleus seeds a cell of its own (a cell
whose nucleus lies outside the field), and a piece of foreground no seed reached, if large enough, is a cell too.
With no cell stain, cells are the nuclei grown by a nucleus radius.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import filters, segmentation
from skimage.feature import peak_local_max

MIN_NUCLEUS_SHARE = 0.15  # smallest nucleus kept, as a share of the typical nucleus's area
MIN_CELL_SHARE = 0.3  # smallest cell without a nucleus kept, as a share of the typical nucleus's area
FAR_SEED_DISTANCE = 2.5  # foreground farther than this many nucleus radii from every nucleus seeds a cell of its own
NUCLEUS_SMOOTHING = 2.0  # pixels


class NoNuclei(ValueError):
    """An image whose blue stain shows no nucleus."""


@dataclass
class Stains:
    """The planes segmentation reads, float32 (H, W): blue (required), and red and yellow where present."""

    blue: np.ndarray
    red: np.ndarray | None = None
    yellow: np.ndarray | None = None


def _normalise(plane: np.ndarray) -> np.ndarray:
    """Intensity / its 99.9th percentile: one scale for 8-, 12- and 16-bit images (thresholds are relative)."""
    plane = plane.astype(np.float32)
    top = float(np.percentile(plane, 99.9))
    return plane / top if top > 0 else plane


def segment_nuclei(blue: np.ndarray) -> tuple[np.ndarray, float]:
    """Instance labels of the nuclei (int32) and the typical nucleus radius in pixels. Raises NoNuclei."""
    smooth = filters.gaussian(_normalise(blue), NUCLEUS_SMOOTHING)
    if float(smooth.max() - smooth.min()) < 1e-3:
        raise NoNuclei("the blue (nucleus) stain is blank: no nuclei")
    foreground = ndimage.binary_fill_holes(smooth > filters.threshold_otsu(smooth))
    blobs, count = ndimage.label(foreground)
    foreground = _drop_small(blobs, 16) > 0
    blobs, count = ndimage.label(foreground)
    if count == 0:
        raise NoNuclei("no nuclei in the blue (nucleus) stain")
    distance = ndimage.distance_transform_edt(foreground)
    radius = float(np.median(ndimage.maximum(distance, blobs, np.arange(1, count + 1))))
    peaks = peak_local_max(filters.gaussian(distance, max(1.0, radius / 4)), min_distance=max(2, int(0.7 * radius)),
                           labels=blobs, exclude_border=False)
    markers = np.zeros(blue.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = segmentation.watershed(-distance, markers, mask=foreground)
    nuclei = _drop_small(nuclei, MIN_NUCLEUS_SHARE * np.pi * radius**2, keep_at_border=True)
    if nuclei.max() == 0:
        raise NoNuclei("no nuclei in the blue (nucleus) stain")
    return nuclei, radius


def segment_cells(stains: Stains) -> np.ndarray:
    """Instance labels of the cells, uint16 (0 background, cell k = k). Raises NoNuclei for an image with no
    nuclei."""
    nuclei, radius = segment_nuclei(stains.blue)
    planes = [_normalise(p) for p in (stains.red, stains.yellow) if p is not None]
    if not planes:
        cells = segmentation.expand_labels(nuclei, radius)
        return _renumber(cells)
    body = filters.gaussian(np.mean(planes, axis=0), max(1.0, radius / 12))
    foreground = (body > 0.5 * filters.threshold_otsu(body)) | (nuclei > 0)
    foreground = ndimage.binary_fill_holes(foreground)
    markers = _add_far_seeds(nuclei, foreground, radius)
    to_marker = ndimage.distance_transform_edt(markers == 0)
    # The distance weighs more than the stain: a step of one nucleus radius outweighs the brightest stain, so a
    # cell's edge follows a dark seam where one lies near half way and is half way between seeds elsewhere.
    elevation = -body / max(float(body.max()), 1e-6) + to_marker / radius
    cells = segmentation.watershed(elevation, markers, mask=foreground)
    orphans, count = ndimage.label(foreground & (cells == 0))
    if count:
        orphans = _drop_small(orphans, MIN_CELL_SHARE * np.pi * radius**2)
        cells = np.where(orphans > 0, orphans + cells.max(), cells)
    return _renumber(cells)


def _add_far_seeds(nuclei: np.ndarray, foreground: np.ndarray, radius: float) -> np.ndarray:
    """The nuclei plus a seed for each piece of foreground far from every nucleus: a cell whose nucleus lies
    outside the field (or is too dim to find), which would otherwise be flooded from a neighbour's nucleus."""
    far = foreground & (ndimage.distance_transform_edt(nuclei == 0) > FAR_SEED_DISTANCE * radius)
    pieces, count = ndimage.label(far)
    if not count:
        return nuclei
    pieces = _drop_small(pieces, MIN_CELL_SHARE * np.pi * radius**2)
    return np.where(pieces > 0, pieces + nuclei.max(), nuclei)


def _drop_small(labels: np.ndarray, min_area: float, keep_at_border: bool = False) -> np.ndarray:
    """Labels with fewer pixels than `min_area` made background; with `keep_at_border`, those that touch the
    image's edge are kept from 16 pixels (a nucleus cut by the edge still seeds its cell)."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    if keep_at_border:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        small[edge] = areas[edge] < 16
    small[0] = False
    return np.where(small[labels], 0, labels)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Cells numbered 1..K without gaps, uint16."""
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(labels.max())} cells: more than a uint16 mask holds")
    return segmentation.relabel_sequential(labels)[0].astype(np.uint16)
