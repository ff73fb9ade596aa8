"""The blocks a report is made of (headings, paragraphs, bullets, tables, figures, collapsible details) and the
two renderers that walk them: Markdown (figures as image links) and an HTML body (figures as inline SVG, <details>
for collapsible parts, no script)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Heading:
    text: str
    anchor: str = ""
    level: int = 2


@dataclass
class Para:
    text: str
    strong: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    caption: str


@dataclass
class Details:
    summary: str
    blocks: list[Any] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(items: list[Any], images: dict[str, str], depth: int = 0) -> str:
    lines: list[str] = []
    for b in items:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [f"**{b.text}**" if b.strong else b.text, ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines += ["| " + " | ".join(map(_md_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows] + [""]
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({images[b.name]})" if b.name in images else f"({b.caption} Not drawn.)", ""]
        elif isinstance(b, Details):
            lines += [("#### " if depth == 0 else "- **") + _md_cell(b.summary) + ("" if depth == 0 else "**"), ""]
            lines.append(to_markdown(b.blocks, images, depth + 1))
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape `text`, turning `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html_body(items: list[Any], svgs: dict[str, str]) -> str:
    out: list[str] = []
    for b in items:
        if isinstance(b, Heading):
            out.append(f'<h{b.level} id="{b.anchor}">{_inline(b.text)}</h{b.level}>' if b.anchor else
                       f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f'<p class="verdict">{_inline(b.text)}</p>' if b.strong else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure) and b.name in svgs:
            out.append(f'<figure id="plot-{b.name}" class="plot">{svgs[b.name]}<figcaption>{_inline(b.caption)}'
                       "</figcaption></figure>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{_inline(b.summary)}</summary>{to_html_body(b.blocks, svgs)}</details>")
    return "\n".join(out)


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
  color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
.verdict{font-size:1.1em;font-weight:600;background:#fff7e6;border-left:4px solid #dd8452;padding:.6em .8em}
details{margin:.3em 0 .3em 1em}
summary{cursor:pointer}
figure.plot svg{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
code{background:#f3f3f3;padding:0 .2em}
nav a{margin-right:1em}
"""
