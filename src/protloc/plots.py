"""Figures without pyplot, what to show of an image (`rgb_view`), and the plots of training that reports show too:
loss and F1 per epoch with the phases marked, the learning rate per step, runs compared.

Every protloc figure is a free-standing `matplotlib.figure.Figure`: no pyplot state and no backend chosen, so
importing or calling protloc leaves a notebook's backend and open figures as they were. `files.save_figure`
renders one to PNG with the Agg canvas.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

def rgb_view(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> what to show: the RGB composite (ER stain left out) or a grey image."""
    if image.shape[-1] >= 3:
        return image[:, :, :3]
    return np.repeat(image[:, :, :1], 3, axis=-1)


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], layout: str | None = None, **options):
    """(figure, axes) as `pyplot.subplots` makes them (squeeze, sharex, sharey, gridspec_kw...), on a new
    free-standing Figure."""
    figure = Figure(figsize=figsize, layout=layout)
    return figure, figure.subplots(nrows, ncols, **options)


PHASE_COLOURS = {"frozen": "#dce9f5", "finetune": "#ffffff"}


def mark_frozen_phase(ax, metrics: pd.DataFrame) -> None:
    """Shade the frozen-backbone epochs and draw a line where fine-tuning starts."""
    frozen = metrics.loc[metrics["phase"] == "frozen", "epoch"]
    if frozen.empty:
        return
    end = frozen.max() + 0.5
    ax.axvspan(frozen.min() - 0.5, end, color=PHASE_COLOURS["frozen"], zorder=0, label="backbone frozen")
    if (metrics["phase"] == "finetune").any():
        ax.axvline(end, color="grey", linestyle="--", linewidth=1, label="fine-tuning starts")


def plot_training_curves(metrics: pd.DataFrame):
    """Two panels against epoch: train and validation loss; validation F1 (macro, micro, samples) at 0.5."""
    with sns.axes_style("whitegrid"):
        figure, (loss_ax, f1_ax) = subplots(1, 2, figsize=(11, 4))
    for ax in (loss_ax, f1_ax):
        mark_frozen_phase(ax, metrics)
    loss_ax.plot(metrics["epoch"], metrics["train_loss"], marker="o", label="train")
    loss_ax.plot(metrics["epoch"], metrics["val_loss"], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    for column, label in (("val_f1_macro", "macro"), ("val_f1_micro", "micro"), ("val_f1_samples", "samples")):
        f1_ax.plot(metrics["epoch"], metrics[column], marker="o", label=f"F1 {label}")
    best = metrics.loc[metrics["val_f1_macro"].idxmax()]
    f1_ax.scatter([best["epoch"]], [best["val_f1_macro"]], s=120, facecolors="none", edgecolors="black", zorder=5,
                  label=f"best (epoch {int(best['epoch'])})")
    f1_ax.set(xlabel="epoch", ylabel="F1 at threshold 0.5", title="Validation F1", ylim=(0, 1))
    for ax in (loss_ax, f1_ax):
        ax.set_xticks(metrics["epoch"])
        ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_learning_rate(learning_rates: pd.DataFrame):
    """The learning rate of every optimiser step: one one-cycle per phase."""
    with sns.axes_style("whitegrid"):
        figure, ax = subplots(figsize=(8, 3.5))
    for phase, steps in learning_rates.groupby("phase", sort=False):
        ax.plot(steps["step"], steps["lr"], label=phase)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="One-cycle learning rate per phase")
    ax.legend()
    figure.tight_layout()
    return figure


def plot_run_comparison(histories: list[tuple[str, pd.DataFrame]], metric: str = "val_f1_macro"):
    """`metric` against epoch for several runs on one chart; `histories` is (legend label, metrics.csv frame)."""
    frames = [history.assign(run=label) for label, history in histories]
    data = pd.concat(frames, ignore_index=True)
    with sns.axes_style("whitegrid"):
        figure, ax = subplots(figsize=(8, 4.5))
    sns.lineplot(data=data, x="epoch", y=metric, hue="run", marker="o", ax=ax)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.set_xticks(sorted(data["epoch"].unique()))
    ax.legend(title=None, fontsize="small")
    figure.tight_layout()
    return figure
