"""`protloc report RUN [--data DATA]`: one HTML page with everything about a run."""
from __future__ import annotations

import argparse
from pathlib import Path

from protloc.commands._options import add_inference_options, add_run_data_options
from protloc.runs import REPORT_FILE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="one HTML page for a run: scores, curves, sample class maps, then its configuration",
        description=f"Write RUN/{REPORT_FILE} (or --out): the run's validation scores and training curves and, "
                    "with --data, its evaluation on DATA and class-activation maps of DATA's first images "
                    "(files in RUN/report/); every figure of the run folder; its configuration last.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("--data", default=None, metavar="DATA",
                        help="dataset to evaluate on and take sample images from (labelled for an evaluation)")
    parser.add_argument("--out", default=None, metavar="FILE", help=f"the page to write (default: RUN/{REPORT_FILE})")
    parser.add_argument("--samples", type=int, default=6, metavar="N",
                        help="sample images with class-activation maps, the first N of DATA (default %(default)s)")
    # No --engine onnx: the sample maps need the torch model.
    add_inference_options(parser, engine_choice=False)
    add_run_data_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.commands._options import read_run_dataset
    from protloc.devices import resolve_device
    from protloc.errors import ProtlocError
    from protloc.files import atomic_dir, check_output_path
    from protloc.reports.run_report import REPORT_DIR, build_report
    from protloc.runs import load_config

    if args.samples < 0:
        raise ProtlocError(f"--samples {args.samples}: expected 0 or more")
    check_output_path(args.out or Path(args.run) / REPORT_FILE, inputs=[args.data])
    config = load_config(args.run)
    table = read_run_dataset(args, config, args.data) if args.data else None
    options = dict(table=table, data_name=str(args.data or ""), out_file=args.out, samples=args.samples, tta=args.tta,
                   batch_size=args.batch_size, workers=args.workers, device=resolve_device(args.device),
                   precision=args.precision)
    if table is None:
        page = build_report(args.run, **options)
    else:
        files = check_output_path(Path(args.run) / REPORT_DIR, folder=True, inputs=[args.data])
        with atomic_dir(files) as staging:  # the evaluation and samples: all of them or none
            page = build_report(args.run, files_dir=staging, **options)
    print(f"report written: {page}")
    return 0
