"""`train(config)`: the seed recipe on Lightning, from a dataset to a run folder.

Two phases, each its own `Trainer.fit`: "frozen" trains the new head over a frozen ImageNet backbone,
then "finetune" trains everything; each phase has a fresh optimiser and its own one-cycle schedule. The
best epoch by validation macro F1 (at 0.5) is kept, per-class thresholds are tuned on validation, and the
run folder gets config.json, model.safetensors, metrics.csv, lr.csv, curves.png and lr.png.

Resuming: Lightning's checkpoints go in RUN/checkpoints/<phase>/ (last.ckpt, written every epoch, for
resume; best.ckpt for the end), beside recipe.json (the options and normalisation a resumed run must share).
Shuffling and augmentation follow (seed, epoch, image) and the model's randomness is reseeded from (seed,
epoch) each epoch, so a run stopped (`stop_after`, Ctrl-C) and resumed ends with the same weights as one
trained in one go.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.errors import DataError, ProtlocError
from protloc.runs import CONFIG_FILE, WEIGHTS_FILE

SPLITS = ("mask", "random", "stratified")
NORMALIZATIONS = ("backbone", "dataset")
OPTIMIZERS = ("adam", "adamw")
LOSSES = ("bce", "focal")
POS_WEIGHTS = ("none", "auto")
GRAD_CLIP_MODES = ("value", "norm")
ACCELERATORS = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")

CHECKPOINT_DIR = "checkpoints"
RECIPE_FILE = "recipe.json"  # in CHECKPOINT_DIR: the config and normalisation a resumed run must share
METRICS_FILE = "metrics.csv"
LR_FILE = "lr.csv"
CURVES_FILE = "curves.png"
LR_PLOT_FILE = "lr.png"
FOLDS_FILE = "folds.csv"
# What may differ when a stopped run is resumed: where and how fast it runs, not what it learns.
RESUMABLE_CHANGES = ("resume", "stop_after", "workers", "devices", "num_nodes", "accelerator", "precision", "show_progress")


@dataclass
class TrainConfig:
    data: str
    out: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    pretrained: bool = True
    layout: str | None = None  # dataset format; None: detected
    labels: str | None = None  # label set; None: the layout's
    channels: int = 3
    bit_depth: int | None = None  # 8, 12 or 16; None: detected from a sample of the training images
    image_size: int | None = None  # None: the backbone's native input size
    split: str = "mask"
    val_fraction: float = 0.1
    seed: int = 42
    folds: int = 1  # K >= 2: K-fold cross-validation, one run per fold in OUT/fold-<k>
    normalize: str = "backbone"  # or "dataset": per-channel mean/std of the training images
    epochs_frozen: int = 1
    epochs: int = 5
    lr_frozen: float = 1e-2
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    grad_clip: float = 0.1  # 0: no clipping
    grad_clip_mode: str = "value"
    loss: str = "bce"
    pos_weight: str = "none"
    batch_size: int = 32
    workers: int | None = None  # None: min(4, CPU count)
    dropout: float = 0.0
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str = "auto"
    resume: bool = False
    stop_after: int | None = None  # stop after this many epochs of the run (both phases); resume continues
    show_progress: bool = True


# ---------------------------------------------------------------- checking the request


def check_config(config: TrainConfig) -> None:
    """Every problem with the options at once, before any work."""
    problems = []

    def expect(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name, allowed in (("split", SPLITS), ("normalize", NORMALIZATIONS), ("optimizer", OPTIMIZERS),
                          ("loss", LOSSES), ("pos_weight", POS_WEIGHTS), ("grad_clip_mode", GRAD_CLIP_MODES),
                          ("accelerator", ACCELERATORS), ("precision", PRECISIONS)):
        value = getattr(config, name)
        expect(value in allowed, f"--{name.replace('_', '-')} {value}: expected one of {', '.join(allowed)}")
    expect(config.epochs_frozen >= 0 and config.epochs >= 0, "--epochs and --epochs-frozen: expected 0 or more")
    expect(config.epochs_frozen + config.epochs > 0, "--epochs-frozen and --epochs are both 0: nothing to train")
    expect(config.lr > 0 and config.lr_frozen > 0, "--lr and --lr-frozen: expected positive learning rates")
    expect(config.weight_decay >= 0, f"--weight-decay {config.weight_decay}: expected 0 or more")
    expect(config.grad_clip >= 0, f"--grad-clip {config.grad_clip}: expected 0 (off) or a positive value")
    expect(config.batch_size >= 1, f"--batch-size {config.batch_size}: expected 1 or more")
    expect(config.workers is None or config.workers >= 0, f"--workers {config.workers}: expected 0 or more")
    expect(0.0 <= config.dropout < 1.0, f"--dropout {config.dropout}: expected a probability in [0, 1)")
    expect(0.0 < config.val_fraction < 1.0, f"--val-fraction {config.val_fraction}: expected a fraction between 0 and 1")
    expect(config.folds >= 1, f"--folds {config.folds}: expected 2 or more folds (1 = a single split)")
    expect(config.image_size is None or config.image_size >= 16, f"--image-size {config.image_size}: expected 16 or more pixels")
    expect(config.devices >= 1 and config.num_nodes >= 1, "--devices and --num-nodes: expected 1 or more")
    expect(config.stop_after is None or config.stop_after >= 1, f"--stop-after {config.stop_after}: expected 1 or more epochs")
    expect(config.channels in (1, 3, 4), f"--channels {config.channels}: expected 1, 3 or 4")
    expect(config.bit_depth in (None, 8, 12, 16), f"--bit-depth {config.bit_depth}: expected 8, 12 or 16")
    if problems:
        raise ProtlocError(*problems)


def rank() -> int:
    """This process's global rank; 0 outside distributed training. Known before any Trainer exists because
    Lightning's launcher starts the other ranks with their rank in the environment."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in (CONFIG_FILE, CHECKPOINT_DIR, FOLDS_FILE, "fold-0"))


def check_out_folder(config: TrainConfig) -> None:
    out = Path(config.out)
    resumable = (out / "fold-0").is_dir() if config.folds >= 2 else recipe_path(out).is_file()
    if config.resume and not resumable:
        raise ProtlocError(f"--resume: {out} holds no stopped run (expected {recipe_path(out)} from an earlier protloc train --out {out})")
    if not config.resume and holds_run(out):
        raise ProtlocError(f"--out {out} already holds a run: add --resume to continue it, or choose another folder")


def check_images(table, show_progress: bool) -> None:
    """Open every image before training: all problems at once, never a traceback from a DataLoader worker."""
    from protloc.data.check import find_image_problems

    problems = find_image_problems(table, show_progress=show_progress, description="checking images")
    if problems:
        raise DataError(*problems, f"{len(problems)} image problem(s) in {table.csv_path or table.root}: fix or remove those rows, then train again")


def read_training_table(config: TrainConfig):
    from protloc.data.intensity import detect_bit_depth
    from protloc.data.readers import read_dataset
    from protloc.labels import get_label_set

    label_set = get_label_set(config.labels) if config.labels else None
    table = read_dataset(config.data, layout=config.layout, split="train", label_set=label_set, channels=config.channels)
    if not table.labelled:
        raise DataError(f"{config.data}: the {table.layout} layout has no labels; training needs labelled data (a CSV of images and labels)")
    table.bit_depth = config.bit_depth or detect_bit_depth(table)  # one intensity scale for the dataset
    return table


# ---------------------------------------------------------------- the engine's settings


def resolve_accelerator(accelerator: str) -> str:
    import torch

    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ProtlocError("--accelerator gpu: no CUDA GPU is visible to torch (use --accelerator cpu)")
    return accelerator


def resolve_precision(precision: str, accelerator: str) -> str:
    """auto: mixed precision where the hardware computes in it natively; on CPUs without native bf16 (AVX512-BF16 or
    AMX) bf16 is emulated and several times slower than fp32, so auto means 32-bit there."""
    import torch

    if precision != "auto":
        return precision
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    from protloc.inference.predictor import bf16_is_native

    return "bf16-mixed" if bf16_is_native("cpu") else "32-true"


def engine_settings(config: TrainConfig) -> tuple[str, str]:
    """(accelerator, precision) as Lightning names them, "auto" resolved for this machine."""
    accelerator = resolve_accelerator(config.accelerator)
    return accelerator, resolve_precision(config.precision, accelerator)


def make_trainer(config: TrainConfig, *, max_epochs: int, checkpoint_dir: Path, callbacks: list):
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy

    accelerator, precision = engine_settings(config)
    distributed = config.devices * config.num_nodes > 1
    strategy = DDPStrategy(process_group_backend="gloo" if accelerator == "cpu" else "nccl") if distributed else "auto"
    # Best first: the "last" checkpoint written after it then holds its updated state, so a resumed run knows
    # the best score so far. Both save after validation *and* the history callback (train epoch end), so
    # last.ckpt holds the epoch's history row.
    best = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor="val_f1_macro", mode="max", save_top_k=1,
        save_weights_only=True, auto_insert_metric_name=False, enable_version_counter=False, save_on_train_epoch_end=True,
    )
    # Not save_last: Lightning 2.x refreshes last.ckpt only when a top-k checkpoint is saved, i.e. when the
    # score improved; resuming needs every epoch's.
    last = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    try:
        return L.Trainer(
            accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes, strategy=strategy,
            precision=precision, max_epochs=max_epochs,
            gradient_clip_val=config.grad_clip or None, gradient_clip_algorithm=config.grad_clip_mode,
            callbacks=[*callbacks, best, last], logger=False, default_root_dir=checkpoint_dir,
            # Our samplers shard and reshuffle by (seed, epoch) themselves.
            use_distributed_sampler=False, num_sanity_val_steps=0,
            enable_progress_bar=config.show_progress, enable_model_summary=config.show_progress,
        )
    except MisconfigurationException as error:  # e.g. more --devices than the machine has
        raise ProtlocError(f"--accelerator {config.accelerator} --devices {config.devices} --precision {config.precision}: {error}") from None


# ---------------------------------------------------------------- normalisation


def measure_normalization(table, *, image_size: int, channels: int, workers: int, show_progress: bool) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images (0..1 scale), as the model will see them (resized, no augmentation)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from protloc.data.dataset import ImageDataset
    from protloc.data.transforms import eval_transforms

    transform = eval_transforms(image_size=image_size, mean=[0.0] * channels, std=[1.0] * channels)
    dataset = ImageDataset(table, channels=channels, transform=transform, image_size=image_size)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    loader = DataLoader(dataset, batch_size=64, num_workers=workers)
    for images, *_ in tqdm(loader, desc="measuring mean/std", unit="batch", disable=not show_progress):
        images = images.double()
        total += images.sum(dim=(0, 2, 3))
        squares += (images**2).sum(dim=(0, 2, 3))
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / pixels
    std = (squares / pixels - mean**2).clamp_min(1e-12).sqrt()
    # A blank channel (the absent yellow stain of RGB data) would divide by ~0.
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    return [float(x) for x in mean], [float(x) for x in std]


# ---------------------------------------------------------------- the recipe file: what resume must share


def recipe_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / RECIPE_FILE


def read_recipe(run_dir: Path) -> dict | None:
    path = recipe_path(run_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtlocError(f"{path}: not valid JSON ({error}); the stopped run cannot be resumed") from None


def check_same_recipe(saved: dict, config: TrainConfig, path: Path) -> None:
    current = comparable(dataclasses.asdict(config))
    before = comparable(saved)
    differences = [
        f"  --{key.replace('_', '-')}: {before.get(key)!r} in the stopped run, {current[key]!r} now"
        for key in current if key not in RESUMABLE_CHANGES and before.get(key) != current[key]
    ]
    if differences:
        raise ProtlocError(
            f"--resume: the options differ from those of the stopped run ({path}):", *differences,
            "resume with the same options (only --stop-after, --workers, --devices, --num-nodes, --accelerator, --precision may change)",
        )


def comparable(values: dict) -> dict:
    values = dict(values)
    for key in ("data", "weights"):
        if values.get(key):
            values[key] = str(Path(values[key]).resolve())
    return values


def run_normalization(config: TrainConfig, table, train_rows, run_dir: Path, image_size: int, spec) -> tuple[list[float], list[float]]:
    """Mean/std of the run: the backbone's, or measured on the training split. Rank 0 measures and records it with
    the config; resumed runs and the other DDP ranks read it back rather than measuring again."""
    saved = read_recipe(run_dir) if (config.resume or rank() != 0) else None
    if saved is not None:
        if rank() == 0:
            check_same_recipe(saved["config"], config, recipe_path(run_dir))
        return saved["mean"], saved["std"]
    if config.normalize == "dataset":
        mean, std = measure_normalization(
            table.subset(train_rows), image_size=image_size, channels=config.channels,
            workers=worker_count(config), show_progress=config.show_progress and rank() == 0,
        )
    else:
        mean, std = (list(values) for values in spec.normalization(config.channels))
    if rank() == 0:
        from protloc.files import write_json

        write_json(recipe_path(run_dir), {"config": dataclasses.asdict(config), "mean": mean, "std": std})
    return mean, std


def worker_count(config: TrainConfig) -> int:
    return min(4, os.cpu_count() or 1) if config.workers is None else config.workers


# ---------------------------------------------------------------- phases


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


def phase_checkpoint(run_dir: Path, phase: str, name: str = "last.ckpt") -> Path:
    return run_dir / CHECKPOINT_DIR / phase / name


def fit_phase(model, data, config: TrainConfig, phase: Phase, *, run_dir: Path, loss, label_names, history,
              max_epochs: int | None = None, ckpt_path: Path | None = None):
    """Train `model` in place for one phase (or its first `max_epochs` epochs); returns the Trainer."""
    import torch

    from protloc.training.callbacks import SeedEachEpoch
    from protloc.training.module import LocalisationModule

    trainer = make_trainer(
        config, max_epochs=max_epochs or phase.epochs, checkpoint_dir=run_dir / CHECKPOINT_DIR / phase.name,
        callbacks=[SeedEachEpoch(config.seed), history],
    )
    module = LocalisationModule(
        model, phase=phase.name, first_epoch=phase.first_epoch, phase_epochs=phase.epochs, lr=phase.lr,
        optimizer=config.optimizer, weight_decay=config.weight_decay, loss=loss, label_names=label_names,
        # channels_last: faster convolutions on GPUs and, via oneDNN, on CPUs too (efficientnet_lite0 at 128 px,
        # 2 cores, fp32: 1.25x to 1.5x in both phases, measured).
        channels_last=True,
    )
    data.first_epoch = phase.first_epoch
    with warnings.catch_warnings():
        # The frozen backbone's BatchNorm layers are in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        # Resuming writes into the phase's own checkpoint folder, on purpose.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # Lightning 2.6's own use of a torch API that torch 2.14 deprecates; nothing to act on here.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    model.to(memory_format=torch.contiguous_format)
    return trainer


def resume_point(run_dir: Path, phases: list[Phase], resume: bool) -> dict[str, Path | None | str]:
    """For each phase: the checkpoint to continue from, None to train it afresh, or "skip" when a later phase's
    checkpoint already holds its outcome."""
    points: dict[str, Path | None | str] = {phase.name: None for phase in phases}
    if not resume:
        return points
    later_found = False
    for phase in reversed(phases):
        last = phase_checkpoint(run_dir, phase.name)
        if later_found:
            points[phase.name] = "skip"
        elif last.is_file():
            points[phase.name] = last
            later_found = True
    return points


def load_best_weights(model, run_dir: Path, phase: str) -> None:
    """Put the best epoch's weights into `model`: its phase's best.ckpt (loaded without unpickling code)."""
    import torch

    checkpoint = torch.load(phase_checkpoint(run_dir, phase, "best.ckpt"), map_location="cpu", weights_only=True)
    state = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items() if key.startswith("model.")}
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- one run


def build_initial_model(config: TrainConfig, num_classes: int):
    """The network before training: ImageNet (or --weights) backbone and a head initialised from the seed."""
    import lightning as L

    from protloc.models.classifier import build_model

    L.seed_everything(config.seed, workers=True, verbose=False)
    return build_model(config.backbone, num_classes, pretrained=config.pretrained, weights=config.weights,
                       in_chans=config.channels, dropout=config.dropout)


def train_split(config: TrainConfig, table, model, train_rows: np.ndarray, val_rows: np.ndarray, run_dir: Path) -> dict | None:
    """Train `model` on one split into `run_dir`. Returns the run's summary (only the run folder on ranks other
    than 0), or None when the run stopped early (`stop_after`)."""
    from protloc.models.backbones import backbone_spec
    from protloc.training.callbacks import TrainingHistory
    from protloc.training.datamodule import LocalisationData
    from protloc.training.losses import auto_pos_weight, make_loss

    spec = backbone_spec(config.backbone)
    image_size = config.image_size or spec.input_size
    mean, std = run_normalization(config, table, train_rows, run_dir, image_size, spec)
    data = LocalisationData(table, train_rows, val_rows, image_size=image_size, mean=mean, std=std,
                            channels=config.channels, batch_size=config.batch_size, workers=worker_count(config),
                            seed=config.seed)
    pos_weight = auto_pos_weight(table.targets[train_rows]) if config.pos_weight == "auto" else None
    loss = make_loss(config.loss, pos_weight)
    label_names = list(table.label_set.names)
    history = TrainingHistory(run_dir / METRICS_FILE)
    phases = plan_phases(config)
    points = resume_point(run_dir, phases, config.resume)
    trainer = None
    for phase in phases:
        if points[phase.name] == "skip":
            continue
        max_epochs = phase.epochs
        if config.stop_after is not None:
            max_epochs = min(phase.epochs, config.stop_after - phase.first_epoch)
        if max_epochs <= 0:
            break
        trainer = fit_phase(model, data, config, phase, run_dir=run_dir, loss=loss, label_names=label_names,
                            history=history, max_epochs=max_epochs, ckpt_path=points[phase.name])
    if len(history.rows) < config.epochs_frozen + config.epochs:
        return None
    if rank() != 0:
        return {"run": str(run_dir)}
    return finish_run(config, table, data, model, history, run_dir,
                      image_size=image_size, mean=mean, std=std, trainer=trainer,
                      n_train=len(train_rows), n_val=len(val_rows))


def finish_run(config: TrainConfig, table, data, model, history, run_dir: Path, *, image_size, mean, std,
               trainer, n_train: int, n_val: int) -> dict:
    """Best weights, thresholds tuned on validation, and the run folder."""
    import torch

    from protloc.files import save_figure, write_csv
    from protloc.inference.predictor import predict_probabilities
    from protloc.inference.thresholds import apply_thresholds, tune_thresholds
    from protloc.runs import RunConfig, save_run
    from protloc.training.metrics import multilabel_scores, scores_at_threshold
    from protloc.training.plots import plot_learning_rate, plot_training_curves

    metrics = history.metrics_frame()
    best_row = metrics.loc[metrics["val_f1_macro"].idxmax()].to_dict()  # first of equals, as ModelCheckpoint keeps
    load_best_weights(model, run_dir, best_row["phase"])
    label_names = list(table.label_set.names)
    run_config = RunConfig(
        backbone=config.backbone, label_set=table.label_set.name, label_names=label_names, image_size=image_size,
        in_chans=config.channels, mean=list(mean), std=list(std), thresholds=[0.5] * len(label_names),
        dropout=config.dropout, layout=table.layout, bit_depth=table.bit_depth,
    )
    device = "cuda" if resolve_accelerator(config.accelerator) == "gpu" else "cpu"
    probabilities, _ok = predict_probabilities(
        model, data.val_table, run_config, batch_size=config.batch_size, workers=worker_count(config),
        show_progress=config.show_progress, device=device, precision="fp32",
    )
    model.to("cpu", memory_format=torch.contiguous_format)
    targets = data.val_table.targets
    thresholds = tune_thresholds(targets, probabilities)
    speed = metrics.groupby("phase", sort=False)["images_per_second"].mean()
    run_config.thresholds = [float(t) for t in thresholds]
    run_config.training = {
        **dataclasses.asdict(config),
        "image_size": image_size,
        "n_train": n_train,
        "n_val": n_val,
        "best_epoch": int(best_row["epoch"]),
        "best_phase": best_row["phase"],
        "precision_used": str(trainer.precision) if trainer is not None else None,
        "world_size": trainer.world_size if trainer is not None else 1,
        "images_per_second": {phase: float(value) for phase, value in speed.items()},
        # The plain 0.5 cut, as in metrics.csv; then 0.5 and the tuned thresholds as predict labels (each image
        # at least one class), which compare like for like.
        "val_at_0.5": scores_at_threshold(targets, probabilities, 0.5),
        "val_at_0.5_predicted": multilabel_scores(targets, apply_thresholds(probabilities, 0.5)),
        "val_tuned": multilabel_scores(targets, apply_thresholds(probabilities, thresholds)),
    }
    save_run(run_dir, run_config, model)
    write_csv(run_dir / METRICS_FILE, metrics)
    learning_rates = history.learning_rate_frame()
    write_csv(run_dir / LR_FILE, learning_rates)
    save_figure(run_dir / CURVES_FILE, plot_training_curves(metrics))
    save_figure(run_dir / LR_PLOT_FILE, plot_learning_rate(learning_rates))
    return {
        "run": str(run_dir), "best_epoch": int(best_row["epoch"]), "best_val_f1_macro": float(best_row["val_f1_macro"]),
        "val_f1_macro_tuned": run_config.training["val_tuned"]["f1_macro"],
    }


# ---------------------------------------------------------------- the entry point


def train(config: TrainConfig) -> Path:
    """Train as `config` says; returns the run folder (for K-fold, the folder holding fold-0 ... fold-K-1).

    Raises ProtlocError (DataError for the data) for anything the user can fix, before training starts.
    A run stopped by `stop_after` returns without config.json; train again with resume=True to continue.
    """
    from protloc.training.splits import kfold_splits, make_split

    check_config(config)
    out = Path(config.out)
    if rank() == 0:
        check_out_folder(config)
    table = read_training_table(config)
    # Before the image scan: missing pretrained weights fail in seconds, not after minutes of reading.
    model = build_initial_model(config, len(table.label_set))
    if rank() == 0:
        check_images(table, config.show_progress)
    if config.folds < 2:
        train_rows, val_rows = make_split(config.split, table.targets, config.val_fraction, config.seed)
        train_split(config, table, model, train_rows, val_rows, out)
        return out
    initial_state = {key: value.clone() for key, value in model.state_dict().items()}
    summaries = []
    for fold, (train_rows, val_rows) in enumerate(kfold_splits(table.targets, config.folds, config.seed, config.split)):
        fold_dir = out / f"fold-{fold}"
        if config.resume and (fold_dir / CONFIG_FILE).is_file() and (fold_dir / WEIGHTS_FILE).is_file():
            summaries.append(summarize_finished(fold_dir))
            continue
        model.load_state_dict(initial_state)
        fold_config = dataclasses.replace(config, resume=config.resume and holds_run(fold_dir))
        summary = train_split(fold_config, table, model, train_rows, val_rows, fold_dir)
        if summary is None:  # stopped early: --resume continues with this fold
            return out
        summaries.append(summary)
    if rank() == 0:
        write_fold_summary(out, summaries)
    return out


def summarize_finished(run_dir: Path) -> dict:
    """The fold summary of a fold that finished before the stop, from its run folder."""
    import pandas as pd

    from protloc.runs import load_config

    training = load_config(run_dir).training
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    best_f1 = metrics.loc[metrics["epoch"] == training["best_epoch"], "val_f1_macro"].iloc[0]
    return {"run": str(run_dir), "best_epoch": training["best_epoch"], "best_val_f1_macro": float(best_f1),
            "val_f1_macro_tuned": training["val_tuned"]["f1_macro"]}


def write_fold_summary(out: Path, summaries: list[dict]) -> None:
    import pandas as pd

    from protloc.files import write_csv

    frame = pd.DataFrame(summaries)
    frame.insert(0, "fold", range(len(frame)))
    write_csv(out / FOLDS_FILE, frame)
