"""A self-contained HTML page of headings, paragraphs, tables and PNG images.

Pages link their PNGs by relative path, so a report folder can be moved or zipped whole. Every piece of
text goes through html.escape: class names and file names come from users' data.
"""
from __future__ import annotations

import html
from pathlib import Path

from protloc.files import write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; margin: .5em 0; border: 1px solid #eee; }
p.note { color: #666; font-style: italic; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: .9em; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.gallery figure { width: 200px; margin: 0; }
.gallery img { width: 100%; margin: 0; }
dl { margin: .5em 0; }
dt { font-weight: 600; margin-top: .4em; }
dd { margin-left: 1.5em; color: #333; }
"""


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def note(text: str) -> str:
    """A remark about something left out, e.g. a plot skipped because the data has no labels."""
    return f'<p class="note">{html.escape(text)}</p>'


def code(text: str) -> str:
    return f"<pre><code>{html.escape(text)}</code></pre>"


def image(src: str, caption: str = "") -> str:
    """A PNG by relative path (forward slashes, so the page works on any OS)."""
    src = src.replace("\\", "/")
    figure = f'<img src="{html.escape(src, quote=True)}" alt="{html.escape(caption or src, quote=True)}">'
    if caption:
        figure += f"<figcaption>{html.escape(caption)}</figcaption>"
    return f"<figure>{figure}</figure>"


def gallery(pictures: list[tuple[str, str]]) -> str:
    """Small pictures side by side, each (relative path, caption)."""
    return '<div class="gallery">' + "".join(image(src, caption) for src, caption in pictures) + "</div>"


def definitions(terms: list[tuple[str, str]]) -> str:
    """Terms and what they mean, as a definition list."""
    return "<dl>" + "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(meaning)}</dd>" for term, meaning in terms) + "</dl>"


def _cell(value, float_digits: int) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return f'<td class="number">{int(value)}</td>'
    if isinstance(value, float) or (hasattr(value, "dtype") and value.dtype.kind == "f"):
        return f'<td class="number">{float(value):.{float_digits}f}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(frame, float_digits: int = 3) -> str:
    """A pandas DataFrame as an HTML table (its index is left out; put what matters in a column)."""
    header = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = [
        "<tr>" + "".join(_cell(value, float_digits) for value in row) + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    ]
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href.replace(chr(92), "/"), quote=True)}">{html.escape(text)}</a>'


def paragraph_with_link(text: str, href: str, link_text: str) -> str:
    """A sentence ending in a link, e.g. 'Per-image predictions: predictions.csv'."""
    return f"<p>{html.escape(text)} {link(href, link_text)}</p>"


def render_page(title: str, blocks: list[str]) -> str:
    """The page: `blocks` are pieces made by the functions above (already escaped)."""
    body = "\n".join(blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{heading(title, 1)}\n{body}\n</body>\n</html>\n"
    )


def write_page(path: str | Path, title: str, blocks: list[str]) -> None:
    write_text(path, render_page(title, blocks))
