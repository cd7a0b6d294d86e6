"""Writing output files so that an interrupted command never leaves a half-written one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

TEMP_SUFFIX = ".part"  # of the temporary files atomic_path writes: `.NAME.RANDOM.part` beside NAME


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    # mkstemp makes owner-only files; outputs get the usual permissions (what the umask allows).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, frame) -> None:
    """A pandas DataFrame as CSV, without its index."""
    with atomic_path(path) as temp:
        frame.to_csv(temp, index=False)


def save_figure(path: str | Path, figure) -> None:
    """A matplotlib figure as PNG, then closed to free its memory."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
