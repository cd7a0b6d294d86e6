"""Readers on real HPA files (../shared/data) and on small generated folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protloc.data.images import load_image
from protloc.data.readers import detect_layout, read_dataset, read_inputs
from protloc.errors import DataError
from protloc.labels import HPA10, HPA28


def test_reads_the_full_hpa2018_label_file(real_data):
    table = read_dataset(Path(real_data) / "hpa2018-sample")
    assert table.layout == "hpa2018" and table.label_set is HPA28
    assert len(table) == 31072
    first = table.frame.iloc[0]
    assert first["id"] == "00070df0-bbc3-11e8-b2bc-ac1f6b6435d0"
    assert first["labels"] == (0, 16)
    assert [Path(p).name.split("_")[-1] for p in first["source"]] == ["red.png", "green.png", "blue.png"]
    assert table.targets.shape == (31072, 28) and table.targets[0, [0, 16]].tolist() == [1.0, 1.0]


def test_composes_real_hpa2018_stains_into_rgb_and_rgby(assemble_hpa2018, tmp_path):
    ids = assemble_hpa2018(tmp_path)
    table = read_dataset(tmp_path)
    rgb = load_image(table.frame["source"][0], channels=3)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    green = np.asarray(Image.open(tmp_path / "train" / f"{ids[0]}_green.png"))
    assert np.array_equal(rgb[:, :, 1], green)
    table4 = read_dataset(tmp_path, channels=4)
    rgby = load_image(table4.frame["source"][0], channels=4)
    yellow = np.asarray(Image.open(tmp_path / "train" / f"{ids[0]}_yellow.png"))
    assert rgby.shape == (512, 512, 4) and np.array_equal(rgby[:, :, 3], yellow)


def test_reads_real_z2g_image_as_a_folder_and_as_a_file(real_data):
    folder = Path(real_data) / "z2g-sample"
    table = read_dataset(folder)
    assert table.layout == "folder" and list(table.frame["id"]) == ["10034"] and not table.labelled
    image = load_image(table.frame["source"][0])
    assert image.shape == (512, 512, 3)
    single = read_inputs([folder / "10034.png"])
    assert list(single.frame["id"]) == ["10034"]


def test_reads_z2g_layout(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for name in ("5", "7"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / f"{name}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "9.png")
    (tmp_path / "train.csv").write_text("Image,Label\n5,4 6\n7,0\n")
    (tmp_path / "submission.csv").write_text("Image,Label\n9,0\n")
    assert detect_layout(tmp_path) == "z2g"
    table = read_dataset(tmp_path)
    assert table.label_set is HPA10 and list(table.frame["labels"]) == [(4, 6), (0,)]
    test = read_dataset(tmp_path, split="test")
    assert list(test.frame["id"]) == ["9"] and not test.labelled


def test_reads_generic_csv_with_names_numbers_and_any_image_kind(tmp_path):
    import tifffile

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((20, 30), 200, np.uint8)).save(tmp_path / "imgs" / "a.jpg")
    tifffile.imwrite(tmp_path / "imgs" / "b.tif", np.full((3, 16, 16), 4000, np.uint16))  # 12-bit data, channel-first
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(tmp_path / "imgs" / "c.png")
    csv = tmp_path / "set.csv"
    csv.write_text("path,labels\nimgs/a.jpg,Nucleoplasm Cytosol\nimgs/b.tif,3\nimgs/c.png,golgi apparatus\n")
    table = read_dataset(csv)
    assert table.layout == "generic"
    assert list(table.frame["id"]) == ["a", "b", "c"]
    assert list(table.frame["labels"]) == [(4, 6), (3,), (3,)]
    a_source, b_source, c_source = table.frame["source"]
    a, b, c = load_image(a_source, gray_as="green"), load_image(b_source, bit_depth=12), load_image(c_source)
    assert a.shape == (20, 30, 3) and np.all(a[:, :, 1] == 200) and not a[:, :, [0, 2]].any()
    assert load_image(a_source, channels=1).shape == (20, 30, 1)
    assert b.shape == (16, 16, 3) and b.max() == 249  # 4000 / 4095 of full scale
    assert c.shape == (10, 10, 3)


def test_row_problems_are_all_reported_together(tmp_path):
    (tmp_path / "train.csv").write_text("Image,Label\n1,4\n2,12\n1,3\n3,\n")
    with pytest.raises(DataError) as caught:
        read_dataset(tmp_path)
    text = "\n".join(caught.value.lines)
    assert "line 3 (Image 2): label 12 is outside 0..9" in text
    assert "line 4: duplicate Image '1', first on line 2" in text
    assert "line 5 (Image 3): no labels" in text


def test_a_folder_of_stain_files_is_one_image_per_id(assemble_hpa2018, tmp_path):
    ids = assemble_hpa2018(tmp_path)
    folder = tmp_path / "train"
    table = read_dataset(folder)
    assert table.layout == "folder" and list(table.frame["id"]) == ids
    assert [Path(path).name for path in table.frame["source"][0]] == [f"{ids[0]}_{s}.png" for s in ("red", "green", "blue")]
    rgb = load_image(table.frame["source"][0], channels=3)
    assert np.array_equal(rgb[:, :, 2], np.asarray(Image.open(folder / f"{ids[0]}_blue.png")))
    # The same files given one by one group alike; a 4-channel run takes yellow too, a 1-channel run green alone.
    assert list(read_inputs(sorted(folder.iterdir())).frame["id"]) == ids
    assert len(read_dataset(folder, channels=4).frame["source"][1]) == 4
    assert [Path(p).name for p in read_dataset(folder, channels=1).frame["source"][0]] == [f"{ids[0]}_green.png"]


def test_incomplete_stain_sets_and_mixed_folders_are_refused(assemble_hpa2018, tmp_path):
    ids = assemble_hpa2018(tmp_path)
    folder = tmp_path / "train"
    (folder / f"{ids[1]}_blue.png").unlink()
    with pytest.raises(DataError) as caught:
        read_dataset(folder)
    assert caught.value.lines == [f"{folder}: Id {ids[1]} has no blue stain file; a 3-channel run reads red, green, blue, "
                                  f"one file each: {ids[1]}_red, {ids[1]}_green, {ids[1]}_blue (.png, .tif or .jpg)"]
    problems: list[str] = []
    assert list(read_dataset(folder, collect=problems).frame["id"]) == ids[:1] and len(problems) == 1
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "photo.png")
    with pytest.raises(DataError, match=rf"{folder} holds 7 stain files and 1 other images \(photo.png\)"):
        read_dataset(folder)


def test_hpa2018_stains_may_be_tiff(assemble_hpa2018, tmp_path):
    import tifffile

    ids = assemble_hpa2018(tmp_path)
    green = tmp_path / "train" / f"{ids[0]}_green.png"
    tifffile.imwrite(green.with_suffix(".tif"), np.asarray(Image.open(green)))
    green.unlink()
    table = read_dataset(tmp_path)
    assert Path(table.frame["source"][0][1]).name == f"{ids[0]}_green.tif"
    assert np.array_equal(load_image(table.frame["source"][0])[:, :, 1], tifffile.imread(green.with_suffix(".tif")))


def write_stain_set(folder: Path, identifier: str, stains=("red", "green", "blue"), value: int = 50) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stain in stains:
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(folder / f"{identifier}_{stain}.png")


def test_mixed_files_from_several_folders_name_each_folder(tmp_path):
    write_stain_set(tmp_path / "a", "x")
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b" / "photo.png")
    with pytest.raises(DataError) as caught:
        read_inputs(sorted((tmp_path / "a").iterdir()) + [tmp_path / "b" / "photo.png"])
    assert caught.value.lines == [f"stain files (<Id>_<stain>.png) and other images together: {tmp_path / 'a'} holds 3 "
                                  f"stain files; {tmp_path / 'b'} holds 1 other images (photo.png); give stain files "
                                  "and whole images separately"]


def test_one_name_in_two_folders_is_two_images_and_each_problem_names_its_folder(tmp_path):
    write_stain_set(tmp_path / "a", "x")
    write_stain_set(tmp_path / "b", "x", stains=("red", "green"))
    with pytest.raises(DataError) as caught:
        read_inputs(sorted((tmp_path / "a").iterdir()) + sorted((tmp_path / "b").iterdir()))
    assert caught.value.lines == [f"{tmp_path / 'b'}: Id x has no blue stain file; a 3-channel run reads red, green, "
                                  "blue, one file each: x_red, x_green, x_blue (.png, .tif or .jpg)"]
    write_stain_set(tmp_path / "b", "x", stains=("blue",))
    table = read_inputs(sorted((tmp_path / "a").iterdir()) + sorted((tmp_path / "b").iterdir()))
    assert [Path(source[0]).parent.name for source in table.frame["source"]] == ["a", "b"]


def test_gray_as_reads_a_lone_stain_file_as_one_grayscale_image(tmp_path):
    write_stain_set(tmp_path, "cell", stains=("green",))
    with pytest.raises(DataError) as caught:
        read_inputs([tmp_path / "cell_green.png"])
    assert caught.value.lines[0].endswith("; or, to read cell_green.png alone as one grayscale image, --gray-as STAIN")
    table = read_inputs([tmp_path / "cell_green.png"], gray_as="green")
    assert table.frame["id"].tolist() == ["cell"] and table.frame["source"].tolist() == [str(tmp_path / "cell_green.png")]
    assert read_dataset(tmp_path, gray_as="green").frame["source"].tolist() == [str(tmp_path / "cell_green.png")]
    write_stain_set(tmp_path, "pair", stains=("green", "red"))  # two stains of three: still incomplete
    with pytest.raises(DataError, match="Id pair has no blue stain file"):
        read_dataset(tmp_path, gray_as="green")


def test_recursive_reads_a_plates_folders_with_relative_ids(tmp_path):
    for well, field in (("A01", "f1"), ("A01", "f2"), ("B02", "f1")):
        write_stain_set(tmp_path / well / field, "img")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "A01" / "f2" / "overview.png")
    with pytest.raises(DataError, match="no images found .*its subfolders hold some: add --recursive"):
        read_dataset(tmp_path)
    (tmp_path / "A01" / "f2" / "overview.png").unlink()
    table = read_dataset(tmp_path, recursive=True)
    assert table.frame["id"].tolist() == ["A01/f1/img", "A01/f2/img", "B02/f1/img"]
    assert all(len(source) == 3 for source in table.frame["source"])
