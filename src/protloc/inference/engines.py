"""Engines: a batch of preprocessed images (N, C, H, W) in, probabilities (N, classes) out; `scored` gives
each image's outlier score (inference/outliers.py) from the same forward pass, or None for a run without one.

A torch model (TorchEngine) or an ONNX Runtime session on a `protloc export` file (OnnxEngine). Device and
precision come from protloc.devices: "auto" precision is fp32 on the CPU, so CPU probabilities are the same
on every machine, and bf16 (fp16 where bf16 is missing) on a GPU. bf16 moved probabilities by up to 0.065
(efficientnet_lite0 trained on demo data; docs/inference.md), enough to flip a label
that sits near its threshold; use fp32 where outputs must match exactly (ONNX parity, tests).
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from protloc.devices import autocast_dtype, resolve_device, resolve_precision

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
        dtype = autocast_dtype(self.precision)
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
