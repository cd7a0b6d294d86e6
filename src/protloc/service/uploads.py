"""Uploaded bytes -> image arrays: data/images.py's one decoder, so the service sees what `protloc predict` sees.

Only two things are the service's own: which decoders an upload may reach (PNG and JPEG through PIL, TIFF
through tifffile: fewer formats, fewer parser bugs) and its pixel limit (`--max-pixels`), both passed to
`decode_image`, which checks the pixel count from the header before any pixel is decoded. `http_status`
maps the decoder's errors onto HTTP.
"""
from __future__ import annotations


import numpy as np

from protloc.data.images import ImageReadError, ImageTooLarge, UnsupportedImage, fit_stored, read_image, to_uint8

UPLOAD_FORMATS = ("PNG", "JPEG")


def decode_upload(data: bytes, *, max_pixels: int, bit_depth: int | None = None, channels: int | None = None,
                  stain_map: dict | None = None) -> np.ndarray:
    """An uploaded PNG, JPEG or TIFF file -> uint8 (H, W, C), C in 1, 3, 4, as `protloc predict` reads files; an
    OME-TIFF's named channels picked by name for a run of `channels` (images.fit_stored, `stain_map`).
    Raises ImageReadError: ImageTooLarge (over `max_pixels`, height x width x channels, known from the header),
    UnsupportedImage (another format) or a damaged file or unexpected shape."""
    stored = read_image(data, max_pixels=max_pixels, formats=UPLOAD_FORMATS)
    if stored.channel_names and channels:
        return fit_stored(stored, channels, bit_depth=bit_depth, stain_map=stain_map)
    return to_uint8(stored.pixels, bit_depth)


def http_status(error: ImageReadError) -> int:
    """413 for an image over the limit, 415 for a format the service does not take, 422 for the rest."""
    return 413 if isinstance(error, ImageTooLarge) else 415 if isinstance(error, UnsupportedImage) else 422
