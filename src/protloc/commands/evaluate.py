"""`protloc evaluate RUN DATA --out DIR`: how well a run labels a labelled dataset, class by class."""
from __future__ import annotations

import argparse

from protloc.commands._options import (add_bit_depth_option, add_gray_as_option, add_inference_options, add_process_options,
                                       add_run_data_options, add_stain_map_option, announce_reading, ranks_from_args,
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
    parser.add_argument("--cells", action="store_true",
                        help="also score per cell on data with per-cell truth (DATA/cells.csv, DATA/cells/<Image>.png; "
                             "demo-data --cells writes them): per-cell macro F1 and the HPA single-cell competition's "
                             "mAP, each beside the baseline \"every cell gets its image's labels\"; into "
                             "DIR/cell_metrics.json")
    parser.add_argument("--masks", default=None, metavar="DIR",
                        help="with --cells: the cells to label, DIR/<id>.png (default: found by segmentation); "
                             "they are matched to the true cells at IoU >= 0.6")
    add_process_options(add_inference_options(parser))
    add_run_data_options(parser)
    add_gray_as_option(parser)
    add_bit_depth_option(parser)
    add_stain_map_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.errors import ProtlocError
    from protloc.files import atomic_dir, check_output_path
    from protloc.inference.predictor import load_predictor
    from protloc.reports.evaluate import check_label_names, evaluate_table, write_evaluation
    from protloc.runs import load_config

    check_output_path(args.out, folder=True, inputs=[args.data])
    if args.masks is not None and not args.cells:
        raise ProtlocError("--masks gives the cells for --cells; add --cells")
    ranks = ranks_from_args(args, args.out)
    config = load_config(args.run)
    table = read_run_dataset(args, config, args.data)
    check_label_names(table, config, str(args.data))  # before loading the model: fail fast
    if args.cells:
        from protloc.cells.evaluate import read_cell_truth

        read_cell_truth(_data_root(args.data), config.num_classes)
    device, onnx_threads = (ranks.device, ranks.threads) if ranks else (args.device, None)
    predictor = load_predictor(args.run, device=device, engine=args.engine, onnx_path=args.onnx, precision=args.precision,
                               gray_as=args.gray_as, bit_depth=args.bit_depth, stain_map=args.stain_map,
                               onnx_threads=onnx_threads)
    announce_reading(table, config, args)
    evaluation = evaluate_table(predictor, table, threshold=args.threshold, tta=args.tta, batch_size=args.batch_size,
                                workers=args.workers, data_name=str(args.data), ranks=ranks)
    if evaluation is None:
        return 0  # one of several processes: process 0 writes the evaluation (and scores the cells, with --cells)
    with atomic_dir(args.out) as out:  # a failure half way leaves no half-filled folder
        write_evaluation(evaluation, out, f"Evaluation on {args.data}", sources=list(table.frame["source"]),
                         read_image=predictor.read)
        cells = _evaluate_cells(args, predictor, table, evaluation, out) if args.cells else None
    scores = evaluation.scores["thresholds"]
    print(f"{len(table)} images: macro F1 {scores['f1_macro']:.4f}, micro F1 {scores['f1_micro']:.4f}, "
          f"course F-score {scores['fscore_course']:.4f} ({evaluation.threshold_source}); "
          f"{sample_note(config, args.data)}; open {args.out}/index.html")
    if cells is not None:
        print(f"{cells['true_cells']} cells ({cells['matched_cells']} matched by {cells['masks']}): per-cell macro F1 "
              f"{cells['cell_macro_f1']:.4f} (baseline {cells['baseline_cell_macro_f1']:.4f}), mAP "
              f"{cells['cell_map']:.4f} (baseline {cells['baseline_cell_map']:.4f})")
    return 0


def _data_root(data: str):
    """The dataset's folder, where cells.csv and cells/ lie."""
    from pathlib import Path

    return Path(data) if Path(data).is_dir() else Path(data).parent


def _evaluate_cells(args: argparse.Namespace, predictor, table, evaluation, out) -> dict:
    from protloc.cells.evaluate import CELL_METRICS_FILE, evaluate_cells
    from protloc.files import write_json

    cells = evaluate_cells(predictor, table, evaluation.probabilities, _data_root(args.data), args.masks, tta=args.tta,
                           batch_size=args.batch_size, show_progress=True)
    write_json(out / CELL_METRICS_FILE, cells)
    return cells


def sample_note(config, data) -> str:
    """Whether these scores are in-sample: DATA is the folder or file RUN trained on (and tuned its thresholds on)."""
    from pathlib import Path

    trained_on = (config.training.recipe or {}).get("data")
    if trained_on and Path(trained_on).resolve() == Path(data).resolve():
        return "IN-SAMPLE: RUN trained on these images, so these scores flatter it"
    return "held out, unless these images were also in RUN's training data"
