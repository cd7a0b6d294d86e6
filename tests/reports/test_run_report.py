"""`protloc report`: one page whose every link points at a file that exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from protloc.cli import main


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    """An untrained run with the files training leaves beside the model: curves.png and metrics.csv."""
    run_dir = untrained_run(backbone="efficientnet_lite0", image_size=64, thresholds=[0.9] * 10,
                            training={"epochs": 2, "lr": 0.001})
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    figure.savefig(run_dir / "curves.png")
    plt.close(figure)
    (run_dir / "metrics.csv").write_text("epoch,train_loss,val_f1_macro\n0,0.7,0.2\n1,0.5,0.3\n")
    return run_dir


def links(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page.read_text(encoding="utf-8"))


def test_without_data_the_page_says_how_to_add_an_evaluation(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = run_dir / "report.html"
    text = page.read_text()
    assert "--data DATA" in text
    assert "efficientnet_lite0" in text and "val_f1_macro" in text
    assert links(page) == ["curves.png"]  # lr.png is absent from this run, so not linked


def test_with_data_every_link_resolves_from_a_page_elsewhere(run_dir, demo_data, tmp_path):
    page = tmp_path / "pages" / "run.html"
    assert main(["report", str(run_dir), "--data", str(demo_data), "--out", str(page),
                 "--samples", "2", "--workers", "0"]) == 0
    found = links(page)
    for link in found:
        assert (page.parent / link).is_file(), link
    samples = sorted((run_dir / "report" / "samples").glob("*.png"))
    assert len(samples) == 2
    linked = {(page.parent / link).resolve() for link in found}
    assert {path.resolve() for path in samples} <= linked
    assert (run_dir / "curves.png").resolve() in linked
    assert (run_dir / "report" / "precision_recall.png").resolve() in linked
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["images"] == len(list((demo_data / "train").glob("*.png")))


def test_label_set_mismatch_exits_2(run_dir, demo_data, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("Nucleus\nCytoplasm\n")
    generic = tmp_path / "data.csv"
    images = sorted((demo_data / "test").glob("*.png"))[:3]
    generic.write_text("path,labels\n" + "".join(f"{path.resolve()},Nucleus\n" for path in images))
    assert main(["report", str(run_dir), "--data", str(generic), "--labels", str(labels),
                 "--out", str(tmp_path / "r.html")]) == 2
    assert "are not the run's" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_missing_run_folder_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_kfold_folder_shows_its_folds_out_of_fold_and_ensemble_evaluations(trained_kfold, demo_data, tmp_path):
    import shutil

    run_dir = tmp_path / "cv"
    shutil.copytree(trained_kfold, run_dir)
    assert main(["report", str(run_dir), "--data", str(demo_data), "--samples", "1", "--workers", "0"]) == 0
    page = run_dir / "report.html"
    found = links(page)
    for link in found:
        assert (page.parent / link).is_file(), link
    assert {"report/fold_curves.png", "report/out-of-fold/precision_recall.png", "report/precision_recall.png"} <= set(found)
    text = page.read_text(encoding="utf-8")
    assert "Out-of-fold evaluation" in text and "out-of-fold" in text and "2-fold ensemble" in text
    out_of_fold = json.loads((run_dir / "report" / "out-of-fold" / "metrics.json").read_text())
    ensemble = json.loads((run_dir / "ensemble.json").read_text())
    assert out_of_fold["images"] == 96 and out_of_fold["thresholds"] == ensemble["thresholds"]
    assert out_of_fold["at_thresholds"]["f1_macro"] == pytest.approx(ensemble["training"]["val_tuned"]["f1_macro"])
