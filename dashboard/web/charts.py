"""Small inline SVG charts, drawn on the server (no front-end packages, nothing to download).

Values are numbers we computed; every value goes through :meth:`markupsafe.Markup.format`,
which escapes it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

from markupsafe import Markup, escape

from dashboard.web.views import PresencePoint

_LINE: Final = Markup('<polyline points="{}"/>')
_DOT: Final = Markup('<circle cx="{}" cy="{}" r="2.5"/>')
_EMPTY: Final = Markup('<p class="muted">no presence events yet</p>')
_CHART: Final = Markup(
    '<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
    'aria-label="presence counts">'
    '<rect x="0" y="0" width="{w}" height="{h}" fill="none" stroke="#ccc"/>'
    '<g fill="none" stroke="#1f6feb" stroke-width="2">{people}</g>'
    '<g fill="none" stroke="#d1242f" stroke-width="1.5" stroke-dasharray="4 3">{faces}</g>'
    '<text x="{w}" y="12" dx="-4" font-size="11" fill="#555" text-anchor="end">'
    "oldest left, newest right</text>"
    '<text x="4" y="12" font-size="11" fill="#555">{label}</text>'
    "</svg>"
)


def _polyline(values: Sequence[int | None], width: float, height: float, top: float) -> Markup:
    """Points of one series; a suppressed (None) count breaks the line."""
    n = len(values)
    step = width / max(n - 1, 1)
    segments: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            segments.append([])
            continue
        y = height - (v / top) * (height - 4) - 2 if top > 0 else height - 2
        segments[-1].append(f"{i * step:.1f},{y:.1f}")
    lines = Markup("").join(_LINE.format(" ".join(s)) for s in segments if len(s) > 1)
    # a window between two suppressed ones (or the only one) is a dot
    dots = Markup("").join(_DOT.format(*s[0].split(",")) for s in segments if len(s) == 1)
    return lines + dots


def presence_chart(points: Sequence[PresencePoint], width: int = 640, height: int = 140) -> Markup:
    """People (solid) and faces (dashed) per presence window, oldest on the left."""
    if not points:
        return _EMPTY
    people = [p.people for p in points]
    faces = [p.faces for p in points]
    top = max([v for v in people + faces if v is not None] or [1])
    noised = [p for p in points if p.noised]
    eps = sorted({p.eps for p in noised if p.eps is not None})
    label = f"max {top}; {len(points)} windows"
    if noised:
        shown = ", ".join(f"{e:g}" for e in eps) or "none (suppression only)"
        label += f"; {len(noised)} noised (epsilon {shown})"
    return _CHART.format(
        w=width,
        h=height,
        people=_polyline(people, width, height, top),
        faces=_polyline(faces, width, height, top),
        label=label,
    )


SPARK_W: Final = 60
SPARK_H: Final = 16
BREAK_AFTER: Final = 5
"""Values further apart than this many steps are not joined (no health for that long)."""
_DASH: Final = "h2"


@functools.cache
def _xs(n: int) -> tuple[int, ...]:
    step = SPARK_W / max(n - 1, 1)
    return tuple(round(i * step) for i in range(n))


def sparkline(values: Sequence[float | None], what: str, *, from_zero: bool = True) -> Markup:
    """:func:`draw_sparkline`, remembered: the fleet page is drawn again at every change and
    every few seconds, and most units' last hour has not changed since."""
    return _sparkline(tuple(values), what, from_zero)


@functools.lru_cache(maxsize=8192)
def _sparkline(values: tuple[float | None, ...], what: str, from_zero: bool) -> Markup:
    return draw_sparkline(values, what, from_zero=from_zero)


def draw_sparkline(values: Sequence[float | None], what: str, *, from_zero: bool = True) -> Markup:
    """A tiny line of ``values`` (oldest first, evenly spaced over the width; None: no data
    there: joined over, unless more than :data:`BREAK_AFTER` in a row break the line; a lone
    value is a short dash); empty when there is no value at all. ``from_zero``: the scale
    starts at 0 (rates, depths) rather than at the lowest value (temperatures). Its label
    says the range. Its size is set by the page's style (``svg.spark``): 500 units have 1,500 of
    them, so this is built as plain text (numbers only; ``what`` escaped)."""
    present = [v for v in values if v is not None]
    if not present:
        return Markup("")
    lo = 0.0 if from_zero else min(present)
    hi = max(present)
    bottom, top = SPARK_H - 1, SPARK_H - 2  # 1 px free at the top and bottom for the stroke
    scale = top / (hi - lo) if hi > lo else 0.0
    flat = bottom if from_zero and hi == 0 else bottom - top // 2  # all zero: along the bottom
    xs = _xs(len(values))
    parts: list[str] = []
    run, last = 0, -BREAK_AFTER - 1
    x0 = y0 = 0
    for i, v in enumerate(values):
        if v is None:
            continue
        if i - last > BREAK_AFTER:  # a long gap breaks the line
            if run == 1:
                parts.append(_DASH)
            run = 0
        x = xs[i]
        y = bottom - round((v - lo) * scale) if scale else flat
        # relative steps after the first point: "l3-1" is shorter than "L13 2"
        if not run:
            parts.append(f"M{x} {y}")
        elif y == y0:
            parts.append(f"h{x - x0}")
        else:
            parts.append(f"l{x - x0}{y - y0:+d}")
        x0, y0 = x, y
        run, last = run + 1, i
    if run == 1:
        parts.append(_DASH if x0 < SPARK_W - 2 else "h-2")
    # the range as an attribute, not a <title> element: 1,500 fewer elements for the browser
    # to build (the parse of the SVG is most of what the sparklines cost the page); no viewBox:
    # the page's style makes it SPARK_W x SPARK_H pixels, one user unit each
    svg = (
        f'<svg class="spark" role="img" aria-label="'
        f'{escape(what)}, last hour: {_fmt(min(present))} to {_fmt(hi)}">'
        f'<path d="{"".join(parts)}"/></svg>'
    )
    return Markup(svg)  # noqa: S704 - numbers we formatted, and `what` escaped


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
