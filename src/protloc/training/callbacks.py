"""Cross-cutting parts of training: reseeding each epoch, the history behind metrics.csv, curves.png and lr.png,
checkpoints that survive a moved run folder, and a progress bar of one line per epoch (on stderr)."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from protloc.files import write_csv
from protloc.progress import bar_class


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
            "val_fscore_course_notebook": scores["val_fscore_course_notebook"],
            "lr": self.learning_rates[-1][1] if self.learning_rates else float("nan"),
            "images_per_second": images / max(seconds, 1e-9),
        }
        for name, value in zip(pl_module.label_names, scores["val_f1_per_class"]):
            row[f"f1_{name}"] = float(value)
        self.rows.append(row)
        if self.metrics_path is not None and trainer.is_global_zero:
            write_csv(self.metrics_path, self.metrics_frame())

    def metrics_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def learning_rate_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.learning_rates, columns=["phase", "lr"])
        frame.insert(0, "step", np.arange(1, len(frame) + 1))
        return frame


class RelocatableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose state still applies after the run folder was moved or copied.

    Lightning's keeps its record (best score, checkpoint paths) only when the folder is where it was; elsewhere
    it forgets the best score, and the next epoch overwrites best.ckpt whatever its score (a moved run then
    ended with other weights than one never moved). Here the recorded paths move along with the folder.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        before, now = state_dict.get("dirpath"), self.dirpath
        if before and now and before != now:
            state_dict = relocate(state_dict, before, now)
        super().load_state_dict(state_dict)

    def _generate_state_key(self, **kwargs) -> str:
        # Keyed as a plain ModelCheckpoint: checkpoints written before this class existed resume too.
        return f"ModelCheckpoint{kwargs!r}"


def relocate(state: dict, before: str, now: str) -> dict:
    """A ModelCheckpoint state with the paths under `before` moved under `now`."""

    def move(path):
        if isinstance(path, str) and (path == before or path.startswith(before + os.sep)):
            return now + path[len(before):]
        return path

    state = {key: move(value) for key, value in state.items()}
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {move(path): score for path, score in state["best_k_models"].items()}
    return state


class RunProgressBar(TQDMProgressBar):
    """One line per epoch, numbered over the whole run ("epoch 2/6 finetune"), ending with its validation scores.

    Validation gets no bar of its own: a second bar under the first leaves residue in logs, and validation
    is short beside an epoch of training.
    """

    def __init__(self, run_epochs: int):
        super().__init__(leave=True)
        self.run_epochs = run_epochs
        self._validated = False  # whether this epoch's validation scores exist yet

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer: L.Trainer, pl_module) -> dict:
        # Until this epoch validates, the scores Lightning holds are the previous epoch's: not shown on this one.
        metrics = super().get_metrics(trainer, pl_module)
        return metrics if self._validated else {key: value for key, value in metrics.items() if not key.startswith("val_")}

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        self._validated = True
        super().on_validation_end(trainer, pl_module)

    def on_train_start(self, *_) -> None:
        # Each epoch opens its own bar (leave=True); an opening one here would be left over, empty.
        self.train_progress_bar = Tqdm(disable=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._validated = False
        # Opened with its final description and length, so that its first line already says which epoch it is.
        # On stderr with every other bar; off a terminal, one line when the epoch ends (progress.py).
        self.train_progress_bar = bar_class(Tqdm)(
            desc=f"epoch {pl_module.global_epoch + 1}/{self.run_epochs} {pl_module.phase}",
            total=convert_inf(self.total_train_batches), disable=self.is_disabled, leave=True, dynamic_ncols=True,
            file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT,
        )
