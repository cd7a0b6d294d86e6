"""Loader workers against torch threads: which keeps the model busiest, with the image cache warm.

    python benchmarks/bench_loader_settings.py [--n 128] [--phase frozen|finetune|both] [--rounds 2]

Feeds protloc's own training loader (LocalisationData: cached reads and per-image seeded augmentation maps, the
batch then converted and augmented in this process as Lightning has it done on the device) into the training
step protloc runs (the frozen backbone under no_grad, or everything), for --workers 0/1/2 and
torch.set_num_threads 1/2, and beside each the same step on the same number of batches already in memory.
Settings run interleaved, round after round, so that a busy shared machine weighs on all of them alike; the
ratio loader / in-memory of the same round and threads says whether loading starves the model.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import _limits as limits  # noqa: E402
from bench_pipeline import prepare_data  # noqa: E402


def step_function(model, *, frozen: bool):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    loss_function = torch.nn.BCEWithLogitsLoss()

    def step(batch, targets):
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
        torch.nn.utils.clip_grad_value_(trainable, 0.1)
        optimizer.step()

    return step


def epoch_rate(batches, step, prepare=lambda batch: batch) -> float:
    """Images per second through `batches` (a loader, or tensors in memory), `prepare` (what Lightning does to a
    batch after it reaches the device: for protloc's loader, conversion and augmentation) and `step`."""
    start, images = time.perf_counter(), 0
    for batch in batches:
        batch, targets, *_ = prepare(batch)
        step(batch, targets)
        images += len(batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="images per epoch, at most 512")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--phase", choices=("frozen", "finetune", "both"), default="both")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default="data/benchmark")
    args = parser.parse_args()
    from protloc.allocator import freed_memory_kept
    from protloc.data.cache import open_image_cache
    from protloc.data.readers import read_dataset
    from protloc.models.classifier import freeze_backbone
    from protloc.training.datamodule import LocalisationData

    _, large = prepare_data(Path(args.data_dir), 128, 4)  # bench_pipeline's images: the first --n of them
    table = read_dataset(large, split="train").subset(np.arange(args.n))
    cache = open_image_cache(Path(args.data_dir) / "loader-settings-cache")
    steps = len(table) // args.batch_size
    in_memory = limits.memory_batches(steps, args.batch_size, args.image_size, 10, "cpu")
    phases = ("frozen", "finetune") if args.phase == "both" else (args.phase,)
    settings = [(phase, threads, workers) for phase in phases for threads in args.threads
                for workers in ["memory", *args.workers]]
    models = {phase: limits.fresh_model("efficientnet_lite0", 10, "cpu") for phase in phases}
    if "frozen" in models:
        freeze_backbone(models["frozen"])
    steppers = {phase: step_function(models[phase], frozen=phase == "frozen") for phase in phases}
    results: dict[tuple, list[float]] = {}
    for round_ in range(args.rounds + 1):  # round 0 fills the cache and warms every kernel up
        for phase, threads, workers in settings:
            torch.set_num_threads(threads)
            models[phase].train()
            prepare = lambda batch: batch  # noqa: E731
            if workers == "memory":
                batches = in_memory
            else:
                data = LocalisationData(table, np.arange(len(table)), np.arange(0), image_size=args.image_size,
                                        mean=[0.5] * 3, std=[0.25] * 3, channels=3, batch_size=args.batch_size,
                                        workers=workers, seed=round_, cache=cache)
                data.setup("fit")
                batches = data.train_dataloader()
                prepare = functools.partial(data.on_after_batch_transfer, dataloader_idx=0)
            # As protloc trains: glibc keeps freed memory through the frozen phase (protloc.allocator).
            with freed_memory_kept() if phase == "frozen" else contextlib.nullcontext():
                value = epoch_rate(batches, steppers[phase], prepare)
            if round_:
                results.setdefault((phase, threads, workers), []).append(value)
                print(f"round {round_}: {phase:8s} threads {threads} workers {workers}: {value:6.1f} images/s", flush=True)
    print_table(results, args.rounds)


def print_table(results: dict, rounds: int) -> None:
    print("\n| phase | torch threads | loader workers | images/s (median of rounds) | / in memory, same round (median) |")
    print("|---|---|---|---|---|")
    for (phase, threads, workers), values in results.items():
        memory = results[(phase, threads, "memory")]
        ratios = [value / base for value, base in zip(values, memory)]
        label = "tensors in memory" if workers == "memory" else str(workers)
        print(f"| {phase} | {threads} | {label} | {statistics.median(values):.1f} | "
              f"{'-' if workers == 'memory' else f'{statistics.median(ratios):.2f}'} |")


if __name__ == "__main__":
    main()
