"""The data of a training run, as a LightningDataModule: one table, split by rows into training and validation.

Which images an epoch visits, in which order, and how each is augmented are functions of (seed, epoch,
image) alone: not of the number of DataLoader workers, of prefetching, of the device count, or of whether
the run was stopped and resumed in between. That is what lets a resumed run end bit-identical to an
uninterrupted one.

Speed: with an ImageCache each image is decoded and resized once for the whole run (and later runs), so the
loader's work per image is a 0.1 ms read and the draw of its augmentation map. It hands over uint8 batches (with
the maps of training images), pinned on a GPU, and the float conversion, normalisation and augmentation run
batched on the device after the (non-blocking) copy: on a GPU instead of on the loader's few CPU cores, and on
the CPU in one pass on all cores. Validation batches get the same values as prediction's per-image path.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from protloc.data.dataset import ImageDataset
from protloc.data.readers import DatasetTable
from protloc.data.transforms import Augmentation, augment_batch, batch_to_model_input, eval_transforms


def sample_seed(seed: int, epoch: int, index) -> int:
    """The augmentation seed of row `index` (or of a (row, draw) pair) in an epoch."""
    parts = list(index) if isinstance(index, tuple) else [index]
    return int(np.random.SeedSequence([seed, epoch, *parts]).generate_state(1)[0])


class EpochSeededSampler(DistributedSampler):
    """A DistributedSampler (one replica on a single device) that yields (row, augmentation seed) pairs.

    `first_epoch` shifts the epoch count so each phase of the run gets its own orders and augmentations. With
    `weights` (one per row, protloc.training.sampling) an epoch draws as many rows as there are, with replacement,
    each with probability proportional to its weight; the draw too is a function of (seed, epoch) alone.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, first_epoch: int = 0,
                 weights: np.ndarray | None = None):
        # DistributedSampler shuffles with seed + epoch: offsetting the seed offsets the epoch.
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed + first_epoch)
        self.base_seed = seed
        self.first_epoch = first_epoch
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def _indices(self) -> Iterator[int]:
        if self.weights is None:
            return super().__iter__()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator).tolist()
        return iter(drawn[self.rank:self.total_size:self.num_replicas])  # each rank its share, as DistributedSampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.first_epoch + self.epoch
        for draw, index in enumerate(self._indices()):
            # A row drawn twice in an epoch gets two augmentations.
            yield index, sample_seed(self.base_seed, epoch, index if self.weights is None else (index, draw))


class SeededAugmentation(Dataset):
    """Items of `dataset` fetched by (row, seed), each with its augmentation map (`Augmentation.draw`) appended:
    the map draws from that seed, in whatever process."""

    def __init__(self, dataset: Dataset, augmentation: Augmentation):
        self.dataset = dataset
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        # Leaves the process's own RNG untouched: the model's dropout draws stay independent of data loading.
        # The augmentations draw from the CPU generator alone. torch.manual_seed would seed every device's too,
        # and in a CUDA build whose CUDA is not yet started it records a stack trace each time to report later:
        # milliseconds per image, on the cores that feed the model.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return (*self.dataset[index], self.augmentation.draw())


class SeededData(L.LightningDataModule):
    """The loaders of a run: training rows in (seed, epoch) order with per-image augmentation seeds, validation rows
    in order, both sharded over DDP ranks. Subclasses say what a row is (`train_dataset`, `val_dataset`)."""

    def __init__(self, *, batch_size: int, workers: int, seed: int):
        super().__init__()
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.first_epoch = 0  # the run-wide number of the current phase's first epoch; set per phase
        self.sample_weights: np.ndarray | None = None  # per training row (protloc.training.sampling); None: each once

    def train_dataset(self) -> Dataset:
        """Items fetched by (row, augmentation seed)."""
        raise NotImplementedError

    def val_dataset(self) -> Dataset:
        raise NotImplementedError

    def _replicas(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def val_workers(self) -> int:
        """Loader processes for validation; subclasses whose validation rows cost nothing to read say 0."""
        return self.workers

    def _loader(self, dataset, sampler, drop_last: bool, workers: int) -> DataLoader:
        on_gpu = self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
            pin_memory=on_gpu,
            # Workers may live across epochs (no fork per epoch, which cost a third of the speed on 2 cores):
            # augmentation seeds come with the indices, so a worker's own RNG state never matters.
            persistent_workers=workers > 0,
            # The loader draws its workers' base seed from this, not from the process RNG that dropout uses.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        world_size, rank = self._replicas()
        sampler = EpochSeededSampler(dataset, num_replicas=world_size, rank=rank, seed=self.seed, first_epoch=self.first_epoch,
                                     weights=self.sample_weights)
        if self.trainer is not None:
            # Lightning sets the sampler's epoch only when an epoch starts, but a loader with workers draws its first
            # indices when created; a resumed fit creates it for an epoch past 0, so set the epoch now.
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        # A last batch of one image cannot train BatchNorm; like fastai and timm, drop the ragged end.
        return self._loader(dataset, sampler, drop_last=len(sampler) >= self.batch_size, workers=self.workers)

    def train_steps_per_epoch(self) -> int:
        """Optimiser steps per epoch on each device. Counted here rather than by `Trainer.estimated_stepping_batches`,
        which would build the training iterator before a checkpoint's progress is restored."""
        return len(self.train_dataloader())

    def val_dataloader(self) -> DataLoader:
        dataset = self.val_dataset()
        world_size, rank = self._replicas()
        # Shards are padded with repeats to equal length; the module gathers them and drops the repeats.
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return self._loader(dataset, sampler, drop_last=False, workers=self.val_workers())


class LocalisationData(SeededData):
    """Images of one table, split by rows into training and validation."""

    def __init__(
        self,
        table: DatasetTable,
        train_rows: np.ndarray,
        val_rows: np.ndarray,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        channels: int,
        batch_size: int,
        workers: int,
        seed: int,
        cache=None,
        augmentation: Augmentation = Augmentation(),
        train_size: int | None = None,
    ):
        super().__init__(batch_size=batch_size, workers=workers, seed=seed)
        self.train_table = table.subset(train_rows)
        self.val_table = table.subset(val_rows)
        self.image_size = image_size
        # Training images are kept (and cached) at train_size >= image_size and cropped from there at full
        # resolution; the augmentation's output, and validation, are at image_size.
        self.train_size = max(train_size or image_size, image_size)
        self.mean, self.std = list(mean), list(std)
        self.channels = channels
        self.cache = cache  # a protloc.data.cache.ImageCache, or None to decode every image on every read
        self.augmentation = augmentation
        self._normalization: dict = {}  # device -> (mean, std) tensors
        self._cache_prepared = False

    def setup(self, stage: str) -> None:
        if self.cache is not None and not self._cache_prepared:
            sources = [*self.train_table.frame["source"], *self.val_table.frame["source"]]
            sizes = [self.train_size] * len(self.train_table) + [self.image_size] * len(self.val_table)
            self.cache.prepare(sources, self.channels, sizes, bit_depth=self.train_table.bit_depth)
            self._cache_prepared = True

    def _dataset(self, table: DatasetTable, transform, size: int) -> ImageDataset:
        return ImageDataset(table, channels=self.channels, transform=transform, image_size=size, cache=self.cache)

    def val_workers(self) -> int:
        # Validation images come decoded from the cache (the pre-training check and epoch 1 filled it), at about
        # 0.3 ms each beside ~30 ms of model time: worker processes would hold memory (0.24 GiB each) for nothing.
        # The same goes for labelling the validation images after training (run.finish_run), where workers
        # forked from a process still holding the freed fine-tuning activations peaked at 3.98 GiB (measured).
        return 0 if self.cache is not None else self.workers

    def _resized(self, table: DatasetTable, size: int) -> ImageDataset:
        """uint8 images of `size`: everything else happens to whole batches on the device."""
        transform = eval_transforms(image_size=size, mean=self.mean, std=self.std, to_model_input=False)
        return self._dataset(table, transform, size)

    def train_dataset(self) -> Dataset:
        return SeededAugmentation(self._resized(self.train_table, self.train_size), self.augmentation)

    def val_dataset(self) -> Dataset:
        return self._resized(self.val_table, self.image_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 batches to normalised float; training batches (which carry their maps) augmented too."""
        images, targets, rows, problems, *maps = batch
        if images.device not in self._normalization:
            self._normalization[images.device] = tuple(torch.tensor(values, device=images.device)
                                                       for values in (self.mean, self.std))
        normalization = self._normalization[images.device]
        if maps:
            return augment_batch(images, maps[0], *normalization, out_size=self.image_size), targets, rows, problems
        return batch_to_model_input(images, *normalization), targets, rows, problems
