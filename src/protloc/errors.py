"""Errors a user can fix. The CLI prints them as short lines and exits 2, never a traceback."""
from __future__ import annotations


class ProtlocError(Exception):
    """A problem with the user's input, files or options, described in one or more lines."""

    def __init__(self, *lines: str):
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


MAX_LISTED = 20  # problem lines shown before "... and N more"


def listed(problems: list[str], limit: int = MAX_LISTED) -> list[str]:
    """The first `limit` problem lines, then '... and N more' when there are more."""
    if len(problems) <= limit:
        return list(problems)
    return [*problems[:limit], f"... and {len(problems) - limit} more"]


class DataError(ProtlocError):
    """One or more problems found in a dataset: each line names the file, the row and what was expected."""


class WeightsUnavailableError(ProtlocError):
    """Pretrained weights were asked for but cannot be had offline."""
