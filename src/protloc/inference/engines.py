"""Engines: a batch of preprocessed images (N, C, H, W) in, probabilities (N, classes) out; `scored` gives
each image's outlier score (inference/outliers.py) from the same forward pass, or None for a run without one.

A torch model (TorchEngine) or an ONNX Runtime session on a `protloc export` file (OnnxEngine). Device and
precision come from protloc.devices: "auto" precision is fp32 on the CPU, so CPU probabilities are the same
on every machine, and bf16 (fp16 where bf16 is missing) on a GPU. bf16 moved probabilities by up to 0.065
(efficientnet_lite0 trained on demo data; README, "Inference engines and precision"), enough to flip a label
that sits near its threshold; use fp32 where outputs must match exactly (ONNX parity, tests).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from protloc.devices import resolve_device, resolve_precision
from protloc.errors import ProtlocError
from protloc.runs import RunConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchEngine:
    """A ProtlocNet (or FoldEnsemble) in eval mode, on the device, in channels_last (faster convolutions on the
    CPU), with the run's outlier scorer if it has one. A caller's model is left as it was: the engine runs a copy,
    unless `own_model` says the model is the engine's alone (a run loaded for it), which is converted in place."""

    def __init__(self, model: nn.Module, *, device: str = "cpu", precision: str = "auto", own_model: bool = False,
                 scorer: nn.Module | None = None):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if not own_model:
            model = copy.deepcopy(model)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.scored_model = None
        if scorer is not None:
            from protloc.inference.outliers import ScoredClassifier

            self.scored_model = ScoredClassifier(self.model, scorer.to(self.device)).eval()

    def _run(self, method, images: torch.Tensor):
        """`method(images)` on the engine's device, in its precision; each output tensor back as float32 on the CPU."""
        images = images.to(self.device, memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        dtype = AUTOCAST_DTYPES.get(self.precision)
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            outputs = method(images)
        if isinstance(outputs, tuple):
            return tuple(output.float().cpu() for output in outputs)
        return outputs.float().cpu()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._run(self.model, images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.embed, images)

    def scored(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities (N, C), outlier scores (N,) or None) from one forward pass."""
        if self.scored_model is None:
            return self(images), None
        logits, scores = self._run(self.scored_model, images)
        return torch.sigmoid(logits), scores


class OnnxEngine:
    """An ONNX Runtime session over a `protloc export` file, whose first output already is probabilities and
    whose second, where the run has an outlier description, is the outlier score."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.has_scores = len(session.get_outputs()) > 1

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.scored(images)[0]

    def scored(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs = self.session.run(None, {self.input_name: images.float().numpy()})
        return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]) if self.has_scores else None


def make_engine(model_or_session, *, device: str = "cpu", precision: str = "auto", scorer: nn.Module | None = None):
    """A torch model (with its outlier scorer, if any), an ONNX Runtime session or an engine -> an engine."""
    if isinstance(model_or_session, (TorchEngine, OnnxEngine)):
        return model_or_session
    if isinstance(model_or_session, nn.Module):
        return TorchEngine(model_or_session, device=device, precision=precision, scorer=scorer)
    return OnnxEngine(model_or_session)


def open_onnx_session(path: str | Path, config: RunConfig, run_dir: str | Path = "RUN", *, weights: str | None = None,
                      threads: int | None = None):
    """An ONNX Runtime session on `path`, checked against the run's config, against its own SHA-256 recorded
    beside it at export (PATH.sha256, when there is one), and against the weights it was exported from: those
    whose digest is `weights` (for the run's own model.onnx), else the run's model.safetensors when the run has
    one. `threads` compute threads (default: ONNX Runtime's, one per core), fewer where several processes share
    the cores. Raises ProtlocError."""
    import onnxruntime

    from protloc.files import check_digest
    from protloc.inference.onnx_export import WEIGHTS_DIGEST_KEY, weights_digest

    path = Path(path)
    export = f"protloc export {run_dir} --out {path}"
    if not path.is_file():
        raise ProtlocError(f"{path}: ONNX model not found; run `{export}` first")
    check_digest(path)
    try:
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for unreadable or invalid files
        raise ProtlocError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
    shape = session.get_inputs()[0].shape  # [batch, channels, height, width]; batch is a name
    expected = [config.in_chans, config.image_size, config.image_size]
    outputs = session.get_outputs()[0].shape
    if list(shape[1:]) != expected or outputs[-1] != config.num_classes:
        raise ProtlocError(
            f"{path}: takes images {shape[1:]} and gives {outputs[-1]} outputs, but the run expects "
            f"{expected} and {config.num_classes} classes (exported from another run? run `{export}`)"
        )
    claimed = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_DIGEST_KEY)
    if weights is None and claimed is not None:
        try:
            weights = weights_digest(run_dir)
        except ProtlocError:  # a run without its weights (an ONNX-only deployment): nothing to compare
            weights = None
    if weights is not None and claimed != weights:
        raise ProtlocError(f"{path}: exported from other weights than {run_dir}'s model.safetensors; run `{export}`")
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


def predict_scored_batch(engine, images: torch.Tensor, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities, outlier scores or None); with `tta`, each the mean over the 8 views."""
    if not tta:
        return engine.scored(images)
    views = [engine.scored(view.contiguous()) for view in dihedral_views(images)]
    probabilities = torch.stack([view[0] for view in views]).mean(dim=0)
    scores = None if views[0][1] is None else torch.stack([view[1] for view in views]).mean(dim=0)
    return probabilities, scores


OUTLIER_SCORE = "outlier_score"  # a scored batch's extra beside its probabilities (rows.TableResult.outlier_scores)


def scored_outputs(engine, images: torch.Tensor, tta: bool) -> torch.Tensor | dict[str, torch.Tensor]:
    """A batch's probabilities, with the outlier scores of the same forward pass beside them (named, as
    rows.named_outputs takes them) where the run has them."""
    probabilities, scores = predict_scored_batch(engine, images, tta)
    return probabilities if scores is None else {"outputs": probabilities, OUTLIER_SCORE: scores}
