"""Probabilities and labels from a trained run: the one door from images to them, for every command that
runs a model (predict, tune, evaluate, explain, embed, serve, report) and for the Python API (`protloc.load`).

Images flow one way: table or in-memory images (inputs.py) -> dataset (the run's bit depth, channels and
eval preset) -> DataLoader -> engine (torch model or ONNX Runtime session; see engines.py) -> sigmoid
probabilities -> labels by the run's thresholds. Everything about the model (label names, image size,
channels, bit depth, mean/std, thresholds) comes from the run's config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from protloc.allocator import freed_memory_kept_for_batches
from protloc.data import BIT_DEPTHS
from protloc.data.dataset import ImageDataset
from protloc.data.images import to_chw_tensor
from protloc.data.readers import DatasetTable
from protloc.data.stains import parse_stain_map, run_stains
from protloc.data.transforms import eval_preset
from protloc.data.workers import prediction_workers
from protloc.devices import resolve_device
from protloc.errors import DataError, ProtlocError
from protloc.inference import ENGINES
from protloc.inference.engines import OnnxEngine, TorchEngine, make_engine, predict_batch, scored_outputs  # noqa: F401
from protloc.inference.inputs import InputImages, as_image_list, image_ids, read_input
from protloc.inference.onnx_export import open_onnx_session, run_onnx_session
from protloc.inference.rows import RowCollector, TableResult, named_outputs  # noqa: F401  (TableResult: for callers)
from protloc.inference.thresholds import apply_thresholds
from protloc.labels import LabelSet
from protloc.models.run_weights import load_run
from protloc.runs import RunConfig, load_config


def as_stain_map(stain_map: str | dict | None) -> dict | None:
    """--stain-map's text ('DAPI=blue,GFP=green') or a dict {channel name: stain or None} -> the parsed map
    (stains.parse_stain_map). Raises ProtlocError."""
    if stain_map is None:
        return None
    text = stain_map if isinstance(stain_map, str) else ",".join(f"{name}={stain or 'none'}" for name, stain in stain_map.items())
    try:
        return parse_stain_map(text)
    except ValueError as error:
        raise ProtlocError(f"--stain-map: {error}") from None


# ---------------------------------------------------------------- batches


def _loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    if batch_size < 1:
        raise ProtlocError(f"batch size {batch_size}: expected 1 or more")
    if workers < 0:
        raise ProtlocError(f"workers {workers}: expected 0 or more")
    workers = prediction_workers(workers, len(dataset), batch_size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=False)


def _run_batches(run_batch: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, width: int | None,
                 batch_size: int, workers: int, show_progress: bool, desc: str, ranks=None) -> TableResult | None:
    """`run_batch` on each batch of images, rows in `dataset` order.

    width=None: the width of the first batch's outputs (0 for an empty dataset), for outputs such as
    features whose width only the model knows. With `ranks` (distributed.Ranks) every process of a distributed
    prediction runs this with the same arguments: each runs its share, process 0 gets the whole result and the
    others None.
    """
    if ranks is not None:
        _loader(dataset, batch_size, workers)  # the same checks of the options
        collected = ranks.run_batches(run_batch, dataset, width=width, batch_size=batch_size, workers=workers,
                                      show_progress=show_progress, desc=desc)
        return None if collected is None else collected.result()
    from protloc.progress import progress_bar

    collected = RowCollector(len(dataset), width)
    # Batch after batch, each one's activations are the size of the last one's: kept, they are reused instead
    # of faulted in again (twice the images per second on the CPU; allocator.py). One batch has nothing to reuse.
    keep_freed_memory = freed_memory_kept_for_batches(len(dataset), batch_size)
    with keep_freed_memory, progress_bar(total=len(dataset), desc=desc, unit="img", disable=not show_progress,
                                 leave=False) as bar:
        for images, _targets, rows, batch_problems in _loader(dataset, batch_size, workers):
            arrays = {name: values.numpy() for name, values in named_outputs(run_batch(images)).items()}
            collected.add(rows.numpy(), arrays, batch_problems)
            bar.update(len(rows))
    return collected.result()


# ---------------------------------------------------------------- the door


@dataclass
class Prediction:
    """What `Predictor.predict` returns: one row per image, in input order."""

    ids: list[str]
    label_names: list[str]
    probabilities: np.ndarray  # (N, C) float32
    predicted: np.ndarray  # (N, C) bool
    # How unlike the training images each image is (inference/outliers.py), and the run's threshold for
    # `outliers`; None for a run trained before outlier scores.
    outlier_scores: np.ndarray | None = None  # (N,) float32
    outlier_threshold: float | None = None

    @property
    def outliers(self) -> np.ndarray | None:
        """(N,) bool: images whose outlier score is above the run's threshold (their labels deserve doubt)."""
        if self.outlier_scores is None or self.outlier_threshold is None:
            return None
        return self.outlier_scores > self.outlier_threshold

    @property
    def labels(self) -> list[list[str]]:
        """Class names per image."""
        return [[self.label_names[i] for i in np.flatnonzero(row)] for row in self.predicted]

    @property
    def class_indices(self) -> list[list[int]]:
        return [[int(i) for i in np.flatnonzero(row)] for row in self.predicted]

    def to_frame(self) -> pd.DataFrame:
        """Columns: id, labels ("; "-joined class names), one probability column per class, then outlier_score
        and outlier (where the run has them)."""
        frame = pd.DataFrame(self.probabilities, columns=self.label_names)
        frame.insert(0, "labels", ["; ".join(names) for names in self.labels])
        frame.insert(0, "id", self.ids)
        if self.outliers is not None:
            frame["outlier_score"] = self.outlier_scores
            frame["outlier"] = self.outliers
        return frame


class Predictor:
    """A loaded run: `predict` / `predict_proba` on images, `predict_table` / `embed_table` on datasets.

    Every image is read as the run's config says (bit depth, channels, eval preset); `gray_as` (a stain name)
    lets a grayscale image into a run of more channels as that stain, the others dark; `bit_depth` states the
    depth of the inputs' pixels (12 for 12-bit camera data in 16-bit files) where it differs from the run's: each
    image is scaled from its own full scale to 0..1, as the run's training images were from theirs."""

    def __init__(self, config: RunConfig, engine, *, device: str = "auto", precision: str = "auto",
                 gray_as: str | None = None, bit_depth: int | None = None, stain_map: str | dict | None = None,
                 run_dir: str | Path | None = None, cache=None, scorer=None):
        if gray_as is not None and gray_as not in run_stains(config.in_chans):
            raise ProtlocError(f"--gray-as {gray_as}: the run reads {', '.join(run_stains(config.in_chans))}")
        if bit_depth is not None and bit_depth not in BIT_DEPTHS:
            raise ProtlocError(f"--bit-depth {bit_depth}: expected one of {', '.join(map(str, BIT_DEPTHS))}")
        self.config = config
        self.gray_as = gray_as
        # The scale wide pixels are read at: the stated depth, else the run's (images.to_uint8).
        self.bit_depth = bit_depth if bit_depth is not None else config.bit_depth
        self.stain_map = as_stain_map(stain_map)  # a microscope file's channel names -> stains (microscopy.py)
        self.run_dir = run_dir  # where the torch model is loaded from when an ONNX engine is asked for it
        self.engine = make_engine(engine, device=device, precision=precision, scorer=scorer)
        self._cpu_torch_engine: TorchEngine | None = None
        self.transform = eval_preset(config)
        self.cache = cache  # a protloc.data.cache.ImageCache: tables' images decoded and resized once

    @property
    def engine_name(self) -> str:
        """"onnx" (ONNX Runtime, CPU, fp32) or "torch"."""
        return "onnx" if isinstance(self.engine, OnnxEngine) else "torch"

    @property
    def label_names(self) -> list[str]:
        return list(self.config.label_names)

    @property
    def outlier_threshold(self) -> float | None:
        """The run's outlier threshold; None where this engine gives no outlier scores."""
        has_scores = getattr(self.engine, "scored_model", None) is not None or getattr(self.engine, "has_scores", False)
        return self.config.outlier_threshold if has_scores else None

    def flag_outliers(self, scores: np.ndarray | None) -> np.ndarray | None:
        """(N,) bool from outlier scores: above the run's threshold."""
        threshold = self.outlier_threshold
        return None if scores is None or threshold is None else np.asarray(scores) > threshold

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(self.config.label_set, tuple(self.config.label_names))

    @property
    def model(self) -> nn.Module:
        """The torch model, for what needs more than probabilities (Grad-CAM, features)."""
        return self._torch_engine().model

    def _torch_engine(self) -> TorchEngine:
        """The torch engine; beside an ONNX engine (CPU, fp32), the run's model loaded on first use, on the CPU in fp32."""
        if isinstance(self.engine, TorchEngine):
            return self.engine
        if self._cpu_torch_engine is None:
            if self.run_dir is None:
                raise ProtlocError("this needs the torch model (an ONNX file holds only the probabilities); use --engine torch")
            _config, model = load_run(self.run_dir)
            self._cpu_torch_engine = TorchEngine(model, device="cpu", precision="fp32", own_model=True)
        return self._cpu_torch_engine

    def dataset(self, table: DatasetTable) -> ImageDataset:
        """The run's eval preset over a table, read at the run's bit depth; unreadable images come back with their
        problem, not an exception."""
        table = dataclasses.replace(table, bit_depth=self.bit_depth)
        if self.cache is not None:
            self.cache.prepare(table.frame["source"], self.config.in_chans, self.config.image_size,
                               bit_depth=table.bit_depth, gray_as=self.gray_as, stain_map=self.stain_map)
        return ImageDataset(table, channels=self.config.in_chans, transform=self.transform,
                            image_size=self.config.image_size, strict=False, gray_as=self.gray_as,
                            stain_map=self.stain_map, cache=self.cache)

    def read(self, image) -> np.ndarray:
        """One image (see read_input) as the run reads it: uint8 (H, W, channels). Raises ProtlocError."""
        return read_input(image, self.config.in_chans, bit_depth=self.bit_depth, gray_as=self.gray_as,
                          stain_map=self.stain_map)

    def prepare(self, image) -> torch.Tensor:
        """One image (see read_input) as the model takes it: (C, H, W) float, the eval preset applied. Raises
        ProtlocError naming an unreadable file."""
        return self.transform(to_chw_tensor(self.read(image)))

    def probabilities(self, batch: torch.Tensor, *, tta: bool = False) -> np.ndarray:
        """(N, C) probabilities of a prepared batch (N, C, H, W)."""
        return predict_batch(self.engine, batch, tta).numpy()

    def predict_table(self, data: DatasetTable | Dataset, *, batch_size: int = 32, workers: int = 0,
                      tta: bool = False, show_progress: bool = False, ranks=None) -> TableResult | None:
        """Probabilities (and outlier scores) of every image of a table (or of a Dataset with ImageDataset-shaped
        items).

        With `ranks` (protloc.inference.distributed.Ranks, its `device` this Predictor's), every process of a
        distributed prediction calls this with the same table: each predicts its share, process 0 gets the whole
        result in table order, the others None."""
        dataset = self.dataset(data) if isinstance(data, DatasetTable) else data
        return _run_batches(lambda images: scored_outputs(self.engine, images, tta), dataset,
                            width=self.config.num_classes, batch_size=batch_size, workers=workers,
                            show_progress=show_progress, desc="predict", ranks=ranks)

    def embed_table(self, table: DatasetTable, *, batch_size: int = 32, workers: int = 0,
                    show_progress: bool = False, ranks=None) -> np.ndarray | None:
        """Pooled backbone features (N, F) float32 via model.embed. Unreadable images raise a DataError naming them.
        With `ranks`, as predict_table: None on every process but process 0."""
        engine = self._torch_engine()  # before any image is read
        result = _run_batches(engine.embed, self.dataset(table), width=None, batch_size=batch_size,
                              workers=workers, show_progress=show_progress, desc="embed", ranks=ranks)
        if result is None:
            return None
        if result.unreadable:
            raise DataError(*result.unreadable)
        return result.outputs

    def predict_proba(self, images, *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """(N, C) probabilities for one image or a list of them: paths, files' bytes, numpy arrays (H, W[, C];
        uint8, uint16 or 0..1 float), PIL images, or stain sets ({stain: image}, or a tuple in the run's channel
        order); see read_input."""
        return self.predict_scored(images, tta=tta, batch_size=batch_size).outputs

    def predict_scored(self, images, *, tta: bool = False, batch_size: int = 32) -> TableResult:
        """Probabilities and outlier scores (None for a run without them) of images as predict_proba takes them;
        an unreadable image raises ProtlocError."""
        dataset = InputImages(as_image_list(images), channels=self.config.in_chans, transform=self.transform,
                              bit_depth=self.bit_depth, gray_as=self.gray_as, stain_map=self.stain_map)
        return self.predict_table(dataset, batch_size=batch_size, tta=tta)

    def decide(self, probabilities: np.ndarray, *, threshold: float | None = None, allow_empty: bool = False) -> np.ndarray:
        """Boolean labels (N, C): the run's per-class thresholds, or one `threshold` for all classes."""
        thresholds = self.config.thresholds if threshold is None else threshold
        return apply_thresholds(probabilities, thresholds, allow_empty=allow_empty)

    def explain(self, images, *, classes="predicted") -> list:
        """Where the model found each class in one image or a list of them (anything `predict` takes), as `protloc
        explain` maps it (HiResCAM, a Grad-CAM variant, on the torch model): one Explanation per image, with .maps
        ({class name: (H, W) map in 0..1}) and .figure(). `classes`: "predicted", "all", or names or numbers."""
        from protloc.inference.explanations import explain_images

        return explain_images(self, images, classes)

    def predict(self, images, *, tta: bool = False, threshold: float | None = None,
                allow_empty: bool = False, batch_size: int = 32) -> Prediction:
        images = as_image_list(images)
        result = self.predict_scored(images, tta=tta, batch_size=batch_size)
        predicted = self.decide(result.outputs, threshold=threshold, allow_empty=allow_empty)
        return Prediction(image_ids(images), self.label_names, result.outputs, predicted, result.outlier_scores,
                          self.outlier_threshold)


def predict_probabilities(model_or_session, data: DatasetTable | Dataset, config: RunConfig, *, batch_size: int = 32,
                          workers: int = 0, tta: bool = False, show_progress: bool = True, device: str = "cpu",
                          precision: str = "auto", scorer=None) -> TableResult:
    """Predictor(config, model).predict_table(data): for code that holds a model rather than a run folder."""
    predictor = Predictor(config, model_or_session, device=device, precision=precision, scorer=scorer)
    return predictor.predict_table(data, batch_size=batch_size, workers=workers, tta=tta, show_progress=show_progress)


def choose_engine(engine: str, device: str, precision: str, onnx_path: str | Path | None) -> str:
    """"auto" -> "onnx" for fp32 on the CPU (the same probabilities on every machine, and the fastest CPU engine),
    "torch" otherwise (GPUs, bf16)."""
    if engine not in ENGINES:
        raise ProtlocError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if onnx_path is not None:
        return "onnx"
    return "onnx" if resolve_device(device) == "cpu" and precision in ("auto", "fp32") else "torch"


def load_predictor(run_dir: str | Path, *, device: str = "auto", engine: str = "torch",
                   onnx_path: str | Path | None = None, precision: str = "auto", gray_as: str | None = None,
                   bit_depth: int | None = None, stain_map: str | dict | None = None, cache=None,
                   onnx_threads: int | None = None) -> Predictor:
    """A Predictor on a run folder. engine "onnx" runs ONNX Runtime on `onnx_path`, or on the run's own model.onnx
    where it matches the weights, else on an export kept in the cache folder (onnx_export.run_onnx_session), with
    `onnx_threads` compute threads (default one per core); "auto" picks (choose_engine). Nothing is written into
    the run folder. With an ImageCache (protloc.data.cache), images of tables are decoded and resized once, for
    later calls too."""
    engine = choose_engine(engine, device, precision, onnx_path)
    if engine == "onnx":
        if device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
            raise ProtlocError(f"--engine onnx runs on the CPU in fp32 (ONNX Runtime's CPU provider), not "
                               f"--device {device} --precision {precision}; use --engine torch for those")
        config = load_config(run_dir)
        cache_dir = cache.folder if cache is not None else None
        session = (open_onnx_session(onnx_path, config, run_dir, threads=onnx_threads) if onnx_path
                   else run_onnx_session(run_dir, config, cache_dir, threads=onnx_threads))
        return Predictor(config, session, gray_as=gray_as, bit_depth=bit_depth, stain_map=stain_map, run_dir=run_dir,
                         cache=cache)
    from protloc.inference.outliers import load_scorer

    device = resolve_device(device)
    config, model = load_run(run_dir, device=device)
    scorer = load_scorer(run_dir, config, model)
    model = TorchEngine(model, device=device, precision=precision, own_model=True, scorer=scorer)
    return Predictor(config, model, device=device, precision=precision, gray_as=gray_as, bit_depth=bit_depth,
                     stain_map=stain_map, run_dir=run_dir, cache=cache)
