"""protloc demo-data --out DIR: a synthetic HPA-like dataset in the Zero-to-GANs layout."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-data", help="generate a synthetic HPA-like dataset (Zero-to-GANs layout)",
        description="Write train.csv, train/, test/ and submission.csv with synthetic cell images whose green "
                    "channel shows the patterns of their labels. Deterministic for a given seed.")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--n-train", type=int, default=1500, metavar="N",
                        help="labelled images, in train/ and train.csv (default %(default)s)")
    parser.add_argument("--n-test", type=int, default=300, metavar="N",
                        help="unlabelled images, in test/ and submission.csv (default %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the images and their labels: the same seed writes the same files (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing images (default: all cores)")
    parser.add_argument("--cells", action="store_true",
                        help="cells differ: each shows each of its image's labels with probability 0.55 (the image's "
                             "labels are the union of its cells'); also write the truth, cells/<Image>.png (uint16 "
                             "instance masks) and cells.csv (Image,Cell,Label)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.data.synthetic import write_demo_dataset
    from protloc.files import check_output_path

    check_output_path(args.out, folder=True)

    write_demo_dataset(args.out, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=args.seed, workers=args.workers,
                       cells=args.cells)
    cells = " with per-cell masks and labels" if args.cells else ""
    print(f"wrote {args.n_train} train and {args.n_test} test images ({args.size}x{args.size}){cells} to {args.out}")
    return 0
