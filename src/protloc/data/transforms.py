"""Preprocessing presets, train and eval side by side (torchvision.transforms.v2 on uint8 CHW tensors).

Both end in the same resize-free tail (to float, normalise) so a model sees training and prediction
images on one scale. Mean and std always come from the run's config, never typed here.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2


class RandomRot90(v2.Transform):
    """Rotate by a random multiple of 90 degrees: exact (no interpolation), and cells have no up."""

    def make_params(self, flat_inputs):
        return {"turns": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt, params):
        return torch.rot90(inpt, params["turns"], dims=(-2, -1)) if params["turns"] else inpt


def _to_model_input(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transforms(
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding_fraction: float = 1 / 32,
    resized_crop_scale: tuple[float, float] = (0.5, 1.0),
    rotation_degrees: float = 10.0,
    hflip_prob: float = 0.5,
    vflip_prob: float = 0.5,
) -> v2.Compose:
    """The seed's augmentations (random crop, random resized crop, flip, rotation) plus vertical flips and
    90-degree turns, which are free label-preserving symmetries of a microscope field."""
    padding = max(1, round(image_size * crop_padding_fraction))
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), antialias=True),
            v2.RandomCrop(image_size, padding=padding, padding_mode="reflect"),
            v2.RandomResizedCrop(image_size, scale=resized_crop_scale, ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(hflip_prob),
            v2.RandomVerticalFlip(vflip_prob),
            RandomRot90(),
            v2.RandomRotation(rotation_degrees),
            *_to_model_input(mean, std),
        ]
    )


def eval_transforms(*, image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize only: the whole field is seen, as at prediction time."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *_to_model_input(mean, std)])
