"""Masks brought by the user: found by the image's id, checked where read, one line naming the file."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from protloc.cells.masks import cell_geometry, find_mask, read_mask, write_mask
from protloc.errors import DataError


def test_a_mask_is_read_back_as_written_and_found_by_id(tmp_path):
    mask = np.zeros((6, 5), dtype=np.uint16)
    mask[1:3, 1:3], mask[4:, 3:] = 1, 300
    write_mask(tmp_path / "a.png", mask)
    tifffile.imwrite(tmp_path / "b.tif", mask.astype(np.int32))
    assert np.array_equal(read_mask(find_mask(tmp_path, "a"), (6, 5)), mask)
    assert np.array_equal(read_mask(find_mask(tmp_path, "b"), (6, 5)), mask)
    geometry = cell_geometry(mask.astype(np.int32))
    assert geometry["Cell"].tolist() == [1, 300]
    assert geometry["area"].tolist() == [4, 4] and geometry["touches_border"].tolist() == [False, True]
    assert geometry["centroid_y"].tolist() == [1.5, 4.5]


@pytest.mark.parametrize("case, expected", [
    ("size", "a 5x6 mask for a 8x8 image"),
    ("empty", "no cells in the mask"),
    ("fraction", "not whole numbers"),
    ("colour", "a mask of 3 channels"),
    ("negative", "negative cell numbers"),
    ("huge", "cell number 70000; expected numbers up to 65,535"),
    ("missing", "no mask for image m"),
])
def test_bad_masks_are_one_line_naming_the_file(tmp_path, case, expected):
    path = tmp_path / ("m.tif" if case in ("fraction", "negative", "huge") else "m.png")
    if case == "size":
        write_mask(path, np.ones((6, 5)))
    elif case == "empty":
        write_mask(path, np.zeros((8, 8)))
    elif case == "fraction":
        tifffile.imwrite(path, np.full((8, 8), 1.5, dtype=np.float32))
    elif case == "huge":
        tifffile.imwrite(path, np.full((8, 8), 70_000, dtype=np.int32))
    elif case == "negative":
        tifffile.imwrite(path, np.full((8, 8), -1, dtype=np.int16))
    elif case == "colour":
        Image.fromarray(np.ones((8, 8, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DataError) as error:
        read_mask(find_mask(tmp_path, "m"), (8, 8))
    assert len(error.value.lines) == 1 and expected in error.value.lines[0]
    assert str(tmp_path / "m") in error.value.lines[0]
