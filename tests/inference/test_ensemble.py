"""A K-fold folder is a model: every command and `protloc.load` open it, and it gives the mean of its folds'
probabilities, labelled by its own thresholds.

The folds here are untrained runs that differ in their heads and in their normalisation, so that a fold run
with another fold's preprocessing, or a wrong average, would show.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

import protloc
from protloc.cli import main
from protloc.inference.thresholds import apply_thresholds
from protloc.labels import HPA10
from protloc.models.run_weights import load_run
from protloc.runs import (ENSEMBLE_FILE, EnsembleConfig, TrainingOutcome, fold_dir, load_config, save_config,
                          write_ensemble)

NAMES = list(HPA10.names)
THRESHOLDS = [0.3, 0.7, 0.4, 0.6, 0.5, 0.45, 0.55, 0.35, 0.65, 0.5]
FOLDS = 3


@pytest.fixture(scope="module")
def kfold(untrained_run, tmp_path_factory):
    """A 3-fold folder: fold k's head spread by 10 (k + 1), its mean and std shifted by k."""
    out = tmp_path_factory.mktemp("kfold") / "cv"
    for fold in range(FOLDS):
        run_dir = untrained_run(fold_dir(out, fold), image_size=64, spread=10.0 * (fold + 1))
        config = load_config(run_dir)
        config.mean = [value + 0.1 * fold for value in config.mean]
        config.std = [value * (1 + 0.2 * fold) for value in config.std]
        save_config(run_dir, config)
    write_ensemble(out, [fold_dir(out, fold).name for fold in range(FOLDS)], HPA10.name, NAMES, THRESHOLDS,
                   TrainingOutcome(recipe={"folds": FOLDS}, n_val=96))
    return out


@pytest.fixture(scope="module")
def images(demo_data):
    return sorted((demo_data / "test").glob("*.png"))[:6]


def fold_probabilities(kfold, images) -> np.ndarray:
    return np.stack([protloc.load(fold_dir(kfold, fold), precision="fp32").predict_proba(images) for fold in range(FOLDS)])


def test_probabilities_are_the_mean_of_the_folds(kfold, images):
    per_fold = fold_probabilities(kfold, images)
    assert np.abs(per_fold[0] - per_fold[1]).max() > 0.05  # the folds disagree: the mean is a real test
    predictor = protloc.load(kfold, precision="fp32")
    np.testing.assert_allclose(predictor.predict_proba(images), per_fold.mean(axis=0), rtol=0, atol=1e-6)
    assert isinstance(predictor.config, EnsembleConfig)
    assert predictor.config.thresholds == THRESHOLDS and predictor.label_names == NAMES
    result = predictor.predict(images)
    assert (result.predicted == apply_thresholds(per_fold.mean(axis=0), THRESHOLDS)).all()


def test_tta_averages_each_folds_views(kfold, images):
    tta = [protloc.load(fold_dir(kfold, fold), precision="fp32").predict_proba(images[:2], tta=True) for fold in range(FOLDS)]
    ensemble = protloc.load(kfold, precision="fp32").predict_proba(images[:2], tta=True)
    np.testing.assert_allclose(ensemble, np.mean(tta, axis=0), rtol=0, atol=1e-6)


def test_export_writes_one_onnx_file_that_matches_torch(kfold, images, tmp_path):
    target = tmp_path / "f.onnx"
    assert main(["export", str(kfold), "--out", str(target)]) == 0
    metadata = {prop.key: prop.value for prop in onnx.load(str(target)).metadata_props}
    config = json.loads(metadata["protloc_config"])
    assert config["kind"] == "ensemble" and config["thresholds"] == THRESHOLDS
    assert [entry["mean"] for entry in config["fold_normalization"]] == [load_config(fold_dir(kfold, k)).mean for k in range(FOLDS)]
    from_onnx = protloc.load(kfold, engine="onnx", onnx=target).predict_proba(images)
    from_torch = protloc.load(kfold, precision="fp32").predict_proba(images)
    np.testing.assert_allclose(from_onnx, from_torch, rtol=0, atol=1e-4)


def test_predict_and_evaluate_commands_take_the_folder(kfold, demo_data, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(kfold), str(demo_data), "--probabilities", "--out", str(out), "--workers", "0",
                 "--precision", "fp32"]) == 0
    frame = pd.read_csv(out, dtype={"Image": str})
    images = [demo_data / "test" / f"{identifier}.png" for identifier in frame["Image"]]
    np.testing.assert_allclose(frame[NAMES].to_numpy(), fold_probabilities(kfold, images).mean(axis=0), atol=1e-6)

    assert main(["evaluate", str(kfold), str(demo_data), "--out", str(tmp_path / "eval"), "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["thresholds"] == THRESHOLDS and metrics["images"] == 96


def test_explain_averages_the_folds_maps(kfold, images, tmp_path):
    from protloc.inference.cams import compute_cams, compute_model_cams

    predictor = protloc.load(kfold, precision="fp32")
    tensor = predictor.prepare(images[0])[None]
    classes = list(range(len(NAMES)))
    maps = [compute_cams(fold, inputs, classes) for fold, inputs in predictor.model.fold_inputs(tensor)]
    assert np.abs(maps[0] - maps[2]).max() > 0.05
    mean = np.mean(maps, axis=0)
    peak = mean.max(axis=(1, 2), keepdims=True)
    assert (peak > 0).sum() >= 3  # Grad-CAM keeps positive evidence only: some classes of a random net have none
    probabilities = predictor.probabilities(tensor)[0]  # the ensemble's: the mean of the folds'
    # The image's maps on one scale (the strongest peak at 1), each weighed by the ensemble's probability.
    expected = mean / mean.max() * probabilities[:, None, None]
    np.testing.assert_allclose(compute_model_cams(predictor.model, tensor, classes, probabilities), expected, atol=1e-5)

    assert main(["explain", str(kfold), str(images[0]), "--out", str(tmp_path / "x"), "--target-classes", "all"]) == 0
    assert (tmp_path / "x" / f"{images[0].stem}.png").stat().st_size > 1000


def test_embed_puts_the_folds_features_side_by_side(kfold, demo_data, tmp_path):
    out = tmp_path / "e.parquet"
    assert main(["embed", str(kfold), str(demo_data / "test"), "--out", str(out), "--method", "pca",
                 "--workers", "0", "--precision", "fp32"]) == 0
    table = pd.read_parquet(out)
    width = load_run(fold_dir(kfold, 0))[1].backbone.num_features
    assert list(table.columns) == ["id", *(f"f{i}" for i in range(FOLDS * width))]
    ensemble = protloc.load(kfold, precision="fp32")
    first = protloc.load(fold_dir(kfold, 1), precision="fp32")
    image = sorted((demo_data / "test").glob("*.png"))[0]
    with torch.no_grad():
        expected = first.model.embed(first.prepare(image)[None])[0].numpy()
    row = table.loc[table["id"] == image.stem].iloc[0, 1:].to_numpy(np.float32)
    np.testing.assert_allclose(row[width:2 * width], expected, rtol=1e-4, atol=1e-5)
    assert ensemble.model.embed(ensemble.prepare(image)[None]).shape == (1, FOLDS * width)


def test_tune_rewrites_the_ensemble_thresholds_only(kfold, demo_data, tmp_path, capsys):
    copy = tmp_path / "cv"
    shutil.copytree(kfold, copy)
    folds_before = [(fold_dir(copy, k) / "config.json").read_text() for k in range(FOLDS)]
    assert main(["tune", str(copy), str(demo_data), "--workers", "0", "--precision", "fp32"]) == 0
    record = json.loads((copy / ENSEMBLE_FILE).read_text())
    assert record["thresholds"] != THRESHOLDS and record["folds"] == ["fold-0", "fold-1", "fold-2"]
    assert record["training"]["thresholds_tuned_on"]["images"] == 96
    assert [(fold_dir(copy, k) / "config.json").read_text() for k in range(FOLDS)] == folds_before
    assert not (copy / "config.json").exists()
    assert load_config(copy).thresholds == record["thresholds"]


def test_serve_answers_with_the_ensemble(kfold, images):
    from fastapi.testclient import TestClient

    import protloc
    from protloc.service.app import create_app

    app = create_app(protloc.load(kfold, precision="fp32"), run_name="cv", allowed_hosts=["testserver"])
    with TestClient(app) as client:  # `with`: runs the lifespan, which starts the batching worker
        response = client.post("/predict", files={"files": (images[0].name, images[0].read_bytes(), "image/png")})
    assert response.status_code == 200
    result = response.json()
    expected = fold_probabilities(kfold, images[:1]).mean(axis=0)[0]
    np.testing.assert_allclose([result["images"][0]["probabilities"][name] for name in NAMES], expected, atol=1e-5)
    assert result["thresholds"] == dict(zip(NAMES, THRESHOLDS))


def test_folder_without_ensemble_json_says_how_to_finish_it(kfold, images, tmp_path, capsys):
    copy = tmp_path / "old"
    shutil.copytree(kfold, copy)
    (copy / ENSEMBLE_FILE).unlink()
    assert main(["predict", str(copy), str(images[0]), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert f"protloc train --resume {copy}" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("change, message", [
    ({"folds": ["../elsewhere"]}, "fold folder names"),
    ({"thresholds": [0.5] * 3}, "one threshold per class"),
    ({"folds": ["fold-0", "fold-7"]}, "fold-7"),
])
def test_broken_ensemble_json_exits_2(kfold, images, tmp_path, capsys, change, message):
    copy = tmp_path / "broken"
    shutil.copytree(kfold, copy)
    record = json.loads((copy / ENSEMBLE_FILE).read_text())
    (copy / ENSEMBLE_FILE).write_text(json.dumps({**record, **change}))
    assert main(["predict", str(copy), str(images[0]), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_folds_of_different_image_sizes_exit_2(kfold, images, tmp_path, capsys):
    copy = tmp_path / "mixed"
    shutil.copytree(kfold, copy)
    config = load_config(fold_dir(copy, 2))
    config.image_size = 32
    save_config(fold_dir(copy, 2), config)
    assert main(["predict", str(copy), str(images[0]), "--out", str(tmp_path / "p.csv")]) == 2
    assert "image_size differ" in capsys.readouterr().err
