"""Preprocessing presets, train and eval side by side (torchvision.transforms.v2 on uint8 CHW tensors).

Both start with the same resize, which the image cache (protloc.data.cache) applies once at decode time:
on cached images it is a no-op (torchvision returns an image already at the target size unchanged), so
augmentation always runs on uint8 images of the training size. Both end in the same tail (to float,
normalise) so a model sees training and prediction images on one scale; with `to_model_input=False` the
presets stop before it and `batch_to_model_input` applies it to whole batches on the device (4x less to copy
to a GPU, and one fused pass there instead of one per image on the CPU). Mean and std always come from the
run's config, never typed here.
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


def resize_transform(image_size: int) -> v2.Resize:
    """The first step of every preset, and what the image cache stores the result of."""
    return v2.Resize((image_size, image_size), antialias=True)


def _to_model_input(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def batch_to_model_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, channels_last: element for element the presets' tail (the same
    operations as torchvision's ToDtype and Normalize). `mean` and `std` are (C,) tensors on the images' device,
    made once: building them per batch from lists would copy from host memory, which waits for the GPU."""
    images = images.to(dtype=torch.float32, memory_format=torch.channels_last).mul_(1.0 / 255)
    return images.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


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
    to_model_input: bool = True,
) -> v2.Compose:
    """The seed's augmentations (random crop, random resized crop, flip, rotation) plus vertical flips and
    90-degree turns, which are free label-preserving symmetries of a microscope field.

    Cheapest first where the order is free: all geometry runs on uint8 at the training size (about 2 ms per
    224 px image on one core). The rotation fills with None rather than 0: with nearest interpolation both
    give the same pixels (out-of-image samples are zero either way), and torchvision then skips a mask pass
    that took half of the rotation's time.
    """
    padding = max(1, round(image_size * crop_padding_fraction))
    return v2.Compose(
        [
            resize_transform(image_size),
            v2.RandomCrop(image_size, padding=padding, padding_mode="reflect"),
            v2.RandomResizedCrop(image_size, scale=resized_crop_scale, ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(hflip_prob),
            v2.RandomVerticalFlip(vflip_prob),
            RandomRot90(),
            v2.RandomRotation(rotation_degrees, fill=None),
            *(_to_model_input(mean, std) if to_model_input else []),
        ]
    )


def eval_transforms(*, image_size: int, mean: Sequence[float], std: Sequence[float], to_model_input: bool = True) -> v2.Compose:
    """Resize only: the whole field is seen, as at prediction time."""
    return v2.Compose([resize_transform(image_size), *(_to_model_input(mean, std) if to_model_input else [])])
