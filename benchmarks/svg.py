"""A tiny SVG line-chart emitter (no plotting library: the charts are small).

``line_chart(series, ...)`` draws one panel: x and y axes with ticks, a
polyline with dots per series, and a legend.  ``figure(panels)`` places
panels side by side in one SVG document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f"]


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str | None = None
    dashed: bool = False


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    log_x: bool = False
    x_ticks: list[float] | None = None
    width: int = 460
    height: int = 320
    notes: list[str] = field(default_factory=list)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _fmt(value: float) -> str:
    if value >= 1_000_000 and value % 1_000_000 == 0:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000 and value % 1_000 == 0:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _panel(panel: Panel, ox: int, oy: int) -> list[str]:
    left, right, top, bottom = 64, 16, 34, 70
    w, h = panel.width - left - right, panel.height - top - bottom
    xs = [x for s in panel.series for x, _ in s.points]
    ys = [y for s in panel.series for _, y in s.points]
    if not xs:
        return []
    x_ticks = panel.x_ticks or sorted(set(xs))
    tx = [math.log10(x) for x in x_ticks] if panel.log_x else list(x_ticks)
    x_min, x_max = min(tx), max(tx)
    y_max = _nice_max(max(ys) * 1.05)

    def px(x: float) -> float:
        v = math.log10(x) if panel.log_x else x
        span = (x_max - x_min) or 1.0
        return ox + left + (v - x_min) / span * w

    def py(y: float) -> float:
        return oy + top + h - y / y_max * h

    out = [f'<text x="{ox + left + w / 2}" y="{oy + 20}" text-anchor="middle" '
           f'font-weight="bold">{escape(panel.title)}</text>',
           f'<line x1="{ox + left}" y1="{oy + top + h}" x2="{ox + left + w}" '
           f'y2="{oy + top + h}" stroke="#333"/>',
           f'<line x1="{ox + left}" y1="{oy + top}" x2="{ox + left}" y2="{oy + top + h}" '
           'stroke="#333"/>']
    for i in range(6):
        y = y_max * i / 5
        out.append(f'<line x1="{ox + left}" y1="{py(y):.1f}" x2="{ox + left + w}" '
                   f'y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ox + left - 6}" y="{py(y) + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{_fmt(round(y))}</text>')
    for x in x_ticks:
        out.append(f'<text x="{px(x):.1f}" y="{oy + top + h + 16}" text-anchor="middle" '
                   f'font-size="11">{_fmt(x)}</text>')
    out.append(f'<text x="{ox + left + w / 2}" y="{oy + top + h + 34}" text-anchor="middle" '
               f'font-size="12">{escape(panel.x_label)}</text>')
    out.append(f'<text transform="translate({ox + 16},{oy + top + h / 2}) rotate(-90)" '
               f'text-anchor="middle" font-size="12">{escape(panel.y_label)}</text>')
    for index, series in enumerate(panel.series):
        color = series.color or PALETTE[index % len(PALETTE)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in series.points)
        dash = ' stroke-dasharray="5,4"' if series.dashed else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>'
                for x, y in series.points]
        lx, ly = ox + left + (index % 3) * (w / 3), oy + top + h + 50 + (index // 3) * 14
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 16:.1f}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly}" font-size="11">'
                   f'{escape(series.label)}</text>')
    return out


def figure(panels: Sequence[Panel], caption: str = "") -> str:
    width = sum(p.width for p in panels)
    extra = max((len(p.series) - 1) // 3 for p in panels) * 14 if panels else 0
    height = max(p.height for p in panels) + extra + (20 if caption else 0)
    body: list[str] = []
    ox = 0
    for panel in panels:
        body += _panel(panel, ox, 0)
        ox += panel.width
    if caption:
        body.append(f'<text x="8" y="{height - 6}" font-size="10" fill="#555">'
                    f'{escape(caption)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
