"""The HTML page helper: user text is escaped, numbers are formatted, images are linked relatively."""
from __future__ import annotations

import pandas as pd

from protloc.reports import html


def test_text_from_data_is_escaped(tmp_path):
    frame = pd.DataFrame({"class": ["<script>alert(1)</script>", "Rods & rings"], "f1": [0.12345, 1.0],
                          "support": [3, 4]})
    path = tmp_path / "page.html"
    html.write_page(path, "A & B", [html.table(frame), html.image("plots/f1 <1>.png", 'say "hi"')])
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "Rods &amp; rings" in page
    assert "<title>A &amp; B</title>" in page
    assert '<td class="number">0.123</td>' in page and '<td class="number">4</td>' in page
    assert 'src="plots/f1 &lt;1&gt;.png"' in page and "say &quot;hi&quot;" in page


def test_windows_separators_become_forward_slashes():
    assert 'src="report/samples/a.png"' in html.image("report\\samples\\a.png")
