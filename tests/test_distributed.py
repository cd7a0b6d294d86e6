"""train, predict, embed and evaluate in two CPU processes (Lightning DDP, gloo), run as a user runs them, with
`--devices 2`. Lightning's launcher starts the second process by running the command line again, so these run in a
subprocess (inside pytest it would run pytest's command line instead): one start of two processes for all of them
(commands_in_two_processes.py), the first command (train) through Lightning's launcher, the later ones in the launch
it left, as under torchrun. That prediction's processes, started from a plain command line, would be started by the
same launcher is checked on its own (test_prediction_on_several_processes_starts_them_as_training_does).

Training on two processes gives each its half of the training images. Each inference command is compared with one
process on the same input: the same ids in the same order, the same numbers (1e-5).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.inference.distributed import Ranks, exchange_folder, read_shares
from protloc.labels import HPA10
from protloc.models.run_weights import load_run
from protloc.runs import TrainingOutcome, fold_dir, load_config, save_config, write_ensemble

THRESHOLDS = [0.3, 0.7, 0.4, 0.6, 0.5, 0.45, 0.55, 0.35, 0.65, 0.5]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kfold(untrained_run, demo_data, tmp_path_factory):
    """A 2-fold folder of untrained runs whose heads and normalisation differ, each with an outlier description
    (so that predictions carry an outlier score beside the probabilities)."""
    out = tmp_path_factory.mktemp("kfold") / "cv"
    training_images = sorted((demo_data / "train").glob("*.png"))
    for fold in range(2):
        run_dir = untrained_run(fold_dir(out, fold), spread=10.0 * (fold + 1), outliers_of=training_images[fold::2][:30])
        config = load_config(run_dir)
        config.mean = [value + 0.1 * fold for value in config.mean]
        save_config(run_dir, config)
    thresholds = [load_config(fold_dir(out, fold)).outlier_threshold for fold in range(2)]
    write_ensemble(out, ["fold-0", "fold-1"], HPA10.name, list(HPA10.names), THRESHOLDS,
                   TrainingOutcome(recipe={"folds": 2}, n_val=96), float(np.mean(thresholds)))
    return out


@pytest.fixture(scope="module")
def run_dir(untrained_run):
    return untrained_run(thresholds=THRESHOLDS, spread=30)


@pytest.fixture(scope="module")
def images(demo_data) -> list[Path]:
    # 15 images in an order of their own: the processes' shares are uneven (8 and 7), batches of 4 leave a
    # partial one, and the input order is not the files' sorted order.
    images = sorted((demo_data / "test").glob("*.png"))[:15]
    return images[7:] + images[:7]


CELL_OPTIONS = ("--cells", "--probabilities")
TRAINING_BATCH = 8


@dataclass
class Launch:
    """What the two processes wrote: `out` holds each command's output; `printed(name)` is what each process printed
    for the command named `name`, [process 0's, process 1's]; `refusal` is (exit code, standard error) of the
    command that must refuse to start."""

    out: Path
    names: list[str]

    def printed(self, name: str) -> list[str]:
        number = self.names.index(name)
        return [(self.out / f"rank-{rank}-command-{number}.out").read_text() for rank in (0, 1)]

    @property
    def refusal(self) -> tuple[int, str]:
        return int((self.out / "alone-0.code").read_text()), (self.out / "alone-0.err").read_text()


@pytest.fixture(scope="module")
def launch(kfold, run_dir, images, demo_data, cell_data, tiny_recipe, tmp_path_factory) -> Launch:
    """Every two-process command of the tests below, started once; before it, in the first process alone,
    --num-nodes 2 without a launcher, which must refuse to start."""
    out = tmp_path_factory.mktemp("two-processes")
    commands = {
        "train": ["train", demo_data, "--out", out / "ddp", *tiny_recipe.args(batch_size=TRAINING_BATCH)],
        "predict": ["predict", kfold, *images, "--out", out / "predict.csv", "--probabilities", "--batch-size", "4",
                    "--cache-dir", out / "cache"],
        "predict cells": ["predict", run_dir, cell_data, "--out", out / "cells.csv", *CELL_OPTIONS,
                          "--masks", cell_data / "cells"],
        "embed": ["embed", run_dir, demo_data, "--out", out / "embed.parquet", "--method", "pca", "--batch-size", "3",
                  "--precision", "fp32"],
        "evaluate": ["evaluate", run_dir, demo_data, "--out", out / "evaluation", "--batch-size", "16"],
    }
    refused = ["predict", run_dir, demo_data, "--out", out / "refused.csv", "--num-nodes", "2"]
    plan = {"outputs": str(out), "first_alone": [list(map(str, refused))],
            "commands": [[*map(str, argv), "--devices", "2", "--workers", "0"] for argv in commands.values()]}
    (out / "plan.json").write_text(json.dumps(plan))
    # With a time limit: were the refusal missing, the first process would wait for the other machine.
    env = {key: value for key, value in os.environ.items() if key not in ("MASTER_ADDR", "NODE_RANK")}
    result = subprocess.run([sys.executable, "-m", "tests.commands_in_two_processes", str(out / "plan.json")],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return Launch(out, list(commands))


def test_training_on_two_processes_writes_a_run_each_process_on_half_the_images(launch):
    printed = launch.printed("train")
    assert "best epoch" in printed[0] and printed[0].count("run: ") == 1 and "run: " not in printed[1]  # rank 0 reports
    assert printed[0].count(": training on device cpu") == 1 and "2 processes" in printed[0]  # one engine line
    assert ": training on device" not in printed[1]

    out = launch.out / "ddp"
    config, _model = load_run(out)
    training = config.training
    assert training.world_size == 2
    assert training.n_train + training.n_val == 96
    # Each process trains on its own half of the training images: an epoch takes half the steps one device would.
    steps = pd.read_csv(out / "lr.csv").groupby("phase")["step"].count()
    per_rank = math.ceil(training.n_train / 2) // TRAINING_BATCH
    assert steps.to_dict() == {"frozen": per_rank, "finetune": per_rank}
    assert per_rank < training.n_train // TRAINING_BATCH
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and metrics["val_f1_macro"].notna().all()


def test_predict_on_two_processes_writes_what_one_process_writes(launch, kfold, images, tmp_path):
    two = launch.out / "predict.csv"
    printed = launch.printed("predict")
    assert printed[0].count("wrote ") == 1 and "wrote " not in printed[1]  # process 0 alone writes
    assert len(list((launch.out / "cache").glob("images-v1/*/*.u8"))) == len(images)  # both read through the cache
    assert not exchange_folder(two).exists()

    one = tmp_path / "one.csv"
    assert main(["predict", str(kfold), *map(str, images), "--out", str(one), "--probabilities", "--no-cache",
                 "--workers", "0"]) == 0
    expected, actual = pd.read_csv(one, dtype={"Image": str}), pd.read_csv(two, dtype={"Image": str})
    assert actual["Image"].tolist() == expected["Image"].tolist() == [image.stem for image in images]
    assert list(actual.columns) == list(expected.columns) == ["Image", *HPA10.names, "outlier_score", "outlier"]
    np.testing.assert_allclose(actual[list(HPA10.names)], expected[list(HPA10.names)], rtol=0, atol=1e-5)
    assert expected[list(HPA10.names)].to_numpy().std(axis=0).max() > 0.01  # far beyond 1e-5 between images
    # The per-image extra beside the probabilities comes back to its row too.
    np.testing.assert_allclose(actual["outlier_score"], expected["outlier_score"], rtol=1e-5)
    assert expected["outlier_score"].std() > 0.01 and actual["outlier"].tolist() == expected["outlier"].tolist()


def test_predict_cells_on_two_processes_writes_what_one_process_writes(launch, run_dir, cell_data, tmp_path):
    # Both steps spread: the images' probabilities, then each image's cells alone through the model.
    one = tmp_path / "one.csv"
    assert main(["predict", str(run_dir), str(cell_data), "--out", str(one), *CELL_OPTIONS,
                 "--masks", str(cell_data / "cells"), "--workers", "0"]) == 0
    expected = pd.read_csv(one, dtype={"Image": str})
    actual = pd.read_csv(launch.out / "cells.csv", dtype={"Image": str})
    assert actual[["Image", "Cell"]].equals(expected[["Image", "Cell"]]) and actual["Image"].nunique() == 2
    assert list(actual.columns) == list(expected.columns)
    np.testing.assert_allclose(actual.iloc[:, 2:].to_numpy(float), expected.iloc[:, 2:].to_numpy(float), rtol=0, atol=1e-5)


def test_embed_on_two_processes_writes_what_one_process_writes(launch, run_dir, demo_data, tmp_path):
    one = tmp_path / "one.parquet"
    assert main(["embed", str(run_dir), str(demo_data), "--out", str(one), "--method", "pca", "--workers", "0",
                 "--precision", "fp32"]) == 0
    expected, actual = pd.read_parquet(one), pd.read_parquet(launch.out / "embed.parquet")
    assert actual["id"].tolist() == expected["id"].tolist() and len(actual) == 96
    features = [column for column in expected.columns if column.startswith("f")]
    np.testing.assert_allclose(actual[features], expected[features], rtol=0, atol=1e-5)
    assert [list(labels) for labels in actual["labels"]] == [list(labels) for labels in expected["labels"]]
    assert (launch.out / "embed_map.png").is_file()


def test_evaluate_on_two_processes_writes_what_one_process_writes(launch, run_dir, demo_data, tmp_path):
    assert main(["evaluate", str(run_dir), str(demo_data), "--out", str(tmp_path / "one"), "--workers", "0"]) == 0
    expected = pd.read_csv(tmp_path / "one" / "predictions.csv", dtype={"id": str})
    actual = pd.read_csv(launch.out / "evaluation" / "predictions.csv", dtype={"id": str})
    assert actual["id"].tolist() == expected["id"].tolist() and len(actual) == 96
    probabilities = [column for column in expected.columns if column.startswith("p_")]
    np.testing.assert_allclose(actual[probabilities], expected[probabilities], rtol=0, atol=1e-5)
    assert actual["predicted"].tolist() == expected["predicted"].tolist()
    scores = [json.loads((folder / "metrics.json").read_text())["at_thresholds"]
              for folder in (tmp_path / "one", launch.out / "evaluation")]
    assert scores[0]["f1_macro"] == pytest.approx(scores[1]["f1_macro"])


def test_several_machines_without_a_launcher_are_refused_at_once(launch):
    code, stderr = launch.refusal
    assert code == 2
    assert "--num-nodes 2: no launcher found" in stderr and "Traceback" not in stderr
    assert not (launch.out / "refused.csv").exists()


def test_prediction_on_several_processes_starts_them_as_training_does(tmp_path):
    """Without a launch around it, prediction's trainer starts the other processes by running the command line again,
    with the launcher that started the training above."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    ranks = Ranks(2, 1, device="cpu", exchange=tmp_path)
    assert isinstance(ranks.trainer.strategy.launcher, _SubprocessScriptLauncher)
    assert ranks.world_size == 2 and ranks.device == "cpu"


def test_ranks_refuse_one_named_gpu_for_several_processes(tmp_path):
    with pytest.raises(ProtlocError, match="cuda:N names one GPU"):
        Ranks(2, 1, device="cuda:0", exchange=tmp_path)


def write_share(folder, rank, rows, outputs, total):
    folder.mkdir(exist_ok=True)
    np.savez(folder / f"rank-{rank}.npz", rows=np.array(rows, dtype=np.int64), total=np.array(total),
             problems=np.array([""] * len(rows), dtype=str), output_outputs=np.array(outputs, dtype=np.float32))


def test_shares_go_back_to_their_rows_and_a_missing_share_is_named(tmp_path):
    folder = tmp_path / "shares"
    write_share(folder, 0, [0, 2, 4], [[0.0], [2.0], [4.0]], total=5)
    with pytest.raises(ProtlocError, match="rank-1.npz: process 1 left no predictions"):
        read_shares(folder, 2, 5)
    write_share(folder, 1, [1], [[1.0]], total=5)
    with pytest.raises(ProtlocError, match="leave 1 of 5 images out"):
        read_shares(folder, 2, 5)
    write_share(folder, 1, [1, 3], [[1.0], [3.0]], total=5)
    result = read_shares(folder, 2, 5).result()
    assert result.outputs[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert result.problems == [""] * 5


def test_parts_of_rows_go_back_to_their_rows_in_order(tmp_path):
    # Cells of images: process 0 has images 0 and 2 (two cells, none), process 1 image 1 (three cells).
    folder = tmp_path / "shares"
    folder.mkdir()
    for rank, rows, cells, cell_rows in ((0, [0, 2], [5, 6], [0, 0]), (1, [1], [7, 8, 9], [1, 1, 1])):
        np.savez(folder / f"rank-{rank}.npz", rows=np.array(rows), total=np.array(3), problems=np.array([""] * len(rows)),
                 piece_cell=np.array(cells), piece_row=np.array(cell_rows))
    parts = read_shares(folder, 2, 3).pieces_by_row()
    assert [list(part.get("cell", [])) for part in parts] == [[5, 6], [7, 8, 9], []]
