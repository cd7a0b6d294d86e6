"""hpa2018 -> hpa10: label arithmetic on the real 2018 label file, images on real stain files."""
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from protloc.cli import main
from protloc.data.convert import hpa2018_to_hpa10_labels
from protloc.data.readers import read_dataset


def test_keeps_27479_of_31072_real_rows(real_data):
    table = read_dataset(Path(real_data) / "hpa2018-sample")
    converted = hpa2018_to_hpa10_labels(table)
    assert len(table) == 31072 and len(converted) == 27479
    shares = read_dataset_shares(converted)
    # Class shares quoted in shared/data/README.md for the 27,479 images.
    expected = [10.8, 9.1, 13.2, 10.3, 46.9, 5.7, 29.9, 13.7, 5.4, 6.8]
    assert np.allclose(shares, expected, atol=0.05)


def read_dataset_shares(frame: pd.DataFrame) -> np.ndarray:
    counts = np.zeros(10)
    for label in frame["Label"]:
        for token in label.split():
            counts[int(token)] += 1
    return np.round(100 * counts / len(frame), 1)


def test_cli_converts_real_stains_to_rgb_z2g_layout(assemble_hpa2018, tmp_path):
    src = tmp_path / "src"
    assemble_hpa2018(src, n_ids=3)  # labels "0 25", "1 25", "2 25"
    out = tmp_path / "out"
    assert main(["convert", "hpa2018-to-hpa10", str(src), "--out", str(out)]) == 0
    converted = read_dataset(out)
    assert converted.layout == "z2g"
    # 0 -> Nucleoplasm (4), 25 -> Cytosol (6); 1 (nuclear membrane) is not among the 10 and is dropped.
    assert list(converted.frame["labels"]) == [(4, 6), (6,), (2, 6)]
    image = np.asarray(Image.open(out / "train" / "test-id-0.png"))
    green = np.asarray(Image.open(src / "train" / "test-id-0_green.png"))
    assert image.shape == (512, 512, 3) and np.array_equal(image[:, :, 1], green)


def test_missing_stains_fail_with_exit_2_and_nothing_written(real_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", "hpa2018-to-hpa10", str(Path(real_data) / "hpa2018-sample"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "stain image not found" in err and "--labels-only" in err
    assert not (out / "train.csv").exists()
