"""Checks on what a run folder holds, before anything relies on it: which names make a run (so that no other
output replaces them), and what ensemble.json must say (as config.json's fields are checked, runs.config_problems).
See docs/security.md."""
from __future__ import annotations

import os
import reprlib
from pathlib import Path

from protloc.files import DIGEST_SUFFIX
from protloc.runs import (CHECKPOINT_DIR, CONFIG_FILE, CURVES_FILE, ENSEMBLE_FILE, FOLDS_FILE, LR_FILE, LR_PLOT_FILE,
                          METRICS_FILE, OUT_OF_FOLD_FILE, RECIPE_FILE, WEIGHTS_FILE, _numbers, fold_number)


def is_run_part(name: str) -> bool:
    """Whether `name` inside a run folder (or a K-fold folder) is one of the files and folders that make it: only
    train writes them, and tune rewrites the config."""
    parts = {CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, LR_FILE, CURVES_FILE, LR_PLOT_FILE, CHECKPOINT_DIR, FOLDS_FILE,
             ENSEMBLE_FILE, OUT_OF_FOLD_FILE, WEIGHTS_FILE + DIGEST_SUFFIX}
    return name in parts or fold_number(name) is not None


def is_run_folder(folder: str | Path) -> bool:
    """A folder that train wrote, or is writing: its config.json, ensemble.json or checkpoints' recipe is there."""
    folder = Path(folder)
    return any(os.path.isfile(folder / name) for name in (CONFIG_FILE, ENSEMBLE_FILE, f"{CHECKPOINT_DIR}/{RECIPE_FILE}"))


def ensemble_record_problems(path: Path, data: dict) -> list[str]:
    """What is wrong with an ensemble.json's fields (its folds already known to be fold-k names), one line each."""
    problems = []
    folds = data["folds"]
    if len(set(folds)) != len(folds):
        problems.append(f"folds {reprlib.repr(folds)}: a fold is listed more than once")
    for fold in dict.fromkeys(folds):
        if (path.parent / fold).is_symlink():
            problems.append(f"folds: {fold} is a symbolic link (a fold is a folder of its own K-fold folder)")
    names = data["label_names"]
    if not (isinstance(names, list) and names and all(isinstance(name, str) and name.strip() for name in names)
            and len(set(names)) == len(names)):
        problems.append(f"label_names {reprlib.repr(names)}: expected a list of distinct class names")
    elif not (_numbers(data["thresholds"], len(names)) and all(0 < value <= 1 for value in data["thresholds"])):
        problems.append(f"thresholds {reprlib.repr(data['thresholds'])}: expected one threshold per class, "
                        f"{len(names)} numbers in (0, 1] in the order of label_names")
    if not isinstance(data["label_set"], str):
        problems.append(f"label_set {reprlib.repr(data['label_set'])}: expected the label set's name")
    if not isinstance(data.get("training") or {}, dict):
        problems.append(f"training {reprlib.repr(data['training'])}: expected a JSON object")
    return problems
