"""How well class-activation maps find each class's pattern: the share of the map's mass inside its true mask.

Held-out synthetic images are rendered at the run's image size with ``render_field_with_masks``, which
also returns, per label, the mask of the brightest pixels holding 80% of that class's green pattern.
For every (image, true class) pair each candidate (pytorch-grad-cam method, target layer) gives a map
for that class; its in-mask share is sum(map * mask) / sum(map). A map spread evenly over the image
scores the mask's area share (the "uniform" row), so a candidate is only useful well above that.
"peak in mask" is the pointing game: how often the map's hottest pixel falls inside the mask. The last
row is what `protloc explain` draws (the backbone spec's layer and explain's method), through its code.

    python benchmarks/bench_cam_localisation.py                  # trains a small demo run first (minutes)
    python benchmarks/bench_cam_localisation.py --run RUN        # an efficientnet_lite0 run, e.g. at 128 px

The run is trained as the demo is: 600 images of 128 px, 1 frozen epoch + 3 fine-tuning epochs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from protloc.data.synthetic import render_field_with_masks, sample_label_sets
from protloc.reports.explain import CAM_METHOD, compute_cams
from protloc.runs import load_run

# (method, target layers) for efficientnet_lite0; at 128 px bn2 and blocks.5/6 are 4x4, blocks.3/4 8x8,
# blocks.2 16x16, blocks.1 32x32.
BEFORE = "GradCAM@bn2"  # what explain drew before: the last feature map, 4x4 at 128 px
CANDIDATES = (
    ("GradCAM", ("bn2",)),
    ("GradCAM", ("blocks.4",)),
    ("GradCAM", ("blocks.2",)),
    ("HiResCAM", ("blocks.2",)),
    ("GradCAMPlusPlus", ("blocks.2",)),
    ("LayerCAM", ("blocks.2",)),
    ("LayerCAM", ("blocks.1",)),
    ("LayerCAM", ("blocks.2", "blocks.4", "bn2")),
    ("HiResCAM", ("blocks.2", "blocks.4")),
)


def train_demo_run(work: Path, images: int) -> Path:
    """A small demo run in `work`, through the CLI as a user would make it."""
    cli = [sys.executable, "-m", "protloc.cli"]
    subprocess.run([*cli, "demo-data", "--out", str(work / "demo"), "--n-train", str(images), "--n-test", "1",
                    "--size", "128", "--seed", "0"], check=True)
    subprocess.run([*cli, "train", str(work / "demo"), "--out", str(work / "run"), "--image-size", "128",
                    "--epochs-frozen", "1", "--epochs", "3", "--seed", "0"], check=True)
    return work / "run"


def held_out_pairs(per_class: int, size: int, num_classes: int, seed: int):
    """Images, their masks and (image, class) pairs: `per_class` images carrying each class.

    Each image's other labels are a draw of the demo's label sets, so classes are seen with the
    companions they have in training (Nucleoplasm with Cytosol, most often).
    """
    rng = np.random.default_rng(seed)
    images, masks, pairs = [], [], []
    for c in range(num_classes):
        for draw in sample_label_sets(per_class, rng):
            labels = tuple(sorted(set(draw) | {c}))
            image, by_name = render_field_with_masks(labels, size, rng)
            pairs.append((len(images), c))
            images.append(image)
            masks.append(by_name)
    return images, masks, pairs


def model_input(images: list[np.ndarray], config) -> torch.Tensor:
    """uint8 (H, W, 3) images already at the run's size -> normalised (N, 3, H, W), as prediction feeds them."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    return (batch - mean) / std


def class_maps(model, method: str, layers: tuple[str, ...], batch: torch.Tensor, classes: list[int]) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    modules = [model.backbone.net.get_submodule(name) for name in layers]
    targets = [ClassifierOutputTarget(c) for c in classes]
    maps = []
    with getattr(pytorch_grad_cam, method)(model=model, target_layers=modules) as cam:
        for start in range(0, len(classes), 32):
            maps.append(cam(input_tensor=batch[start:start + 32], targets=targets[start:start + 32]))
    return np.concatenate(maps)


def feature_map_side(model, layer: str, size: int) -> int:
    seen = []
    handle = model.backbone.net.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    handle.remove()
    return seen[0]


def score(maps: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: the map's mass share inside the mask, and whether its hottest pixel is inside."""
    mass = maps.reshape(len(maps), -1)
    inside = truth.reshape(len(truth), -1)
    share = (mass * inside).sum(1) / np.maximum(mass.sum(1), 1e-12)
    peak = inside[np.arange(len(mass)), mass.argmax(1)]
    return share, peak


def per_class_means(values: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    return np.array([values[classes == c].mean() for c in range(num_classes)])


def print_tables(names: list[str], shares: dict[str, np.ndarray], peaks: dict[str, np.ndarray],
                 classes: np.ndarray) -> None:
    """Per class: each candidate's mean in-mask share; then per candidate: means over classes."""
    by_class = pd.DataFrame({label: per_class_means(v, classes, len(names)) for label, v in shares.items()},
                            index=names)
    print("\nIn-mask share of the map's mass, mean per class (uniform: the mask's area share)")
    print(by_class.T.to_string(float_format="{:.3f}".format))
    before = by_class[BEFORE]
    summary = pd.DataFrame(index=by_class.columns, data={
        "share": by_class.mean(),
        "share / uniform": (by_class.div(by_class["uniform"], axis=0)).mean(),
        "classes above before": (by_class.gt(before, axis=0)).sum(),
        "peak in mask": pd.Series({label: per_class_means(v, classes, len(names)).mean() for label, v in peaks.items()}),
    })
    print("\nMeans over classes")
    print(summary.to_string(float_format="{:.3f}".format))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an efficientnet_lite0 run folder (default: train a demo run)")
    parser.add_argument("--train-images", type=int, default=600, help="demo images to train on without --run")
    parser.add_argument("--per-class", type=int, default=8, help="held-out images carrying each class")
    parser.add_argument("--seed", type=int, default=2024, help="held-out images' seed (the demo trains on seed 0)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    with tempfile.TemporaryDirectory() as work:
        run = args.run or train_demo_run(Path(work), args.train_images)
        config, model = load_run(run)
    model = model.to(memory_format=torch.channels_last)  # depthwise backward is much faster channels-last on CPU
    images, masks, pairs = held_out_pairs(args.per_class, config.image_size, config.num_classes, args.seed)
    names = config.label_names
    classes = np.array([c for _, c in pairs])
    batch = model_input([images[i] for i, _ in pairs], config).contiguous(memory_format=torch.channels_last)
    truth = np.stack([masks[i][names[c]] for i, c in pairs])
    shares = {"uniform": truth.reshape(len(truth), -1).mean(1)}
    peaks = {}
    print(f"{run}: {config.backbone} at {config.image_size} px, {len(pairs)} (image, class) pairs")
    for method, layers in CANDIDATES:
        start = time.perf_counter()
        share, peak = score(class_maps(model, method, layers, batch, classes.tolist()), truth)
        label = f"{method}@{'+'.join(layers)}"
        shares[label], peaks[label] = share, peak
        sides = "+".join(f"{feature_map_side(model, layer, config.image_size)}" for layer in layers)
        print(f"  {label}: map {sides} px side, mean share {share.mean():.3f}, peak in mask {peak.mean():.0%}, "
              f"{time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    maps = np.concatenate([compute_cams(model, batch[start:start + 32], classes[start:start + 32].tolist())
                           for start in range(0, len(classes), 32)])
    label = f"protloc explain ({CAM_METHOD}@{model.backbone.cam_layer_name})"
    shares[label], peaks[label] = score(maps, truth)
    print(f"  {label}: mean share {shares[label].mean():.3f}, {time.perf_counter() - start:.1f} s")
    print_tables(names, shares, peaks, classes)
    print_weak_evidence(model, batch, pairs, images, masks, names, np.random.default_rng(args.seed))


def print_weak_evidence(model, batch, pairs, images, masks, names, rng) -> None:
    """Does a class with little evidence look weak? Each image's map for its true class against its map for a class
    it does not carry, on the image's common scale (what explain draws): a per-map min-max stretch puts both peaks
    at 1; maps at their own magnitude should leave the absent class's well below the true one's."""
    from protloc.reports.cams import scale_together

    true_peaks, absent_peaks = [], []
    for row, (image, c) in enumerate(pairs):
        absent = [k for k in range(len(names)) if names[k] not in masks[image]]
        if not absent:
            continue
        other = int(rng.choice(absent))
        maps = scale_together(compute_cams(model, batch[row:row + 1], [c, other]))
        true_peaks.append(maps[0].max())
        absent_peaks.append(maps[1].max())
    true_peaks, absent_peaks = np.array(true_peaks), np.array(absent_peaks)
    print(f"\nOn an image's common scale ({len(true_peaks)} images): true class's peak {true_peaks.mean():.2f} on average, "
          f"an absent class's {absent_peaks.mean():.2f}; the absent one is weaker on {np.mean(absent_peaks < true_peaks):.0%} "
          "(a per-map stretch: 1.00 and 1.00, 0%)")


if __name__ == "__main__":
    main()
