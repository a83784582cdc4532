"""Rendering for the run report: a small document model, HTML and Markdown writers, PNG plots.

The report stage assembles :class:`Section` objects (paragraphs, tables, figures, preformatted
text) and renders the same content twice:

- :func:`render_html` — one self-contained page: inline CSS, figures embedded as base64 PNG data
  URIs, no scripts and no external resources, so the file can be mailed, attached to a ticket or
  opened from an object store without anything else.
- :func:`render_markdown` — GitHub-flavoured Markdown with the same tables; figures are referenced
  as files (``plots/<name>.png``, next to ``report.md``) because Markdown viewers handle large data
  URIs poorly.

Plots use matplotlib's object API with the Agg canvas (no pyplot global state, no display needed,
safe in threads) and are saved without timestamps, so the same data gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...storage import protocol_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

# ----------------------------------------------------------------------------------------------
# document model
# ----------------------------------------------------------------------------------------------


@dataclass
class Paragraph:
    text: str
    #: ``note`` renders as a muted aside (caveats, "stage not run").
    kind: str = "text"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    #: Row indices rendered in bold (e.g. the model's row).
    bold_rows: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Link:
    """A hyperlink, as a table cell or a line under the title (text elsewhere)."""

    text: str
    href: str

    def __str__(self) -> str:
        return self.text


def relative_href(url: str, from_dir: str) -> str:
    """How a page in ``from_dir`` links to ``url``: a relative path when both are local, else the URL."""
    if protocol_of(url) == "file" and protocol_of(from_dir) == "file":
        return os.path.relpath(url, from_dir)
    return url


@dataclass
class Figure:
    #: File stem: the Markdown references ``plots/{name}.png``.
    name: str
    png: bytes
    caption: str = ""


@dataclass
class Preformatted:
    text: str


Block = Paragraph | Table | Figure | Preformatted
#: One line of a :func:`line_panels` panel: ``(label, x, y)``.
Line = tuple[str, Sequence[float], Sequence[float]]
#: One :func:`line_panels` panel: ``(title, y label, lines, log y)``.
Panel = tuple[str, str, Sequence[Line], bool]
#: One :func:`reliability_panels` panel: ``(title, lines)``, each line ``(label, mean predicted, observed)``.
ReliabilityPanel = tuple[str, Sequence[Line]]
#: One line of a :func:`group_line_panels` panel: ``(group, label, x, y)``; a group's lines share a colour.
GroupLine = tuple[int, str, Sequence[float], Sequence[float]]
#: One :func:`group_line_panels` panel: ``(title, y label, lines, log y)``.
GroupPanel = tuple[str, str, Sequence[GroupLine], bool]
#: One column of an :func:`interval_panels` panel: ``(group, label, values, interval)``, the interval
#: ``(low, high)`` or None.
PointColumn = tuple[int, str, Sequence[float], "tuple[float, float] | None"]
#: One :func:`interval_panels` panel: ``(title, y label, columns, reference lines (label, y))``.
IntervalPanel = tuple[str, str, Sequence[PointColumn], Sequence[tuple[str, float]]]


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    #: 2 for top-level sections, 3 for subsections.
    level: int = 2

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


def figures(sections: Sequence[Section]) -> list[Figure]:
    """Every figure of the sections, in document order."""
    return [b for s in sections for b in s.blocks if isinstance(b, Figure)]


# ----------------------------------------------------------------------------------------------
# cell formatting
# ----------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: ``-`` for missing values, fixed decimals for floats, separators for ints."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "-"
        if v != 0 and abs(v) < 10 ** -(digits - 1):
            return f"{v:.{digits - 1}g}"  # learning rates and other tiny values: 1e-05, not 0.0000
        if abs(v) >= 1000:
            return f"{v:,.1f}"
        return f"{v:.{digits}f}"
    return str(value)


def fmt_duration(seconds: float | None) -> str:
    """A duration for people: ``12.3 s``, ``4 min 05.0 s``, ``2 h 07 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:04.1f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _is_numeric(cell: str) -> bool:
    """Whether a formatted cell is a number (possibly with a unit) or ``-``: right-aligned."""
    c = cell.replace(",", "").replace("%", "").strip()
    for unit in (" B", " KB", " MB", " GB", " TB", " s"):
        if c.endswith(unit):
            c = c[: -len(unit)]
    try:
        float(c)
    except ValueError:
        return c == "-"
    return True


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
_CSS = """
:root { --fg: #1d2430; --muted: #5f6b7a; --line: #d9dee5; --band: #f5f7fa; --accent: #2457a6; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); margin: 0; background: #fff; line-height: 1.45; font-size: 15px; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
p { margin: 6px 0 10px; }
p.note { color: var(--muted); font-size: 13.5px; border-left: 3px solid var(--line); padding-left: 10px; }
nav { font-size: 14px; margin: 10px 0 18px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.meta { color: var(--muted); font-size: 13.5px; }
.scroll { overflow-x: auto; margin: 4px 0 14px; }
table { border-collapse: collapse; font-size: 13.5px; }
.caption { color: var(--muted); font-size: 13px; margin-top: 12px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; white-space: nowrap; }
th { background: var(--band); font-weight: 600; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfcfd; }
tr.bold td { font-weight: 650; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
pre { background: var(--band); border: 1px solid var(--line); padding: 10px 12px; font-size: 12.5px;
      overflow-x: auto; max-height: 560px; }
"""


def _html_text(value: Any) -> str:
    """A cell or a line under the title as HTML: a :class:`Link` as an anchor, anything else escaped."""
    text = html.escape(fmt(value))
    return f'<a href="{html.escape(value.href)}">{text}</a>' if isinstance(value, Link) else text


def _html_table(t: Table) -> str:
    e = html.escape
    out = [f'<div class="caption">{e(t.caption)}</div>' if t.caption else "", '<div class="scroll"><table>']
    out.append("<thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in t.columns) + "</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        cells = []
        for j, cell in enumerate(row):
            text = fmt(cell)
            cls = ' class="num"' if j > 0 and _is_numeric(text) else ""
            cells.append(f"<td{cls}>{_html_text(cell)}</td>")
        cls = ' class="bold"' if i in t.bold_rows else ""
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Paragraph):
        return f'<p class="note">{e(b.text)}</p>' if b.kind == "note" else f"<p>{e(b.text)}</p>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        cap = f"<figcaption>{e(b.caption)}</figcaption>" if b.caption else ""
        img = f'<img alt="{e(b.caption or b.name)}" src="data:image/png;base64,{data}">'
        return f'<figure id="fig-{e(b.name)}">{img}{cap}</figure>'
    if isinstance(b, Preformatted):
        return f"<pre>{e(b.text)}</pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def render_html(title: str, meta_lines: Sequence[str | Link], sections: Sequence[Section]) -> str:
    """One self-contained HTML page (inline CSS, embedded PNGs, no scripts, no external links)."""
    e = html.escape
    nav = " ".join(f'<a href="#{e(s.id)}">{e(s.title)}</a>' for s in sections if s.level == 2)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{e(title)}</h1>",
        "".join(f'<div class="meta">{_html_text(m)}</div>' for m in meta_lines),
        f"<nav>{nav}</nav>",
    ]
    for s in sections:
        parts.append(f'<h{s.level} id="{e(s.id)}">{e(s.title)}</h{s.level}>')
        parts.extend(_html_block(b) for b in s.blocks)
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_text(value: Any) -> str:
    """A cell or a line under the title as Markdown: a :class:`Link` as ``[text](href)``."""
    return f"[{fmt(value)}]({value.href})" if isinstance(value, Link) else fmt(value)


def _md_table(t: Table) -> str:
    out = []
    if t.caption:
        out.append(f"*{t.caption}*\n")
    aligns = ["---"] + [
        "---:" if t.rows and all(_is_numeric(fmt(r[j])) for r in t.rows) else "---" for j in range(1, len(t.columns))
    ]
    out.append("| " + " | ".join(_md_cell(str(c)) for c in t.columns) + " |")
    out.append("| " + " | ".join(aligns) + " |")
    for i, row in enumerate(t.rows):
        cells = [_md_cell(_md_text(c)) for c in row]
        if i in t.bold_rows:
            cells = [f"**{c}**" if c else c for c in cells]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def render_markdown(
    title: str, meta_lines: Sequence[str | Link], sections: Sequence[Section], plot_dir: str = "plots"
) -> str:
    """GitHub-flavoured Markdown; figures are referenced as ``{plot_dir}/{name}.png``."""
    parts = [f"# {title}", "", *(f"{_md_text(m)}  " for m in meta_lines), ""]
    for s in sections:
        parts += ["#" * s.level + " " + s.title, ""]
        for b in s.blocks:
            if isinstance(b, Paragraph):
                parts.append(f"> {b.text}" if b.kind == "note" else b.text)
            elif isinstance(b, Table):
                parts.append(_md_table(b))
            elif isinstance(b, Figure):
                parts.append(f"![{b.caption or b.name}]({plot_dir}/{b.name}.png)")
            elif isinstance(b, Preformatted):
                parts.append("```\n" + b.text.rstrip("\n") + "\n```")
            else:  # pragma: no cover - the Block union is closed
                raise TypeError(f"unknown block {type(b).__name__}")
            parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------
_COLORS = ("#2457a6", "#d9822b", "#3a9a5b", "#b8403a", "#7b5ea7", "#8c6d46", "#c75fa8", "#6b7a8f")


def _new_figure(width: float, height: float) -> MplFigure:
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    # No Software/date metadata: identical data gives identical bytes across matplotlib patches.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def grouped_bars(
    categories: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    width: float = 7.5,
    height: float = 3.4,
) -> bytes:
    """Grouped bar chart: one group per category, one bar per series (``None`` = no bar)."""
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    n = max(len(series), 1)
    x = np.arange(len(categories))
    w = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        vals = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        ax.bar(x - 0.4 + w * (i + 0.5), vals, w, label=label, color=_COLORS[i % len(_COLORS)])
    ax.set_xticks(x, list(categories))
    _style(ax, title, xlabel, ylabel)
    ax.grid(False, axis="x")
    if len(series) > 1:
        # Headroom above the tallest bar for a one-row legend, so it never covers a bar.
        ax.set_ylim(top=ax.get_ylim()[1] * 1.18)
        ax.legend(fontsize=9, frameon=False, loc="upper center", ncol=len(series))
    return _png(fig)


def histogram(
    values: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "count",
    bins: int = 20,
    width: float = 7.5,
    height: float = 3.2,
) -> bytes:
    """Histograms on shared bins, stacked per label (overlapping values stay visible)."""
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    allv = np.concatenate([np.asarray(v, dtype=float) for v in values.values()]) if values else np.array([0.0])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(
        [np.asarray(v, dtype=float) for v in values.values()],
        bins=edges.tolist(),
        stacked=True,
        label=list(values),
        color=[_COLORS[i % len(_COLORS)] for i in range(len(values))],
    )
    _style(ax, title, xlabel, ylabel)
    if len(values) > 1:
        ax.legend(fontsize=9, frameon=False)
    return _png(fig)


def line_panels(
    panels: Sequence[Panel],
    *,
    xlabel: str,
    columns: int = 2,
    panel_size: tuple[float, float] = (4.6, 2.9),
) -> bytes:
    """A grid of line charts; each panel is ``(title, ylabel, [(label, x, y), ...], log_y)``."""
    fig, axes = _panel_grid(len(panels), columns, panel_size)
    for ax, (title, ylabel, lines, log_y) in zip(axes, panels):
        for i, (label, x, y) in enumerate(lines):
            ax.plot(
                x,
                y,
                label=label,
                color=_COLORS[i % len(_COLORS)],
                linewidth=1.0 if i == 0 else 1.6,
                alpha=0.55 if (i == 0 and len(lines) > 1) else 1.0,
            )
        if log_y:
            ax.set_yscale("log")
        _style(ax, title, xlabel, ylabel)
        if len(lines) > 1:
            ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def _panel_grid(n: int, columns: int, panel_size: tuple[float, float]) -> tuple[Any, list[Any]]:
    """A figure with a grid of ``n`` axes, ``columns`` wide; axes beyond ``n`` are hidden."""
    rows = max(1, math.ceil(n / columns))
    cols = min(columns, max(n, 1))
    fig = _new_figure(panel_size[0] * cols, panel_size[1] * rows)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def reliability_panels(
    panels: Sequence[ReliabilityPanel], *, columns: int = 2, panel_size: tuple[float, float] = (3.8, 3.4)
) -> bytes:
    """Reliability diagrams: per panel, observed positive rate against mean predicted probability for
    each line (one point per non-empty bin), with the diagonal of perfect calibration."""
    fig, axes = _panel_grid(len(panels), columns, panel_size)
    for k, (ax, (title, lines)) in enumerate(zip(axes, panels)):
        ax.plot([0, 1], [0, 1], color="#9aa3ad", linestyle="--", linewidth=0.9, label="perfect calibration")
        for i, (label, x, y) in enumerate(lines):
            ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.3, label=label, color=_COLORS[i % len(_COLORS)])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        _style(ax, title, "mean predicted probability", "observed positive rate")
        if k == 0:
            ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def group_line_panels(
    panels: Sequence[GroupPanel], *, xlabel: str, columns: int = 2, panel_size: tuple[float, float] = (4.6, 2.9)
) -> bytes:
    """Line charts whose lines come in groups (e.g. the seeds of a variant): one colour and one legend
    entry per group; lines of few points get markers."""
    fig, axes = _panel_grid(len(panels), columns, panel_size)
    for ax, (title, ylabel, lines, log_y) in zip(axes, panels):
        named: set[str] = set()
        for group, label, x, y in lines:
            marker = "o" if len(x) <= 20 else None
            shown = label if label not in named else "_nolegend_"
            ax.plot(x, y, label=shown, color=_COLORS[group % len(_COLORS)], linewidth=1.3, marker=marker, markersize=3)
            named.add(label)
        if log_y:
            ax.set_yscale("log")
        _style(ax, title, xlabel, ylabel)
        if named:
            ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def interval_panels(
    panels: Sequence[IntervalPanel], *, columns: int = 2, panel_size: tuple[float, float] = (4.6, 3.2)
) -> bytes:
    """Per panel, one column per category: each value as a dot, their mean as a diamond, the interval
    (where given) as an error bar beside them; reference values as dashed horizontal lines."""
    fig, axes = _panel_grid(len(panels), columns, panel_size)
    for ax, (title, ylabel, cols, refs) in zip(axes, panels):
        for k, (label, y) in enumerate(refs):
            ax.axhline(y, color=("#9aa3ad", "#5f6b7a")[k % 2], linestyle=("--", ":")[k % 2], linewidth=1.0, label=label)
        for i, (group, _, values, interval) in enumerate(cols):
            color = _COLORS[group % len(_COLORS)]
            ax.scatter([i] * len(values), values, s=16, color=color, alpha=0.6, zorder=3)
            if len(values):
                ax.scatter([i], [float(np.mean(values))], marker="D", s=40, color=color, zorder=4)
            if interval is not None:
                mid = (interval[0] + interval[1]) / 2
                err = [[mid - interval[0]], [interval[1] - mid]]
                ax.errorbar([i + 0.2], [mid], yerr=err, fmt="none", ecolor=color, capsize=4, linewidth=1.4)
        ax.set_xticks(list(range(len(cols))), [c[1] for c in cols])
        ax.set_xlim(-0.6, len(cols) - 0.4)
        _style(ax, title, "", ylabel)
        ax.grid(False, axis="x")
        if refs:
            ax.legend(fontsize=8, frameon=False)
    return _png(fig)
