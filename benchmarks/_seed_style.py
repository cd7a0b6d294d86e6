"""The seed notebook's loop, for bench_pipeline.py: one frozen-backbone epoch, then one fine-tuning epoch.

    python benchmarks/_seed_style.py DATA [--image-size 224] [--batch-size 32] [--backbone efficientnet_lite0]

Prints {"frozen": images/s, "finetune": images/s} as JSON on its last line. It runs in a process of its own, as
`protloc train` does in the table beside it: in the benchmark's long-lived process, whose heap has grown by
then, the same loop fine-tuned 10% faster (5.5 and 5.9 images/s against 5.0 and 5.2 in new processes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _limits as limits  # noqa: E402
from protloc.data.readers import read_dataset  # noqa: E402
from protloc.models.backbones import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--original-size", type=int, default=512, help="side of the PNGs; default %(default)s")
    args = parser.parse_args()

    table = read_dataset(args.data, split="train")
    transform = limits.seed_transforms(args.original_size, args.image_size, IMAGENET_MEAN, IMAGENET_STD)
    dataset = limits.SeedStyleImages(table.frame["source"], table.targets, transform)
    workers = min(4, os.cpu_count() or 1)
    rates = {}
    for phase in ("frozen", "finetune"):
        model = limits.fresh_model(args.backbone, 10, "cpu", channels_last=False)
        rates[phase] = limits.seed_style_epoch(model, dataset, frozen=phase == "frozen", batch_size=args.batch_size,
                                               workers=workers)
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
