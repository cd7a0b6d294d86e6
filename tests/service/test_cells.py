"""POST /predict with cells=true: per-cell answers with outlines, equal to `protloc predict --cells`."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from skimage.segmentation import find_boundaries

from protloc.cli import main
from protloc.labels import HPA10
from tests.service.conftest import png_bytes

NAMES = list(HPA10.names)


def test_cells_come_with_labels_probabilities_and_outlines_as_predict_gives_them(client, run_dir, cell_data,
                                                                                  tmp_path):
    paths = sorted((cell_data / "test").glob("*.png"))
    response = client.post("/predict", params={"cells": "true"},
                           files=[("files", (p.name, p.read_bytes(), "image/png")) for p in paths])
    assert response.status_code == 200, response.text
    out = tmp_path / "cells.csv"
    assert main(["predict", str(run_dir), *map(str, paths), "--cells", "--probabilities", "--out", str(out),
                 "--device", "cpu", "--precision", "fp32", "--workers", "0", "--engine", "torch"]) == 0
    expected = pd.read_csv(out, dtype={"Image": str})
    assert main(["segment", *map(str, paths), "--out", str(tmp_path / "seg")]) == 0
    for path, image in zip(paths, response.json()["images"]):
        assert image["size"] == [256, 256]
        mine = expected[expected["Image"] == path.stem]
        assert [cell["cell"] for cell in image["cells"]] == mine["Cell"].tolist()
        got = np.array([[cell["probabilities"][name] for name in NAMES] for cell in image["cells"]])
        assert np.allclose(got, mine[NAMES].to_numpy(), atol=1e-5)
        mask = np.asarray(Image.open(tmp_path / "seg" / path.name))
        edges = find_boundaries(mask, mode="inner")
        for cell in image["cells"]:
            points = np.array(cell["outline"])
            assert len(points) >= 4 and (points[0] == points[-1]).all()
            xs, ys = np.clip(np.round(points[:, 0]).astype(int), 0, 255), np.clip(np.round(points[:, 1]).astype(int), 0, 255)
            # Each point on the cell's boundary, or on the image's edge where a cell is cut by it.
            near = [edges[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any() or min(x, y) == 0 or max(x, y) == 255
                    for x, y in zip(xs, ys)]
            assert np.mean(near) > 0.9
            assert cell["area"] == int((mask == cell["cell"]).sum())


def test_an_image_without_nuclei_is_a_422_naming_it(client):
    blank = png_bytes(np.zeros((64, 64, 3), dtype=np.uint8))
    response = client.post("/predict", data={"cells": "true"}, files=[("files", ("blank.png", blank, "image/png"))])
    assert response.status_code == 422
    assert response.json()["detail"].startswith("blank.png: ") and "no nuclei" in response.json()["detail"]
    plain = client.post("/predict", files=[("files", ("blank.png", blank, "image/png"))])
    assert plain.status_code == 200 and plain.json()["images"][0]["cells"] is None  # cells only when asked for
