"""K-fold cross-validation: one complete run per fold in OUT/fold-<k>, then the K folds as one model.

Every fold starts from the same initial network. The folds are stratified (iterative multi-label stratification,
`--fold-split`) whatever `--validation-split` says for a single run: a plain shuffle can leave a fold with none
of a rare class. After the last fold, every training image is predicted by the fold that held it out (its
out-of-fold prediction, OUT/out_of_fold.csv); the ensemble's per-class thresholds are tuned on all of them at
once, with the shrinkage of a single run's.

Which scores are honest: out-of-fold probabilities come from folds that never trained on the image, but each
fold's epoch was picked on those very images, and thresholds tuned on all of them are scored in-sample. The
cross-fitted score labels each fold's images at thresholds tuned on the other folds alone: no image tunes the cut
it is scored at. Why the ensemble's thresholds come from single-fold probabilities, not from the ensemble's own:
every training image was seen in training by K-1 of the K folds, so the ensemble's probabilities exist unseen
only on new images; `protloc tune OUT HELDOUT` retunes them there, on the ensemble's own probabilities. The K folds averaged with
those thresholds are the model of OUT/ensemble.json, which every command opens like a run folder; OUT/folds.csv
scores each fold, their mean and spread, and the pooled out-of-fold predictions.

A stopped K-fold run resumes at the fold it stopped in; folds already finished are kept as they are. A
finished K-fold folder without ensemble.json (trained by an earlier protloc) gets one when resumed; one that
has it is left unchanged, thresholds retuned by `protloc tune` included.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from protloc.data.readers import DatasetTable
from protloc.errors import DataError
from protloc.files import write_csv
from protloc.inference.thresholds import apply_thresholds, class_ratio_thresholds, cross_fitted_labels, tune_thresholds
from protloc.metrics import multilabel_scores, scores_as_deployed
from protloc.models.classifier import ProtlocNet
from protloc.runs import (CONFIG_FILE, DEFAULT_THRESHOLD, ENSEMBLE_FILE, FOLDS_FILE, FOLDS_SUMMARY_ROWS,
                          METRICS_FILE, OUT_OF_FOLD_FILE, WEIGHTS_FILE, TrainingOutcome, fold_dir, load_config,
                          write_ensemble)
from protloc.training.config import TrainConfig, recipe_of
from protloc.training.resume import holds_run
from protloc.training.run import train_run
from protloc.training.splits import Split, kfold_splits
from protloc.training.trainer import Hardware, rank

MEAN_ROW, STD_ROW, OUT_OF_FOLD_ROW = FOLDS_SUMMARY_ROWS


def train_folds(config: TrainConfig, hardware: Hardware, table: DatasetTable, model: ProtlocNet) -> bool:
    """Train every fold into `config.out`; True when all finished (rank 0 has then written the ensemble)."""
    out = Path(config.out)
    initial_state = {key: value.clone() for key, value in model.state_dict().items()}
    folds = kfold_splits(table.targets, config.folds, config.seed, config.fold_split)
    trained = False
    for fold, (train_rows, val_rows) in enumerate(folds):
        run_dir = fold_dir(out, fold)
        if config.resume and (run_dir / CONFIG_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file():
            continue
        model.load_state_dict(initial_state)
        fold_config = dataclasses.replace(config, resume=config.resume and holds_run(run_dir))
        if not train_run(fold_config, hardware, table, model, train_rows, val_rows, run_dir):
            return False  # stopped early: --resume continues with this fold
        trained = True
    if rank() == 0 and (trained or not (out / ENSEMBLE_FILE).is_file()):
        finish_ensemble(config, hardware, table, folds)
    return True


def predict_out_of_fold(out: Path, table: DatasetTable, folds: list[Split], hardware: Hardware, batch_size: int) -> np.ndarray:
    """(N, C) probabilities of every image from the fold that held it out, each fold with its own preprocessing;
    fp32, as a single run's thresholds are tuned."""
    from protloc.inference.predictor import load_predictor

    probabilities = np.zeros((len(table), len(table.label_set)), dtype=np.float32)
    for fold, (_train_rows, val_rows) in enumerate(folds):
        predictor = load_predictor(fold_dir(out, fold), device=hardware.device, precision="fp32")
        result = predictor.predict_table(table.subset(val_rows), batch_size=batch_size, workers=hardware.workers)
        if result.unreadable:
            raise DataError(*result.unreadable)
        probabilities[val_rows] = result.outputs
    return probabilities


def finish_ensemble(config: TrainConfig, hardware: Hardware, table: DatasetTable, folds: list[Split]) -> None:
    """Out-of-fold predictions, the ensemble's thresholds tuned on them, folds.csv, then ensemble.json (last: a
    folder with ensemble.json is a finished model)."""
    out = Path(config.out)
    probabilities = predict_out_of_fold(out, table, folds, hardware, config.batch_size)
    targets = table.targets
    if config.threshold_method == "class-ratio":
        thresholds = class_ratio_thresholds(probabilities, targets.mean(axis=0))
    else:
        thresholds = tune_thresholds(targets, probabilities)
    held_out_by = np.zeros(len(table), dtype=int)
    for fold, (_train_rows, val_rows) in enumerate(folds):
        held_out_by[val_rows] = fold
    cross_fitted = cross_fitted_labels(targets, probabilities, held_out_by)
    write_out_of_fold(out, table, held_out_by, probabilities)
    write_fold_summary(out, summarize_folds(out, folds, targets, probabilities, thresholds, cross_fitted))
    training = TrainingOutcome(
        recipe=recipe_of(config), n_val=len(table),
        val_at_05=scores_as_deployed(targets, probabilities, DEFAULT_THRESHOLD),
        val_tuned=scores_as_deployed(targets, probabilities, thresholds),  # in-sample: tuned on these
        val_tuned_cross_fitted=multilabel_scores(targets, cross_fitted),
    )
    write_ensemble(out, [fold_dir(out, fold).name for fold in range(len(folds))], table.label_set.name,
                   list(table.label_set.names), thresholds, training, ensemble_outlier_threshold(out, len(folds)))


def ensemble_outlier_threshold(out: Path, folds: int) -> float | None:
    """The mean of the folds' outlier thresholds: the ensemble's score is the mean of theirs (inference/outliers.py).
    A mean of scores spreads less than each fold's, so this flags no more validation-like images than a fold does."""
    thresholds = [load_config(fold_dir(out, fold)).outlier_threshold for fold in range(folds)]
    return None if any(value is None for value in thresholds) else float(np.mean(thresholds))


def write_out_of_fold(out: Path, table: DatasetTable, held_out_by: np.ndarray, probabilities: np.ndarray) -> None:
    """id, the fold that predicted it, its true labels (class numbers), then one probability column per class."""
    frame = pd.DataFrame(probabilities, columns=list(table.label_set.names))
    frame.insert(0, "labels", [" ".join(str(index) for index in labels) for labels in table.frame["labels"]])
    frame.insert(0, "fold", held_out_by)
    frame.insert(0, "id", table.frame["id"].astype(str).tolist())
    write_csv(out / OUT_OF_FOLD_FILE, frame)


def summarize_run(run_dir: Path) -> dict:
    """A fold's row of folds.csv, from its run folder: its best epoch's score in metrics.csv, labelled as predict
    does at 0.5, and at its own tuned thresholds (in-sample)."""
    training = load_config(run_dir).training
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    best_f1 = metrics.loc[metrics["epoch"] == training.best_epoch, "val_f1_macro"].iloc[0]
    # Runs of earlier versions kept the plain 0.5 cut in val_at_05 and predict's labels in val_at_05_predicted.
    at_half = training.val_at_05_predicted or training.val_at_05
    return {"run": str(run_dir), "best_epoch": training.best_epoch, "images": training.n_val,
            "best_val_f1_macro": float(best_f1), "val_f1_macro_at_0.5": at_half["f1_macro"],
            "val_f1_macro_tuned": training.val_tuned["f1_macro"]}


def summarize_folds(out: Path, folds: list[Split], targets: np.ndarray, probabilities: np.ndarray,
                    thresholds: np.ndarray, cross_fitted: np.ndarray) -> list[dict]:
    """A row per fold (its validation images also scored at the ensemble's thresholds, in-sample, and at the
    cross-fitted ones, tuned on the other folds), then the pooled out-of-fold predictions: at 0.5, each image
    at its own fold's thresholds, at the ensemble's, and cross-fitted."""
    rows, own_labels = [], np.zeros(targets.shape, dtype=bool)
    for fold, (_train_rows, val_rows) in enumerate(folds):
        row = summarize_run(fold_dir(out, fold))
        at_ensemble = apply_thresholds(probabilities[val_rows], thresholds)
        rows.append({"fold": str(fold), **row,
                     "val_f1_macro_oof_thresholds": multilabel_scores(targets[val_rows], at_ensemble)["f1_macro"],
                     "val_f1_macro_cross_fitted": multilabel_scores(targets[val_rows], cross_fitted[val_rows])["f1_macro"]})
        own_labels[val_rows] = apply_thresholds(probabilities[val_rows], load_config(fold_dir(out, fold)).thresholds)
    at_half = scores_as_deployed(targets, probabilities, DEFAULT_THRESHOLD)["f1_macro"]
    pooled = {
        "fold": OUT_OF_FOLD_ROW, "run": str(out), "images": len(targets),
        "best_val_f1_macro": at_half,
        "val_f1_macro_at_0.5": at_half,
        "val_f1_macro_tuned": multilabel_scores(targets, own_labels)["f1_macro"],
        "val_f1_macro_oof_thresholds": multilabel_scores(targets, apply_thresholds(probabilities, thresholds))["f1_macro"],
        "val_f1_macro_cross_fitted": multilabel_scores(targets, cross_fitted)["f1_macro"],
    }
    return rows + spread_rows(rows) + [pooled]


def spread_rows(rows: list[dict]) -> list[dict]:
    """The mean and the (population, ddof=0) standard deviation over the folds of every score column."""
    frame = pd.DataFrame(rows)
    scores = [column for column in frame.columns if column.startswith("val_") or column.startswith("best_val_")]
    return [{"fold": MEAN_ROW, **frame[scores].mean().to_dict()}, {"fold": STD_ROW, **frame[scores].std(ddof=0).to_dict()}]


def write_fold_summary(out: Path, rows: list[dict]) -> None:
    # Nullable integers: the counts stay 4 and 200, not 4.0 and 200.0, beside the summary rows' blanks.
    write_csv(out / FOLDS_FILE, pd.DataFrame(rows).astype({"best_epoch": "Int64", "images": "Int64"}))
