"""Focal loss reduces to BCE at gamma=0, quiets easy examples, and honours per-class positive weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from protloc.errors import ProtlocError
from protloc.training.losses import FocalLoss, auto_pos_weight, make_loss


def logits_and_targets(seed=0, n=32, c=5):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator) * 3
    targets = (torch.rand(n, c, generator=generator) < 0.3).float()
    return logits, targets


def test_focal_with_gamma_zero_and_no_alpha_equals_bce():
    logits, targets = logits_and_targets()
    focal = FocalLoss(gamma=0.0, alpha=None)(logits, targets)
    assert focal.item() == pytest.approx(nn.BCEWithLogitsLoss()(logits, targets).item(), rel=1e-6)


def test_focal_pos_weight_matches_bce_pos_weight_at_gamma_zero():
    logits, targets = logits_and_targets(1)
    pos_weight = torch.tensor([1.0, 2.0, 5.0, 10.0, 0.5])
    focal = FocalLoss(gamma=0.0, pos_weight=pos_weight)(logits, targets)
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, targets)
    assert focal.item() == pytest.approx(bce.item(), rel=1e-6)


def test_focal_down_weights_easy_examples_more_than_hard_ones():
    targets = torch.ones(1, 2)
    easy, hard = torch.tensor([[4.0, 4.0]]), torch.tensor([[-1.0, -1.0]])
    bce, focal = nn.BCEWithLogitsLoss(), FocalLoss(gamma=2.0)
    easy_ratio = focal(easy, targets) / bce(easy, targets)
    hard_ratio = focal(hard, targets) / bce(hard, targets)
    assert easy_ratio < 0.01  # (1 - sigmoid(4))^2 ~ 3e-4
    assert hard_ratio > 0.5  # (1 - sigmoid(-1))^2 ~ 0.53
    logits, targets = logits_and_targets(2)
    assert focal(logits, targets) < bce(logits, targets)


def test_focal_alpha_balances_positives_against_negatives():
    logits, targets = logits_and_targets(3)
    positives_only = FocalLoss(gamma=2.0, alpha=1.0)(logits, targets)
    unweighted = FocalLoss(gamma=2.0)(logits, targets)
    per_element = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.where(targets > 0, torch.sigmoid(logits), 1 - torch.sigmoid(logits))
    expected = (per_element * (1 - p_t) ** 2 * targets).mean()  # alpha=1 keeps only positive terms
    assert positives_only.item() == pytest.approx(expected.item(), rel=1e-5)
    assert positives_only < unweighted


def test_focal_loss_trains_and_carries_pos_weight_in_state_dict():
    loss = FocalLoss(pos_weight=torch.tensor([2.0, 3.0]))
    assert torch.equal(loss.state_dict()["pos_weight"], torch.tensor([2.0, 3.0]))
    logits = torch.zeros(4, 2, requires_grad=True)
    loss(logits, torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_auto_pos_weight_is_negatives_over_positives_clipped():
    targets = np.zeros((10, 4), dtype=np.float32)
    targets[:5, 0] = 1  # 5 pos / 5 neg -> 1
    targets[:2, 1] = 1  # 2 pos / 8 neg -> 4
    targets[:, 2] = 1  # 10 pos / 0 neg -> 0, clipped up to 1
    # class 3 has no positives -> clipped to the maximum, not inf or nan
    weights = auto_pos_weight(targets, max_weight=50.0)
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([1.0, 4.0, 1.0, 50.0])
    assert auto_pos_weight(torch.from_numpy(targets), max_weight=3.0).tolist() == pytest.approx([1.0, 3.0, 1.0, 3.0])


def test_make_loss_builds_the_named_loss():
    logits, targets = logits_and_targets(4)
    pos_weight = auto_pos_weight(targets)
    bce = make_loss("bce", pos_weight)
    assert isinstance(bce, nn.BCEWithLogitsLoss)
    assert bce(logits, targets).item() == pytest.approx(
        nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, targets).item()
    )
    focal = make_loss("focal", None, gamma=1.0)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0
    with pytest.raises(ProtlocError, match="unknown loss"):
        make_loss("hinge", None)
    with pytest.raises(ProtlocError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ProtlocError, match="2-D"):
        auto_pos_weight(np.zeros(5))
