"""Issue 31 (hostile input, round two): what the table in test_hostile_input.py cannot say with an exit code.
An ONNX graph edited after its export is never taken for the run's; a run trained on a handful of validation
images says so."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from protloc.cli import main


@pytest.fixture(scope="module")
def exported_run(untrained_run, tmp_path_factory):
    run = untrained_run(tmp_path_factory.mktemp("onnx-run") / "run", spread=30)
    assert main(["export", str(run)]) == 0
    return run


def edit_head_bias(path: Path, by: float) -> None:
    """Shift the classifier's biases inside an ONNX graph, keeping its metadata (the weights digest it claims)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    (bias,) = [item for item in graph.graph.initializer if item.name.endswith("head.1.bias")]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(by), bias.name))
    onnx.save(graph, str(path))


def probabilities(run: Path, image: Path, out: Path, *options) -> np.ndarray:
    assert main(["predict", str(run), str(image), "--probabilities", "--workers", "0", "--no-cache", "--out", str(out),
                 *options]) == 0
    return np.loadtxt(out, delimiter=",", skiprows=1, usecols=range(1, 11))


def test_an_edited_run_onnx_is_exported_again_and_an_edited_onnx_file_refused(exported_run, demo_data, tmp_path,
                                                                                 capsys):
    image = sorted((demo_data / "test").iterdir())[0]
    torch_probabilities = probabilities(exported_run, image, tmp_path / "torch.csv", "--engine", "torch")
    copy = tmp_path / "copy.onnx"
    shutil.copy(exported_run / "model.onnx", copy)
    shutil.copy(exported_run / "model.onnx.sha256", tmp_path / "copy.onnx.sha256")
    edit_head_bias(exported_run / "model.onnx", by=8.0)
    # The run's own model.onnx is a cache of its weights: edited, it is exported again, never used.
    served = probabilities(exported_run, image, tmp_path / "onnx.csv", "--engine", "onnx")
    np.testing.assert_allclose(served, torch_probabilities, atol=1e-4)
    capsys.readouterr()
    # A file given with --onnx is the user's: edited since its export, it is refused, naming its digest file.
    edit_head_bias(copy, by=8.0)
    assert main(["predict", str(exported_run), str(image), "--engine", "onnx", "--onnx", str(copy), "--workers", "0",
                 "--out", str(tmp_path / "refused.csv")]) == 2
    error = capsys.readouterr().err
    assert "copy.onnx.sha256" in error and "Traceback" not in error
    assert not (tmp_path / "refused.csv").exists()


def test_an_onnx_file_from_other_weights_is_refused(exported_run, untrained_run, demo_data, tmp_path, capsys):
    other = untrained_run(tmp_path / "other", spread=5)
    image = sorted((demo_data / "test").iterdir())[0]
    assert main(["export", str(exported_run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["predict", str(other), str(image), "--engine", "onnx", "--onnx", str(tmp_path / "m.onnx"),
                 "--workers", "0", "--out", str(tmp_path / "p.csv")]) == 2
    assert "exported from other weights" in capsys.readouterr().err


def test_weights_carry_their_digest_and_a_run_trained_on_few_validation_images_says_so(demo_data, tiny_recipe,
                                                                                       tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(demo_data), "--out", str(out), *tiny_recipe.args(val_fraction=0.001)]) == 0
    error = capsys.readouterr().err
    assert "validation holds 1 image" in error or "validation holds 2 images" in error
    recorded = (out / "model.safetensors.sha256").read_text().split()
    import hashlib

    assert recorded == [hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(), "model.safetensors"]
