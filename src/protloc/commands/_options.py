"""Options shared by the commands that read datasets."""
from __future__ import annotations

import argparse

from protloc.data.readers import LAYOUTS, DatasetTable, read_dataset
from protloc.labels import get_label_set


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=LAYOUTS, default=None, help="dataset layout (default: detected from DATA)")
    parser.add_argument("--labels", default=None, metavar="SET",
                        help="label set: hpa10, hpa28 or a file with one class name per line (default: from the layout)")
    parser.add_argument("--channels", type=int, choices=(1, 3, 4), default=3,
                        help="image channels: 3 = RGB composite, 4 = with the HPA yellow (ER) stain")


def read_dataset_from_args(args: argparse.Namespace, path=None, split: str = "train") -> DatasetTable:
    label_set = get_label_set(args.labels) if args.labels else None
    return read_dataset(path or args.data, layout=args.format, split=split, label_set=label_set, channels=args.channels)
