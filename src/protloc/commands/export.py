"""protloc export RUN [--out FILE]: the run's model as ONNX (probabilities out), checked against torch."""
from __future__ import annotations

import argparse
from pathlib import Path

from protloc.runs import ONNX_FILE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a run's model to ONNX",
        description="Export a run's model to ONNX: input 'image' (N, channels, size, size) normalised as the run's "
                    "config says, output 'probabilities' (N, classes) after the sigmoid; dynamic batch axis. "
                    "The file is validated with onnx.checker and compared with torch (max difference 1e-4) before it is kept.")
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help=f"ONNX file to write (default RUN/{ONNX_FILE}, where --engine onnx looks)")
    # None, not onnx_export.DEFAULT_OPSET: importing that module loads torch, too slow for --help.
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset version (default 17)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.files import check_output_path, digest_path
    from protloc.inference.onnx_export import DEFAULT_OPSET, export_onnx, weights_digest
    from protloc.inference.outliers import load_scorer
    from protloc.models.run_weights import load_run

    path = check_output_path(args.out or Path(args.run) / ONNX_FILE)
    check_output_path(digest_path(path), option="--out (its digest)")  # FILE.sha256 beside it
    config, model = load_run(args.run)
    scorer = load_scorer(args.run, config, model)
    difference = export_onnx(model, config, path, opset=args.opset or DEFAULT_OPSET, weights_digest=weights_digest(args.run),
                             scorer=scorer)
    scores = " and an outlier score" if scorer is not None else ""
    print(f"wrote {path}: {config.backbone}, {config.in_chans}x{config.image_size}x{config.image_size} -> "
          f"{config.num_classes} probabilities{scores}; ONNX Runtime matches torch within {difference:.1e}")
    return 0
