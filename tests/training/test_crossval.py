"""K-fold cross-validation through the CLI: one complete run per fold, and folds.csv."""
from __future__ import annotations

import pandas as pd
import pytest

from protloc.cli import main
from protloc.runs import load_run


def test_kfold_trains_one_complete_run_per_fold(demo_data, tiny_recipe, tmp_path):
    out = tmp_path / "cv"
    args = ["train", str(demo_data), "--out", str(out), *tiny_recipe.args(epochs_frozen=0),
            "--backbone", "mobilenetv3_small_050", "--folds", "2", "--validation-split", "stratified"]
    assert main(args) == 0
    summary = pd.read_csv(out / "folds.csv")
    assert summary["fold"].tolist() == [0, 1]
    n_val = []
    for fold in (0, 1):
        config, _model = load_run(out / f"fold-{fold}")
        assert config.training.best_epoch == 1 and config.training.validation_split == "stratified"
        assert summary.loc[fold, "best_val_f1_macro"] == pytest.approx(config.training.val_at_05["f1_macro"])
        assert summary.loc[fold, "val_f1_macro_tuned"] == pytest.approx(config.training.val_tuned["f1_macro"])
        n_val.append(config.training.n_val)
    assert sum(n_val) == 96  # the two validation folds partition the data
