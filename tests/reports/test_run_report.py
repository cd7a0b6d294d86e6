"""`protloc report`: one page whose every link points at a file that exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from protloc.cli import main


# What protloc train records, internals and nested scores included.
TRAINING_RECORD = {
    "data": "demo", "out": "runs/demo", "backbone": "test_resnet", "weights": None, "pretrained": True,
    "image_size": 64, "split": "mask", "val_fraction": 0.1, "seed": 0, "epochs_frozen": 1, "epochs": 1,
    "lr_frozen": 0.01, "lr": 0.001, "weight_decay": 0.0001, "batch_size": 32, "workers": 2,
    "precision": "auto", "resume": False, "stop_after": None, "show_progress": True,
    "n_train": 86, "n_val": 10, "best_epoch": 2, "best_phase": "finetune", "precision_used": "32-true",
    "images_per_second": {"frozen": 7.286949399304256, "finetune": 2.153843929016448},
    "val_at_0.5": {"f1_macro": 0.4396997929606625, "f1_micro": 0.7814569536423841, "f1_samples": 0.7487654320987652,
                   "f1_per_class": [0.5714285714285714] * 10},
    "val_tuned": {"f1_macro": 0.4313097702849255, "f1_micro": 0.7692307692307693, "f1_samples": 0.758024691358024,
                  "f1_per_class": [0.25] * 10},
}


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    """An untrained run with the files training leaves beside the model: curves.png and metrics.csv."""
    run_dir = untrained_run(image_size=64, thresholds=[0.9] * 10,
                            training=TRAINING_RECORD)
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    figure.savefig(run_dir / "curves.png")
    plt.close(figure)
    (run_dir / "metrics.csv").write_text("epoch,train_loss,val_f1_macro\n0,0.7,0.2\n1,0.5,0.3\n")
    return run_dir


def links(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page.read_text(encoding="utf-8"))


def position(text: str, piece: str) -> int:
    assert piece in text, piece
    return text.index(piece)


def test_without_data_the_page_says_how_to_add_an_evaluation(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = run_dir / "report.html"
    text = page.read_text()
    assert "--data DATA" in text
    assert "test_resnet" in text and "val_f1_macro" in text
    assert links(page) == ["curves.png"]  # lr.png is absent from this run, so not linked
    # Results first: validation scores, per-class table and curves, then the configuration.
    assert (position(text, "<h2>Validation during training</h2>") < position(text, "0.431")
            < position(text, "<h3>Per class (validation)</h3>") < position(text, 'src="curves.png"')
            < position(text, "<h2>Configuration</h2>") < position(text, "test_resnet"))
    config = text[text.index("<h2>Configuration</h2>"):]
    for group in ("Model", "Data", "Recipe", "Hardware"):
        assert f"<h3>{group}</h3>" in config
    assert "frozen: 7.287; fine-tuning: 2.154" in config
    for internal in ("show_progress", "resume", "stop_after", "runs/demo", "{", "val_tuned"):
        assert internal not in config, internal
    assert not re.search(r"\d\.\d{6,}", text)  # no 16-digit floats anywhere


def test_with_data_every_link_resolves_from_a_page_elsewhere(run_dir, demo_data, tmp_path):
    # An embedding map in the run folder, as `protloc embed` writes it, is a figure the page must link.
    assert main(["embed", str(run_dir), str(demo_data), "--out", str(run_dir / "features.parquet"),
                 "--method", "pca", "--workers", "0", "--device", "cpu"]) == 0
    # An evaluation written into the run folder has a page of its own: linked, its charts not shown twice.
    assert main(["evaluate", str(run_dir), str(demo_data), "--out", str(run_dir / "evaluation"), "--workers", "0"]) == 0
    page = tmp_path / "pages" / "run.html"
    assert main(["report", str(run_dir), "--data", str(demo_data), "--out", str(page),
                 "--samples", "2", "--workers", "0"]) == 0
    found = links(page)
    for link in found:
        assert (page.parent / link).is_file(), link
    pictures = sorted((run_dir / "report" / "samples").glob("*.png"))
    samples = [path for path in pictures if not path.stem.endswith("_cells")]
    assert len(samples) == 2
    assert {path.name for path in pictures} - {path.name for path in samples} <= {f"{p.stem}_cells.png" for p in samples}
    linked = {(page.parent / link).resolve() for link in found}
    assert {path.resolve() for path in samples} <= linked
    own_page = run_dir / "evaluation"
    run_figures = {path.resolve() for path in run_dir.rglob("*.png") if own_page not in path.parents}
    assert (run_dir / "features_map.png").resolve() in run_figures
    assert run_figures <= linked  # every figure of the run folder, the report's own included
    assert (own_page / "index.html").resolve() in linked and not any(own_page.resolve() in path.parents for path in linked
                                                                     if path.suffix == ".png")
    images = [Path(link).name for link in found if link.endswith(".png")]
    assert images.count("f1_per_class.png") == 1 and images.count("precision_recall.png") == 1
    text = page.read_text()
    # Results (evaluation, validation, curves, samples with true and predicted labels) before the configuration.
    assert (position(text, "<h2>Evaluation on") < position(text, "<h3>F1 scores</h3>")
            < position(text, "<h2>Validation during training</h2>") < position(text, "curves.png")
            < position(text, "<h2>Sample explanations</h2>") < position(text, "<th>true</th>")
            < position(text, "<th>predicted</th>") < position(text, "samples/" + samples[0].name)
            < position(text, "features_map.png") < position(text, "<h2>Configuration</h2>"))
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
