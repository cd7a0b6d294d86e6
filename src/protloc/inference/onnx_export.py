"""ONNX export of a run: images (N, C, H, W) normalised as the run's config says -> probabilities (N, classes),
and, for a run with an outlier description, outlier scores (N,) as a second output "outlier_score".

The sigmoid is part of the graph, so an ONNX consumer gets probabilities and applies the run's thresholds
(from its config) directly; the outlier score comes from the same forward pass (inference/outliers.py) and is
compared with the config's outlier_threshold. The batch axis is dynamic; height and width are fixed at the
run's image size.

Exporter: the TorchScript-based one (`dynamo=False`). The torch.export-based exporter, the default since
torch 2.9, needs the onnxscript package, which is not installed here; the legacy one handles these CNNs.
Every export is checked with onnx.checker and compared with torch on a random batch before it is kept.

The default CPU engine runs the run's own RUN/model.onnx (written by `protloc export`) when it matches
RUN/model.safetensors (the SHA-256 of the weights file, and of the outlier description, is stored in the graph's
metadata) and fits the run's config; otherwise `run_onnx_session` exports one into the cache folder
(data/cache.py: $PROTLOC_CACHE_DIR, else ~/.cache/protloc), on first use and again whenever the weights change.
Loading a run writes nothing into its folder, and says what it exports through the "protloc" logger, which the
command line shows.
Each export carries its own SHA-256 beside it (FILE.sha256, as `sha256sum` writes it), checked before a session
opens it: a graph edited since its export is never taken for the run's (docs/security.md). An export in the
cache folder is used only when that folder is the user's own (data/cache.py); otherwise the export goes to a
private temporary folder for this process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protloc.errors import ProtlocError
from protloc.files import atomic_path, file_sha256, recorded_digest, write_digest
from protloc.models.run_weights import load_run
from protloc.runs import ONNX_FILE, OUTLIER_FILE, WEIGHTS_FILE, EnsembleConfig, RunConfig, load_config

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SCORE_OUTPUT_NAME = "outlier_score"
WEIGHTS_DIGEST_KEY = "protloc_weights_sha256"  # metadata: the weights file the graph was exported from
CACHE_FOLDER = "onnx-v1"  # in the cache folder: <key>.onnx, the default engine's exports (cached_onnx_path)
# What the graph does not hold: a change to these leaves an export usable.
NOT_IN_THE_GRAPH = ("thresholds", "training", "label_set", "layout", "bit_depth", "outlier_threshold", "training_data")

log = logging.getLogger(__name__)


class ProbabilityModel(nn.Module):
    """The classifier with its sigmoid, and with the outlier scorer where given: what the ONNX file computes."""

    def __init__(self, model: nn.Module, scorer: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.scorer = scorer

    def forward(self, images: torch.Tensor):
        if self.scorer is None:
            return torch.sigmoid(self.model(images))
        logits, features = self.model.logits_and_features(images)
        return torch.sigmoid(logits), self.scorer(features)


def export_onnx(model: nn.Module, config: RunConfig, path: str | Path, *, opset: int = DEFAULT_OPSET, seed: int = 0,
                weights_digest: str | None = None, scorer: nn.Module | None = None) -> float:
    """Write `path` (atomically) and return the largest |torch - ONNX Runtime| probability difference on a
    random batch; raise ProtlocError, keeping no file, if the graph is invalid or the difference is over 1e-4.
    `weights_digest` (of the weights file the model came from) is stored in the metadata; `scorer` (the run's,
    inference/outliers.py) adds the outlier score output."""
    import onnx

    scorer = scorer.float().cpu().eval() if scorer is not None else None
    wrapped = ProbabilityModel(model.float().cpu().to(memory_format=torch.contiguous_format), scorer).eval()
    outputs = [OUTPUT_NAME] + ([SCORE_OUTPUT_NAME] if scorer is not None else [])
    example = torch.zeros(2, config.in_chans, config.image_size, config.image_size)
    with atomic_path(path) as temp:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter announces its own deprecation and warns about traced shape arithmetic.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    wrapped, (example,), str(temp), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=outputs,
                    dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
                )
            except Exception as error:  # the exporter raises many types for unsupported operators or opsets
                raise ProtlocError(f"ONNX export of {config.backbone} at opset {opset} failed: {str(error).splitlines()[0]}") from None
        graph = onnx.load(str(temp))
        # The run's config travels with the file for deployments that have only the .onnx.
        graph.metadata_props.add(key="protloc_config", value=json.dumps(config.to_dict()))
        if weights_digest:
            graph.metadata_props.add(key=WEIGHTS_DIGEST_KEY, value=weights_digest)
        onnx.save(graph, str(temp))
        try:
            onnx.checker.check_model(str(temp), full_check=True)
        except onnx.checker.ValidationError as error:
            raise ProtlocError(f"{path}: the exported graph is not valid ONNX ({str(error).splitlines()[0]})") from None
        difference = compare_with_torch(wrapped, temp, config, seed=seed)
        if not difference <= PARITY_TOLERANCE:
            raise ProtlocError(
                f"{path}: ONNX Runtime and torch disagree by {difference:.2e} on a random batch "
                f"(tolerance {PARITY_TOLERANCE:.0e}); nothing written. Try another --opset."
            )
    write_digest(path)  # PATH.sha256: the graph's own digest, checked before a session opens it (engines.py)
    return difference


def compare_with_torch(wrapped: nn.Module, onnx_path: str | Path, config: RunConfig, *, seed: int = 0, batch: int = 3) -> float:
    """Max |difference| of probabilities on a random batch (of another size than the export's, to
    exercise the dynamic batch axis)."""
    import onnxruntime

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, config.in_chans, config.image_size, config.image_size, generator=generator)
    with torch.no_grad():
        expected = wrapped(images)
    expected = [output.numpy() for output in (expected if isinstance(expected, tuple) else (expected,))]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    if [output.shape for output in actual] != [output.shape for output in expected]:
        raise ProtlocError(f"{onnx_path}: ONNX outputs have shapes {[a.shape for a in actual]}, torch "
                           f"{[e.shape for e in expected]}")
    difference = float(np.abs(actual[0] - expected[0]).max())
    if len(actual) > 1:  # the outlier score: relative, as distances run into the hundreds
        scale = np.maximum(np.abs(expected[1]), 1.0)
        difference = max(difference, float((np.abs(actual[1] - expected[1]) / scale).max()))
    return difference


def weights_digest(run_dir: str | Path) -> str:
    """SHA-256 of the run's weights file (a missing file raises ProtlocError, as loading the run would); for a
    K-fold folder, of its folds' digests in order, so that retraining any fold makes its ONNX file stale."""
    config = load_config(run_dir)
    if isinstance(config, EnsembleConfig):
        digests = "".join(weights_digest(Path(run_dir) / fold) for fold in config.folds)
        return hashlib.sha256(digests.encode()).hexdigest()
    path = Path(run_dir) / WEIGHTS_FILE
    try:
        digest = file_sha256(path)
    except FileNotFoundError:
        raise ProtlocError(f"{path}: not found (a run folder holds config.json and model.safetensors)") from None
    description = Path(run_dir) / OUTLIER_FILE
    if config.outlier_threshold is not None and description.is_file():  # a new description: export again
        with open(description, "rb") as stream:
            digest = hashlib.sha256((digest + hashlib.file_digest(stream, "sha256").hexdigest()).encode()).hexdigest()
    return digest


def cached_onnx_path(cache_dir: str | Path, digest: str, config: RunConfig) -> Path:
    """Where the default engine keeps its export of weights `digest` for `config`, in the cache folder."""
    graph_fields = {key: value for key, value in config.to_dict().items() if key not in NOT_IN_THE_GRAPH}
    key = hashlib.sha256(f"{digest}|{json.dumps(graph_fields, sort_keys=True)}".encode()).hexdigest()
    return Path(cache_dir) / CACHE_FOLDER / f"{key[:40]}.onnx"


def _fresh_session(path: Path, config: RunConfig, run_dir: str | Path, digest: str, threads: int | None = None):
    """A session on `path` when it is a regular file whose SHA-256 recorded beside it at export still holds, fits
    the config and was exported from weights `digest`; else None."""
    if not (path.is_file() and not path.is_symlink() and recorded_digest(path)):
        return None
    try:  # checks the graph's own digest, the config and the weights it claims
        return open_onnx_session(path, config, run_dir, weights=digest, threads=threads)
    except ProtlocError:  # unreadable, changed since its export, from other weights, or for another run's shape
        return None


def export_folder(cache_dir: str | Path | None) -> Path:
    """Where the default engine keeps its exports: the cache folder's CACHE_FOLDER when that folder is the user's
    own (data/cache_files.folder_problem), else a private temporary folder for this process."""
    from protloc.data.cache import default_cache_dir
    from protloc.data.cache_files import folder_problem, own_subfolder

    folder = Path(os.path.realpath(Path(cache_dir or default_cache_dir()).expanduser()))
    try:
        if not os.path.lexists(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(folder, 0o700)
        problem = folder_problem(folder) or (None if own_subfolder(folder / CACHE_FOLDER, make=True)
                                             else f"{CACHE_FOLDER} is not a folder of this user alone")
    except OSError as error:
        problem = f"cannot be used ({error.strerror or error})"
    if problem is None:
        return folder / CACHE_FOLDER
    log.warning("cache folder %s: %s; the ONNX export goes to a temporary folder", folder, problem)
    return Path(tempfile.mkdtemp(prefix="protloc-onnx-"))


def run_onnx_session(run_dir: str | Path, config: RunConfig, cache_dir: str | Path | None = None, *,
                     threads: int | None = None):
    """An ONNX Runtime session for the run: on RUN/model.onnx when it was exported from the run's weights, fits
    its config and is unchanged since its export, else on an export in `cache_dir` (default: the image cache's
    folder, when it is the user's own), made first when missing; `threads` as open_onnx_session."""
    digest = weights_digest(run_dir)
    session = _fresh_session(Path(run_dir) / ONNX_FILE, config, run_dir, digest, threads)
    if session is not None:
        return session
    folder = export_folder(cache_dir)
    path = folder / cached_onnx_path(folder, digest, config).name
    session = _fresh_session(path, config, run_dir, digest, threads)
    if session is not None:
        return session
    from protloc.inference.outliers import load_scorer

    _config, model = load_run(run_dir)
    scorer = load_scorer(run_dir, config, model)  # a damaged description stops here, before any export
    log.info("exporting %s to %s for ONNX Runtime (once; again whenever the weights change)", run_dir, path)
    try:
        export_onnx(model, config, path, weights_digest=digest, scorer=scorer)
    except OSError as error:
        raise ProtlocError(f"{path}: cannot write the ONNX model ({error.strerror or error}); export it elsewhere with "
                           f"`protloc export {run_dir} --out FILE` and pass --onnx FILE, set $PROTLOC_CACHE_DIR, or use "
                           f"--engine torch") from None
    return open_onnx_session(path, config, run_dir, weights=digest, threads=threads)


def open_onnx_session(path: str | Path, config: RunConfig, run_dir: str | Path = "RUN", *, weights: str | None = None,
                      threads: int | None = None):
    """An ONNX Runtime session on `path`, checked against the run's config, against its own SHA-256 recorded
    beside it at export (PATH.sha256, when there is one), and against the weights it was exported from: those
    whose digest is `weights` (for the run's own model.onnx), else the run's model.safetensors when the run has
    one. `threads` compute threads (default: ONNX Runtime's, one per core), fewer where several processes share
    the cores. Raises ProtlocError."""
    import onnxruntime

    from protloc.files import check_digest

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
