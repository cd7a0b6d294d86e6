"""How many processes or threads read images beside the model: every rule in one place.

- Prediction (predict, evaluate, tune, embed, report; the service's decoding threads): `--workers`, default
  PREDICTION_WORKERS, and none when everything fits in one batch, where starting loader processes only costs time.
- Training: `--workers`, else none on the CPU with the image cache, else min(4, CPUs) (training_workers).
- Decoding a whole dataset once (protloc check, convert): DECODE_THREADS threads, as PIL decodes outside the GIL.
- Drawing demo data: all cores.
"""
from __future__ import annotations

import os

PREDICTION_WORKERS = 2
DECODE_THREADS = 4
MOST_TRAINING_WORKERS = 4


def all_cores() -> int:
    return os.cpu_count() or 1


def prediction_workers(requested: int, items: int, batch_size: int) -> int:
    """DataLoader processes for a forward pass over `items` in batches of `batch_size`: the requested count, but
    none for a single batch (nothing to overlap with)."""
    return 0 if items <= batch_size else requested


def training_workers(requested: int | None, device: str, cached: bool) -> int:
    """DataLoader processes per training process: `requested` (--workers), else none on the CPU with the image
    cache, else min(4, CPUs).

    With the cache, reading an image costs about 0.1 ms and its augmentation about 2 ms, beside 20 ms (frozen
    backbone) to 100 ms (fine-tuning) of model time. On the CPU, loader processes can only take that work from
    the cores the model's threads run on, and a thread held up by them stalls the others at every layer:
    efficientnet_lite0 at 224 px on 2 cores, whole runs alternating, fine-tuned at 11.7-12.0 images/s with no
    workers against 10.0 with two, and ran the frozen phase at 46-59 against 43-45 (benchmarks/RESULTS.md).
    Decoding PNGs every epoch (--no-cache), or feeding a GPU, is work worth other processes."""
    if requested is not None:
        return requested
    return 0 if device == "cpu" and cached else min(MOST_TRAINING_WORKERS, all_cores())
