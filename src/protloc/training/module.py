"""The science of training, as a LightningModule: loss, optimiser, one-cycle schedule and validation scores.

One module covers one phase of the recipe. "frozen" trains the head alone over a frozen backbone (weights
and BatchNorm statistics fixed); "finetune" trains everything but the backbone's first `frozen_stages` stages.
Each phase gets a fresh optimiser and its own one-cycle schedule stepped after every batch, as the seed
notebook's `fit_one_cycle` calls do.

In the frozen phase the backbone runs under no_grad: nothing of it trains, so autograd must record nothing of it,
whatever the input. (With its parameters frozen autograd already recorded nothing: measured on a 2-core CPU,
no_grad changes neither the numbers nor the step time.) With `head_only` the batches hold the frozen
backbone's pooled features (protloc.training.features) instead of images, and only the head runs.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn

from protloc.errors import ProtlocError
from protloc.metrics import fscore_course_notebook_rule, scores_as_deployed
from protloc.models.classifier import ProtlocNet, freeze_backbone, freeze_early_stages, unfreeze_backbone
from protloc.runs import DEFAULT_THRESHOLD

PHASES = ("frozen", "finetune")
# The thresholds are tuned after training, so each epoch is scored at the default cut, under the deployed rule.
# Logged every epoch (val_f1_macro picks the best one); the last is the course F-score under the notebooks' rule.
LOGGED_SCORES = ("val_loss", "val_f1_macro", "val_f1_micro", "val_f1_samples", "val_fscore_course",
                 "val_fscore_course_notebook")


class NonFiniteTraining(ProtlocError):
    """Training diverged (NaN or infinite loss or weights): the run stops and no weights are written."""

    def __init__(self, what: str):
        super().__init__(f"training stopped: {what}; no weights written (a learning rate too high? try a lower --lr "
                         "or --lr-frozen)")


def validation_scores(targets: np.ndarray, probabilities: np.ndarray) -> dict:
    """An epoch's validation scores, images labelled as `predict` labels them at 0.5 (each at least one label):
    val_f1_macro, val_f1_micro, val_f1_samples, val_fscore_course, val_f1_per_class; and
    val_fscore_course_notebook, the course F-score as the published notebooks compute it (plain p >= 0.5)."""
    scores = scores_as_deployed(targets, probabilities, DEFAULT_THRESHOLD)
    return {**{f"val_{name}": value for name, value in scores.items()},
            "val_fscore_course_notebook": fscore_course_notebook_rule(targets, probabilities)}


class LocalisationModule(L.LightningModule):
    """Wraps a ProtlocNet for one phase. `first_epoch` is the run-wide number of the phase's first epoch (0-based),
    so epochs count on across phases in the history."""

    def __init__(
        self,
        model: ProtlocNet,
        *,
        phase: str,
        first_epoch: int,
        phase_epochs: int,
        lr: float,
        optimizer: str,
        weight_decay: float,
        loss: nn.Module,
        label_names: list[str],
        channels_last: bool = False,
        head_only: bool = False,
        frozen_stages: int = 0,
    ):
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: expected one of {PHASES}")
        if head_only and phase != "frozen":
            raise ValueError("head_only: only the frozen phase can train on precomputed features")
        self.model = model
        self.phase = phase
        self.first_epoch = first_epoch
        self.phase_epochs = phase_epochs
        self.lr = lr
        self.optimizer_name = optimizer
        self.weight_decay = weight_decay
        self.loss = loss
        self.label_names = list(label_names)
        self.channels_last = channels_last
        self.head_only = head_only
        # Filled by each validation epoch: `validation_scores` (per-class F1 included) for the history.
        self.val_scores: dict = {}
        self._val_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if phase == "frozen":
            freeze_backbone(model)
        else:
            unfreeze_backbone(model)
            freeze_early_stages(model, frozen_stages)
        if channels_last:
            model.to(memory_format=torch.channels_last)

    @property
    def global_epoch(self) -> int:
        """This epoch's 0-based number in the whole run (both phases)."""
        return self.first_epoch + self.current_epoch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.head(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.phase == "frozen":
            with torch.no_grad():
                features = self.model.backbone(images)
            return self.model.head(features)
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, _rows, _ok = batch
        loss = self.loss(self._logits(images), targets)
        if not torch.isfinite(loss):  # every step after would train on NaN: stop, before a checkpoint keeps it
            raise NonFiniteTraining(f"the training loss became {float(loss)} at epoch {self.global_epoch + 1}, step "
                                    f"{batch_idx + 1} of the {self.phase} phase")
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, rows, _ok = batch
        self._val_batches.append((self._logits(images).float(), targets.float(), rows))

    def on_validation_epoch_start(self) -> None:
        self._val_batches = []

    def on_validation_epoch_end(self) -> None:
        logits, targets, rows = (torch.cat(parts) for parts in zip(*self._val_batches))
        self._val_batches = []
        logits, targets = self._gather_validation(logits, targets, rows)
        loss = float(self.loss(logits, targets))
        broken = [name for name, value in self.model.state_dict().items()
                  if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if broken or not np.isfinite(loss):  # checked before the epoch's checkpoints are written
            what = f"{len(broken)} weight tensors (e.g. {broken[0]})" if broken else f"the validation loss ({loss})"
            raise NonFiniteTraining(f"{what} became non-finite at epoch {self.global_epoch + 1} of the {self.phase} phase")
        probabilities = torch.sigmoid(logits).cpu().numpy()
        self.val_scores = {"val_loss": loss, **validation_scores(targets.cpu().numpy(), probabilities)}
        # Every rank scored the same gathered set: the mean over ranks (sync_dist) changes nothing.
        for name in LOGGED_SCORES:
            self.log(name, self.val_scores[name], prog_bar=name in ("val_loss", "val_f1_macro"), sync_dist=True)

    def _gather_validation(self, logits, targets, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole validation set on every rank, each image once, in row order.

        Under DDP each rank saw a shard, padded by repeats to equal length; scores on shards would differ from
        scores on the whole set (macro F1 does not average over shards), so the shards are gathered first.
        """
        if self.trainer.world_size > 1:
            logits, targets, rows = (self.all_gather(x).flatten(0, 1) for x in (logits, targets, rows))
        order = np.unique(rows.cpu().numpy(), return_index=True)[1]
        keep = torch.as_tensor(order, device=logits.device)
        return logits[keep], targets[keep]

    def configure_optimizers(self):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer_class = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(trainable, lr=self.lr, weight_decay=self.weight_decay)
        # The schedule spans the whole phase even when this session stops early (stop_after), so a resumed
        # run follows the very same learning rates as one that never stopped.
        steps_per_epoch = self.trainer.datamodule.train_steps_per_epoch()
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.lr, total_steps=max(1, steps_per_epoch * self.phase_epochs)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
