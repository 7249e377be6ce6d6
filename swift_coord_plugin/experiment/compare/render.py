"""The summary's model and its two renderings (no ms-swift import): a ``Section`` holds paragraphs, tables and
pictures in reading order; ``render_markdown`` (``summary.md``), ``render_html`` (``index.html``) and
``format_summary`` (the markdown of a ``compare_runs`` result).
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple


@dataclass
class Section:
    """A titled part of the summary: paragraphs, tables and pictures in reading order (``blocks``), rendered
    the same way to markdown and HTML."""

    title: str
    blocks: List[Tuple[str, Any]] = field(default_factory=list)  # ("text", str) | ("table", (head, rows)) | ("image", (caption, rel))

    def text(self, t: str) -> None:
        self.blocks.append(("text", t))

    def table(self, head: List[str], rows: List[List[str]]) -> None:
        self.blocks.append(("table", (head, rows)))

    def image(self, caption: str, rel: str) -> None:
        self.blocks.append(("image", (caption, rel)))

    def figure(self, drawn: bool, png: str, key: str, caption: str, plots: Dict[str, str]) -> bool:
        """Show ``png`` (and list it in ``plots`` under ``key``) if the plotting call ``drawn`` it."""
        if drawn:
            plots[key] = os.path.basename(png)
            self.image(caption, plots[key])
        return drawn

    @property
    def images(self) -> List[Tuple[str, str]]:
        return [b for k, b in self.blocks if k == "image"]


def render_markdown(sections: Sequence[Section]) -> str:
    lines = ["# Ablation comparison", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        prev = None
        for kind, b in sec.blocks:
            cur = "item" if kind == "text" and b.startswith("- ") else kind
            if prev is not None and (prev != cur or cur in ("table", "text")) and lines[-1] != "":
                lines.append("")
            if kind == "text":
                lines.append(b)
            elif kind == "table":
                head, rows = b
                lines.append("| " + " | ".join(head) + " |")
                lines.append("|" + "---|" * len(head))
                lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            else:
                lines.append(f"![{b[0]}]({b[1]})")
            prev = cur
        lines.append("")
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Escape, then the two markdown marks the summary uses: **bold** and `code`."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(sections: Sequence[Section]) -> str:
    """One static page (no script, no server) with the same sections, tables and pictures as summary.md."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>Ablation comparison</title>",
           "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
           "margin:1em 0;font-size:13px}td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}"
           "th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
           "figure{margin:0 0 1em 0}strong{color:#b00}</style></head><body>",
           "<h1>Ablation comparison</h1>", "<nav><ul>"]
    for i, sec in enumerate(sections):
        out.append(f"<li><a href=\"#s{i}\">{html.escape(sec.title)}</a></li>")
    out.append("</ul></nav>")
    for i, sec in enumerate(sections):
        out.append(f"<h2 id=\"s{i}\">{html.escape(sec.title)}</h2>")
        items: List[str] = []
        for kind, b in sec.blocks:
            if kind == "text" and b.startswith("- "):
                items.append(f"<li>{_inline(b[2:])}</li>")
                continue
            if items:
                out += ["<ul>"] + items + ["</ul>"]
                items = []
            if kind == "text":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "table":
                head, rows = b
                out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
                out.append("</table>")
            else:
                caption, rel = b
                src = html.escape(rel.replace(os.sep, "/"), quote=True)
                out.append(f"<figure><a href=\"{src}\"><img src=\"{src}\" alt=\"{html.escape(caption, quote=True)}\">"
                           f"</a><figcaption>{html.escape(caption)}</figcaption></figure>")
        if items:
            out += ["<ul>"] + items + ["</ul>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def format_summary(summary: Dict[str, Any]) -> str:
    """The markdown of a ``compare_runs`` result (what ``summary.md`` holds)."""
    return render_markdown(summary["sections"])
