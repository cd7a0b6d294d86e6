"""A run stopped and resumed (at the phase boundary, then mid fine-tuning) ends bit-identical to one trained in one go."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.training.train import TrainConfig, train


def final_state(run_dir) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (model.safetensors holds the best epoch's, which may be earlier)."""
    checkpoint = torch.load(run_dir / "checkpoints" / "finetune" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def test_stopped_and_resumed_run_ends_identical(demo_data, tmp_path):
    recipe = TrainConfig(data=str(demo_data), out=str(tmp_path / "straight"), backbone="mobilenetv3_small_050",
                         pretrained=False, image_size=32, batch_size=16, workers=0, epochs_frozen=1, epochs=2,
                         dropout=0.3, show_progress=False, accelerator="cpu")
    # On the CPU: GPU convolution kernels are not bit-for-bit deterministic, resumed or not.
    straight = train(recipe)

    # Stopped twice; it also loads its images in a worker process, which must not change what it learns.
    stopped = dataclasses.replace(recipe, out=str(tmp_path / "stopped"), workers=1)
    train(dataclasses.replace(stopped, stop_after=1))
    assert not (tmp_path / "stopped" / "config.json").exists()
    assert len(pd.read_csv(tmp_path / "stopped" / "metrics.csv")) == 1
    train(dataclasses.replace(stopped, stop_after=2, resume=True))
    # The last leg through the CLI's short form, which reads the data and options back from the run folder.
    assert main(["train", "--resume", stopped.out, "--workers", "1", "--accelerator", "cpu"]) == 0
    resumed = tmp_path / "stopped"

    expected, actual = final_state(straight), final_state(resumed)
    assert expected.keys() == actual.keys()
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []
    best_expected, best_actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(best_expected[key], best_actual[key]) for key in best_expected)

    def scores(run_dir):
        return pd.read_csv(run_dir / "metrics.csv").drop(columns="images_per_second")

    pd.testing.assert_frame_equal(scores(straight), scores(resumed), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "lr.csv"), pd.read_csv(resumed / "lr.csv"), check_exact=True)


def test_resume_refuses_changed_options_and_missing_runs(demo_data, tmp_path):
    recipe = TrainConfig(data=str(demo_data), out=str(tmp_path / "run"), backbone="mobilenetv3_small_050",
                         pretrained=False, image_size=32, batch_size=16, workers=0, epochs_frozen=1, epochs=1,
                         stop_after=1, show_progress=False)
    train(recipe)
    with pytest.raises(ProtlocError) as error:
        train(dataclasses.replace(recipe, lr=0.5, seed=7, resume=True, stop_after=None))
    message = "\n".join(error.value.lines)
    assert "--lr: 0.001 in the stopped run, 0.5 now" in message and "--seed: 42 in the stopped run, 7 now" in message
    with pytest.raises(ProtlocError, match="holds no stopped run"):
        train(dataclasses.replace(recipe, out=str(tmp_path / "elsewhere"), resume=True))
    assert main(["train", "--resume", str(tmp_path / "elsewhere")]) == 2
    assert main(["train", str(demo_data)]) == 2  # neither --out nor --resume
