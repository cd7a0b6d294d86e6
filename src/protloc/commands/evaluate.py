"""`protloc evaluate RUN DATA --out DIR`: how well a run labels a labelled dataset, class by class."""
from __future__ import annotations

import argparse

from protloc.commands._options import (add_bit_depth_option, add_gray_as_option, add_inference_options,
                                       add_run_data_options, add_stain_map_option, announce_reading,
                                       read_run_dataset, threshold_value)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="per-class precision/recall/F1, PR curves and frequent mistakes on labelled data",
        description="Predict labelled DATA with RUN's model and write metrics.json, predictions.csv, "
                    "PNG plots and index.html into DIR.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("data", metavar="DATA", help="labelled dataset (folder or CSV) with the run's classes")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the evaluation")
    parser.add_argument("--threshold", type=threshold_value, default=None, metavar="T",
                        help="one threshold for every class instead of the run's per-class thresholds")
    add_inference_options(parser)
    add_run_data_options(parser)
    add_gray_as_option(parser)
    add_bit_depth_option(parser)
    add_stain_map_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.files import atomic_dir, check_output_path
    from protloc.inference.predictor import load_predictor
    from protloc.reports.evaluate import check_label_names, evaluate_run
    from protloc.runs import load_config

    check_output_path(args.out, folder=True)
    config = load_config(args.run)
    table = read_run_dataset(args, config, args.data)
    check_label_names(table, config, str(args.data))  # before loading the model: fail fast
    predictor = load_predictor(args.run, device=args.device, engine=args.engine, onnx_path=args.onnx,
                               precision=args.precision, gray_as=args.gray_as, bit_depth=args.bit_depth,
                               stain_map=args.stain_map)
    announce_reading(table, config, args)
    with atomic_dir(args.out) as out:  # a failure half way leaves no half-filled folder
        evaluation = evaluate_run(predictor, table, out, threshold=args.threshold, tta=args.tta,
                                  batch_size=args.batch_size, workers=args.workers, data_name=str(args.data))
    scores = evaluation.scores["thresholds"]
    print(f"{len(table)} images: macro F1 {scores['f1_macro']:.4f}, micro F1 {scores['f1_micro']:.4f}, "
          f"course F-score {scores['fscore_course']:.4f} ({evaluation.threshold_source}); "
          f"{sample_note(config, args.data)}; open {args.out}/index.html")
    return 0


def sample_note(config, data) -> str:
    """Whether these scores are in-sample: DATA is the folder or file RUN trained on (and tuned its thresholds on)."""
    from pathlib import Path

    trained_on = (config.training.recipe or {}).get("data")
    if trained_on and Path(trained_on).resolve() == Path(data).resolve():
        return "IN-SAMPLE: RUN trained on these images, so these scores flatter it"
    return "held out, unless these images were also in RUN's training data"
