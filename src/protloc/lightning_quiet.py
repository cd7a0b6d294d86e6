"""Lightning's own messages and the warnings about what protloc does on purpose, left out: for training and for
prediction in several processes alike. Both are scoped: logger levels and warning filters are restored on leaving."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

# Where Lightning logs its banners ("GPU available: ...", the litlogger tip, "`Trainer.fit` stopped").
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@contextlib.contextmanager
def lightning_output(verbose: bool) -> Iterator[None]:
    """Lightning's banners and tips (INFO logs) only when `verbose`."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    if not verbose:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def expected_warnings_ignored() -> Iterator[None]:
    """Lightning's warnings about what training does on purpose, left out even when verbose."""
    with warnings.catch_warnings():
        # The frozen backbone's BatchNorm layers are in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        # Resuming writes into the phase's own checkpoint folder, on purpose.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # --device cpu on a machine with a GPU is the user's choice.
        warnings.filterwarnings("ignore", message=r"GPU available but not used")
        # Lightning 2.6's own uses of torch APIs that torch 2.14 deprecates; nothing to act on here.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
        yield
