"""`protloc explore DATA --out DIR`: plots and tables that describe a dataset before training on it."""
from __future__ import annotations

import argparse

from protloc.commands._options import add_dataset_options, add_recursive_option, add_subset_option, read_dataset_from_args
from protloc.data import BIT_DEPTHS, BIT_DEPTHS_TEXT


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explore", help="plot a dataset's class balance, label co-occurrence, samples and channel statistics",
        description="Write PNG plots, summary.json, channel_stats.json and index.html describing DATA.",
    )
    parser.add_argument("data", metavar="DATA", help="dataset folder, CSV file or folder of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the plots and index.html")
    add_subset_option(parser)
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help="compute channel statistics on a random sample of N images (default: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the sample images and --max-images sample (default %(default)s)")
    parser.add_argument("--bit-depth", type=int, choices=BIT_DEPTHS, default=None, metavar="N",
                        help=f"intensity scale of the images, {BIT_DEPTHS_TEXT} (12 for 12-bit camera data in 16-bit "
                             "files), as protloc train --bit-depth (default: detected as train detects it)")
    add_dataset_options(parser)
    add_recursive_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.errors import ProtlocError
    from protloc.files import atomic_dir, check_output_path
    from protloc.reports.explore import explore_dataset

    if args.max_images is not None and args.max_images < 1:
        raise ProtlocError(f"--max-images must be at least 1, got {args.max_images}")
    check_output_path(args.out, folder=True, inputs=[args.data])
    table = read_dataset_from_args(args, split=args.subset)
    table.bit_depth = args.bit_depth
    with atomic_dir(args.out) as out:  # a failure half way leaves no half-filled folder
        summary = explore_dataset(table, out, channels=args.channels, max_images=args.max_images,
                                  seed=args.seed, source_name=str(args.data))
    print(f"{summary['images']} images explored; open {args.out}/index.html")
    return 0
