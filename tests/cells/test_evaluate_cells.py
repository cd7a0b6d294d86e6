"""protloc evaluate --cells: per-cell macro F1 and the competition's mAP, each beside the baseline."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from protloc.cells.metrics import cell_macro_f1
from protloc.cli import main


@pytest.fixture(scope="module")
def run_dir(untrained_run, tmp_path_factory):
    return untrained_run(tmp_path_factory.mktemp("cells-eval-run") / "run", image_size=32, spread=30.0)


def _evaluate(*args) -> int:
    return main(["evaluate", *map(str, args), "--workers", "0", "--precision", "fp32", "--engine", "torch"])


def test_with_the_true_masks_every_cell_matches_and_the_baseline_is_the_image_labels(run_dir, cell_data, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(run_dir, cell_data, "--cells", "--masks", cell_data / "cells", "--out", out) == 0
    scores = json.loads((out / "cell_metrics.json").read_text())
    cells = pd.read_csv(cell_data / "cells.csv", dtype=str, keep_default_na=False)
    assert scores["true_cells"] == scores["matched_cells"] == scores["predicted_cells"] == len(cells)
    # The baseline, worked out from the image-level predictions the evaluation wrote.
    predicted = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False).set_index("id")["predicted"]
    targets = np.zeros((len(cells), 10), dtype=bool)
    baseline = np.zeros((len(cells), 10), dtype=bool)
    for row, (image, label) in enumerate(zip(cells["Image"], cells["Label"])):
        targets[row, [int(c) for c in label.split()]] = True
        baseline[row, [int(c) for c in predicted[image].split()]] = True
    assert scores["baseline_cell_macro_f1"] == pytest.approx(cell_macro_f1(targets, baseline))
    for key in ("cell_macro_f1", "cell_map", "baseline_cell_map"):
        assert 0.0 <= scores[key] <= 1.0


def test_segmented_cells_are_matched_to_the_true_ones(run_dir, cell_data, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(run_dir, cell_data, "--cells", "--out", out) == 0
    scores = json.loads((out / "cell_metrics.json").read_text())
    assert scores["masks"] == "segmentation"
    assert 0.8 * scores["true_cells"] <= scores["matched_cells"] <= scores["true_cells"]


def test_data_without_per_cell_truth_exits_2(run_dir, demo_data, tmp_path, capsys):
    assert _evaluate(run_dir, demo_data, "--cells", "--out", tmp_path / "eval") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert errors[0].startswith(f"protloc: error: {demo_data / 'cells.csv'}: not found")
