"""One HTML page for a run: its config, training curves, evaluation on a dataset and sample Grad-CAMs.

The evaluation and the sample figures are written into RUN/report/; the page links them (and the run's
training plots) by paths relative to the page, so the run folder can be moved whole.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from protloc.reports import html
from protloc.runs import CURVES_FILE, LR_PLOT_FILE, METRICS_FILE, REPORT_FILE

REPORT_DIR = "report"
SAMPLES_DIR = "samples"
DEFAULT_SAMPLES = 6
METRICS_ROWS_SHOWN = 5


def relative_link(target: Path, page: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def format_setting(value) -> str:
    """A config value as text: floats to 4 significant digits (1e-05, not 0.0000), lists comma-separated."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_setting(item) for item in value)
    return str(value)


def config_table(config) -> pd.DataFrame:
    """Setting/value rows; the per-class thresholds get their own table."""
    rows = [
        ("backbone", config.backbone),
        ("label set", f"{config.label_set} ({config.num_classes} classes)"),
        ("image size", f"{config.image_size} px"),
        ("input channels", config.in_chans),
        ("normalisation mean", config.mean),
        ("normalisation std", config.std),
        ("dropout", config.dropout),
        ("training data layout", config.layout),
    ]
    rows += [(f"training: {key}", value) for key, value in config.training.to_dict().items()]
    return pd.DataFrame({"setting": [key for key, _ in rows], "value": [format_setting(v) for _, v in rows]})


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
                                      "columns left out):"), html.table(shown)]
    if not blocks:
        blocks.append(html.note(f"{run_dir} holds no {CURVES_FILE}, {LR_PLOT_FILE} or {METRICS_FILE} "
                                "(protloc train writes them)."))
    return blocks


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
    from protloc.reports.explain import explain_table, explanation_blocks

    shown = table.subset(range(min(samples, len(table))))
    if not len(shown):
        return [html.note("No samples asked for (--samples 0).")]
    explanations = explain_table(predictor, shown, samples_dir, "predicted", show_progress=show_progress)
    names = list(table.label_set.names)
    true_labels = [", ".join(names[i] for i in labels) for labels in shown.frame["labels"]] if table.labelled else None
    return [html.paragraph(f"The first {len(shown)} images of {data_name}, with a Grad-CAM map per predicted class."),
            *explanation_blocks(explanations, predictor.config, relative_link(links_to or samples_dir, page) + "/",
                               true_labels)]


def build_report(run_dir: str | Path, *, table=None, data_name: str = "", out_file: str | Path | None = None,
                 samples: int = DEFAULT_SAMPLES, tta: bool = False, batch_size: int = 32, workers: int = 0,
                 device: str = "auto", precision: str = "auto", show_progress: bool = True,
                 files_dir: str | Path | None = None) -> Path:
    """Write the run's page (default: REPORT_FILE in the run folder); `table` adds the evaluation and samples.

    Their files are written into `files_dir` (default RUN/report), linked from the page as RUN/report: a caller
    may write them into a temporary folder that then becomes RUN/report (files.atomic_dir)."""
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

    thresholds = pd.DataFrame({"class": config.label_names, "threshold": config.thresholds})
    blocks = [
        html.heading("Configuration"), html.table(config_table(config)),
        html.heading("Class thresholds", 3), html.table(thresholds),
        html.heading("Training"), *training_blocks(run_dir, page, config.label_names),
    ]
    if table is None:
        blocks += [
            html.heading("Evaluation"),
            html.note(f"No evaluation: add a labelled dataset with `protloc report {run_dir} --data DATA` "
                      "(e.g. a validation set in the layout the run was trained on)."),
            html.heading("Sample predictions"), html.note("No sample predictions without --data."),
        ]
    else:
        predictor = load_predictor(run_dir, device=device, precision=precision)
        prediction = dict(tta=tta, batch_size=batch_size, workers=workers, show_progress=show_progress)
        blocks += [html.heading("Evaluation"),
                   *evaluation_section(predictor, table, files_dir, page, data_name, links_to=report_dir,
                                       **prediction),
                   html.heading("Sample predictions"),
                   *samples_section(predictor, table, files_dir / SAMPLES_DIR, page, data_name, samples,
                                    show_progress, links_to=report_dir / SAMPLES_DIR)]
    html.write_page(page, f"Run {run_dir.resolve().name}", blocks)
    return page
