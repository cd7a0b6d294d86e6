"""Progress bars: on stderr; redirected (not a terminal), one line per loop and no carriage returns."""
from __future__ import annotations

from protloc.progress import progress_bar


def test_a_bar_off_a_terminal_writes_one_line_when_done(capsys):
    for _ in progress_bar(range(500), desc="predict", unit="img", mininterval=0):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    assert "\r" not in err and err.count("\n") == 1
    assert err.startswith("predict: 100%") and "500/500" in err


def test_a_bar_that_would_vanish_still_leaves_its_line_in_a_log(capsys):
    with progress_bar(total=3, desc="predict", leave=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err.splitlines()[0].startswith("predict: 100%")


def test_a_disabled_bar_writes_nothing(capsys):
    for _ in progress_bar(range(3), desc="predict", disable=True):
        pass
    assert capsys.readouterr() == ("", "")
