"""Small inline SVG charts, drawn on the server (no front-end packages, nothing to download):
a unit's presence counts (the unit page) and its last hour of health (the fleet page).

Values are numbers we computed; the presence chart's go through
:meth:`markupsafe.Markup.format`, which escapes them; the fleet's trend is numbers only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

from markupsafe import Markup

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
"""Width of one series; the unit's three sit side by side, :data:`SPARK_GAP` apart."""
SPARK_H: Final = 16
SPARK_GAP: Final = 10
TREND_W: Final = 3 * SPARK_W + 2 * SPARK_GAP
BREAK_AFTER: Final = 5
"""Values further apart than this many steps are not joined (no health for that long)."""


@functools.cache
def _xs(n: int, left: int) -> tuple[int, ...]:
    step = SPARK_W / max(n - 1, 1)
    return tuple(left + round(i * step) for i in range(n))


def trend(
    fps: Sequence[float | None],
    outbox: Sequence[float | None],
    temp: Sequence[float | None],
) -> tuple[Markup, str]:
    """A unit's last hour as one small SVG (fps, outbox depth, temperature side by side, each
    :data:`SPARK_W` wide) and its text (the range of each, for the cell's title); remembered,
    as the fleet page is drawn again at every change and every few seconds and most units'
    last hour has not changed since."""
    return _trend(tuple(fps), tuple(outbox), tuple(temp))


@functools.lru_cache(maxsize=4096)
def _trend(
    fps: tuple[float | None, ...],
    outbox: tuple[float | None, ...],
    temp: tuple[float | None, ...],
) -> tuple[Markup, str]:
    parts: list[str] = []
    labels: list[str] = []
    for k, (values, what, from_zero) in enumerate(
        ((fps, "fps", True), (outbox, "outbox", True), (temp, "°C", False))
    ):
        present = [v for v in values if v is not None]
        if present:
            parts.append(_path(values, k * (SPARK_W + SPARK_GAP), from_zero))
            labels.append(f"{what} {_fmt(min(present))} to {_fmt(max(present))}")
    if not parts:
        return Markup(""), ""
    # one <svg> and one <path> per unit: for 500 units the browser builds 1,000 SVG elements,
    # not the 3,000 of a chart per series, which cost the page more than the bytes do; the
    # text (the page puts it in the cell's title) says the same
    svg = f'<svg class="trend" aria-hidden="true"><path d="{"".join(parts)}"/></svg>'
    return Markup(svg), "last hour: " + "; ".join(labels)  # noqa: S704 - numbers only


def _path(values: Sequence[float | None], left: int, from_zero: bool) -> str:
    """Path commands of one series in the box from ``left`` (oldest on the left, evenly spaced;
    None: no data there: joined over, unless more than :data:`BREAK_AFTER` in a row break the
    line; a lone value is a short dash). ``from_zero``: the scale starts at 0 (rates, depths)
    rather than at the lowest value (temperatures)."""
    present = [v for v in values if v is not None]
    lo = 0.0 if from_zero else min(present)
    hi = max(present)
    bottom, top = SPARK_H - 1, SPARK_H - 2  # 1 px free at the top and bottom for the stroke
    scale = top / (hi - lo) if hi > lo else 0.0
    flat = bottom if from_zero and hi == 0 else bottom - top // 2  # all zero: along the bottom
    xs = _xs(len(values), left)
    parts: list[str] = []
    run, last = 0, -BREAK_AFTER - 1
    x0 = y0 = 0
    for i, v in enumerate(values):
        if v is None:
            continue
        if i - last > BREAK_AFTER:  # a long gap breaks the line
            if run == 1:
                parts.append("h2")
            run = 0
        x = xs[i]
        y = bottom - round((v - lo) * scale) if scale else flat
        if not run:
            parts.append(f"M{x} {y}")
        elif y == y0:
            parts.append(f"h{x - x0}")
        else:  # relative: "l3-1" is shorter than "L13 2"
            parts.append(f"l{x - x0}{y - y0:+d}")
        x0, y0 = x, y
        run, last = run + 1, i
    if run == 1:
        parts.append("h2" if x0 < left + SPARK_W - 2 else "h-2")
    return "".join(parts)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
