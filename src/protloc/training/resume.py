"""Resuming a stopped run: the recipe file it must share, the checks, and where each phase picks up.

Lightning's checkpoints go in RUN/checkpoints/<phase>/ (last.ckpt, written every epoch, for resume;
best.ckpt for the end), beside recipe.json: the options and normalisation a resumed run must share.
Where the run folder is, and where and how fast the run trains, may change; what it learns may not. Paths
are compared resolved, and the run folder is not part of the comparison, so a folder given by another
path, moved or copied resumes.
"""
from __future__ import annotations

import json
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.files import write_json
from protloc.runs import CHECKPOINT_DIR, CONFIG_FILE, FOLDS_FILE, LAST_CHECKPOINT, RECIPE_FILE, fold_dir
from protloc.training.config import TrainConfig, config_from_recipe, option, recipe_of, upgrade_recipe

# What may differ when a stopped run is resumed: where the run folder is, and where and how fast it runs.
RESUMABLE_CHANGES = ("out", "resume", "stop_after", "device", "precision", "workers", "devices", "num_nodes",
                     "verbose", "show_progress", "cache", "cache_dir", "cache_limit_gb")


def recipe_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / RECIPE_FILE


def read_recipe(run_dir: Path) -> dict | None:
    """{"config": the recorded options (today's key names), "mean": [...], "std": [...]}, or None if there is none."""
    path = recipe_path(run_dir)
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtlocError(f"{path}: not valid JSON ({error}); the stopped run cannot be resumed") from None
    return {**recipe, "config": upgrade_recipe(recipe["config"])}


def write_recipe(run_dir: Path, config: TrainConfig, mean: list[float], std: list[float]) -> None:
    write_json(recipe_path(run_dir), {"config": recipe_of(config), "mean": mean, "std": std})


def check_same_recipe(saved: dict, config: TrainConfig, path: Path) -> None:
    """A ProtlocError listing every option that differs from the stopped run's, beyond the resumable ones."""
    current = recipe_of(config)
    # Options added since the stopped run started count as what that version did (upgrade_recipe), else as their
    # defaults: a run that cropped from half the area is not continued with another crop without saying so.
    before = {**recipe_of(TrainConfig(data=config.data, out=config.out)), **upgrade_recipe(saved)}
    for key in ("data", "weights"):  # recipes of earlier versions kept these as typed
        if before.get(key):
            before[key] = str(Path(before[key]).resolve())
    differences = [
        f"  {option(key)}: {before.get(key)!r} in the stopped run, {current[key]!r} now"
        for key in current if key not in RESUMABLE_CHANGES and before.get(key) != current[key]
    ]
    if differences:
        may_change = ", ".join(option(key) for key in RESUMABLE_CHANGES if key not in ("out", "resume", "show_progress"))
        raise ProtlocError(f"--resume: the options differ from those of the stopped run ({path}):", *differences,
                           f"resume with the same options (only {may_change} may change)")


def holds_run(folder: Path) -> bool:
    names = (CONFIG_FILE, CHECKPOINT_DIR, FOLDS_FILE, fold_dir(folder, 0).name)
    return folder.is_dir() and any((folder / name).exists() for name in names)


def check_out_folder(config: TrainConfig) -> None:
    out = Path(config.out)
    resumable = fold_dir(out, 0).is_dir() if config.folds >= 2 else recipe_path(out).is_file()
    if config.resume and not resumable:
        raise ProtlocError(f"--resume: {out} holds no stopped run (expected {recipe_path(out)} from an earlier protloc train --out {out})")
    if not config.resume and holds_run(out):
        raise ProtlocError(f"--out {out} already holds a run: add --resume to continue it, or choose another folder")


def phase_checkpoint(run_dir: Path, phase: str, name: str = LAST_CHECKPOINT) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / phase / name


def resume_point(run_dir: Path, phases: list[str], resume: bool) -> dict[str, Path | None | str]:
    """For each phase: the checkpoint to continue from, None to train it afresh, or "skip" when a later phase's
    checkpoint already holds its outcome."""
    points: dict[str, Path | None | str] = {phase: None for phase in phases}
    if not resume:
        return points
    later_found = False
    for phase in reversed(phases):
        last = phase_checkpoint(run_dir, phase)
        if later_found:
            points[phase] = "skip"
        elif last.is_file():
            read_checkpoint(last, run_dir)  # before training starts: a damaged one is reported, not hit half way
            points[phase] = last
            later_found = True
    return points


# What Lightning needs in a checkpoint to resume from it.
RESUME_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states", "pytorch-lightning_version")


def read_checkpoint(path: Path, run_dir: Path, keys: tuple[str, ...] = RESUME_KEYS) -> dict:
    """A checkpoint of `run_dir`, loaded without unpickling code; a ProtlocError saying the run is not resumable,
    and how to start over, when it is damaged or foreign. (PyTorch's own message would advise loading it with
    weights_only=False, which runs whatever code the file holds: never repeated here.)"""
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "holds objects that only running code could rebuild, so it is not a checkpoint protloc wrote"
    except Exception as error:  # torch.load raises many types for a damaged file
        reason = f"damaged, perhaps cut short by a crash while it was written ({type(error).__name__})"
    else:
        missing = [key for key in keys if key not in checkpoint] if isinstance(checkpoint, dict) else ["all"]
        if not missing:
            return checkpoint
        reason = f"not a Lightning training checkpoint (no {', '.join(missing[:3])})"
    raise ProtlocError(f"{run_dir}: not resumable: {path} is {reason}",
                       f"to start over, train into a new folder (protloc train DATA --out NEW_RUN), or remove "
                       f"{Path(run_dir) / CHECKPOINT_DIR} and train into {run_dir} without --resume")


def resumed_config(run_dir: Path, **changes) -> TrainConfig:
    """`--resume RUN`: the stopped run's own options (for K-fold, those of RUN/fold-0), with `changes` (the
    resumable ones: see RESUMABLE_CHANGES) applied."""
    recipe = read_recipe(run_dir) or read_recipe(fold_dir(run_dir, 0))
    if recipe is None:
        raise ProtlocError(f"--resume {run_dir}: holds no stopped run (expected {recipe_path(run_dir)} from protloc train --out {run_dir})")
    return config_from_recipe(recipe["config"], **changes, resume=True, out=str(run_dir))
