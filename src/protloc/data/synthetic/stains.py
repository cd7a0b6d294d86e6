"""The reference stains of every image: red microtubules and blue nuclei."""
from __future__ import annotations

import numpy as np

from protloc.data.synthetic.drawing import blur, fine_noise, random_walks, splat
from protloc.data.synthetic.field import Field, PixelIndex


def red_channel(f: Field, rng: np.random.Generator) -> np.ndarray:
    """Microtubules: a mesh of fine curved filaments from around the nucleus out to the cell rim."""
    shape, s = f.shape, f.s
    lab = f.label
    cyto_idx = PixelIndex(f.cytoplasm, lab)
    ys, xs, ws = [], [], []
    h, w = shape
    for i, cell in enumerate(f.cells):
        steps = int(2.2 * cell.radius)
        # Some start on a ring around the nucleus, heading outwards at a slant; the rest anywhere
        # in the cytoplasm, mostly along the cell's long axis, which makes long bundles.
        k1 = int(cell.radius**2 * 0.035 / s)
        phi = rng.uniform(0, 2 * np.pi, k1)
        y1, x1 = cell.nucleus_boundary(phi, rng.uniform(-2.0, 4.0, k1) * s)
        h1 = phi + rng.normal(0, 0.8, k1)
        k2 = int(cell.radius**2 * 0.04 / s)
        y2, x2 = cyto_idx.sample(i, k2, rng)
        h2 = cell.ang + rng.normal(0, 0.6, len(y2)) + np.pi * rng.integers(0, 2, len(y2))
        y0, x0, h0 = np.concatenate([y1, y2]), np.concatenate([x1, x2]), np.concatenate([h1, h2])
        wy, wx = random_walks(rng, y0, x0, h0, steps, 1.0, 0.05)
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
        fil = splat(shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws))
        fil = blur(fil, max(0.55, 0.45 * s))
    else:
        fil = np.zeros(shape, dtype=np.float32)
    diffuse = blur((f.cytoplasm * np.clip(0.4 + 0.6 * f.dist, 0, 1)).astype(np.float32), 2.0 * s)
    red = 0.55 * fil * (1.0 - 0.8 * f.nucleus) + 0.08 * diffuse + 0.03 * f.nucleus
    return red


def blue_channel(f: Field, rng: np.random.Generator, gain: np.ndarray) -> np.ndarray:
    """DNA: textured nuclei, a little brighter at their rim and darker in the nucleoli."""
    shape, s = f.shape, f.s
    gmap = np.where(f.label >= 0, gain[np.maximum(f.label, 0)], 0.0).astype(np.float32)
    tex = 0.8 + 0.16 * fine_noise(rng, shape, 0.7 * s) + 0.12 * fine_noise(rng, shape, 2.5 * s)
    rimb = 1.0 + 0.15 * np.clip(f.ndist - 0.7, 0, 0.3) / 0.3
    nl = blur(f.nucleoli.astype(np.float32), 0.8 * s)
    src = f.nucleus * gmap * tex * rimb * (1.0 - 0.6 * nl)
    return blur(src.astype(np.float32), 0.7 * s)
