"""One run's phases: the frozen phase really freezes (the backbone's weights and BatchNorm statistics come out
bit-identical), fine-tuning with --frozen-stages 0 trains everything, and with N > 0 leaves the first N stages
as they were and trains the rest."""
from __future__ import annotations

import pytest
import torch

from protloc.errors import ProtlocError
from protloc.models.classifier import build_model
from protloc.training.callbacks import TrainingHistory
from protloc.training.datamodule import LocalisationData
from protloc.training.losses import make_loss
from protloc.training.trainer import resolve_hardware
from protloc.cli import main
from protloc.training.config import TrainConfig
from protloc.training.run import Phase, build_initial_model, fit_phase, frozen_stage_count
from protloc.training.splits import make_split
from protloc.training.train import read_training_table


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def phases_of(config, run_dir):
    """The model `config` builds, and `run(phase)`, which fits one phase of it in place on the demo data."""
    hardware = resolve_hardware(config)
    table = read_training_table(config)
    model = build_initial_model(config, len(table.label_set))
    train_rows, val_rows = make_split("mask", table.targets, 0.1, seed=0)
    data = LocalisationData(table, train_rows, val_rows, image_size=32, mean=[0.5] * 3, std=[0.5] * 3, channels=3,
                            batch_size=16, workers=0, seed=0)

    def run(phase: Phase) -> None:
        fit_phase(model, data, config, hardware, phase, history=TrainingHistory(), run_dir=run_dir, loss=make_loss("bce"),
                  label_names=list(table.label_set.names))

    return model, run


def test_frozen_phase_trains_the_head_only_and_finetuning_trains_everything(demo_data, tiny_recipe, tmp_path):
    model, run = phases_of(tiny_recipe.config(demo_data, tmp_path, frozen_stages=0), tmp_path)

    backbone_before, head_before = snapshot(model.backbone), snapshot(model.head)
    statistics = [key for key in backbone_before if "running_mean" in key or "running_var" in key or "num_batches" in key]
    assert statistics  # the backbone has BatchNorm statistics for the check below to cover

    run(Phase("frozen", 0, 1, 1e-2))
    backbone_after, head_after = snapshot(model.backbone), snapshot(model.head)
    assert backbone_after.keys() == backbone_before.keys()
    changed = [key for key in backbone_before if not torch.equal(backbone_before[key], backbone_after[key])]
    assert changed == []
    assert not torch.equal(head_before["1.weight"], head_after["1.weight"])

    # The same check catches a backbone that does train: after fine-tuning, weights and statistics moved.
    run(Phase("finetune", 1, 1, 1e-3))
    tuned = snapshot(model.backbone)
    assert all(p.requires_grad for p in model.backbone.parameters())
    moved = {key for key in backbone_after if not torch.equal(backbone_after[key], tuned[key])}
    assert set(statistics) <= moved
    assert any(key.endswith("weight") and "bn" not in key for key in moved)


def test_finetuning_leaves_the_first_stages_as_they_were_and_trains_the_rest(demo_data, tiny_recipe, tmp_path):
    # test_resnet: frozen_stages 2 is the stem, then layer1
    model, run = phases_of(tiny_recipe.config(demo_data, tmp_path, frozen_stages=2), tmp_path)
    before = snapshot(model.backbone)
    run(Phase("finetune", 0, 1, 1e-2))
    after = snapshot(model.backbone)
    early = ("net.conv1.", "net.bn1.", "net.layer1.")
    kept = {key for key in before if torch.equal(before[key], after[key])}
    assert {key for key in before if key.startswith(early)} <= kept  # weights and BatchNorm statistics
    assert any(key.startswith("net.bn1.running_") for key in kept) and any(key.startswith("net.layer1.") for key in kept)
    moved = set(before) - kept
    assert any(key.startswith("net.layer2.") and key.endswith("weight") for key in moved)
    assert any(key.startswith("net.layer4.") and "running_mean" in key for key in moved)
    assert not any(p.requires_grad for p in model.backbone.net.layer1.parameters())  # autograd records none of it


def test_fine_tuning_freezes_the_backbones_measured_number_of_stages_unless_told(demo_data, tiny_recipe, tmp_path):
    assert frozen_stage_count(TrainConfig(data="d", out="o", backbone="efficientnet_lite0")) == 4
    assert frozen_stage_count(TrainConfig(data="d", out="o", backbone="resnet18")) == 0  # not measured: everything trains
    assert frozen_stage_count(TrainConfig(data="d", out="o", backbone="efficientnet_lite0", frozen_stages=0)) == 0
    # A count the backbone cannot meet stops the run before its first epoch, as one line with exit code 2.
    assert main(["train", str(demo_data), "--out", str(tmp_path / "run"), *tiny_recipe.args(frozen_stages=9)]) == 2
    assert not (tmp_path / "run" / "lr.csv").exists()


def test_more_frozen_stages_than_the_backbone_has_is_a_one_line_error():
    model = build_model("test_resnet", 10, pretrained=False)  # a stem, then layer1-3 before its last stage
    assert len(model.backbone.early_modules(4)) > len(model.backbone.early_modules(1)) > 0
    with pytest.raises(ProtlocError, match="--frozen-stages 6: backbone 'test_resnet' has a stem and 3 stages"):
        model.backbone.early_modules(6)
