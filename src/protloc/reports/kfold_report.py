"""The K-fold part of a run's page: the folds' curves on one chart, folds.csv, and the out-of-fold evaluation.

Stands where a single run's page has its training curves. The ensemble's own evaluation on --data, and its
sample Grad-CAMs (the mean of the folds' maps), come from the page's usual sections, since the K-fold folder
opens as one model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protloc.files import save_figure
from protloc.reports import html
from protloc.runs import FOLDS_FILE, METRICS_FILE, OUT_OF_FOLD_FILE, EnsembleConfig

FOLD_CURVES_FILE = "fold_curves.png"  # in the report folder
OUT_OF_FOLD_DIR = "out-of-fold"  # in the report folder: the out-of-fold evaluation's files
CURVE_METRIC = "val_f1_macro"


def fold_curves_block(run_dir: Path, config: EnsembleConfig, report_dir: Path, prefix: str) -> list[str]:
    """Each fold's validation macro F1 per epoch, on one chart (as `protloc compare` draws it)."""
    from protloc.plots import plot_run_comparison  # matplotlib and seaborn load only here

    histories, missing = [], []
    for fold in config.folds:
        path = run_dir / fold / METRICS_FILE
        frame = pd.read_csv(path) if path.is_file() else None
        if frame is None or CURVE_METRIC not in frame.columns:
            missing.append(fold)
        else:
            histories.append((fold, frame))
    blocks = [html.note(f"No {METRICS_FILE} with {CURVE_METRIC} in {', '.join(missing)}.")] if missing else []
    if histories:
        save_figure(report_dir / FOLD_CURVES_FILE, plot_run_comparison(histories, CURVE_METRIC))
        blocks.insert(0, html.image(prefix + FOLD_CURVES_FILE, "Validation macro F1 (at 0.5) per epoch, one line per fold"))
    return blocks


def folds_table_block(run_dir: Path) -> list[str]:
    path = run_dir / FOLDS_FILE
    if not path.is_file():
        return [html.note(f"{path} not found.")]
    frame = pd.read_csv(path, dtype={"fold": str}).drop(columns=["run"], errors="ignore")
    return [html.paragraph(
        "Macro F1 of each fold on its validation images, labelled as predict labels them: its best epoch in "
        "training (best_val) and its weights at 0.5, at the fold's own thresholds (tuned), at the ensemble's "
        "out-of-fold thresholds (oof_thresholds) and at thresholds tuned on the other folds alone (cross_fitted); "
        "then the mean and spread over the folds, and all out-of-fold predictions pooled. In-sample: best_val, "
        "tuned and oof_thresholds (the same images picked the epoch or tuned the cut). Honest: cross_fitted, "
        "and an evaluation on held-out data (--data)."), html.table(frame, float_digits=4)]


def out_of_fold_blocks(run_dir: Path, config: EnsembleConfig, report_dir: Path, prefix: str) -> list[str]:
    """Every training image as predicted by the fold that held it out, scored at the ensemble's thresholds."""
    from protloc.reports.evaluate import evaluation_blocks, score_predictions, write_evaluation

    path = run_dir / OUT_OF_FOLD_FILE
    if not path.is_file():
        return [html.note(f"{path} not found (protloc train --folds writes it).")]
    frame = pd.read_csv(path, dtype={"id": str, "labels": str}, keep_default_na=False)
    names = list(config.label_names)
    targets = np.zeros((len(frame), len(names)), dtype=np.float32)
    for row, labels in enumerate(frame["labels"]):
        targets[row, [int(index) for index in labels.split()]] = 1
    evaluation = score_predictions(frame["id"].tolist(), targets, frame[names].to_numpy(),
                                   config.thresholds, names, "the ensemble's thresholds")
    write_evaluation(evaluation, report_dir / OUT_OF_FOLD_DIR, "Out-of-fold evaluation")
    return [html.paragraph(f"Each of the {len(frame)} training images as predicted by the fold that did not train "
                           "on it (a single fold's probability, not the ensemble's), at the ensemble's thresholds: "
                           "in-sample, as those thresholds were tuned on these predictions."),
            *evaluation_blocks(evaluation, f"{prefix}{OUT_OF_FOLD_DIR}/")]


def kfold_blocks(run_dir: str | Path, config: EnsembleConfig, report_dir: Path, prefix: str) -> list[str]:
    """The K-fold section; `prefix` is the path from the page to `report_dir`."""
    run_dir = Path(run_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    intro = html.paragraph(
        f"A {len(config.folds)}-fold ensemble: its probability is the mean of the folds' ({', '.join(config.folds)}), "
        "each fold normalising the image with its own mean and std (see its config.json); the ensemble takes "
        "images scaled to 0..1, hence mean 0 and std 1 above.")
    return [intro, *fold_curves_block(run_dir, config, report_dir, prefix), *folds_table_block(run_dir),
            html.heading("Out-of-fold evaluation", 3), *out_of_fold_blocks(run_dir, config, report_dir, prefix)]
