"""The torch Dataset over a DatasetTable: reads, converts channels, applies a preset."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from protloc.data.images import ImageReadError, load_image
from protloc.data.readers import DatasetTable


class ImageDataset(Dataset):
    """Items are (image tensor, target vector, row index, ok).

    `ok` is False when the image could not be read; the image is then zeros of the expected size so a
    batch can still be formed, and the caller reports that row by name (predict's --on-error).
    With strict=True an unreadable image raises instead (training: data should be checked first).
    """

    def __init__(self, table: DatasetTable, *, channels: int, transform: Callable, image_size: int, strict: bool = True):
        self.sources = list(table.frame["source"])
        self.targets = torch.from_numpy(table.targets)
        self.channels = channels
        self.transform = transform
        self.image_size = image_size
        self.strict = strict

    def __len__(self) -> int:
        return len(self.sources)

    def read(self, index: int) -> torch.Tensor:
        array = load_image(self.sources[index], self.channels)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def __getitem__(self, index: int):
        try:
            image, ok = self.transform(self.read(index)), True
        except ImageReadError as error:
            if self.strict:
                source = self.sources[index]
                raise ImageReadError(f"{source if isinstance(source, str) else source[0]}: {error}") from None
            image, ok = torch.zeros(self.channels, self.image_size, self.image_size), False
        return image, self.targets[index], index, ok
