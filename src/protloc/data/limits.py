"""What an image file may be before it is decoded: the errors of reading one, and the pixel limit its header is
checked against. Below every reader (images.py, microscopy.py), so that they share one limit and one error."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

# The most pixels one image may have, counted as height x width x channels and read from the file's header
# before anything is decoded: a small compressed file can otherwise expand to gigabytes. Well above a
# 4096 x 4096 four-stain image (67 million). The environment variable, when set, takes precedence.
MAX_PIXELS = 100_000_000
MAX_PIXELS_VARIABLE = "PROTLOC_MAX_PIXELS"


class ImageReadError(Exception):
    """An image that cannot be decoded; the message says why. `path` names the failing file where the caller
    could not know it (one stain of a stain set); otherwise the caller adds where."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = path


class ImageTooLarge(ImageReadError):
    """More pixels (or decoded bytes) than the limit, known from the header before decoding."""


class UnsupportedImage(ImageReadError):
    """Not an image format the reader takes."""


def pixel_limit() -> int:
    """PROTLOC_MAX_PIXELS when set, else MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ImageReadError(f"{MAX_PIXELS_VARIABLE}={text!r}: expected a whole number of pixels, 1 or more")
    return int(text)


def check_pixel_count(shape: Sequence[int], limit: int | None = None) -> None:
    """Refuse an image whose header announces more pixels (height x width x channels) than `limit`, or than
    pixel_limit() when None. Raises ImageTooLarge."""
    count = math.prod(shape)
    # Only the default limit is the user's to raise here; a caller's own (the service's --max-pixels) is not.
    how_to_raise = f" (raise it with {MAX_PIXELS_VARIABLE} or protloc.data.limits.MAX_PIXELS)" if limit is None else ""
    limit = limit or pixel_limit()
    if count > limit:
        raise ImageTooLarge(
            f"{' x '.join(map(str, shape))} image: {count:,} pixels, more than the limit of {limit:,}{how_to_raise}")
