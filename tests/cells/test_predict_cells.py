"""protloc predict --cells: one row per cell, from the user's masks or from segmentation; bad masks refused."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from protloc.cells.masks import write_mask
from protloc.cells.predict import cell_evidence, isolate_cells, predict_cells, protein_signal, to_model_size
from protloc.cli import main
from protloc.inference.predictor import load_predictor
from protloc.labels import HPA10_NAMES


@pytest.fixture(scope="module")
def run_dir(untrained_run, tmp_path_factory):
    return untrained_run(tmp_path_factory.mktemp("cells-run") / "run", image_size=32, spread=30.0)


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--workers", "0", "--precision", "fp32", "--engine", "torch"])


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_one_row_per_cell_of_the_masks(run_dir, cell_data, tmp_path):
    out = tmp_path / "cells.csv"
    assert _predict(run_dir, cell_data / "test", "--cells", "--masks", cell_data / "cells", "--out", out) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["Image", "Cell", "Label"]
    for path in (cell_data / "test").glob("*.png"):
        count = int(np.asarray(Image.open(cell_data / "cells" / path.name)).max())
        assert [int(r["Cell"]) for r in rows if r["Image"] == path.stem] == list(range(1, count + 1))
    assert all(0 <= int(c) < 10 for r in rows for c in r["Label"].split())


def test_scores_are_the_image_probability_times_the_cell_evidence(run_dir, cell_data, tmp_path):
    out = tmp_path / "cells.csv"
    assert _predict(run_dir, cell_data / "test", "--cells", "--masks", cell_data / "cells", "--probabilities",
                    "--out", out) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["Image", "Cell", *HPA10_NAMES, "centroid_y", "centroid_x", "area", "touches_border"]
    predictor = load_predictor(run_dir, device="cpu", precision="fp32")
    path = sorted((cell_data / "test").glob("*.png"))[0]
    image = predictor.read(str(path))
    mask = np.asarray(Image.open(cell_data / "cells" / path.name)).astype(np.int32)
    prediction = predict_cells(predictor, image, mask, path.stem)
    cells = prediction.cells
    alone = predictor.predict_proba(isolate_cells(*to_model_size(image, mask, 32), cells))
    assert np.allclose(prediction.own_probabilities, alone, atol=1e-5)
    # Isolated at the model's size, each cell looks to the model as it does isolated at full size, then resized.
    assert np.allclose(alone, predictor.predict_proba(isolate_cells(image, mask, cells)), atol=0.02)
    whole = predictor.predict_proba([image])[0]
    evidence = cell_evidence(protein_signal(image, mask, cells), alone)
    assert np.allclose(prediction.probabilities, whole * evidence, atol=1e-5)
    image_labels = predictor.decide(whole[None])[0]
    assert np.array_equal(prediction.predicted, image_labels & (evidence >= 1))
    mine = [r for r in rows if r["Image"] == path.stem]
    assert np.allclose([[float(r[name]) for name in HPA10_NAMES] for r in mine], prediction.probabilities, atol=2e-6)


def test_evidence_is_relative_to_the_image_best_cell_and_full_from_its_level():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :, 1] = 10  # background green
    mask = np.zeros((4, 6), dtype=np.int32)
    mask[:2, :2], mask[:2, 2:4], mask[:2, 4:] = 1, 2, 3
    image[:2, :2, 1], image[:2, 2:4, 1], image[:2, 4:, 1] = 110, 40, 12
    assert np.allclose(protein_signal(image, mask, [1, 2, 3]), [1.0, 0.3, 0.02])
    own = np.array([[0.8, 0.1], [0.2, 0.4], [0.8, 0.05]])
    # class 0: own relative 1, 0.25, 1 -> 1, 0.83, 1; class 1: 0.25, 1, 0.125 -> 0.83, 1, 0.42
    expected = np.array([[1.0, 0.25 / 0.3], [0.25 / 0.3, 1.0], [0.02 / 0.3, 0.02 / 0.3 * 0.125 / 0.3]])
    assert np.allclose(cell_evidence(np.array([1.0, 0.3, 0.02]), own), expected)


def test_isolating_a_cell_darkens_every_other_pixel():
    image = np.full((4, 4, 3), 7, dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2], mask[2:, :2] = 1, 2
    first, second = isolate_cells(image, mask, [1, 2])
    assert (first[:2] == 7).all() and (first[2:] == 0).all()
    assert (second[2:, :2] == 7).all() and second.sum() == 7 * 3 * 4


def test_without_masks_the_cells_are_found(run_dir, cell_data, tmp_path):
    out = tmp_path / "cells.csv"
    assert _predict(run_dir, cell_data / "test", "--cells", "--out", out) == 0
    assert main(["segment", str(cell_data / "test"), "--out", str(tmp_path / "seg")]) == 0
    assert len(_rows(out)) == len(_rows(tmp_path / "seg" / "cells.csv"))


@pytest.mark.parametrize("case, expected", [
    ("size", "a 100x90 mask for a 256x256 image"),
    ("empty", "no cells in the mask"),
    ("missing", "no mask for image"),
])
def test_bad_masks_exit_2_naming_the_file(run_dir, cell_data, tmp_path, capsys, case, expected):
    masks = tmp_path / "masks"
    shutil.copytree(cell_data / "cells", masks)
    victim = sorted((cell_data / "test").glob("*.png"))[0]
    if case == "size":
        write_mask(masks / victim.name, np.ones((90, 100)))
    elif case == "empty":
        write_mask(masks / victim.name, np.zeros((256, 256)))
    else:
        (masks / victim.name).unlink()
    out = tmp_path / "cells.csv"
    assert _predict(run_dir, cell_data / "test", "--cells", "--masks", masks, "--out", out) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert str(masks / victim.stem) in errors[0] and expected in errors[0]
    assert not out.exists()


def test_an_image_without_nuclei_exits_2_and_masks_need_cells(run_dir, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(blank)
    assert _predict(run_dir, blank, "--cells", "--out", tmp_path / "c.csv") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert len(errors) == 1 and errors[0].startswith(f"protloc: error: {blank}: ") and "no nuclei" in errors[0]
    assert _predict(run_dir, blank, "--masks", tmp_path, "--out", tmp_path / "c.csv") == 2
    assert "add --cells" in capsys.readouterr().err
