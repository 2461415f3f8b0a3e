"""The report as a document (sections of paragraphs, lists, tables and figures), written as Markdown and HTML.

The Markdown page is for the repository: it links only the figures' PNG
files beside it (the PDFs and the HTML page are not committed) and names
run directories without linking them. The HTML page (Jinja2) adds a table of
contents, tables sortable by any column, links to the run directories and
the figures' PDFs; figures are files beside it, not embedded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import jinja2
from markupsafe import Markup, escape


@dataclass
class Cell:
    text: str
    sort: float | str | None = None     # what the HTML page sorts by (default: the text)
    link: str | None = None             # HTML only: where the cell links to


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    numeric: list[bool]                 # per column: right-aligned, sorted as numbers


@dataclass
class Figure:
    heading: str
    caption: str
    png: str
    pdf: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)      # str (a paragraph), list[str] (a list), Table, Figure, Section

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    @property
    def subsections(self) -> list["Section"]:
        return [b for b in self.blocks if isinstance(b, Section)]


# --- cells ----------------------------------------------------------------------------------------------

FORMATS = {"rate": "{:,.0f}", "pct": "{:.2%}", "ms": "{:.1f}", "f1": "{:.1f}", "f2": "{:.2f}", "int": "{:.0f}",
           "ratio": "{:.0%}", "num": "{:.3g}"}


def number(value, kind: str, ci: float | None = None) -> Cell:
    """A number as the tables show it: '1,234', and '1,234 ± 56' with a 95% confidence half-width."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("-", math.nan)
    text = FORMATS[kind].format(value)
    if ci is not None and isinstance(ci, float) and math.isfinite(ci):
        text += " ± " + FORMATS[kind].format(ci)
    return Cell(text, float(value))


def text(value, link: str | None = None) -> Cell:
    return Cell(str(value), link=link)


# --- Markdown -------------------------------------------------------------------------------------------

def markdown(title: str, intro: list, sections: list[Section]) -> str:
    parts = [f"# {title}", *(_md_block(b, 2) for b in intro)]
    parts += [_md_block(s, 2) for s in sections]
    return "\n\n".join(parts) + "\n"


def _md_block(block, level: int) -> str:
    if isinstance(block, Section):
        inner = [_md_block(b, level + 1) for b in block.blocks]
        return "\n\n".join([f"{'#' * level} {block.title}", *inner])
    if isinstance(block, str):
        return block
    if isinstance(block, list):
        return "\n".join(f"- {item}" for item in block)
    if isinstance(block, Table):
        return markdown_table(block)
    if isinstance(block, Figure):
        return f"![{block.heading}]({block.png})\n\n{block.caption}"
    raise TypeError(f"not a report block: {block!r}")


def markdown_table(table: Table) -> str:
    def row(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    align = "|" + "|".join("--:" if n else "---" for n in table.numeric) + "|"
    return "\n".join([row(table.headers), align, *(row([c.text for c in r]) for r in table.rows)])


# --- HTML -----------------------------------------------------------------------------------------------

def _inline(value: str) -> Markup:
    """Escaped text with `code` spans."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(value))))


def _sort_key(cell: Cell) -> str:
    if isinstance(cell.sort, float):
        return "" if math.isnan(cell.sort) else repr(cell.sort)
    return cell.text if cell.sort is None else str(cell.sort)


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
_ENV.filters["inline"] = _inline
_ENV.filters["sort_key"] = _sort_key
_ENV.tests["section"] = lambda b: isinstance(b, Section)
_ENV.tests["table"] = lambda b: isinstance(b, Table)
_ENV.tests["figure"] = lambda b: isinstance(b, Figure)
_ENV.tests["paragraph"] = lambda b: isinstance(b, str)

PAGE = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;display:flex}
nav{position:sticky;top:0;align-self:flex-start;height:100vh;overflow-y:auto;box-sizing:border-box;width:250px;
 flex:none;padding:1.2em 1em;background:#f6f7f9;border-right:1px solid #dde;font-size:13.5px}
nav ol{padding-left:1.1em;margin:.2em 0}nav li{margin:.15em 0}nav a{color:#234;text-decoration:none}
nav a:hover{text-decoration:underline}nav h2{font-size:14px;margin:0 0 .5em}
main{flex:1;min-width:0;max-width:1250px;padding:1em 2.2em 4em}
h1{font-size:24px;margin:.4em 0 .6em}h2{font-size:20px;margin-top:1.8em;border-bottom:1px solid #dde;
 padding-bottom:.2em}h3{font-size:17px;margin-top:1.5em}h4{font-size:15px;margin-top:1.2em}
.scroll{overflow-x:auto;margin:.8em 0}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d4d7dd;padding:3px 8px;white-space:nowrap}td.num,th.num{text-align:right}
td:not(.num){white-space:normal;min-width:5em;max-width:26em}
th{background:#eef0f4;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e2e6ee}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}tbody tr:nth-child(even){background:#fafbfc}
tbody tr:hover{background:#fff6d9}
figure{margin:1.2em 0 2em}img{max-width:100%;border:1px solid #e3e3e3}
figcaption{font-size:14px;color:#444;max-width:62em;margin-top:.4em}
code{background:#f1f2f4;padding:0 .25em;border-radius:3px;font-size:92%}
a{color:#1f5fa8}
</style></head>
<body>
<nav><h2>Contents</h2>
{% macro toc(sections) %}<ol>{% for s in sections %}<li><a href="#{{ s.anchor }}">{{ s.title }}</a>
{% if s.subsections %}{{ toc(s.subsections) }}{% endif %}</li>{% endfor %}</ol>{% endmacro %}
{{ toc(sections) }}
</nav>
<main>
<h1>{{ title }}</h1>
{% macro block(b, level) %}
{% if b is section %}
<section id="{{ b.anchor }}"><h{{ level }}>{{ b.title }}</h{{ level }}>
{% for inner in b.blocks %}{{ block(inner, level + 1) }}{% endfor %}
</section>
{% elif b is paragraph %}<p>{{ b | inline }}</p>
{% elif b is table %}
<div class="scroll"><table class="sortable"><thead><tr>
{% for h in b.headers %}<th{% if b.numeric[loop.index0] %} class="num"{% endif %}>{{ h }}</th>{% endfor %}
</tr></thead><tbody>
{% for row in b.rows %}<tr>{% for c in row %}
<td{% if b.numeric[loop.index0] %} class="num"{% endif %} data-sort="{{ c | sort_key }}">
{%- if c.link %}<a href="{{ c.link }}">{{ c.text }}</a>{% else %}{{ c.text }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% elif b is figure %}
<figure><img src="{{ b.png }}" alt="{{ b.heading }}" loading="lazy">
<figcaption>{{ b.caption | inline }} (<a href="{{ b.pdf }}">PDF</a>)</figcaption></figure>
{% else %}<ul>{% for item in b %}<li>{{ item | inline }}</li>{% endfor %}</ul>
{% endif %}
{% endmacro %}
{% for b in intro %}{{ block(b, 2) }}{% endfor %}
{% for s in sections %}{{ block(s, 2) }}{% endfor %}
</main>
<script>
// Click a column header to sort by it; click again to reverse. Empty cells sort last.
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], numeric = th.classList.contains("num");
  const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
  th.parentNode.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  const key = tr => tr.cells[col].dataset.sort;
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    return dir * (numeric ? x - y : x.localeCompare(y, undefined, {numeric: true}));
  });
  body.append(...rows);
}));
</script>
</body></html>
""")


def html(title: str, intro: list, sections: list[Section]) -> str:
    return PAGE.render(title=title, intro=intro, sections=sections)
