"""Microscope files: OME-TIFF channel names, Z stacks, time series, positions and pixel sizes; CZI through bioio;
channel names mapped to stains."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from protloc.data.images import ImageReadError, load_image, read_image
from protloc.data.microscopy import reduce_axes
from protloc.data.stains import channel_stains, default_stain, parse_stain_map


def write_ome(path, data: np.ndarray, axes: str, names: list[str] | None = None, **metadata) -> None:
    if names is not None:
        metadata["Channel"] = {"Name": names}
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={"axes": axes, **metadata})


def test_an_ome_tiff_is_read_with_its_channel_names_pixel_size_and_one_time_point_z_projected(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4096, (3, 2, 4, 10, 12), dtype=np.uint16)  # T, C, Z, Y, X
    write_ome(tmp_path / "stack.ome.tif", data, "TCZYX", ["GFP", "DAPI"], PhysicalSizeX=162.5,
              PhysicalSizeXUnit="nm", PhysicalSizeY=162.5, PhysicalSizeYUnit="nm")
    stored = read_image(tmp_path / "stack.ome.tif")
    assert stored.channel_names == ("GFP", "DAPI")
    assert stored.pixel_size_um == pytest.approx(0.1625)
    assert stored.reductions == ("3 time points: the first", "4 Z planes: their maximum")
    np.testing.assert_array_equal(stored.pixels, data[0].max(axis=1).transpose(1, 2, 0))


def test_several_positions_read_the_first(tmp_path):
    first, second = np.full((2, 6, 6), 7, np.uint16), np.full((2, 6, 6), 9, np.uint16)
    with tifffile.TiffWriter(tmp_path / "plate.ome.tif", ome=True) as writer:
        for data in (first, second):
            writer.write(data, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    stored = read_image(tmp_path / "plate.ome.tif")
    assert stored.reductions == ("2 positions: the first",)
    assert (stored.pixels == 7).all() and stored.channel_names == ("DAPI", "GFP")


def test_reduce_axes_puts_channels_and_samples_last():
    array = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # Z, Y, X, S
    pixels, reductions = reduce_axes(array, "ZYXS")
    np.testing.assert_array_equal(pixels, array.max(axis=0))
    assert reductions == ["2 Z planes: their maximum"]
    pixels, _ = reduce_axes(np.arange(24).reshape(2, 3, 4), "CYX")
    assert pixels.shape == (3, 4, 2) and pixels[1, 2].tolist() == [6, 18]


def test_channel_names_map_to_stains_by_default_or_by_the_stain_map():
    assert [default_stain(name) for name in ("Hoechst 33342", "alpha-Tubulin", "EGFP", "dapi", "Calreticulin", "Blue")] \
        == ["blue", "red", "green", "blue", "yellow", "blue"]
    assert default_stain("Brightfield") is None and default_stain("Alexa 488") is None
    stains, problems = channel_stains(["Alexa 488", "DAPI", "Brightfield"],
                                      parse_stain_map("alexa 488=green, BRIGHTFIELD=none"))
    assert stains == ["green", "blue", None] and problems == []
    _, problems = channel_stains(["DAPI", "Brightfield"])
    assert problems == ["channel 'Brightfield' is not a stain protloc knows by name: add --stain-map "
                        "'Brightfield=STAIN' (STAIN one of red, green, blue, yellow, or none to leave it out)"]
    _, problems = channel_stains(["DAPI", "Hoechst"])
    assert problems == ["channels 'DAPI' and 'Hoechst' are both the blue stain; name one with --stain-map "
                        "(NAME=none leaves a channel out)"]


@pytest.mark.parametrize("text, says", [
    ("DAPI=blue,Hoechst=blue", "the blue stain given to two channels, DAPI and Hoechst"),
    ("DAPI=blue,dapi=red", "channel 'dapi' named twice"),
    ("DAPI=cyan", "unknown stain 'cyan'"),
    ("DAPI", "'DAPI': expected NAME=STAIN"),
])
def test_a_bad_stain_map_says_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_stain_map(text)


def test_named_channels_fit_the_run_in_any_order(tmp_path):
    red, green, blue = (np.full((4, 4), value, np.uint8) for value in (10, 20, 30))
    write_ome(tmp_path / "a.ome.tif", np.stack([green, blue, red]), "CYX", ["GFP", "DAPI", "Tubulin"])
    assert load_image(tmp_path / "a.ome.tif", 3)[0, 0].tolist() == [10, 20, 30]
    assert load_image(tmp_path / "a.ome.tif", 1)[0, 0].tolist() == [20]
    with pytest.raises(ImageReadError, match="no yellow stain among its channels .* name the channel with --stain-map"):
        load_image(tmp_path / "a.ome.tif", 4)
    assert load_image(tmp_path / "a.ome.tif", 4, gray_as="green")[0, 0].tolist() == [10, 20, 30, 0]
    write_ome(tmp_path / "b.ome.tif", np.stack([green, blue]), "CYX", ["Alexa 488", "DAPI"])
    with pytest.raises(ImageReadError, match="channel 'Alexa 488' is not a stain protloc knows by name"):
        load_image(tmp_path / "b.ome.tif", 1)
    assert load_image(tmp_path / "b.ome.tif", 1, stain_map=parse_stain_map("Alexa 488=green"))[0, 0].tolist() == [20]


def test_a_czi_file_is_read_through_bioio(tmp_path):
    from pylibCZIrw import czi as pyczi

    planes = [np.random.default_rng(c).integers(0, 4096, (12, 16), dtype=np.uint16) for c in range(3)]
    with pyczi.create_czi(str(tmp_path / "cells.czi")) as writer:
        for channel, plane in enumerate(planes):
            writer.write(plane[..., None], plane={"C": channel, "Z": 0, "T": 0})
        writer.write_metadata(channel_names={0: "Tubulin", 1: "GFP", 2: "DAPI"}, scale_x=0.2e-6, scale_y=0.2e-6)
    stored = read_image(tmp_path / "cells.czi")
    assert stored.channel_names == ("Tubulin", "GFP", "DAPI") and stored.pixel_size_um == pytest.approx(0.2)
    np.testing.assert_array_equal(stored.pixels, np.stack(planes, axis=-1))
