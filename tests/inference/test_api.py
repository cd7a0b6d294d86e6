"""protloc.load: the Python door gives the same answers for paths, arrays and PIL images, and the CLI's."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import protloc
from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.labels import HPA10


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    # Spread probabilities, so that labels differ between images.
    return untrained_run(thresholds=[0.4] * 10, spread=30)


@pytest.fixture(scope="module")
def predictor(run_dir):
    return protloc.load(run_dir, precision="fp32")


@pytest.fixture(scope="module")
def image_paths(demo_data):
    return sorted((demo_data / "test").glob("*.png"), key=lambda p: int(p.stem))[:3]


def test_loaded_predictor_carries_the_run_config(predictor):
    assert predictor.label_names == list(HPA10.names)
    assert predictor.config.image_size == 32 and predictor.config.thresholds == [0.4] * 10


def test_paths_arrays_and_pil_images_give_the_same_probabilities(predictor, image_paths):
    from_paths = predictor.predict_proba(image_paths)
    assert from_paths.shape == (3, 10) and from_paths.dtype == np.float32
    assert np.abs(from_paths[0] - from_paths[1]).max() > 1e-3  # different images, different answers
    arrays = [np.asarray(Image.open(path)) for path in image_paths]
    variants = {
        "str paths": [str(path) for path in image_paths],
        "uint8 arrays": arrays,
        "uint16 arrays": [array.astype(np.uint16) * 257 for array in arrays],
        "float arrays": [array.astype(np.float32) / 255 for array in arrays],
        "PIL images": [Image.open(path) for path in image_paths],
        "stacked array": np.stack(arrays),
    }
    for name, images in variants.items():
        np.testing.assert_allclose(predictor.predict_proba(images), from_paths, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(predictor.predict_proba(arrays[2]), from_paths[2:], atol=1e-6)  # one image alone


def test_four_channel_images_use_rgb_and_grayscale_needs_gray_as(predictor, run_dir, image_paths, tmp_path):
    array = np.asarray(Image.open(image_paths[0]))
    gray, rgba = array[:, :, 1], np.dstack([array, array[:, :, :1]])
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(predictor.predict_proba([rgba, tmp_path / "rgba.png"]),
                               predictor.predict_proba([array, array]), atol=1e-6)  # alpha dropped
    for image in (gray, tmp_path / "gray.png"):
        with pytest.raises(ProtlocError, match=r"1 channel \(grayscale\), but the run reads 3 \(red, green, blue\)"):
            predictor.predict_proba([image])
    protein_only = protloc.load(run_dir, gray_as="green")
    expected = predictor.predict_proba([np.dstack([np.zeros_like(gray), gray, np.zeros_like(gray)])])
    np.testing.assert_allclose(protein_only.predict_proba([gray, tmp_path / "gray.png"]),
                               np.repeat(expected, 2, axis=0), atol=1e-6)
    with pytest.raises(ProtlocError, match="--gray-as yellow: the run reads red, green, blue"):
        protloc.load(run_dir, gray_as="yellow")


def test_stain_sets_as_dicts_tuples_files_bytes_and_arrays(predictor, image_paths, tmp_path):
    array = np.asarray(Image.open(image_paths[0]))
    planes = {stain: np.ascontiguousarray(array[:, :, channel]) for channel, stain in enumerate(("red", "green", "blue"))}
    paths = {}
    for stain, plane in planes.items():
        paths[stain] = tmp_path / f"cell-7_{stain}.png"
        Image.fromarray(plane).save(paths[stain])
    expected = predictor.predict_proba([array])
    yellow = np.zeros_like(planes["red"])
    variants = {
        "dict of paths": {"blue": paths["blue"], "red": str(paths["red"]), "green": paths["green"]},
        "dict of arrays, yellow left out": {**planes, "yellow": yellow},
        "dict of bytes": {stain: path.read_bytes() for stain, path in paths.items()},
        "tuple of paths": (paths["red"], paths["green"], paths["blue"]),
        "tuple of arrays": (planes["red"], planes["green"], planes["blue"]),
    }
    for name, image in variants.items():
        np.testing.assert_allclose(predictor.predict_proba(image), expected, atol=1e-6, err_msg=name)
    result = predictor.predict([variants["dict of paths"], variants["tuple of arrays"], image_paths[0].read_bytes()])
    assert result.ids == ["cell-7", "1", "2"]
    np.testing.assert_allclose(result.probabilities, np.repeat(expected, 3, axis=0), atol=1e-6)
    with pytest.raises(ProtlocError, match=r"stain set with red, green: no blue stain \(a 3-channel run reads red, green, blue\)"):
        predictor.predict_proba({"red": paths["red"], "green": paths["green"]})
    with pytest.raises(ProtlocError, match="a stain set of 4 images for a 3-channel run: expected red, green, blue, in that order"):
        predictor.predict_proba((*planes.values(), yellow))
    with pytest.raises(ProtlocError, match="unknown stain 'purple'"):
        predictor.predict_proba({**planes, "purple": yellow})


def test_predict_labels_match_the_cli(predictor, run_dir, image_paths, tmp_path):
    result = predictor.predict(image_paths)
    assert result.ids == [path.stem for path in image_paths]
    assert result.predicted.shape == (3, 10) and result.predicted.any(axis=1).all()
    assert result.labels == [[HPA10.names[i] for i in indices] for indices in result.class_indices]
    frame = result.to_frame()
    assert list(frame.columns) == ["id", "labels", *HPA10.names] and len(frame) == 3
    assert main(["predict", str(run_dir), *map(str, image_paths), "--out", str(tmp_path / "o.csv"),
                 "--workers", "0", "--precision", "fp32"]) == 0
    cli = pd.read_csv(tmp_path / "o.csv", dtype=str)
    assert cli["Label"].tolist() == [" ".join(map(str, indices)) for indices in result.class_indices]

    strict = predictor.predict(image_paths, threshold=0.999, allow_empty=True)
    assert not strict.predicted.any() and strict.labels == [[], [], []]


def test_bad_images_raise_protloc_errors(predictor, tmp_path):
    with pytest.raises(ProtlocError, match="expected"):
        predictor.predict_proba([np.zeros((8, 8, 5), dtype=np.uint8)])
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    with pytest.raises(ProtlocError, match="broken.png"):
        predictor.predict_proba([broken])
    with pytest.raises(ProtlocError, match="no such run folder"):
        protloc.load(tmp_path / "missing-run")
