"""protloc compare RUN... --out PLOT: a validation score of several runs against epoch, on one chart."""
from __future__ import annotations

import argparse
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.files import check_output_path, save_figure
from protloc.runs import CONFIG_FILE, FOLD_PREFIX, METRICS_FILE, fold_number, load_config
from protloc.training.resume import read_recipe


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="plot a validation score of several runs against epoch",
        description="Draw one line per run of a metrics.csv column (default val_f1_macro) against epoch, e.g. a "
                    "random-mask split against a train_test_split one, as in the seed notebook. The legend names each "
                    "run by its folder and split method. A K-fold folder adds one line per fold.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by protloc train")
    parser.add_argument("--out", required=True, metavar="PLOT", help="PNG file to write")
    parser.add_argument("--metric", default="val_f1_macro",
                        help="metrics.csv column to plot, e.g. val_loss, val_f1_micro, f1_Nucleoli (default val_f1_macro)")
    parser.set_defaults(handler=run)


def run_folders(run: Path) -> list[Path]:
    """The run itself, or the folds of a K-fold folder."""
    if (run / METRICS_FILE).is_file():
        return [run]
    folds = [path.parent for path in run.glob(f"{FOLD_PREFIX}*/{METRICS_FILE}") if fold_number(path.parent) is not None]
    if folds:
        return sorted(folds, key=fold_number)
    raise ProtlocError(f"{run}: no {METRICS_FILE} (expected a run folder written by protloc train)")


def read_histories(runs: list[str], metric: str) -> list:
    """(legend label, metrics frame) per run: the folder's name and its split method."""
    import pandas as pd  # here, not for --help

    histories, problems = [], []
    for run in runs:
        try:
            folders = run_folders(Path(run))
        except ProtlocError as error:
            problems.extend(error.lines)
            continue
        for folder in folders:
            try:
                metrics = pd.read_csv(folder / METRICS_FILE)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
                problems.append(f"{folder / METRICS_FILE}: not a readable CSV ({type(error).__name__}; protloc train writes it)")
                continue
            if metric not in metrics.columns or "epoch" not in metrics.columns:
                numeric = [c for c in metrics.columns if c not in ("epoch", "phase")]
                problems.append(f"{folder / METRICS_FILE}: no column {metric!r} (choose --metric from {', '.join(numeric[:9])}, ...)")
                continue
            histories.append((f"{folder_label(folder)} ({split_method(folder)} split)", metrics))
    if problems:
        raise ProtlocError(*problems)
    return histories


def folder_label(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}" if fold_number(folder) is not None else folder.name


def split_method(folder: Path) -> str:
    """The run's validation split (a K-fold fold's: the fold split); a run still in training (no config.json yet)
    has it in its recipe."""
    if (folder / CONFIG_FILE).is_file():
        recipe = load_config(folder).training.recipe
    else:
        recipe = (read_recipe(folder) or {"config": {}})["config"]
    key = "fold_split" if (recipe.get("folds") or 1) >= 2 else "validation_split"
    return recipe.get(key) or "unknown"


def run(args: argparse.Namespace) -> int:
    from protloc.plots import plot_run_comparison  # matplotlib loads only when plotting

    check_output_path(args.out)
    histories = read_histories(args.runs, args.metric)
    save_figure(args.out, plot_run_comparison(histories, args.metric))
    print(f"wrote {args.out} ({args.metric} of {len(histories)} runs)")
    return 0
