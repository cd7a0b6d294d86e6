"""Loader workers against torch threads: which keeps the model busiest, with the image cache warm.

    python benchmarks/bench_loader_settings.py [--n 128] [--image-size 224] [--phase frozen|finetune|both]

Runs protloc's own training loader (LocalisationData: cached reads, per-image seeded augmentation) into the
same training step as protloc (the frozen backbone under no_grad, or everything), for every combination of
--workers 0/1/2 and torch.set_num_threads 1/2, interleaved over --rounds so that a busy shared machine weighs
on all settings alike; prints the best images/s of each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import _limits as limits  # noqa: E402
from bench_pipeline import prepare_data  # noqa: E402


def epoch_rate(data, model, *, frozen: bool) -> float:
    """Images per second through one epoch of `data`'s training loader and protloc's step."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    loss_function = torch.nn.BCEWithLogitsLoss()
    loader = data.train_dataloader()
    start, images = time.perf_counter(), 0
    for batch, targets, _rows, _problems in loader:
        batch = batch.contiguous(memory_format=torch.channels_last)
        if frozen:
            with torch.no_grad():
                features = model.backbone(batch)
            logits = model.head(features)
        else:
            logits = model(batch)
        loss = loss_function(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--phase", choices=("frozen", "finetune", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default="data/benchmark")
    args = parser.parse_args()
    from protloc.data.cache import open_image_cache
    from protloc.data.readers import read_dataset
    from protloc.models.classifier import freeze_backbone
    from protloc.training.datamodule import LocalisationData

    small, _ = prepare_data(Path(args.data_dir), args.n, 4)
    table = read_dataset(small, split="train")
    cache = open_image_cache(Path(args.data_dir) / "loader-settings-cache")
    phases = ("frozen", "finetune") if args.phase == "both" else (args.phase,)
    settings = [(phase, workers, threads) for phase in phases for workers in (0, 1, 2) for threads in (1, 2)]
    best: dict[tuple, float] = {}
    models = {}
    for phase in phases:
        models[phase] = limits.fresh_model("efficientnet_lite0", 10, "cpu")
        if phase == "frozen":
            freeze_backbone(models[phase])
    for round_ in range(args.rounds + 1):  # round 0 fills the cache and warms every kernel up
        for phase, workers, threads in settings:
            torch.set_num_threads(threads)
            data = LocalisationData(table, np.arange(len(table)), np.arange(0), image_size=args.image_size,
                                    mean=[0.5] * 3, std=[0.25] * 3, channels=3, batch_size=args.batch_size,
                                    workers=workers, seed=round_, cache=cache)
            data.setup("fit")
            value = epoch_rate(data, models[phase], frozen=phase == "frozen")
            if round_:
                best[(phase, workers, threads)] = max(best.get((phase, workers, threads), 0.0), value)
                print(f"round {round_}: {phase:8s} workers {workers} threads {threads}: {value:6.1f} images/s", flush=True)
    print("\n| phase | workers | torch threads | images/s (best of rounds) |\n|---|---|---|---|")
    for (phase, workers, threads), value in best.items():
        print(f"| {phase} | {workers} | {threads} | {value:.1f} |")


if __name__ == "__main__":
    main()
