"""Cross-cutting parts of training: reseeding each epoch, and the history behind metrics.csv, curves.png and lr.png."""
from __future__ import annotations

import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class SeedEachEpoch(L.Callback):
    """Reseed the process's RNGs at the start of each training epoch from (seed, epoch, rank).

    The model's own randomness (dropout) then depends on the epoch alone, not on everything the process did
    before: a run stopped and resumed from a checkpoint repeats exactly the epochs an uninterrupted run would
    have trained. (Augmentations are seeded per image by the datamodule.)
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        value = epoch_seed(self.seed, pl_module.global_epoch, trainer.global_rank)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)


class TrainingHistory(L.Callback):
    """One row of scores per epoch and the learning rate of every step, across both phases.

    Its state travels in Lightning's checkpoints, so a resumed run keeps the history of the epochs before
    the stop. Rank 0 rewrites `metrics_path` after each epoch, so a long run can be watched as it goes.
    """

    def __init__(self, metrics_path: str | Path | None = None):
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.rows: list[dict] = []
        self.learning_rates: list[list] = []  # [phase, lr] per optimiser step
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._started = time.perf_counter()
        self._train_seconds: float | None = None
        self._images = 0
        self._loss_sum: torch.Tensor | float = 0.0

    def state_dict(self) -> dict:
        # Plain lists, floats and strings: checkpoints load with torch.load(weights_only=True).
        return {"rows": self.rows, "learning_rates": self.learning_rates}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])
        self.learning_rates = list(state_dict["learning_rates"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._reset_epoch()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self.learning_rates.append([pl_module.phase, float(trainer.optimizers[0].param_groups[0]["lr"])])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        count = len(batch[0])
        self._images += count
        self._loss_sum = self._loss_sum + outputs["loss"].detach().float() * count

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        # The first validation of an epoch ends its training loop: speed counts the training loop only.
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        seconds = self._train_seconds if self._train_seconds is not None else time.perf_counter() - self._started
        totals = torch.tensor([float(self._images), float(self._loss_sum)], dtype=torch.float64, device=pl_module.device)
        images, loss_sum = (float(x) for x in trainer.strategy.reduce(totals, reduce_op="sum"))
        scores = pl_module.val_scores
        row = {
            "epoch": pl_module.global_epoch + 1,
            "phase": pl_module.phase,
            "train_loss": loss_sum / max(images, 1.0),
            "val_loss": scores["val_loss"],
            "val_f1_macro": scores["val_f1_macro"],
            "val_f1_micro": scores["val_f1_micro"],
            "val_f1_samples": scores["val_f1_samples"],
            "val_fscore_course": scores["val_fscore_course"],
            "lr": self.learning_rates[-1][1] if self.learning_rates else float("nan"),
            "images_per_second": images / max(seconds, 1e-9),
        }
        for name, value in zip(pl_module.label_names, scores["val_f1_per_class"]):
            row[f"f1_{name}"] = float(value)
        self.rows.append(row)
        if self.metrics_path is not None and trainer.is_global_zero:
            from protloc.files import write_csv

            write_csv(self.metrics_path, self.metrics_frame())

    def metrics_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def learning_rate_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.learning_rates, columns=["phase", "lr"])
        frame.insert(0, "step", np.arange(1, len(frame) + 1))
        return frame
