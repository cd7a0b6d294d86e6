"""protloc serve RUN: a trained run over HTTP (a page for people, a JSON API); see protloc/service/app.py."""
from __future__ import annotations

import argparse

from protloc.commands._options import add_engine_choice, add_device_options
from protloc.service.limits import ServiceLimits  # dataclass only: no web framework imported for --help

# The literals, not service.limits' defaults: importing the service loads torch, too slow for --help.
MIB = 1024 * 1024


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected 1 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive number of seconds")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a trained run over HTTP (web page and JSON API)",
        description="Serve a trained run over HTTP until Ctrl-C. GET / is a page to drop images on, see their "
                    "labels and class-activation maps and download a CSV; POST /predict takes images (multipart field "
                    "'files', or a stain set in fields red, green, blue[, yellow]) and answers labels and "
                    "probabilities as JSON; POST /explain gives class-activation maps (HiResCAM, a Grad-CAM variant); /docs documents the API. "
                    "Example: curl -F files=@cell.png http://127.0.0.1:8000/predict")
    parser.add_argument("run", metavar="RUN", help="run folder (config.json + model.safetensors) written by protloc train")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: 127.0.0.1 is this machine only, 0.0.0.0 every interface (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default %(default)s)")
    add_engine_choice(parser)
    add_device_options(parser)  # --workers: threads decoding uploads; --batch-size: images per forward pass
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-bytes", type=positive_int, default=50 * MIB, metavar="BYTES",
                        help="largest request body; larger ones get 413 (default %(default)s = 50 MiB)")
    limits.add_argument("--max-pixels", type=positive_int, default=ServiceLimits.max_pixels, metavar="N",
                        help="largest image, in pixels (height x width x channels, as predict counts them), read "
                             "from the file's header before decoding; larger ones get 413 (default %(default)s)")
    limits.add_argument("--max-connections", type=positive_int, default=64, metavar="N",
                        help="open connections; more get 503 (default %(default)s)")
    limits.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                        help="a request not answered within this gets 408 (body still arriving) or 503 (default %(default)s)")
    access = parser.add_argument_group("access")
    access.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                        help="also accept requests whose Host header is NAME (repeatable; '*' for any). By default "
                             "only the address served on, or this machine's names when serving on 0.0.0.0")
    access.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. https://lab.example.org) call the API from a "
                             "browser (repeatable; none by default)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.devices import resolve_device, resolve_precision
    from protloc.service.server import serve

    device = resolve_device(args.device)
    limits = ServiceLimits(max_upload_bytes=args.max_bytes, max_pixels=args.max_pixels,
                           max_connections=args.max_connections, request_timeout_s=args.timeout,
                           header_timeout_s=min(ServiceLimits.header_timeout_s, args.timeout),
                           batch_size=args.batch_size, decode_slots=max(1, args.workers))
    try:
        serve(args.run, host=args.host, port=args.port, engine=args.engine, onnx_path=args.onnx, device=device,
              precision=resolve_precision(args.precision, device), limits=limits,
              allowed_hosts=args.allowed_host or [], cors_origins=args.cors_origin or [])
    except KeyboardInterrupt:
        pass  # uvicorn has already said it is shutting down
    return 0
