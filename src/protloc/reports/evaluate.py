"""Evaluation of a run on labelled data: per-class precision/recall/F1, the F1 variants, precision-recall
curves with each class's operating point, and the label sets the model gets wrong most often.

`score_predictions` is pure (probabilities in, tables out); `write_evaluation` writes metrics.json,
predictions.csv, the plots and index.html; `evaluate_table` predicts with a run's Predictor and scores, `evaluate_run` both and writes.
"""
from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from protloc.errors import ProtlocError
from protloc.files import save_figure, write_csv, write_json
from protloc.inference.thresholds import apply_thresholds
from protloc.metrics import SCORE_MEANINGS, multilabel_scores
from protloc.plots import subplots
from protloc.reports import html
from protloc.reports.mistakes import name_labels, worst_blocks, worst_mistakes, write_mistake_pictures
from protloc.runs import DEFAULT_THRESHOLD

AT_DEFAULT = f"{DEFAULT_THRESHOLD:g}"  # names the scores at the default threshold: "0.5"
TOP_MISTAKES = 15
F1_VARIANTS = ("f1_macro", "f1_micro", "f1_samples", "fscore_course")
PLOTS = {"f1": "f1_per_class.png", "pr": "precision_recall.png"}
PREDICTIONS_FILE = "predictions.csv"


@dataclass
class Evaluation:
    label_names: list[str]
    thresholds: list[float]
    threshold_source: str
    per_class: pd.DataFrame  # class, threshold, precision, recall, f1, f1 at the default, support, average precision
    scores: dict  # {"thresholds": multilabel_scores, AT_DEFAULT: multilabel_scores}
    mistakes: pd.DataFrame  # true labels, predicted labels, images
    predictions: pd.DataFrame  # one row per image, as predictions.csv
    targets: np.ndarray
    probabilities: np.ndarray
    exact_match: float
    tta: bool = False
    worst: pd.DataFrame | None = None  # the most confident wrong decisions: row, id, true, predicted, wrong, picture
    # How unlike the training images each image is (inference/outliers.py), and the run's threshold; None for
    # a run without outlier scores.
    outlier_scores: np.ndarray | None = None
    outlier_threshold: float | None = None
    trained_on: str = ""  # the run's record of its training data, in one line

    @property
    def outliers(self) -> np.ndarray | None:
        if self.outlier_scores is None or self.outlier_threshold is None:
            return None
        return self.outlier_scores > self.outlier_threshold

    def outlier_summary(self) -> dict | None:
        """The threshold, how many images are above it, and the median score."""
        if self.outliers is None:
            return None
        return {"threshold": self.outlier_threshold, "images_flagged": int(self.outliers.sum()),
                "share_flagged": float(self.outliers.mean()) if len(self.outliers) else 0.0,
                "median_score": float(np.median(self.outlier_scores)) if len(self.outlier_scores) else None}

    def to_json(self) -> dict:
        return {
            "trained_on": self.trained_on,
            "images": int(self.targets.shape[0]),
            "label_names": self.label_names,
            "thresholds": self.thresholds,
            "threshold_source": self.threshold_source,
            "tta": self.tta,
            "at_thresholds": self.scores["thresholds"],
            f"at_{AT_DEFAULT}": self.scores[AT_DEFAULT],
            "exact_match": self.exact_match,
            # JSON has no NaN: a class without positives has no average precision.
            "per_class": self.per_class.astype(object).where(self.per_class.notna(), None).to_dict(orient="records"),
            "most_frequent_mistakes": self.mistakes.to_dict(orient="records"),
            "worst_mistakes": [] if self.worst is None else
            self.worst.drop(columns=["row", "picture"], errors="ignore").to_dict(orient="records"),
            "outliers": self.outlier_summary(),
        }


def with_outliers(evaluation: Evaluation, scores: np.ndarray | None, threshold: float | None, trained_on: str) -> Evaluation:
    """The evaluation with each image's outlier score and flag (also as predictions.csv columns)."""
    evaluation.trained_on = trained_on
    if scores is None or threshold is None:
        return evaluation
    evaluation.outlier_scores, evaluation.outlier_threshold = np.asarray(scores, dtype=np.float64), float(threshold)
    evaluation.predictions["outlier_score"] = evaluation.outlier_scores.round(6)
    evaluation.predictions["outlier"] = evaluation.outliers
    return evaluation


def outlier_blocks(evaluation: Evaluation) -> list[str]:
    summary = evaluation.outlier_summary()
    if summary is None:
        return [html.note("This run has no outlier scores (trained before protloc described its training images).")]
    text = (f"{summary['images_flagged']} of {len(evaluation.outliers)} images ({summary['share_flagged']:.1%}) are "
            f"unlike the images the model was trained on (outlier score above {summary['threshold']:.4g}; median "
            f"score {summary['median_score']:.4g}); their labels deserve doubt.")
    return [html.note(text) if summary["images_flagged"] else html.paragraph(text)]


def format_labels(row: np.ndarray) -> str:
    """Multi-hot row -> space-separated class numbers, the datasets' own label format."""
    return " ".join(str(i) for i in np.flatnonzero(row))


def count_mistakes(targets: np.ndarray, predicted: np.ndarray, names: list[str], top: int = TOP_MISTAKES) -> pd.DataFrame:
    """The most frequent (true set -> predicted set) pairs among images whose predicted set is wrong."""
    wrong = np.flatnonzero((targets.astype(bool) != predicted).any(axis=1))
    pairs = Counter((name_labels(targets[i], names), name_labels(predicted[i], names)) for i in wrong)
    rows = [{"true labels": t, "predicted labels": p, "images": n} for (t, p), n in pairs.most_common(top)]
    return pd.DataFrame(rows, columns=["true labels", "predicted labels", "images"])


def average_precisions(targets: np.ndarray, probabilities: np.ndarray) -> list[float | None]:
    """Per class; None for a class without positives, where average precision is undefined."""
    from sklearn.metrics import average_precision_score

    return [float(average_precision_score(targets[:, c], probabilities[:, c])) if targets[:, c].any() else None
            for c in range(targets.shape[1])]


def score_predictions(ids: list[str], targets: np.ndarray, probabilities: np.ndarray, thresholds,
                      label_names: list[str], threshold_source: str = "config thresholds", tta: bool = False) -> Evaluation:
    """Score (N, C) probabilities against 0/1 targets. Labels are decided as `protloc predict` decides them:
    p >= threshold, and an image that no class reaches gets its closest class (apply_thresholds)."""
    from sklearn.metrics import precision_recall_fscore_support

    targets = np.asarray(targets) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(label_names),)).copy()
    predicted = apply_thresholds(probabilities, thresholds)
    predicted_at_default = apply_thresholds(probabilities, DEFAULT_THRESHOLD)
    precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, zero_division=0)
    scores = {"thresholds": multilabel_scores(targets, predicted), AT_DEFAULT: multilabel_scores(targets, predicted_at_default)}
    per_class = pd.DataFrame({
        "class": label_names, "threshold": thresholds, "precision": precision, "recall": recall, "f1": f1,
        f"f1 at {AT_DEFAULT}": scores[AT_DEFAULT]["f1_per_class"], "support": support.astype(int),
        "average precision": average_precisions(targets, probabilities),
    })
    predictions = pd.DataFrame({
        "id": ids,
        "labels": [format_labels(row) for row in targets],
        "predicted": [format_labels(row) for row in predicted],
        "correct": (targets == predicted).all(axis=1),
    })
    probability_columns = pd.DataFrame(probabilities, columns=[f"p_{name}" for name in label_names])
    return Evaluation(
        label_names=list(label_names), thresholds=thresholds.tolist(), threshold_source=threshold_source,
        per_class=per_class, scores=scores, mistakes=count_mistakes(targets, predicted, list(label_names)),
        predictions=pd.concat([predictions, probability_columns], axis=1), targets=targets,
        probabilities=probabilities, exact_match=float((targets == predicted).all(axis=1).mean()), tta=tta,
        worst=worst_mistakes(list(ids), targets, predicted, probabilities, thresholds, list(label_names)),
    )


# ---------------------------------------------------------------- plots


def plot_f1_per_class(evaluation: Evaluation):
    table = evaluation.per_class
    positions = np.arange(len(table))
    width = 0.4
    figure, axes = subplots(figsize=(max(6.0, 0.6 * len(table) + 2), 4.5))
    tuned = axes.bar(positions - width / 2, table["f1"], width, label=evaluation.threshold_source,
                     color="#4c72b0")
    axes.bar(positions + width / 2, table[f"f1 at {AT_DEFAULT}"], width, label=f"threshold {AT_DEFAULT}", color="#c7c7c7")
    axes.bar_label(tuned, fmt="%.2f", padding=2, fontsize=7)
    axes.set_xticks(positions, [f"{name} (n={n})" for name, n in zip(table["class"], table["support"])],
                    rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    macro = evaluation.scores["thresholds"]["f1_macro"]
    axes.axhline(macro, color="#4c72b0", linestyle="--", linewidth=1)
    axes.set_ylim(0, 1.22)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("F1")
    axes.set_title(f"F1 per class (macro F1 {macro:.3f} dashed)")
    axes.legend(loc="upper center", ncols=2, fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


def plot_precision_recall(evaluation: Evaluation, columns: int = 5):
    from sklearn.metrics import precision_recall_curve

    names = evaluation.label_names
    columns = min(columns, len(names))
    rows = int(np.ceil(len(names) / columns))
    figure, axes = subplots(rows, columns, figsize=(2.9 * columns, 2.9 * rows), squeeze=False,
                                sharex=True, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for c, (ax, name) in enumerate(zip(axes.flat, names)):
        truth, scores = evaluation.targets[:, c], evaluation.probabilities[:, c]
        ax.set_title(textwrap.fill(name, 26), fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        if not truth.any():
            ax.text(0.5, 0.5, "no positive images", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        precision, recall, _ = precision_recall_curve(truth, scores)
        ap = evaluation.per_class["average precision"].iloc[c]
        ax.step(recall, precision, where="post", color="#4c72b0", label=f"AP {ap:.2f}")
        ax.axhline(truth.mean(), color="#999999", linestyle=":", linewidth=1, label=f"chance {truth.mean():.2f}")
        # The point of the curve at the class threshold (p >= t alone; the per-class table also counts labels
        # given to images that no class reached, so its figures can sit slightly off the curve).
        cut = evaluation.thresholds[c]
        chosen = scores >= cut
        ax.plot([chosen[truth].mean()], [truth[chosen].mean() if chosen.any() else 1.0], "o", color="#dd4444",
                markersize=6, label=f"t={cut:.2f}")
        ax.legend(loc="best", fontsize=7, framealpha=0.85)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=8)
    figure.suptitle("Precision-recall per class (red dot: the class threshold's operating point)", fontsize=10)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- files and page


def scores_table(evaluation: Evaluation) -> pd.DataFrame:
    return pd.DataFrame({
        "score": [f"{SCORE_MEANINGS[key].split(':')[0]} ({key})" for key in F1_VARIANTS],
        f"at {evaluation.threshold_source}": [evaluation.scores["thresholds"][k] for k in F1_VARIANTS],
        f"at {AT_DEFAULT}": [evaluation.scores[AT_DEFAULT][k] for k in F1_VARIANTS],
    })


def score_terms() -> list[tuple[str, str]]:
    """The scores' names and meanings, for a definition list under a table of them."""
    terms = [tuple(SCORE_MEANINGS[key].split(": ", 1)) for key in F1_VARIANTS]
    return terms + [("F1", "2 x precision x recall / (precision + recall), from 0 (all wrong) to 1 (all right); "
                           "precision: the share of the labels given that are true; recall: the share of the true "
                           "labels given"),
                    ("threshold", "a class is given to an image when its probability reaches the class's threshold; "
                                  "an image no class reaches gets its most likely class, as protloc predict labels")]


def evaluation_blocks(evaluation: Evaluation, prefix: str = "") -> list[str]:
    """The evaluation as page blocks; `prefix` is the path from the page to the evaluation folder."""
    per_class = evaluation.per_class.astype({"average precision": object})
    per_class["average precision"] = [
        "n/a" if value is None or pd.isna(value) else f"{value:.3f}" for value in evaluation.per_class["average precision"]
    ]
    mistakes = (html.table(evaluation.mistakes) if len(evaluation.mistakes)
                else html.note("Every image got exactly its true label set."))
    return [
        *([html.paragraph(f"The model was {evaluation.trained_on}.")] if evaluation.trained_on else []),
        html.paragraph(f"{evaluation.targets.shape[0]} images; exact label set right for "
                       f"{evaluation.exact_match:.1%}. Labels by {evaluation.threshold_source}"
                       + (", probabilities averaged over 8 flips and turns (TTA)." if evaluation.tta else ".")),
        *outlier_blocks(evaluation),
        html.heading("F1 scores", 3),
        html.table(scores_table(evaluation), float_digits=4),
        html.definitions(score_terms()),
        html.heading("Per class", 3),
        html.table(per_class),
        html.image(prefix + PLOTS["f1"], f"F1 per class at {evaluation.threshold_source} and at {AT_DEFAULT}; "
                   "n = images carrying the class."),
        html.image(prefix + PLOTS["pr"], "Precision-recall curves; AP = average precision."),
        html.heading("Most frequent wrong label sets", 3),
        mistakes,
        *worst_blocks(evaluation, prefix),
        html.paragraph_with_link("Per-image probabilities and labels:", prefix + PREDICTIONS_FILE, PREDICTIONS_FILE),
    ]


def write_evaluation(evaluation: Evaluation, out_dir: str | Path, title: str = "Evaluation", *,
                     sources: list | None = None, read_image=None) -> None:
    """metrics.json, predictions.csv, the plots and index.html in `out_dir`; with the images' `sources` and a
    `read_image`, thumbnails of the worst mistakes too."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sources is not None and read_image is not None and evaluation.worst is not None and len(evaluation.worst):
        write_mistake_pictures(evaluation, out_dir, sources, read_image)
    write_json(out_dir / "metrics.json", evaluation.to_json())
    write_csv(out_dir / PREDICTIONS_FILE, evaluation.predictions)
    save_figure(out_dir / PLOTS["f1"], plot_f1_per_class(evaluation))
    save_figure(out_dir / PLOTS["pr"], plot_precision_recall(evaluation))
    html.write_page(out_dir / "index.html", title, evaluation_blocks(evaluation))


def check_label_names(table, config, data_name: str) -> None:
    if not table.labelled:
        raise ProtlocError(f"{data_name}: has no labels (evaluate needs a labelled dataset, e.g. a train.csv)")
    if list(table.label_set.names) != list(config.label_names):
        raise ProtlocError(
            f"{data_name}: its classes ({table.label_set.name}, {len(table.label_set)} classes) are not the run's "
            f"({config.label_set}, {len(config.label_names)} classes)",
            "pass --labels with the run's label set (see the run's config) or evaluate on data of that set",
        )


def evaluate_table(predictor, table, *, threshold: float | None = None, tta: bool = False, batch_size: int = 32,
                   workers: int = 0, data_name: str = "", show_progress: bool = True, ranks=None) -> Evaluation | None:
    """Predict `table` with the run's Predictor and score it. With `ranks` (protloc.inference.distributed.Ranks)
    every process predicts its share and process 0 scores the whole table; the others return None."""
    from protloc.errors import DataError
    from protloc.data.check import find_missing_files

    config = predictor.config
    data_name = data_name or str(table.root)
    check_label_names(table, config, data_name)
    if threshold is not None and not 0 < threshold < 1:
        raise ProtlocError(f"--threshold {threshold}: expected a probability strictly between 0 and 1")
    missing = find_missing_files(table)  # before the slow part
    if missing:
        raise DataError(*missing, f"{len(missing)} image files named by {data_name} are missing")
    result = predictor.predict_table(table, batch_size=batch_size, workers=workers, tta=tta, show_progress=show_progress,
                                     ranks=ranks)
    if result is None:
        return None
    if result.unreadable:
        raise DataError(*result.unreadable)
    thresholds = config.thresholds if threshold is None else threshold
    source = "config thresholds" if threshold is None else f"threshold {threshold:g}"
    evaluation = score_predictions(list(table.frame["id"].astype(str)), table.targets, result.outputs, thresholds,
                                   list(config.label_names), source, tta)
    return with_outliers(evaluation, result.outlier_scores, predictor.outlier_threshold, config.trained_on)


def evaluate_run(predictor, table, out_dir: str | Path, *, data_name: str = "", **options) -> Evaluation:
    """Predict `table` with the run's Predictor, score it and write the evaluation into `out_dir` (options as
    evaluate_table's, in one process)."""
    data_name = data_name or str(table.root)
    evaluation = evaluate_table(predictor, table, data_name=data_name, **options)
    write_evaluation(evaluation, out_dir, f"Evaluation on {data_name}", sources=list(table.frame["source"]),
                     read_image=predictor.read)
    return evaluation
