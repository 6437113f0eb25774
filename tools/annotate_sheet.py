"""PNG sheets for checking a draft video annotation by eye (``tools.annotate_video sheet``).

- :func:`frame_sheets`: every frame (or a region of it), magnified, with the boxes (green, track
  id) and the ensemble's rejected candidates (red, ``c<n>``: the number ``promote`` names);
- :func:`track_strips`: per track, a strip of crops centred on its box in every frame, to judge
  the box's fit and spot identity switches.

The sheets hold the video's pixels: write them outside the repository and never commit them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from tools.face_ensemble import read_frames

Pixels = npt.NDArray[np.uint8]
GREEN, RED, YELLOW = (0, 255, 0), (255, 0, 0), (255, 255, 0)


def _draw(
    img: Pixels,
    box: list[float],
    offset: tuple[float, float],
    scale: int,
    label: str,
    colour: tuple[int, int, int],
    below: bool = False,
) -> None:
    x0, y0, x1, y1 = ((v - offset[i % 2]) * scale for i, v in enumerate(box))
    cv2.rectangle(img, (round(x0), round(y0)), (round(x1), round(y1)), colour, 1)
    at = (round(x0), round(y1) + 12) if below else (round(x0), round(y0) - 3)
    cv2.putText(img, label, at, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)


def _grid(cells: list[Pixels], columns: int) -> Pixels:
    blank = np.zeros_like(cells[0])
    rows = [
        np.hstack(cells[r : r + columns] + [blank] * (columns - len(cells[r : r + columns])))
        for r in range(0, len(cells), columns)
    ]
    return np.vstack(rows)


def _write(path: Path, rgb: Pixels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def frame_sheets(
    video: Path,
    boxes: dict[int, dict[str, list[float]]],
    candidates: dict[int, list[Any]],
    out: Path,
    region: tuple[int, int, int, int] | None = None,
    scale: int = 2,
    per_sheet: int = 12,
    columns: int = 4,
) -> list[Path]:
    """Sheets of ``per_sheet`` frames each; ``region`` (x0, y0, x1, y1) crops every frame."""
    cells: list[Pixels] = []
    written: list[Path] = []
    for index, rgb in enumerate(read_frames(video)):
        if index not in boxes:
            break
        x0, y0, x1, y1 = region or (0, 0, rgb.shape[1], rgb.shape[0])
        crop = rgb[y0:y1, x0:x1]
        size = (crop.shape[1] * scale, crop.shape[0] * scale)
        img: Pixels = np.ascontiguousarray(
            cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC), dtype=np.uint8
        )
        for tid, box in boxes[index].items():
            _draw(img, box, (x0, y0), scale, tid, GREEN)
        for n, candidate in enumerate(candidates.get(index, [])):
            _draw(img, candidate["box"], (x0, y0), scale, f"c{n}", RED, below=True)
        cv2.putText(img, str(index), (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.7, YELLOW, 2)
        cells.append(img)
        if len(cells) == per_sheet:
            written.append(_write(out / f"frames_{len(written):03d}.png", _grid(cells, columns)))
            cells = []
    if cells:
        written.append(_write(out / f"frames_{len(written):03d}.png", _grid(cells, columns)))
    return written


def track_strips(
    video: Path,
    boxes: dict[int, dict[str, list[float]]],
    out: Path,
    scale: int = 3,
    columns: int = 14,
) -> list[Path]:
    """One PNG per track: its box in every frame, in a window twice the box's size."""
    tracks = sorted({tid for row in boxes.values() for tid in row})
    cells: dict[str, list[Pixels]] = {tid: [] for tid in tracks}
    side = 0
    for row in boxes.values():
        for x0, y0, x1, y1 in row.values():
            side = max(side, round(2 * max(x1 - x0, y1 - y0)))
    for index, rgb in enumerate(read_frames(video)):
        if index not in boxes:
            break
        padded = cv2.copyMakeBorder(rgb, side, side, side, side, cv2.BORDER_CONSTANT)
        for tid in tracks:
            cell = np.zeros((side * scale, side * scale, 3), np.uint8)
            if tid in boxes[index]:
                box = boxes[index][tid]
                left = round((box[0] + box[2]) / 2 - side / 2)
                top = round((box[1] + box[3]) / 2 - side / 2)
                crop = padded[top + side : top + 2 * side, left + side : left + 2 * side]
                cell = np.ascontiguousarray(
                    cv2.resize(crop, (side * scale, side * scale), interpolation=cv2.INTER_CUBIC)
                )
                _draw(cell, box, (left, top), scale, "", GREEN)
            cv2.putText(cell, f"{tid}:{index}", (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, YELLOW, 1)
            cells[tid].append(cell)
    return [_write(out / f"track_{tid}.png", _grid(cells[tid], columns)) for tid in tracks]
