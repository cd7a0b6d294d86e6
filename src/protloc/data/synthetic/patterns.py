"""The green protein channel: one localisation pattern per hpa10 class, registered by class name.

Each pattern function takes the field's `Stage` and the generator and returns the pattern (float32,
before the image's noise). An image's green channel is the sum of its labels' patterns, drawn in
the order of the labels' class numbers.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
from scipy import ndimage

from protloc.data.synthetic.drawing import blur, fine_noise, random_walks, splat, spots
from protloc.data.synthetic.field import Field, PixelIndex
from protloc.labels import HPA10_NAMES


class Stage:
    """What the patterns draw on: the field, each cell's green brightness, and pixel indexes built once."""

    def __init__(self, field: Field, gain: np.ndarray):
        self.field = field
        self.shape, self.s = field.shape, field.s
        self.set_gain(gain)
        self.spill = np.zeros(field.shape, dtype=np.float32)

    def set_gain(self, gain: np.ndarray) -> None:
        """Each cell's green brightness (0: the cell does not show the pattern)."""
        self.gain = gain  # per cell
        lab = self.field.label
        self.gmap = np.where(lab >= 0, gain[np.maximum(lab, 0)], 0.0).astype(np.float32)

    @cached_property
    def nucleoplasm_index(self) -> PixelIndex:
        return PixelIndex(self.field.nucleus & ~self.field.nucleoli, self.field.label)

    @cached_property
    def cytoplasm_index(self) -> PixelIndex:
        return PixelIndex(self.field.cytoplasm, self.field.label)

    def spots(self, ys, xs, weights, sigma: float, peak: float) -> np.ndarray:
        return spots(self.shape, ys, xs, weights, sigma, peak)

    def granular(self, where: np.ndarray, rng: np.random.Generator, grain: float = 0.6) -> np.ndarray:
        """A grainy fill of `where` at each cell's brightness: real stains are never smooth."""
        tex = np.clip(0.65 + 0.45 * fine_noise(rng, self.shape, grain * self.s), 0.05, None)
        return blur((where * tex * self.gmap).astype(np.float32), 0.8 * self.s)

    def spill_into(self, where: np.ndarray, rng: np.random.Generator, amount: float) -> None:
        """A faint grainy signal of the protein beyond its compartment, as the HPA reference images show in
        nearly every class (a diffuse cytosol under centrosome dots, nucleoplasm under speckles). It goes into
        the green channel but not into the class's pattern, whose brightest pixels are its ground truth."""
        self.spill += amount * self.granular(where, rng)


Pattern = Callable[[Stage, np.random.Generator], np.ndarray]
# A class's ground-truth region: its brightest pixels that hold this share of its pattern. A share of
# the mass, not of the peak, because cells differ up to 5x in brightness and a dim cell still counts.
MASK_MASS_SHARE = 0.8
PATTERNS: dict[str, Pattern] = {}


def pattern(class_name: str) -> Callable[[Pattern], Pattern]:
    """Register the decorated function as the green pattern of hpa10 class `class_name`."""
    if class_name not in HPA10_NAMES:
        raise ValueError(f"{class_name!r} is not an hpa10 class")

    def register(fn: Pattern) -> Pattern:
        PATTERNS[class_name] = fn
        return fn

    return register


def green_channel(
    labels: tuple[int, ...], field: Field, rng: np.random.Generator, gain: np.ndarray,
    shown: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The green channel before noise (the sum of the labels' patterns) and each label's pattern by name.

    `shown` (per label, a boolean per cell) keeps a label's pattern to the cells that show it: the others draw
    it with zero brightness, so the generator's stream of draws is the same with or without it."""
    stage = Stage(field, gain)
    green = np.zeros(field.shape, dtype=np.float32)
    drawn: dict[str, np.ndarray] = {}
    for c in labels:
        # Drawn before the pattern, and only for several labels: the order every dataset's bytes rest on.
        strength = rng.uniform(0.6, 1.0) if len(labels) > 1 else 1.0
        name = HPA10_NAMES[c]
        if shown is not None:
            stage.set_gain(gain * shown[c])
        stage.spill[:] = 0.0
        pat = PATTERNS[name](stage, rng)
        green += strength * (pat + stage.spill)
        drawn[name] = pat
    return green, drawn


def pattern_mask(pat: np.ndarray, share: float = MASK_MASS_SHARE) -> np.ndarray:
    """The brightest pixels of a pattern that together hold `share` of its sum; none for an empty pattern."""
    values = np.sort(pat, axis=None)[::-1]
    mass = np.cumsum(values, dtype=np.float64)
    if not values.size or mass[-1] <= 0:
        return np.zeros(pat.shape, dtype=bool)
    k = int(np.searchsorted(mass, share * mass[-1]))
    return pat >= values[min(k, values.size - 1)]


# -------------------------------------------------------------------------------- nucleus


@pattern("Nucleoplasm")
def nucleoplasm(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """Diffuse nuclear, sparing the nucleoli."""
    f, s = st.field, st.s
    holes = ndimage.binary_dilation(f.nucleoli, iterations=1)
    tex = 0.7 + 0.35 * fine_noise(rng, st.shape, 0.7 * s)
    src = (f.nucleus & ~holes) * np.clip(tex, 0.1, None) * st.gmap
    return blur(src.astype(np.float32), 0.9 * s) * 0.75


@pattern("Nucleoli")
def nucleoli(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """The nucleoli, bright."""
    return blur((st.field.nucleoli * st.gmap).astype(np.float32), 0.8 * st.s) * 1.1


@pattern("Nucleoli fibrillar center")
def nucleoli_fibrillar_center(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """Small dots inside the nucleoli."""
    ys, xs, ws = [], [], []
    for i, geo in enumerate(st.field.nucleoli_geo):
        for py, px, r in geo:
            k = int(rng.integers(2, 6))
            rr = np.sqrt(rng.uniform(0, 1, k)) * 0.6 * r
            aa = rng.uniform(0, 2 * np.pi, k)
            ys.append(py + rr * np.sin(aa))
            xs.append(px + rr * np.cos(aa))
            ws.append(np.full(k, st.gain[i]) * rng.uniform(0.6, 1.0, k))
    pat = st.spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), max(0.6, 0.75 * st.s), 1.2)
    pat *= st.field.nucleus
    return pat


@pattern("Nuclear speckles")
def nuclear_speckles(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """20 to 50 small irregular nuclear spots over a diffuse nucleoplasm that spares the nucleoli."""
    s = st.s
    ys, xs, ws = [], [], []
    for i in range(len(st.field.cells)):
        k = int(rng.integers(20, 51))
        y, x = st.nucleoplasm_index.sample(i, k, rng)
        if not len(y):
            continue
        # Each speckle is a small cluster of 3 sub-spots.
        sub = 3
        ys.append((y[:, None] + rng.normal(0, 1.1 * s, (len(y), sub))).ravel())
        xs.append((x[:, None] + rng.normal(0, 1.1 * s, (len(y), sub))).ravel())
        ws.append(np.repeat(st.gain[i] * rng.uniform(0.5, 1.0, len(y)), sub) / 2.0)
    pat = st.spots(np.concatenate(ys or [[]]), np.concatenate(xs or [[]]), np.concatenate(ws or [[]]),
                   max(0.6, 0.9 * s), 1.0)
    st.spill_into(st.field.nucleus & ~st.field.nucleoli, rng, 0.3)
    return pat


@pattern("Nuclear bodies")
def nuclear_bodies(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """1 to 6 bright round nuclear dots."""
    ys, xs, ws = [], [], []
    for i in range(len(st.field.cells)):
        y, x = st.nucleoplasm_index.sample(i, int(rng.integers(1, 7)), rng)
        ys.append(y)
        xs.append(x)
        ws.append(st.gain[i] * rng.uniform(0.6, 1.0, len(y)))
    sig = max(0.7, rng.uniform(1.2, 1.8) * st.s)
    st.spill_into(st.field.nucleus & ~st.field.nucleoli, rng, 0.12)
    return st.spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), sig, 1.3)


# -------------------------------------------------------------------------------- cytoplasm


@pattern("Mitochondria")
def mitochondria(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """Fine branched tubules throughout the cytoplasm, out to the cell edge, over a faint grainy cytoplasm."""
    f, s, shape = st.field, st.s, st.shape
    cyto_idx = st.cytoplasm_index
    ys, xs, ws = [], [], []
    steps = max(4, int(round(7 * s)))
    for i in range(len(f.cells)):
        lo, hi = cyto_idx.bounds(i)
        k = int((hi - lo) * 0.05 / s)
        if k <= 0:
            continue
        # Throughout the cytoplasm, a little denser near the nucleus, out to the edge.
        y, x = cyto_idx.sample(i, 2 * k, rng)
        yi = np.clip(y.round().astype(int), 0, shape[0] - 1)
        xi = np.clip(x.round().astype(int), 0, shape[1] - 1)
        dd = f.dist[yi, xi]
        keep = rng.uniform(0, 1, len(y)) < np.clip(1.15 - 0.35 * dd, 0.5, 1.0)
        y, x = y[keep][:k], x[keep][:k]
        wy, wx = random_walks(rng, y, x, rng.uniform(0, 2 * np.pi, len(y)), steps, 0.8, 0.35)
        ys.append(wy)
        xs.append(wx)
        ws.append(np.repeat(st.gain[i] * rng.uniform(0.5, 1.0, len(y)), steps))
    if ys:
        wy = np.concatenate([a.ravel() for a in ys])
        wx = np.concatenate([a.ravel() for a in xs])
        pat = blur(splat(shape, wy, wx, np.concatenate(ws) * 0.6), max(0.5, 0.55 * s))
    else:
        pat = np.zeros(shape, dtype=np.float32)
    pat *= ndimage.binary_dilation(f.cytoplasm, iterations=1)
    st.spill_into(f.cytoplasm, rng, 0.1)
    return pat


@pattern("Golgi apparatus")
def golgi_apparatus(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """A compact perinuclear ribbon on one side of the nucleus."""
    s = st.s
    ys, xs, ws = [], [], []
    for i, cell in enumerate(st.field.cells):
        phi0 = rng.uniform(0, 2 * np.pi)
        half = rng.uniform(0.3, 0.8)
        n_frag = int(rng.integers(5, 10))
        centres = phi0 + rng.uniform(-half, half, n_frag)
        per = max(8, int(30 * s))
        phi = np.repeat(centres, per) + rng.normal(0, 0.12, n_frag * per)
        extra = np.repeat(rng.uniform(0.5, 4.0, n_frag) * s, per) + rng.normal(0, 1.0 * s, n_frag * per)
        y, x = cell.nucleus_boundary(phi, np.abs(extra) + 0.5 * s)
        ys.append(y)
        xs.append(x)
        ws.append(np.repeat(st.gain[i] * rng.uniform(0.5, 1.0, n_frag), per) / per * 5)
    pat = st.spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), max(0.7, 1.1 * s), 1.0)
    pat *= st.field.cell_mask
    st.spill_into(st.field.cytoplasm, rng, 0.04)
    return pat


@pattern("Cytosol")
def cytosol(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """Diffuse cytoplasmic, sparing the nucleus."""
    f, s = st.field, st.s
    tex = 0.7 + 0.35 * fine_noise(rng, st.shape, 0.8 * s)
    fall = np.clip(1.25 - 0.6 * f.dist, 0.3, 1.0)
    src = f.cytoplasm * fall * np.clip(tex, 0.1, None) * st.gmap
    return blur(src.astype(np.float32), 1.0 * s) * 0.6


@pattern("Plasma membrane")
def plasma_membrane(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """The cell rim, over a faint cytoplasmic haze."""
    f, s = st.field, st.s
    src = (f.rim * st.gmap).astype(np.float32)
    sig = max(0.6, 0.9 * s)
    st.spill_into(f.cytoplasm, rng, 0.03)
    return blur(src, sig) * (2.0 * sig)


@pattern("Centrosome")
def centrosome(st: Stage, rng: np.random.Generator) -> np.ndarray:
    """1 or 2 bright dots beside the nucleus, over a faint cytosol."""
    s = st.s
    ys, xs, ws = [], [], []
    for i, cell in enumerate(st.field.cells):
        phi = rng.uniform(0, 2 * np.pi)
        y, x = cell.nucleus_boundary(np.array([phi]), np.array([rng.uniform(2.0, 5.0) * s]))
        n = int(rng.integers(1, 3))
        jit = rng.normal(0, 1.3 * s, (n, 2)) if n > 1 else np.zeros((1, 2))
        ys.append(y[0] + jit[:, 0])
        xs.append(x[0] + jit[:, 1])
        ws.append(np.full(n, st.gain[i]))
    pat = st.spots(np.concatenate(ys), np.concatenate(xs), np.concatenate(ws), max(0.7, 1.1 * s), 1.5)
    pat *= st.field.cell_mask
    st.spill_into(st.field.cytoplasm, rng, 0.08)
    return pat
