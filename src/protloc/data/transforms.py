"""Preprocessing presets, train and eval side by side: torchvision.transforms.v2 on uint8 CHW tensors per image,
and the training augmentation on whole batches.

Both presets start with the same resize, which the image cache (protloc.data.cache) applies once at decode time:
on cached images it is a no-op (torchvision returns an image already at the target size unchanged). The eval
preset ends in the tail (to float, normalise) that prediction applies per image; with `to_model_input=False`
it stops before it and `batch_to_model_input` applies the same operations to whole batches on the device.

Training augmentation is `Augmentation`: the seed's random crop, random resized crop, flip and rotation (plus
vertical flips and right-angle turns) composed into one affine map per image. The map is drawn per image, from
that image's seed, wherever the image is loaded; `augment_batch` then resamples a whole batch in one pass on the
device: on a GPU, where the loader's CPU cores would otherwise do it, and on the CPU, where one batched pass on
all cores replaced five per-image passes (benchmarks/bench_augmentation.py, in the git history). Mean and std always come from the
run's config, never typed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

# The four right-angle turns as 2x2 matrices on (x, y). With the flips they give all eight symmetries of the
# square: a microscope field has no up and no handedness.
_TURNS = ((1, 0, 0, 1), (0, -1, 1, 0), (-1, 0, 0, -1), (0, 1, -1, 0))


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation, as one affine map per image from output to input positions.

    In the order the seed applied them: a random crop of the image padded by `crop_padding_fraction` of its
    side (mirrored), a random resized crop (a box of `resized_crop_scale` of the area and `resized_crop_ratio`
    aspect, stretched to the whole image), horizontal and vertical flips, a random right-angle turn, and a
    rotation by up to `rotation_degrees`. A map is six numbers, so a loader worker hands it over with the image
    it belongs to; all of them are applied in one resampling (`augment_batch`), bilinear, mirrored where a map
    reaches past the image's edge, as the seed's padded crop was.
    """

    crop_padding_fraction: float = 1 / 32
    resized_crop_scale: tuple[float, float] = (0.5, 1.0)
    resized_crop_ratio: tuple[float, float] = (0.9, 1.1)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    right_angle_turns: bool = True
    rotation_degrees: float = 10.0

    def draw(self) -> torch.Tensor:
        """One image's map, (2, 3) float32, in grid_sample's coordinates (-1 and 1 at the outer edges of the
        image, align_corners=False). Draws from torch's default CPU generator, which SeededAugmentation seeds
        per image: one draw of ten numbers, a few microseconds."""
        u = torch.rand(10, dtype=torch.float64).tolist()
        angle = math.radians((2 * u[0] - 1) * self.rotation_degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        t00, t01, t10, t11 = _TURNS[min(int(u[1] * 4), 3)] if self.right_angle_turns else _TURNS[0]
        flip_x = -1.0 if u[2] < self.hflip_prob else 1.0
        flip_y = -1.0 if u[3] < self.vflip_prob else 1.0
        low, high = self.resized_crop_scale
        area = low + (high - low) * u[4]
        log_low, log_high = math.log(self.resized_crop_ratio[0]), math.log(self.resized_crop_ratio[1])
        ratio = math.exp(log_low + (log_high - log_low) * u[5])
        width, height = min(1.0, math.sqrt(area * ratio)), min(1.0, math.sqrt(area / ratio))  # fractions of the side
        # The box lies inside the image; the padded crop then shifts everything by up to the padding.
        shift = 2 * self.crop_padding_fraction
        centre_x = (1 - width) * (2 * u[6] - 1) + shift * (2 * u[8] - 1)
        centre_y = (1 - height) * (2 * u[7] - 1) + shift * (2 * u[9] - 1)
        # output -> rotation's input -> turn and flips' input -> box -> shifted box: scale @ flips @ turn @ rotation.
        r00, r01, r10, r11 = cos, -sin, sin, cos
        m00, m01 = t00 * r00 + t01 * r10, t00 * r01 + t01 * r11
        m10, m11 = t10 * r00 + t11 * r10, t10 * r01 + t11 * r11
        sx, sy = width * flip_x, height * flip_y
        return torch.tensor([[sx * m00, sx * m01, centre_x], [sy * m10, sy * m11, centre_y]], dtype=torch.float32)


def augment_batch(images: torch.Tensor, maps: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  out_size: int | None = None) -> torch.Tensor:
    """uint8 images (N, C, H, W) resampled through their maps (N, 2, 3) from `Augmentation.draw` (bilinear, and
    mirrored at the image's edges) into `out_size` squares (default: H x W), then normalised as
    `batch_to_model_input` does: float32 for the model.

    Images larger than `out_size` (a training copy kept at up to twice the input size, see
    protloc.training.datamodule) give crops their own pixels instead of upsampled ones; a map's coordinates are
    fractions of the image, so the same map crops the same region at any stored size. With a 2x copy, the whole
    image maps each output pixel to the mean of 2 x 2 stored pixels (bilinear at their shared corner).

    Normalising after the resampling gives the same values (up to rounding: both are per-channel affine and
    bilinear weights sum to one) and costs two passes over the batch in place instead of three and a copy. The
    sampling grid is built here rather than by F.affine_grid, whose batched matrix product took most of the time
    of the resampling itself on the CPU (224 px batches of 32, 2 cores)."""
    n = images.shape[0]
    height, width = (out_size, out_size) if out_size else images.shape[2:]
    options = dict(device=images.device, dtype=torch.float32)
    maps = maps.to(**options).view(n, 6, 1, 1)
    xs = torch.arange(width, **options).mul_(2 / width).add_(1 / width - 1)
    ys = torch.arange(height, **options).mul_(2 / height).add_(1 / height - 1).view(-1, 1)
    grid = torch.empty(n, height, width, 2, **options)
    torch.addcmul(maps[:, 2] + maps[:, 1] * ys, maps[:, 0], xs, out=grid[..., 0])
    torch.addcmul(maps[:, 5] + maps[:, 4] * ys, maps[:, 3], xs, out=grid[..., 1])
    sampled = F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return sampled.mul_((1 / (255 * std)).view(-1, 1, 1)).add_((-mean / std).view(-1, 1, 1))


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


def eval_transforms(*, image_size: int, mean: Sequence[float], std: Sequence[float], to_model_input: bool = True) -> v2.Compose:
    """Resize only: the whole field is seen, as at prediction time."""
    return v2.Compose([resize_transform(image_size), *(_to_model_input(mean, std) if to_model_input else [])])


def eval_preset(config) -> v2.Compose:
    """A run's eval transforms (resize, normalise with its config's mean/std): what prediction, evaluation,
    explanation, embedding and serving apply to every image."""
    return eval_transforms(image_size=config.image_size, mean=config.mean, std=config.std)
