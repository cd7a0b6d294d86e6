"""How far each inference engine and precision moves a run's probabilities from PyTorch fp32 on this CPU:
ONNX Runtime fp32 (the default on CPUs) and PyTorch bf16 autocast, on the same images, with the labels that flip.

    python benchmarks/bench_inference_precision.py [--run RUN --data DATA]

Without --run: efficientnet_lite0 with its ImageNet weights and a seeded head, on generated demo images.
On a CPU without native bf16 (AVX512-BF16 or AMX) bf16 is emulated: its deviation is what this measures, not
its speed.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from protloc.inference.predictor import Predictor, load_predictor


def demo_run(folder: Path) -> tuple[Path, Path]:
    from protloc.data.synthetic import write_demo_dataset
    from protloc.labels import HPA10
    from protloc.models.classifier import build_model
    from protloc.runs import RunConfig, save_run

    write_demo_dataset(folder / "data", n_train=8, n_test=64, size=128, seed=0, show_progress=False, workers=1)
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", len(HPA10), pretrained=True)
    mean, std = model.backbone.spec.normalization(3)
    config = RunConfig(backbone="efficientnet_lite0", label_set="hpa10", label_names=list(HPA10.names),
                       image_size=128, in_chans=3, mean=list(mean), std=list(std), thresholds=[0.5] * len(HPA10),
                       bit_depth=8)
    save_run(folder / "run", config, model)
    return folder / "run", folder / "data" / "test"


def probabilities(predictor: Predictor, table) -> np.ndarray:
    result = predictor.predict_table(table, batch_size=32)
    assert not result.unreadable, result.unreadable
    return result.outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None, help="a trained run folder (default: a pretrained backbone, seeded head)")
    parser.add_argument("--data", default=None, help="images to predict: a folder, a dataset or a CSV")
    args = parser.parse_args()
    from protloc.data.readers import read_dataset

    with tempfile.TemporaryDirectory() as folder:
        run, data = (Path(args.run), Path(args.data)) if args.run else demo_run(Path(folder))
        reference = load_predictor(run, device="cpu", engine="torch", precision="fp32")
        table = read_dataset(data, split="test", channels=reference.config.in_chans)
        expected = probabilities(reference, table)
        labels = reference.decide(expected)
        print(f"{reference.config.backbone} at {reference.config.image_size} px, {len(table)} images of {data}:")
        for name, engine, precision in (("onnxruntime fp32", "onnx", "fp32"), ("torch bf16", "torch", "bf16")):
            predictor = load_predictor(run, device="cpu", engine=engine, precision=precision)
            actual = probabilities(predictor, table)
            difference = np.abs(actual - expected)
            flipped = int((predictor.decide(actual) != labels).any(axis=1).sum())
            print(f"  {name:16s} vs torch fp32: max |diff| {difference.max():.1e}, mean {difference.mean():.1e}, "
                  f"images whose labels change {flipped} of {len(table)}")


if __name__ == "__main__":
    main()
