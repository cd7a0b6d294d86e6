"""`protloc check` and every command that reads data: one short line per problem, exit 2, no traceback."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protloc.cli import main


def make_z2g(root: Path, labels: dict[str, str], size: int = 16, test_ids=("100",)) -> Path:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for name in labels:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "train" / f"{name}.png")
    for name in test_ids:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "test" / f"{name}.png")
    (root / "train.csv").write_text("Image,Label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    (root / "submission.csv").write_text("Image,Label\n" + "".join(f"{k},0\n" for k in test_ids))
    return root


def run_check(path: Path, capsys) -> tuple[int, str, str]:
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_short_error(err: str) -> None:
    assert "Traceback" not in err
    messages = [line for line in err.strip().splitlines() if line.strip() and "%|" not in line]  # progress bars share stderr
    assert messages and all(line.startswith("protloc: error: ") for line in messages)


def test_clean_dataset_passes(tmp_path, capsys):
    code, out, _ = run_check(make_z2g(tmp_path, {"1": "4", "2": "0 6"}), capsys)
    assert code == 0 and "OK" in out and "2 labelled images and 1 test images" in out


def test_generated_demo_data_passes(demo_data, capsys):
    assert run_check(demo_data, capsys)[0] == 0


def test_truncated_png(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4", "2": "5"}, size=64)
    png = root / "train" / "2.png"
    png.write_bytes(png.read_bytes()[:200])
    code, _, err = run_check(root, capsys)
    assert code == 2 and f"{png}: not a readable image" in err and "line 3 (Image 2)" in err
    assert_short_error(err)


def test_out_of_range_label(tmp_path, capsys):
    code, _, err = run_check(make_z2g(tmp_path, {"1": "4", "2": "12"}), capsys)
    assert code == 2 and "train.csv line 3 (Image 2): label 12 is outside 0..9" in err
    assert_short_error(err)


def test_missing_image(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4", "2": "3"})
    (root / "train" / "1.png").unlink()
    code, _, err = run_check(root, capsys)
    assert code == 2 and f"{root / 'train' / '1.png'}: file not found" in err
    assert_short_error(err)


def test_empty_csv(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4"})
    (root / "train.csv").write_text("")
    code, _, err = run_check(root, capsys)
    assert code == 2 and "train.csv: the file is empty (expected a header Image,Label" in err
    assert_short_error(err)


def test_header_without_rows(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4"})
    (root / "train.csv").write_text("Image,Label\n")
    code, _, err = run_check(root, capsys)
    assert code == 2 and "header but no rows" in err


def test_wrong_columns(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4"})
    (root / "train.csv").write_text("Image,Labels\n1,4\n")
    code, _, err = run_check(root, capsys)
    assert code == 2 and "wrong columns Image,Labels" in err and "missing Label" in err
    assert_short_error(err)


def test_malformed_csv(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4"})
    (root / "train.csv").write_text('Image,Label\n1,"4\n2,5,7,8\n')
    code, _, err = run_check(root, capsys)
    assert code == 2 and "not a valid CSV file" in err
    assert_short_error(err)


def test_duplicate_id(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4", "2": "0"})
    (root / "train.csv").write_text("Image,Label\n1,4\n2,0\n1,6\n")
    code, _, err = run_check(root, capsys)
    assert code == 2 and "train.csv line 4: duplicate Image '1', first on line 2" in err
    assert_short_error(err)


def test_unexpected_shape(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4", "2": "0", "3": "1"})
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "train" / "3.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "train" / "2.png")
    code, _, err = run_check(root, capsys)
    assert code == 2
    assert "3.png: unexpected size 20x20 (expected 16x16" in err
    assert "2.png: 1 channels (expected 3 in the z2g layout)" in err


def test_all_problems_are_reported_at_once(tmp_path, capsys):
    root = make_z2g(tmp_path, {"1": "4", "2": "11", "3": "0"})
    (root / "train" / "3.png").unlink()
    (root / "test" / "100.png").write_bytes(b"not a png")
    code, _, err = run_check(root, capsys)
    assert code == 2
    assert "label 11" in err and "3.png: file not found" in err and "100.png: not a readable image" in err
    assert "3 problem(s) found" in err


def test_missing_dataset_folder(tmp_path, capsys):
    code, _, err = run_check(tmp_path / "nowhere", capsys)
    assert code == 2 and "no such file or folder" in err


@pytest.mark.parametrize("bad", ["label", "columns"])
def test_convert_reads_through_the_same_validation(tmp_path, capsys, bad):
    root = tmp_path / "src"
    root.mkdir()
    (root / "train.csv").write_text("Id,Target\nabc,28\n" if bad == "label" else "Id,Targets\nabc,1\n")
    code = main(["convert", "hpa2018-to-hpa10", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and ("label 28 is outside 0..27" in err if bad == "label" else "wrong columns" in err)
    assert not (tmp_path / "out").exists()


def test_incomplete_stain_sets_are_listed_twenty_at_most(tmp_path, capsys):
    folder = tmp_path / "stains"
    folder.mkdir()
    plane = np.zeros((8, 8), np.uint8)
    for number in range(25):  # 25 Ids without blue, and one complete
        for stain in ("red", "green"):
            Image.fromarray(plane).save(folder / f"id{number:02d}_{stain}.png")
    for stain in ("red", "green", "blue"):
        Image.fromarray(plane).save(folder / f"whole_{stain}.png")
    code, _, err = run_check(folder, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("protloc: ")]  # not the progress bars
    assert len(lines) == 22 and lines[-2] == "protloc: error: ... and 5 more"
    assert lines[0] == (f"protloc: error: {folder}: Id id00 has no blue stain file; a 3-channel run reads red, green, blue, "
                        "one file each: id00_red, id00_green, id00_blue (.png, .tif or .jpg)")
    assert lines[-1].endswith("25 problem(s) found in " + str(folder))


def test_missing_stain_of_the_hpa2018_layout_names_id_and_stain(assemble_hpa2018, tmp_path, capsys):
    ids = assemble_hpa2018(tmp_path)
    (tmp_path / "train" / f"{ids[1]}_green.png").unlink()
    code, _, err = run_check(tmp_path, capsys)
    assert code == 2
    assert (f"{ids[1]}_green.png: file not found (Id {ids[1]} has no green stain file; a 3-channel run reads red, "
            f"green, blue) [{tmp_path / 'train.csv'} line 3 (Id {ids[1]})]") in err


def test_images_with_fewer_channels_than_asked_for(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "set.csv").write_text("path,labels\ngray.png,4\n")
    code, _, err = run_check(tmp_path / "set.csv", capsys)
    assert code == 2 and f"{tmp_path / 'gray.png'}: 1 channel (grayscale), but the run reads 3 (red, green, blue)" in err
    assert main(["check", str(tmp_path / "set.csv"), "--channels", "1"]) == 0


def test_unlabelled_data_is_said_to_be_unlabelled_with_what_was_checked(demo_data, tmp_path, capsys):
    assert main(["check", str(demo_data / "test")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {demo_data / 'test'} (folder layout) — 16 unlabelled images, each readable with the 3 "
                          "channels asked for; no labels to check")
    assert "labelled images" not in out.replace("unlabelled images", "")
    plate = tmp_path / "plate"
    for well in ("A01", "B02"):
        (plate / well).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plate / well / "field.png")
    assert main(["check", str(plate), "--recursive"]) == 0
    assert "2 unlabelled images" in capsys.readouterr().out


def test_a_microscope_file_is_checked_by_its_channel_names(tmp_path, capsys):
    import tifffile

    folder = tmp_path / "ome"
    folder.mkdir()
    for name, channels in (("good", ["DAPI", "GFP", "Tubulin"]), ("odd", ["DAPI", "Brightfield", "GFP", "Tubulin"])):
        tifffile.imwrite(folder / f"{name}.ome.tif", np.zeros((len(channels), 8, 8), np.uint16), ome=True,
                         photometric="minisblack", metadata={"axes": "CYX", "Channel": {"Name": channels}})
    assert main(["check", str(folder)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert errors[0] == (f"protloc: error: {folder / 'odd.ome.tif'}: channel 'Brightfield' is not a stain protloc knows "
                         "by name: add --stain-map 'Brightfield=STAIN' (STAIN one of red, green, blue, yellow, or none "
                         "to leave it out)")
    assert not any("good.ome.tif" in line for line in errors)
    assert main(["check", str(folder), "--stain-map", "Brightfield=none"]) == 0
