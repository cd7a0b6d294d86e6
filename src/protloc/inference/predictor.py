"""Probabilities and labels from a trained run: the one door from images to them, for every command that
runs a model (predict, tune, evaluate, explain, embed, serve, report) and for the Python API (`protloc.load`).

Images flow one way: table or in-memory images -> dataset (the run's eval preset) -> DataLoader ->
engine (torch model or ONNX Runtime session; see engines.py) -> sigmoid probabilities -> labels by the run's
thresholds. Everything about the model (label names, image size, channels, mean/std, thresholds) comes from
the run's config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from protloc.data.dataset import ImageDataset
from protloc.data.images import (ImageReadError, convert_channels, describe_read_error, load_image, pil_to_array,
                                 to_chw_tensor, to_image_array)
from protloc.data.readers import DatasetTable
from protloc.devices import bf16_is_native, resolve_device  # noqa: F401  (bf16_is_native: for training code)
from protloc.errors import DataError, ProtlocError
from protloc.inference import ENGINES
from protloc.inference.engines import OnnxEngine, TorchEngine, make_engine, open_onnx_session, predict_batch  # noqa: F401
from protloc.inference.thresholds import apply_thresholds
from protloc.labels import LabelSet
from protloc.runs import ONNX_FILE, RunConfig, eval_preset, load_config, load_run


# ---------------------------------------------------------------- inputs


def memory_image_to_array(image, channels: int) -> np.ndarray:
    """A numpy array (H, W[, C]) or PIL image -> uint8 (H, W, channels), converted as files are."""
    array = pil_to_array(image) if hasattr(image, "getbands") else np.asarray(image)
    try:
        converted = to_image_array(array)
    except ImageReadError:
        raise ProtlocError(
            f"image array of shape {array.shape}: expected (height, width) or (height, width, 1|3|4)"
        ) from None
    return convert_channels(converted, channels)


def _is_file_source(image) -> bool:
    """A path, or a stain set: a tuple of paths, one grayscale file per stain."""
    return isinstance(image, (str, Path)) or (
        isinstance(image, tuple) and len(image) > 0 and all(isinstance(part, (str, Path)) for part in image))


def read_input(image, channels: int) -> np.ndarray:
    """A path, a stain set, a numpy array or a PIL image -> uint8 (H, W, channels). Raises ProtlocError."""
    if not _is_file_source(image):
        return memory_image_to_array(image, channels)
    try:
        return load_image(image, channels)
    except ImageReadError as error:
        raise ProtlocError(describe_read_error(image, error)) from None


class InputImages(Dataset):
    """Paths, stain sets, numpy arrays and PIL images for the Python API; items are shaped like ImageDataset's."""

    def __init__(self, images: Sequence, *, channels: int, transform):
        self.images = list(images)
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        tensor = to_chw_tensor(read_input(self.images[index], self.channels))
        return self.transform(tensor), torch.zeros(0), index, ""


def image_ids(images: Sequence) -> list[str]:
    """File names without extension for paths, the position for in-memory images."""
    return [Path(image).stem if isinstance(image, (str, Path)) else str(index) for index, image in enumerate(images)]


def find_missing_files(table: DatasetTable) -> list[str]:
    """'PATH: file not found' for each image file the table names that does not exist: cheap to know before
    running the model, unlike a corrupt file."""
    lines = []
    for source in table.frame["source"]:
        for path in [source] if isinstance(source, str) else source:
            if not Path(path).is_file():
                lines.append(f"{path}: file not found")
    return lines


# ---------------------------------------------------------------- batches


class TableResult(NamedTuple):
    """Per row of a dataset, in its order: the model's outputs and why an image could not be read."""

    outputs: np.ndarray  # (N, width) float32: probabilities or features; meaningless where a problem is
    problems: list[str]  # "" for an image that was read, else 'PATH: why'

    @property
    def ok(self) -> np.ndarray:
        return np.array([not problem for problem in self.problems], dtype=bool)

    @property
    def unreadable(self) -> list[str]:
        return [problem for problem in self.problems if problem]


def _loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    if batch_size < 1:
        raise ProtlocError(f"batch size {batch_size}: expected 1 or more")
    if workers < 0:
        raise ProtlocError(f"workers {workers}: expected 0 or more")
    if len(dataset) <= batch_size:
        workers = 0  # one batch: nothing to overlap with, so starting worker processes only costs time
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=False)


def _run_batches(run_batch: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, width: int | None,
                 batch_size: int, workers: int, show_progress: bool, desc: str) -> TableResult:
    """`run_batch` on each batch of images, rows in `dataset` order.

    width=None: the width of the first batch's outputs (0 for an empty dataset), for outputs such as
    features whose width only the model knows.
    """
    from tqdm import tqdm

    outputs = None if width is None else np.zeros((len(dataset), width), dtype=np.float32)
    problems = [""] * len(dataset)
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not show_progress, leave=False) as bar:
        for images, _targets, rows, batch_problems in _loader(dataset, batch_size, workers):
            batch = run_batch(images).numpy()
            if outputs is None:
                outputs = np.zeros((len(dataset), batch.shape[1]), dtype=np.float32)
            outputs[rows.numpy()] = batch
            for row, problem in zip(rows.tolist(), batch_problems):
                problems[row] = problem
            bar.update(len(rows))
    return TableResult(outputs if outputs is not None else np.zeros((0, 0), dtype=np.float32), problems)


# ---------------------------------------------------------------- the door


@dataclass
class Prediction:
    """What `Predictor.predict` returns: one row per image, in input order."""

    ids: list[str]
    label_names: list[str]
    probabilities: np.ndarray  # (N, C) float32
    predicted: np.ndarray  # (N, C) bool

    @property
    def labels(self) -> list[list[str]]:
        """Class names per image."""
        return [[self.label_names[i] for i in np.flatnonzero(row)] for row in self.predicted]

    @property
    def class_indices(self) -> list[list[int]]:
        return [[int(i) for i in np.flatnonzero(row)] for row in self.predicted]

    def to_frame(self) -> pd.DataFrame:
        """Columns: id, labels ("; "-joined class names), then one probability column per class."""
        frame = pd.DataFrame(self.probabilities, columns=self.label_names)
        frame.insert(0, "labels", ["; ".join(names) for names in self.labels])
        frame.insert(0, "id", self.ids)
        return frame


class Predictor:
    """A loaded run: `predict` / `predict_proba` on images, `predict_table` / `embed_table` on datasets."""

    def __init__(self, config: RunConfig, engine, *, device: str = "auto", precision: str = "auto"):
        self.config = config
        self.engine = make_engine(engine, device=device, precision=precision)
        self.transform = eval_preset(config)

    @property
    def label_names(self) -> list[str]:
        return list(self.config.label_names)

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(self.config.label_set, tuple(self.config.label_names))

    @property
    def model(self) -> nn.Module:
        """The torch model, for what needs more than probabilities (Grad-CAM)."""
        return self._torch_engine().model

    def _torch_engine(self) -> TorchEngine:
        if not isinstance(self.engine, TorchEngine):
            raise ProtlocError("this needs the torch model (an ONNX file holds only the probabilities); use --engine torch")
        return self.engine

    def dataset(self, table: DatasetTable) -> ImageDataset:
        """The run's eval preset over a table; unreadable images come back with their problem, not an exception."""
        return ImageDataset(table, channels=self.config.in_chans, transform=self.transform,
                            image_size=self.config.image_size, strict=False)

    def prepare(self, image) -> torch.Tensor:
        """One image (path, stain set, array or PIL image) as the model takes it: (C, H, W) float, the eval preset
        applied. Raises ProtlocError naming an unreadable file."""
        return self.transform(to_chw_tensor(read_input(image, self.config.in_chans)))

    def probabilities(self, batch: torch.Tensor, *, tta: bool = False) -> np.ndarray:
        """(N, C) probabilities of a prepared batch (N, C, H, W)."""
        return predict_batch(self.engine, batch, tta).numpy()

    def predict_table(self, data: DatasetTable | Dataset, *, batch_size: int = 32, workers: int = 0,
                      tta: bool = False, show_progress: bool = False) -> TableResult:
        """Probabilities of every image of a table (or of a Dataset with ImageDataset-shaped items)."""
        dataset = self.dataset(data) if isinstance(data, DatasetTable) else data
        return _run_batches(lambda images: predict_batch(self.engine, images, tta), dataset,
                            width=self.config.num_classes, batch_size=batch_size, workers=workers,
                            show_progress=show_progress, desc="predict")

    def embed_table(self, table: DatasetTable, *, batch_size: int = 32, workers: int = 0,
                    show_progress: bool = False) -> np.ndarray:
        """Pooled backbone features (N, F) float32 via model.embed. Unreadable images raise a DataError naming them."""
        engine = self._torch_engine()  # before any image is read
        result = _run_batches(engine.embed, self.dataset(table), width=None, batch_size=batch_size,
                              workers=workers, show_progress=show_progress, desc="embed")
        if result.unreadable:
            raise DataError(*result.unreadable)
        return result.outputs

    def predict_proba(self, images: Sequence, *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """(N, C) probabilities for paths, numpy arrays (H, W[, C]; uint8, uint16 or 0..1 float) or PIL images."""
        dataset = InputImages(_as_list(images), channels=self.config.in_chans, transform=self.transform)
        return self.predict_table(dataset, batch_size=batch_size, tta=tta).outputs

    def decide(self, probabilities: np.ndarray, *, threshold: float | None = None, allow_empty: bool = False) -> np.ndarray:
        """Boolean labels (N, C): the run's per-class thresholds, or one `threshold` for all classes."""
        thresholds = self.config.thresholds if threshold is None else threshold
        return apply_thresholds(probabilities, thresholds, allow_empty=allow_empty)

    def predict(self, images: Sequence, *, tta: bool = False, threshold: float | None = None,
                allow_empty: bool = False, batch_size: int = 32) -> Prediction:
        images = _as_list(images)
        probabilities = self.predict_proba(images, tta=tta, batch_size=batch_size)
        predicted = self.decide(probabilities, threshold=threshold, allow_empty=allow_empty)
        return Prediction(image_ids(images), self.label_names, probabilities, predicted)


def _as_list(images) -> list:
    """One image (a path, a (H, W[, C]) array or a PIL image), a sequence of them or an (N, H, W, C) array -> a list."""
    if isinstance(images, (str, Path)) or hasattr(images, "getbands"):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [images]
    return list(images)


def predict_probabilities(model_or_session, data: DatasetTable | Dataset, config: RunConfig, *, batch_size: int = 32,
                          workers: int = 0, tta: bool = False, show_progress: bool = True, device: str = "cpu",
                          precision: str = "auto") -> TableResult:
    """Predictor(config, model).predict_table(data): for code that holds a model rather than a run folder."""
    predictor = Predictor(config, model_or_session, device=device, precision=precision)
    return predictor.predict_table(data, batch_size=batch_size, workers=workers, tta=tta, show_progress=show_progress)


def load_predictor(run_dir: str | Path, *, device: str = "auto", engine: str = "torch",
                   onnx_path: str | Path | None = None, precision: str = "auto") -> Predictor:
    """A Predictor on a run folder; engine "onnx" runs the run's ONNX export (or `onnx_path`) with ONNX Runtime."""
    if engine not in ENGINES:
        raise ProtlocError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "onnx":
        if device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
            raise ProtlocError(f"--engine onnx runs on the CPU in fp32 (ONNX Runtime's CPU provider), not "
                               f"--device {device} --precision {precision}; use --engine torch for those")
        config = load_config(run_dir)
        return Predictor(config, open_onnx_session(onnx_path or Path(run_dir) / ONNX_FILE, config, run_dir))
    device = resolve_device(device)
    config, model = load_run(run_dir, device=device)
    return Predictor(config, model, device=device, precision=precision)
