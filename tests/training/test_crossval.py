"""K-fold cross-validation through the CLI: one complete run per fold, out-of-fold thresholds for the ensemble,
folds.csv, and what resuming a finished K-fold folder does."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import protloc
from protloc.cli import main
from protloc.data.readers import read_dataset
from protloc.inference.thresholds import apply_thresholds, cross_fitted_labels, tune_thresholds
from protloc.metrics import multilabel_scores, scores_as_deployed
from protloc.runs import ENSEMBLE_FILE, FOLDS_FILE, OUT_OF_FOLD_FILE, EnsembleConfig, load_config
from protloc.training.splits import kfold_splits


def test_kfold_trains_one_complete_run_per_fold(trained_kfold):
    summary = pd.read_csv(trained_kfold / FOLDS_FILE, dtype={"fold": str}).set_index("fold")
    assert summary.index.tolist() == ["0", "1", "mean", "std", "out-of-fold"]
    n_val = []
    for fold in ("0", "1"):
        training = load_config(trained_kfold / f"fold-{fold}").training
        # Stratified folds by default, whatever the single-run --validation-split (left at its default, mask).
        assert training.best_epoch == 1 and training.validation_split == "mask"
        assert training.recipe["fold_split"] == "stratified"
        assert summary.loc[fold, "best_val_f1_macro"] == pytest.approx(training.val_at_05["f1_macro"])
        assert summary.loc[fold, "val_f1_macro_at_0.5"] == pytest.approx(training.val_at_05["f1_macro"])
        assert summary.loc[fold, "val_f1_macro_tuned"] == pytest.approx(training.val_tuned["f1_macro"])
        n_val.append(training.n_val)
    assert sum(n_val) == 96  # the two validation folds partition the data
    scores = summary.loc[["0", "1"], "val_f1_macro_oof_thresholds"]
    assert summary.loc["mean", "val_f1_macro_oof_thresholds"] == pytest.approx(scores.mean())
    assert summary.loc["std", "val_f1_macro_oof_thresholds"] == pytest.approx(scores.std(ddof=0))


def test_each_image_is_predicted_by_the_fold_that_held_it_out(trained_kfold, demo_data):
    table = read_dataset(demo_data)
    recipe = load_config(trained_kfold).training.recipe
    folds = kfold_splits(table.targets, 2, recipe["seed"], "stratified")
    out_of_fold = pd.read_csv(trained_kfold / OUT_OF_FOLD_FILE, dtype={"id": str, "labels": str}, keep_default_na=False)
    assert out_of_fold["id"].tolist() == table.frame["id"].astype(str).tolist()
    names = list(table.label_set.names)
    for fold, (_train_rows, val_rows) in enumerate(folds):
        assert (out_of_fold["fold"].to_numpy()[val_rows] == fold).all()
        sources = table.frame["source"].iloc[val_rows].tolist()
        expected = protloc.load(trained_kfold / f"fold-{fold}", precision="fp32").predict_proba(sources)
        np.testing.assert_allclose(out_of_fold.loc[val_rows, names].to_numpy(), expected, atol=1e-6)


def test_ensemble_thresholds_are_tuned_on_all_out_of_fold_predictions(trained_kfold, demo_data):
    table = read_dataset(demo_data)
    names = list(table.label_set.names)
    probabilities = pd.read_csv(trained_kfold / OUT_OF_FOLD_FILE)[names].to_numpy()
    expected = tune_thresholds(table.targets, probabilities)
    config = load_config(trained_kfold)
    assert isinstance(config, EnsembleConfig) and config.folds == ["fold-0", "fold-1"]
    np.testing.assert_allclose(config.thresholds, expected)
    tuned = multilabel_scores(table.targets, apply_thresholds(probabilities, expected))
    assert config.training.val_tuned["f1_macro"] == pytest.approx(tuned["f1_macro"])
    at_05 = scores_as_deployed(table.targets, probabilities, 0.5)
    assert config.training.val_at_05["f1_macro"] == pytest.approx(at_05["f1_macro"])
    pooled = pd.read_csv(trained_kfold / FOLDS_FILE, dtype={"fold": str}).set_index("fold").loc["out-of-fold"]
    assert pooled["images"] == 96
    assert pooled["val_f1_macro_oof_thresholds"] == pytest.approx(tuned["f1_macro"])
    # The honest score of tuning: each fold's images at thresholds tuned on the other fold alone.
    held_out_by = pd.read_csv(trained_kfold / OUT_OF_FOLD_FILE)["fold"].to_numpy()
    cross_fitted = multilabel_scores(table.targets, cross_fitted_labels(table.targets, probabilities, held_out_by))
    assert pooled["val_f1_macro_cross_fitted"] == pytest.approx(cross_fitted["f1_macro"])
    assert config.training.val_tuned_cross_fitted["f1_macro"] == pytest.approx(cross_fitted["f1_macro"])


def test_resume_writes_a_missing_ensemble_and_keeps_an_existing_one(trained_kfold, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(trained_kfold, copy)
    record = json.loads((copy / ENSEMBLE_FILE).read_text())
    for name in (ENSEMBLE_FILE, FOLDS_FILE, OUT_OF_FOLD_FILE):  # as an earlier protloc left a K-fold folder
        (copy / name).unlink()
    weights = (copy / "fold-0" / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(copy), "--workers", "0"]) == 0
    assert json.loads((copy / ENSEMBLE_FILE).read_text())["thresholds"] == pytest.approx(record["thresholds"])
    assert (copy / FOLDS_FILE).is_file() and (copy / OUT_OF_FOLD_FILE).is_file()
    assert (copy / "fold-0" / "model.safetensors").read_bytes() == weights  # no fold trained again

    retuned = {**record, "thresholds": [0.25] * len(record["thresholds"])}  # as `protloc tune` leaves it
    (copy / ENSEMBLE_FILE).write_text(json.dumps(retuned))
    assert main(["train", "--resume", str(copy), "--workers", "0"]) == 0
    assert json.loads((copy / ENSEMBLE_FILE).read_text()) == retuned


def test_the_ensemble_has_one_outlier_threshold_the_mean_of_its_folds(trained_kfold):
    folds = [load_config(trained_kfold / f"fold-{fold}").outlier_threshold for fold in range(2)]
    assert all(value is not None and value > 0 for value in folds)
    ensemble = load_config(trained_kfold)
    assert isinstance(ensemble, EnsembleConfig) and ensemble.outlier_threshold == pytest.approx(np.mean(folds))
    assert ensemble.training_data.kind == "demo"  # the folds' record of their data
