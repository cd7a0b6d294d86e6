"""One run's phases: the frozen phase really freezes (the backbone's weights and BatchNorm statistics come out
bit-identical), and fine-tuning trains everything."""
from __future__ import annotations

import torch

from protloc.training.callbacks import TrainingHistory
from protloc.training.datamodule import LocalisationData
from protloc.training.losses import make_loss
from protloc.training.trainer import resolve_hardware
from protloc.training.run import Phase, build_initial_model, fit_phase
from protloc.training.splits import make_split
from protloc.training.train import read_training_table


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def test_frozen_phase_trains_the_head_only_and_finetuning_trains_everything(demo_data, tiny_recipe, tmp_path):
    config = tiny_recipe.config(demo_data, tmp_path)
    hardware = resolve_hardware(config)
    table = read_training_table(config)
    model = build_initial_model(config, len(table.label_set))
    train_rows, val_rows = make_split("mask", table.targets, 0.1, seed=0)
    data = LocalisationData(table, train_rows, val_rows, image_size=32, mean=[0.5] * 3, std=[0.5] * 3, channels=3,
                            batch_size=16, workers=0, seed=0)
    fit = dict(run_dir=tmp_path, loss=make_loss("bce"), label_names=list(table.label_set.names))

    backbone_before, head_before = snapshot(model.backbone), snapshot(model.head)
    statistics = [key for key in backbone_before if "running_mean" in key or "running_var" in key or "num_batches" in key]
    assert statistics  # the backbone has BatchNorm statistics for the check below to cover

    fit_phase(model, data, config, hardware, Phase("frozen", 0, 1, 1e-2), history=TrainingHistory(), **fit)
    backbone_after, head_after = snapshot(model.backbone), snapshot(model.head)
    assert backbone_after.keys() == backbone_before.keys()
    changed = [key for key in backbone_before if not torch.equal(backbone_before[key], backbone_after[key])]
    assert changed == []
    assert not torch.equal(head_before["1.weight"], head_after["1.weight"])

    # The same check catches a backbone that does train: after fine-tuning, weights and statistics moved.
    fit_phase(model, data, config, hardware, Phase("finetune", 1, 1, 1e-3), history=TrainingHistory(), **fit)
    tuned = snapshot(model.backbone)
    assert all(p.requires_grad for p in model.backbone.parameters())
    moved = {key for key in backbone_after if not torch.equal(backbone_after[key], tuned[key])}
    assert set(statistics) <= moved
    assert any(key.endswith("weight") and "bn" not in key for key in moved)
