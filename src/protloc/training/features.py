"""The head-only shortcut (`--head-only-features`): the frozen phase trained on precomputed backbone features.

With the backbone frozen, what it makes of an un-augmented image never changes, so its pooled features are
computed once (one forward pass over the images, resized as for validation) and the frozen phase trains the
head on them: an epoch takes seconds instead of a forward pass per image. The price is the augmentation of
that phase: the head sees each image's one un-augmented view. Fine-tuning is unchanged.

Features are kept in the image cache's folder beside the images, keyed by the backbone's weights, the
preprocessing and every image's own key, so K folds, and later runs over the same backbone and images, compute
them once. The phase keeps everything else of the recipe: the same (seed, epoch) order of rows, batch size,
loss, optimiser and one-cycle schedule, and checkpoints of the whole network (resume, best epoch).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zlib
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from protloc import devices
from protloc.allocator import freed_memory_kept_for_batches
from protloc.data.cache import ImageCache, entry_key
from protloc.data.cache_files import open_own_file, read_exactly
from protloc.data.dataset import ImageDataset
from protloc.data.readers import DatasetTable
from protloc.data.transforms import eval_transforms
from protloc.training.datamodule import SeededData


class FeatureRows(Dataset):
    """Items (features, targets, row, problem "") fetched by (row, seed) from the training sampler or by row."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        return self.features[index], self.targets[index], index, ""


class FeatureData(SeededData):
    """The frozen phase's data as features: the same rows, order and batches as the image data it replaces."""

    yields_features = True

    def __init__(self, features: np.ndarray, targets: np.ndarray, train_rows, val_rows, *, batch_size: int, seed: int):
        # In memory (19,236 x 1,280 floats are 98 MB): worker processes would only add copying.
        super().__init__(batch_size=batch_size, workers=0, seed=seed)
        features, targets = torch.from_numpy(features), torch.from_numpy(targets)
        self.train_rows = FeatureRows(features[train_rows], targets[train_rows])
        self.val_rows = FeatureRows(features[val_rows], targets[val_rows])

    def train_dataset(self) -> Dataset:
        return self.train_rows

    def val_dataset(self) -> Dataset:
        return self.val_rows


def backbone_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def compute_features(model, dataset: Dataset, *, batch_size: int, workers: int, device: str,
                     autocast_dtype: torch.dtype | None, show_progress: bool, stages: bool = False) -> np.ndarray:
    """Pooled backbone features (N, F) float32 in dataset order, the backbone in eval mode (as frozen); with
    `stages`, the features the outlier score reads (Backbone.features_and_stages)."""
    from protloc.progress import progress_bar

    was_training = model.training
    # Outside inference mode: parameters converted inside it could never train again.
    model.eval().to(device, memory_format=torch.channels_last)
    batches = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.startswith("cuda"))
    autocast = (torch.autocast(device.split(":")[0], dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    # Forward passes batch after batch, as in prediction: about twice as fast on the CPU (allocator.py).
    keep_freed_memory = freed_memory_kept_for_batches(len(dataset), batch_size)
    try:
        with keep_freed_memory:
            for images, *_ in progress_bar(loader, desc="backbone features", unit="batch", disable=not show_progress):
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), autocast:
                    features = model.backbone.features_and_stages(images) if stages else model.backbone(images)
                    batches.append(features.float())  # kept on the device: no wait per batch
        width = sum(model.backbone.feature_widths()) if stages else model.backbone.num_features
        features = torch.cat(batches).cpu().numpy() if batches else np.zeros((0, width), np.float32)
    finally:
        model.to("cpu", memory_format=torch.contiguous_format).train(was_training)
    return features


def features_key(model, table: DatasetTable, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 channels: int, autocast_dtype) -> str | None:
    """Whatever the features depend on; None when an image cannot be stat-ed (then nothing is stored)."""
    digest = hashlib.sha256(f"{backbone_fingerprint(model)}|{image_size}|{list(mean)}|{list(std)}|{autocast_dtype}".encode())
    try:
        for source in table.frame["source"]:
            digest.update(entry_key(source, channels, image_size, bit_depth=table.bit_depth).encode())
    except OSError:
        return None
    return digest.hexdigest()


def table_features(model, table: DatasetTable, *, image_size: int, mean, std, channels: int, cache: ImageCache | None,
                   batch_size: int, workers: int, device: str = "cpu", autocast_dtype=None,
                   show_progress: bool = False) -> np.ndarray:
    """The frozen backbone's features of every row of `table` (N, F): from the cache folder, or computed (through
    the image cache) and stored there."""
    key = features_key(model, table, image_size=image_size, mean=mean, std=std, channels=channels,
                       autocast_dtype=autocast_dtype) if cache is not None else None
    if key is not None:
        stored = read_stored_features(cache, key, len(table))  # None when missing, damaged or of another shape
        if stored is not None:
            return stored
    transform = eval_transforms(image_size=image_size, mean=mean, std=std)
    dataset = ImageDataset(table, channels=channels, transform=transform, image_size=image_size, cache=cache)
    features = compute_features(model, dataset, batch_size=batch_size, workers=workers, device=device,
                                autocast_dtype=autocast_dtype, show_progress=show_progress)
    if key is not None:
        store_features(cache, key, features)
    return features


FEATURES_HEADER = struct.Struct("<4sQQI")  # magic, rows, columns, CRC-32 of the float32 values
FEATURES_MAGIC = b"plf2"


def read_stored_features(cache: ImageCache, key: str, rows: int) -> np.ndarray | None:
    """The (rows, F) float32 features stored under `key`, or None when there are none whole and of that many rows
    (a file of another shape, damaged or not this user's is computed again)."""
    descriptor = open_own_file(cache.features_path(key)) if cache.usable() else None
    if descriptor is None:
        return None
    try:
        header = os.read(descriptor, FEATURES_HEADER.size)
        if len(header) != FEATURES_HEADER.size:
            return None
        magic, count, columns, checksum = FEATURES_HEADER.unpack(header)
        if (magic != FEATURES_MAGIC or count != rows or not 0 < columns < 1 << 20
                or os.fstat(descriptor).st_size != FEATURES_HEADER.size + count * columns * 4):
            return None
        features = np.empty((count, columns), dtype=np.float32)
        view = memoryview(features).cast("B")
        if not read_exactly(descriptor, view) or zlib.crc32(view) != checksum or not np.isfinite(features).all():
            return None
        return features
    except OSError:
        return None
    finally:
        os.close(descriptor)


def store_features(cache: ImageCache, key: str, features: np.ndarray) -> None:
    """Within the cache's size limit, checksummed; a cache that cannot take it costs time later, never this run."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    payload = memoryview(features).cast("B")
    header = FEATURES_HEADER.pack(FEATURES_MAGIC, features.shape[0], features.shape[1], zlib.crc32(payload))
    cache.write_entry(cache.features_path(key), header, payload)




def frozen_phase_data(model, table: DatasetTable, train_rows, val_rows, images, *, device: str, precision: str,
                      show_progress: bool) -> FeatureData:
    """FeatureData standing in for `images` (the run's LocalisationData) in the frozen phase, computed on the
    training hardware's device (under DDP, this process's GPU) and in its precision (fp32, bf16 or fp16)."""
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    features = table_features(
        model, table, image_size=images.image_size, mean=images.mean, std=images.std, channels=images.channels,
        cache=images.cache, batch_size=images.batch_size, workers=images.workers, device=device,
        autocast_dtype=devices.autocast_dtype(precision), show_progress=show_progress,
    )
    data = FeatureData(features, table.targets, train_rows, val_rows, batch_size=images.batch_size, seed=images.seed)
    data.sample_weights = images.sample_weights  # the same draws as the image data
    return data
