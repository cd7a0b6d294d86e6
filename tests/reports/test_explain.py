"""`protloc explain`: one figure per image, maps fine enough to separate cells, drawn over visible stains,
missed true classes shown, and clear errors."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

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


def test_explain_takes_the_engine_and_batch_options_of_predict(run_dir, demo_data, tmp_path):
    """--engine onnx gives the probabilities (ONNX Runtime, as predict on the CPU); the maps still come from torch."""
    images = sorted((demo_data / "test").glob("*.png"))[:2]
    out = tmp_path / "explain"
    assert main(["explain", str(run_dir), *map(str, images), "--out", str(out), "--engine", "onnx",
                 "--batch-size", "1", "--workers", "0"]) == 0
    assert sorted(path.name for path in out.glob("*.png")) == sorted(f"{path.stem}.png" for path in images)


def test_explain_from_python_gives_the_maps_protloc_explain_draws(predictor, demo_data):
    from protloc.reports.explain import explain_image

    sources = [str(path) for path in sorted((demo_data / "train").glob("*.png"))[:1]]
    explanations = predictor.explain(sources, classes=["Nucleoplasm", 0])
    assert [e.id for e in explanations] == [Path(source).stem for source in sources]
    assert list(explanations[0].maps) == ["Nucleoplasm", "Mitochondria"]
    expected, figure = explain_image(predictor, "x", sources[0], [4, 0])
    plt.close(figure)
    np.testing.assert_array_equal(explanations[0].cams, expected.cams)
    np.testing.assert_allclose(explanations[0].probabilities, predictor.predict_proba(sources[0])[0], atol=1e-6)
    figure = explanations[0].figure()
    assert [axes.get_title().split("\n")[0] for axes in figure.axes[2:4]] == ["Nucleoplasm", "Mitochondria"]
    predicted = predictor.explain(sources[0])[0]  # the predicted classes by default
    assert predicted.targets == predicted.predicted
    with pytest.raises(Exception, match="did you mean 'Mitochondria'"):
        predictor.explain(sources[0], classes="Mitocondria")


def test_grad_cam_maps_vary_over_the_image(predictor, demo_data):
    from protloc.reports.explain import explain_image

    source = str(sorted((demo_data / "train").glob("*.png"))[0])
    explanation, figure = explain_image(predictor, "x", source, "all")
    plt.close(figure)
    assert explanation.cams.shape == (len(HPA10_NAMES), IMAGE_SIZE, IMAGE_SIZE)
    # One scale for the image's maps, each weighed by its class's probability: no map is stronger than the model's
    # belief in its class, and the maps keep the proportions of their raw magnitudes (a scale per map would
    # stretch every map to the full 0..1).
    from protloc.inference.cams import compute_cams

    peaks = explanation.cams.max(axis=(1, 2))
    assert (peaks <= explanation.probabilities + 1e-6).all() and peaks.min() < 0.5 * peaks.max()
    raw = compute_cams(predictor.model, predictor.prepare(source)[None], list(range(len(HPA10_NAMES))))
    unweighed = explanation.cams / explanation.probabilities[:, None, None]
    np.testing.assert_allclose(unweighed, raw / raw.max(), atol=1e-4)
    strongest = explanation.cams[int(np.argmax(peaks))]
    assert strongest.max() - strongest.min() > 0.5 * strongest.max()
    # The probabilities are the predictor's, as predict gives them.
    assert explanation.probabilities.shape == (len(HPA10_NAMES),)
    np.testing.assert_allclose(explanation.probabilities, predictor.predict_proba([source])[0], atol=1e-6)
    # Nothing reaches 0.9, so the one label predicted is the most probable class (apply_thresholds).
    assert (explanation.probabilities < 0.9).all()
    assert explanation.predicted == [int(np.argmax(explanation.probabilities))]


def test_named_target_classes_get_one_panel_each(predictor, demo_data):
    from protloc.inference.explanations import parse_target_classes
    from protloc.reports.explain import explain_image

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
    err = capsys.readouterr().err
    assert "'Ribosome' is not a class" in err and "did you mean" not in err and "0 Mitochondria, 1 Nuclear bodies" in err


def test_a_misspelt_target_class_gets_a_suggestion_and_the_list(run_dir, demo_data, tmp_path, capsys):
    image = str(sorted((demo_data / "test").glob("*.png"))[0])
    assert main(["explain", str(run_dir), image, "--out", str(tmp_path), "--target-classes", "Mitocondria"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "'Mitocondria' is not a class of this run; did you mean 'Mitochondria'?" in err
    assert "9 Nuclear speckles" in err


def test_missing_run_folder_exits_2(demo_data, tmp_path, capsys):
    image = str(sorted((demo_data / "test").glob("*.png"))[0])
    assert main(["explain", str(tmp_path / "no-run"), image, "--out", str(tmp_path / "out")]) == 2
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_maps_have_at_least_16x16_cells_at_the_demo_size(backbone):
    from protloc.models.classifier import build_model
    from protloc.inference.cams import compute_cams
    from protloc.inference.explanations import cam_grid

    model = build_model(backbone, len(HPA10_NAMES), pretrained=False).eval()
    rows, columns = cam_grid(model, 128)
    assert rows >= 16 and columns >= 16
    maps = compute_cams(model, torch.randn(1, 3, 128, 128), [0, 4])
    assert maps.shape == (2, 128, 128)


def test_hottest_area_holds_its_share_of_the_map():
    from protloc.map_figures import hottest_area

    cam = np.random.default_rng(0).random((64, 64)) ** 4
    area = hottest_area(cam, 0.5)
    assert cam[area].sum() >= 0.5 * cam.sum()
    assert cam[area].min() >= cam[~area].max()  # the hottest pixels, not any that add up
    assert area.mean() < 0.3  # a peaky map: half its mass in under a third of the pixels
    assert not hottest_area(np.zeros((8, 8)), 0.5).any()


def test_overlay_leaves_every_pixel_outside_the_hot_area_as_the_input():
    from protloc.data.synthetic import render_image
    from protloc.map_figures import MAP_MASS_SHARES, OUTLINE_COLOURS, hottest_area, overlay_map

    image = render_image((0, 4), 128, np.random.default_rng(0)).astype(np.float32) / 255
    yy, xx = np.mgrid[:128, :128]
    cam = np.exp(-((yy - 40) ** 2 + (xx - 80) ** 2) / (2 * 15.0 ** 2))  # one hot spot
    shown = overlay_map(image, cam)
    hot = hottest_area(cam, MAP_MASS_SHARES[0])
    assert 0.02 < hot.mean() < 0.5
    np.testing.assert_array_equal(shown[~hot], image[~hot])
    assert (shown[hot] != image[hot]).any(axis=-1).all()
    core = hottest_area(cam, MAP_MASS_SHARES[1])
    assert np.isclose(shown[core], OUTLINE_COLOURS[1]).all(axis=-1).any()  # the core is outlined in white
    # The same map with a tenth of the evidence (on its image's common scale) draws about a tenth as strongly.
    faint_change, full_change = np.abs(overlay_map(image, cam * 0.1) - image).max(), np.abs(shown - image).max()
    assert 0 < faint_change < 0.2 * full_change


def test_the_figure_draws_the_maps_over_the_input_and_shows_the_protein_alone(predictor, demo_data):
    from protloc.map_figures import MAP_MASS_SHARES, hottest_area
    from protloc.reports.explain import explain_image

    source = str(sorted((demo_data / "train").glob("*.png"))[0])
    explanation, figure = explain_image(predictor, "x", source, [4])
    pictures = [axes.images[0].get_array() for axes in figure.axes if axes.images]
    plt.close(figure)
    rgb, protein, overlay = (np.asarray(picture) for picture in pictures)
    assert protein.ndim == 2 and np.allclose(protein, rgb[:, :, 1])
    cold = ~hottest_area(explanation.cams[0], MAP_MASS_SHARES[0])
    assert cold.mean() > 0.3
    np.testing.assert_array_equal(overlay[cold], rgb[cold])
    assert not np.array_equal(overlay, rgb)


def test_a_missed_true_class_gets_a_panel(predictor, demo_data):
    from protloc.reports.explain import explain_image

    source = str(sorted((demo_data / "train").glob("*.png"))[0])
    explanation, figure = explain_image(predictor, "x", source, "predicted", true=[0, 9])
    titles = [axes.get_title() for axes in figure.axes]
    plt.close(figure)
    (predicted,) = explanation.predicted  # thresholds of 0.9: the most probable class only
    missed = [c for c in (0, 9) if c != predicted]
    assert explanation.missed == missed
    assert explanation.targets == [predicted, *missed] and explanation.cams.shape[0] == len(explanation.targets)
    for c in missed:
        assert any(title.startswith(HPA10_NAMES[c]) and "MISSED" in title for title in titles)


def test_explain_on_a_labelled_dataset_lists_missed_classes(run_dir, demo_data, tmp_path):
    images = sorted((demo_data / "test").glob("*.png"))[:2]
    data = tmp_path / "data.csv"
    data.write_text("path,labels\n" + "".join(f"{path.resolve()},Mitochondria|Nuclear speckles\n" for path in images))
    out = tmp_path / "explain"
    assert main(["explain", str(run_dir), str(data), "--format", "generic", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "<th>missed</th>" in page
    assert page.count("missed Mitochondria") + page.count("missed Nuclear speckles") >= 2


def test_a_microscope_file_stating_its_pixel_size_gets_a_scale_bar(predictor, demo_data, tmp_path):
    import tifffile
    from PIL import Image

    from protloc.reports.explain import explain_image

    rgb = np.asarray(Image.open(sorted((demo_data / "train").glob("*.png"))[0]))  # 64 x 64
    planes = np.stack([rgb[:, :, 2], rgb[:, :, 0], rgb[:, :, 1]])
    tifffile.imwrite(tmp_path / "cell.ome.tif", planes, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Tubulin", "GFP"]}, "PhysicalSizeX": 0.5})
    tifffile.imwrite(tmp_path / "plain.ome.tif", planes, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Tubulin", "GFP"]}})
    texts = {}
    for name in ("cell", "plain"):
        _, figure = explain_image(predictor, name, str(tmp_path / f"{name}.ome.tif"), [4])
        texts[name] = [text.get_text() for axes in figure.axes for artist in axes.artists
                       for text in artist.findobj(lambda item: hasattr(item, "get_text"))]
        plt.close(figure)
    assert "5 µm" in texts["cell"]  # 64 px of 0.5 µm: 32 µm wide, a quarter of it rounded down to 5
    assert texts["plain"] == []
