"""The geometry of one field of cells: where the cells, nuclei and nucleoli are.

Building a Field draws from the generator in a fixed order (cell sizes, seeds, colonies, cell
shapes, edges, nucleoli); every image of a dataset depends on that order, so steps keep it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protloc.data.synthetic.drawing import (
    fine_noise,
    harmonic_factor,
    harmonic_factor_cs,
    random_harmonics,
    smooth_noise,
)

Outline = tuple[float, float, float, np.ndarray]  # a cell's semi-axes, orientation and boundary harmonics
Nucleolus = tuple[float, float, float]  # centre y, x and radius (pixels)


@dataclass
class Cell:
    cy: float  # cell centre
    cx: float
    ny: float  # nucleus centre
    nx: float
    na: float  # nucleus semi-axes (pixels) and orientation
    nb: float
    nang: float
    nharm: np.ndarray  # nucleus boundary harmonics: rows of (k, amplitude, phase)
    radius: float  # mean cell radius (pixels)
    ang: float  # orientation of the cell's long axis

    def nucleus_boundary(self, phi: np.ndarray, extra: np.ndarray | float = 0.0):
        """Pixel coordinates at polar angle phi (image frame) on the nucleus rim, pushed out by extra px."""
        c, s = math.cos(self.nang), math.sin(self.nang)
        # Direction in the nucleus frame.
        du, dv = np.cos(phi) * c + np.sin(phi) * s, -np.cos(phi) * s + np.sin(phi) * c
        # Distance to the rim along that direction: r with hypot(r du / a, r dv / b) = f(angle).
        ang = np.arctan2(dv / self.nb, du / self.na)
        r = harmonic_factor(ang, self.nharm) / np.hypot(du / self.na, dv / self.nb)
        r = r + extra
        return self.ny + r * np.sin(phi), self.nx + r * np.cos(phi)


class Field:
    """One field of cells: label map, nuclei, nucleoli, cytoplasm, rims and per-cell parameters."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.shape = (size, size)
        self.s = math.sqrt(size / 256.0)  # feature scale: 1 at 256 px
        r_mean = rng.uniform(32.0, 46.0) * self.s
        coverage = rng.uniform(0.9, 1.5)
        seeds = _pack_cell_seeds(size, r_mean, coverage, rng)
        centres = _thin_into_colonies(seeds, self.shape, rng)
        self.cells, outlines = _draw_cells(centres, r_mean, rng)
        dist, self.label = _territories(self.shape, self.cells, outlines)
        edge = 1.0 + 0.07 * smooth_noise(rng, self.shape, max(2.0, size / (r_mean * 0.9)))
        edge += 0.015 * fine_noise(rng, self.shape, 1.5 * self.s)
        incell = dist < edge
        self.label[~incell] = -1
        self.dist = np.where(incell, dist / edge, 9.0).astype(np.float32)  # 1 at the cell's edge
        self.cell_mask = incell
        self.nucleus, self.ndist, self.nucleoli, self.nucleoli_geo = _nuclei(self.shape, self.cells, self.label, rng)
        self.cytoplasm = incell & ~self.nucleus
        self.rim = _rims(self.label) & incell


def _pack_cell_seeds(size: int, r_mean: float, coverage: float, rng: np.random.Generator) -> np.ndarray:
    """Cell centres in a dense packing, the first near the middle so that a cell is always in view."""
    h = w = size
    n_target = int(np.clip(round(coverage * h * w / (math.pi * r_mean**2)), 1, 400))
    min_dist = 1.05 * r_mean
    lo, hi = -0.08 * size, 1.08 * size
    cand = rng.uniform(lo, hi, (n_target * 30, 2))
    cand[0] = rng.uniform(0.3 * size, 0.7 * size, 2)
    pts = np.empty((n_target, 2))
    n_pts = 0
    for p in cand:
        if n_pts and (((pts[:n_pts] - p) ** 2).sum(axis=1)).min() < min_dist**2:
            continue
        pts[n_pts] = p
        n_pts += 1
        if n_pts >= n_target:
            break
    return pts[:n_pts]


def _thin_into_colonies(pts: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Keep the seeds where a smooth random field is high (always the first one)."""
    h, w = shape
    colony = smooth_noise(rng, shape, 3)
    at = colony[np.clip(pts[:, 0].astype(int), 0, h - 1), np.clip(pts[:, 1].astype(int), 0, w - 1)]
    keep_share = rng.uniform(0.4, 1.0)
    keep = at >= np.quantile(at, 1.0 - keep_share)
    keep[0] = True
    return [(float(y), float(x)) for y, x in pts[keep]]


def _draw_cells(
    centres: list[tuple[float, float]], r_mean: float, rng: np.random.Generator
) -> tuple[list[Cell], list[Outline]]:
    """Each cell's size, shape and nucleus."""
    cells: list[Cell] = []
    outlines: list[Outline] = []
    for cy, cx in centres:
        radius = r_mean * rng.uniform(0.8, 1.2)
        elong = rng.uniform(1.0, 1.8)
        a, b = radius * math.sqrt(elong), radius / math.sqrt(elong)
        ang = rng.uniform(0.0, math.pi)
        harm = random_harmonics(rng, 0.09)
        # Nucleus: an ellipse roughly aligned with the cell, a little off centre.
        nrad = radius * rng.uniform(0.42, 0.55)
        nelong = rng.uniform(1.0, 1.4)
        na, nb = nrad * math.sqrt(nelong), nrad / math.sqrt(nelong)
        nang = ang + rng.normal(0.0, 0.35)
        off_r = rng.uniform(0.0, 0.15) * radius
        off_a = rng.uniform(0.0, 2 * math.pi)
        ny, nx = cy + off_r * math.sin(off_a), cx + off_r * math.cos(off_a)
        nharm = random_harmonics(rng, 0.035)
        outlines.append((a, b, ang, harm))
        cells.append(Cell(cy, cx, ny, nx, na, nb, nang, nharm, radius, ang))
    return cells, outlines


def _territories(shape: tuple[int, int], cells: list[Cell], outlines: list[Outline]) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's owning cell (the smallest normalised distance) and that distance (1 on the outline)."""
    dist = np.full(shape, 9.0, dtype=np.float32)
    label = np.full(shape, -1, dtype=np.int32)
    for i, (cell, (a, b, ang, harm)) in enumerate(zip(cells, outlines)):
        ext = 1.45 * a * (1.0 + np.abs(harm[:, 1]).sum()) + 2
        sl, yy, xx = _window(shape, cell.cy, cell.cx, ext)
        if sl is None:
            continue
        d = _elliptic(yy - cell.cy, xx - cell.cx, a, b, ang, harm)
        sub_d = dist[sl]
        upd = d < sub_d
        sub_d[upd] = d[upd]
        label[sl][upd] = i
    return dist, label


def _nuclei(shape: tuple[int, int], cells: list[Cell], label: np.ndarray, rng: np.random.Generator):
    """Masks of the nuclei and nucleoli, the normalised nuclear distance, and each cell's nucleoli."""
    nuc = np.zeros(shape, dtype=bool)
    ndist = np.full(shape, 9.0, dtype=np.float32)
    nucleoli = np.zeros(shape, dtype=bool)
    nucleoli_geo: list[list[Nucleolus]] = []
    for i, cell in enumerate(cells):
        ext = 1.2 * cell.na * (1.0 + np.abs(cell.nharm[:, 1]).sum()) + 2
        sl, yy, xx = _window(shape, cell.ny, cell.nx, ext)
        # Nucleoli are drawn even when the nucleus is out of view, to keep the stream of draws
        # independent of the framing.
        geo = _place_nucleoli(cell, rng)
        nucleoli_geo.append(geo)
        nl_harm = [random_harmonics(rng, 0.12, ks=(2, 3)) for _ in geo]
        if sl is None:
            continue
        own = label[sl] == i
        d = _elliptic(yy - cell.ny, xx - cell.nx, cell.na, cell.nb, cell.nang, cell.nharm)
        inside = (d < 1.0) & own
        nuc[sl] |= inside
        sub = ndist[sl]
        sub[own] = d[own]
        for (py, px, r), hm in zip(geo, nl_harm):
            dy, dx = yy - py, xx - px
            rr = np.hypot(dy, dx)
            inv = 1.0 / np.maximum(rr, 1e-6)
            dd = rr / (r * harmonic_factor_cs(dx * inv, dy * inv, hm))
            nucleoli[sl] |= (dd < 1.0) & inside
    return nuc, ndist, nucleoli, nucleoli_geo


def _place_nucleoli(cell: Cell, rng: np.random.Generator) -> list[Nucleolus]:
    """1 to 4 nucleoli inside the inner part of the nucleus."""
    geo: list[Nucleolus] = []
    n_nl = int(rng.integers(1, 5))
    nrad = math.sqrt(cell.na * cell.nb)
    for _ in range(n_nl):
        rho = math.sqrt(rng.uniform(0.0, 1.0)) * 0.55
        phi = rng.uniform(0.0, 2 * math.pi)
        ly, lx = rho * cell.nb * math.sin(phi), rho * cell.na * math.cos(phi)
        c, sn = math.cos(cell.nang), math.sin(cell.nang)
        py = cell.ny + lx * sn + ly * c
        px = cell.nx + lx * c - ly * sn
        geo.append((py, px, nrad * rng.uniform(0.12, 0.24)))
    return geo


def _rims(label: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another cell or of the background."""
    pad = np.pad(label, 1, mode="edge")
    return (
        (pad[1:-1, 1:-1] != pad[:-2, 1:-1])
        | (pad[1:-1, 1:-1] != pad[2:, 1:-1])
        | (pad[1:-1, 1:-1] != pad[1:-1, :-2])
        | (pad[1:-1, 1:-1] != pad[1:-1, 2:])
    )


def _window(shape: tuple[int, int], cy: float, cx: float, ext: float):
    """The slices and pixel coordinates of the square of half-side ext around (cy, cx), clipped to the image."""
    h, w = shape
    y0, y1 = max(0, int(math.floor(cy - ext))), min(h, int(math.ceil(cy + ext)) + 1)
    x0, x1 = max(0, int(math.floor(cx - ext))), min(w, int(math.ceil(cx + ext)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None, None, None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _elliptic(dy, dx, a, b, ang, harm) -> np.ndarray:
    """Normalised distance from the centre of a wobbly ellipse: 1 on its outline."""
    c, s = math.cos(ang), math.sin(ang)
    u = (dx * c + dy * s) * (1.0 / a)
    v = (-dx * s + dy * c) * (1.0 / b)
    rho = np.hypot(u, v)
    inv = 1.0 / np.maximum(rho, 1e-6)
    return (rho / harmonic_factor_cs(u * inv, v * inv, harm)).astype(np.float32, copy=False)


class PixelIndex:
    """Pixels of a mask grouped by cell, for cheap per-cell sampling."""

    def __init__(self, mask: np.ndarray, label: np.ndarray):
        self.width = mask.shape[1]
        flat = np.flatnonzero(mask)
        owners = label.ravel()[flat]
        order = np.argsort(owners, kind="stable")
        self.flat = flat[order]
        self.owners = owners[order]

    def bounds(self, cell: int) -> tuple[int, int]:
        lo = int(np.searchsorted(self.owners, cell, side="left"))
        hi = int(np.searchsorted(self.owners, cell, side="right"))
        return lo, hi

    def sample(self, cell: int, k: int, rng: np.random.Generator):
        """k random points (sub-pixel jittered) in cell's part of the mask; none if it has none there."""
        lo, hi = self.bounds(cell)
        if hi <= lo or k <= 0:
            return np.zeros(0), np.zeros(0)
        pick = self.flat[rng.integers(lo, hi, size=k)]
        y = pick // self.width + rng.uniform(-0.5, 0.5, k)
        x = pick % self.width + rng.uniform(-0.5, 0.5, k)
        return y, x
