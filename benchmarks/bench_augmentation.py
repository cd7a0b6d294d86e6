"""Training augmentation per image (torchvision v2 transforms, as protloc augmented before) against protloc's
batched maps (Augmentation.draw per image, augment_batch per batch), side by side on the CPU.

    python benchmarks/bench_augmentation.py [--size 224] [--batch-size 32] [--rounds 5]

Both take uint8 images of the training size (as the image cache stores them) to normalised float batches with the
same augmentations: the seed's random crop, random resized crop, flip and rotation, plus vertical flips and
right-angle turns. Rounds alternate the two, on 1 thread (as in a loader worker) and on all cores (as protloc now
runs it in the training process on the CPU).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torchvision.transforms import v2

from protloc.data.transforms import Augmentation, augment_batch, batch_to_model_input


class RandomRot90(v2.Transform):
    def make_params(self, flat_inputs):
        return {"turns": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt, params):
        return torch.rot90(inpt, params["turns"], dims=(-2, -1)) if params["turns"] else inpt


def per_image_chain(size: int) -> v2.Compose:
    """protloc's training preset before the batched maps, without its float tail (applied to the batch below)."""
    return v2.Compose([
        v2.RandomCrop(size, padding=max(1, round(size / 32)), padding_mode="reflect"),
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
        RandomRot90(),
        v2.RandomRotation(10.0, fill=None),
    ])


def milliseconds_per_image(work, images, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        work(images)
    return (time.perf_counter() - start) / (batches * len(images)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="batches per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    images = list(torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    chain, augmentation = per_image_chain(args.size), Augmentation()

    def per_image(batch):
        return batch_to_model_input(torch.stack([chain(image) for image in batch]), mean, std)

    def batched(batch):
        maps = torch.stack([augmentation.draw() for _ in batch])
        return augment_batch(torch.stack(batch), maps, mean, std)

    cores = os.cpu_count() or 1
    print(f"{args.batch_size} images of {args.size} px per batch, {args.batches} batches per measurement; "
          f"ms per image (median of {args.rounds} alternating rounds)")
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        per_image(images), batched(images)  # warm-up
        old, new = [], []
        for _ in range(args.rounds):
            old.append(milliseconds_per_image(per_image, images, args.batches))
            new.append(milliseconds_per_image(batched, images, args.batches))
        ratios = [o / n for o, n in zip(old, new)]
        print(f"  {threads} thread{'s' if threads > 1 else ''}: per image {statistics.median(old):.2f}, batched maps "
              f"{statistics.median(new):.2f}: the per-image chain takes {statistics.median(ratios):.2f}x the time")


if __name__ == "__main__":
    main()
