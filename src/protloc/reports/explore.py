"""Dataset exploration: how imbalanced the classes are, which labels come together, what images look like,
and the per-channel intensity statistics a normalisation would use.

`explore_dataset` writes PNG plots, summary.json, channel_stats.json and an index.html showing them.
"""
from __future__ import annotations

import dataclasses
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.colors import SymLogNorm
import numpy as np
import pandas as pd

from protloc.data.images import ImageReadError, load_image
from protloc.data.readers import DatasetTable
from protloc.files import save_figure, write_json
from protloc.plots import rgb_view, subplots
from protloc.reports import html

# HPA stain order; a 1-channel image is the protein (green) stain, as data.images.convert_channels makes it.
CHANNEL_NAMES = {1: ["green (protein)"], 3: ["red (microtubules)", "green (protein)", "blue (nucleus)"],
                 4: ["red (microtubules)", "green (protein)", "blue (nucleus)", "yellow (ER)"]}
CHANNEL_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4", "yellow": "#e6b800"}
SAMPLE_GRID = 4
MAX_READ_PROBLEMS_SHOWN = 5


@dataclass
class ChannelStats:
    """Per-channel mean and std of pixel intensities on a 0..1 scale, over every pixel of the images read."""

    channels: list[str]
    mean: list[float]
    std: list[float]
    images: int
    pixels: int
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"scale": "0..1 (uint8 / 255)", "channels": self.channels, "mean": self.mean, "std": self.std,
                "images": self.images, "pixels_per_channel": self.pixels, "unreadable": self.unreadable}


def describe_source(source) -> str:
    return source if isinstance(source, str) else " + ".join(source)


def sample_rows(n_rows: int, n: int | None, seed: int) -> np.ndarray:
    """`n` row numbers chosen with `seed`, in table order; all rows when n is None or not smaller."""
    if n is None or n >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


# ---------------------------------------------------------------- numbers


def count_labels(table: DatasetTable) -> pd.DataFrame:
    """One row per class: name, count of images carrying it, and share of all images."""
    counts = table.targets.sum(axis=0).astype(int)
    return pd.DataFrame({"class": list(table.label_set.names), "images": counts,
                         "share": counts / max(len(table), 1)})


def co_occurrence(targets: np.ndarray) -> np.ndarray:
    """(C, C) counts of images carrying both classes; the diagonal holds each class's count."""
    binary = (targets > 0.5).astype(np.int64)
    return binary.T @ binary


def summarise_labels(table: DatasetTable) -> dict:
    counts = count_labels(table)
    per_image = table.targets.sum(axis=1).astype(int)
    names = table.label_set.names
    label_sets = Counter(tuple(labels) for labels in table.frame["labels"])
    return {
        "images": len(table),
        "layout": table.layout,
        "label_set": table.label_set.name,
        "labelled": table.labelled,
        "classes": [{"index": i, "name": row["class"], "images": int(row["images"]), "share": float(row["share"])}
                    for i, row in counts.iterrows()],
        "labels_per_image": {str(k): int(v) for k, v in sorted(Counter(per_image.tolist()).items())},
        "mean_labels_per_image": float(per_image.mean()) if len(per_image) else 0.0,
        "top_label_sets": [{"labels": [names[i] for i in labels], "images": n, "share": n / len(table)}
                           for labels, n in label_sets.most_common(10)],
    }


def compute_channel_stats(table: DatasetTable, channels: int, rows: np.ndarray, show_progress: bool = True) -> ChannelStats:
    """Mean and std per channel over all pixels of the chosen rows, read at the table's bit depth as training
    reads them; unreadable images are listed, not fatal."""
    from protloc.progress import progress_bar

    total = np.zeros(channels, dtype=np.float64)
    total_squares = np.zeros(channels, dtype=np.float64)
    pixels, images, unreadable = 0, 0, []
    sources = table.frame["source"]
    for row in progress_bar(rows, desc="channel statistics", unit="image", disable=not show_progress):
        try:
            image = load_image(sources.iloc[row], channels, bit_depth=table.bit_depth)
        except ImageReadError as error:
            unreadable.append(f"{describe_source(sources.iloc[row])}: {error}")
            continue
        values = image.reshape(-1, channels).astype(np.float64) / 255.0
        total += values.sum(axis=0)
        total_squares += np.square(values).sum(axis=0)
        pixels += values.shape[0]
        images += 1
    mean = total / max(pixels, 1)
    std = np.sqrt(np.maximum(total_squares / max(pixels, 1) - mean**2, 0.0))
    return ChannelStats(CHANNEL_NAMES[channels], mean.tolist(), std.tolist(), images, pixels, unreadable)


# ---------------------------------------------------------------- plots


def plot_class_frequency(counts: pd.DataFrame):
    ordered = counts.sort_values("images", ascending=True)
    figure, axes = subplots(figsize=(8, 0.8 + 0.32 * len(ordered)))
    bars = axes.barh(ordered["class"], ordered["images"], color="#4c72b0")
    labels = [f"{n}  ({share:.1%})" for n, share in zip(ordered["images"], ordered["share"])]
    axes.bar_label(bars, labels=labels, padding=3, fontsize=8)
    axes.set_xlabel("images carrying the class")
    axes.set_title(f"Class frequency ({int(counts['images'].max())} / {int(counts['images'].min())} = "
                   f"{counts['images'].max() / max(counts['images'].min(), 1):.1f}x imbalance)")
    axes.set_xlim(0, counts["images"].max() * 1.25 + 1)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


def plot_co_occurrence(matrix: np.ndarray, names: list[str]):
    import seaborn as sns

    size = len(names)
    labels = [f"{name} ({matrix[i, i]})" for i, name in enumerate(names)]
    # The diagonal (each class's own count) would swamp the colour scale; it is in the tick labels instead.
    mask = np.eye(size, dtype=bool)
    figure, axes = subplots(figsize=(2.5 + 0.55 * size, 1.5 + 0.5 * size))
    # A log-like colour scale: one dominant pair (Nucleoplasm + Cytosol in HPA) would otherwise leave the
    # rest of the matrix one dark colour. Linear below 1 so that zero stays representable.
    norm = SymLogNorm(linthresh=1, vmin=0, vmax=max(int(matrix[~mask].max(initial=1)), 1))
    sns.heatmap(matrix, mask=mask, annot=True, fmt="d", cmap="viridis", norm=norm, square=True,
                cbar_kws={"shrink": 0.7, "label": "images (log scale)"},
                xticklabels=labels, yticklabels=labels, annot_kws={"fontsize": 7 if size <= 12 else 5}, ax=axes)
    ticks = [0] + [10**k for k in range(0, len(str(int(norm.vmax)))) if 10**k <= norm.vmax]
    axes.collections[0].colorbar.set_ticks(ticks, labels=[str(t) for t in ticks])
    axes.set_title("Label co-occurrence: images carrying both classes\n(class totals in brackets)")
    axes.tick_params(axis="x", labelrotation=45, labelsize=8)
    axes.tick_params(axis="y", labelrotation=0, labelsize=8)
    for label in axes.get_xticklabels():
        label.set(horizontalalignment="right", rotation_mode="anchor")
    figure.tight_layout()
    return figure


def plot_labels_per_image(labels_per_image: dict[str, int]):
    counts = {int(k): v for k, v in labels_per_image.items()}
    xs = list(range(min(counts), max(counts) + 1))
    ys = [counts.get(x, 0) for x in xs]
    total = sum(ys)
    figure, axes = subplots(figsize=(5.5, 3.5))
    bars = axes.bar(xs, ys, color="#55a868")
    axes.bar_label(bars, labels=[f"{y}\n({y / total:.1%})" for y in ys], padding=2, fontsize=8)
    axes.set_xticks(xs)
    axes.set_xlabel("labels per image")
    axes.set_ylabel("images")
    axes.set_ylim(0, max(ys) * 1.3 + 1)
    axes.set_title("Labels per image")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


def plot_sample_grid(images: list[np.ndarray | None], titles: list[str]):
    n = len(images)
    columns = min(SAMPLE_GRID, n)
    rows = int(np.ceil(n / columns))
    figure, axes = subplots(rows, columns, figsize=(3.0 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        if image is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(rgb_view(image))
        ax.set_title(textwrap.fill(title, 28), fontsize=8)
    figure.tight_layout()
    return figure


def plot_channel_stats(stats: ChannelStats):
    colours = [CHANNEL_COLOURS[name.split()[0]] for name in stats.channels]
    short = [name.split()[0] for name in stats.channels]
    figure, (left, right) = subplots(1, 2, figsize=(7, 3))
    for ax, values, title in ((left, stats.mean, "mean"), (right, stats.std, "std")):
        bars = ax.bar(short, values, color=colours)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
        ax.set_title(f"Per-channel {title} (0..1 scale)")
        ax.set_ylim(0, max(max(values), 1e-3) * 1.25)
        ax.spines[["top", "right"]].set_visible(False)
    figure.suptitle(f"Intensity statistics over {stats.images} images", fontsize=10)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- the whole report


def read_samples(table: DatasetTable, rows: np.ndarray, channels: int) -> tuple[list[np.ndarray | None], list[str]]:
    images, titles = [], []
    names = table.label_set.names
    for row in rows:
        record = table.frame.iloc[row]
        try:
            images.append(load_image(record["source"], channels, bit_depth=table.bit_depth))
        except ImageReadError:
            images.append(None)
        label_text = ", ".join(names[i] for i in record["labels"]) if table.labelled else "unlabelled"
        titles.append(f"{record['id']}: {label_text}")
    return images, titles


def explore_dataset(table: DatasetTable, out_dir: str | Path, *, channels: int = 3, max_images: int | None = None,
                    seed: int = 0, source_name: str = "", show_progress: bool = True) -> dict:
    """Write the exploration of `table` into `out_dir`; returns the summary written to summary.json. Images are
    read at the table's bit depth, or the one training would detect for it (intensity.detect_bit_depth)."""
    from protloc.data.intensity import detect_bit_depth

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    detected = table.bit_depth is None
    table = dataclasses.replace(table, bit_depth=table.bit_depth or detect_bit_depth(table))
    depth = f"{table.bit_depth}-bit ({'detected as training would' if detected else 'as given'})"
    blocks = [html.paragraph(f"{source_name or table.root}: {len(table)} images, layout {table.layout}, "
                             f"label set {table.label_set.name} ({len(table.label_set)} classes), {depth}.")]

    summary = summarise_labels(table) if table.labelled else {
        "images": len(table), "layout": table.layout, "label_set": table.label_set.name, "labelled": False}
    blocks.append(html.heading("Labels"))
    if table.labelled:
        counts = count_labels(table)
        save_figure(out_dir / "class_frequency.png", plot_class_frequency(counts))
        save_figure(out_dir / "co_occurrence.png",
                    plot_co_occurrence(co_occurrence(table.targets), list(table.label_set.names)))
        save_figure(out_dir / "labels_per_image.png", plot_labels_per_image(summary["labels_per_image"]))
        blocks += [
            html.image("class_frequency.png", "Images per class, with their share of all images."),
            html.table(counts.assign(share=[f"{s:.1%}" for s in counts["share"]])),
            html.image("co_occurrence.png", "How often two classes label the same image."),
            html.image("labels_per_image.png",
                       f"Mean {summary['mean_labels_per_image']:.2f} labels per image."),
            html.heading("Most common label sets", 3),
            html.table(pd.DataFrame({"labels": [", ".join(s["labels"]) for s in summary["top_label_sets"]],
                                     "images": [s["images"] for s in summary["top_label_sets"]],
                                     "share": [f"{s['share']:.1%}" for s in summary["top_label_sets"]]})),
        ]
    else:
        blocks.append(html.note("This dataset has no labels: class frequency, co-occurrence and labels-per-image "
                                "plots are skipped."))

    sample = sample_rows(len(table), SAMPLE_GRID * SAMPLE_GRID, seed)
    images, titles = read_samples(table, sample, channels)
    save_figure(out_dir / "samples.png", plot_sample_grid(images, titles))
    blocks += [html.heading("Sample images"),
               html.image("samples.png", f"{len(sample)} images chosen with seed {seed}, shown as RGB composites.")]

    stats = compute_channel_stats(table, channels, sample_rows(len(table), max_images, seed), show_progress)
    write_json(out_dir / "channel_stats.json", stats.to_dict())
    blocks.append(html.heading("Channel intensities"))
    if stats.images:
        save_figure(out_dir / "channel_stats.png", plot_channel_stats(stats))
        blocks += [
            html.table(pd.DataFrame({"channel": stats.channels, "mean": stats.mean, "std": stats.std}), float_digits=4),
            html.image("channel_stats.png", f"Over {stats.images} images ({stats.pixels} pixels each channel)."),
        ]
    else:
        blocks.append(html.note("No image could be read, so there are no channel statistics."))
    if stats.unreadable:
        shown = stats.unreadable[:MAX_READ_PROBLEMS_SHOWN]
        more = len(stats.unreadable) - len(shown)
        blocks.append(html.note(f"{len(stats.unreadable)} images could not be read"
                                + (f" (first {len(shown)} below, {more} more in channel_stats.json)" if more else "")))
        blocks.append(html.code("\n".join(shown)))

    summary["bit_depth"] = table.bit_depth
    summary["channel_stats"] = "channel_stats.json"
    write_json(out_dir / "summary.json", summary)
    html.write_page(out_dir / "index.html", f"Dataset exploration: {source_name or table.root}", blocks)
    return summary
