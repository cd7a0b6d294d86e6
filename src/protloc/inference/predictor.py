"""Probabilities from a trained run: the one core behind `protloc predict`, `protloc tune` and `protloc.load`.

Images flow one way: table or in-memory images -> dataset (the run's eval preset) -> DataLoader ->
engine (torch model or ONNX Runtime session) -> sigmoid probabilities -> labels by the run's thresholds.
Everything about the model (label names, image size, channels, mean/std, thresholds) comes from the run's
config.json.

Precision: "auto" uses bfloat16 autocast only where the hardware computes in bf16 natively (CPUs with
AVX512-BF16 or AMX, CUDA GPUs that support it). Elsewhere oneDNN emulates bf16: on an AVX2-only CPU it was
3x (resnet18) to 15x (efficientnet_lite0) slower than fp32, so "auto" means fp32 there. bf16 moved
probabilities by up to 5e-3 (efficientnet_lite0), enough to flip a label that sits on its threshold; use
"fp32" where outputs must match exactly (ONNX parity, tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from protloc.data.dataset import ImageDataset
from protloc.data.images import ImageReadError, convert_channels, load_image, pil_to_array, read_array, to_image_array
from protloc.data.readers import DatasetTable
from protloc.data.transforms import eval_transforms
from protloc.errors import DataError, ProtlocError
from protloc.inference.thresholds import apply_thresholds
from protloc.labels import LabelSet
from protloc.runs import RunConfig, load_run

PRECISIONS = ("auto", "fp32", "bf16")
ENGINES = ("torch", "onnx")
ONNX_FILE = "model.onnx"


# ---------------------------------------------------------------- engines: a batch in, probabilities out


def bf16_is_native(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private oneDNN query that older or CPU-limited builds may lack
        return False


class TorchEngine:
    """A ProtlocNet in eval mode. Converts the model to channels_last in place (faster convolutions on CPU)."""

    def __init__(self, model: nn.Module, *, device: str = "cpu", precision: str = "auto"):
        if precision not in PRECISIONS:
            raise ProtlocError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.device = device
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.bf16 = precision == "bf16" or (precision == "auto" and bf16_is_native(device))

    def _run(self, method, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return method(images).float().cpu()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._run(self.model, images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.embed, images)


class OnnxEngine:
    """An ONNX Runtime session over a `protloc export` file, whose output already is probabilities."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (probabilities,) = self.session.run(None, {self.input_name: images.float().numpy()})
        return torch.from_numpy(probabilities)


def make_engine(model_or_session, *, device: str = "cpu", precision: str = "auto"):
    """A torch model, an ONNX Runtime session or an engine -> an engine."""
    if isinstance(model_or_session, (TorchEngine, OnnxEngine)):
        return model_or_session
    if isinstance(model_or_session, nn.Module):
        return TorchEngine(model_or_session, device=device, precision=precision)
    return OnnxEngine(model_or_session)


def open_onnx_session(path: str | Path, config: RunConfig, run_dir: str | Path = "RUN"):
    """An ONNX Runtime session on `path`, checked against the run's config."""
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"{path}: ONNX model not found; run `protloc export {run_dir} --onnx {path}` first")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for unreadable or invalid files
        raise ProtlocError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
    shape = session.get_inputs()[0].shape  # [batch, channels, height, width]; batch is a name
    expected = [config.in_chans, config.image_size, config.image_size]
    outputs = session.get_outputs()[0].shape
    if list(shape[1:]) != expected or outputs[-1] != config.num_classes:
        raise ProtlocError(
            f"{path}: takes images {shape[1:]} and gives {outputs[-1]} outputs, but the run expects "
            f"{expected} and {config.num_classes} classes (exported from another run? run `protloc export {run_dir} --onnx {path}`)"
        )
    return session


# ---------------------------------------------------------------- test-time augmentation


def dihedral_views(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 symmetries of the square: 4 quarter turns, with and without a horizontal flip.

    A microscope field has no up or left, so each is as valid a view as the original; these are exact
    (no interpolation), and as a group they make the average invariant under any flip or quarter turn.
    """
    for view in (images, images.flip(-1)):
        for turns in range(4):
            yield torch.rot90(view, turns, dims=(-2, -1))


def predict_batch(engine, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    if not tta:
        return engine(images)
    return torch.stack([engine(view.contiguous()) for view in dihedral_views(images)]).mean(dim=0)


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


class InputImages(Dataset):
    """Paths, numpy arrays and PIL images for the Python API; items are shaped like ImageDataset's."""

    def __init__(self, images: Sequence, *, channels: int, transform):
        self.images = list(images)
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if isinstance(image, (str, Path)):
            try:
                array = load_image(image, self.channels)
            except ImageReadError as error:
                raise ProtlocError(f"{image}: {error}") from None
        else:
            array = memory_image_to_array(image, self.channels)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return self.transform(tensor), torch.zeros(0), index, True


def image_ids(images: Sequence) -> list[str]:
    """File names without extension for paths, the position for in-memory images."""
    return [Path(image).stem if isinstance(image, (str, Path)) else str(index) for index, image in enumerate(images)]


def make_dataset(table: DatasetTable, config: RunConfig) -> ImageDataset:
    """The run's eval preset over a table; unreadable images come back with ok=False, not an exception."""
    transform = eval_transforms(image_size=config.image_size, mean=config.mean, std=config.std)
    return ImageDataset(table, channels=config.in_chans, transform=transform, image_size=config.image_size, strict=False)


def _loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    if batch_size < 1:
        raise ProtlocError(f"batch size {batch_size}: expected 1 or more")
    if workers < 0:
        raise ProtlocError(f"workers {workers}: expected 0 or more")
    if len(dataset) <= batch_size:
        workers = 0  # one batch: nothing to overlap with, so starting worker processes only costs time
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=False)


def _as_dataset(data, config: RunConfig) -> Dataset:
    return make_dataset(data, config) if isinstance(data, DatasetTable) else data


def _progress(total: int, show: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not show, leave=False)


# ---------------------------------------------------------------- the core


def _run_batches(
    run_batch: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    *,
    width: int | None = None,
    batch_size: int,
    workers: int,
    show_progress: bool,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs (N, width) float32, ok (N,) bool): `run_batch` on each batch of images, rows in `dataset` order.

    width=None: the width of the first batch's outputs (0 for an empty dataset), for outputs such as
    features whose width only the model knows.
    """
    outputs = None if width is None else np.zeros((len(dataset), width), dtype=np.float32)
    ok = np.zeros(len(dataset), dtype=bool)
    with _progress(len(dataset), show_progress, desc) as bar:
        for images, _targets, rows, batch_ok in _loader(dataset, batch_size, workers):
            batch = run_batch(images).numpy()
            if outputs is None:
                outputs = np.zeros((len(dataset), batch.shape[1]), dtype=np.float32)
            outputs[rows.numpy()] = batch
            ok[rows.numpy()] = batch_ok.numpy()
            bar.update(len(rows))
    return (outputs if outputs is not None else np.zeros((0, 0), dtype=np.float32)), ok


def predict_probabilities(
    model_or_session,
    data: DatasetTable | Dataset,
    config: RunConfig,
    *,
    batch_size: int = 32,
    workers: int = 0,
    tta: bool = False,
    show_progress: bool = True,
    device: str = "cpu",
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C) float32, ok (N,) bool) in the order of `data`.

    Rows whose image could not be read have ok=False and meaningless probabilities; `describe_unreadable`
    says which file and why. `data` is a DatasetTable (read with the run's eval preset) or a Dataset with
    ImageDataset-shaped items.
    """
    engine = make_engine(model_or_session, device=device, precision=precision)
    return _run_batches(lambda images: predict_batch(engine, images, tta), _as_dataset(data, config),
                        width=config.num_classes, batch_size=batch_size, workers=workers,
                        show_progress=show_progress, desc="predict")


def embed_features(
    model,
    data: DatasetTable | Dataset,
    config: RunConfig,
    *,
    batch_size: int = 32,
    workers: int = 0,
    show_progress: bool = True,
    device: str = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """Pooled backbone features (N, F) float32 via model.embed. Unreadable images raise a DataError naming them."""
    engine = make_engine(model, device=device, precision=precision)
    if not isinstance(engine, TorchEngine):
        raise ProtlocError("features need the torch model (ONNX files hold only the probabilities)")
    features, ok = _run_batches(engine.embed, _as_dataset(data, config), batch_size=batch_size, workers=workers,
                                show_progress=show_progress, desc="embed")
    if not ok.all() and isinstance(data, DatasetTable):
        raise DataError(*describe_unreadable(data, ok, config.in_chans))
    return features


def find_missing_files(table: DatasetTable) -> list[str]:
    """'PATH: file not found' for each image file the table names that does not exist: cheap to know before
    running the model, unlike a corrupt file."""
    lines = []
    for source in table.frame["source"]:
        for path in [source] if isinstance(source, str) else source:
            if not Path(path).is_file():
                lines.append(f"{path}: file not found")
    return lines


def describe_unreadable(table: DatasetTable, ok: np.ndarray, channels: int) -> list[str]:
    """'PATH: why' for each row with ok=False; for stain sets, the stain file that failed."""
    lines = []
    for row in np.flatnonzero(~np.asarray(ok)):
        source = table.frame["source"].iloc[row]
        paths = [source] if isinstance(source, str) else list(source)
        name, reason = paths[0], "could not be read"
        for path in paths:
            try:
                read_array(path)
            except ImageReadError as error:
                name, reason = path, str(error)
                break
        else:
            try:
                load_image(source, channels)
            except (ImageReadError, ValueError) as error:
                reason = str(error)
        lines.append(f"{name}: {reason}")
    return lines


# ---------------------------------------------------------------- the Python API's object


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
    """A loaded run: `predict` / `predict_proba` on images, `predict_table` on datasets."""

    def __init__(self, config: RunConfig, engine, *, device: str = "cpu", precision: str = "auto"):
        self.config = config
        self.engine = make_engine(engine, device=device, precision=precision)

    @property
    def label_names(self) -> list[str]:
        return list(self.config.label_names)

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(self.config.label_set, tuple(self.config.label_names))

    def predict_table(self, table: DatasetTable | Dataset, *, batch_size: int = 32, workers: int = 0,
                      tta: bool = False, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return predict_probabilities(self.engine, table, self.config, batch_size=batch_size, workers=workers,
                                     tta=tta, show_progress=show_progress)

    def predict_proba(self, images: Sequence, *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """(N, C) probabilities for paths, numpy arrays (H, W[, C]; uint8, uint16 or 0..1 float) or PIL images."""
        images = _as_list(images)
        transform = eval_transforms(image_size=self.config.image_size, mean=self.config.mean, std=self.config.std)
        dataset = InputImages(images, channels=self.config.in_chans, transform=transform)
        probabilities, _ok = self.predict_table(dataset, batch_size=batch_size, tta=tta)
        return probabilities

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


def load_predictor(run_dir: str | Path, *, device: str = "cpu", engine: str = "torch",
                   onnx_path: str | Path | None = None, precision: str = "auto") -> Predictor:
    """A Predictor on a run folder; engine "onnx" runs RUN/model.onnx (or `onnx_path`) with ONNX Runtime."""
    if engine not in ENGINES:
        raise ProtlocError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "onnx":
        from protloc.runs import load_config

        config = load_config(run_dir)
        session = open_onnx_session(onnx_path or Path(run_dir) / ONNX_FILE, config, run_dir)
        return Predictor(config, session)
    config, model = load_run(run_dir, device=device)
    return Predictor(config, model, device=device, precision=precision)
