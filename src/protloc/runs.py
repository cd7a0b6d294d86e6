"""The run folder: config.json (the single source of truth) and model.safetensors.

Training writes it; prediction, evaluation, export, explanation and serving read it back and derive
nothing else about the model: label names, image size, channels, normalisation and thresholds are here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
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
        """The config of a config.json object; a ProtlocError naming each field that is missing or wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ProtlocError(f"{source}: missing keys {', '.join(missing)} (not a protloc run config?)")
        if not isinstance(data.get("training", {}), (dict, TrainingOutcome)):
            raise ProtlocError(f"{source}: training {reprlib.repr(data['training'])}: expected a JSON object")
        config = cls(**{key: value for key, value in data.items() if key in names})
        problems = config_problems(config)
        if problems:
            raise ProtlocError(*(f"{source}: {problem}" for problem in problems))
        return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(_is_number(item) for item in value)


def config_problems(config: RunConfig) -> list[str]:
    """What is wrong with a config's fields, one line each ("FIELD VALUE: expected ..."); empty when it can be used.
    A run folder's config is read by hand-editable JSON: each field is checked before anything relies on it."""
    problems = []

    def expect(ok: bool, name: str, wanted: str) -> None:
        if not ok:
            problems.append(f"{name} {reprlib.repr(getattr(config, name))}: expected {wanted}")

    expect(isinstance(config.backbone, str) and config.backbone != "", "backbone", "a backbone name")
    expect(isinstance(config.label_set, str), "label_set", "the label set's name")
    names_ok = (isinstance(config.label_names, list) and len(config.label_names) > 0
                and all(isinstance(name, str) and name.strip() for name in config.label_names)
                and len(set(config.label_names)) == len(config.label_names))
    expect(names_ok, "label_names", "a list of distinct class names")
    size = config.image_size
    expect(isinstance(size, int) and not isinstance(size, bool) and size >= 16, "image_size",
           "a whole number of pixels, 16 or more")
    channels_ok = isinstance(config.in_chans, int) and not isinstance(config.in_chans, bool) and config.in_chans in (1, 3, 4)
    expect(channels_ok, "in_chans", "1, 3 or 4 channels")
    if channels_ok:
        expect(_numbers(config.mean, config.in_chans), "mean", f"{config.in_chans} numbers, one per channel")
        expect(_numbers(config.std, config.in_chans) and all(value > 0 for value in config.std), "std",
               f"{config.in_chans} numbers above 0, one per channel")
    if names_ok:
        expect(_numbers(config.thresholds, config.num_classes) and all(0 < value <= 1 for value in config.thresholds),
               "thresholds", f"{config.num_classes} numbers in (0, 1], one per class of label_names")
    expect(_is_number(config.dropout) and 0 <= config.dropout < 1, "dropout", "a probability in [0, 1)")
    expect(isinstance(config.layout, str), "layout", "a dataset layout's name")
    return problems


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
    config = RunConfig.from_dict(data, str(path))
    weights_path = Path(run_dir) / WEIGHTS_FILE
    try:  # the class count is in the weights' header: a mismatch shows before any work
        saved = read_weight_shapes(weights_path) if weights_path.is_file() else {}
    except ProtlocError:
        saved = {}  # unreadable weights are load_run's to report; an ONNX engine does not need them
    check_head_fits(config, saved, weights_path)
    return config


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(RunConfig, model in eval mode) from a run folder. Weights are safetensors: nothing is unpickled."""
    from safetensors.torch import load_file

    from protloc.models.classifier import build_model

    config = load_config(run_dir)
    weights_path = Path(run_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ProtlocError(f"{weights_path}: not found (a run folder holds config.json and model.safetensors)")
    shapes = read_weight_shapes(weights_path)
    model = build_model(config.backbone, config.num_classes, pretrained=False, in_chans=config.in_chans, dropout=config.dropout)
    check_weights_fit(config, shapes, {key: tuple(value.shape) for key, value in model.state_dict().items()}, weights_path)
    try:
        state = load_file(str(weights_path), device=device)
    except Exception as error:  # safetensors raises its own error, OSError or others for damaged files
        raise ProtlocError(f"{weights_path}: not a readable safetensors file ({type(error).__name__})") from None
    model.load_state_dict(state, strict=True)
    return config, model.to(device).eval()


def read_weight_shapes(weights_path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header (8 bytes of length, then JSON), without reading the
    tensors or importing torch."""
    problem = f"{weights_path}: not a readable safetensors file"
    try:
        with open(weights_path, "rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if not 2 <= length <= min(os.path.getsize(weights_path) - 8, 100_000_000):
                raise ProtlocError(f"{problem} (no header; damaged, or another kind of file?)")
            header = json.loads(stream.read(length))
        return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}
    except PermissionError:
        raise ProtlocError(f"{weights_path}: cannot be read (permission denied)") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ProtlocError(f"{problem} ({type(error).__name__} in its header)") from None


HEAD_WEIGHT = "head.1.weight"  # (classes, features): the classifier's last layer (models/classifier.py)


def check_head_fits(config: RunConfig, saved: dict[str, tuple], weights_path: Path) -> None:
    if HEAD_WEIGHT in saved and len(saved[HEAD_WEIGHT]) == 2 and saved[HEAD_WEIGHT][0] != config.num_classes:
        raise ProtlocError(f"{weights_path}: a head of {saved[HEAD_WEIGHT][0]} classes, but {CONFIG_FILE} has "
                           f"{config.num_classes} label_names (are the two files from different runs?)")


def check_weights_fit(config: RunConfig, saved: dict[str, tuple], expected: dict[str, tuple], weights_path: Path) -> None:
    """Refuse weights that the config's network cannot take, naming the config field that disagrees with them."""
    check_head_fits(config, saved, weights_path)
    stem = next((key for key, shape in expected.items() if len(shape) == 4), None)
    if stem in saved and len(saved[stem]) == 4 and saved[stem][1] != expected[stem][1]:
        raise ProtlocError(f"{weights_path}: takes {saved[stem][1]}-channel images, but {CONFIG_FILE} has in_chans "
                           f"{config.in_chans}")
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    wrong = [key for key in expected if key in saved and saved[key] != expected[key]]
    if missing or unexpected or wrong:
        examples = ", ".join((missing + unexpected + wrong)[:3])
        raise ProtlocError(f"{weights_path}: does not fit the backbone {config.backbone!r} of {CONFIG_FILE} "
                           f"({len(missing)} tensors missing, {len(unexpected)} unexpected, {len(wrong)} of another "
                           f"shape, e.g. {examples}); are the two files from different runs?")


def eval_preset(config: RunConfig):
    """The run's eval transforms (resize, normalise with its mean/std): what prediction, evaluation,
    explanation, embedding and serving apply to every image."""
    from protloc.data.transforms import eval_transforms  # here: reading a config should not import torchvision

    return eval_transforms(image_size=config.image_size, mean=config.mean, std=config.std)
