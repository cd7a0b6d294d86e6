"""What a training run is asked to do: `TrainConfig`, the names its options accept, and `check_config`.

Light on purpose (no torch): the command line builds its options from this module, and `protloc --help`
must stay fast. The losses and split methods are named here, once; losses.py and splits.py import them.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from protloc.data import BIT_DEPTHS
from protloc.data.stains import CHANNEL_COUNTS, CHANNEL_COUNTS_TEXT
from protloc.errors import ProtlocError
from protloc.training_outcome import rename_recipe_keys

VALIDATION_SPLITS = ("mask", "random", "stratified")
FOLD_SPLITS = ("stratified", "random")  # "mask" cannot make K disjoint folds
NORMALIZATIONS = ("backbone", "dataset")
OPTIMIZERS = ("adam", "adamw")
LOSSES = ("bce", "focal")
POS_WEIGHTS = ("none", "auto")
SAMPLERS = ("uniform", "rare")  # protloc.training.sampling
THRESHOLD_METHODS = ("f1", "class-ratio")  # protloc.inference.thresholds
GRAD_CLIP_MODES = ("value", "norm")

@dataclass
class TrainConfig:
    data: str
    out: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    pretrained: bool = True
    format: str | None = None  # dataset layout; None: detected
    labels: str | None = None  # label set; None: the layout's
    channels: int = 3
    bit_depth: int | None = None  # one of data.BIT_DEPTHS; None: detected from a sample of the training images
    image_size: int | None = None  # None: the backbone's native input size
    validation_split: str = "mask"
    val_fraction: float = 0.1
    seed: int = 42
    folds: int = 1  # K >= 2: K-fold cross-validation, one run per fold in OUT/fold-<k>
    fold_split: str = "stratified"  # how K-fold assigns images to folds, whatever validation_split says
    normalize: str = "backbone"  # or "dataset": per-channel mean/std of the training images
    data_kind: str = "auto"  # "demo", "real", or "auto": detected from the folder (training/training_data.py)
    epochs_frozen: int = 1
    epochs: int = 5
    lr_frozen: float = 1e-2
    # The seed's 1e-3 left the demo's four fine-tuning epochs short of converged; 2e-3 scored higher there
    # (docs/recipe.md).
    lr: float = 2e-3
    # Fine-tuning leaves the backbone's first stages (the stem counting as the first) as ImageNet trained them:
    # a step then skips their backward pass, so the same CPU time trains more epochs (docs/recipe.md).
    # None: the backbone's own number (BackboneSpec.frozen_stages: 4 for efficientnet_lite0, else 0).
    frozen_stages: int | None = None
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    grad_clip: float = 0.1  # 0: no clipping
    grad_clip_mode: str = "value"
    loss: str = "bce"
    pos_weight: str = "none"
    sampler: str = "uniform"  # "rare": draw images of rare classes more often
    threshold_method: str = "f1"  # per-class thresholds for F1, or "class-ratio": labelling each class as often as training
    dropout: float = 0.0
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    precision: str = "auto"  # auto, fp32, bf16 or fp16
    batch_size: int = 32
    workers: int | None = None  # None: trainer.worker_count decides
    devices: int = 1  # processes per node; 2 or more train with DDP
    num_nodes: int = 1
    resume: bool = False
    stop_after: int | None = None  # stop after this many epochs of the run (both phases); resume continues
    verbose: bool = False  # Lightning's own messages (device banners, model summary) too
    show_progress: bool = True
    cache: bool = True  # decode and resize each image once, kept on disk (protloc.data.cache); results are the same
    cache_dir: str | None = None  # None: $PROTLOC_CACHE_DIR, else ~/.cache/protloc
    cache_limit_gb: float | None = None  # None: $PROTLOC_CACHE_LIMIT_GB, else 10
    augment_resolution: float = 2.0  # training images kept at up to this many times image_size, cropped there
    # The smallest share of the image's area a random resized crop keeps (the largest: all of it). Crops zoom in,
    # so objects look larger in training than at evaluation (up to 1/sqrt(crop_scale) times): 0.8 keeps that gap
    # at 1.12x and scored higher than 0.5 at the make demo budget (docs/recipe.md).
    crop_scale: float = 0.8
    head_only_features: bool = False  # frozen phase on precomputed backbone features, without augmentation


FLOAT_OPTIONS = ("lr", "lr_frozen", "weight_decay", "grad_clip", "dropout", "val_fraction", "cache_limit_gb",
                 "crop_scale")
# The largest --image-size: a batch of 32 RGB images of 4096 px is 6.4 GB of float32 before the network; larger
# sizes fail on allocation instead of on a line that says why.
MAX_IMAGE_SIZE = 4096
# What a multi-node launcher sets in each process it starts (torchrun; SLURM's srun); Lightning reads them too.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "NODE_RANK", "SLURM_NODEID")


def check_config(config: TrainConfig) -> None:
    """Every problem with the options at once, before any work. (--device and --precision are checked where
    they are resolved, in protloc.devices.)"""
    problems = []

    def expect(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name, allowed in (("validation_split", VALIDATION_SPLITS), ("fold_split", FOLD_SPLITS), ("normalize", NORMALIZATIONS),
                          ("optimizer", OPTIMIZERS), ("loss", LOSSES), ("pos_weight", POS_WEIGHTS), ("sampler", SAMPLERS),
                          ("threshold_method", THRESHOLD_METHODS),
                          ("grad_clip_mode", GRAD_CLIP_MODES)):
        value = getattr(config, name)
        expect(value in allowed, f"{option(name)} {value}: expected one of {', '.join(allowed)}")
    expect(config.epochs_frozen >= 0 and config.epochs >= 0, "--epochs and --epochs-frozen: expected 0 or more")
    expect(config.epochs_frozen + config.epochs > 0, "--epochs-frozen and --epochs are both 0: nothing to train")
    infinite = [f"{option(name)} {value}: expected a finite number" for name in FLOAT_OPTIONS
                if (value := getattr(config, name)) is not None
                and not (isinstance(value, (int, float)) and math.isfinite(value))]
    if infinite:  # the checks below would take inf for a large number and NaN for anything
        raise ProtlocError(*infinite)
    expect(config.lr > 0 and config.lr_frozen > 0, "--lr and --lr-frozen: expected positive learning rates")
    expect(config.weight_decay >= 0, f"--weight-decay {config.weight_decay}: expected 0 or more")
    expect(config.grad_clip >= 0, f"--grad-clip {config.grad_clip}: expected 0 (off) or a positive value")
    expect(isinstance(config.seed, int) and 0 <= config.seed < 2**32, f"--seed {config.seed}: expected a whole number "
           f"from 0 to {2**32 - 1}")
    expect(config.batch_size >= 1, f"--batch-size {config.batch_size}: expected 1 or more")
    expect(config.workers is None or config.workers >= 0, f"--workers {config.workers}: expected 0 or more")
    expect(0.0 <= config.dropout < 1.0, f"--dropout {config.dropout}: expected a probability in [0, 1)")
    expect(0.0 < config.val_fraction < 1.0, f"--val-fraction {config.val_fraction}: expected a fraction between 0 and 1")
    expect(config.frozen_stages is None or config.frozen_stages >= 0,
           f"--frozen-stages {config.frozen_stages}: expected 0 (fine-tune everything) or more")
    expect(config.folds >= 1, f"--folds {config.folds}: expected 2 or more folds (1 = a single split)")
    expect(0.0 < config.crop_scale <= 1.0, f"--crop-scale {config.crop_scale}: expected a share of the image's area "
                                           "in (0, 1]")
    expect(config.augment_resolution >= 1.0, f"--augment-resolution {config.augment_resolution}: expected 1 (crop from "
                                              "the input-size copy) or more")
    expect(config.image_size is None or 16 <= config.image_size <= MAX_IMAGE_SIZE,
           f"--image-size {config.image_size}: expected 16 to {MAX_IMAGE_SIZE} pixels")
    expect(config.devices >= 1 and config.num_nodes >= 1, "--devices and --num-nodes: expected 1 or more")
    expect(config.num_nodes == 1 or any(name in os.environ for name in LAUNCHER_VARIABLES),
           f"--num-nodes {config.num_nodes}: no launcher started this process (torchrun or SLURM's srun set "
           f"{', '.join(LAUNCHER_VARIABLES[:2])}...); start one process per node with one of them")
    expect(config.stop_after is None or config.stop_after >= 1, f"--stop-after {config.stop_after}: expected 1 or more epochs")
    expect(config.channels in CHANNEL_COUNTS, f"--channels {config.channels}: expected {CHANNEL_COUNTS_TEXT}")
    expect(config.data_kind in ("auto", "demo", "real"), f"--data-kind {config.data_kind}: expected auto, demo or real")
    expect(config.bit_depth in (None, *BIT_DEPTHS),
           f"--bit-depth {config.bit_depth}: expected {', '.join(map(str, BIT_DEPTHS))}")
    expect(config.cache_limit_gb is None or config.cache_limit_gb >= 0, f"--cache-limit-gb {config.cache_limit_gb}: expected 0 or more")
    if problems:
        raise ProtlocError(*problems)


def option(field_name: str) -> str:
    """The command-line option of a TrainConfig field."""
    return "--" + field_name.replace("_", "-")


def recipe_of(config: TrainConfig) -> dict:
    """The config as a run records it: data and weights as absolute paths, so that a run resumed from another
    directory, or after its folder moved, finds them and compares them as what they are."""
    values = dataclasses.asdict(config)
    for key in ("data", "weights"):
        if values[key]:
            values[key] = str(Path(values[key]).resolve())
    return values


def upgrade_recipe(values: dict) -> dict:
    """A recorded recipe as today's TrainConfig reads it: today's key names (runs.rename_recipe_keys), and what
    earlier versions did without saying so.

    Recipes from before `fold_split` made their folds from `validation_split`: stratified folds for "stratified",
    a shuffled K-fold otherwise. They keep those folds, so a stopped K-fold run resumes on the folds it began; and
    they cropped augmentations from the input-size copy (augment_resolution 1), keeping half the image's area or more
    (crop_scale 0.5), and fine-tuned every stage of the backbone (frozen_stages 0)."""
    upgraded = rename_recipe_keys(values)
    # Earlier versions cropped from the copy at the input size.
    upgraded.setdefault("augment_resolution", 1.0)
    upgraded.setdefault("crop_scale", 0.5)  # and their random resized crops kept half the area or more
    upgraded.setdefault("frozen_stages", 0)  # and fine-tuned the whole backbone
    if "fold_split" not in upgraded and (upgraded.get("folds") or 1) >= 2:
        upgraded["fold_split"] = "stratified" if upgraded.get("validation_split") == "stratified" else "random"
    return upgraded


def config_from_recipe(values: dict, **changes) -> TrainConfig:
    """A TrainConfig from a recorded recipe (keys it no longer knows are dropped), with `changes` applied."""
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    known = {key: value for key, value in upgrade_recipe(values).items() if key in names}
    return TrainConfig(**{**known, **changes})
