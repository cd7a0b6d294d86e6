"""protloc segment: classical segmentation against the demo data's true cells, real HPA fields, bad input."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from protloc.cells.metrics import f1_from_counts, segmentation_f1
from protloc.cells.segment import NoNuclei, Stains, segment_cells
from protloc.cli import main


def _stains(path) -> Stains:
    rgb = np.asarray(Image.open(path)).astype(np.float32)
    return Stains(blue=rgb[..., 2], red=rgb[..., 0])


def test_segmentation_finds_the_true_cells(cell_data):
    counts = np.zeros(3, dtype=int)
    for path in sorted((cell_data / "train").glob("*.png")):
        truth = np.asarray(Image.open(cell_data / "cells" / path.name))
        counts += segmentation_f1(truth, segment_cells(_stains(path)), 0.5)
    assert f1_from_counts(*counts) >= 0.85


def test_segment_writes_a_mask_per_image_and_the_cell_table(cell_data, tmp_path, capsys):
    out = tmp_path / "masks"
    assert main(["segment", str(cell_data / "test"), "--out", str(out)]) == 0
    names = sorted(p.name for p in (cell_data / "test").iterdir())
    assert sorted(p.name for p in out.glob("*.png")) == names
    with open(out / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["Image", "Cell", "centroid_y", "centroid_x", "area", "touches_border"]
    for name in names:
        mask = np.asarray(Image.open(out / name))
        assert mask.dtype == np.uint16
        mine = [row for row in rows if row["Image"] == name[:-4]]
        assert [int(row["Cell"]) for row in mine] == list(range(1, mask.max() + 1))
        for row in mine:
            ys, xs = np.nonzero(mask == int(row["Cell"]))
            assert int(row["area"]) == len(ys)
            assert abs(float(row["centroid_y"]) - ys.mean()) < 0.06
            edge = ys.min() == 0 or xs.min() == 0 or ys.max() == 255 or xs.max() == 255
            assert row["touches_border"] == str(edge)


def test_recursive_segments_a_plates_folders_with_relative_ids(cell_data, tmp_path):
    import shutil

    images = sorted((cell_data / "test").glob("*.png"))[:2]
    plate = tmp_path / "plate"
    for image, (well, field) in zip(images, (("A01", "1"), ("B02", "1"))):
        (plate / well / field).mkdir(parents=True)
        shutil.copy(image, plate / well / field / "image.png")
    out = tmp_path / "masks"
    assert main(["segment", str(plate), "--recursive", "--out", str(out)]) == 0
    with open(out / "cells.csv", newline="") as handle:
        ids = sorted({row["Image"] for row in csv.DictReader(handle)})
    assert ids == ["A01/1/image", "B02/1/image"]
    flat = tmp_path / "flat"
    assert main(["segment", *map(str, images), "--out", str(flat)]) == 0
    for image, identifier in zip(images, ids):
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{identifier}.png")),
                                      np.asarray(Image.open(flat / image.name)))


def test_segment_reads_a_real_composite_and_stain_files(real_data, tmp_path):
    composite = os.path.join(real_data, "z2g-sample", "10034.png")
    assert main(["segment", composite, "--out", str(tmp_path / "a")]) == 0
    mask = np.asarray(Image.open(tmp_path / "a" / "10034.png"))
    assert mask.shape == (512, 512) and 15 <= mask.max() <= 60  # a field of a few dozen cells
    # Stain files: the composite split into <Id>_red/_green/_blue.png, one 16-bit; the same cells come out.
    rgb = np.asarray(Image.open(composite).convert("RGB"))
    for index, stain in enumerate(("red", "green", "blue")):
        plane = rgb[..., index].astype(np.uint16) * 257 if stain == "blue" else rgb[..., index]
        Image.fromarray(plane).save(tmp_path / f"f1_{stain}.png")
    assert main(["segment", *(str(tmp_path / f"f1_{s}.png") for s in ("red", "green", "blue")),
                 "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / "f1.png")) > 0, mask > 0)


def test_an_image_with_no_nuclei_is_one_line_naming_it(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(blank)
    assert main(["segment", str(blank), "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert errors[0].startswith(f"protloc: error: {blank}: ") and "no nuclei" in errors[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(NoNuclei):
        segment_cells(Stains(blue=np.zeros((32, 32), dtype=np.float32)))


def test_skip_leaves_out_the_image_without_nuclei(cell_data, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(blank)
    good = sorted((cell_data / "test").glob("*.png"))[0]
    assert main(["segment", str(good), str(blank), "--out", str(tmp_path / "out"), "--on-error", "skip"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [good.name]
    assert f"skipped {blank}" in capsys.readouterr().err


def test_a_grayscale_image_or_a_stain_set_without_blue_is_refused(tmp_path, capsys):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((32, 32), 9, dtype=np.uint8)).save(gray)
    assert main(["segment", str(gray), "--out", str(tmp_path / "a")]) == 2
    assert f"protloc: error: {gray}: a grayscale image" in capsys.readouterr().err
    Image.fromarray(np.full((32, 32), 9, dtype=np.uint8)).save(tmp_path / "x_red.png")
    assert main(["segment", str(tmp_path / "x_red.png"), "--out", str(tmp_path / "b")]) == 2
    assert "Id x has no blue stain file" in capsys.readouterr().err


def test_an_ome_tiff_is_segmented_by_its_channel_names_with_areas_in_square_micrometres(cell_data, tmp_path):
    import tifffile

    path = sorted((cell_data / "test").glob("*.png"))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    # Channels in another order than RGB, named: the blue (nucleus) stain is found by its name.
    tifffile.imwrite(tmp_path / "cells.ome.tif", np.stack([rgb[..., 1], rgb[..., 2], rgb[..., 0]]), ome=True,
                     photometric="minisblack", metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DAPI", "Tubulin"]},
                                                         "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    assert main(["segment", str(tmp_path / "cells.ome.tif"), "--out", str(tmp_path / "ome")]) == 0
    assert main(["segment", str(path), "--out", str(tmp_path / "png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ome" / "cells.png")),
                          np.asarray(Image.open(tmp_path / "png" / path.name)))
    with open(tmp_path / "ome" / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(float(row["area_um2"]) == pytest.approx(int(row["area"]) * 0.0625) for row in rows)
