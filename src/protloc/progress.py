"""Progress bars for people and for logs. Every bar writes to stderr, so stdout holds results alone. At a
terminal a bar redraws in place; redirected to a file it writes nothing while it runs and one plain line when it
ends (no carriage returns, no bar repeated at each refresh)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def stderr_is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


class LineWhenDone:
    """For a tqdm class: no redraws, the finished bar written once, as a line, when it closes."""

    _closing = False

    def display(self, msg=None, pos=None) -> bool:
        if self._closing and msg is None:
            self.fp.write(self.__str__())  # tqdm's close() ends it with a newline
        return True

    def close(self) -> None:
        self._closing = True
        super().close()


class LineTqdm(LineWhenDone, tqdm):
    pass


def bar_class(base: type = tqdm) -> type:
    """`base` at a terminal; off one, `base` writing one line when done."""
    if stderr_is_terminal():
        return base
    return LineTqdm if base is tqdm else type(f"Line{base.__name__}", (LineWhenDone, base), {})


def progress_bar(iterable=None, *, disable: bool = False, **options) -> tqdm:
    """A tqdm bar on stderr: redrawn at a terminal, one line when done elsewhere. `leave` is forced on off a
    terminal, where a bar that vanishes at its end would say nothing at all."""
    if not stderr_is_terminal():
        options["leave"] = True
    return bar_class()(iterable, file=sys.stderr, disable=disable, **options)
