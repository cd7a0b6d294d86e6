"""Training-step and inference throughput on this CPU: fp32, fp32 + channels_last, bf16 autocast + channels_last.

Both variants run side by side in one process on the same model and data, so the printed ratio is
what the engine's `--precision auto` choice buys on this machine.

    python benchmarks/bench_cpu_precision.py [--backbone efficientnet_lite0] [--image-size 128]
"""
from __future__ import annotations

import argparse
import time

import torch

from protloc.models.classifier import build_model


def images_per_second(model, batch, *, bf16: bool, channels_last: bool, train: bool, steps: int) -> float:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batch = batch.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    targets = torch.zeros(batch.shape[0], 10)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if train:
                loss = loss_fn(model(batch).float(), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                with torch.inference_mode():
                    model(batch)

    model.train(train)
    step()  # warm-up: first calls pick kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    # Few steps: on CPUs without native bf16 the emulated path is an order of magnitude slower.
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.backbone, 10, pretrained=False)
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    native = torch.backends.cpu.get_cpu_capability()
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, CPU capability {native}")
    for train in (True, False):
        fp32 = images_per_second(model, batch, bf16=False, channels_last=False, train=train, steps=args.steps)
        fp32_cl = images_per_second(model, batch, bf16=False, channels_last=True, train=train, steps=args.steps)
        bf16 = images_per_second(model, batch, bf16=True, channels_last=True, train=train, steps=args.steps)
        kind = "train step" if train else "inference "
        print(f"{kind}: fp32 {fp32:6.1f} img/s | fp32+channels_last {fp32_cl:6.1f} ({fp32_cl / fp32:4.2f}x) | "
              f"bf16+channels_last {bf16:6.1f} ({bf16 / fp32:4.2f}x)")

if __name__ == "__main__":
    main()
