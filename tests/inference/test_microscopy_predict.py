"""protloc predict on microscope files: OME-TIFF channels by name (--stain-map), CZI through the microscopy extra,
and one line naming the extra where it is missing."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from protloc.cli import main
from protloc.labels import HPA10

SPREAD = 30


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    return untrained_run(spread=SPREAD)


@pytest.fixture(scope="module")
def stains(demo_data) -> dict[str, np.ndarray]:
    """The red, green and blue planes of a demo image, each a stain's grayscale plane."""
    image = np.asarray(Image.open(sorted((demo_data / "test").glob("*.png"))[0]))
    return {"red": image[:, :, 0], "green": image[:, :, 1], "blue": image[:, :, 2]}


def probabilities(run_dir, *args, out) -> np.ndarray:
    assert main(["predict", str(run_dir), *map(str, args), "--probabilities", "--out", str(out), "--workers", "0",
                 "--precision", "fp32", "--no-cache"]) == 0
    return pd.read_csv(out)[list(HPA10.names)].to_numpy()


def write_ome(path, planes: list[np.ndarray], names: list[str]) -> Path:
    tifffile.imwrite(path, np.stack(planes), ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    return path


def test_an_ome_tiff_with_named_channels_predicts_as_the_stain_set_of_its_pixels(run_dir, stains, tmp_path, capsys):
    folder = tmp_path / "stains"
    folder.mkdir()
    for stain, plane in stains.items():
        Image.fromarray(plane).save(folder / f"cell_{stain}.png")
    expected = probabilities(run_dir, folder, out=tmp_path / "stains.csv")
    stain_map = "DAPI=blue,Tubulin=red,GFP=green"
    for order in (["DAPI", "Tubulin", "GFP"], ["GFP", "DAPI", "Tubulin"]):
        by_name = {"DAPI": stains["blue"], "Tubulin": stains["red"], "GFP": stains["green"]}
        path = write_ome(tmp_path / f"{'-'.join(order)}.ome.tif", [by_name[name] for name in order], order)
        mapped = probabilities(run_dir, path, "--stain-map", stain_map, out=tmp_path / "mapped.csv")
        np.testing.assert_allclose(mapped, expected, atol=1e-4)
        assert pd.read_csv(tmp_path / "mapped.csv", dtype=str)["Image"].tolist() == ["-".join(order)]  # no .ome
        by_default = probabilities(run_dir, path, out=tmp_path / "default.csv")  # these names are known
        np.testing.assert_allclose(by_default, expected, atol=1e-4)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes[-1] == (f"note: {path}: channels GFP -> green, DAPI -> blue, Tubulin -> red (GFP, DAPI, Tubulin by "
                         "name; --stain-map to change); 0.2 µm per pixel")


def test_an_unknown_channel_name_is_one_line_that_says_what_to_add(run_dir, stains, tmp_path, capsys):
    path = write_ome(tmp_path / "x.ome.tif", [stains["red"], stains["green"], stains["blue"]],
                     ["Tubulin", "Alexa 488", "DAPI"])
    assert main(["predict", str(run_dir), str(path), "--out", str(tmp_path / "out.csv"), "--workers", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert errors == [f"protloc: error: {path}: channel 'Alexa 488' is not a stain protloc knows by name: add "
                      "--stain-map 'Alexa 488=STAIN' (STAIN one of red, green, blue, yellow, or none to leave it out)"]
    assert not (tmp_path / "out.csv").exists()
    assert main(["predict", str(run_dir), str(path), "--out", str(tmp_path / "out.csv"), "--workers", "0",
                 "--stain-map", "Alexa 488=green"]) == 0


def test_a_stain_map_naming_a_stain_twice_is_refused_before_anything_runs(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run_dir), str(tmp_path), "--out", str(tmp_path / "out.csv"),
              "--stain-map", "DAPI=blue,Hoechst=blue,GFP=green"])
    assert exit_info.value.code == 2
    assert ("argument --stain-map: the blue stain given to two channels, DAPI and Hoechst"
            in capsys.readouterr().err)


def write_czi(path, planes: list[np.ndarray], names: list[str]) -> Path:
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path)) as writer:
        for channel, plane in enumerate(planes):
            writer.write(plane[..., None], plane={"C": channel, "Z": 0, "T": 0})
        writer.write_metadata(channel_names=dict(enumerate(names)), scale_x=0.2e-6, scale_y=0.2e-6)
    return path


def test_a_czi_file_predicts_with_the_extra_installed(run_dir, stains, tmp_path):
    planes = [stains["blue"].astype(np.uint16) * 16, stains["green"].astype(np.uint16) * 16,
              stains["red"].astype(np.uint16) * 16]  # 12-bit camera data
    czi = write_czi(tmp_path / "cells.czi", planes, ["DAPI", "GFP", "Tubulin"])
    tiff = write_ome(tmp_path / "cells.ome.tif", planes, ["DAPI", "GFP", "Tubulin"])
    from_czi = probabilities(run_dir, czi, "--bit-depth", "12", out=tmp_path / "czi.csv")
    from_tiff = probabilities(run_dir, tiff, "--bit-depth", "12", out=tmp_path / "tiff.csv")
    np.testing.assert_allclose(from_czi, from_tiff, atol=1e-6)
    assert pd.read_csv(tmp_path / "czi.csv", dtype=str)["Image"].tolist() == ["cells"]


def test_without_the_extra_a_czi_file_gets_one_line_naming_it(run_dir, stains, tmp_path, monkeypatch, capsys):
    czi = write_czi(tmp_path / "cells.czi", [stains["blue"], stains["green"], stains["red"]], ["DAPI", "GFP", "Tubulin"])
    # The reader plugin made unimportable, as where it was never installed; protloc itself runs unchanged.
    monkeypatch.setitem(sys.modules, "bioio_czi", None)
    assert main(["predict", str(run_dir), str(czi), "--out", str(tmp_path / "out.csv"), "--workers", "0"]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("protloc: error")]
    assert errors == [f"protloc: error: {czi}: reading CZI files needs protloc's microscopy extra: "
                      "pip install 'protloc[microscopy]'"]
    assert "Traceback" not in stderr and not (tmp_path / "out.csv").exists()
