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
    from protloc.commands._options import read_run_dataset
    from protloc.files import check_output_path
    from protloc.inference.predictor import load_predictor
    from protloc.runs import load_config, save_config
    from protloc.tuning import check_tuning_data, retune

    config = load_config(args.run)
    if not args.dry_run:
        check_output_path(Path(args.run) / CONFIG_FILE, option="RUN", replaces_run_file=True)
    table = read_run_dataset(args, config, args.data)
    check_tuning_data(table, config, data=str(args.data), run=str(args.run))
    predictor = load_predictor(args.run, device=args.device, engine=args.engine, onnx_path=args.onnx,
                               precision=args.precision, gray_as=args.gray_as, bit_depth=args.bit_depth,
                               stain_map=args.stain_map)
    announce_reading(table, config, args)
    retuning = retune(predictor, table, data=str(args.data), tta=args.tta, batch_size=args.batch_size,
                      workers=args.workers, show_progress=True)
    print(retuning.table().to_string(index=False, float_format=lambda value: f"{value:.3f}", na_rep=""))
    if retuning.kept:
        print(f"kept the run's thresholds of {len(retuning.kept)} classes without positive images in {args.data}: "
              f"{', '.join(retuning.kept)}")
    if args.dry_run:
        print(f"dry run: {args.run}/{CONFIG_FILE} unchanged")
        return 0
    retuning.apply_to(config)
    save_config(args.run, config)
    print(f"wrote {config.num_classes} thresholds into {args.run}/{CONFIG_FILE} (macro F1 on {len(table)} images: "
          f"{retuning.before['f1_macro']:.3f} -> {retuning.after['f1_macro']:.3f})")
    return 0
