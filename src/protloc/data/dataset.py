"""The torch Dataset over a DatasetTable: reads at the table's bit depth, converts channels, applies a preset."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from protloc.data.images import ImageReadError, describe_read_error, load_image, to_chw_tensor
from protloc.data.readers import DatasetTable


class ImageDataset(Dataset):
    """Items are (image tensor, target vector, row index, problem).

    `problem` is "" for an image that was read, else 'PATH: why' it could not be: the reason travels with
    the item (out of loader worker processes too), so nobody opens the file again to learn it. The image
    is then zeros of the expected size so a batch can still be formed (predict's --on-error).
    With strict=True an unreadable image raises instead (training: data should be checked first).
    Pixels are scaled by the table's `bit_depth`; `gray_as` places grayscale images (images.convert_channels).
    With an ImageCache (protloc.data.cache), images are read already resized to `image_size`, decoded once.
    """

    def __init__(self, table: DatasetTable, *, channels: int, transform: Callable, image_size: int, strict: bool = True,
                 gray_as: str | None = None, stain_map: dict | None = None, cache=None):
        self.sources = list(table.frame["source"])
        self.targets = torch.from_numpy(table.targets)
        self.channels = channels
        self.bit_depth = table.bit_depth
        self.gray_as = gray_as
        self.stain_map = stain_map  # names of a microscope file's channels -> stains (microscopy.py)
        self.transform = transform
        self.image_size = image_size
        self.strict = strict
        self.cache = cache

    def __len__(self) -> int:
        return len(self.sources)

    def read(self, index: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.load(self.sources[index], self.channels, self.image_size, bit_depth=self.bit_depth,
                                   gray_as=self.gray_as, stain_map=self.stain_map)
        return to_chw_tensor(load_image(self.sources[index], self.channels, bit_depth=self.bit_depth, gray_as=self.gray_as,
                                        stain_map=self.stain_map))

    def __getitem__(self, index: int):
        try:
            image, problem = self.transform(self.read(index)), ""
        except ImageReadError as error:
            problem = describe_read_error(self.sources[index], error)
            if self.strict:
                raise ImageReadError(problem) from None
            image = torch.zeros(self.channels, self.image_size, self.image_size)
        return image, self.targets[index], index, problem
