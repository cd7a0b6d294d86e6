"""protloc check DATA: validate a whole dataset, reporting every problem at once."""
from __future__ import annotations

import argparse

from protloc.commands._options import add_dataset_options, add_recursive_option, add_stain_map_option


def register(subparsers) -> None:
    parser = subparsers.add_parser("check", help="validate a dataset and list every problem",
                                   description="Validate a dataset: CSV format, labels, ids and every image. Exit 0 when clean, 2 otherwise.")
    parser.add_argument("data", metavar="DATA", help="dataset folder or CSV file")
    add_dataset_options(parser)
    add_recursive_option(parser)
    add_stain_map_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.data.check import check_dataset
    from protloc.errors import DataError, listed
    from protloc.labels import get_label_set

    label_set = get_label_set(args.labels) if args.labels else None
    report = check_dataset(args.data, layout=args.format, label_set=label_set, channels=args.channels,
                           recursive=args.recursive, stain_map=args.stain_map)
    if not report.ok:
        raise DataError(*listed(report.problems), f"{len(report.problems)} problem(s) found in {args.data}")
    for note in report.notes:
        print(f"note: {note}")
    test_part = f" and {report.n_test_images} test images" if report.n_test_images else ""
    if not report.labelled:  # nothing to say about labels: say what was checked
        print(f"OK: {args.data} ({report.layout} layout) — {report.n_images} unlabelled images{test_part}, each "
              f"readable with the {args.channels} channels asked for; no labels to check (for training, give a "
              "train.csv or a CSV with a labels column)")
        return 0
    print(f"OK: {args.data} ({report.layout} layout) — {report.n_images} labelled images{test_part}, no problems")
    return 0
