"""The names of what a run folder holds, each typed once: every other module imports them (through protloc.runs
or from here). Without imports, so that the lowest modules (files.py's output checks) can name them too."""
from __future__ import annotations

from pathlib import Path

# Every file a run folder holds is named here, once; all other modules import these names.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # written by `protloc export`, read by `--engine onnx`
OUTLIER_FILE = "outliers.safetensors"  # the training images' features, described (inference/outliers.py)
METRICS_FILE = "metrics.csv"  # one row per epoch
LR_FILE = "lr.csv"  # the learning rate at every step
CURVES_FILE = "curves.png"
LR_PLOT_FILE = "lr.png"
REPORT_FILE = "report.html"
CHECKPOINT_DIR = "checkpoints"  # Lightning checkpoints, one folder per phase, for --resume
RECIPE_FILE = "recipe.json"  # in CHECKPOINT_DIR: the config and normalisation a resumed run must share
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
FOLDS_FILE = "folds.csv"  # in a K-fold folder: one row per fold, then the rows FOLDS_SUMMARY_ROWS
FOLDS_SUMMARY_ROWS = ("mean", "std", "out-of-fold")  # over the folds; the pooled out-of-fold predictions
FOLD_PREFIX = "fold-"  # a K-fold folder holds fold-0 ... fold-(K-1), each a run folder
ENSEMBLE_FILE = "ensemble.json"  # in a K-fold folder: the folds it averages and the ensemble's thresholds
OUT_OF_FOLD_FILE = "out_of_fold.csv"  # in a K-fold folder: each training image's probabilities from the fold that held it out


# ---------------------------------------------------------------- run folders


def fold_dir(out: str | Path, fold: int) -> Path:
    return Path(out) / f"{FOLD_PREFIX}{fold}"


def fold_number(folder: str | Path) -> int | None:
    """k for a folder named fold-k, else None."""
    name = Path(folder).name
    suffix = name.removeprefix(FOLD_PREFIX)
    return int(suffix) if name.startswith(FOLD_PREFIX) and suffix.isdigit() else None
