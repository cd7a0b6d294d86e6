"""How well class-activation maps find each class's pattern, and whether a class with little evidence looks weak.

Held-out generated images are rendered at the run's image size with ``render_field_with_masks``, which also
returns, per label, the mask of the brightest pixels holding most of that class's green pattern. For every
(image, true class) pair each candidate (pytorch-grad-cam method @ target layer) gives a map for that class:

- "share": the map's mass inside the mask, sum(map * mask) / sum(map); a flat map scores the mask's area
  ("uniform"), so a candidate is useful only well above that; "share / uniform" is the ratio per pair;
- "peak in mask": the pointing game, how often the map's hottest pixel falls inside the mask.

Then, with what `protloc explain` draws (inference/cams.py), each image's map of its true class against its map of
a class it does not carry: how often the absent class's map is the weaker (lower peak), under each scaling:
"per map" (pytorch-grad-cam's own min-max stretch), "common scale" (an image's maps share one scale) and
"weighed by probability" (the common scale times each class's probability: what explain draws).

    python tools/cam_localisation.py --run runs/demo                 # an efficientnet_lite0 run, e.g. make demo's
    python tools/cam_localisation.py --run runs/demo --per-class 8   # more pairs, steadier
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from protloc.data.synthetic import render_field_with_masks, sample_label_sets
from protloc.models.run_weights import load_run
from protloc.inference.cams import CAM_METHOD, compute_cams, scale_together, weigh_by_probability

# (method, target layers) for efficientnet_lite0; at 128 px bn2 is 4x4, blocks.4 8x8, blocks.2 16x16.
CANDIDATES = (
    ("GradCAM", ("bn2",)),
    ("HiResCAM", ("bn2",)),
    ("GradCAM", ("blocks.4",)),
    ("HiResCAM", ("blocks.4",)),
    ("GradCAM", ("blocks.2",)),
    ("HiResCAM", ("blocks.2",)),
    ("LayerCAM", ("blocks.2",)),
)


def held_out_pairs(per_class: int, size: int, num_classes: int, seed: int):
    """Images, their masks and (image, class) pairs: `per_class` images carrying each class, each image's other
    labels drawn as the demo draws label sets (so classes come with their usual companions)."""
    rng = np.random.default_rng(seed)
    images, masks, pairs = [], [], []
    for c in range(num_classes):
        for draw in sample_label_sets(per_class, rng):
            labels = tuple(sorted(set(draw) | {c}))
            image, by_name = render_field_with_masks(labels, size, rng)
            pairs.append((len(images), c, labels))
            images.append(image)
            masks.append(by_name)
    return images, masks, pairs


def model_input(images: list[np.ndarray], config) -> torch.Tensor:
    """uint8 (H, W, 3) images already at the run's size -> normalised (N, 3, H, W), as prediction feeds them."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)


def class_maps(model, method: str, layers: tuple[str, ...], batch: torch.Tensor, classes: list[int]) -> np.ndarray:
    """pytorch-grad-cam's maps as the library makes them (each stretched to 0..1 on its own)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    modules = [model.backbone.net.get_submodule(name) for name in layers]
    maps = []
    with getattr(pytorch_grad_cam, method)(model=model, target_layers=modules) as cam:
        for start in range(0, len(classes), 32):
            targets = [ClassifierOutputTarget(c) for c in classes[start:start + 32]]
            maps.append(cam(input_tensor=batch[start:start + 32], targets=targets))
    return np.concatenate(maps)


def localisation(maps: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: the map's mass share inside the mask, and whether its hottest pixel is inside."""
    mass = maps.reshape(len(maps), -1)
    inside = truth.reshape(len(truth), -1)
    share = (mass * inside).sum(1) / np.maximum(mass.sum(1), 1e-12)
    return share, inside[np.arange(len(mass)), mass.argmax(1)]


def absent_weaker(model, batch: torch.Tensor, pairs, num_classes: int, seed: int) -> dict[str, float]:
    """Share of images whose map of an absent class (one drawn at random) peaks below that of its true class."""
    rng = np.random.default_rng(seed)
    weaker = {"per map": [], "common scale": [], "weighed by probability": []}
    with torch.no_grad():
        probabilities = torch.sigmoid(model(batch).float()).numpy()
    for row, (_image, true_class, labels) in enumerate(pairs):
        absent = int(rng.choice([c for c in range(num_classes) if c not in labels]))
        raw = compute_cams(model, batch[row:row + 1], [true_class, absent])
        stretched = np.stack([(m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m * 0 for m in raw])
        for label, maps in (("per map", stretched), ("common scale", scale_together(raw)),
                            ("weighed by probability", weigh_by_probability(raw, probabilities[row, [true_class, absent]]))):
            peaks = maps.reshape(2, -1).max(1)
            weaker[label].append(peaks[1] < peaks[0])
    return {label: float(np.mean(values)) for label, values in weaker.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an efficientnet_lite0 run folder, e.g. runs/demo")
    parser.add_argument("--per-class", type=int, default=4, help="held-out images carrying each class (default 4)")
    parser.add_argument("--seed", type=int, default=2024, help="held-out images' seed (the demo trains on seed 1)")
    args = parser.parse_args()
    config, model = load_run(args.run)
    model = model.to(memory_format=torch.channels_last)  # depthwise backward is much faster channels-last on CPU
    images, masks, pairs = held_out_pairs(args.per_class, config.image_size, config.num_classes, args.seed)
    names = config.label_names
    classes = [c for _, c, _ in pairs]
    batch = model_input([images[i] for i, _, _ in pairs], config)
    truth = np.stack([masks[i][names[c]] for i, c, _ in pairs])
    uniform = truth.reshape(len(truth), -1).mean(1)
    rows = {}
    for method, layers in CANDIDATES:
        share, peak = localisation(class_maps(model, method, layers, batch, classes), truth)
        rows[f"{method} @ {'+'.join(layers)}"] = (share.mean(), (share / uniform).mean(), peak.mean())
    maps = np.concatenate([compute_cams(model, batch[s:s + 32], classes[s:s + 32]) for s in range(0, len(classes), 32)])
    share, peak = localisation(maps, truth)
    rows[f"explain: {CAM_METHOD} @ {model.backbone.cam_layer_name}"] = (share.mean(), (share / uniform).mean(), peak.mean())
    print(f"{args.run}: {config.backbone} at {config.image_size} px, {len(pairs)} (image, class) pairs; "
          f"uniform share {uniform.mean():.3f}")
    print(pd.DataFrame(rows, index=["share", "share / uniform", "peak in mask"]).T.to_string(float_format="{:.3f}".format))
    print("\nAn absent class's map weaker than the true class's (share of images):")
    for label, value in absent_weaker(model, batch, pairs, config.num_classes, args.seed).items():
        print(f"  {label}: {value:.0%}")


if __name__ == "__main__":
    main()
