"""Reading microscope images of any common kind into one form: uint8, height x width x channels.

PNG, JPEG and TIFF; 8- or 16-bit; 1, 3 or 4 channels; any size. The HPA-2018 layout stores one
grayscale file per stain, which `load_image` composes when given several paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageReadError(Exception):
    """An image file that cannot be decoded; the message says why, the caller adds where."""


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
    modes RGB. Files (read_array) and the Python API's PIL images both pass here, so they convert alike."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("LA", "CMYK", "YCbCr", "HSV", "1"):
        image = image.convert("RGB" if image.mode != "LA" else "L")
    return np.asarray(image)


def read_array(path: str | Path) -> np.ndarray:
    """One file -> uint8 array (H, W, C) with C in 1, 3, 4. Raises ImageReadError."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
            # Channel-first TIFF stacks (C, H, W) are common in microscopy.
            if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
                array = np.moveaxis(array, 0, -1)
        else:
            with Image.open(path) as image:
                image.load()
                array = pil_to_array(image)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"not a readable image ({type(error).__name__}: {error})") from None
    return to_image_array(array)


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
    """A file, or one grayscale file per stain (r, g, b[, y]), -> uint8 (H, W, channels)."""
    if isinstance(source, (str, Path)):
        return convert_channels(read_array(source), channels)
    planes = [read_array(path)[:, :, 0] for path in source]
    shapes = {plane.shape for plane in planes}
    if len(shapes) != 1:
        raise ImageReadError(f"stain images differ in size: {sorted(shapes)}")
    return convert_channels(np.stack(planes, axis=-1), channels)
