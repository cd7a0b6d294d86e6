"""`train(config)`: the seed recipe on Lightning, from a labelled dataset to a run folder (run.py), or with
folds >= 2 to one per fold (crossval.py). Everything the user can fix is checked before training starts."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from protloc.data.check import find_image_problems
from protloc.data.intensity import detect_bit_depth
from protloc.data.readers import DatasetTable, read_dataset
from protloc.errors import DataError
from protloc.files import remove_empty_folders
from protloc.labels import get_label_set
from protloc.lightning_quiet import lightning_output
from protloc.training.config import TrainConfig, check_config
from protloc.training.crossval import train_folds
from protloc.training.module import NonFiniteTraining
from protloc.training.resume import check_out_folder
from protloc.training.run import build_initial_model, image_cache, input_size, train_run
from protloc.training.splits import make_split
from protloc.training.trainer import rank, resolve_hardware


def train(config: TrainConfig) -> Path:
    """Train as `config` says; returns the run folder (for K-fold, the folder holding fold-0 ... fold-K-1).

    Raises ProtlocError (DataError for the data) for anything the user can fix, before training starts.
    A run stopped by `stop_after` returns without config.json; train again with resume=True to continue.
    """
    check_config(config)
    hardware = resolve_hardware(config)
    out = Path(config.out)
    if rank() == 0:
        check_out_folder(config)
    table = read_training_table(config)
    made = missing_folders(out) if not config.resume else []  # the run folder and the parents this run makes
    with lightning_output(config.verbose):
        # Before the image scan: missing pretrained weights fail in seconds, not after minutes of reading.
        model = build_initial_model(config, len(table.label_set))
        if rank() == 0:
            check_images(table, config.show_progress, image_cache(config), input_size(config), config.channels)
        try:
            if config.folds >= 2:
                train_folds(config, hardware, table, model)
            else:
                train_rows, val_rows = make_split(config.validation_split, table.targets, config.val_fraction, config.seed)
                warn_about_small_validation(len(val_rows), config)
                train_run(config, hardware, table, model, train_rows, val_rows, out)
        except NonFiniteTraining:
            if made and rank() == 0:  # nothing of a diverged run is kept: resuming it would diverge again
                shutil.rmtree(out, ignore_errors=True)
                remove_empty_folders(made[1:])
            raise
    return out


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing, current = [], Path(os.path.abspath(folder))
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    return missing


# Below this many validation images the best epoch and the tuned thresholds rest on a handful of examples.
FEW_VALIDATION_IMAGES = 20


def warn_about_small_validation(count: int, config: TrainConfig) -> None:
    if count < FEW_VALIDATION_IMAGES and rank() == 0:
        logging.getLogger("protloc").warning(
            f"validation holds {count} image{'s' if count != 1 else ''} (--val-fraction {config.val_fraction}): the "
            "best epoch and the tuned thresholds rest on them alone; a larger --val-fraction or more data steadies them")


def read_training_table(config: TrainConfig) -> DatasetTable:
    label_set = get_label_set(config.labels) if config.labels else None
    table = read_dataset(config.data, layout=config.format, split="train", label_set=label_set, channels=config.channels)
    if not table.labelled:
        raise DataError(f"{config.data}: the {table.layout} layout has no labels; training needs labelled data (a CSV of images and labels)")
    table.bit_depth = config.bit_depth or detect_bit_depth(table)  # one intensity scale for the whole dataset
    return table


def check_images(table: DatasetTable, show_progress: bool, cache=None, image_size: int = 0, channels: int = 3) -> None:
    """Open every image before training: all problems at once, never a traceback from a DataLoader worker. With
    an image cache, images it holds are not decoded again and the others are stored for the first epoch."""
    probe = (cache.checking_probe(table.frame["source"], channels, image_size, bit_depth=table.bit_depth)
             if cache is not None else None)
    problems = find_image_problems(table, show_progress=show_progress, description="checking images",
                                   **({"probe": probe} if probe else {}))
    if problems:
        raise DataError(*problems, f"{len(problems)} image problem(s) in {table.csv_path or table.root}: fix or remove those rows, then train again")
