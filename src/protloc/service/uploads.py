"""Uploaded bytes -> image arrays, converted as `protloc predict` converts files, with the size checked first.

An upload's pixel count is read from its header (PIL's size before `load`, tifffile's page shape before
`asarray`), so a small file that claims a huge image is refused before any pixel is decoded. Everything after
that check is data/images.py's conversion, so the service and `protloc predict` see the same arrays.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from protloc.data.images import ImageReadError, pil_to_array, to_image_array

TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
PIL_FORMATS = ("PNG", "JPEG")  # only these decoders ever see an upload: fewer formats, fewer parser bugs
# Decoded bytes allowed per pixel of the cap: a 16-bit RGBA image at the pixel cap fits, a float64 stack does not.
BYTES_PER_CAPPED_PIXEL = 8


class UploadError(Exception):
    """An upload the service refuses; `status` is the HTTP status that says why."""

    status = 422


class UnsupportedImage(UploadError):
    status = 415


class ImageTooLarge(UploadError):
    status = 413


class UnreadableImage(UploadError):
    status = 422


def decode_upload(data: bytes, *, max_pixels: int = 16_000_000, bit_depth: int | None = None) -> np.ndarray:
    """An uploaded PNG, JPEG or TIFF file -> uint8 (H, W, C), C in 1, 3, 4, as data/images.py reads files.

    Raises UnsupportedImage (not one of those formats), ImageTooLarge (over `max_pixels`, known from the
    header) or UnreadableImage (a damaged file or an image of an unexpected shape).
    """
    if not data:
        raise UnreadableImage("empty file")
    array = _decode_tiff(data, max_pixels) if data[:4] in TIFF_SIGNATURES else _decode_pil(data, max_pixels)
    try:
        return to_image_array(array, bit_depth)  # the run's intensity scale, as `protloc predict` applies it
    except ImageReadError as error:
        raise UnreadableImage(str(error)) from None


def _check_pixels(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageTooLarge(f"image of {width} x {height} pixels is over the limit of {max_pixels:,} pixels")


def _decode_pil(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImage("not a PNG, JPEG or TIFF image") from None
    except Image.DecompressionBombError as error:  # PIL's own, far higher, limit: still known from the header
        raise ImageTooLarge(str(error)) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"damaged image header ({type(error).__name__})") from None
    with image:
        width, height = image.size
        _check_pixels(height, width, max_pixels)
        try:
            image.load()
            return pil_to_array(image)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise UnreadableImage(f"damaged {image.format} image ({type(error).__name__})") from None


def _image_plane(shape: Sequence[int]) -> tuple[int, int]:
    """(height, width) of a TIFF series shape that data/images.py accepts: (H, W), (H, W, C) or (C, H, W)."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            return shape[1], shape[2]
        if shape[-1] in (1, 2, 3, 4):
            return shape[0], shape[1]
    raise UnreadableImage(f"unexpected image shape {tuple(shape)} (expected height x width with 1, 3 or 4 channels)")


def _decode_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            first = tiff.pages[0]
            _check_pixels(*_image_plane(first.shape)[:2], max_pixels)
            series = tiff.series[0]
            height, width = _image_plane(series.shape)
            _check_pixels(height, width, max_pixels)
            if series.size * series.dtype.itemsize > max_pixels * BYTES_PER_CAPPED_PIXEL:
                raise ImageTooLarge(f"TIFF data of {series.shape} {series.dtype} is over the limit "
                                    f"of {max_pixels * BYTES_PER_CAPPED_PIXEL:,} decoded bytes")
            array = np.asarray(series.asarray())
    except UploadError:
        raise
    except Exception as error:  # tifffile raises many types for damaged files; the client only needs to know
        raise UnreadableImage(f"damaged TIFF image ({type(error).__name__})") from None
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first stacks, as data/images.py reads them
    return array


def compose_stains(planes: Sequence[np.ndarray]) -> np.ndarray:
    """Decoded grayscale stain images, in the run's channel order -> one (H, W, len(planes)) image.

    As data/images.py's load_image does for stain files: the first channel of each, all of one size.
    """
    gray = [plane[:, :, 0] for plane in planes]
    shapes = sorted({plane.shape for plane in gray})
    if len(shapes) != 1:
        raise UnreadableImage(f"stain images differ in size: {shapes}")
    return np.stack(gray, axis=-1)
