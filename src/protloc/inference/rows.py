"""A table's per-row outputs: what predicting a table gives back (TableResult), and how batches' (or processes')
outputs are put back at their rows (RowCollector), one process or several (distributed.py) alike."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from protloc.inference.engines import OUTLIER_SCORE


class TableResult(NamedTuple):
    """Per row of a dataset, in its order: the model's outputs and why an image could not be read."""

    outputs: np.ndarray  # (N, width) float32: probabilities or features; meaningless where a problem is
    problems: list[str]  # "" for an image that was read, else 'PATH: why'
    # Other per-image arrays an engine gives beside its outputs (named_outputs), each (N, ...) in row order.
    extras: dict[str, np.ndarray] = {}

    @property
    def ok(self) -> np.ndarray:
        return np.array([not problem for problem in self.problems], dtype=bool)

    @property
    def outlier_scores(self) -> np.ndarray | None:
        """(N,) float32 beside probabilities, where the run has an outlier description (inference/outliers.py)."""
        return self.extras.get(OUTLIER_SCORE)

    @property
    def unreadable(self) -> list[str]:
        return [problem for problem in self.problems if problem]


def named_outputs(outputs) -> dict[str, torch.Tensor]:
    """A batch's outputs as named per-image arrays: a tensor is "outputs"; an engine that gives more per image
    returns a dict, its model outputs under "outputs" and the others (a score, say) beside them. Every name flows
    through both ways of predicting a table (one process, or several: distributed.py) into TableResult."""
    return dict(outputs) if isinstance(outputs, dict) else {"outputs": outputs}


class RowCollector:
    """Named per-image arrays of batches, each row put at its place in the table: one process's batches, or every
    process's shares of a table (distributed.py)."""

    def __init__(self, rows: int, width: int | None = None):
        self.total = rows
        # With a known width (the classes), an empty table still gives (0, width) outputs.
        self.arrays = {} if width is None else {"outputs": np.zeros((rows, width), dtype=np.float32)}
        self.problems = [""] * rows
        self.seen = np.zeros(rows, dtype=bool)
        self.pieces: dict[str, list[np.ndarray]] | None = None  # see add_pieces

    def add(self, rows: np.ndarray, arrays: dict[str, np.ndarray], problems) -> None:
        for name, values in arrays.items():
            if name not in self.arrays:
                self.arrays[name] = np.zeros((self.total, *values.shape[1:]), dtype=values.dtype)
            self.arrays[name][rows] = values
        for row, problem in zip(rows.tolist(), problems):
            self.problems[row] = str(problem)
        self.seen[rows] = True

    def add_pieces(self, pieces: dict[str, np.ndarray]) -> None:
        """Arrays of parts of rows, any number of parts per row (the cells of an image), "row" naming each part's row;
        a row's parts arrive together and in order."""
        if self.pieces is None:
            self.pieces = {}
        for name, values in pieces.items():
            self.pieces.setdefault(name, []).append(values)

    def pieces_by_row(self) -> list[dict[str, np.ndarray]]:
        """Per row, its parts' arrays (empty where a row has none), in their order."""
        by_row = [{} for _ in range(self.total)]
        if not self.pieces:
            return by_row
        joined = {name: np.concatenate(parts) for name, parts in self.pieces.items()}
        rows = joined.pop("row")
        order = np.argsort(rows, kind="stable")  # keeps each row's parts in their order
        starts = np.searchsorted(rows[order], np.arange(self.total + 1))
        for row in np.unique(rows):
            chosen = order[starts[row]:starts[row + 1]]
            by_row[row] = {name: values[chosen] for name, values in joined.items()}
        return by_row

    def result(self) -> TableResult:
        extras = {name: values for name, values in self.arrays.items() if name != "outputs"}
        outputs = self.arrays.get("outputs", np.zeros((0, 0), dtype=np.float32))
        return TableResult(outputs, self.problems, extras)
