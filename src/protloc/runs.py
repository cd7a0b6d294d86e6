"""The run folder: config.json (the single source of truth) and model.safetensors.

Training writes it; prediction, evaluation, export, explanation and serving read it back and derive
nothing else about the model: label names, image size, channels, normalisation and thresholds are here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.files import atomic_path, write_json
from protloc.training.outcome import TrainingOutcome

# Every file a run folder holds is named here, once; all other modules import these names.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # written by `protloc export`, read by `--engine onnx`
METRICS_FILE = "metrics.csv"  # one row per epoch
LR_FILE = "lr.csv"  # the learning rate at every step
CURVES_FILE = "curves.png"
LR_PLOT_FILE = "lr.png"
REPORT_FILE = "report.html"
CHECKPOINT_DIR = "checkpoints"  # Lightning checkpoints, one folder per phase, for --resume
RECIPE_FILE = "recipe.json"  # in CHECKPOINT_DIR: the config and normalisation a resumed run must share
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
FOLDS_FILE = "folds.csv"  # in a K-fold folder: one row per fold
FOLD_PREFIX = "fold-"  # a K-fold folder holds fold-0 ... fold-(K-1), each a run folder


def fold_dir(out: str | Path, fold: int) -> Path:
    return Path(out) / f"{FOLD_PREFIX}{fold}"


def fold_number(folder: str | Path) -> int | None:
    """k for a folder named fold-k, else None."""
    name = Path(folder).name
    suffix = name.removeprefix(FOLD_PREFIX)
    return int(suffix) if name.startswith(FOLD_PREFIX) and suffix.isdigit() else None


@dataclass
class RunConfig:
    backbone: str
    label_set: str
    label_names: list[str]
    image_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    thresholds: list[float]
    dropout: float = 0.0
    # Layout of the training data: predict writes that layout's Kaggle submission format by default.
    layout: str = "z2g"
    # Full scale of the training images' pixels, 2**bit_depth - 1 (8, 12 or 16; data/intensity.py), applied to
    # every image the run reads. None in configs from before it was stored: each image's guessed from its maximum.
    bit_depth: int | None = None
    # The recipe and what came of it (split, seed, best epoch...), for the record; nothing reads it back
    # to rebuild the model. A dict (as config.json holds it) is read into a TrainingOutcome.
    training: TrainingOutcome = field(default_factory=TrainingOutcome)

    def __post_init__(self) -> None:
        if isinstance(self.training, dict):
            self.training = TrainingOutcome.from_dict(self.training)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "training": self.training.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_FILE) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ProtlocError(f"{source}: missing keys {', '.join(missing)} (not a protloc run config?)")
        config = cls(**{key: value for key, value in data.items() if key in names})
        if len(config.thresholds) != config.num_classes:
            raise ProtlocError(f"{source}: {len(config.thresholds)} thresholds for {config.num_classes} classes")
        if config.bit_depth not in (None, 8, 12, 16):
            raise ProtlocError(f"{source}: bit_depth {config.bit_depth!r} (expected 8, 12 or 16)")
        return config


def save_run(run_dir: str | Path, config: RunConfig, model) -> None:
    """Write the weights, then the config: a folder with a config always has matching weights."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as temp:
        save_file(state, str(temp))
    save_config(run_dir, config)


def save_config(run_dir: str | Path, config: RunConfig) -> None:
    write_json(Path(run_dir) / CONFIG_FILE, config.to_dict())


def load_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise ProtlocError(f"{run_dir}: no such run folder (expected the --out folder of protloc train)")
    if not path.is_file():
        raise ProtlocError(f"{path}: not found (a run folder holds config.json and model.safetensors)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtlocError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ProtlocError(f"{path}: expected a JSON object")
    return RunConfig.from_dict(data, str(path))


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(RunConfig, model in eval mode) from a run folder. Weights are safetensors: nothing is unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from protloc.models.classifier import build_model

    config = load_config(run_dir)
    weights_path = Path(run_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ProtlocError(f"{weights_path}: not found (a run folder holds config.json and model.safetensors)")
    model = build_model(config.backbone, config.num_classes, pretrained=False, in_chans=config.in_chans, dropout=config.dropout)
    try:
        state = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError) as error:
        raise ProtlocError(f"{weights_path}: not a readable safetensors file ({error})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ProtlocError(
            f"{weights_path}: weights do not fit a {config.backbone} with {config.num_classes} classes "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return config, model.to(device).eval()


def eval_preset(config: RunConfig):
    """The run's eval transforms (resize, normalise with its mean/std): what prediction, evaluation,
    explanation, embedding and serving apply to every image."""
    from protloc.data.transforms import eval_transforms  # here: reading a config should not import torchvision

    return eval_transforms(image_size=config.image_size, mean=config.mean, std=config.std)
