"""The `protloc` command line. Each subcommand is a module in protloc/commands with `register(subparsers)`;
this file only assembles them and turns user-fixable errors into short lines and exit code 2."""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import pkgutil
import sys

import protloc.commands
from protloc import __version__
from protloc.allocator import allow_malloc_settings
from protloc.errors import ProtlocError


# --help lists commands in the order of a user's work; a new command module not named here comes last.
WORKFLOW_ORDER = ("demo_data", "check", "explore", "convert", "train", "compare", "segment", "predict", "tune",
                  "evaluate", "explain", "embed", "export", "serve", "report")


def _workflow_position(name: str) -> tuple[int, str]:
    return (WORKFLOW_ORDER.index(name) if name in WORKFLOW_ORDER else len(WORKFLOW_ORDER), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protloc",
        description="Where does a protein sit in the cell? Multi-label localisation from fluorescence images.",
    )
    parser.add_argument("--version", action="version", version=f"protloc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(protloc.commands.__path__), key=lambda m: _workflow_position(m.name)):
        if not module_info.name.startswith("_"):
            importlib.import_module(f"protloc.commands.{module_info.name}").register(subparsers)
    return parser


class _StderrNotes(logging.Handler):
    """The library's notes (the "protloc" logger, INFO and up) as "protloc: ..." lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = "warning: " if record.levelno >= logging.WARNING else ""  # an unusable image cache, a small split
        print(f"protloc: {kind}{record.getMessage()}", file=sys.stderr)


def show_library_notes() -> None:
    """Let the library's notes through to stderr (once per process): the library itself prints nothing."""
    logger = logging.getLogger("protloc")
    if not any(isinstance(handler, _StderrNotes) for handler in logger.handlers):
        logger.addHandler(_StderrNotes(logging.INFO))
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Only now, with a command to run: numpy and PIL come with it, and `protloc COMMAND --help` needs neither.
    from protloc.data.images import ImageReadError, pixel_limit

    allow_malloc_settings()  # the process is the command's own (allocator.py)
    show_library_notes()
    try:
        pixel_limit()  # a bad PROTLOC_MAX_PIXELS is said once, not once for every image
        return int(args.handler(args) or 0)
    except (ProtlocError, ImageReadError) as error:
        lines = error.lines if isinstance(error, ProtlocError) else [f"{error.path}: {error}" if error.path else str(error)]
        for line in lines:
            print(f"protloc: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("protloc: interrupted", file=sys.stderr)
        return 130


def run() -> int:
    """The `protloc` command: `main`, then an exit without the interpreter's last garbage collections. They would
    walk every object that torch, timm and Lightning made at import, for nothing as the process ends: 2.5 s of
    each command's wall time (measured). Outputs are closed by then: every file is written and renamed in place."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(run())
