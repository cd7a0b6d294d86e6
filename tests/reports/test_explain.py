"""`protloc explain`: one Grad-CAM figure per image, maps that vary over the image, and clear errors."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest

from protloc.cli import main
from protloc.labels import HPA10_NAMES

IMAGE_SIZE = 64  # the smallest size at which efficientnet_lite0's last feature map is more than 1x1


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    # High thresholds: with random weights every probability is near 0.5, and one predicted label per image
    # keeps the figures small.
    return untrained_run(backbone="efficientnet_lite0", image_size=IMAGE_SIZE, thresholds=[0.9] * len(HPA10_NAMES))


@pytest.fixture(scope="module")
def predictor(run_dir):
    import protloc

    return protloc.load(run_dir, precision="fp32")


def test_one_figure_per_image_and_an_index(run_dir, demo_data, tmp_path):
    images = sorted((demo_data / "test").glob("*.png"))[:2]
    out = tmp_path / "explain"
    assert main(["explain", str(run_dir), *map(str, images), "--out", str(out)]) == 0
    figures = sorted(path.name for path in out.glob("*.png"))
    assert figures == sorted(f"{path.stem}.png" for path in images)
    page = (out / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == figures


def test_grad_cam_maps_vary_over_the_image(predictor, demo_data):
    from protloc.reports.explain import explain_image

    source = str(sorted((demo_data / "train").glob("*.png"))[0])
    explanation, figure = explain_image(predictor, "x", source, "all")
    plt.close(figure)
    assert explanation.cams.shape == (len(HPA10_NAMES), IMAGE_SIZE, IMAGE_SIZE)
    spread = explanation.cams.max(axis=(1, 2)) - explanation.cams.min(axis=(1, 2))
    assert (spread > 0.5).sum() >= len(HPA10_NAMES) // 2
    # The probabilities are the predictor's, as predict gives them.
    assert explanation.probabilities.shape == (len(HPA10_NAMES),)
    np.testing.assert_allclose(explanation.probabilities, predictor.predict_proba([source])[0], atol=1e-6)
    # Nothing reaches 0.9, so the one label predicted is the most probable class (apply_thresholds).
    assert (explanation.probabilities < 0.9).all()
    assert explanation.predicted == [int(np.argmax(explanation.probabilities))]


def test_named_target_classes_get_one_panel_each(predictor, demo_data):
    from protloc.reports.explain import explain_image, parse_target_classes

    targets = parse_target_classes("nucleoplasm, 0", predictor.config.label_names)
    assert targets == [4, 0]
    source = str(sorted((demo_data / "train").glob("*.png"))[0])
    explanation, figure = explain_image(predictor, "x", source, targets)
    assert explanation.targets == [4, 0] and explanation.cams.shape[0] == 2
    titles = [ax.get_title() for ax in figure.axes]
    plt.close(figure)
    assert any(title.startswith("Nucleoplasm") for title in titles)


def test_unknown_target_class_exits_2(run_dir, demo_data, tmp_path, capsys):
    image = str(sorted((demo_data / "test").glob("*.png"))[0])
    assert main(["explain", str(run_dir), image, "--out", str(tmp_path), "--target-classes", "Ribosome"]) == 2
    assert "'Ribosome' is not a class" in capsys.readouterr().err


def test_missing_run_folder_exits_2(demo_data, tmp_path, capsys):
    image = str(sorted((demo_data / "test").glob("*.png"))[0])
    assert main(["explain", str(tmp_path / "no-run"), image, "--out", str(tmp_path / "out")]) == 2
    assert "no such run folder" in capsys.readouterr().err
