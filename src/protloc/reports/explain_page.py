"""The page over `protloc explain`'s figures (and the run report's samples): what was predicted, true and missed
per image, then each image's figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protloc.reports import html


def class_list(indices: list[int] | None, names: list[str]) -> str:
    return ", ".join(names[i] for i in indices or []) or "(none)"


def explanation_blocks(explanations: list, config, prefix: str = "") -> list[str]:
    """A table of what was predicted (and what is true and missed, when known), then the figures."""
    names = config.label_names
    labelled = any(e.true is not None for e in explanations)
    summary = pd.DataFrame({"image": [e.id for e in explanations]})
    if labelled:
        summary["true"] = [class_list(e.true, names) for e in explanations]
    summary["predicted"] = [class_list(e.predicted, names) for e in explanations]
    if labelled:
        summary["missed"] = [class_list(e.missed, names) if e.missed else "" for e in explanations]
    summary["top probability"] = [f"{names[int(np.argmax(e.probabilities))]} {e.probabilities.max():.2f}"
                                  for e in explanations]
    blocks = [html.table(summary)]
    for e in explanations:
        caption = f"{e.id}: " + (f"true {class_list(e.true, names)}; " if e.true is not None else "")
        caption += f"predicted {class_list(e.predicted, names)}"
        caption += f"; missed {class_list(e.missed, names)}" if e.missed else ""
        blocks.append(html.image(prefix + e.file_name, caption))
    return blocks


def write_explanation_page(explanations: list, config, out_dir: str | Path, maps: str = "",
                           more: list[str] | None = None) -> None:
    """index.html over the figures; `maps` is `describe_maps`'s text, `more` blocks go last (the cells)."""
    blocks = [html.paragraph("Images are shown as the model saw them (resized), beside their protein stain alone."),
              *([html.paragraph(maps)] if maps else [])]
    html.write_page(Path(out_dir) / "index.html", "Explanations",
                    blocks + explanation_blocks(explanations, config) + list(more or []))
