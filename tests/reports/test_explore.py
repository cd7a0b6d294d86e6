"""`protloc explore`: the numbers it reports are the dataset's, and its page shows files that exist."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from protloc.cli import main
from protloc.labels import HPA10_NAMES


def linked_files(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def explored(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("explore")
    assert main(["explore", str(demo_data), "--out", str(out)]) == 0
    return out


def test_summary_counts_are_the_train_csv_label_counts(demo_data, explored):
    frame = pd.read_csv(demo_data / "train.csv", dtype=str)
    expected = Counter(int(token) for text in frame["Label"] for token in text.split())
    summary = json.loads((explored / "summary.json").read_text())
    assert summary["images"] == len(frame)
    assert [c["images"] for c in summary["classes"]] == [expected.get(i, 0) for i in range(len(HPA10_NAMES))]
    assert [c["name"] for c in summary["classes"]] == list(HPA10_NAMES)
    assert summary["classes"][4]["share"] == pytest.approx(expected.get(4, 0) / len(frame))
    per_image = [len(set(text.split())) for text in frame["Label"]]
    assert summary["mean_labels_per_image"] == pytest.approx(np.mean(per_image))
    assert sum(summary["labels_per_image"].values()) == len(frame)


def test_channel_statistics_match_numpy_on_the_images(demo_data, explored):
    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((demo_data / "train").glob("*.png"))]
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64) / 255
    stats = json.loads((explored / "channel_stats.json").read_text())
    assert stats["images"] == len(images)
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=1e-6)


def test_page_shows_every_plot_and_each_exists(explored):
    shown = linked_files(explored / "index.html")
    assert {"class_frequency.png", "co_occurrence.png", "labels_per_image.png", "samples.png",
            "channel_stats.png"} <= set(shown)
    for name in shown:
        assert (explored / name).stat().st_size > 1000
    assert "Nucleoplasm" in (explored / "index.html").read_text()


def test_unlabelled_folder_skips_label_plots(demo_data, tmp_path):
    out = tmp_path / "out"
    assert main(["explore", str(demo_data / "test"), "--out", str(out), "--max-images", "5"]) == 0
    page = (out / "index.html").read_text()
    assert "no labels" in page
    assert not (out / "class_frequency.png").exists()
    assert set(linked_files(out / "index.html")) == {"samples.png", "channel_stats.png"}
    assert json.loads((out / "channel_stats.json").read_text())["images"] == 5


def test_hpa2018_stains_are_composed(demo_data, tmp_path):
    """Stain files split from RGB images give the statistics of those RGB images."""
    root = tmp_path / "hpa"
    (root / "train").mkdir(parents=True)
    ids = [f"id{i}" for i in range(6)]
    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((demo_data / "train").glob("*.png"))[:6]]
    for identifier, image in zip(ids, images):
        for channel, stain in enumerate(("red", "green", "blue")):
            Image.fromarray(image[:, :, channel]).save(root / "train" / f"{identifier}_{stain}.png")
    pd.DataFrame({"Id": ids, "Target": ["0", "0 25", "23", "5 2", "0", "21"]}).to_csv(root / "train.csv", index=False)
    out = tmp_path / "out"
    assert main(["explore", str(root), "--out", str(out)]) == 0
    stats = json.loads((out / "channel_stats.json").read_text())
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_set"] == "hpa28"
    assert summary["classes"][0]["images"] == 3 and summary["classes"][0]["name"] == "Nucleoplasm"


def test_missing_dataset_exits_2(tmp_path, capsys):
    assert main(["explore", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_sixteen_bit_images_are_read_at_the_datasets_bit_depth(tmp_path):
    import tifffile

    folder = tmp_path / "deep"
    folder.mkdir()
    dim = np.full((8, 8, 3), 1000, np.uint16)  # 12-bit camera data, dim in every image
    bright = dim.copy()
    bright[0, 0] = 4000
    tifffile.imwrite(folder / "a.tif", dim)
    tifffile.imwrite(folder / "b.tif", bright)
    out = tmp_path / "out"
    assert main(["explore", str(folder), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["bit_depth"] == 12
    stats = json.loads((out / "channel_stats.json").read_text())
    # 1000 of 4095 is grey level 62 in both images, not scaled by each image's own maximum.
    expected = (62 * 127 + round(4000 / 4095 * 255)) / 128 / 255
    np.testing.assert_allclose(stats["mean"], [expected] * 3, rtol=1e-9)
    assert "12-bit (detected as training would)" in (out / "index.html").read_text()
    assert main(["explore", str(folder), "--out", str(tmp_path / "given"), "--bit-depth", "16"]) == 0
    given = json.loads((tmp_path / "given" / "channel_stats.json").read_text())
    assert given["mean"][0] == pytest.approx((4 * 127 + 16) / 128 / 255)  # 1000 and 4000 of 65535: levels 4 and 16
