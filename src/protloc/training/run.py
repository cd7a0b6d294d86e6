"""One training run on one split: the frozen phase, fine-tuning, then the run folder.

Two phases, each its own `Trainer.fit`: "frozen" trains the new head over a frozen ImageNet backbone, then
"finetune" trains everything; each phase has a fresh optimiser and its own one-cycle schedule. The best
epoch by validation macro F1 is kept (images labelled as predict labels them at 0.5: each at least one label),
per-class thresholds are tuned on validation under the same rule, and the run folder gets config.json, model.safetensors, metrics.csv, lr.csv, curves.png and lr.png.

Shuffling and augmentation follow (seed, epoch, image) and the model's randomness is reseeded from (seed,
epoch) each epoch, so a run stopped (`stop_after`, Ctrl-C) and resumed ends with the same weights as one
trained in one go (see resume.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from protloc.allocator import freed_memory_kept
from protloc.data.cache import ImageCache, open_image_cache
from protloc.data.dataset import ImageDataset
from protloc.data.readers import DatasetTable
from protloc.data.transforms import Augmentation, eval_preset
from protloc.files import save_figure, write_csv
from protloc.inference.outliers import describe_features, outlier_threshold, save_description
from protloc.inference.predictor import predict_probabilities
from protloc.inference.thresholds import class_ratio_thresholds, tune_thresholds
from protloc.lightning_quiet import expected_warnings_ignored
from protloc.metrics import scores_as_deployed
from protloc.models.backbones import backbone_spec
from protloc.models.classifier import ProtlocNet, build_model
from protloc.models.run_weights import save_run
from protloc.plots import plot_learning_rate, plot_training_curves
from protloc.runs import (BEST_CHECKPOINT, CHECKPOINT_DIR, CURVES_FILE, DEFAULT_THRESHOLD, LR_FILE, LR_PLOT_FILE,
                          METRICS_FILE, OUTLIER_FILE, RunConfig, TrainingOutcome)
from protloc.training.callbacks import SeedEachEpoch, TrainingHistory
from protloc.training.config import TrainConfig, recipe_of
from protloc.training.datamodule import LocalisationData
from protloc.training.features import compute_features, frozen_phase_data
from protloc.training.losses import auto_pos_weight, make_loss
from protloc.training.module import LocalisationModule
from protloc.training.normalization import run_normalization
from protloc.training.resume import phase_checkpoint, read_checkpoint, resume_point
from protloc.training.sampling import rare_class_weights
from protloc.training.trainer import Hardware, make_trainer, rank
from protloc.training_data import record_training_data


@dataclass
class Phase:
    name: str
    first_epoch: int  # 0-based, run-wide
    epochs: int
    lr: float


def plan_phases(config: TrainConfig) -> list[Phase]:
    phases = []
    if config.epochs_frozen:
        phases.append(Phase("frozen", 0, config.epochs_frozen, config.lr_frozen))
    if config.epochs:
        phases.append(Phase("finetune", config.epochs_frozen, config.epochs, config.lr))
    return phases


def input_size(config: TrainConfig) -> int:
    return config.image_size or backbone_spec(config.backbone).input_size


def frozen_stage_count(config: TrainConfig) -> int:
    """How many of the backbone's first stages fine-tuning leaves frozen: --frozen-stages, else the backbone's."""
    return config.frozen_stages if config.frozen_stages is not None else backbone_spec(config.backbone).frozen_stages


def augmentation_size(config: TrainConfig, table: DatasetTable, train_rows: np.ndarray, image_size: int,
                      sample: int = 8) -> int:
    """The side at which training images are kept and cropped: their own size, bounded by --augment-resolution
    times the input size, and never under the input size. Their own size is the smallest side among the first
    `sample` training images (every image is resized to a square, so a smaller one would be upsampled)."""
    bound = int(round(config.augment_resolution * image_size))
    if bound <= image_size:
        return image_size
    from protloc.data.cache import decode_resized
    from protloc.data.images import ImageReadError

    sides = []
    for source in table.frame["source"].iloc[train_rows[:sample]]:
        try:
            _image, shape = decode_resized(source, config.channels, 16, bit_depth=table.bit_depth)
        except ImageReadError:
            continue  # the pre-training check reports it
        sides.append(min(shape[:2]))
    return max(image_size, min([bound, *sides]))


def image_cache(config: TrainConfig) -> ImageCache | None:
    """The run's image cache (protloc.data.cache): each image decoded and resized once; None with --no-cache."""
    return open_image_cache(config.cache_dir, config.cache_limit_gb) if config.cache else None


def build_initial_model(config: TrainConfig, num_classes: int) -> ProtlocNet:
    """The network before training: ImageNet (or --weights) backbone and a head initialised from the seed."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config.backbone, num_classes, pretrained=config.pretrained, weights=config.weights,
                        in_chans=config.channels, dropout=config.dropout)
    model.backbone.early_modules(frozen_stage_count(config))  # a count the backbone cannot meet fails before training
    return model


def fit_phase(model: ProtlocNet, data: LocalisationData, config: TrainConfig, hardware: Hardware, phase: Phase, *,
              run_dir: Path, loss, label_names: list[str], history: TrainingHistory, max_epochs: int | None = None,
              ckpt_path: Path | None = None) -> None:
    """Train `model` in place for one phase (or its first `max_epochs` epochs), from `ckpt_path` if given."""
    module = LocalisationModule(
        model, phase=phase.name, first_epoch=phase.first_epoch, phase_epochs=phase.epochs, lr=phase.lr,
        optimizer=config.optimizer, weight_decay=config.weight_decay, loss=loss, label_names=label_names,
        head_only=getattr(data, "yields_features", False), frozen_stages=frozen_stage_count(config),
        # channels_last: faster convolutions on GPUs and, via oneDNN, on CPUs too (efficientnet_lite0 at 128 px,
        # 2 cores, fp32: 1.25x to 1.5x in both phases, measured).
        channels_last=True,
    )
    data.first_epoch = phase.first_epoch
    keep_freed_memory = freed_memory_kept() if phase.name == "frozen" else contextlib.nullcontext()
    with expected_warnings_ignored(), keep_freed_memory:
        trainer = make_trainer(config, hardware, max_epochs=max_epochs or phase.epochs,
                               checkpoint_dir=Path(run_dir) / CHECKPOINT_DIR / phase.name,
                               callbacks=[SeedEachEpoch(config.seed), history])
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    model.to(memory_format=torch.contiguous_format)


def train_run(config: TrainConfig, hardware: Hardware, table: DatasetTable, model: ProtlocNet, train_rows: np.ndarray,
              val_rows: np.ndarray, run_dir: Path) -> bool:
    """Train `model` on one split into `run_dir`: True when the run finished (rank 0 has written the run
    folder), False when it stopped early (`stop_after`; resume continues it)."""
    if config.show_progress and rank() == 0:
        print(f"{run_dir}: training on {hardware.describe()}", flush=True)
    image_size = input_size(config)
    cache = image_cache(config)
    mean, std = run_normalization(config, table.subset(train_rows), run_dir, image_size=image_size,
                                  workers=hardware.workers, cache=cache)
    data = LocalisationData(table, train_rows, val_rows, image_size=image_size, mean=mean, std=std,
                            channels=config.channels, batch_size=config.batch_size, workers=hardware.workers,
                            seed=config.seed, cache=cache,
                            train_size=augmentation_size(config, table, train_rows, image_size),
                            augmentation=Augmentation(resized_crop_scale=(config.crop_scale, 1.0)))
    if config.sampler == "rare":
        data.sample_weights = rare_class_weights(table.targets[train_rows])
    pos_weight = auto_pos_weight(table.targets[train_rows]) if config.pos_weight == "auto" else None
    history = TrainingHistory(run_dir / METRICS_FILE)
    fit = dict(run_dir=run_dir, loss=make_loss(config.loss, pos_weight), label_names=list(table.label_set.names),
               history=history)
    phases = plan_phases(config)
    points = resume_point(run_dir, [phase.name for phase in phases], config.resume)
    for phase in phases:
        if points[phase.name] == "skip":
            continue
        max_epochs = phase.epochs
        if config.stop_after is not None:
            max_epochs = min(phase.epochs, config.stop_after - phase.first_epoch)
        if max_epochs <= 0:
            break
        phase_data = data
        if config.head_only_features and phase.name == "frozen":
            phase_data = frozen_phase_data(model, table, train_rows, val_rows, data, device=hardware.device,
                                           precision=hardware.precision, show_progress=config.show_progress and rank() == 0)
        fit_phase(model, phase_data, config, hardware, phase, max_epochs=max_epochs, ckpt_path=points[phase.name], **fit)
    if len(history.rows) < config.epochs_frozen + config.epochs:
        return False
    if rank() == 0:
        finish_run(config, hardware, table, data, model, history, run_dir, image_size=image_size, mean=mean, std=std)
    return True


def load_best_weights(model: ProtlocNet, run_dir: Path, phase: str) -> None:
    """Put the best epoch's weights into `model`: its phase's best.ckpt (loaded without unpickling code)."""
    checkpoint = read_checkpoint(phase_checkpoint(run_dir, phase, BEST_CHECKPOINT), run_dir, keys=("state_dict",))
    state = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items() if key.startswith("model.")}
    model.load_state_dict(state, strict=True)


def finish_run(config: TrainConfig, hardware: Hardware, table: DatasetTable, data: LocalisationData, model: ProtlocNet,
               history: TrainingHistory, run_dir: Path, *, image_size: int, mean: list[float], std: list[float]) -> None:
    """Best weights, the training features described, thresholds tuned on validation, and the run folder."""
    metrics = history.metrics_frame()
    best = metrics.loc[metrics["val_f1_macro"].idxmax()]  # the first of equals, as ModelCheckpoint keeps it
    load_best_weights(model, run_dir, best["phase"])
    label_names = list(table.label_set.names)
    run_config = RunConfig(
        backbone=config.backbone, label_set=table.label_set.name, label_names=label_names, image_size=image_size,
        in_chans=config.channels, mean=list(mean), std=list(std), thresholds=[DEFAULT_THRESHOLD] * len(label_names),
        dropout=config.dropout, layout=table.layout, bit_depth=table.bit_depth,
        training_data=record_training_data(config.data, kind=config.data_kind, label_names=label_names,
                                           targets=table.targets, bit_depth=table.bit_depth),
    )
    def outlier_features(table: DatasetTable) -> np.ndarray:
        return compute_features(model, eval_images(table, run_config, config, data), batch_size=config.batch_size,
                                workers=data.val_workers(), device=hardware.device, autocast_dtype=None,
                                show_progress=False, stages=True)

    description = describe_features(outlier_features(data.train_table), model.backbone.feature_widths())
    validation_features = outlier_features(data.val_table)
    description.calibrate(validation_features)
    result = predict_probabilities(
        model, eval_images(data.val_table, run_config, config, data), run_config, batch_size=config.batch_size,
        workers=data.val_workers(), show_progress=False, device=hardware.device, precision="fp32",
    )
    probabilities, targets = result.outputs, data.val_table.targets
    if config.threshold_method == "class-ratio":
        thresholds = class_ratio_thresholds(probabilities, data.train_table.targets.mean(axis=0))
    else:
        thresholds = tune_thresholds(targets, probabilities)
    run_config.thresholds = [float(t) for t in thresholds]
    run_config.outlier_threshold = outlier_threshold(description.scores(validation_features))
    speed = metrics.groupby("phase", sort=False)["images_per_second"].mean()
    run_config.training = TrainingOutcome(
        recipe=recipe_of(config), image_size=image_size, n_train=len(data.train_table), n_val=len(data.val_table),
        best_epoch=int(best["epoch"]), best_phase=str(best["phase"]), precision_used=hardware.precision,
        frozen_stages_used=frozen_stage_count(config),
        world_size=hardware.world_size, images_per_second={phase: float(value) for phase, value in speed.items()},
        # Both in-sample: these images picked the epoch, and the thresholds too.
        val_at_05=scores_as_deployed(targets, probabilities, DEFAULT_THRESHOLD),
        val_tuned=scores_as_deployed(targets, probabilities, thresholds),
    )
    save_description(run_dir / OUTLIER_FILE, description)  # before config.json: a config never lacks its file
    write_run_folder(run_dir, run_config, model, history)


def eval_images(table: DatasetTable, run_config: RunConfig, config: TrainConfig, data: LocalisationData) -> ImageDataset:
    """A split's images as prediction reads them (the run's eval preset)."""
    return ImageDataset(table, channels=config.channels, transform=eval_preset(run_config),
                        image_size=run_config.image_size, cache=data.cache)


def write_run_folder(run_dir: Path, run_config: RunConfig, model: ProtlocNet, history: TrainingHistory) -> None:
    save_run(run_dir, run_config, model)
    metrics = history.metrics_frame()
    write_csv(run_dir / METRICS_FILE, metrics)
    learning_rates = history.learning_rate_frame()
    write_csv(run_dir / LR_FILE, learning_rates)
    save_figure(run_dir / CURVES_FILE, plot_training_curves(metrics))
    save_figure(run_dir / LR_PLOT_FILE, plot_learning_rate(learning_rates))
