"""Drawing primitives of the generator: noise, wobbly outlines, point splats, blurs and random walks."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage


def harmonic_factor(angle: np.ndarray, harm: np.ndarray) -> np.ndarray:
    """1 + sum of amp * cos(k * angle + phase) over the rows (k, amp, phase) of harm."""
    return harmonic_factor_cs(np.cos(angle), np.sin(angle), harm)


def harmonic_factor_cs(cos: np.ndarray, sin: np.ndarray, harm: np.ndarray) -> np.ndarray:
    """Like harmonic_factor, from the cosine and sine of the angle (no trigonometry per pixel)."""
    f = np.ones_like(cos)
    ck, sk = cos, sin  # cos(k a), sin(k a), advanced by angle addition
    k = 1
    for kk, amp, phase in harm:
        while k < int(kk):
            ck, sk = ck * cos - sk * sin, sk * cos + ck * sin
            k += 1
        f += float(amp * math.cos(phase)) * ck - float(amp * math.sin(phase)) * sk
    return f


def random_harmonics(rng: np.random.Generator, amplitude: float, ks=(2, 3, 4, 5)) -> np.ndarray:
    """Rows (k, amplitude, phase) of a random outline wobble, weaker for higher k."""
    amps = rng.normal(0.0, amplitude, len(ks)) / np.sqrt(np.asarray(ks, dtype=np.float64) - 1.0)
    phases = rng.uniform(0.0, 2 * np.pi, len(ks))
    return np.stack([np.asarray(ks, dtype=np.float64), amps, phases], axis=1)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, unit-variance noise smooth over ~shape/cells pixels (cheap: upsampled)."""
    k = max(2, int(round(cells)))
    low = rng.standard_normal((k + 1, k + 1)).astype(np.float32)
    up = np.asarray(Image.fromarray(low, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    up = up - up.mean()
    return up / (up.std() + 1e-6)


def fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance noise smooth over about sigma pixels."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="reflect")
    return n / (n.std() + 1e-6)


def splat(shape: tuple[int, int], y: np.ndarray, x: np.ndarray, w: np.ndarray | float) -> np.ndarray:
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


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a dark surround; below 0.3 px it would not change a pixel worth the time."""
    if sigma < 0.3:
        return img
    return ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.0)


def spots(shape: tuple[int, int], ys, xs, weights, sigma: float, peak: float) -> np.ndarray:
    """Gaussian spots of width sigma at the points, a spot of weight 1 peaking at about `peak`."""
    return blur(splat(shape, ys, xs, weights * peak * 2 * math.pi * sigma**2), sigma)


def random_walks(
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
