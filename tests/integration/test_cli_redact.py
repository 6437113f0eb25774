"""`camveil redact` end to end with the real int8 model: folders, nested paths, a corrupt JPEG, a
video, fail-closed detector failures, exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from agent.batch import find_inputs, redact_files
from agent.pipeline import PrivacyConfig
from agent.privacy.redact import pixel_rect
from agent.vision.detection import Detection, Detector
from agent.vision.factory import DETECTOR_MODELS, DetectorConfig, build_detector
from camveil.__main__ import main
from models import load_manifest

try:
    from tests.photos import photo
except ModuleNotFoundError:  # `pytest` (not `python -m pytest`): the repo root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.photos import photo

# The astronaut's face in photo("astronaut") (scikit-image, 512 x 512): a box inside every
# detector's face box, that must be overwritten.
FACE_CORE = (200, 80, 250, 160)  # x0, y0, x1, y1
VIDEO_FRAMES = 12
VIDEO_SIZE = 256


def _model() -> str:
    available = [m for m in DETECTOR_MODELS if m in load_manifest()]
    if not available:
        pytest.fail("no detector model in models/manifest.json: run `make models`")
    return available[0]  # the CLI default (centerface_int8) first


@pytest.fixture(scope="module")
def model() -> str:
    return _model()


@pytest.fixture(scope="module")
def detector(model: str) -> Detector:
    return build_detector(DetectorConfig(model=model))


def _astronaut() -> np.ndarray:
    return photo("astronaut")


def _write_video(path: Path, n: int = VIDEO_FRAMES) -> None:
    small = cv2.resize(_astronaut(), (VIDEO_SIZE, VIDEO_SIZE), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (VIDEO_SIZE, VIDEO_SIZE)
    )
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.roll(bgr, i, axis=1))  # the face drifts right 1 px per frame
    writer.release()


def _video_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """in/astronaut.jpg, in/nested/deeper/portrait.jpeg (mirrored astronaut),
    in/nested/deeper/obama.jpg, in/nested/broken.jpg (truncated), in/nested/clip.mp4,
    in/notes.txt (neither image nor video)."""
    root = tmp_path / "in"
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(_astronaut()).save(root / "astronaut.jpg", quality=95)
    Image.fromarray(_astronaut()[:, ::-1]).save(root / "nested" / "deeper" / "portrait.jpeg")
    Image.fromarray(photo("obama")).save(root / "nested" / "deeper" / "obama.jpg", quality=95)
    data = (root / "astronaut.jpg").read_bytes()
    (root / "nested" / "broken.jpg").write_bytes(data[: len(data) // 3])
    _write_video(root / "nested" / "clip.mp4")
    (root / "notes.txt").write_text("not a picture\n", encoding="utf-8")
    return root


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _assert_face_overwritten(
    out: np.ndarray, original: np.ndarray, detections: list[Detection], margin: float = 0.25
) -> None:
    """Every detected box (grown by the margin) is solid black; everything else is untouched."""
    assert detections, "the detector found no face on the astronaut"
    h, w = original.shape[:2]
    mask = np.zeros((h, w), bool)
    for det in detections:
        rect = pixel_rect(det.box, margin, w, h)
        assert rect is not None
        x0, y0, x1, y1 = rect
        assert (out[y0:y1, x0:x1] == 0).all()
        mask[y0:y1, x0:x1] = True
    assert np.array_equal(out[~mask], original[~mask]), "pixels outside the faces changed"
    assert mask.mean() < 0.2, "far more than the face was overwritten"


def test_folder_outputs_png_at_relative_paths_and_reports_the_corrupt_file(
    tree: Path, tmp_path: Path, model: str, detector: Detector, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    status = main(["redact", str(tree), "--out", str(out), "--model", model, "--no-progress"])
    err = capsys.readouterr().err

    assert status == 1  # the corrupt JPEG failed
    assert f"skipped {tree / 'nested' / 'broken.jpg'}: cannot decode image" in err
    assert "ignored" in err and "notes.txt" in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "astronaut.png",
        "nested/clip.mp4",
        "nested/deeper/obama.png",
        "nested/deeper/portrait.png",
    ]
    for name in ("astronaut.png", "nested/deeper/obama.png", "nested/deeper/portrait.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.mode == "RGB"

    original = _decoded(tree / "astronaut.jpg")
    result = _decoded(out / "astronaut.png")
    _assert_face_overwritten(result, original, detector.detect(original))
    x0, y0, x1, y1 = FACE_CORE
    assert (result[y0:y1, x0:x1] == 0).all()

    mirrored = _decoded(out / "nested" / "deeper" / "portrait.png")
    assert (mirrored[y0:y1, 512 - x1 : 512 - x0] == 0).all()

    obama = _decoded(tree / "nested" / "deeper" / "obama.jpg")
    _assert_face_overwritten(
        _decoded(out / "nested" / "deeper" / "obama.png"), obama, detector.detect(obama)
    )


def test_video_keeps_every_frame_with_the_face_overwritten(
    tree: Path, tmp_path: Path, model: str
) -> None:
    out = tmp_path / "out"
    status = main(["redact", str(tree / "nested" / "clip.mp4"), "--out", str(out),
                   "--model", model, "--no-progress"])  # fmt: skip
    assert status == 0
    frames = _video_frames(out / "clip.mp4")
    assert len(frames) == len(_video_frames(tree / "nested" / "clip.mp4")) == VIDEO_FRAMES
    scale = VIDEO_SIZE / 512
    x0, y0, x1, y1 = (round(v * scale) for v in FACE_CORE)
    for i, frame in enumerate(frames):
        core = frame[y0:y1, x0 + i : x1 + i]  # the face moves 1 px per frame
        assert core.mean() < 8, f"frame {i}: face not overwritten (mean {core.mean():.1f})"
    assert not list(out.glob(".*part*")), "temporary file left behind"


def test_single_file_goes_to_its_name_and_status_is_zero(
    tree: Path, tmp_path: Path, model: str
) -> None:
    out = tmp_path / "single"
    assert main(["redact", str(tree / "astronaut.jpg"), "--out", str(out),
                 "--model", model, "--no-progress"]) == 0  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["astronaut.png"]


def test_as_a_real_process(tree: Path, tmp_path: Path, model: str) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "camveil", "redact", str(tree), "--out", str(out), "--model", model],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "skipped" in done.stderr and "broken.jpg: cannot decode image" in done.stderr
    assert "redacted 4 of 6 files" in done.stderr
    assert (out / "astronaut.png").is_file()
    assert (out / "nested" / "clip.mp4").is_file()


def test_usage_errors_exit_2(tmp_path: Path, model: str) -> None:
    assert main(["redact", str(tmp_path / "absent.jpg"), "--out", str(tmp_path / "o"),
                 "--model", model, "--no-progress"]) == 2  # fmt: skip
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    assert main(["redact", str(tmp_path), "--out", str(a_file), "--model", model,
                 "--no-progress"]) == 2  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["redact", str(tmp_path)])  # no --out
    assert exc.value.code == 2


def test_output_folder_equal_to_input_folder_is_refused(tree: Path, model: str) -> None:
    assert main(["redact", str(tree), "--out", str(tree), "--model", model,
                 "--no-progress"]) == 2  # fmt: skip
    assert not list(tree.rglob("*.png"))


def test_output_folder_inside_the_input_folder_is_not_redacted_again(
    tree: Path, model: str
) -> None:
    out = tree / "redacted"
    args = ["redact", str(tree), "--out", str(out), "--model", model, "--no-progress"]
    main(args)
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    main(args)
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == first


class Failing:
    """Wraps a real detector; raises on the calls listed in ``fail`` (0-based), or always."""

    def __init__(self, inner: Detector, fail: set[int] | None = None) -> None:
        self.inner, self.fail, self.calls = inner, fail, 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        n = self.calls
        self.calls += 1
        if self.fail is None or n in self.fail:
            raise RuntimeError("inference crashed")
        return self.inner.detect(rgb)


def test_a_detector_that_raises_writes_nothing_for_the_image(
    tree: Path, tmp_path: Path, detector: Detector
) -> None:
    out = tmp_path / "out"
    items = find_inputs([tree / "astronaut.jpg", tree / "nested" / "deeper"], out)
    results = redact_files(Failing(detector), items, out, PrivacyConfig())
    assert [r.ok for r in results] == [False, False, False]
    assert all("fail closed" in (r.error or "") for r in results)
    assert not out.exists() or not any(out.rglob("*"))


def test_video_frames_whose_detection_fails_are_dropped_and_counted(
    tree: Path, tmp_path: Path, detector: Detector
) -> None:
    out = tmp_path / "out"
    items = find_inputs([tree / "nested" / "clip.mp4"], out)
    (result,) = redact_files(Failing(detector, fail={3, 4, 9}), items, out, PrivacyConfig())
    assert result.ok and result.output == out / "clip.mp4"
    assert result.frames_in == VIDEO_FRAMES
    assert result.dropped == {"DetectorFailedError": 3}
    assert result.frames_out == VIDEO_FRAMES - 3
    assert len(_video_frames(out / "clip.mp4")) == VIDEO_FRAMES - 3


def test_cli_reports_dropped_frames_and_exits_1(
    tree: Path,
    tmp_path: Path,
    detector: Detector,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    failing = Failing(detector, fail={0})
    monkeypatch.setattr("camveil.cli.redact.build_detector", lambda _config: failing)
    out = tmp_path / "out"
    status = main(["redact", str(tree / "nested" / "clip.mp4"), "--out", str(out),
                   "--no-progress"])  # fmt: skip
    assert status == 1
    assert "dropped 1 of 12 frames" in capsys.readouterr().err
    assert len(_video_frames(out / "clip.mp4")) == VIDEO_FRAMES - 1


def test_a_video_whose_every_frame_fails_is_not_written(
    tree: Path, tmp_path: Path, detector: Detector
) -> None:
    out = tmp_path / "out"
    items = find_inputs([tree / "nested" / "clip.mp4"], out)
    (result,) = redact_files(Failing(detector), items, out, PrivacyConfig())
    assert not result.ok and "all 12 frames dropped" in (result.error or "")
    assert not out.exists() or not any(out.rglob("*"))


def test_two_inputs_with_the_same_output_path_do_not_overwrite(
    tmp_path: Path, detector: Detector
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(_astronaut()).save(root / "x.jpg")
    Image.fromarray(_astronaut()).save(root / "x.png")
    out = tmp_path / "out"
    results = redact_files(detector, find_inputs([root], out), out, PrivacyConfig())
    assert [r.ok for r in results] == [True, False]
    assert "already claimed" in (results[1].error or "")


def test_exif_orientation_is_applied_before_detection(tmp_path: Path, model: str) -> None:
    """A phone photo stored sideways with an EXIF orientation tag is redacted upright."""
    root = tmp_path / "in"
    root.mkdir()
    sideways = Image.fromarray(_astronaut()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    sideways.save(root / "phone.jpg", quality=95, exif=exif)
    out = tmp_path / "out"
    assert main(["redact", str(root), "--out", str(out), "--model", model, "--no-progress"]) == 0
    result = _decoded(out / "phone.png")
    assert result.shape == (512, 512, 3)
    x0, y0, x1, y1 = FACE_CORE
    assert (result[y0:y1, x0:x1] == 0).all()
    assert result[400:, :100].mean() > 20  # the rest is still the (upright) photo


class Missing:
    """Wraps a real detector; finds nothing on the calls listed in ``miss`` (a missed face)."""

    def __init__(self, inner: Detector, miss: set[int]) -> None:
        self.inner, self.miss, self.calls = inner, miss, 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        n = self.calls
        self.calls += 1
        return [] if n in self.miss else self.inner.detect(rgb)


def test_video_hold_over_covers_frames_where_the_face_was_missed(
    tree: Path, tmp_path: Path, detector: Detector
) -> None:
    out = tmp_path / "out"
    items = find_inputs([tree / "nested" / "clip.mp4"], out)
    (result,) = redact_files(Missing(detector, miss={5, 6}), items, out, PrivacyConfig())
    assert result.ok and result.frames_out == VIDEO_FRAMES
    frames = _video_frames(out / "clip.mp4")
    scale = VIDEO_SIZE / 512
    x0, y0, x1, y1 = (round(v * scale) for v in FACE_CORE)
    for i in (5, 6):
        assert frames[i][y0:y1, x0 + i : x1 + i].mean() < 8, f"frame {i} leaked the face"


def test_unknown_extensions_are_recognised_by_content(
    tree: Path, tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A video or image whose extension says nothing is redacted by what it is; a file named on
    the command line that is neither fails (exit 1)."""
    root = tmp_path / "odd"
    root.mkdir()
    (root / "clip.bin").write_bytes((tree / "nested" / "clip.mp4").read_bytes())
    (root / "picture.dat").write_bytes((tree / "astronaut.jpg").read_bytes())
    out = tmp_path / "out"
    args = ["redact", str(root / "clip.bin"), str(root / "picture.dat"), str(tree / "notes.txt")]
    assert main([*args, "--out", str(out), "--model", model, "--no-progress"]) == 1
    assert "notes.txt: not an image or a video" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "picture.png"]
    assert len(_video_frames(out / "clip.mp4")) == VIDEO_FRAMES


def test_images_in_flight_at_once_keep_the_order_and_fail_closed_each(
    tmp_path: Path, detector: Detector
) -> None:
    """jobs=3: results in input order; the images whose detection fails are not written."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(8):
        Image.fromarray(np.roll(_astronaut(), 8 * i, axis=1)).save(root / f"{i:02d}.jpg")
    out = tmp_path / "out"
    items = find_inputs([root], out)
    failing = Failing(detector, fail={2, 5})  # call order: serialized, so calls 2 and 5 fail
    results = redact_files(failing, items, out, PrivacyConfig(), jobs=3)
    assert [r.source.path.name for r in results] == [f"{i:02d}.jpg" for i in range(8)]
    assert sum(not r.ok for r in results) == 2
    assert all("fail closed" in (r.error or "") for r in results if not r.ok)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(r.output.name for r in results if r.output is not None)
    for r in results:
        if r.output is not None:
            pixels = np.asarray(Image.open(r.output).convert("RGB"))
            shift = 8 * int(r.source.path.stem)
            x0, y0, x1, y1 = FACE_CORE
            face = np.roll(pixels, -shift, axis=1)[y0:y1, x0:x1]
            assert not np.array_equal(face, _astronaut()[y0:y1, x0:x1])


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_stills_are_lossless_in_either_format(tmp_path: Path, fmt: str) -> None:
    """The written file decodes to exactly the redacted pixels (compared across formats)."""
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(_astronaut()).save(root / "a.png")
    outs = {}
    for kind, level in ((fmt, "9"), ("png", "0")):
        out = tmp_path / f"out-{kind}-{level}"
        status = main(["redact", str(root), "--out", str(out), "--no-progress",
                       "--format", kind, "--png-level", level])  # fmt: skip
        assert status == 0
        (written,) = list(out.iterdir())
        assert written.suffix == f".{kind}"
        outs[(kind, level)] = np.asarray(Image.open(written).convert("RGB"))
    first, second = outs.values()
    assert np.array_equal(first, second)
    x0, y0, x1, y1 = FACE_CORE
    assert not np.array_equal(first[y0:y1, x0:x1], _astronaut()[y0:y1, x0:x1])


@pytest.mark.parametrize("option", [["--png-level", "10"], ["--jobs", "0"], ["--format", "jpg"]])
def test_bad_output_options_are_usage_errors(
    tmp_path: Path, option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["redact", str(tmp_path), "--out", str(tmp_path / "o"), *option])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_every_frame_of_an_animated_image_is_redacted_with_its_timing(tmp_path: Path) -> None:
    """An animated GIF is not cut to its first frame: all frames, redacted, timing kept."""
    from PIL import ImageSequence

    root = tmp_path / "in"
    root.mkdir()
    frames = [Image.fromarray(np.roll(_astronaut(), 6 * i, axis=1)) for i in range(3)]
    frames[0].save(root / "wave.gif", save_all=True, append_images=frames[1:],
                   duration=[80, 120, 200], loop=0)  # fmt: skip
    out = tmp_path / "out"
    assert main(["redact", str(root), "--out", str(out), "--no-progress"]) == 0
    with Image.open(out / "wave.png") as apng:
        assert getattr(apng, "n_frames", 1) == 3
        written = []
        for page in ImageSequence.Iterator(apng):
            written.append((np.asarray(page.convert("RGB")).copy(), page.info.get("duration")))
    x0, y0, x1, y1 = FACE_CORE
    for i, (pixels, duration) in enumerate(written):
        face = np.roll(pixels, -6 * i, axis=1)[y0:y1, x0:x1]
        assert np.all(face == 0), f"frame {i}: the face is not overwritten (solid black)"
        assert duration == [80, 120, 200][i]


def test_videos_are_h264_that_browsers_play_even_with_odd_sizes(tmp_path: Path) -> None:
    import av

    root = tmp_path / "in"
    root.mkdir()
    small = cv2.resize(_astronaut(), (255, 171), interpolation=cv2.INTER_AREA)
    with av.open(str(root / "odd.mkv"), "w") as source:  # OpenCV's writer rounds odd sizes down
        lossless = source.add_stream("ffv1", rate=8)
        lossless.width, lossless.height, lossless.pix_fmt = 255, 171, "bgr0"
        for _ in range(6):
            source.mux(lossless.encode(av.VideoFrame.from_ndarray(small, format="rgb24")))
        source.mux(lossless.encode())
    out = tmp_path / "out"
    assert main(["redact", str(root), "--out", str(out), "--no-progress"]) == 0
    with av.open(str(out / "odd.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (256, 172)
        assert sum(1 for _ in container.decode(stream)) == 6


def test_json_report_lists_every_file(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    out = tmp_path / "out"
    status = main(["redact", str(tree), "--out", str(out), "--no-progress", "--json"])
    assert status == 1  # broken.jpg
    doc = json.loads(capsys.readouterr().out)
    by_name = {Path(f["input"]).name: f for f in doc["files"]}
    assert by_name["astronaut.jpg"]["ok"] and by_name["astronaut.jpg"]["faces"] >= 1
    assert by_name["astronaut.jpg"]["output"].endswith("astronaut.png")
    assert not by_name["broken.jpg"]["ok"] and "cannot decode" in by_name["broken.jpg"]["error"]
    assert by_name["notes.txt"]["ignored"]
    clip = by_name["clip.mp4"]
    assert clip["frames_in"] == clip["frames_out"] == VIDEO_FRAMES and clip["faces"] >= 1
    assert doc["failed"] == 1 and doc["written"] == 4
