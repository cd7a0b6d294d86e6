"""What seeding each training image's augmentation costs: the CPU generator alone (protloc) against
torch.manual_seed (protloc before), side by side through a DataLoader, on generated images read from protloc's
image cache as training reads them.

    python benchmarks/bench_augmentation_seeding.py [--n 256] [--size 224] [--repeats 5]

Both give the same augmentations. torch.manual_seed also seeds every GPU's generator; in a CUDA build whose
CUDA has not started, that queues the call and formats the caller's stack to report later, every time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from protloc.data.cache import open_image_cache
from protloc.data.dataset import ImageDataset
from protloc.data.readers import read_dataset
from protloc.data.synthetic import write_demo_dataset
from protloc.data.transforms import Augmentation, eval_transforms
from protloc.training.datamodule import SeededAugmentation


class SeededEverywhere(SeededAugmentation):
    """The earlier seeding: every device's generator, through torch.manual_seed."""

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return (*self.dataset[index], self.augmentation.draw())


def milliseconds_per_image(dataset, n: int) -> float:
    loader = DataLoader(dataset, batch_size=32, sampler=[(index, 1000 + index) for index in range(n)])
    start = time.perf_counter()
    for _batch in loader:
        pass
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker
    with tempfile.TemporaryDirectory() as folder:
        write_demo_dataset(Path(folder) / "data", n_train=args.n, n_test=0, size=args.size, seed=0, show_progress=False)
        table = read_dataset(Path(folder) / "data")
        cache = open_image_cache(Path(folder) / "cache")
        cache.prepare(table.frame["source"], 3, args.size, bit_depth=table.bit_depth)
        transform = eval_transforms(image_size=args.size, mean=[0.5] * 3, std=[0.25] * 3, to_model_input=False)
        images = ImageDataset(table, channels=3, image_size=args.size, cache=cache, transform=transform)
        cpu_only, everywhere = SeededAugmentation(images, Augmentation()), SeededEverywhere(images, Augmentation())
        assert torch.equal(cpu_only[(0, 5)][-1], everywhere[(0, 5)][-1])  # the same augmentation
        milliseconds_per_image(cpu_only, args.n)  # fills the cache: later rounds read decoded images
        print(f"{args.n} generated {args.size} px images per round, read from the cache through a DataLoader with "
              f"their augmentation maps drawn (batch 32, no workers), ms per image:")
        ratios = []
        for round_number in range(1, args.repeats + 1):
            new, old = milliseconds_per_image(cpu_only, args.n), milliseconds_per_image(everywhere, args.n)
            ratios.append(old / new)
            print(f"  round {round_number}: CPU generator alone {new:.2f}, torch.manual_seed {old:.2f}: "
                  f"{old / new:.2f}x the time, {old - new:.2f} ms more per image")
        print(f"median: torch.manual_seed takes {sorted(ratios)[len(ratios) // 2]:.2f}x the time per image")


if __name__ == "__main__":
    main()
