"""A run folder's model: its weights written (safetensors, then the config) and read back into the network its
config describes; a K-fold folder's folds loaded as one FoldEnsemble. Nothing is unpickled.

The folder's format (names, config.json, the weights file's header) is runs.py's; this module builds networks.
"""
from __future__ import annotations

from pathlib import Path

from protloc.errors import ProtlocError
from protloc.files import atomic_path, check_digest, write_digest
from protloc.runs import (CONFIG_FILE, WEIGHTS_FILE, EnsembleConfig, RunConfig, check_head_fits, load_config,
                          read_weight_shapes, save_config)


def save_run(run_dir: str | Path, config: RunConfig, model) -> None:
    """Write the weights, then the config: a folder with a config always has matching weights."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    if broken := non_finite_tensors(state):
        raise ProtlocError(f"{run_dir / WEIGHTS_FILE}: not written: {len(broken)} weight tensors hold NaN or infinite "
                           f"values (e.g. {broken[0]}); training diverged")
    with atomic_path(run_dir / WEIGHTS_FILE) as temp:
        save_file(state, str(temp))
    write_digest(run_dir / WEIGHTS_FILE)  # checked by load_run
    save_config(run_dir, config)


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(RunConfig, model in eval mode) from a run folder; from a K-fold folder, (EnsembleConfig, FoldEnsemble).
    Weights are safetensors: nothing is unpickled."""
    from safetensors.torch import load_file

    from protloc.models.classifier import build_model  # here: timm loads only when a network is built

    config = load_config(run_dir)
    if isinstance(config, EnsembleConfig):
        from protloc.models.ensemble import FoldEnsemble

        models = [load_run(Path(run_dir) / fold, device)[1] for fold in config.folds]
        return config, FoldEnsemble(models, config.fold_configs).to(device).eval()
    weights_path = Path(run_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ProtlocError(f"{weights_path}: not found (a run folder holds config.json and model.safetensors)")
    shapes = read_weight_shapes(weights_path)
    model = build_model(config.backbone, config.num_classes, pretrained=False, in_chans=config.in_chans, dropout=config.dropout)
    check_weights_fit(config, shapes, {key: tuple(value.shape) for key, value in model.state_dict().items()}, weights_path)
    check_digest(weights_path)
    try:
        state = load_file(str(weights_path), device=device)
    except Exception as error:  # safetensors raises its own error, OSError or others for damaged files
        raise ProtlocError(f"{weights_path}: not a readable safetensors file ({type(error).__name__})") from None
    if broken := non_finite_tensors(state):
        raise ProtlocError(f"{weights_path}: {len(broken)} weight tensors hold NaN or infinite values (e.g. "
                           f"{broken[0]}); the run's training diverged, retrain it")
    model.load_state_dict(state, strict=True)
    return config, model.to(device).eval()


def check_weights_fit(config: RunConfig, saved: dict[str, tuple], expected: dict[str, tuple], weights_path: Path) -> None:
    """Refuse weights that the config's network cannot take, naming the config field that disagrees with them."""
    check_head_fits(config, saved, weights_path)
    stem = next((key for key, shape in expected.items() if len(shape) == 4), None)
    if stem in saved and len(saved[stem]) == 4 and saved[stem][1] != expected[stem][1]:
        raise ProtlocError(f"{weights_path}: takes {saved[stem][1]}-channel images, but {CONFIG_FILE} has in_chans "
                           f"{config.in_chans}")
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    wrong = [key for key in expected if key in saved and saved[key] != expected[key]]
    if missing or unexpected or wrong:
        examples = ", ".join((missing + unexpected + wrong)[:3])
        raise ProtlocError(f"{weights_path}: does not fit the backbone {config.backbone!r} of {CONFIG_FILE} "
                           f"({len(missing)} tensors missing, {len(unexpected)} unexpected, {len(wrong)} of another "
                           f"shape, e.g. {examples}); are the two files from different runs?")


def non_finite_tensors(state: dict) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [key for key, value in state.items() if value.is_floating_point() and not bool(value.isfinite().all())]
