"""Reading microscope images of any common kind into one form: uint8, height x width x channels.

PNG, JPEG and TIFF; 8- or 16-bit; 1, 3 or 4 channels; any size. `decode_image` is the one decoder, for
files and for uploaded bytes alike. The HPA-2018 layout stores one grayscale file per stain, which
`load_image` composes when given several paths.
"""
from __future__ import annotations

import io
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

# The most pixels one image may have, counted as height x width x channels and read from the file's header
# before anything is decoded: a small compressed file can otherwise expand to gigabytes. Well above a
# 4096 x 4096 four-stain image (67 million). The environment variable, when set, takes precedence.
MAX_PIXELS = 100_000_000
MAX_PIXELS_VARIABLE = "PROTLOC_MAX_PIXELS"

# warnings.catch_warnings and Image.MAX_IMAGE_PIXELS are process-wide state: threads (the HTTP service) take turns
# around them. Only Image.open runs under them, which reads the header alone.
_PIL_OPEN_LOCK = threading.Lock()


class ImageReadError(Exception):
    """An image that cannot be decoded; the message says why. `path` names the failing file where the caller
    could not know it (one stain of a stain set); otherwise the caller adds where."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = path


def describe_read_error(source: str | Path | Sequence[str | Path], error: ImageReadError) -> str:
    """'PATH: why' for an image source (a file, or one file per stain) that could not be read."""
    where = error.path or (source if isinstance(source, (str, Path)) else source[0])
    return f"{where}: {error}"


def pixel_limit() -> int:
    """PROTLOC_MAX_PIXELS when set, else MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ImageReadError(f"{MAX_PIXELS_VARIABLE}={text!r}: expected a whole number of pixels, 1 or more")
    return int(text)


def check_pixel_count(shape: Sequence[int]) -> None:
    """Refuse an image whose header announces more pixels (height x width x channels) than the limit."""
    count, limit = math.prod(shape), pixel_limit()
    if count > limit:
        raise ImageReadError(
            f"{' x '.join(map(str, shape))} image: {count:,} pixels, more than the limit of {limit:,} "
            f"(raise it with {MAX_PIXELS_VARIABLE} or protloc.data.images.MAX_PIXELS)"
        )


def to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        # Float images are taken as 0..1 intensities, the usual convention of image libraries.
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    array = array.astype(np.float32)
    top = float(array.max()) if array.size else 0.0
    # Many 16-bit microscope files hold 12-bit camera data; scaling those by 65535 would make them black.
    full_scale = 4095.0 if top <= 4095 else 65535.0
    return (np.clip(array / full_scale, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as (H, W) for one-channel modes, else (H, W, 3|4): palettes expanded, LA made L, other colour
    modes RGB. Files (decode_image) and the Python API's PIL images both pass here, so they convert alike."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("LA", "CMYK", "YCbCr", "HSV", "1"):
        image = image.convert("RGB" if image.mode != "LA" else "L")
    return np.asarray(image)


def decode_image(source: bytes | str | Path) -> np.ndarray:
    """An image file, by path or as its bytes -> uint8 (H, W, C) with C in 1, 3, 4. Raises ImageReadError.

    TIFF (known by its signature, whatever the file is called) goes through tifffile: 16-bit, multi-channel
    and channel-first stacks; everything else through PIL. The pixel count comes from the header and is
    checked before the pixels are decoded.
    """
    file = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    try:
        array = _decode_tiff(file) if _is_tiff(file) else _decode_with_pil(file)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"too many pixels to decode ({error})") from None
    except UnidentifiedImageError:  # its message holds the path or a BytesIO's address, neither of use here
        raise ImageReadError("not a readable image (not PNG, JPEG, TIFF or another format PIL knows)") from None
    except Exception as error:  # decoders raise many types for corrupt input (OSError, ValueError, struct.error...)
        raise ImageReadError(f"not a readable image ({type(error).__name__}: {error})") from None
    return to_image_array(array)


def _is_tiff(file: io.BytesIO | Path) -> bool:
    if isinstance(file, io.BytesIO):
        return bytes(file.getbuffer()[:4]) in TIFF_SIGNATURES
    with open(file, "rb") as stream:
        return stream.read(4) in TIFF_SIGNATURES


def _decode_tiff(file: io.BytesIO | Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(file) as tiff:
        if not tiff.series:
            raise ImageReadError("a TIFF file without image data")
        check_pixel_count(tiff.series[0].shape)
        array = np.asarray(tiff.asarray())
    # Channel-first TIFF stacks (C, H, W) are common in microscopy.
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    return array


def _decode_with_pil(file: io.BytesIO | Path) -> np.ndarray:
    with _PIL_OPEN_LOCK, warnings.catch_warnings():
        # PIL warns from, and refuses at twice, its own built-in limit; check_pixel_count below is the one limit
        # that decides, PROTLOC_MAX_PIXELS raised above PIL's included.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(file)  # the header only
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
    with image:
        check_pixel_count((image.height, image.width, len(image.getbands())))
        image.load()
        return pil_to_array(image)


def to_chw_tensor(array: np.ndarray):
    """uint8 (H, W, C) -> a (C, H, W) torch tensor, the layout the presets and models take."""
    import torch  # here, so that reading images (and `protloc --help`) does not import torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_image_array(array: np.ndarray) -> np.ndarray:
    """A decoded (H, W) or (H, W, 1..4) array of any depth -> uint8 (H, W, C) with C in 1, 3, 4; a second
    channel (gray + alpha) is dropped. Raises ImageReadError for other shapes."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(f"unexpected image shape {array.shape} (expected height x width with 1, 3 or 4 channels)")
    if array.shape[-1] == 2:
        array = array[:, :, :1]
    return to_uint8(array)


def convert_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Fit an image to the model's channel count.

    HPA order is red (microtubules), green (protein), blue (nucleus), yellow (ER). A 1-channel model sees
    the protein (green); a grayscale image fed to an RGB model is repeated; a missing yellow stain is zero.
    """
    have = array.shape[-1]
    if have == channels:
        return array
    if channels == 1:
        return array[:, :, 1:2] if have >= 3 else array[:, :, :1]
    if have == 1:
        return np.repeat(array, channels, axis=-1)
    if channels == 3:
        return array[:, :, :3]
    if channels == 4 and have == 3:
        return np.concatenate([array, np.zeros_like(array[:, :, :1])], axis=-1)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def load_image(source: str | Path | Sequence[str | Path], channels: int = 3) -> np.ndarray:
    """A file, or one grayscale file per stain (r, g, b[, y]), -> uint8 (H, W, channels).

    An unreadable stain raises ImageReadError with that stain's `path`."""
    if isinstance(source, (str, Path)):
        return convert_channels(decode_image(source), channels)
    planes = []
    for path in source:
        try:
            planes.append(decode_image(path)[:, :, 0])
        except ImageReadError as error:
            raise ImageReadError(str(error), path=path) from None
    shapes = {plane.shape for plane in planes}
    if len(shapes) != 1:
        raise ImageReadError(f"stain images differ in size: {sorted(shapes)}")
    return convert_channels(np.stack(planes, axis=-1), channels)
