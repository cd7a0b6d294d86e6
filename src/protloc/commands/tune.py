"""protloc tune RUN DATA: retune a run's per-class thresholds on other labelled data."""
from __future__ import annotations

import argparse
from pathlib import Path

from protloc.commands._options import (add_bit_depth_option, add_gray_as_option, add_inference_options,
                                       add_run_data_options, add_stain_map_option, announce_reading)
from protloc.runs import CONFIG_FILE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="retune a run's per-class thresholds on labelled data",
        description="Predict DATA (labelled) with the run, choose each class's threshold for the best F1, print macro F1 "
                    f"before and after, and write the thresholds into RUN/{CONFIG_FILE}. DATA's classes must be the run's.")
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("data", metavar="DATA", help="labelled dataset folder or CSV")
    add_run_data_options(parser)
    add_gray_as_option(parser)
    add_bit_depth_option(parser)
    add_stain_map_option(parser)
    add_inference_options(parser)
    parser.add_argument("--dry-run", action="store_true", help=f"print the table but leave {CONFIG_FILE} unchanged")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from protloc.commands._options import read_run_dataset
    from protloc.errors import DataError, ProtlocError, listed
    from protloc.files import check_output_path
    from protloc.data.check import find_missing_files
    from protloc.inference.predictor import load_predictor
    from protloc.inference.thresholds import apply_thresholds, tune_thresholds
    from protloc.runs import load_config, save_config
    from protloc.training.metrics import multilabel_scores

    config = load_config(args.run)
    if not args.dry_run:
        check_output_path(Path(args.run) / CONFIG_FILE, option="RUN", replaces_run_file=True)
    table = read_run_dataset(args, config, args.data)
    if not table.labelled:  # tuning on no positives would set every threshold to 0.5
        raise DataError(f"{args.data}: has no labels ({table.layout} layout); tune needs labelled data with the run's "
                        f"classes, e.g. a train.csv; thresholds unchanged")
    if list(table.label_set.names) != list(config.label_names):
        raise ProtlocError(
            f"{args.data}: its labels are {table.label_set.name} ({len(table.label_set)} classes) but {args.run} predicts "
            f"{config.label_set} ({config.num_classes} classes); tune on data labelled with the run's classes (see --labels)"
        )
    missing = find_missing_files(table)
    if missing:
        raise DataError(*listed(missing), f"{len(missing)} image files named by {args.data} are missing; thresholds unchanged")
    predictor = load_predictor(args.run, device=args.device, engine=args.engine, onnx_path=args.onnx,
                               precision=args.precision, gray_as=args.gray_as, bit_depth=args.bit_depth,
                               stain_map=args.stain_map)
    announce_reading(table, config, args)
    result = predictor.predict_table(table, batch_size=args.batch_size, workers=args.workers, tta=args.tta,
                                     show_progress=True)
    if result.unreadable:
        raise DataError(*listed(result.unreadable),
                        f"{len(result.unreadable)} of {len(table)} images could not be read; thresholds unchanged")
    probabilities = result.outputs

    targets = table.targets
    old = np.asarray(config.thresholds, dtype=np.float64)
    # A class without positive images in DATA says nothing about its threshold: the run's stays.
    absent = targets.sum(axis=0) == 0
    new = np.where(absent, old, tune_thresholds(targets, probabilities))
    # Scored as predict labels images: at least one label each.
    before = multilabel_scores(targets, apply_thresholds(probabilities, old))
    after = multilabel_scores(targets, apply_thresholds(probabilities, new))
    report = pd.DataFrame({
        "class": config.label_names,
        "threshold before": old, "threshold after": new,
        "F1 before": before["f1_per_class"], "F1 after": after["f1_per_class"],
    })
    report.loc[len(report)] = ["macro F1", np.nan, np.nan, before["f1_macro"], after["f1_macro"]]
    print(report.to_string(index=False, float_format=lambda value: f"{value:.3f}", na_rep=""))
    if absent.any():
        names = ", ".join(name for name, gone in zip(config.label_names, absent) if gone)
        print(f"kept the run's thresholds of {absent.sum()} classes without positive images in {args.data}: {names}")

    if args.dry_run:
        print(f"dry run: {args.run}/{CONFIG_FILE} unchanged")
        return 0
    config.thresholds = [float(value) for value in new]
    config.training.thresholds_tuned_on = {
        "data": str(args.data), "images": len(table), "tta": bool(args.tta),
        "f1_macro_before": before["f1_macro"], "f1_macro_after": after["f1_macro"],
    }
    save_config(args.run, config)
    print(f"wrote {config.num_classes} thresholds into {args.run}/{CONFIG_FILE} "
          f"(macro F1 on {len(table)} images: {before['f1_macro']:.3f} -> {after['f1_macro']:.3f})")
    return 0
