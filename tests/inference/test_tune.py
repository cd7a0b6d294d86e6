"""protloc tune: thresholds retuned on labelled data are written into the run's config.json."""
from __future__ import annotations

import numpy as np
import pytest

import protloc
from protloc.cli import main
from protloc.data.readers import read_dataset
from protloc.inference.thresholds import tune_thresholds
from protloc.labels import HPA10
from protloc.runs import load_config


@pytest.fixture
def run_dir(untrained_run, tmp_path):
    # Spread probabilities, so that they differ between images. A run per test: tune rewrites its config.
    return untrained_run(tmp_path / "run", training={"epochs": 3}, spread=30)


def tune(*args) -> int:
    return main(["tune", *map(str, args), "--workers", "0", "--precision", "fp32"])


def test_tune_writes_the_f1_best_thresholds_into_the_config(run_dir, demo_data, capsys):
    table = read_dataset(demo_data)
    probabilities = protloc.load(run_dir, precision="fp32").predict_table(table).outputs
    expected = tune_thresholds(table.targets, probabilities)
    assert not np.allclose(expected, 0.5)  # the data moves them, so the check below means something

    assert tune(run_dir, demo_data) == 0
    config = load_config(run_dir)
    np.testing.assert_allclose(config.thresholds, expected)
    assert config.training.recipe["epochs"] == 3 and config.training.thresholds_tuned_on["images"] == len(table)
    report = capsys.readouterr().out
    assert "macro F1" in report and all(name in report for name in HPA10.names)
    tuned = config.training.thresholds_tuned_on
    assert tuned["f1_macro_after"] >= tuned["f1_macro_before"]


def test_dry_run_leaves_the_config_alone(run_dir, demo_data):
    before = (run_dir / "config.json").read_text()
    assert tune(run_dir, demo_data, "--dry-run") == 0
    assert (run_dir / "config.json").read_text() == before


def test_label_set_mismatch_is_refused(run_dir, demo_data, capsys):
    before = (run_dir / "config.json").read_text()
    assert tune(run_dir, demo_data, "--labels", "hpa28") == 2
    error = capsys.readouterr().err
    assert "hpa28 (28 classes)" in error and "hpa10 (10 classes)" in error
    assert (run_dir / "config.json").read_text() == before
