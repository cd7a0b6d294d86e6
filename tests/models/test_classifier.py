from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from protloc.models.classifier import ProtlocNet, build_model, freeze_backbone, unfreeze_backbone


@pytest.fixture
def model(pretrained_efficientnet) -> ProtlocNet:
    return copy.deepcopy(pretrained_efficientnet)  # the tests freeze and train it


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_steps(model: ProtlocNet, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(steps):
        model.train()
        x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 5)).float()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_forward_and_embed_shapes(model):
    x = torch.zeros(2, 3, 64, 64)
    model.eval()
    assert model(x).shape == (2, 5)
    assert model.embed(x).shape == (2, 1280)
    assert model.head[0].p == 0.2 and model.head[1].in_features == 1280


def test_build_model_for_four_channels():
    model = build_model("resnet18", 28, pretrained=False, in_chans=4).eval()
    assert model(torch.zeros(1, 4, 64, 64)).shape == (1, 28)


def test_frozen_backbone_keeps_weights_and_bn_stats(model):
    freeze_backbone(model)
    backbone_before, head_before = _snapshot(model.backbone), _snapshot(model.head)
    _train_steps(model)
    assert _changed(backbone_before, model.backbone) == []
    assert _changed(head_before, model.head)
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, _BatchNorm))


def test_unfreeze_restores_training(model):
    freeze_backbone(model)
    unfreeze_backbone(model)
    model.train()
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(m.training for m in model.backbone.modules() if isinstance(m, _BatchNorm))
    before = _snapshot(model.backbone)
    _train_steps(model, steps=1)
    changed = _changed(before, model.backbone)
    assert "net.conv_stem.weight" in changed and "net.bn2.running_mean" in changed
