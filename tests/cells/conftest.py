"""A small dataset with per-cell truth, made once for the tests of cells/."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cell_data(tmp_path_factory):
    """256 px demo data with --cells: 6 train images (masks, cells.csv) and 2 test images."""
    from protloc.data.synthetic import write_demo_dataset

    root = tmp_path_factory.mktemp("cells")
    write_demo_dataset(root, n_train=6, n_test=2, size=256, seed=21, show_progress=False, workers=1, cells=True)
    return root
