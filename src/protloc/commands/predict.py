"""protloc predict RUN INPUT... --out FILE: label images with a trained run, in Kaggle submission format."""
from __future__ import annotations

import argparse
import sys

from protloc.commands._options import (add_bit_depth_option, add_cache_options, add_gray_as_option, add_inference_options,
                                       add_process_options, add_recursive_option, add_stain_map_option, announce_reading,
                                       image_cache_from_args, ranks_from_args, threshold_value)


def register(subparsers) -> None:
    from protloc.data import LAYOUTS

    parser = subparsers.add_parser(
        "predict", help="predict localisations for images with a trained run",
        description="Predict localisations with a trained run. INPUT is a dataset folder (its test images: "
                    "Zero-to-GANs test/ in submission.csv order, or HPA 2018 sample_submission.csv ids), a CSV, "
                    "a folder of images, or image files; stain files <Id>_<stain>.png (red, green, blue, yellow) are one "
                    "image per Id. Writes the input's Kaggle submission format: "
                    "Image,Label (HPA 2018: Id,Predicted), labels as space-separated class numbers.")
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="dataset folder, CSV, image folder or image files")
    parser.add_argument("--out", required=True, metavar="FILE", help="CSV file to write")
    parser.add_argument("--format", choices=LAYOUTS, default=None, help="input layout (default: detected)")
    parser.add_argument("--probabilities", action="store_true",
                        help="write the id, one probability column per class (named by class), then outlier_score "
                             "(higher: less like the training images) and outlier (above the run's threshold: the "
                             "labels deserve doubt) instead of labels")
    parser.add_argument("--label-names", action="store_true",
                        help="also write the predicted classes by name, \"; \"-joined, in a column 'Class names' (after "
                             "the class numbers, or before the probabilities); the file is then more than a Kaggle "
                             "submission")
    parser.add_argument("--threshold", type=threshold_value, default=None,
                        help="one threshold for every class instead of the run's tuned per-class thresholds")
    parser.add_argument("--allow-empty", action="store_true",
                        help="allow images with no label (default: each image gets at least its most likely class)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="unreadable images: fail (exit 2, nothing written) or skip (left out of the file, each "
                             "named) (default %(default)s)")
    parser.add_argument("--cells", action="store_true",
                        help="one row per cell instead of per image: Image,Cell,Label (with --probabilities: one "
                             "column per class and the cell's geometry); cells from --masks or found by protloc "
                             "segment's method (docs/cells.md)")
    parser.add_argument("--masks", default=None, metavar="DIR",
                        help="with --cells: the cells of each image, DIR/<id>.png (or .tif) label images: 0 background, "
                             "k for cell k (from protloc segment, cellpose, CellProfiler, HPA-Cell-Segmentation)")
    add_gray_as_option(parser)
    add_recursive_option(parser)
    add_bit_depth_option(parser)
    add_stain_map_option(parser)
    add_process_options(add_inference_options(parser))
    add_cache_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from protloc.data.readers import read_inputs
    from protloc.errors import DataError, ProtlocError, listed
    from protloc.files import check_output_path, write_csv
    from protloc.data.check import find_missing_files
    from protloc.inference.predictor import load_predictor
    from protloc.inference.submission import PROBABILITY_DECIMALS, output_layout, probability_frame, submission_frame
    from protloc.labels import LabelSet
    from protloc.runs import load_config

    check_output_path(args.out, inputs=args.inputs)
    if args.masks is not None and not args.cells:
        raise ProtlocError("--masks gives the cells for --cells; add --cells")
    if args.masks is not None and not Path(args.masks).is_dir():
        raise ProtlocError(f"--masks {args.masks}: not a folder")
    ranks = ranks_from_args(args, args.out)  # before the input: several machines without a launcher fail at once
    config = load_config(args.run)
    # The input first: its problems show before the model loads (or is exported for ONNX Runtime).
    label_set = LabelSet(config.label_set, tuple(config.label_names))
    table = read_inputs(args.inputs, layout=args.format, split="test", label_set=label_set, channels=config.in_chans,
                        recursive=args.recursive, gray_as=args.gray_as)
    missing = find_missing_files(table) if args.on_error == "fail" else []
    if missing:
        raise DataError(*listed(missing), f"{len(missing)} image files named by the input are missing; nothing "
                                          f"written (--on-error skip writes the others)")
    device, onnx_threads = (ranks.device, ranks.threads) if ranks else (args.device, None)
    predictor = load_predictor(args.run, device=device, engine=args.engine, onnx_path=args.onnx, precision=args.precision,
                               gray_as=args.gray_as, bit_depth=args.bit_depth, stain_map=args.stain_map,
                               cache=image_cache_from_args(args), onnx_threads=onnx_threads)
    announce_reading(table, config, args)
    result = predictor.predict_table(table, batch_size=args.batch_size, workers=args.workers, tta=args.tta,
                                     show_progress=True, ranks=ranks)
    # Several processes share the per-cell step too, every one of them before any may stop over a problem.
    shared_cells = _cells_on_ranks(args, predictor, table, ranks) if args.cells and ranks else None
    if result is None:
        return 0  # one of several processes: process 0 writes the whole table
    probabilities, ok, problems = result.outputs, result.ok, result.unreadable
    if problems:
        if args.on_error == "fail" and len(table) == 1:
            raise DataError(*problems)  # the one line says it all
        if args.on_error == "fail":
            raise DataError(*listed(problems), f"{len(problems)} of {len(table)} images could not be read; nothing "
                                               f"written (--on-error skip writes the others)")
        if not ok.any():
            raise DataError(*listed(problems), f"none of the {len(table)} images could be read; nothing written")
        for line in problems:
            print(f"protloc: warning: skipped {line}", file=sys.stderr)
        print(f"protloc: warning: skipped {len(problems)} of {len(table)} images that could not be read", file=sys.stderr)

    if args.cells:
        rows = np.flatnonzero(ok)
        return _write_cells(args, predictor, table.subset(rows), probabilities[ok],
                            [shared_cells[row] for row in rows] if shared_cells is not None else None)
    ids = table.frame["id"][ok].tolist()
    layout = output_layout(table.layout, config.layout)
    decided = predictor.decide(probabilities[ok], threshold=args.threshold, allow_empty=args.allow_empty)
    names = config.label_names if args.label_names else None
    scores = result.outlier_scores[ok] if result.outlier_scores is not None else None
    outliers = predictor.flag_outliers(scores)
    if args.probabilities:
        frame = probability_frame(ids, probabilities[ok], config.label_names, layout,
                                  predicted=decided if args.label_names else None)
        if outliers is not None:
            frame["outlier_score"] = scores.round(PROBABILITY_DECIMALS)
            frame["outlier"] = outliers
    else:  # the Kaggle format, exactly: id and labels (and class names only when asked)
        frame = submission_frame(ids, decided, layout, label_names=names)
    write_csv(args.out, frame)
    what = f"probabilities of {config.num_classes} classes" if args.probabilities else ",".join(frame.columns)
    print(f"model {config.trained_on}")
    print(f"wrote {args.out}: {len(frame)} images ({what})")
    if outliers is not None and outliers.any():
        print(f"protloc: warning: {int(outliers.sum())} of {len(outliers)} images are unlike the images the model was "
              f"trained on (outlier score above {predictor.outlier_threshold:.4g}); their labels deserve doubt"
              + ("" if args.probabilities else " (--probabilities names them)"), file=sys.stderr)
    return 0


def _cells_on_ranks(args: argparse.Namespace, predictor, table, ranks):
    from protloc.cells.predict import cells_on_ranks

    return cells_on_ranks(predictor, table, args.masks, ranks=ranks, tta=args.tta, batch_size=args.batch_size,
                          show_progress=True)


def _write_cells(args: argparse.Namespace, predictor, table, image_probabilities, shared_cells=None) -> int:
    """The per-cell file: each image's cells (its mask, or segmentation) labelled one by one; `shared_cells`, per
    row of `table`, what several processes found (cells_on_ranks), else found here."""
    from protloc.cells.predict import cell_frame, finish_cells, predict_table_cells
    from protloc.errors import DataError, listed
    from protloc.files import write_csv

    predictions, problems = [], []
    if shared_cells is None:
        found = ((prediction, problem) for _row, prediction, _mask, problem in predict_table_cells(
            predictor, table, image_probabilities, args.masks, tta=args.tta, batch_size=args.batch_size,
            show_progress=True))
    else:
        found = ((finish_cells(predictor, str(image_id), geometry, probabilities, own) if not problem else None, problem)
                 for image_id, probabilities, (geometry, own, problem)
                 in zip(table.frame["id"], image_probabilities, shared_cells))
    for prediction, problem in found:
        if problem:
            problems.append(problem)
        else:
            predictions.append(prediction)
    if problems and len(table) == 1:
        raise DataError(*problems)  # the one line says it all
    if problems and (args.on_error == "fail" or not predictions):
        raise DataError(*listed(problems), f"{len(problems)} of {len(table)} images have no cells to label; nothing "
                                           "written" + (" (--on-error skip writes the others)" if predictions else ""))
    for line in problems:
        print(f"protloc: warning: skipped {line}", file=sys.stderr)
    frame = cell_frame(predictions, predictor.label_names, probabilities=args.probabilities)
    write_csv(args.out, frame)
    print(f"wrote {args.out}: {len(frame)} cells of {len(predictions)} images ({','.join(frame.columns[:3])}...)")
    return 0
