"""Small inline SVG charts, drawn on the server (no front-end packages, nothing to download).

Values are numbers we computed; every value goes through :meth:`markupsafe.Markup.format`,
which escapes it.
"""

from __future__ import annotations

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
