"""The bit depth of a dataset, decided once from a sample of its images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from protloc.data.intensity import describe_depth_reading, detect_bit_depth
from protloc.data.readers import read_dataset, read_images


def test_real_hpa_stain_files_are_eight_bit(assemble_hpa2018, tmp_path):
    assemble_hpa2018(tmp_path)
    assert detect_bit_depth(read_dataset(tmp_path)) == 8


def write_sixteen_bit(folder: Path, brightest: list[int]) -> list[Path]:
    folder.mkdir()
    paths = []
    for number, top in enumerate(brightest):
        image = np.full((8, 8), 100, np.uint16)
        image[0, 0] = top
        paths.append(folder / f"{number}.tif")
        tifffile.imwrite(paths[-1], image)
    return paths


def test_twelve_and_sixteen_bit_data_in_sixteen_bit_files(tmp_path):
    twelve = read_images(write_sixteen_bit(tmp_path / "twelve", [4095, 3000, 200]))
    assert detect_bit_depth(twelve) == 12
    # One image brighter than 4095 anywhere in the sample makes the whole dataset 16-bit.
    sixteen = read_images(write_sixteen_bit(tmp_path / "sixteen", [4095, 3000, 4096]))
    assert detect_bit_depth(sixteen) == 16
    # Only the sample is read: rows spread evenly from the first to the last (0, 4, 8 of 9 for three).
    many = read_images(write_sixteen_bit(tmp_path / "many", [100] * 3 + [60000] + [100] * 5))
    assert detect_bit_depth(many, sample=3) == 12 and detect_bit_depth(many, sample=9) == 16


def test_unreadable_files_are_skipped(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    assert detect_bit_depth(read_images([tmp_path / "a.png", tmp_path / "b.png"])) == 8


def test_sixteen_bit_colour_pngs_count_as_wide(tmp_path):
    import imagecodecs

    folder = tmp_path / "z2g"
    folder.mkdir()
    for number, top in enumerate([4000, 1000]):
        image = np.full((6, 6, 3), 50, np.uint16)
        image[0, 0] = (top, 10, 20)
        (folder / f"{number}.png").write_bytes(imagecodecs.png_encode(image))
    assert detect_bit_depth(read_images(sorted(folder.iterdir()))) == 12


def test_the_depth_note_says_how_other_depths_are_read(tmp_path):
    twelve = read_images(write_sixteen_bit(tmp_path / "twelve", [4000, 3000]))
    sixteen = read_images(write_sixteen_bit(tmp_path / "sixteen", [40000]))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    eight = read_images([tmp_path / "a.png"])
    assert "read by their container's depth, 0..65535" in describe_depth_reading(twelve, 8)
    assert "--bit-depth 10, 12 or 14" in describe_depth_reading(twelve, 8)
    assert describe_depth_reading(twelve, 8, stated=12) is None  # stated, in range: nothing to say
    assert describe_depth_reading(twelve, 12) is None
    assert describe_depth_reading(sixteen, 12) == (
        "pixel values up to 40000 exceed the run's 12-bit scale (full at 4095) and saturate; state the depth the "
        "images were recorded at, e.g. --bit-depth 16")
    assert "exceed the --bit-depth 14 scale" in describe_depth_reading(sixteen, 8, stated=14)
    assert describe_depth_reading(eight, 12) == "8-bit images in a run of 12-bit images are read on their own scale, 0..255 as 0..1"
    assert describe_depth_reading(eight, 8) is None
    assert describe_depth_reading(sixteen, None) is None  # a run from before bit depths: each image its own scale
