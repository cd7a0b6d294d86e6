"""The run-folder format: the names of its files, config.json (the single source of truth) as `RunConfig`, the
training record it holds (`TrainingOutcome`), and a K-fold folder's ensemble.json (`EnsembleConfig`).

Training writes a run folder; prediction, evaluation, export, explanation and serving read it back and derive
nothing else about the model: label names, image size, channels, normalisation and thresholds are here.

A K-fold folder (`protloc train --folds K`) is a model too: its ensemble.json lists the fold run folders it
averages and holds the ensemble's own thresholds. `load_config` here and `models.run_weights.load_run` open either
kind of folder, so every command and `protloc.load` take both without a special case. This module reads and
checks the files (the weights file's header included) and imports nothing that builds or runs a network.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

from protloc.data import BIT_DEPTHS, Z2G
from protloc.data.stains import CHANNEL_COUNTS, CHANNEL_COUNTS_TEXT
from protloc.errors import ProtlocError
from protloc.files import write_json
from protloc.training_data import TrainingData, record_problems
# A run folder's names are typed once, in run_names.py (which files.py reads too); they are part of this format
# and importable from here.
from protloc.run_names import (BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, CURVES_FILE, ENSEMBLE_FILE,  # noqa: F401
                               FOLD_PREFIX, FOLDS_FILE, FOLDS_SUMMARY_ROWS, LAST_CHECKPOINT, LR_FILE, LR_PLOT_FILE,
                               METRICS_FILE, ONNX_FILE, OUT_OF_FOLD_FILE, OUTLIER_FILE, RECIPE_FILE, REPORT_FILE,
                               WEIGHTS_FILE, fold_dir, fold_number)
from protloc.training_outcome import TrainingOutcome

# A class's threshold until one is tuned for it, and the one validation scores are reported at.
DEFAULT_THRESHOLD = 0.5

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
    layout: str = Z2G
    # Full scale of the training images' pixels, 2**bit_depth - 1 (data.BIT_DEPTHS; data/intensity.py), applied to
    # every image the run reads. None in configs from before it was stored: each image's guessed from its maximum.
    bit_depth: int | None = None
    # The recipe and what came of it (split, seed, best epoch...), for the record; nothing reads it back
    # to rebuild the model. A dict (as config.json holds it) is read into a TrainingOutcome.
    training: TrainingOutcome = field(default_factory=TrainingOutcome)
    # Mahalanobis distance above which an image is unlike the training images (inference/outliers.py; the
    # description is OUTLIER_FILE). None in configs from before outlier scores: predictions then have none.
    outlier_threshold: float | None = None
    # What the model learned from (training_data.py); None in configs from before it was recorded.
    training_data: TrainingData | None = None

    def __post_init__(self) -> None:
        if isinstance(self.training, dict):
            self.training = TrainingOutcome.from_dict(self.training)
        if isinstance(self.training_data, dict):
            self.training_data = TrainingData.from_dict(self.training_data)

    @property
    def trained_on(self) -> str:
        """One line: what the model learned from."""
        if self.training_data is None:
            return "trained on data this config does not record (a run from before protloc recorded it)"
        return self.training_data.describe()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict:
        training_data = self.training_data.to_dict() if self.training_data is not None else None
        return {**dataclasses.asdict(self), "training": self.training.to_dict(), "training_data": training_data}

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_FILE) -> "RunConfig":
        """The config of a config.json object; a ProtlocError naming each field that is missing or wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ProtlocError(f"{source}: missing keys {', '.join(missing)} (not a protloc run config?)")
        for name in ("training", "training_data"):
            if not isinstance(data.get(name) or {}, (dict, TrainingOutcome, TrainingData)):
                raise ProtlocError(f"{source}: {name} {reprlib.repr(data[name])}: expected a JSON object")
        config = cls(**{key: value for key, value in data.items() if key in names})
        problems = config_problems(config)
        if config.bit_depth not in (None, *BIT_DEPTHS):
            problems.append(f"bit_depth {config.bit_depth!r} (expected {', '.join(map(str, BIT_DEPTHS))})")
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
    channels_ok = (isinstance(config.in_chans, int) and not isinstance(config.in_chans, bool)
                   and config.in_chans in CHANNEL_COUNTS)
    expect(channels_ok, "in_chans", f"{CHANNEL_COUNTS_TEXT} channels")
    if channels_ok:
        expect(_numbers(config.mean, config.in_chans), "mean", f"{config.in_chans} numbers, one per channel")
        expect(_numbers(config.std, config.in_chans) and all(value > 0 for value in config.std), "std",
               f"{config.in_chans} numbers above 0, one per channel")
    if names_ok:
        expect(_numbers(config.thresholds, config.num_classes) and all(0 < value <= 1 for value in config.thresholds),
               "thresholds", f"{config.num_classes} numbers in (0, 1], one per class of label_names")
    expect(_is_number(config.dropout) and 0 <= config.dropout < 1, "dropout", "a probability in [0, 1)")
    expect(isinstance(config.layout, str), "layout", "a dataset layout's name")
    expect(config.outlier_threshold is None or (_is_number(config.outlier_threshold) and config.outlier_threshold > 0),
           "outlier_threshold", "a positive number (or null: no outlier scores)")
    if isinstance(config.training_data, TrainingData):
        problems += record_problems(config.training_data)
    return problems


def save_config(run_dir: str | Path, config: RunConfig) -> None:
    """config.json of a run folder; for a K-fold folder's EnsembleConfig, its ensemble.json."""
    if isinstance(config, EnsembleConfig):
        write_json(Path(run_dir) / ENSEMBLE_FILE, config.record())
    else:
        write_json(Path(run_dir) / CONFIG_FILE, config.to_dict())


def read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtlocError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ProtlocError(f"{path}: expected a JSON object")
    return data


def load_config(run_dir: str | Path) -> RunConfig:
    """The config of a run folder, or the EnsembleConfig of a K-fold folder."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise ProtlocError(f"{run_dir}: no such run folder (expected the --out folder of protloc train)")
    if (Path(run_dir) / ENSEMBLE_FILE).is_file():
        return load_ensemble_config(run_dir)
    if not path.is_file() and fold_dir(run_dir, 0).is_dir():
        raise ProtlocError(
            f"{Path(run_dir) / ENSEMBLE_FILE}: not found: {run_dir} is a K-fold folder whose folds are unfinished "
            f"or that an earlier protloc trained; `protloc train --resume {run_dir}` finishes it and writes {ENSEMBLE_FILE}")
    if not path.is_file():
        raise ProtlocError(f"{path}: not found (a run folder holds config.json and model.safetensors)")
    config = RunConfig.from_dict(read_json_object(path), str(path))
    weights_path = Path(run_dir) / WEIGHTS_FILE
    try:  # the class count is in the weights' header: a mismatch shows before any work
        saved = read_weight_shapes(weights_path) if weights_path.is_file() else {}
    except ProtlocError:
        saved = {}  # unreadable weights are load_run's to report; an ONNX engine does not need them
    check_head_fits(config, saved, weights_path)
    return config


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


# ---------------------------------------------------------------- K-fold folders


@dataclass
class EnsembleConfig(RunConfig):
    """A K-fold folder as one model: the mean of its folds' probabilities, labelled by its own thresholds.

    What describes the network (backbone, image size, channels, layout...) is the folds' own, from their
    config.json files (which must agree on labels, channels and image size). The thresholds and `training`
    (the out-of-fold scores, see training/crossval.py) are the ensemble's, from ensemble.json, the one file
    that `protloc tune` rewrites. Mean 0 and std 1: the ensemble takes images scaled to 0..1 and each fold
    normalises them with its own mean and std inside (inference/ensemble.py), as it did in training.
    """

    folds: list[str] = field(default_factory=list)  # fold folder names, inside the K-fold folder
    fold_configs: list[RunConfig] = field(default_factory=list, repr=False)

    def record(self) -> dict:
        """What ensemble.json holds."""
        return ensemble_record(self.folds, self.label_set, self.label_names, self.thresholds, self.training,
                               self.outlier_threshold)

    def to_dict(self) -> dict:
        """The ensemble as one JSON object (e.g. for an ONNX file's metadata), each fold's normalisation included."""
        values = {key: value for key, value in super().to_dict().items() if key not in ("folds", "fold_configs")}
        normalization = [{"mean": config.mean, "std": config.std} for config in self.fold_configs]
        return {**values, "kind": "ensemble", "folds": list(self.folds), "fold_normalization": normalization}


def ensemble_record(folds: list[str], label_set: str, label_names: list[str], thresholds, training: TrainingOutcome,
                    outlier_threshold: float | None = None) -> dict:
    return {"kind": "ensemble", "folds": list(folds), "label_set": label_set, "label_names": list(label_names),
            "thresholds": [float(value) for value in thresholds], "training": training.to_dict(),
            "outlier_threshold": outlier_threshold}


def write_ensemble(out: str | Path, folds: list[str], label_set: str, label_names: list[str], thresholds,
                   training: TrainingOutcome, outlier_threshold: float | None = None) -> None:
    write_json(Path(out) / ENSEMBLE_FILE,
               ensemble_record(folds, label_set, label_names, thresholds, training, outlier_threshold))


def read_ensemble_record(path: Path) -> dict:
    data = read_json_object(path)
    missing = [key for key in ("folds", "label_set", "label_names", "thresholds") if key not in data]
    if missing:
        raise ProtlocError(f"{path}: missing keys {', '.join(missing)} (not a protloc K-fold ensemble?)")
    folds = data["folds"]
    # Only fold-<k> names, so that the file cannot point the model anywhere outside its own folder.
    if not isinstance(folds, list) or not folds or not all(isinstance(f, str) and fold_number(f) is not None and f == Path(f).name for f in folds):
        raise ProtlocError(f"{path}: \"folds\" must list one or more fold folder names (fold-0, fold-1, ...), got {folds!r}")
    problems = ensemble_record_problems(path, data)
    if problems:
        raise ProtlocError(*(f"{path}: {problem}" for problem in problems))
    return data


def ensemble_record_problems(path: Path, data: dict) -> list[str]:
    """What is wrong with an ensemble.json's fields (its folds already known to be fold-k names), one line each."""
    problems = []
    folds = data["folds"]
    if len(set(folds)) != len(folds):
        problems.append(f"folds {reprlib.repr(folds)}: a fold is listed more than once")
    for fold in dict.fromkeys(folds):
        if (path.parent / fold).is_symlink():
            problems.append(f"folds: {fold} is a symbolic link (a fold is a folder of its own K-fold folder)")
    names = data["label_names"]
    if not (isinstance(names, list) and names and all(isinstance(name, str) and name.strip() for name in names)
            and len(set(names)) == len(names)):
        problems.append(f"label_names {reprlib.repr(names)}: expected a list of distinct class names")
    elif not (_numbers(data["thresholds"], len(names)) and all(0 < value <= 1 for value in data["thresholds"])):
        problems.append(f"thresholds {reprlib.repr(data['thresholds'])}: expected one threshold per class, "
                        f"{len(names)} numbers in (0, 1] in the order of label_names")
    if not isinstance(data["label_set"], str):
        problems.append(f"label_set {reprlib.repr(data['label_set'])}: expected the label set's name")
    if not isinstance(data.get("training") or {}, dict):
        problems.append(f"training {reprlib.repr(data['training'])}: expected a JSON object")
    return problems



def load_ensemble_config(out: str | Path) -> EnsembleConfig:
    out = Path(out)
    path = out / ENSEMBLE_FILE
    data = read_ensemble_record(path)
    fold_configs = [load_config(out / fold) for fold in data["folds"]]
    first = fold_configs[0]
    for fold, config in zip(data["folds"], fold_configs):
        mismatch = [name for name in ("label_names", "in_chans", "image_size") if getattr(config, name) != getattr(first, name)]
        if list(config.label_names) != list(data["label_names"]):
            mismatch.append(f"label_names (not those of {ENSEMBLE_FILE})")
        if mismatch:
            raise ProtlocError(f"{out / fold}: its {', '.join(mismatch)} differ from those of {out / data['folds'][0]}; "
                               f"the folds of one ensemble must take the same images and predict the same classes")
    # Every RunConfig field from the first fold, so that what a fold's config says about its input holds for the ensemble.
    values = {item.name: getattr(first, item.name) for item in dataclasses.fields(RunConfig)}
    values.update(label_set=data["label_set"], label_names=list(data["label_names"]),
                  thresholds=[float(value) for value in data["thresholds"]], mean=[0.0] * first.in_chans,
                  std=[1.0] * first.in_chans, training=TrainingOutcome.from_dict(data.get("training") or {}),
                  outlier_threshold=ensemble_outlier_threshold(path, data, fold_configs))
    return EnsembleConfig(**values, folds=list(data["folds"]), fold_configs=fold_configs)


def ensemble_outlier_threshold(path: Path, data: dict, fold_configs: list[RunConfig]) -> float | None:
    """ensemble.json's outlier threshold; None where it or any fold has none (folds trained before outlier scores)."""
    value = data.get("outlier_threshold")
    if value is None or any(config.outlier_threshold is None for config in fold_configs):
        return None
    if not (_is_number(value) and value > 0):
        raise ProtlocError(f"{path}: outlier_threshold {reprlib.repr(value)}: expected a positive number (or null)")
    return float(value)
