"""protloc convert hpa2018-to-hpa10 SRC --out DIR."""
from __future__ import annotations

import argparse

CONVERSIONS = ("hpa2018-to-hpa10",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a dataset to another layout / label set",
        description="hpa2018-to-hpa10: keep the HPA 2018 images that carry at least one of the 10 Zero-to-GANs "
                    "classes, drop the other labels, and write RGB composites in the Zero-to-GANs layout.")
    parser.add_argument("conversion", metavar="CONVERSION", choices=CONVERSIONS, help="which conversion: hpa2018-to-hpa10")
    parser.add_argument("source", metavar="SRC", help="HPA 2018 dataset folder (train.csv + train/<Id>_<stain>.png)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--labels-only", action="store_true", help="write train.csv only, no images")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.data.convert import convert_hpa2018_to_hpa10
    from protloc.data.readers import read_hpa2018
    from protloc.files import atomic_dir, check_output_path

    check_output_path(args.out, folder=True, inputs=[args.source])
    total = len(read_hpa2018(args.source))
    with atomic_dir(args.out) as out:  # a failure half way leaves no half-converted dataset
        kept = convert_hpa2018_to_hpa10(args.source, out, labels_only=args.labels_only)
    print(f"kept {kept:,} of {total:,} images (those with at least one of the 10 classes) -> {args.out}")
    return 0
