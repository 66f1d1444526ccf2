"""The report's blocks rendered as Markdown and as self-contained HTML (figures embedded as
base64 PNG), from the same blocks so the two never disagree.

A block is a tuple: ``("h1"|"h2"|"p", text)`` | ``("ul", [text])`` | ``("table", headers, rows)``
| ``("img", stem, caption)``. Text may use ``**bold**`` and ```code```, rendered by both outputs.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

__all__ = ["Block", "render_markdown", "render_html"]

Block = tuple


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b[0] == "h1":
            out.append(f"# {b[1]}\n")
        elif b[0] == "h2":
            out.append(f"## {b[1]}\n")
        elif b[0] == "p":
            out.append(f"{b[1]}\n")
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]) + "\n")
        elif b[0] == "table":
            _, headers, rows = b
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |",
                     "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines) + "\n")
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]}.png)\n")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"<strong>(supported|not supported|inconclusive)</strong>",
                  lambda m: f'<strong class="{_VERDICT_CLASS[m[1]]}">{m[1]}</strong>', text)


_VERDICT_CLASS = {"supported": "ok", "not supported": "no", "inconclusive": "maybe"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:70rem;margin:2rem auto;
padding:0 1rem;line-height:1.5;color:#222}
table{border-collapse:collapse;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;
text-align:right}td:nth-child(2),th:nth-child(2){text-align:left}th{background:#f2f2f2}
code{background:#f4f4f4;padding:0 .2rem}figure{margin:1.5rem 0}img{max-width:100%}
li{margin:.4rem 0}figcaption{color:#555;font-size:.9rem}
strong.ok{color:#17703a}strong.no{color:#a8201a}strong.maybe{color:#8a6d00}
"""


def render_html(blocks: list[Block], plots: Mapping[str, bytes]) -> str:
    """A self-contained page: inline CSS, figures as ``data:image/png;base64`` URIs."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "ffnlab report")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b[0] in ("h1", "h2"):
            out.append(f"<{b[0]}>{_inline_html(b[1])}</{b[0]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            _, headers, rows = b
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                           for r in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "img" and b[1] in plots:
            data = base64.b64encode(plots[b[1]]).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b[2])}" '
                       f'src="data:image/png;base64,{data}"><figcaption>'
                       f"{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)
