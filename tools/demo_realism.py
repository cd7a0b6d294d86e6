"""How close the demo generator's protein stain is to real HPA images, class by class: a side-by-side page and
a distance anyone can rerun.

    python tools/demo_realism.py [--real ../shared/data/hpa2018-sample] [--out docs/realism] [--per-class 16]

Real: the green (protein) files of the HPA 2018 sample, each class's images those carrying it (the 2018 classes
mapped to the 10, as data/README.md says). Generated: `--per-class` single-class images of each class from
protloc's generator (seeded, so the page is the same every run). Both are seen as a model trained at 128 px sees
them: resized to 128 px, each scaled by its own 99.5th percentile (so exposure does not count, only the pattern).

The distance of a class: each image becomes 15 numbers that describe a stain's look (intensity quantiles, the
share of bright pixels, the radial power spectrum in 6 octaves: texture scale, and the density of local maxima:
spottiness); each number is standardised by its spread over all real images; the class's distance is the
Euclidean distance between the real and the generated images' mean descriptors. 0 would be indistinguishable
by these numbers; the mean over classes is the page's headline figure. Writes OUT/index.html, OUT/*.png and
OUT/distances.json. HPA images: The Human Protein Atlas (proteinatlas.org), CC BY-SA 3.0.
"""
from __future__ import annotations

import argparse
import csv
import html
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from protloc.data.synthetic.render import render_image
from protloc.labels import HPA10_NAMES

SIZE = 128
# The 10-label class of each 2018 class that has one (data/README.md).
FROM_2018 = {23: 0, 5: 1, 2: 2, 7: 3, 0: 4, 3: 5, 25: 6, 21: 7, 19: 8, 4: 9}
SHOWN = 4  # images per side on the page


def normalised(plane: np.ndarray) -> np.ndarray:
    """A protein stain at SIZE px, scaled by its 99.5th percentile and clipped to 0..1."""
    image = Image.fromarray(plane).resize((SIZE, SIZE), Image.BILINEAR) if plane.shape[0] != SIZE else Image.fromarray(plane)
    values = np.asarray(image, dtype=np.float64)
    return np.clip(values / max(np.percentile(values, 99.5), 1.0), 0.0, 1.0)


def describe(stain: np.ndarray) -> np.ndarray:
    """15 numbers: 6 intensity quantiles, 2 bright shares, 6 spectral octave shares, 1 peak density."""
    quantiles = np.percentile(stain, [10, 25, 50, 75, 90, 99])
    bright = [(stain > 0.2).mean(), (stain > 0.5).mean()]
    power = np.abs(np.fft.fftshift(np.fft.fft2(stain - stain.mean()))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    edges = [1, 2, 4, 8, 16, 32, 64]
    bands = np.array([power[(radius >= lo) & (radius < hi)].sum() for lo, hi in zip(edges, edges[1:])])
    bands = np.log(bands / max(bands.sum(), 1e-12) + 1e-6)
    peaks = (stain == ndimage.maximum_filter(stain, size=3)) & (stain > 0.3)
    return np.concatenate([quantiles, bright, bands, [peaks.sum() / stain.size * 1000]])


def real_images(folder: Path) -> dict[int, list[tuple[str, np.ndarray]]]:
    """{10-label class: [(id, normalised green stain)]}, single-class images first."""
    with open(folder / "train.csv", newline="") as stream:
        targets = {row["Id"]: [int(x) for x in row["Target"].split()] for row in csv.DictReader(stream)}
    by_class: dict[int, list] = {c: [] for c in range(len(HPA10_NAMES))}
    for path in sorted((folder / "train").glob("*_green.png")):
        identifier = path.name.removesuffix("_green.png")
        labels = targets.get(identifier, [])
        mapped = sorted({FROM_2018[t] for t in labels if t in FROM_2018})
        stain = normalised(np.asarray(Image.open(path).convert("L")))
        for c in mapped:
            by_class[c].append((len(labels) > 1, identifier, stain))
    return {c: [(identifier, stain) for _, identifier, stain in sorted(items, key=lambda item: item[:2])]
            for c, items in by_class.items()}


def generated_images(per_class: int) -> dict[int, list[np.ndarray]]:
    return {c: [normalised(render_image((c,), SIZE, np.random.default_rng(1000 * c + k))[..., 1])
                for k in range(per_class)] for c in range(len(HPA10_NAMES))}


def distances(real: dict, generated: dict) -> dict[str, float]:
    every_real = np.array([describe(stain) for items in real.values() for _, stain in items])
    spread = every_real.std(axis=0) + 1e-9
    result = {}
    for c, name in enumerate(HPA10_NAMES):
        if not real[c]:
            continue
        mean_real = np.mean([describe(stain) for _, stain in real[c]], axis=0) / spread
        mean_generated = np.mean([describe(stain) for stain in generated[c]], axis=0) / spread
        result[name] = float(np.linalg.norm(mean_real - mean_generated))
    return result


def save_strip(stains: list[np.ndarray], path: Path) -> None:
    strip = np.concatenate([np.pad(stain, 2) for stain in stains], axis=1) if stains else np.zeros((SIZE, SIZE))
    Image.fromarray((strip * 255).astype(np.uint8)).save(path)


def write_page(out: Path, real: dict, generated: dict, scores: dict[str, float]) -> None:
    rows = []
    for c, name in enumerate(HPA10_NAMES):
        save_strip([stain for _, stain in real[c][:SHOWN]], out / f"real-{c}.png")
        save_strip(generated[c][:SHOWN], out / f"generated-{c}.png")
        score = f"{scores[name]:.2f}" if name in scores else "n/a (no real image)"
        rows.append(f"<tr><td>{c} {html.escape(name)}<br>distance {score}<br>{len(real[c])} real</td>"
                    f"<td><img src='real-{c}.png' alt='real {html.escape(name)}'></td>"
                    f"<td><img src='generated-{c}.png' alt='generated {html.escape(name)}'></td></tr>")
    mean = np.mean(list(scores.values()))
    page = (f"<!doctype html><meta charset='utf-8'><title>Demo data against real HPA images</title>"
            f"<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}td{{vertical-align:top;padding:4px}}"
            f"img{{image-rendering:pixelated}}</style><h1>Protein stain: real HPA (left) and generated (right)</h1>"
            f"<p>Green channel only, {SIZE} px, each image scaled by its 99.5th percentile. Mean distance over "
            f"classes: <b>{mean:.2f}</b> (tools/demo_realism.py; lower is closer).</p>"
            f"<table><tr><th>class</th><th>real</th><th>generated</th></tr>{''.join(rows)}</table>"
            f"<p>Real images: The Human Protein Atlas (proteinatlas.org), CC BY-SA 3.0.</p>")
    (out / "index.html").write_text(page, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa2018-sample")
    parser.add_argument("--out", type=Path, default=Path("docs/realism"))
    parser.add_argument("--per-class", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    real, generated = real_images(args.real), generated_images(args.per_class)
    scores = distances(real, generated)
    write_page(args.out, real, generated, scores)
    summary = {"mean": float(np.mean(list(scores.values()))), "per_class": scores}
    (args.out / "distances.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
