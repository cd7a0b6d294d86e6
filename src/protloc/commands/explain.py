"""`protloc explain RUN IMAGE... --out DIR`: class-activation maps of where the model saw each class."""
from __future__ import annotations

import argparse
import sys

from protloc.commands._options import (add_bit_depth_option, add_engine_choice, add_device_options, add_gray_as_option,
                                       add_recursive_option,
                                       add_stain_map_option, add_subset_option, announce_reading)


def register(subparsers) -> None:
    from protloc.data import LAYOUTS

    parser = subparsers.add_parser(
        "explain", help="class-activation maps for each predicted (and each missed true) label of some images",
        description="One PNG per image: the input, its protein stain alone, the map of each target class "
                    "outlined over the input with its probability, and all class probabilities against the "
                    "run's thresholds; plus index.html. On a labelled dataset, true classes the model missed "
                    "get a map too. The maps are HiResCAM class-activation maps (a Grad-CAM variant) of the PyTorch "
                    "model; the probabilities come from --engine, batch by batch, as protloc predict gives them.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files, a folder of images, or a dataset (its test images)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and index.html")
    parser.add_argument("--target-classes", default="predicted", metavar="WHICH",
                        help="predicted, all, or class names/numbers separated by commas (default %(default)s)")
    parser.add_argument("--format", choices=LAYOUTS, default=None, help="layout of a dataset given as IMAGE")
    parser.add_argument("--cells", action="store_true",
                        help="also draw each image's cells outlined with the classes each one was given "
                             "(<id>_cells.png); cells from --masks or found by segmentation")
    parser.add_argument("--masks", default=None, metavar="DIR",
                        help="with --cells: the cells of each image, DIR/<id>.png label images (0 background)")
    add_subset_option(parser)
    add_device_options(parser)
    add_engine_choice(parser)
    add_gray_as_option(parser)
    add_recursive_option(parser)
    add_bit_depth_option(parser)
    add_stain_map_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.data.readers import read_inputs
    from protloc.files import atomic_dir, check_output_path
    from protloc.inference.predictor import load_predictor
    from protloc.inference.explanations import parse_target_classes
    from protloc.reports.explain import describe_maps, explain_table, true_classes
    from protloc.errors import DataError, ProtlocError
    from protloc.reports.cells import cell_blocks, write_cell_figures
    from protloc.reports.explain_page import write_explanation_page
    from protloc.runs import load_config

    check_output_path(args.out, folder=True, inputs=args.images)
    if args.masks is not None and not args.cells:
        raise ProtlocError("--masks gives the cells for --cells; add --cells")
    config = load_config(args.run)
    targets = parse_target_classes(args.target_classes, config.label_names)  # before loading the model: fail fast
    table = read_inputs(args.images, layout=args.format, split=args.subset, channels=config.in_chans,
                        recursive=args.recursive, gray_as=args.gray_as)
    predictor = load_predictor(args.run, device=args.device, engine=args.engine, onnx_path=args.onnx,
                               precision=args.precision, gray_as=args.gray_as,
                               bit_depth=args.bit_depth,
                               stain_map=args.stain_map)
    announce_reading(table, config, args)
    if table.labelled and true_classes(table, predictor.config) is None:
        print(f"note: the labels of {' '.join(args.images)} are not in the run's classes; "
              "true and missed classes are not shown", file=sys.stderr)
    with atomic_dir(args.out) as out:  # a failure half way leaves no half-filled folder
        explanations = explain_table(predictor, table, out, targets, batch_size=args.batch_size,
                                     workers=args.workers)
        cells = []
        if args.cells:
            cells, problems = write_cell_figures(predictor, table, out, [e.file_name for e in explanations], args.masks)
            if problems:
                raise DataError(*problems)
        write_explanation_page(explanations, predictor.config, out, describe_maps(predictor.model, predictor.config),
                               cell_blocks(cells))
    print(f"{len(explanations)} explanations written; open {args.out}/index.html")
    return 0
