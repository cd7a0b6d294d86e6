"""One HTML page for a run that reads like a result: scores, curves and sample maps first, configuration last.

The evaluation and the sample figures are written into RUN/report/; the page links them (and every
other figure of the run folder: curves.png, lr.png, embedding maps...) by paths relative to the page,
so the run folder can be moved whole.
"""
from __future__ import annotations

import os
import re
from html import unescape
from pathlib import Path

import pandas as pd

from protloc.metrics import SCORE_MEANINGS
from protloc.reports import html
from protloc.reports.evaluate import score_terms
from protloc.runs import CHECKPOINT_DIR, CONFIG_FILE, CURVES_FILE, LR_PLOT_FILE, METRICS_FILE, REPORT_FILE

REPORT_DIR = "report"
SAMPLES_DIR = "samples"
DEFAULT_SAMPLES = 6
METRICS_ROWS_SHOWN = 5
VALIDATION_SCORES = ("macro", "micro", "samples")


def relative_link(target: Path, page: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def format_setting(value) -> str:
    """A value as text: floats to 4 significant digits (1e-05, not 0.0000), lists comma-separated, dicts as
    'key: value' pairs, booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_setting(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{SETTING_NAMES.get(key, key)}: {format_setting(item)}" for key, item in value.items())
    return str(value)


# ---------------------------------------------------------------- results


def validation_blocks(config, explain_terms: bool = True) -> list[str]:
    """What training measured on its validation split: scores and per-class F1, with the tuned thresholds; the
    scores' meanings too, unless the page said them already (`explain_terms`)."""
    training = config.training.to_dict()
    tuned, at_half = training.get("val_tuned"), training.get("val_at_0.5")
    if not isinstance(tuned, dict) or not isinstance(at_half, dict):
        return [html.note("config.json holds no validation scores (a run from protloc train has them).")]
    epochs = (training.get("epochs_frozen") or 0) + (training.get("epochs") or 0)
    kept = f"epoch {training['best_epoch']} of {epochs}" if "best_epoch" in training else "the best epoch"
    images = f"{training['n_val']} validation images" if "n_val" in training else "the validation split"
    scores = pd.DataFrame({
        "score": [f"{SCORE_MEANINGS[f'f1_{variant}'].split(':')[0]} (f1_{variant})" for variant in VALIDATION_SCORES],
        "at the tuned thresholds, as predict labels": [tuned.get(f"f1_{variant}") for variant in VALIDATION_SCORES],
        "every threshold at 0.5": [at_half.get(f"f1_{variant}") for variant in VALIDATION_SCORES],
    })
    blocks = [html.paragraph(f"The model is the weights of {kept}, the epoch with the best macro F1 on {images}. Each "
                             "class then got its own threshold, the one with the best F1 on those images; predict, "
                             "evaluate and the service label with these thresholds. The scores below are on the same "
                             "images that chose the epoch and the thresholds, so they flatter the model: an evaluation "
                             "on other labelled images (protloc report RUN --data DATA) is the honest measure."),
              html.table(scores), *([html.definitions(score_terms())] if explain_terms else [])]
    per_class = {"class": config.label_names, "threshold": config.thresholds}
    for column, scores_at in (("F1 at tuned threshold", tuned), ("F1 at 0.5", at_half)):
        if len(scores_at.get("f1_per_class") or []) == config.num_classes:
            per_class[column] = scores_at["f1_per_class"]
    return blocks + [html.heading("Per class (validation)", 3), html.table(pd.DataFrame(per_class))]


def training_blocks(run_dir: Path, page: Path, label_names: list[str]) -> list[str]:
    blocks = []
    for name, caption in ((CURVES_FILE, "Loss and F1 per epoch"), (LR_PLOT_FILE, "Learning rate schedule")):
        if (run_dir / name).is_file():
            blocks.append(html.image(relative_link(run_dir / name, page), caption))
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        try:
            frame = pd.read_csv(metrics)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            frame = None
        if frame is not None and len(frame):
            # Per-class columns would make the table too wide to read; the evaluation has them per class.
            overall = [c for c in frame.columns if not any(name in str(c) for name in label_names)]
            shown = frame[overall].tail(METRICS_ROWS_SHOWN).astype(object)
            shown = shown.apply(lambda column: column.map(format_setting))
            blocks += [html.paragraph(f"Last {len(shown)} of {len(frame)} rows of {METRICS_FILE} (per-class "
                                      "columns left out). train_loss and val_loss: the loss on the training and on the "
                                      "validation images; val_f1_macro and the other val_ scores: the scores above, "
                                      "on the validation images after that epoch; images_per_second: training speed."),
                       html.table(shown)]
    if not blocks:
        blocks.append(html.note(f"{run_dir} holds no {CURVES_FILE}, {LR_PLOT_FILE} or {METRICS_FILE} "
                                "(protloc train writes them)."))
    return blocks


def other_pages(run_dir: Path, page: Path) -> list[Path]:
    """Folders in the run folder that hold a page of their own (an evaluation or explanation written there)."""
    skipped = {(run_dir / REPORT_DIR).resolve(), (run_dir / CHECKPOINT_DIR).resolve()}
    pages = []
    for index in sorted(run_dir.rglob("index.html")):
        folder = index.parent.resolve()
        hidden = any(part.startswith(".") for part in index.relative_to(run_dir).parts)
        if folder != run_dir.resolve() and not hidden and not any(skip == folder or skip in folder.parents for skip in skipped):
            pages.append(index)
    return pages


def other_figures(run_dir: Path, page: Path, linked: list[str]) -> list[str]:
    """Every PNG in the run folder the page does not show yet (embedding maps, a fold's curves...), then links to
    the pages of folders that hold one (their figures stay on their page: one copy of each chart).

    RUN/report/ is left out: the page rewrites what it needs there, and older files in it may be stale.
    """
    shown = {(page.parent / link).resolve() for link in linked}
    pages = other_pages(run_dir, page)
    skipped = {(run_dir / REPORT_DIR).resolve(), (run_dir / CHECKPOINT_DIR).resolve(),
               *(index.parent.resolve() for index in pages)}
    blocks = [html.paragraph_with_link("A page of its own, with its figures:", relative_link(index, page),
                                       index.relative_to(run_dir).as_posix()) for index in pages]
    for path in sorted(run_dir.rglob("*.png")):
        resolved = path.resolve()
        hidden = any(part.startswith(".") for part in path.relative_to(run_dir).parts)  # e.g. files.atomic_dir's staging
        if hidden or resolved in shown or any(folder in resolved.parents for folder in skipped):
            continue
        caption = path.relative_to(run_dir).as_posix()
        if path.stem.endswith("_map"):
            caption += " (map of image features, from protloc embed)"
        blocks.append(html.image(relative_link(path, page), caption))
    return blocks


# ---------------------------------------------------------------- configuration


# The run's settings by group, in reading order; training keys not named anywhere go under "Other".
SETTING_GROUPS = {
    "Model": ("weights", "pretrained"),
    "Data": ("data", "labels", "normalize", "validation_split", "val_fraction", "folds", "n_train", "n_val"),
    "Recipe": ("seed", "epochs_frozen", "epochs", "lr_frozen", "lr", "optimizer", "weight_decay", "grad_clip",
               "grad_clip_mode", "loss", "pos_weight", "frozen_stages_used", "batch_size"),
    "Hardware": ("device", "devices", "num_nodes", "world_size", "precision", "precision_used",
               "images_per_second"),
}
# How the command was run rather than what the model is, results shown above, or what the model's own
# rows (model_settings) already say.
HIDDEN_SETTINGS = {"out", "show_progress", "resume", "stop_after", "workers", "best_epoch", "best_phase",
                   "frozen_stages", "val_tuned", "val_at_0.5", "val_at_0.5_predicted",
                   "backbone", "dropout", "channels", "image_size", "layout", "format", "verbose"}
SETTING_NAMES = {
    "data": "training data", "weights": "initial weights file", "pretrained": "ImageNet weights",
    "labels": "label set given", "channels": "input channels", "image_size": "image size (px)",
    "normalize": "normalisation", "validation_split": "validation split", "val_fraction": "validation share",
    "folds": "folds", "n_train": "training images", "n_val": "validation images",
    "epochs_frozen": "epochs with the backbone frozen", "epochs": "epochs fine-tuning",
    "frozen_stages_used": "backbone stages frozen while fine-tuning",
    "lr_frozen": "peak learning rate, frozen", "lr": "peak learning rate, fine-tuning",
    "weight_decay": "weight decay", "grad_clip": "gradient clipping", "grad_clip_mode": "gradient clipping mode",
    "pos_weight": "positive class weights", "batch_size": "batch size", "num_nodes": "nodes",
    "world_size": "processes", "precision": "precision asked", "precision_used": "precision used",
    "images_per_second": "training images per second", "finetune": "fine-tuning",
}


def model_settings(config) -> list[tuple[str, object]]:
    """What the saved model is, from the config's top level."""
    return [
        ("backbone", config.backbone),
        ("label set", f"{config.label_set} ({config.num_classes} classes)"),
        ("image size (px)", config.image_size),
        ("input channels", config.in_chans),
        ("normalisation mean", config.mean),
        ("normalisation std", config.std),
        ("dropout", config.dropout),
        ("training data layout", config.layout),
        ("outlier threshold", config.outlier_threshold if config.outlier_threshold is not None else "none"),
    ]


def config_groups(config) -> dict[str, pd.DataFrame]:
    """Setting/value tables by group: the model as saved, then the training recipe as run."""
    # None is an option left at its default (no --weights, no --labels): the model's rows already say what it is.
    training = {key: value for key, value in config.training.to_dict().items()
                if key not in HIDDEN_SETTINGS and value is not None}
    named = {key for keys in SETTING_GROUPS.values() for key in keys}
    rows = {"Model": model_settings(config)}
    for group, keys in SETTING_GROUPS.items():
        rows.setdefault(group, [])
        rows[group] += [(SETTING_NAMES.get(key, key), training[key]) for key in keys if key in training]
    rows["Other"] = [(SETTING_NAMES.get(key, key), value) for key, value in training.items() if key not in named]
    return {group: pd.DataFrame({"setting": [name for name, _ in pairs],
                                 "value": [format_setting(value) for _, value in pairs]})
            for group, pairs in rows.items() if pairs}


def config_blocks(config) -> list[str]:
    blocks = [html.paragraph(f"From {CONFIG_FILE}; thresholds are in the per-class tables above.")]
    for group, table in config_groups(config).items():
        blocks += [html.heading(group, 3), html.table(table)]
    return blocks


def run_training_blocks(run_dir: Path, page: Path, config, report_dir: Path) -> list[str]:
    """A run's curves and metrics; for a K-fold folder, its folds' (reports/kfold_report.py)."""
    from protloc.runs import EnsembleConfig

    if not isinstance(config, EnsembleConfig):
        return training_blocks(run_dir, page, config.label_names)
    from protloc.reports.kfold_report import kfold_blocks

    return kfold_blocks(run_dir, config, report_dir, relative_link(report_dir, page) + "/")


def evaluation_section(predictor, table, report_dir: Path, page: Path, data_name: str, *, links_to: Path | None = None,
                       **prediction) -> list[str]:
    """Written into `report_dir`, linked as `links_to` (default: the same folder)."""
    if not table.labelled:
        return [html.note(f"{data_name} has no labels, so there is no evaluation; samples are shown below.")]
    from protloc.reports.evaluate import evaluate_run, evaluation_blocks

    evaluation = evaluate_run(predictor, table, report_dir, data_name=data_name, **prediction)
    prefix = relative_link(links_to or report_dir, page) + "/"
    return [html.paragraph_with_link(f"On {data_name}; the evaluation on its own page:", prefix + "index.html",
                                     "evaluation"), *evaluation_blocks(evaluation, prefix)]


def samples_section(predictor, table, samples_dir: Path, page: Path, data_name: str, samples: int,
                    show_progress: bool, links_to: Path | None = None) -> list[str]:
    from protloc.reports.cells import cell_blocks, write_cell_figures
    from protloc.reports.explain import describe_maps, explain_table
    from protloc.reports.explain_page import explanation_blocks

    shown = table.subset(range(min(samples, len(table))))
    if not len(shown):
        return [html.note("No samples asked for (--samples 0).")]
    explanations = explain_table(predictor, shown, samples_dir, "predicted", show_progress=show_progress)
    prefix = relative_link(links_to or samples_dir, page) + "/"
    # Their cells, as protloc segment finds them: an image where none are found is said, not drawn.
    cells, problems = write_cell_figures(predictor, shown, samples_dir, [e.file_name for e in explanations])
    return [html.paragraph(f"The first {len(shown)} images of {data_name}, with the map of each predicted class"
                           + (" and of each true class the model missed." if table.labelled else ".")),
            html.paragraph(describe_maps(predictor.model, predictor.config)),
            *explanation_blocks(explanations, predictor.config, prefix),
            *cell_blocks(cells, prefix), *(html.note(f"No cells drawn for {line}") for line in problems)]


def linked_files(blocks: list[str]) -> list[str]:
    return [unescape(link) for link in re.findall(r'(?:src|href)="([^"]+)"', "".join(blocks))]


def build_report(run_dir: str | Path, *, table=None, data_name: str = "", out_file: str | Path | None = None,
                 samples: int = DEFAULT_SAMPLES, tta: bool = False, batch_size: int = 32, workers: int = 0,
                 device: str = "auto", precision: str = "auto", show_progress: bool = True,
                 files_dir: str | Path | None = None) -> Path:
    """Write the run's page (default: REPORT_FILE in the run folder); `table` adds the evaluation and samples.

    Results come first (scores, per-class tables, curves, sample maps, every other figure of the run
    folder), the configuration last. The evaluation's and samples' files are written into `files_dir`
    (default RUN/report), linked from the page as RUN/report: a caller may write them into a temporary
    folder that then becomes RUN/report (files.atomic_dir).
    """
    from protloc.inference.predictor import load_predictor
    from protloc.reports.evaluate import check_label_names
    from protloc.runs import load_config

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    page = Path(out_file) if out_file else run_dir / REPORT_FILE
    report_dir = run_dir / REPORT_DIR
    files_dir = Path(files_dir) if files_dir is not None else report_dir
    if table is not None and table.labelled:
        check_label_names(table, config, data_name)  # before the slow part

    # First what the model learned from: a model trained on generated cells says so before any score.
    opening = [html.paragraph(f"The model was {config.trained_on}.")]
    if config.training_data is not None and config.training_data.kind == "demo":
        opening.append(html.note("It has only seen generated demo cells: its labels of real microscope images are "
                                 "not to be trusted (their outlier scores say how unlike they are)."))
    if table is None:
        blocks = [*opening, html.heading("Evaluation"),
                  html.note(f"No evaluation: add a labelled dataset with `protloc report {run_dir} --data DATA` "
                            "(e.g. a validation set in the layout the run was trained on).")]
        samples_blocks = [html.note("No sample predictions without --data.")]
    else:
        predictor = load_predictor(run_dir, device=device, precision=precision)
        prediction = dict(tta=tta, batch_size=batch_size, workers=workers, show_progress=show_progress)
        blocks = [*opening, html.heading(f"Evaluation on {data_name}"),
                  *evaluation_section(predictor, table, files_dir, page, data_name, links_to=report_dir,
                                      **prediction)]
        samples_blocks = samples_section(predictor, table, files_dir / SAMPLES_DIR, page, data_name, samples,
                                         show_progress, links_to=report_dir / SAMPLES_DIR)
    blocks += [html.heading("Validation during training"), *validation_blocks(config, explain_terms=table is None or not table.labelled),
               html.heading("Training curves"), *run_training_blocks(run_dir, page, config, report_dir),
               html.heading("Sample explanations"), *samples_blocks]
    others = other_figures(run_dir, page, linked_files(blocks))
    if others:
        blocks += [html.heading("Other figures and pages in the run folder"), *others]
    blocks += [html.heading("Configuration"), *config_blocks(config)]
    html.write_page(page, f"Run {run_dir.resolve().name}", blocks)
    return page
