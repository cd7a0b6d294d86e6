"""Stain files: names, grouping into sets by Id, and finding each stain's file whatever its format."""
from __future__ import annotations

import pytest

from protloc.data.stains import group_stain_files, run_stains, split_stain_name, stain_set_sources


def test_stain_names():
    assert split_stain_name("/data/abc-1_green.png") == ("abc-1", "green")
    assert split_stain_name("x_y_Yellow.TIF") == ("x_y", "yellow")
    for name in ("abc.png", "abc_purple.png", "_red.png", "abc_red.txt", "abc-red.png"):
        assert split_stain_name(name) is None
    assert run_stains(1) == ("green",) and run_stains(3) == ("red", "green", "blue") and len(run_stains(4)) == 4
    with pytest.raises(ValueError):
        run_stains(2)


def test_grouping_keeps_complete_sets_in_channel_order_and_names_what_is_missing():
    paths = ["d/b_blue.png", "d/b_green.png", "d/b_red.png", "d/b_yellow.png",  # complete; yellow left out for RGB
             "d/a_green.png", "d/a_red.tif",  # no blue
             "d/c_red.png", "d/c_red.jpg", "d/c_green.png", "d/c_blue.png"]  # two red files
    ids, sources, problems = group_stain_files(paths, channels=3)
    assert ids == ["b"] and sources == [("d/b_red.png", "d/b_green.png", "d/b_blue.png")]
    assert problems == [
        "d: Id a has no blue stain file; a 3-channel run reads red, green, blue, one file each: "
        "a_red, a_green, a_blue (.png, .tif or .jpg)",
        "d: Id c has 2 red stain files (c_red.png, c_red.jpg); keep one",
    ]
    ids, sources, problems = group_stain_files(paths, channels=4)
    assert ids == ["b"] and len(sources[0]) == 4 and "Id a has no blue or yellow stain file" in problems[0]
    ids, sources, problems = group_stain_files(paths, channels=1)  # only the green stain matters
    assert ids == ["b", "a", "c"] and sources[:2] == [("d/b_green.png",), ("d/a_green.png",)] and not problems


def test_stain_set_sources_find_each_stain_in_any_format(tmp_path):
    for name in ("x_red.tif", "x_green.png", "x_green.jpg", "x_blue.jpeg"):
        (tmp_path / name).write_bytes(b"")
    (sources,) = stain_set_sources(tmp_path, ["x"], channels=3)
    assert [path.rsplit("/", 1)[1] for path in sources] == ["x_red.tif", "x_green.png", "x_blue.jpeg"]
    (missing,) = stain_set_sources(tmp_path, ["y"], channels=1)
    assert missing == (str(tmp_path / "y_green.png"),)  # the name the layout expects, reported as not found
