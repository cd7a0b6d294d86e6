"""protloc train and protloc compare end to end, on the small generated dataset (64 px images, trained at 32 px)."""
from __future__ import annotations

import shutil
import socket

import numpy as np
import pandas as pd
import pytest
import torch

from protloc.cli import main
from protloc.commands.compare import read_histories
from protloc.models.backbones import backbone_spec
from protloc.models.run_weights import load_run
from protloc.runs import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def default_run(demo_data, tiny_recipe, tmp_path_factory):
    """The default recipe (efficientnet_lite0, mask split), made tiny, through the CLI."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", str(demo_data), "--out", str(out), *tiny_recipe.args(backbone=None)]) == 0
    return out


@pytest.fixture(scope="module")
def random_split_run(demo_data, tiny_recipe, tmp_path_factory):
    """The non-default options of the recipe, all at once, on a small timm backbone."""
    out = tmp_path_factory.mktemp("train") / "random"
    args = ["train", str(demo_data), "--out", str(out), *tiny_recipe.args(),
            "--validation-split", "random", "--normalize", "dataset", "--loss", "focal", "--pos-weight", "auto",
            "--optimizer", "adamw", "--grad-clip", "1.0", "--grad-clip-mode", "norm", "--dropout", "0.2",
            "--bit-depth", "12", "--data-kind", "real"]
    assert main(args) == 0
    return out


def test_train_writes_a_complete_run_folder(default_run, demo_data):
    for name in ("config.json", "model.safetensors", "metrics.csv", "lr.csv", "curves.png", "lr.png"):
        assert (default_run / name).is_file(), name
    config, model = load_run(default_run)
    assert config.backbone == "efficientnet_lite0" and config.image_size == 32 and config.in_chans == 3
    assert config.label_set == "hpa10" and len(config.label_names) == 10 and config.layout == "z2g"
    assert config.bit_depth == 8  # detected: the demo images are 8-bit PNGs
    assert config.mean == [0.5, 0.5, 0.5] and config.std == [0.5, 0.5, 0.5]  # the backbone's, as recorded
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert len(config.thresholds) == 10 and all(0 < t < 1 for t in config.thresholds)
    training = config.training
    assert training.validation_split == "mask" and training.n_train + training.n_val == 96
    assert training.recipe["data"] == str(demo_data.resolve()) and training.world_size == 1
    assert training.precision_used == "fp32"  # auto, on every CPU
    assert training.recipe["frozen_stages"] is None and training.frozen_stages_used == 4  # efficientnet_lite0's own
    assert set(training.images_per_second) == {"frozen", "finetune"}
    assert all(speed > 0 for speed in training.images_per_second.values())
    assert set(training.val_tuned) >= {"f1_macro", "f1_micro", "f1_samples", "fscore_course", "f1_per_class"}
    # Tuning may only help on the data it was tuned on, compared under the same labelling rule.
    assert training.val_tuned["f1_macro"] >= training.val_at_05["f1_macro"] - 1e-12


def test_the_run_describes_its_training_features_and_sets_the_outlier_threshold_on_validation(default_run):
    """outliers.safetensors holds, per part of the features (pooled, then each stage), the mean of the training
    images' features and the median distance of the validation images; the threshold is the 99th percentile of
    the validation images' scores, both as prediction computes them."""
    import protloc
    from protloc.inference.outliers import load_description
    from protloc.runs import OUTLIER_FILE, read_weight_shapes
    from protloc.training.config import config_from_recipe
    from protloc.training.splits import make_split
    from protloc.training.train import read_training_table
    from tests.conftest import outlier_features

    config = load_config(default_run)
    predictor = protloc.load(default_run, engine="torch", precision="fp32")
    widths = predictor.model.backbone.feature_widths()
    parts = len(widths)
    assert parts == len(predictor.model.backbone.stage_names) + 1 >= 2  # the pooled features, then timm's stages
    assert set(read_weight_shapes(default_run / OUTLIER_FILE)) == (  # safetensors
        {f"mean.{part}" for part in range(parts)} | {f"precision.{part}" for part in range(parts)} | {"scales"})
    recipe = config_from_recipe(config.training.recipe)
    table = read_training_table(recipe)
    train_rows, val_rows = make_split(recipe.validation_split, table.targets, recipe.val_fraction, recipe.seed)
    description = load_description(default_run / OUTLIER_FILE, widths)
    sources = list(table.frame["source"])
    training = outlier_features(predictor, [sources[row] for row in train_rows])
    np.testing.assert_allclose(np.concatenate(description.means), training.mean(axis=0), rtol=1e-3, atol=1e-4)
    validation = outlier_features(predictor, [sources[row] for row in val_rows])
    np.testing.assert_allclose(description.scales, np.median(description.distances(validation), axis=0), rtol=1e-3)
    scores = predictor.predict_table(table.subset(val_rows)).outlier_scores
    assert np.median(scores) == pytest.approx(1.0, abs=0.15)  # each part's distance over its validation median
    assert config.outlier_threshold == pytest.approx(np.percentile(scores, 99), rel=1e-4)


def test_the_run_records_what_it_was_trained_on(default_run, random_split_run, demo_data):
    from datetime import datetime

    import protloc

    record = load_config(default_run).training_data
    labels = pd.read_csv(demo_data / "train.csv")["Label"].str.split()
    assert record.folder == str(demo_data.resolve()) and record.kind == "demo"  # demo-data marks its datasets
    assert record.images == len(labels) == 96 and record.bit_depth == 8
    counts = {name: int(sum(str(index) in row for row in labels)) for index, name in enumerate(record.classes)}
    assert record.classes == counts and len(counts) == 10
    assert record.protloc_version == protloc.__version__ and datetime.fromisoformat(record.date).tzinfo is not None
    assert load_config(default_run).trained_on.startswith("trained on 96 generated demo images of 10 classes, 8-bit")
    stated = load_config(random_split_run).training_data
    assert stated.kind == "real" and stated.bit_depth == 12  # --data-kind real, --bit-depth 12


def test_metrics_csv_has_one_row_per_epoch_with_every_score(default_run):
    metrics = pd.read_csv(default_run / "metrics.csv")
    config = load_config(default_run)
    expected = ["epoch", "phase", "train_loss", "val_loss", "val_f1_macro", "val_f1_micro", "val_f1_samples",
                "val_fscore_course", "val_fscore_course_notebook", "lr", "images_per_second"] + [
                    f"f1_{name}" for name in config.label_names]
    assert list(metrics.columns) == expected
    assert metrics["epoch"].tolist() == [1, 2] and metrics["phase"].tolist() == ["frozen", "finetune"]
    assert metrics[expected[2:]].notna().all().all()


def test_saved_model_is_the_best_epoch(default_run):
    """The weights saved are those of the best epoch: predicting validation again reproduces its score."""
    metrics = pd.read_csv(default_run / "metrics.csv")
    training = load_config(default_run).training
    best = metrics.loc[metrics["val_f1_macro"].idxmax()]
    assert training.best_epoch == best["epoch"] and training.best_phase == best["phase"]
    assert training.val_at_05["f1_macro"] == pytest.approx(best["val_f1_macro"], abs=1e-9)


def test_one_cycle_learning_rate_is_stepped_every_batch(default_run):
    training = load_config(default_run).training
    steps = pd.read_csv(default_run / "lr.csv")
    steps_per_epoch = training.n_train // 16  # the ragged last batch is dropped
    assert steps["step"].tolist() == list(range(1, len(steps) + 1))
    recipe = training.recipe  # the run's peak learning rates, as it recorded them
    for phase, peak in (("frozen", recipe["lr_frozen"]), ("finetune", recipe["lr"])):
        lr = steps.loc[steps["phase"] == phase, "lr"].to_numpy()
        assert len(lr) == steps_per_epoch
        top = int(np.argmax(lr))
        assert 0 < top < len(lr) - 1
        assert np.all(np.diff(lr[: top + 1]) > 0) and np.all(np.diff(lr[top:]) < 0)
        assert lr.max() <= peak and lr.max() > peak / 2 and lr[0] < peak / 10 and lr[-1] < lr[0]


def test_plots_are_written(default_run):
    for name in ("curves.png", "lr.png"):
        assert (default_run / name).read_bytes()[:8] == PNG_MAGIC


def test_recipe_options_reach_the_run(random_split_run):
    config = load_config(random_split_run)
    assert config.backbone == "test_resnet" and config.dropout == 0.2 and config.bit_depth == 12
    training = config.training
    assert training.validation_split == "random" and training.n_val == 10  # exactly ceil(96 * 0.1)
    assert (training.recipe["loss"], training.recipe["pos_weight"], training.recipe["optimizer"]) == ("focal", "auto", "adamw")
    # --normalize dataset: measured on the training images (dark fluorescence fields), not the backbone's.
    backbone_mean, _ = backbone_spec("test_resnet").normalization(3)
    assert config.mean != list(backbone_mean)
    assert all(0 < m < 0.5 for m in config.mean) and all(0 < s < 0.5 for s in config.std)


def test_compare_plots_several_runs(default_run, random_split_run, tmp_path, capsys):
    plot = tmp_path / "compare.png"
    assert main(["compare", str(default_run), str(random_split_run), "--out", str(plot)]) == 0
    assert plot.read_bytes()[:8] == PNG_MAGIC
    labels = [label for label, _metrics in read_histories([str(default_run), str(random_split_run)], "val_f1_macro")]
    assert labels == ["run (mask split)", "random (random split)"]
    assert main(["compare", str(default_run), str(tmp_path), "--out", str(plot), "--metric", "val_nonsense"]) == 2
    err = capsys.readouterr().err
    assert "no column 'val_nonsense'" in err and f"{tmp_path}: no metrics.csv" in err


def test_missing_pretrained_weights_fail_short(demo_data, tmp_path, monkeypatch, capsys):
    """resnet18's ImageNet weights are a download; offline and not cached, training stops with exit 2 at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    out = tmp_path / "run"
    assert main(["train", str(demo_data), "--out", str(out), "--backbone", "resnet18", "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("protloc: error: ") and "ImageNet weights" in err and "--no-pretrained" in err
    assert not out.exists()


def test_unreadable_images_are_all_reported_before_training(demo_data, tiny_recipe, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    images = sorted((data / "train").glob("*.png"))
    images[0].write_bytes(b"not a png")
    images[1].write_bytes(images[1].read_bytes()[:100])  # truncated
    images[2].unlink()
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), *tiny_recipe.args()]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for image in images[:3]:
        assert str(image) in err
    assert "3 image problem(s)" in err
    assert not out.exists()


def test_an_existing_run_is_not_overwritten(default_run, demo_data, tiny_recipe, capsys):
    assert main(["train", str(demo_data), "--out", str(default_run), *tiny_recipe.args()]) == 2
    assert "already holds a run: add --resume" in capsys.readouterr().err
