"""explain_image: the same Grad-CAM maps as `protloc explain`, drawn over the image as the model saw it."""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from protloc.service.explanations import explain_image, preview_images


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture(scope="module")
def predictor_64(untrained_run):
    """A run at 64 px: at 32 px test_resnet's last feature map is 1 x 1, and every Grad-CAM map is flat."""
    import protloc

    return protloc.load(untrained_run(image_size=64, spread=30), precision="fp32")


def test_overlays_are_protloc_explains_maps(predictor_64, image_paths):
    from protloc.reports.explain import explain_image as explain_file
    from protloc.inference.explanations import model_view
    from protloc.map_figures import heatmap_colours, overlay_map

    predictor = predictor_64
    image = np.asarray(Image.open(image_paths[0]).convert("RGB"))
    classes = ["Golgi apparatus", "Nuclear bodies"]
    overlays = explain_image(predictor, image, classes)
    assert list(overlays) == classes

    # What `protloc explain` computes from the file, drawn as it draws it.
    explanation, figure = explain_file(predictor, "x", str(image_paths[0]), [3, 1])
    plt.close(figure)
    seen = model_view(predictor.prepare(str(image_paths[0]))[None], predictor.config)
    for name, cam in zip(classes, explanation.cams):
        overlay, heatmap = overlays[name]
        np.testing.assert_array_equal(decoded(overlay), (overlay_map(seen, cam) * 255 + 0.5).astype(np.uint8))
        np.testing.assert_array_equal(decoded(heatmap), (heatmap_colours(cam) * 255 + 0.5).astype(np.uint8))
    assert not np.array_equal(decoded(overlays["Golgi apparatus"][0]), decoded(overlays["Nuclear bodies"][0]))
    assert explain_image(predictor, image, []) == {}


def test_an_onnx_predictor_explains_with_the_runs_torch_model(predictor, run_dir, tmp_path):
    import protloc
    from protloc.inference.onnx_export import export_onnx

    export_onnx(predictor.model, predictor.config, tmp_path / "model.onnx")
    onnx_predictor = protloc.load(run_dir, engine="onnx", onnx=tmp_path / "model.onnx")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert explain_image(onnx_predictor, image, ["Cytosol"]) == explain_image(predictor, image, ["Cytosol"])


def test_previews_show_the_composite_and_the_green_channel_at_most_512_px():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)
    composite, green = (decoded(png) for png in preview_images(small))
    np.testing.assert_array_equal(composite, small[:, :, :3])  # the ER stain is left out, as in reports
    np.testing.assert_array_equal(green, small[:, :, 1])
    composite, green = (decoded(png) for png in preview_images(np.zeros((1000, 2000, 1), dtype=np.uint8)))
    assert composite.shape == (256, 512, 3) and green.shape == (256, 512)
