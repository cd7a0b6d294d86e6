"""--bit-depth: an input's stated depth, and how a run reads images whose depth differs from its own."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from protloc.cli import main
from protloc.labels import HPA10
from protloc.runs import load_config, save_config

SPREAD = 30


@pytest.fixture(scope="module")
def eight_bit_run(untrained_run, tmp_path_factory):
    """A run as training on 8-bit PNGs leaves it: bit_depth 8 in its config."""
    run_dir = untrained_run(tmp_path_factory.mktemp("eight") / "run", spread=SPREAD)
    config = load_config(run_dir)
    config.bit_depth = 8
    save_config(run_dir, config)
    return run_dir


@pytest.fixture(scope="module")
def demo_image(demo_data) -> np.ndarray:
    return np.asarray(Image.open(sorted((demo_data / "test").glob("*.png"))[0]))


def probabilities(run_dir, *args, out) -> np.ndarray:
    assert main(["predict", str(run_dir), *map(str, args), "--probabilities", "--out", str(out), "--workers", "0",
                 "--precision", "fp32", "--no-cache"]) == 0
    return pd.read_csv(out)[list(HPA10.names)].to_numpy()


def test_a_sixteen_bit_png_of_twelve_bit_data_and_a_tiff_of_it_predict_alike(eight_bit_run, demo_image, tmp_path):
    import imagecodecs

    twelve_bit = demo_image.astype(np.uint16) * 16  # 0..4080: 12-bit camera data in 16-bit files
    (tmp_path / "cell.png").write_bytes(imagecodecs.png_encode(twelve_bit))
    tifffile.imwrite(tmp_path / "cell.tif", twelve_bit)
    from_png = probabilities(eight_bit_run, tmp_path / "cell.png", "--bit-depth", "12", out=tmp_path / "png.csv")
    from_tiff = probabilities(eight_bit_run, tmp_path / "cell.tif", "--bit-depth", "12", out=tmp_path / "tif.csv")
    np.testing.assert_allclose(from_png, from_tiff, atol=1e-4)
    # Read as 12-bit, 16 x v of 4095 is about v of 255: the 8-bit original's probabilities, within rounding.
    Image.fromarray(demo_image).save(tmp_path / "original.png")
    original = probabilities(eight_bit_run, tmp_path / "original.png", out=tmp_path / "original.csv")
    np.testing.assert_allclose(from_png, original, atol=5e-3)
    # Read by the container (0..65535), the same pixels are 16 times darker: other probabilities.
    dark = probabilities(eight_bit_run, tmp_path / "cell.png", out=tmp_path / "dark.csv")
    assert np.abs(dark - from_png).max() > 1e-2


def test_a_sixteen_bit_tiff_predicts_with_a_run_of_eight_bit_images(eight_bit_run, demo_image, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "deep.tif", demo_image.astype(np.uint16) * 257)  # the full 16-bit range
    by_default = probabilities(eight_bit_run, tmp_path / "deep.tif", out=tmp_path / "default.csv")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: 16-bit images in a run of 8-bit images are read by their container's depth, 0..65535 "
                     "as 0..1; if they hold camera data of fewer bits, say so with --bit-depth 10, 12 or 14"]
    stated = probabilities(eight_bit_run, tmp_path / "deep.tif", "--bit-depth", "16", out=tmp_path / "stated.csv")
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    Image.fromarray(demo_image).save(tmp_path / "original.png")
    original = probabilities(eight_bit_run, tmp_path / "original.png", out=tmp_path / "original.csv")
    np.testing.assert_allclose(by_default, stated, atol=1e-6)
    np.testing.assert_allclose(by_default, original, atol=1e-4)  # v x 257 of 65535 is exactly v of 255


def test_a_sixteen_bit_grayscale_protein_image_predicts_with_gray_as(eight_bit_run, demo_image, tmp_path):
    protein = demo_image[:, :, 1]
    tifffile.imwrite(tmp_path / "protein.tif", protein.astype(np.uint16) * 257)
    read = probabilities(eight_bit_run, tmp_path / "protein.tif", "--gray-as", "green", out=tmp_path / "gray.csv")
    stated = probabilities(eight_bit_run, tmp_path / "protein.tif", "--gray-as", "green", "--bit-depth", "16",
                           out=tmp_path / "stated.csv")
    composite = np.dstack([np.zeros_like(protein), protein, np.zeros_like(protein)])
    Image.fromarray(composite).save(tmp_path / "composite.png")
    expected = probabilities(eight_bit_run, tmp_path / "composite.png", out=tmp_path / "composite.csv")
    np.testing.assert_allclose(read, expected, atol=1e-4)
    np.testing.assert_allclose(stated, expected, atol=1e-4)


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain", "embed", "tune"])
def test_every_command_that_predicts_takes_bit_depth(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--bit-depth N" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([command, "run", "data", "--out", "x", "--bit-depth", "11"])
    assert exit_info.value.code == 2
    assert "argument --bit-depth: invalid choice: 11 (choose from 8, 10, 12, 14, 16)" in capsys.readouterr().err


def test_the_python_api_takes_the_bit_depth(eight_bit_run, demo_image):
    import protloc
    from protloc.errors import ProtlocError

    twelve_bit = demo_image.astype(np.uint16) * 16
    stated = protloc.load(eight_bit_run, bit_depth=12).predict_proba(twelve_bit)
    np.testing.assert_allclose(stated, protloc.load(eight_bit_run).predict_proba(demo_image), atol=5e-3)
    with pytest.raises(ProtlocError, match="--bit-depth 11: expected one of 8, 10, 12, 14, 16"):
        protloc.load(eight_bit_run, bit_depth=11)
