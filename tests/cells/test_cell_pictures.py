"""Cell pictures: explain --cells and the run report draw each cell outlined with its classes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from protloc.cli import main
from protloc.reports.cells import outline_cells


@pytest.fixture(scope="module")
def run_dir(untrained_run, tmp_path_factory):
    return untrained_run(tmp_path_factory.mktemp("cells-pictures-run") / "run", image_size=32, spread=30.0)


def test_outlines_are_white_for_labelled_cells_and_grey_for_the_others():
    image = np.zeros((6, 8, 3), dtype=np.uint8)
    mask = np.zeros((6, 8), dtype=np.int32)
    mask[1:5, 1:4], mask[1:5, 4:7] = 1, 2
    picture = outline_cells(image, mask, [2])
    assert (picture[1, 1] == 140).all() and (picture[1, 5] == 255).all()  # on each cell's boundary
    assert (picture[2, 2] == 0).all() and (picture[0, 0] == 0).all()  # inside a cell and outside every cell


def test_explain_cells_draws_a_cell_picture_per_image(run_dir, cell_data, tmp_path):
    out = tmp_path / "explain"
    assert main(["explain", str(run_dir), str(cell_data / "test"), "--out", str(out), "--cells", "--masks",
                 str(cell_data / "cells"), "--device", "cpu"]) == 0
    page = (out / "index.html").read_text()
    for path in (cell_data / "test").glob("*.png"):
        picture = out / f"{path.stem}_cells.png"
        assert picture.is_file() and f'src="{picture.name}"' in page
        assert Image.open(picture).size[0] > 300


def test_explain_with_a_mask_of_another_size_exits_2(run_dir, cell_data, tmp_path, capsys):
    from protloc.cells.masks import write_mask

    masks = tmp_path / "masks"
    for path in (cell_data / "test").glob("*.png"):
        write_mask(masks / path.name, np.ones((10, 10)))
    assert main(["explain", str(run_dir), str(cell_data / "test"), "--out", str(tmp_path / "e"), "--cells",
                 "--masks", str(masks), "--device", "cpu"]) == 2
    assert "a 10x10 mask for a 256x256 image" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
