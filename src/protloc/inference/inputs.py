"""What the Python API and the service take as an image, read as a run reads it.

An image is a path, a file's bytes, a numpy array (H, W[, C]), a PIL image, or a stain set: a dict
{stain: one of those} or a tuple of them in the run's channel order (data/stains.py). A list holds several
images; a tuple is always one stain set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from protloc.data.images import (ImageReadError, compose_stains, convert_channels, decode_image, fit_stored,
                                 image_stem, pil_to_array, read_image, to_chw_tensor, to_image_array)
from protloc.data.stains import STAINS, run_stains, split_stain_name
from protloc.errors import ProtlocError


def _read_one(item, bit_depth: int | None) -> np.ndarray:
    """A path, a file's bytes, a numpy array (H, W[, C]) or a PIL image -> uint8 (H, W, C), C in 1, 3, 4."""
    if isinstance(item, (str, Path, bytes, bytearray, memoryview)):
        try:
            return decode_image(item, bit_depth=bit_depth)
        except ImageReadError as error:
            where = item if isinstance(item, (str, Path)) else f"image of {len(item)} bytes"
            raise ProtlocError(f"{where}: {error}") from None
    array = pil_to_array(item) if hasattr(item, "getbands") else np.asarray(item)
    try:
        return to_image_array(array, bit_depth)
    except ImageReadError as error:
        raise ProtlocError(f"image array of shape {array.shape}: {error}") from None


def _stain_set(image: dict | tuple, channels: int) -> list:
    """A stain set -> its images in the run's channel order. A dict names its stains (stains the run does not read
    are left out); a tuple holds exactly the run's stains, in its channel order."""
    stains = run_stains(channels)
    if isinstance(image, tuple):
        if len(image) != channels:
            raise ProtlocError(f"a stain set of {len(image)} images for a {channels}-channel run: expected "
                               f"{', '.join(stains)}, in that order (or a dict {{stain: image}})")
        return list(image)
    named = {str(stain).lower(): part for stain, part in image.items()}
    unknown = sorted(set(named) - set(STAINS))
    if unknown:
        raise ProtlocError(f"stain set: unknown stain {', '.join(map(repr, unknown))} (expected {', '.join(STAINS)})")
    missing = [stain for stain in stains if stain not in named]
    if missing:
        raise ProtlocError(f"stain set with {', '.join(named) or 'no stains'}: no {' or '.join(missing)} stain "
                           f"(a {channels}-channel run reads {', '.join(stains)})")
    return [named[stain] for stain in stains]


def read_input(image, channels: int, *, bit_depth: int | None = None, gray_as: str | None = None,
               stain_map: dict | None = None) -> np.ndarray:
    """One image -> uint8 (H, W, channels), pixels scaled by `bit_depth`, channels fitted by the documented rules
    (images.convert_channels; `gray_as` places a grayscale image; a microscope file's named channels are picked
    by name, `stain_map` naming those the defaults do not know). Raises ProtlocError.

    An image is a path, a file's bytes, a numpy array (H, W[, C]; uint8, uint16 or 0..1 float), a PIL image, or a
    stain set: a dict {stain: one of those} or a tuple of them in the run's channel order (stains.py)."""
    if isinstance(image, (dict, tuple)):
        composed = compose_stains([_read_one(part, bit_depth) for part in _stain_set(image, channels)])
    elif isinstance(image, (str, Path, bytes, bytearray, memoryview)):
        where = image if isinstance(image, (str, Path)) else f"image of {len(image)} bytes"
        try:
            return fit_stored(read_image(image), channels, bit_depth=bit_depth, gray_as=gray_as, stain_map=stain_map)
        except ImageReadError as error:
            raise ProtlocError(f"{where}: {error}") from None
    else:
        composed = _read_one(image, bit_depth)
    try:
        return convert_channels(composed, channels, gray_as=gray_as)
    except ImageReadError as error:
        where = image if isinstance(image, (str, Path)) else "image"
        raise ProtlocError(f"{where}: {error}") from None


class InputImages(Dataset):
    """Images for the Python API (see read_input); items are shaped like ImageDataset's."""

    def __init__(self, images: Sequence, *, channels: int, transform, bit_depth: int | None = None,
                 gray_as: str | None = None, stain_map: dict | None = None):
        self.images = list(images)
        self.channels = channels
        self.bit_depth = bit_depth
        self.gray_as = gray_as
        self.stain_map = stain_map
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        array = read_input(self.images[index], self.channels, bit_depth=self.bit_depth, gray_as=self.gray_as,
                           stain_map=self.stain_map)
        return self.transform(to_chw_tensor(array)), torch.zeros(0), index, ""


def image_id(image, index: int) -> str:
    """A file's name without extension; a stain set of files: its Id, from its first file's name; else the position."""
    if isinstance(image, (str, Path)):
        return image_stem(image)
    if isinstance(image, (dict, tuple)):
        first = next(iter(image.values() if isinstance(image, dict) else image), None)
        if isinstance(first, (str, Path)):
            parts = split_stain_name(first)
            return parts[0] if parts else Path(first).stem
    return str(index)


def image_ids(images: Sequence) -> list[str]:
    return [image_id(image, index) for index, image in enumerate(images)]


def as_image_list(images) -> list:
    """One image (a path, bytes, a (H, W[, C]) array, a PIL image, or a stain set: a dict or a tuple), a list of
    them or an (N, H, W, C) array -> a list."""
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, dict, tuple)) or hasattr(images, "getbands"):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [images]
    return list(images)
