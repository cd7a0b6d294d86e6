"""protloc predict on real files: Kaggle formats, every kind of image, unreadable images, thresholds and TTA."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from protloc.cli import main
from protloc.inference.thresholds import apply_thresholds
from protloc.labels import HPA10, HPA28
from protloc.runs import load_config

THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.35, 0.45, 0.55, 0.65, 0.5]
SPREAD = 30  # spreads the untrained model's probabilities, so that labels differ between images


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    return untrained_run(thresholds=THRESHOLDS, spread=SPREAD)


def predict(*args) -> int:
    return main(["predict", *map(str, args), "--workers", "0", "--precision", "fp32"])


def test_demo_test_folder_gives_one_kaggle_row_per_image(run_dir, demo_data, tmp_path):
    out = tmp_path / "submission.csv"
    assert predict(run_dir, demo_data, "--out", out) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "Image,Label"
    expected_ids = pd.read_csv(demo_data / "submission.csv", dtype=str)["Image"].tolist()
    assert sorted(expected_ids, key=int) == sorted((p.stem for p in (demo_data / "test").glob("*.png")), key=int)
    ids, labels = zip(*(line.split(",") for line in lines[1:]))
    assert list(ids) == expected_ids
    for label in labels:
        classes = [int(token) for token in label.split(" ")]  # single spaces, no empty tokens
        assert classes and classes == sorted(set(classes)) and all(0 <= c < 10 for c in classes)
    assert len(set(labels)) > 1  # the labels depend on the image


def test_labels_are_the_probabilities_cut_at_the_run_thresholds(run_dir, demo_data, tmp_path):
    assert predict(run_dir, demo_data, "--out", tmp_path / "labels.csv") == 0
    assert predict(run_dir, demo_data, "--probabilities", "--out", tmp_path / "probs.csv") == 0
    probs = pd.read_csv(tmp_path / "probs.csv", dtype={"Image": str})
    assert list(probs.columns) == ["Image", *HPA10.names]
    values = probs[list(HPA10.names)].to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    labels = pd.read_csv(tmp_path / "labels.csv", dtype=str)
    assert labels["Image"].tolist() == probs["Image"].tolist()
    expected = apply_thresholds(values, THRESHOLDS)
    assert labels["Label"].tolist() == [" ".join(map(str, np.flatnonzero(row))) for row in expected]


def test_label_names_spell_out_the_classes_beside_numbers_or_probabilities(run_dir, demo_data, tmp_path):
    assert predict(run_dir, demo_data, "--out", tmp_path / "labels.csv", "--label-names") == 0
    assert predict(run_dir, demo_data, "--out", tmp_path / "probs.csv", "--probabilities", "--label-names") == 0
    labels = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    probs = pd.read_csv(tmp_path / "probs.csv", dtype={"Image": str}, keep_default_na=False)
    assert list(labels.columns) == ["Image", "Label", "Class names"]
    assert list(probs.columns) == ["Image", "Class names", *HPA10.names]
    named = [[HPA10.names[int(i)] for i in numbers.split()] for numbers in labels["Label"]]
    assert [names.split("; ") for names in labels["Class names"]] == named
    assert probs["Class names"].tolist() == labels["Class names"].tolist()


def test_threshold_override_and_allow_empty(run_dir, demo_data, tmp_path):
    out = tmp_path / "high.csv"
    assert predict(run_dir, demo_data, "--out", out, "--threshold", "0.999", "--allow-empty") == 0
    empty = pd.read_csv(out, dtype=str, keep_default_na=False)["Label"]
    assert (empty == "").all()
    assert predict(run_dir, demo_data, "--out", out, "--threshold", "0.999") == 0
    one_each = pd.read_csv(out, dtype=str, keep_default_na=False)["Label"]
    assert [len(label.split()) for label in one_each] == [1] * len(one_each)


def test_images_of_any_kind_size_depth_and_channels(run_dir, demo_data, real_data, tmp_path):
    demo = np.asarray(Image.open(next((demo_data / "test").glob("*.png"))))
    Image.fromarray(demo).resize((80, 56)).save(tmp_path / "photo.jpg", quality=90)
    tifffile.imwrite(tmp_path / "deep.tif", demo[:48, :40].astype(np.uint16) * 257)
    Image.fromarray(np.dstack([demo, demo[:, :, :1]])).save(tmp_path / "four.png")
    real = Path(real_data) / "z2g-sample" / "10034.png"
    inputs = [real, tmp_path / "photo.jpg", tmp_path / "deep.tif", tmp_path / "four.png"]
    out = tmp_path / "out.csv"
    assert predict(run_dir, *inputs, "--out", out) == 0
    written = pd.read_csv(out, dtype=str)
    assert list(written.columns) == ["Image", "Label"]
    assert written["Image"].tolist() == ["10034", "photo", "deep", "four"]
    assert written["Label"].str.fullmatch(r"\d( \d)*").all()


def test_a_grayscale_image_is_refused_unless_gray_as_says_which_stain_it_is(run_dir, real_data, tmp_path, capsys):
    gray = sorted((Path(real_data) / "hpa2018-sample" / "train").glob("*_green.png"))[0]
    shutil.copy(gray, tmp_path / "protein.png")  # a name that is not a stain file's
    out = tmp_path / "out.csv"
    assert predict(run_dir, tmp_path / "protein.png", "--out", out) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protloc: error")]
    assert errors == [f"protloc: error: {tmp_path / 'protein.png'}: 1 channel (grayscale), but the run reads 3 (red, green, "
                     "blue): give one grayscale file per stain, <Id>_red.png, <Id>_green.png, <Id>_blue.png; or, for a "
                     "protein-only image, --gray-as green (gray_as='green')"]
    assert not out.exists()
    assert predict(run_dir, tmp_path / "protein.png", "--gray-as", "green", "--probabilities", "--out", out) == 0
    import protloc

    plane = np.asarray(Image.open(gray))
    expected = protloc.load(run_dir).predict_proba(np.dstack([np.zeros_like(plane), plane, np.zeros_like(plane)]))
    written = pd.read_csv(out)[list(HPA10.names)].to_numpy()
    np.testing.assert_allclose(written, expected, atol=1e-5)


def test_image_folder_input(run_dir, demo_data, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(demo_data / "test", folder)
    out = tmp_path / "out.csv"
    assert predict(run_dir, folder, "--out", out) == 0
    assert pd.read_csv(out, dtype=str)["Image"].tolist() == sorted(p.stem for p in folder.glob("*.png"))


def make_hpa2018_test_folder(real_data, root: Path, ids: list[str]) -> Path:
    """A Kaggle HPA 2018 layout from the real single-stain sample files, four stains per new Id."""
    sample = Path(real_data) / "hpa2018-sample" / "train"
    (root / "test").mkdir(parents=True)
    for number, identifier in enumerate(ids):
        for stain in ("red", "green", "blue", "yellow"):
            source = sorted(sample.glob(f"*_{stain}.png"))[number]
            shutil.copy(source, root / "test" / f"{identifier}_{stain}.png")
    (root / "train.csv").write_text("Id,Target\n")
    (root / "sample_submission.csv").write_text("Id,Predicted\n" + "".join(f"{i},0\n" for i in ids))
    return root


def test_hpa2018_layout_writes_id_predicted(untrained_run, real_data, tmp_path):
    run_dir = untrained_run(tmp_path / "run", in_chans=4, label_set=HPA28, layout="hpa2018", spread=SPREAD)
    ids = ["b-second", "a-first"]
    data = make_hpa2018_test_folder(real_data, tmp_path / "hpa", ids)
    out = tmp_path / "out.csv"
    assert predict(run_dir, data, "--out", out) == 0
    written = pd.read_csv(out, dtype=str)
    assert list(written.columns) == ["Id", "Predicted"] and written["Id"].tolist() == ids
    assert all(0 <= int(c) < 28 for label in written["Predicted"] for c in label.split())
    # Stain files given one by one, grouped by Id, come out in that run's format.
    assert predict(run_dir, *sorted((data / "test").iterdir()), "--out", out) == 0
    again = pd.read_csv(out, dtype=str)
    assert list(again.columns) == ["Id", "Predicted"] and again["Id"].tolist() == sorted(ids)


def test_a_folder_of_stain_sets_gives_one_row_per_id(run_dir, assemble_hpa2018, tmp_path, capsys):
    ids = assemble_hpa2018(tmp_path / "hpa")
    folder = tmp_path / "hpa" / "train"
    out = tmp_path / "out.csv"
    assert predict(run_dir, folder, "--probabilities", "--out", out) == 0
    written = pd.read_csv(out, dtype={"Image": str})
    assert written["Image"].tolist() == ids
    import protloc

    stain_sets = [{stain: folder / f"{identifier}_{stain}.png" for stain in ("red", "green", "blue")} for identifier in ids]
    np.testing.assert_allclose(written[list(HPA10.names)].to_numpy(), protloc.load(run_dir).predict_proba(stain_sets),
                               atol=1e-5)
    (folder / f"{ids[1]}_green.png").unlink()
    assert predict(run_dir, folder, "--out", out, "--on-error", "skip") == 2  # not an unreadable image: a missing one
    error = capsys.readouterr().err
    assert f"Id {ids[1]} has no green stain file; a 3-channel run reads red, green, blue" in error


@pytest.fixture
def folder_with_bad_images(demo_data, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted((demo_data / "test").glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    good = sorted(folder.glob("*.png"))
    truncated = good[1]
    truncated.write_bytes(truncated.read_bytes()[:200])
    (folder / "notes.png").write_text("not an image")
    return folder, {truncated.name, "notes.png"}


def test_on_error_fail_names_every_unreadable_image(run_dir, folder_with_bad_images, tmp_path, capsys):
    folder, bad = folder_with_bad_images
    out = tmp_path / "out.csv"
    assert predict(run_dir, folder, "--out", out) == 2
    error = capsys.readouterr().err
    for name in bad:
        assert name in error
    assert "2 of 4 images could not be read" in error
    assert not out.exists()


def test_on_error_skip_leaves_out_and_names_them(run_dir, folder_with_bad_images, tmp_path, capsys):
    folder, bad = folder_with_bad_images
    out = tmp_path / "out.csv"
    # Small batches and worker processes: rows must still come back in input order.
    assert predict(run_dir, folder, "--out", out, "--on-error", "skip", "--batch-size", "1", "--workers", "2") == 0
    written = pd.read_csv(out, dtype=str)
    assert written["Image"].tolist() == sorted(p.stem for p in folder.glob("*.png") if p.name not in bad)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert sorted(name for name in bad if any(name in line for line in warnings)) == sorted(bad)
    assert "skipped 2 of 4 images" in warnings[-1]


def test_tta_probabilities_are_invariant_under_flips_and_turns(run_dir, demo_data, tmp_path):
    import protloc

    # At the run's image size: resizing uint8 rounds between its two passes, so it commutes with flips but
    # a quarter turn of a larger image moves a pixel by one grey level here and there.
    image = np.asarray(Image.open(next((demo_data / "test").glob("*.png"))).resize((32, 32)))
    views = [image, image[:, ::-1], image[::-1], np.rot90(image)]
    predictor = protloc.load(run_dir, precision="fp32")
    plain = predictor.predict_proba([np.ascontiguousarray(view) for view in views])
    assert np.abs(plain - plain[0]).max() > 1e-3  # without TTA the model does see the difference
    averaged = predictor.predict_proba([np.ascontiguousarray(view) for view in views], tta=True)
    assert averaged.shape == (4, 10) and ((averaged > 0) & (averaged < 1)).all()
    np.testing.assert_allclose(averaged, np.broadcast_to(averaged[0], averaged.shape), atol=1e-5)

    out = tmp_path / "tta.csv"
    assert predict(run_dir, demo_data, "--tta", "--probabilities", "--out", out) == 0
    values = pd.read_csv(out).drop(columns="Image").to_numpy()
    assert values.shape == (16, 10) and ((values >= 0) & (values <= 1)).all()


def test_missing_inputs_and_runs_are_reported(run_dir, tmp_path, capsys):
    assert predict(run_dir, tmp_path / "nope.png", tmp_path / "other.png", "--out", tmp_path / "o.csv") == 2
    assert "nope.png" in capsys.readouterr().err
    assert predict(tmp_path / "no-run", tmp_path / "images", "--out", tmp_path / "o.csv") == 2
    assert "no such run folder" in capsys.readouterr().err
    assert load_config(run_dir).thresholds == THRESHOLDS


def test_missing_test_image_of_a_dataset(run_dir, demo_data, tmp_path, capsys):
    data = tmp_path / "z2g"
    shutil.copytree(demo_data, data, ignore=shutil.ignore_patterns("train*"))
    ids = pd.read_csv(data / "submission.csv", dtype=str)["Image"].tolist()
    (data / "test" / f"{ids[3]}.png").unlink()
    out = tmp_path / "out.csv"
    assert predict(run_dir, data, "--format", "z2g", "--out", out) == 2
    assert f"{ids[3]}.png: file not found" in capsys.readouterr().err and not out.exists()
    assert predict(run_dir, data, "--format", "z2g", "--out", out, "--on-error", "skip") == 0
    assert pd.read_csv(out, dtype=str)["Image"].tolist() == ids[:3] + ids[4:]
    assert f"{ids[3]}.png" in capsys.readouterr().err


def test_sixteen_bit_images_differing_in_one_saturated_pixel_get_the_same_probabilities(untrained_run, demo_data, tmp_path):
    import protloc
    from protloc.runs import save_config

    run_dir = untrained_run(tmp_path / "run", spread=SPREAD)
    demo = np.asarray(Image.open(sorted((demo_data / "test").glob("*.png"))[0]).resize((128, 128)))
    twelve_bit = demo.astype(np.uint16) * 16  # 12-bit camera data in a 16-bit file: 0..4080
    saturated = twelve_bit.copy()
    saturated[0, 0] = 65535  # one hot pixel in a corner
    tifffile.imwrite(tmp_path / "plain.tif", twelve_bit)
    tifffile.imwrite(tmp_path / "hot.tif", saturated)
    images = [tmp_path / "plain.tif", tmp_path / "hot.tif"]

    guessed = protloc.load(run_dir).predict_proba(images)  # a config from before bit depths: guessed per image
    assert np.abs(guessed[0] - guessed[1]).max() > 1e-2

    config = load_config(run_dir)
    config.bit_depth = 12
    save_config(run_dir, config)
    assert '"bit_depth": 12' in (run_dir / "config.json").read_text()
    per_run = protloc.load(run_dir).predict_proba(images)
    assert np.abs(per_run[0] - per_run[1]).max() <= 1e-3
    # On the 12-bit scale, 16 x v of 4095 is about v of 255: close to the 8-bit original (levels round differently).
    np.testing.assert_allclose(per_run[0], protloc.load(run_dir).predict_proba(demo)[0], atol=5e-3)
    out = tmp_path / "out.csv"
    assert predict(run_dir, *images, "--probabilities", "--out", out) == 0
    np.testing.assert_allclose(pd.read_csv(out)[list(HPA10.names)].to_numpy(), per_run, atol=1e-5)


def test_gray_as_wins_over_a_stain_suffix(run_dir, real_data, tmp_path, capsys):
    gray = sorted((Path(real_data) / "hpa2018-sample" / "train").glob("*_green.png"))[0]
    shutil.copy(gray, tmp_path / "cell_green.png")
    out = tmp_path / "out.csv"
    assert predict(run_dir, tmp_path / "cell_green.png", "--out", out) == 2
    assert "to read cell_green.png alone as one grayscale image, --gray-as STAIN" in capsys.readouterr().err
    assert predict(run_dir, tmp_path / "cell_green.png", "--gray-as", "green", "--probabilities", "--out", out) == 0
    shutil.copy(gray, tmp_path / "protein.png")
    assert predict(run_dir, tmp_path / "protein.png", "--gray-as", "green", "--probabilities", "--out", tmp_path / "p.csv") == 0
    written, plain = pd.read_csv(out), pd.read_csv(tmp_path / "p.csv")
    assert written["Image"].tolist() == ["cell"]
    np.testing.assert_allclose(written[list(HPA10.names)].to_numpy(), plain[list(HPA10.names)].to_numpy(), atol=1e-6)


def test_recursive_gives_a_plate_as_one_csv_with_relative_ids(run_dir, demo_data, tmp_path):
    tests = sorted((demo_data / "test").glob("*.png"))
    plate = tmp_path / "plate"
    for number, (well, field) in enumerate((("A01", "1"), ("A01", "2"), ("B02", "1"))):
        (plate / well / field).mkdir(parents=True)
        shutil.copy(tests[number], plate / well / field / "image.png")
    out = tmp_path / "out.csv"
    assert predict(run_dir, plate, "--recursive", "--probabilities", "--out", out) == 0
    written = pd.read_csv(out)
    assert written["Image"].tolist() == ["A01/1/image", "A01/2/image", "B02/1/image"]
    assert predict(run_dir, *tests[:3], "--probabilities", "--out", tmp_path / "flat.csv") == 0
    flat = pd.read_csv(tmp_path / "flat.csv")
    np.testing.assert_allclose(written[list(HPA10.names)].to_numpy(), flat[list(HPA10.names)].to_numpy(), atol=1e-6)
