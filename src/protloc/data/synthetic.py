"""Synthetic HPA-like images: the embedded default dataset of the demo, the tests and the benchmarks.

Images imitate the Kaggle "Zero to GANs - Human Protein Classification" RGB composites: a black
field of cells with blue nuclei (textured, darker nucleoli), a red microtubule network of fine
filaments in the cytoplasm and a green protein channel that is the sum of the patterns of the
image's hpa10 labels (see ``HPA10_NAMES``), each in its compartment, in every cell of the image.

Everything is a function of the random generator passed in, so a dataset written with the same
seed is byte-identical whatever the number of worker processes.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from protloc.errors import ProtlocError
from protloc.files import TEMP_SUFFIX, atomic_path
from protloc.labels import HPA10_NAMES

__all__ = [
    "sample_label_sets",
    "render_image",
    "render_image_with_masks",
    "write_demo_dataset",
]

N_CLASSES = len(HPA10_NAMES)

# ---------------------------------------------------------------------------------------------
# Label statistics (shared/data/README.md: the 27,479 images of the real 10-label dataset).
# ---------------------------------------------------------------------------------------------

# The ten most common label sets and their share of images.
_COMMON_SETS: dict[tuple[int, ...], float] = {
    (4,): 0.143,
    (4, 6): 0.090,
    (6,): 0.083,
    (0,): 0.063,
    (7,): 0.051,
    (3,): 0.046,
    (9,): 0.044,
    (2, 4): 0.042,
    (1,): 0.041,
    (2,): 0.038,
}
# Share of images by number of labels.
_SIZE_SHARES = {1: 0.553, 2: 0.379, 3: 0.065, 4: 0.003}
# Class weights for the remaining mass: a set of size k that is not a common set is drawn with
# probability proportional to the product of its class weights. Fitted once (iterative
# proportional fitting over the 385 possible sets) so that the class shares come out as
# 0: 10.8%, 1: 9.1%, 2: 13.2%, 3: 10.3%, 4: 46.9%, 5: 5.7%, 6: 29.9%, 7: 13.7%, 8: 5.4%, 9: 6.8%
# (exact to 1e-4).
_REST_CLASS_WEIGHTS = (0.0484, 0.0540, 0.1021, 0.0620, 1.0, 0.0366, 0.4437, 0.0963, 0.0347, 0.0253)


@lru_cache(maxsize=1)
def _label_set_table() -> tuple[tuple[tuple[int, ...], ...], np.ndarray]:
    """Every label set that can be drawn, with its probability."""
    sets: list[tuple[int, ...]] = list(_COMMON_SETS)
    probs: list[float] = list(_COMMON_SETS.values())
    weights = np.asarray(_REST_CLASS_WEIGHTS, dtype=np.float64)
    for k, share in _SIZE_SHARES.items():
        rest = share - sum(p for s, p in _COMMON_SETS.items() if len(s) == k)
        candidates = [s for s in combinations(range(N_CLASSES), k) if s not in _COMMON_SETS]
        w = np.array([np.prod(weights[list(s)]) for s in candidates])
        sets.extend(candidates)
        probs.extend((w / w.sum() * rest).tolist())
    p = np.asarray(probs, dtype=np.float64)
    return tuple(sets), p / p.sum()


def sample_label_sets(n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Draw ``n`` label sets (sorted tuples of hpa10 class numbers, never empty).

    They follow the real dataset's statistics: the shares of the ten most common sets, the
    distribution of labels per image (mean 1.52) and the share of images carrying each class.
    """
    if n < 0:
        raise ProtlocError(f"cannot draw {n} label sets")
    sets, p = _label_set_table()
    picks = rng.choice(len(sets), size=int(n), p=p)
    return [sets[i] for i in picks]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class _Cell:
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


def _harmonic_factor(angle: np.ndarray, harm: np.ndarray) -> np.ndarray:
    """1 + sum of amp * cos(k * angle + phase) over the rows (k, amp, phase) of harm."""
    return _harmonic_factor_cs(np.cos(angle), np.sin(angle), harm)


def _harmonic_factor_cs(cos: np.ndarray, sin: np.ndarray, harm: np.ndarray) -> np.ndarray:
    """Like _harmonic_factor, from the cosine and sine of the angle (no trigonometry per pixel)."""
    f = np.ones_like(cos)
    ck, sk = cos, sin  # cos(k a), sin(k a), advanced by angle addition
    k = 1
    for kk, amp, phase in harm:
        while k < int(kk):
            ck, sk = ck * cos - sk * sin, sk * cos + ck * sin
            k += 1
        f += float(amp * math.cos(phase)) * ck - float(amp * math.sin(phase)) * sk
    return f


def _random_harmonics(rng: np.random.Generator, amplitude: float, ks=(2, 3, 4, 5)) -> np.ndarray:
    amps = rng.normal(0.0, amplitude, len(ks)) / np.sqrt(np.asarray(ks, dtype=np.float64) - 1.0)
    phases = rng.uniform(0.0, 2 * np.pi, len(ks))
    return np.stack([np.asarray(ks, dtype=np.float64), amps, phases], axis=1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, unit-variance noise smooth over ~shape/cells pixels (cheap: upsampled)."""
    k = max(2, int(round(cells)))
    low = rng.standard_normal((k + 1, k + 1)).astype(np.float32)
    up = np.asarray(Image.fromarray(low, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    up = up - up.mean()
    return up / (up.std() + 1e-6)


def _fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="reflect")
    return n / (n.std() + 1e-6)


def _splat(shape: tuple[int, int], y: np.ndarray, x: np.ndarray, w: np.ndarray | float) -> np.ndarray:
    """Bilinear splat of weighted points onto a float32 image (points off the image are dropped)."""
    h, wd = shape
    y = np.asarray(y, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), y.shape).ravel()
    y0 = np.floor(y)
    x0 = np.floor(x)
    fy = y - y0
    fx = x - x0
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    idx = []
    wts = []
    for dy, dx, ww in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy = y0 + dy
        xx = x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
        idx.append(yy[ok] * wd + xx[ok])
        wts.append((w * ww)[ok])
    flat = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=h * wd)
    return flat.reshape(shape).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    return ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.0)


def _random_walks(
    rng: np.random.Generator,
    y0: np.ndarray,
    x0: np.ndarray,
    angle0: np.ndarray,
    steps: int,
    step: float,
    wiggle: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Curved paths: (n, steps) coordinates of walks whose heading drifts by N(0, wiggle) per step."""
    n = len(y0)
    turn = rng.standard_normal((n, steps), dtype=np.float32) * np.float32(wiggle)
    turn[:, 0] = 0.0
    heading = np.asarray(angle0, dtype=np.float32)[:, None] + np.cumsum(turn, axis=1)
    ys = y0[:, None] + np.cumsum(step * np.sin(heading), axis=1) - step * np.sin(heading[:, :1])
    xs = x0[:, None] + np.cumsum(step * np.cos(heading), axis=1) - step * np.cos(heading[:, :1])
    return ys, xs


class _Field:
    """The geometry of one field of cells: label map, nuclei, nucleoli and per-cell parameters."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        h = w = size
        shape = (h, w)
        self.shape = shape
        s = math.sqrt(size / 256.0)  # feature scale: 1 at 256 px
        self.s = s
        r_mean = rng.uniform(32.0, 46.0) * s
        coverage = rng.uniform(0.9, 1.5)
        n_target = int(np.clip(round(coverage * h * w / (math.pi * r_mean**2)), 1, 400))

        # Cell seeds: a dense packing (the first near the middle so a cell is always in view)...
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
        pts = pts[:n_pts]
        # ... thinned into colonies: keep the cells where a smooth random field is high.
        colony = _smooth_noise(rng, shape, 3)
        at = colony[np.clip(pts[:, 0].astype(int), 0, h - 1), np.clip(pts[:, 1].astype(int), 0, w - 1)]
        keep_share = rng.uniform(0.4, 1.0)
        keep = at >= np.quantile(at, 1.0 - keep_share)
        keep[0] = True
        centres = [(float(y), float(x)) for y, x in pts[keep]]

        dist = np.full(shape, 9.0, dtype=np.float32)  # normalised radial coordinate of the owning cell
        label = np.full(shape, -1, dtype=np.int32)
        self.cells: list[_Cell] = []
        shapes = []
        for cy, cx in centres:
            radius = r_mean * rng.uniform(0.8, 1.2)
            elong = rng.uniform(1.0, 1.8)
            a, b = radius * math.sqrt(elong), radius / math.sqrt(elong)
            ang = rng.uniform(0.0, math.pi)
            harm = _random_harmonics(rng, 0.09)
            # Nucleus: an ellipse roughly aligned with the cell, a little off centre.
            nrad = radius * rng.uniform(0.42, 0.55)
            nelong = rng.uniform(1.0, 1.4)
            na, nb = nrad * math.sqrt(nelong), nrad / math.sqrt(nelong)
            nang = ang + rng.normal(0.0, 0.35)
            off_r = rng.uniform(0.0, 0.15) * radius
            off_a = rng.uniform(0.0, 2 * math.pi)
            ny, nx = cy + off_r * math.sin(off_a), cx + off_r * math.cos(off_a)
            nharm = _random_harmonics(rng, 0.035)
            shapes.append((a, b, ang, harm))
            self.cells.append(_Cell(cy, cx, ny, nx, na, nb, nang, nharm, radius, ang))

        # Territories: each pixel belongs to the cell with the smallest normalised distance.
        for i, (cell, (a, b, ang, harm)) in enumerate(zip(self.cells, shapes)):
            ext = 1.45 * a * (1.0 + np.abs(harm[:, 1]).sum()) + 2
            sl, yy, xx = self._window(cell.cy, cell.cx, ext)
            if sl is None:
                continue
            d = self._elliptic(yy - cell.cy, xx - cell.cx, a, b, ang, harm)
            sub_d = dist[sl]
            upd = d < sub_d
            sub_d[upd] = d[upd]
            label[sl][upd] = i
        edge = 1.0 + 0.07 * _smooth_noise(rng, shape, max(2.0, size / (r_mean * 0.9)))
        edge += 0.015 * _fine_noise(rng, shape, 1.5 * s)
        incell = dist < edge
        label[~incell] = -1
        self.label = label
        self.dist = np.where(incell, dist / edge, 9.0).astype(np.float32)
        self.cell_mask = incell

        # Nuclei and nucleoli.
        nuc = np.zeros(shape, dtype=bool)
        ndist = np.full(shape, 9.0, dtype=np.float32)
        nucleoli = np.zeros(shape, dtype=bool)
        self.nucleoli_geo: list[list[tuple[float, float, float]]] = []
        for i, cell in enumerate(self.cells):
            ext = 1.2 * cell.na * (1.0 + np.abs(cell.nharm[:, 1]).sum()) + 2
            sl, yy, xx = self._window(cell.ny, cell.nx, ext)
            geo: list[tuple[float, float, float]] = []
            self.nucleoli_geo.append(geo)
            # Nucleoli are drawn even when the nucleus is out of view, to keep the stream of draws
            # independent of the framing.
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
            nl_harm = [_random_harmonics(rng, 0.12, ks=(2, 3)) for _ in geo]
            if sl is None:
                continue
            own = label[sl] == i
            d = self._elliptic(yy - cell.ny, xx - cell.nx, cell.na, cell.nb, cell.nang, cell.nharm)
            inside = (d < 1.0) & own
            nuc[sl] |= inside
            sub = ndist[sl]
            sub[own] = d[own]
            for (py, px, r), hm in zip(geo, nl_harm):
                dy, dx = yy - py, xx - px
                rr = np.hypot(dy, dx)
                inv = 1.0 / np.maximum(rr, 1e-6)
                dd = rr / (r * _harmonic_factor_cs(dx * inv, dy * inv, hm))
                nucleoli[sl] |= (dd < 1.0) & inside
        self.nucleus = nuc
        self.ndist = ndist
        self.nucleoli = nucleoli
        self.cytoplasm = incell & ~nuc

        # Cell rims: cell pixels with a 4-neighbour of another cell or of the background.
        pad = np.pad(label, 1, mode="edge")
        rim = (
            (pad[1:-1, 1:-1] != pad[:-2, 1:-1])
            | (pad[1:-1, 1:-1] != pad[2:, 1:-1])
            | (pad[1:-1, 1:-1] != pad[1:-1, :-2])
            | (pad[1:-1, 1:-1] != pad[1:-1, 2:])
        )
        self.rim = rim & incell

    def _window(self, cy: float, cx: float, ext: float):
        h, w = self.shape
        y0, y1 = max(0, int(math.floor(cy - ext))), min(h, int(math.ceil(cy + ext)) + 1)
        x0, x1 = max(0, int(math.floor(cx - ext))), min(w, int(math.ceil(cx + ext)) + 1)
        if y0 >= y1 or x0 >= x1:
            return None, None, None
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        return (slice(y0, y1), slice(x0, x1)), yy, xx

    @staticmethod
    def _elliptic(dy, dx, a, b, ang, harm) -> np.ndarray:
        c, s = math.cos(ang), math.sin(ang)
        u = (dx * c + dy * s) * (1.0 / a)
        v = (-dx * s + dy * c) * (1.0 / b)
        rho = np.hypot(u, v)
        inv = 1.0 / np.maximum(rho, 1e-6)
        return (rho / _harmonic_factor_cs(u * inv, v * inv, harm)).astype(np.float32, copy=False)

    # Helpers to place things relative to a nucleus.
    def nucleus_boundary(self, cell: _Cell, phi: np.ndarray, extra: np.ndarray | float = 0.0):
        """Pixel coordinates at polar angle phi (image frame) on the nucleus rim, pushed out by extra px."""
        c, s = math.cos(cell.nang), math.sin(cell.nang)
        # Direction in the nucleus frame.
        du, dv = np.cos(phi) * c + np.sin(phi) * s, -np.cos(phi) * s + np.sin(phi) * c
        # Distance to the rim along that direction: r with hypot(r du / a, r dv / b) = f(angle).
        ang = np.arctan2(dv / cell.nb, du / cell.na)
        r = _harmonic_factor(ang, cell.nharm) / np.hypot(du / cell.na, dv / cell.nb)
        r = r + extra
        return cell.ny + r * np.sin(phi), cell.nx + r * np.cos(phi)


class _PixelIndex:
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
        lo, hi = self.bounds(cell)
        if hi <= lo or k <= 0:
            return np.zeros(0), np.zeros(0)
        pick = self.flat[rng.integers(lo, hi, size=k)]
        y = pick // self.width + rng.uniform(-0.5, 0.5, k)
        x = pick % self.width + rng.uniform(-0.5, 0.5, k)
        return y, x


def _green_patterns(labels: tuple[int, ...], f: _Field, rng: np.random.Generator, gain: np.ndarray) -> np.ndarray:
    """The green channel before noise: the sum of the labels' patterns."""
    shape, s = f.shape, f.s
    cells = f.cells
    lab = f.label
    gmap = np.where(lab >= 0, gain[np.maximum(lab, 0)], 0.0).astype(np.float32)
    green = np.zeros(shape, dtype=np.float32)
    nucleoplasm_idx = None
    cyto_idx = None

    def spots(ys, xs, weights, sigma, peak):
        return _blur(_splat(shape, ys, xs, weights * peak * 2 * math.pi * sigma**2), sigma)

    for c in labels:
        strength = rng.uniform(0.6, 1.0) if len(labels) > 1 else 1.0
        if c == 4:  # Nucleoplasm: diffuse nuclear, sparing the nucleoli.
            holes = ndimage.binary_dilation(f.nucleoli, iterations=1)
            tex = 0.7 + 0.35 * _fine_noise(rng, shape, 0.7 * s)
            src = (f.nucleus & ~holes) * np.clip(tex, 0.1, None) * gmap
            pat = _blur(src.astype(np.float32), 0.9 * s) * 0.75
        elif c == 2:  # Nucleoli: the nucleoli, bright.
            pat = _blur((f.nucleoli * gmap).astype(np.float32), 0.8 * s) * 1.1
        elif c == 5:  # Nucleoli fibrillar center: small dots inside the nucleoli.
            ys, xs, ws = [], [], []
            for i, geo in enumerate(f.nucleoli_geo):
                for py, px, r in geo:
                    k = int(rng.integers(2, 6))
                    rr = np.sqrt(rng.uniform(0, 1, k)) * 0.6 * r
                    aa = rng.uniform(0, 2 * np.pi, k)
                    ys.append(py + rr * np.sin(aa))
                    xs.append(px + rr * np.cos(aa))
                    ws.append(np.full(k, gain[i]) * rng.uniform(0.6, 1.0, k))
            pat = spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), max(0.6, 0.75 * s), 1.2)
            pat *= f.nucleus
        elif c == 9:  # Nuclear speckles: many small irregular nuclear spots.
            if nucleoplasm_idx is None:
                nucleoplasm_idx = _PixelIndex(f.nucleus & ~f.nucleoli, lab)
            ys, xs, ws = [], [], []
            for i in range(len(cells)):
                k = int(rng.integers(10, 31))
                y, x = nucleoplasm_idx.sample(i, k, rng)
                if not len(y):
                    continue
                # Each speckle is a small cluster of 3 sub-spots.
                sub = 3
                ys.append((y[:, None] + rng.normal(0, 1.1 * s, (len(y), sub))).ravel())
                xs.append((x[:, None] + rng.normal(0, 1.1 * s, (len(y), sub))).ravel())
                ws.append(np.repeat(gain[i] * rng.uniform(0.5, 1.0, len(y)), sub) / 2.0)
            pat = spots(np.concatenate(ys or [[]]), np.concatenate(xs or [[]]), np.concatenate(ws or [[]]),
                        max(0.6, 0.9 * s), 1.0)
            pat += 0.12 * _blur((f.nucleus * gmap).astype(np.float32), s)
        elif c == 1:  # Nuclear bodies: 1 to 6 bright round nuclear dots.
            if nucleoplasm_idx is None:
                nucleoplasm_idx = _PixelIndex(f.nucleus & ~f.nucleoli, lab)
            ys, xs, ws = [], [], []
            for i in range(len(cells)):
                y, x = nucleoplasm_idx.sample(i, int(rng.integers(1, 7)), rng)
                ys.append(y)
                xs.append(x)
                ws.append(gain[i] * rng.uniform(0.6, 1.0, len(y)))
            sig = max(0.7, rng.uniform(1.2, 1.8) * s)
            pat = spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), sig, 1.3)
        elif c == 0:  # Mitochondria: a network of short wiggly tubules in the cytoplasm.
            if cyto_idx is None:
                cyto_idx = _PixelIndex(f.cytoplasm, lab)
            ys, xs, ws = [], [], []
            steps = max(4, int(round(9 * s)))
            for i in range(len(cells)):
                lo, hi = cyto_idx.bounds(i)
                k = int((hi - lo) * 0.022 / s)
                if k <= 0:
                    continue
                # Denser near the nucleus: keep candidates with probability falling towards the rim.
                y, x = cyto_idx.sample(i, 2 * k, rng)
                yi = np.clip(y.round().astype(int), 0, shape[0] - 1)
                xi = np.clip(x.round().astype(int), 0, shape[1] - 1)
                dd = f.dist[yi, xi]
                keep = rng.uniform(0, 1, len(y)) < np.clip(1.25 - dd, 0.05, 1.0)
                y, x = y[keep][:k], x[keep][:k]
                wy, wx = _random_walks(rng, y, x, rng.uniform(0, 2 * np.pi, len(y)), steps, 0.8, 0.45)
                ys.append(wy)
                xs.append(wx)
                ws.append(np.repeat(gain[i] * rng.uniform(0.5, 1.0, len(y)), steps))
            if ys:
                wy = np.concatenate([a.ravel() for a in ys])
                wx = np.concatenate([a.ravel() for a in xs])
                pat = _blur(_splat(shape, wy, wx, np.concatenate(ws) * 0.9), max(0.55, 0.7 * s))
            else:
                pat = np.zeros(shape, dtype=np.float32)
            pat *= ndimage.binary_dilation(f.cytoplasm, iterations=1)
        elif c == 3:  # Golgi apparatus: a compact perinuclear ribbon on one side of the nucleus.
            ys, xs, ws = [], [], []
            for i, cell in enumerate(cells):
                phi0 = rng.uniform(0, 2 * np.pi)
                half = rng.uniform(0.45, 1.0)
                n_frag = int(rng.integers(4, 9))
                centres = phi0 + rng.uniform(-half, half, n_frag)
                per = max(8, int(30 * s))
                phi = np.repeat(centres, per) + rng.normal(0, 0.12, n_frag * per)
                extra = np.repeat(rng.uniform(1.0, 6.0, n_frag) * s, per) + rng.normal(0, 1.0 * s, n_frag * per)
                y, x = f.nucleus_boundary(cell, phi, np.abs(extra) + 0.5 * s)
                ys.append(y)
                xs.append(x)
                ws.append(np.repeat(gain[i] * rng.uniform(0.5, 1.0, n_frag), per) / per * 5)
            pat = spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), max(0.7, 1.1 * s), 1.0)
            pat *= f.cell_mask
        elif c == 6:  # Cytosol: diffuse cytoplasmic, sparing the nucleus.
            tex = 0.7 + 0.35 * _fine_noise(rng, shape, 0.8 * s)
            fall = np.clip(1.25 - 0.6 * f.dist, 0.3, 1.0)
            src = f.cytoplasm * fall * np.clip(tex, 0.1, None) * gmap
            pat = _blur(src.astype(np.float32), 1.0 * s) * 0.6
        elif c == 7:  # Plasma membrane: the cell rim.
            src = (f.rim * gmap).astype(np.float32)
            sig = max(0.6, 0.9 * s)
            pat = _blur(src, sig) * (2.0 * sig) + 0.06 * _blur((f.cytoplasm * gmap).astype(np.float32), 2 * s)
        elif c == 8:  # Centrosome: 1 or 2 bright dots next to the nucleus.
            ys, xs, ws = [], [], []
            for i, cell in enumerate(cells):
                phi = rng.uniform(0, 2 * np.pi)
                y, x = f.nucleus_boundary(cell, np.array([phi]), np.array([rng.uniform(2.0, 5.0) * s]))
                n = int(rng.integers(1, 3))
                jit = rng.normal(0, 1.3 * s, (n, 2)) if n > 1 else np.zeros((1, 2))
                ys.append(y[0] + jit[:, 0])
                xs.append(x[0] + jit[:, 1])
                ws.append(np.full(n, gain[i]))
            pat = spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), max(0.7, 1.1 * s), 1.5)
            pat *= f.cell_mask
        else:
            raise ValueError(f"unknown hpa10 class {c}")
        green += strength * pat
    return green


def _red_channel(f: _Field, rng: np.random.Generator) -> np.ndarray:
    """Microtubules: a mesh of fine curved filaments from around the nucleus out to the cell rim."""
    shape, s = f.shape, f.s
    lab = f.label
    cyto_idx = _PixelIndex(f.cytoplasm, lab)
    ys, xs, ws = [], [], []
    h, w = shape
    for i, cell in enumerate(f.cells):
        steps = int(2.2 * cell.radius)
        # Some start on a ring around the nucleus, heading outwards at a slant; the rest anywhere
        # in the cytoplasm, mostly along the cell's long axis, which makes long bundles.
        k1 = int(cell.radius**2 * 0.035 / s)
        phi = rng.uniform(0, 2 * np.pi, k1)
        y1, x1 = f.nucleus_boundary(cell, phi, rng.uniform(-2.0, 4.0, k1) * s)
        h1 = phi + rng.normal(0, 0.8, k1)
        k2 = int(cell.radius**2 * 0.04 / s)
        y2, x2 = cyto_idx.sample(i, k2, rng)
        h2 = cell.ang + rng.normal(0, 0.6, len(y2)) + np.pi * rng.integers(0, 2, len(y2))
        y0, x0, h0 = np.concatenate([y1, y2]), np.concatenate([x1, x2]), np.concatenate([h1, h2])
        wy, wx = _random_walks(rng, y0, x0, h0, steps, 1.0, 0.05)
        yi = np.clip(np.round(wy).astype(np.int64), 0, h - 1)
        xi = np.clip(np.round(wx).astype(np.int64), 0, w - 1)
        inside = (lab[yi, xi] == i) & (wy >= -1) & (wy <= h) & (wx >= -1) & (wx <= w)
        # A filament ends where it first leaves its cell.
        alive = np.cumprod(inside, axis=1).astype(bool)
        bright = rng.uniform(0.3, 1.0, len(y0))
        # Fainter towards the rim, so the cell edge is not a fringe of filament ends.
        fade = np.clip((1.02 - f.dist[yi[alive], xi[alive]]) / 0.15, 0.25, 1.0)
        ws.append(np.broadcast_to(bright[:, None], alive.shape)[alive] * fade)
        ys.append(wy[alive])
        xs.append(wx[alive])
    if ys:
        fil = _splat(shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws))
        fil = _blur(fil, max(0.55, 0.45 * s))
    else:
        fil = np.zeros(shape, dtype=np.float32)
    diffuse = _blur((f.cytoplasm * np.clip(0.4 + 0.6 * f.dist, 0, 1)).astype(np.float32), 2.0 * s)
    red = 0.55 * fil * (1.0 - 0.8 * f.nucleus) + 0.08 * diffuse + 0.03 * f.nucleus
    return red


def _blue_channel(f: _Field, rng: np.random.Generator, gain: np.ndarray) -> np.ndarray:
    shape, s = f.shape, f.s
    gmap = np.where(f.label >= 0, gain[np.maximum(f.label, 0)], 0.0).astype(np.float32)
    tex = 0.8 + 0.16 * _fine_noise(rng, shape, 0.7 * s) + 0.12 * _fine_noise(rng, shape, 2.5 * s)
    rimb = 1.0 + 0.15 * np.clip(f.ndist - 0.7, 0, 0.3) / 0.3
    nl = _blur(f.nucleoli.astype(np.float32), 0.8 * s)
    src = f.nucleus * gmap * tex * rimb * (1.0 - 0.6 * nl)
    return _blur(src.astype(np.float32), 0.7 * s)


def render_image_with_masks(
    labels: tuple[int, ...], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Like :func:`render_image`, also returning the ground-truth masks of the field.

    The masks (all ``(size, size)``): ``cells`` (int32 cell number, -1 background), ``nucleus``,
    ``nucleoli``, ``cytoplasm`` and ``rim`` (cell boundary pixels), booleans.
    """
    labels = tuple(sorted(set(int(c) for c in labels)))
    for c in labels:
        if not 0 <= c < N_CLASSES:
            raise ProtlocError(f"unknown hpa10 class {c}: classes are 0..{N_CLASSES - 1}")
    size = int(size)
    if size < 8:
        raise ProtlocError(f"image size {size} is too small")
    field = _Field(size, rng)
    n = len(field.cells)
    s = field.s

    red = _red_channel(field, rng)
    blue = _blue_channel(field, rng, rng.uniform(0.45, 0.8, n))
    ggain = np.clip(rng.lognormal(0.0, 0.35, n), 0.3, 1.6).astype(np.float32)
    green = _green_patterns(labels, field, rng, ggain)
    # Weak nonspecific green: a haze over the cells and the whole field.
    haze = _blur(field.cell_mask.astype(np.float32), 3.0 * s)
    green = green + rng.uniform(0.01, 0.05) * haze + rng.uniform(0.0, 0.015)

    img = np.stack([red, green, blue], axis=-1).astype(np.float32, copy=False)
    # Uneven illumination, defocus, per-channel brightness, shot and read noise.
    illum = 1.0 + rng.uniform(0.0, 0.15) * _smooth_noise(rng, field.shape, 3)
    img *= illum[..., None]
    defocus = rng.uniform(0.0, 0.6) * s
    if defocus >= 0.3:
        img = ndimage.gaussian_filter(img, (defocus, defocus, 0), mode="constant", truncate=3.0)
    img *= np.array([rng.uniform(0.8, 1.3), rng.uniform(0.45, 1.1), rng.uniform(0.8, 1.25)], dtype=np.float32)
    photons = rng.uniform(40.0, 400.0)
    read = rng.uniform(0.003, 0.015)
    std = np.sqrt(np.clip(img, 0, None) * np.float32(1.0 / photons) + np.float32(read * read))
    img = img + std * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    masks = {
        "cells": field.label,
        "nucleus": field.nucleus,
        "nucleoli": field.nucleoli,
        "cytoplasm": field.cytoplasm,
        "rim": field.rim,
    }
    return out, masks


def render_image(labels: tuple[int, ...], size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic HPA-like RGB image (uint8, ``(size, size, 3)``) showing the given hpa10 classes.

    Red: microtubules; blue: nuclei; green: the sum of the labels' localisation patterns.
    """
    return render_image_with_masks(labels, size, rng)[0]


# ---------------------------------------------------------------------------------------------
# Writing a dataset
# ---------------------------------------------------------------------------------------------


def _image_seed(seed: int, index: int) -> np.random.SeedSequence:
    # The index-th child of SeedSequence(seed).spawn(2)[1], built directly.
    return np.random.SeedSequence(seed, spawn_key=(1, index))


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temp:
        # Fixed settings and no metadata: the bytes depend on the pixels only.
        Image.fromarray(array, mode="RGB").save(temp, format="PNG", compress_level=6, optimize=False)


def _render_job(job: tuple[str, int, int, tuple[int, ...], int, int]) -> int:
    path, image_id, index, labels, size, seed = job
    rng = np.random.default_rng(_image_seed(seed, index))
    _write_png(Path(path), render_image(labels, size, rng))
    return image_id


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        # "\n" line ends on every platform, so that the same seed gives the same bytes.
        temp.write_text(text, encoding="utf-8", newline="\n")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtlocError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ProtlocError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def write_demo_dataset(
    out_dir,
    *,
    n_train: int,
    n_test: int,
    size: int = 256,
    seed: int = 0,
    show_progress: bool = True,
    workers: int | None = None,
) -> None:
    """Write a synthetic dataset in the Kaggle "Zero to GANs" layout under ``out_dir``.

    ``train.csv`` (``Image,Label``), ``train/<Image>.png``, ``test/<Image>.png`` and
    ``submission.csv`` (``Image,Label`` with a placeholder label ``0``). Image ids are a
    seeded shuffle of ``0..n_train+n_test-1``; the CSVs list them in increasing order. The
    same seed gives byte-identical files whatever ``workers`` is. Existing files of the same
    names are replaced; other files in ``out_dir`` are left alone.
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 0)
    size = _check_int("size", size, 32)
    seed = _check_int("seed", seed, 0)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = _check_int("workers", workers, 1)
    if size > 4096:
        raise ProtlocError(f"size must be at most 4096, got {size}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ProtlocError(f"{out} exists and is not a folder")
    train_dir, test_dir = out / "train", out / "test"
    try:
        train_dir.mkdir(parents=True, exist_ok=True)
        test_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProtlocError(f"cannot create {out}: {exc.strerror or exc}") from None

    label_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    total = n_train + n_test
    label_sets = sample_label_sets(total, label_rng)
    ids = label_rng.permutation(total)

    jobs = []
    for index in range(total):
        folder = train_dir if index < n_train else test_dir
        image_id = int(ids[index])
        jobs.append((str(folder / f"{image_id}.png"), image_id, index, label_sets[index], size, seed))

    pool = None
    progress = None
    try:
        if workers > 1 and total > 1:
            # Workers only need numpy, scipy and PIL: fork where the platform has it (quick to
            # start, and no re-import of the caller's __main__). The pool is made before the
            # progress bar, whose monitor thread a fork should not copy.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            pool = ctx.Pool(min(workers, total))
        if show_progress:
            from tqdm import tqdm

            progress = tqdm(total=total, desc="synthetic images", unit="img")
        if pool is None:
            results = map(_render_job, jobs)
        else:
            # Small chunks keep the workers evenly loaded and the progress bar moving.
            chunk = max(1, min(16, total // (workers * 8)))
            results = pool.imap_unordered(_render_job, jobs, chunksize=chunk)
        for _ in results:
            if progress is not None:
                progress.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if progress is not None:
            progress.close()
        # Leftovers of writes in workers that terminate() stopped before they could clean up.
        for folder in (train_dir, test_dir):
            for tmp in folder.glob(".*" + TEMP_SUFFIX):
                try:
                    tmp.unlink()
                except OSError:
                    pass

    train_rows = sorted((int(ids[i]), label_sets[i]) for i in range(n_train))
    test_ids = sorted(int(ids[i]) for i in range(n_train, total))
    _write_text(
        out / "train.csv",
        "Image,Label\n" + "".join(f"{i},{' '.join(map(str, ls))}\n" for i, ls in train_rows),
    )
    _write_text(out / "submission.csv", "Image,Label\n" + "".join(f"{i},0\n" for i in test_ids))
