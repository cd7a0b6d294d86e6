"""`protloc evaluate`: the numbers in metrics.json follow from the per-image predictions it writes."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from protloc.cli import main
from protloc.inference.thresholds import apply_thresholds
from protloc.labels import HPA10_NAMES, LabelSet
from protloc.metrics import multilabel_scores

# Per-class thresholds that differ from 0.5, so "at thresholds" and "at 0.5" are two real evaluations.
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.45, 0.55, 0.35, 0.65, 0.5, 0.52]


def multi_hot(column: pd.Series, classes: int) -> np.ndarray:
    matrix = np.zeros((len(column), classes), dtype=bool)
    for row, text in enumerate(column.fillna("").astype(str)):
        matrix[row, [int(token) for token in text.split()]] = True
    return matrix


@pytest.fixture(scope="module")
def evaluated(untrained_run, demo_data, tmp_path_factory):
    run_dir = untrained_run(image_size=64, thresholds=THRESHOLDS)
    out = tmp_path_factory.mktemp("evaluation")
    assert main(["evaluate", str(run_dir), str(demo_data), "--out", str(out), "--batch-size", "40", "--workers", "0"]) == 0
    return out


def test_metrics_follow_from_the_predictions_csv(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    predictions = pd.read_csv(evaluated / "predictions.csv", dtype={"id": str, "labels": str, "predicted": str})
    classes = len(HPA10_NAMES)
    targets = multi_hot(predictions["labels"], classes)
    predicted = multi_hot(predictions["predicted"], classes)
    assert metrics["images"] == len(predictions)
    assert metrics["at_thresholds"] == multilabel_scores(targets, predicted)
    probabilities = predictions[[f"p_{name}" for name in HPA10_NAMES]].to_numpy()
    # The labels written are the run's thresholds applied to the probabilities written.
    np.testing.assert_array_equal(predicted, apply_thresholds(probabilities, THRESHOLDS))
    assert metrics["at_0.5"] == multilabel_scores(targets, apply_thresholds(probabilities, 0.5))
    assert metrics["thresholds"] == THRESHOLDS


def test_per_class_table_has_one_row_per_class_with_label_counts_as_support(demo_data, evaluated):
    frame = pd.read_csv(demo_data / "train.csv", dtype=str)
    counts = Counter(int(token) for text in frame["Label"] for token in text.split())
    per_class = json.loads((evaluated / "metrics.json").read_text())["per_class"]
    assert [row["class"] for row in per_class] == list(HPA10_NAMES)
    assert [row["support"] for row in per_class] == [counts.get(i, 0) for i in range(len(HPA10_NAMES))]
    page = (evaluated / "index.html").read_text()
    assert page.count("<tr><td>Nuclear speckles</td>") == 1


def test_the_page_shows_the_most_confident_mistakes_and_says_what_each_score_means(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    predictions = pd.read_csv(evaluated / "predictions.csv", dtype={"id": str})
    wrong = predictions.loc[~predictions["correct"], "id"].tolist()
    worst = metrics["worst_mistakes"]
    assert 0 < len(worst) <= 12 and {row["id"] for row in worst} <= set(wrong)
    page = (evaluated / "index.html").read_text()
    pictures = re.findall(r'<img src="(mistakes/[^"]+)"', page)
    assert len(pictures) == len(worst)
    from PIL import Image

    for picture in pictures:
        assert max(Image.open(evaluated / picture).size) <= 200
    # The surest mistake first: its wrong decision is the farthest from its threshold.
    first = predictions.set_index("id").loc[worst[0]["id"]]
    named = worst[0]["wrong decisions"].split(";")[0]
    name = next(n for n in HPA10_NAMES if named.startswith(n + " "))
    distance = abs(first[f"p_{name}"] - THRESHOLDS[HPA10_NAMES.index(name)])
    for row in worst[1:]:
        other = predictions.set_index("id").loc[row["id"]]
        wrong_classes = [i for i, n in enumerate(HPA10_NAMES) if n in row["wrong decisions"]]
        assert all(abs(other[f"p_{HPA10_NAMES[i]}"] - THRESHOLDS[i]) <= distance + 1e-6 for i in wrong_classes)
    for term in ("<dt>macro F1</dt>", "<dt>course F-score</dt>", "<dt>threshold</dt>", "course F-score (fscore_course)"):
        assert term in page


def test_page_links_plots_that_exist(evaluated):
    page = (evaluated / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {"f1_per_class.png", "precision_recall.png", "predictions.csv"} <= set(links)
    for link in links:
        assert (evaluated / link).is_file()


def test_most_frequent_mistakes_are_counted_by_label_set():
    from protloc.reports.evaluate import score_predictions

    names = ["a", "b", "c"]
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    probabilities = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.2], [0.1, 0.9, 0.1], [0.2, 0.9, 0.3]])
    evaluation = score_predictions(["1", "2", "3", "4"], targets, probabilities, [0.5, 0.5, 0.5], names)
    mistakes = evaluation.mistakes.to_dict(orient="records")
    assert mistakes == [{"true labels": "a", "predicted labels": "a, b", "images": 2},
                        {"true labels": "c", "predicted labels": "b", "images": 1}]
    assert evaluation.exact_match == 0.25
    assert evaluation.per_class["support"].tolist() == [2, 1, 1]
    assert evaluation.per_class["precision"].tolist() == pytest.approx([1.0, 1 / 4, 0.0])


def test_label_set_mismatch_exits_2(untrained_run, demo_data, tmp_path, capsys):
    run_dir = untrained_run(tmp_path / "run", label_set=LabelSet("custom", ("Nucleus", "Cytoplasm")), weights=False)
    assert main(["evaluate", str(run_dir), str(demo_data), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "are not the run's" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_unlabelled_data_exits_2(untrained_run, demo_data, tmp_path, capsys):
    run_dir = untrained_run(tmp_path / "run", weights=False)
    assert main(["evaluate", str(run_dir), str(demo_data / "test"), "--out", str(tmp_path / "out")]) == 2
    assert "has no labels" in capsys.readouterr().err


def test_missing_run_folder_exits_2(demo_data, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing"), str(demo_data), "--out", str(tmp_path / "out")]) == 2
    assert "no such run folder" in capsys.readouterr().err
