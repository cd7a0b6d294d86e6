"""The input normalisation of a run: the backbone's mean/std, or measured on the training split (--normalize dataset).

Rank 0 settles it once and records it with the recipe; a resumed run and the other DDP ranks read it back
rather than measuring again, so every process and every leg of a stopped run normalises alike.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from protloc.data.dataset import ImageDataset
from protloc.data.readers import DatasetTable
from protloc.data.transforms import eval_transforms
from protloc.models.backbones import backbone_spec
from protloc.progress import progress_bar
from protloc.training.config import TrainConfig
from protloc.training.trainer import rank
from protloc.training.resume import check_same_recipe, read_recipe, recipe_path, write_recipe


def measure_normalization(table: DatasetTable, *, image_size: int, channels: int, workers: int,
                          show_progress: bool, cache=None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images (0..1 scale), as the model will see them (resized, no augmentation)."""
    transform = eval_transforms(image_size=image_size, mean=[0.0] * channels, std=[1.0] * channels)
    dataset = ImageDataset(table, channels=channels, transform=transform, image_size=image_size, cache=cache)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    loader = DataLoader(dataset, batch_size=64, num_workers=workers)
    for images, *_ in progress_bar(loader, desc="measuring mean/std", unit="batch", disable=not show_progress):
        images = images.double()
        total += images.sum(dim=(0, 2, 3))
        squares += (images**2).sum(dim=(0, 2, 3))
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / pixels
    std = (squares / pixels - mean**2).clamp_min(1e-12).sqrt()
    # A blank channel (the absent yellow stain of RGB data) would divide by ~0.
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    return [float(x) for x in mean], [float(x) for x in std]


def run_normalization(config: TrainConfig, train_table: DatasetTable, run_dir: Path, *, image_size: int,
                      workers: int, cache=None) -> tuple[list[float], list[float]]:
    """(mean, std) of the run in `run_dir`; on a fresh run, rank 0 records them with the recipe. A resumed run
    must share the stopped run's recipe: rank 0 checks it."""
    saved = read_recipe(run_dir) if (config.resume or rank() != 0) else None
    if saved is not None:
        if rank() == 0:
            check_same_recipe(saved["config"], config, recipe_path(run_dir))
        return saved["mean"], saved["std"]
    if config.normalize == "dataset":
        mean, std = measure_normalization(train_table, image_size=image_size, channels=config.channels, workers=workers,
                                          show_progress=config.show_progress and rank() == 0, cache=cache)
    else:
        mean, std = (list(values) for values in backbone_spec(config.backbone).normalization(config.channels))
    if rank() == 0:
        write_recipe(run_dir, config, mean, std)
    return mean, std
