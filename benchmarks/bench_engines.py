"""Prediction engines on this CPU, side by side on the same model and batch: PyTorch fp32
(channels_last) against ONNX Runtime, and their agreement.

    python benchmarks/bench_engines.py [--backbone efficientnet_lite0] [--image-size 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from protloc.inference.onnx_export import export_onnx
from protloc.inference.predictor import OnnxEngine, TorchEngine, open_onnx_session
from protloc.labels import HPA10
from protloc.models.backbones import backbone_spec
from protloc.models.classifier import build_model
from protloc.runs import RunConfig


def images_per_second(engine, batch: torch.Tensor, repeats: int) -> float:
    engine(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        engine(batch)
    return repeats * batch.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = backbone_spec(args.backbone)
    model = build_model(args.backbone, len(HPA10), pretrained=False).eval()
    config = RunConfig(backbone=args.backbone, label_set="hpa10", label_names=list(HPA10.names),
                       image_size=args.image_size, in_chans=3, mean=list(spec.mean), std=list(spec.std),
                       thresholds=[0.5] * len(HPA10))
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_onnx(model, config, onnx_path)
        onnx_engine = OnnxEngine(open_onnx_session(onnx_path, config))
        torch_engine = TorchEngine(model, precision="fp32")
        difference = (torch_engine(batch) - onnx_engine(batch)).abs().max().item()
        torch_speed = images_per_second(torch_engine, batch, args.repeats)
        onnx_speed = images_per_second(onnx_engine, batch, args.repeats)
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}: torch fp32 {torch_speed:6.1f} img/s | "
          f"onnxruntime {onnx_speed:6.1f} img/s | ratio {onnx_speed / torch_speed:4.2f}x | max |diff| {difference:.1e}")


if __name__ == "__main__":
    main()
