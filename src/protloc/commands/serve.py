"""protloc serve RUN: a trained run over HTTP (a web page, GET /health, POST /predict); see protloc/service/app.py."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a trained run over HTTP (web page and JSON API)",
        description="Serve a trained run over HTTP until Ctrl-C. GET / is a page to upload an image and see its "
                    "probabilities; GET /health describes the run; POST /predict takes the raw image file as the "
                    "body (PNG, JPEG or TIFF) with optional ?tta=1&threshold=0.4&allow_empty=1 and answers JSON "
                    '{"labels": [...], "probabilities": {class: p}, "thresholds": {class: t}}. '
                    "Example: curl --data-binary @cell.png -H 'Content-Type: image/png' http://127.0.0.1:8000/predict")
    parser.add_argument("run", help="run folder (config.json + model.safetensors) written by protloc train")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                        help="torch, or onnx (ONNX Runtime on RUN/model.onnx or --onnx FILE; see protloc export)")
    parser.add_argument("--onnx", default=None, metavar="FILE", help="ONNX file for --engine onnx (default RUN/model.onnx)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bfloat16 where the hardware has it natively, else fp32 (default auto)")
    # The literal, not service.app's DEFAULT_MAX_BYTES: importing that module loads torch, too slow for --help.
    parser.add_argument("--max-bytes", type=int, default=50 * 1024 * 1024, metavar="BYTES",
                        help="largest image upload accepted, in bytes; larger ones get 413 (default 50 MiB)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.service.app import make_server

    server = make_server(args.run, args.host, args.port, engine=args.engine, onnx_path=args.onnx,
                         device=args.device, precision=args.precision, max_bytes=args.max_bytes)
    try:  # the line inside: Ctrl-C right after it is still a clean stop
        print(f"serving {args.run} on {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("protloc serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
