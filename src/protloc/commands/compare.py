"""protloc compare RUN... --out PLOT: a validation score of several runs against epoch, on one chart."""
from __future__ import annotations

import argparse
from pathlib import Path

from protloc.errors import ProtlocError


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
    if (run / "metrics.csv").is_file():
        return [run]
    folds = sorted(run.glob("fold-*/metrics.csv"), key=lambda path: int(path.parent.name.split("-")[1]))
    if folds:
        return [path.parent for path in folds]
    raise ProtlocError(f"{run}: no metrics.csv (expected a run folder written by protloc train)")


def read_histories(runs: list[str], metric: str) -> list:
    """(legend label, metrics frame) per run: the folder's name and its split method."""
    import pandas as pd

    histories, problems = [], []
    for run in runs:
        try:
            folders = run_folders(Path(run))
        except ProtlocError as error:
            problems.extend(error.lines)
            continue
        for folder in folders:
            metrics = pd.read_csv(folder / "metrics.csv")
            if metric not in metrics.columns or "epoch" not in metrics.columns:
                numeric = [c for c in metrics.columns if c not in ("epoch", "phase")]
                problems.append(f"{folder / 'metrics.csv'}: no column {metric!r} (choose --metric from {', '.join(numeric[:9])}, ...)")
                continue
            histories.append((f"{folder_label(folder)} ({split_method(folder)} split)", metrics))
    if problems:
        raise ProtlocError(*problems)
    return histories


def folder_label(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}" if folder.name.startswith("fold-") else folder.name


def split_method(folder: Path) -> str:
    import json

    for path in (folder / "config.json", folder / "checkpoints" / "recipe.json"):
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            settings = data.get("training") or data.get("config") or {}
            if "split" in settings:
                return settings["split"]
    return "unknown"


def run(args: argparse.Namespace) -> int:
    from protloc.files import save_figure
    from protloc.training.plots import plot_run_comparison

    histories = read_histories(args.runs, args.metric)
    save_figure(args.out, plot_run_comparison(histories, args.metric))
    print(f"wrote {args.out} ({args.metric} of {len(histories)} runs)")
    return 0
