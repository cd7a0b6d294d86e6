"""K-fold cross-validation: one complete run per fold in OUT/fold-<k>, then OUT/folds.csv with a row per fold.

Every fold starts from the same initial network. A stopped K-fold run resumes at the fold it stopped in;
folds already finished are kept as they are.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from protloc.data.readers import DatasetTable
from protloc.files import write_csv
from protloc.models.classifier import ProtlocNet
from protloc.runs import CONFIG_FILE, FOLDS_FILE, METRICS_FILE, WEIGHTS_FILE, fold_dir, load_config
from protloc.training.config import TrainConfig
from protloc.training.engine import Engine, rank
from protloc.training.resume import holds_run
from protloc.training.run import train_run
from protloc.training.splits import kfold_splits


def train_folds(config: TrainConfig, engine: Engine, table: DatasetTable, model: ProtlocNet) -> bool:
    """Train every fold into `config.out`; True when all finished (rank 0 has then written folds.csv)."""
    out = Path(config.out)
    initial_state = {key: value.clone() for key, value in model.state_dict().items()}
    folds = kfold_splits(table.targets, config.folds, config.seed, config.validation_split)
    for fold, (train_rows, val_rows) in enumerate(folds):
        run_dir = fold_dir(out, fold)
        if config.resume and (run_dir / CONFIG_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file():
            continue
        model.load_state_dict(initial_state)
        fold_config = dataclasses.replace(config, resume=config.resume and holds_run(run_dir))
        if not train_run(fold_config, engine, table, model, train_rows, val_rows, run_dir):
            return False  # stopped early: --resume continues with this fold
    if rank() == 0:
        write_fold_summary(out, [summarize_run(fold_dir(out, fold)) for fold in range(len(folds))])
    return True


def summarize_run(run_dir: Path) -> dict:
    """A fold's row of folds.csv, from its run folder."""
    training = load_config(run_dir).training
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    best_f1 = metrics.loc[metrics["epoch"] == training.best_epoch, "val_f1_macro"].iloc[0]
    return {"run": str(run_dir), "best_epoch": training.best_epoch, "best_val_f1_macro": float(best_f1),
            "val_f1_macro_tuned": training.val_tuned["f1_macro"]}


def write_fold_summary(out: Path, summaries: list[dict]) -> None:
    frame = pd.DataFrame(summaries)
    frame.insert(0, "fold", range(len(frame)))
    write_csv(out / FOLDS_FILE, frame)
