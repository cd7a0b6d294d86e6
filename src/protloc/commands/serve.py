"""protloc serve RUN: a trained run over HTTP (a web page, GET /health, POST /predict); see protloc/service/app.py."""
from __future__ import annotations

import argparse
import sys

from protloc.commands._options import add_engine_choice, add_engine_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a trained run over HTTP (web page and JSON API)",
        description="Serve a trained run over HTTP until Ctrl-C. GET / is a page to upload an image and see its "
                    "probabilities; GET /health describes the run; POST /predict takes the raw image file as the "
                    "body (PNG, JPEG or TIFF) with optional ?tta=1&threshold=0.4&allow_empty=1 and answers JSON "
                    '{"labels": [...], "probabilities": {class: p}, "thresholds": {class: t}}. '
                    "Example: curl --data-binary @cell.png -H 'Content-Type: image/png' http://127.0.0.1:8000/predict")
    parser.add_argument("run", metavar="RUN", help="run folder written by protloc train")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: 127.0.0.1 is this machine only, 0.0.0.0 every interface "
                             "(default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default %(default)s)")
    # The literal, not service.app's DEFAULT_MAX_BYTES: importing that module loads torch, too slow for --help.
    parser.add_argument("--max-bytes", type=int, default=50 * 1024 * 1024, metavar="BYTES",
                        help="largest image upload accepted, in bytes; larger ones get 413 (default %(default)s = 50 MiB)")
    add_engine_options(parser, batches=False)
    add_engine_choice(parser)
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
