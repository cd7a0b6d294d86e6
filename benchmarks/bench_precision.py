"""Engines and precisions on this CPU, side by side on one model: how fast each runs and how far each moves a run's
probabilities from PyTorch fp32 (the reference: `--precision auto` on a CPU).

Speed, on the same model and batch in one process, each figure the median of --rounds rounds (with the spread):
  training step   fp32 | fp32 + channels_last | bf16 autocast + channels_last
  inference       the same three | ONNX Runtime fp32 (the CPU default engine)
Deviation, on the same images: ONNX Runtime fp32 and PyTorch bf16 against PyTorch fp32, with the images whose
labels change.

    python benchmarks/bench_precision.py [--run RUN --data DATA] [--backbone efficientnet_lite0] [--image-size 128]

Without --run: the backbone with its ImageNet weights and a seeded head, on generated demo images. On a CPU
without native bf16 (AVX512-BF16 or AMX) bf16 is emulated: about ten times slower, and only its deviation means
anything there.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from protloc.inference.engines import OnnxEngine, TorchEngine
from protloc.inference.onnx_export import export_onnx, open_onnx_session
from protloc.inference.predictor import Predictor, load_predictor


def demo_run(folder: Path, backbone: str, image_size: int) -> tuple[Path, Path]:
    from protloc.data.synthetic import write_demo_dataset
    from protloc.labels import HPA10
    from protloc.models.classifier import build_model
    from protloc.models.run_weights import save_run
    from protloc.runs import RunConfig

    write_demo_dataset(folder / "data", n_train=8, n_test=64, size=image_size, seed=0, show_progress=False, workers=1)
    torch.manual_seed(0)
    model = build_model(backbone, len(HPA10), pretrained=True)
    mean, std = model.backbone.spec.normalization(3)
    config = RunConfig(backbone=backbone, label_set="hpa10", label_names=list(HPA10.names), image_size=image_size,
                       in_chans=3, mean=list(mean), std=list(std), thresholds=[0.5] * len(HPA10), bit_depth=8)
    save_run(folder / "run", config, model)
    return folder / "run", folder / "data" / "test"


def median_speed(step, images: int, rounds: int, steps: int) -> tuple[float, float]:
    """(median, half the range) of images/s over `rounds` rounds of `steps` calls, after one warm-up call."""
    step()
    speeds = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        speeds.append(steps * images / (time.perf_counter() - start))
    return statistics.median(speeds), (max(speeds) - min(speeds)) / 2


def training_step(model, batch: torch.Tensor, *, bf16: bool, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    batch = batch.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    targets = torch.zeros(batch.shape[0], model.num_classes)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def inference_step(model, batch: torch.Tensor, *, bf16: bool, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).eval()
    batch = batch.to(memory_format=memory_format)

    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(batch)
    return step


def report_speed(run: Path, args: argparse.Namespace, folder: Path) -> None:
    from protloc.models.run_weights import load_run

    config, model = load_run(run)
    batch = torch.randn(args.batch_size, config.in_chans, config.image_size, config.image_size)
    variants = {"fp32": dict(bf16=False, channels_last=False), "fp32+channels_last": dict(bf16=False, channels_last=True),
                "bf16+channels_last": dict(bf16=True, channels_last=True)}
    print(f"speed, images/s (median of {args.rounds} rounds +/- half their range), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}:")
    for kind, make_step in (("training step", training_step), ("inference", inference_step)):
        figures = {name: median_speed(make_step(model, batch, **variant), len(batch), args.rounds, args.steps)
                   for name, variant in variants.items()}
        if kind == "inference":
            export_onnx(model, config, folder / "model.onnx")
            onnx_engine = OnnxEngine(open_onnx_session(folder / "model.onnx", config))
            figures["onnxruntime fp32"] = median_speed(lambda: onnx_engine(batch), len(batch), args.rounds, args.steps)
        base = figures["fp32"][0]
        print(f"  {kind:13s} " + " | ".join(f"{name} {speed:.1f} +/- {spread:.1f} ({speed / base:.2f}x)"
                                            for name, (speed, spread) in figures.items()))
    torch_engine = TorchEngine(model, precision="fp32")
    agreement = (torch_engine(batch) - onnx_engine(batch)).abs().max().item()
    print(f"  torch fp32 and onnxruntime on this batch: max |diff| {agreement:.1e}")


def report_deviation(run: Path, data: Path) -> None:
    from protloc.data.readers import read_dataset

    def probabilities(predictor: Predictor, table) -> np.ndarray:
        result = predictor.predict_table(table, batch_size=32)
        assert not result.unreadable, result.unreadable
        return result.outputs

    reference = load_predictor(run, device="cpu", engine="torch", precision="fp32")
    table = read_dataset(data, split="test", channels=reference.config.in_chans)
    expected = probabilities(reference, table)
    labels = reference.decide(expected)
    print(f"deviation from torch fp32, {reference.config.backbone} at {reference.config.image_size} px, "
          f"{len(table)} images of {data}:")
    for name, engine, precision in (("onnxruntime fp32", "onnx", "fp32"), ("torch bf16", "torch", "bf16")):
        predictor = load_predictor(run, device="cpu", engine=engine, precision=precision)
        actual = probabilities(predictor, table)
        difference = np.abs(actual - expected)
        flipped = int((predictor.decide(actual) != labels).any(axis=1).sum())
        print(f"  {name:16s} max |diff| {difference.max():.1e}, mean {difference.mean():.1e}, "
              f"images whose labels change {flipped} of {len(table)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None, help="a trained run folder (default: a pretrained backbone, seeded head)")
    parser.add_argument("--data", default=None, help="with --run: images to predict (a folder, a dataset or a CSV)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    # Few steps per round: on CPUs without native bf16 the emulated path is an order of magnitude slower.
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run, data = ((Path(args.run), Path(args.data)) if args.run
                     else demo_run(Path(folder), args.backbone, args.image_size))
        report_speed(run, args, Path(folder))
        report_deviation(run, data)


if __name__ == "__main__":
    main()
