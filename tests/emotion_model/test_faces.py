"""emotion_model.faces: anchors, box decoding and weighted NMS against known values; BlazeFace
on the real CREMA-D clips (hand-labelled boxes) and on videos composed from them with known
face boxes (tests/face_fixtures.py); bad inputs refused."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from face_fixtures import (
    CREMA_D_FACE_BOXES,
    GroundTruth,
    crema_d_face_box,
    decode_scaled,
    face_at_width,
    faceless,
    leaving_face,
    match_faces,
    one_face_quarter,
    small_face,
    tiny_face,
    two_faces,
)
from video_fixtures import CREMA_D_DIR, decode_frames, needs_encoder

from emotion_model.faces import (
    DECODER_VERSION,
    MODEL_DIR,
    FaceBox,
    FaceDetector,
    anchors,
    decode_boxes,
    non_max_suppression,
    resize,
)

SECONDS = 1.0  # composed videos: 25 frames each keeps the module fast


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector("full_range")


# --- geometry, anchors, decoding, NMS --------------------------------------------------------

def test_face_box_geometry() -> None:
    a = FaceBox(0.1, 0.2, 0.4, 0.2, 0.9)
    b = FaceBox(0.3, 0.2, 0.4, 0.2)
    assert a.area == pytest.approx(0.08)
    assert a.centre == pytest.approx((0.3, 0.3))
    assert a.iou(b) == pytest.approx(0.04 / 0.12)
    assert a.iou(a) == pytest.approx(1.0)
    assert a.iou(FaceBox(0.6, 0.6, 0.1, 0.1)) == 0.0
    assert a.to_pixels(100, 50) == (10, 10, 50, 20)
    assert FaceBox(-0.1, 0.9, 0.3, 0.3).to_pixels(100, 100) == (0, 90, 20, 100)


def test_anchor_layouts_match_the_models() -> None:
    short = anchors(128, (8, 16, 16, 16), 2)
    assert short.shape == (896, 2)
    assert np.allclose(short[:2], [[0.5 / 16, 0.5 / 16]] * 2)  # 16x16 grid, 2 per cell
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16])  # then the next column
    assert np.allclose(short[512:518], [[0.5 / 8, 0.5 / 8]] * 6)  # 8x8 grid, 6 per cell
    assert np.allclose(short[-1], [7.5 / 8, 7.5 / 8])
    full = anchors(192, (4,), 1)
    assert full.shape == (2304, 2)
    assert np.allclose(full[[0, 1, 48, -1]], [[1 / 96, 1 / 96], [3 / 96, 1 / 96],
                                               [1 / 96, 3 / 96], [95 / 96, 95 / 96]])


def test_decode_boxes_gives_known_boxes() -> None:
    grid = anchors(192, (4,), 1)
    raw = np.zeros((1, 2304, 16), np.float32)
    logits = np.full((1, 2304, 1), -10.0, np.float32)
    k = 48 * 10 + 20  # row 10, column 20: centre (20.5/48, 10.5/48)
    raw[0, k, :4] = [9.6, -19.2, 48.0, 57.6]  # dx, dy, w, h in input pixels (192)
    logits[0, k, 0] = 2.0
    j = 100
    raw[0, j, :4] = [0, 0, 19.2, 19.2]
    logits[0, j, 0] = 1000.0  # clipped to 100 before the sigmoid: score 1, no overflow
    with np.errstate(all="raise"):
        out = decode_boxes(raw, logits, grid, 192, 0.5)
    assert [b.score for b in out] == pytest.approx([1.0, 1 / (1 + math.exp(-2.0))])
    best, second = out
    cx, cy = 20.5 / 48 + 0.05, 10.5 / 48 - 0.1
    assert (second.x, second.y, second.w, second.h) == pytest.approx(
        (cx - 0.125, cy - 0.15, 0.25, 0.3), abs=1e-6)
    assert best.centre == pytest.approx(tuple(grid[j]), abs=1e-6)
    assert best.w == pytest.approx(0.1)
    # min_score filters; 1-D scores and 2-D boxes are accepted too
    assert len(decode_boxes(raw[0], logits.ravel(), grid, 192, 0.9)) == 1
    assert decode_boxes(raw, np.full(2304, -5.0), grid, 192, 0.5) == []


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces() -> None:
    a = FaceBox(0.10, 0.10, 0.20, 0.20, 0.9)
    b = FaceBox(0.12, 0.10, 0.20, 0.20, 0.6)  # IoU with a: 0.82
    c = FaceBox(0.60, 0.60, 0.20, 0.20, 0.7)  # elsewhere
    out = non_max_suppression([b, c, a], 0.3)
    assert len(out) == 2
    merged, kept = out
    assert kept == c
    assert merged.score == 0.9
    assert merged.x == pytest.approx((0.10 * 0.9 + 0.12 * 0.6) / 1.5)
    assert merged.w == pytest.approx(0.20)
    # just below / above the threshold
    d = FaceBox(0.10 + 0.2 * 0.5, 0.10, 0.20, 0.20, 0.5)  # IoU 1/3
    assert len(non_max_suppression([a, d], 0.34)) == 2
    assert len(non_max_suppression([a, d], 0.3)) == 1
    assert non_max_suppression([]) == []


def test_resize_averages_blocks_and_keeps_size() -> None:
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    assert resize(img, 2, 2)[..., 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert resize(img, 4, 4)[..., 0].tolist() == img[..., 0].tolist()
    assert resize(img, 8, 3).shape == (8, 3, 1)


# --- the detector ------------------------------------------------------------------------------

def test_name_version_and_detection_size(detector: FaceDetector) -> None:
    readme = (MODEL_DIR / "README.md").read_text()
    sha = detector.version.split("-")[0]
    assert len(sha) == 12 and sha in readme
    assert detector.version.endswith(f"-d{DECODER_VERSION}")
    assert detector.name == "blazeface-full-range"
    short = FaceDetector("short_range")
    assert short.name == "blazeface-short-range" and short.version != detector.version
    assert detector.detection_size(1280, 720) == (512, 288)
    assert detector.detection_size(1920, 1080) == (512, 288)
    assert detector.detection_size(480, 360) == (480, 360)  # never upscaled
    assert detector.detection_size(300, 1000) == (154, 512)


def test_tiles_cover_the_image_with_overlap(detector: FaceDetector) -> None:
    tiles = detector.tiles(512, 288)
    assert len(tiles) == 8
    assert {(x, y) for x, y, _ in tiles} >= {(0.0, 0.0), (320.0, 96.0)}
    xs = sorted({x for x, _, _ in tiles})
    assert min(b - a for a, b in zip(xs, xs[1:], strict=False)) <= 192 * 0.75
    assert detector.tiles(192, 100) == []


@pytest.mark.parametrize("name", sorted(CREMA_D_FACE_BOXES))
def test_real_crema_d_faces_are_found(detector: FaceDetector, name: str) -> None:
    frames, _ = decode_frames(CREMA_D_DIR / name)
    truth = crema_d_face_box(name)
    assert detector.detection_size(480, 360) == (480, 360)
    good = 0
    for frame in frames:
        found = detector.detect(frame, scan=False)
        good += len(found) == 1 and found[0].iou(truth) >= 0.5
    assert good >= 0.95 * len(frames)
    for frame in frames[::8]:  # tiles add no second face
        found = detector.detect(frame, scan=True)
        assert len(found) == 1 and found[0].iou(truth) >= 0.5


def test_short_range_finds_the_crema_d_face() -> None:
    short = FaceDetector("short_range")
    name = sorted(CREMA_D_FACE_BOXES)[0]
    frames, _ = decode_frames(CREMA_D_DIR / name)
    truth = crema_d_face_box(name)
    good = sum(any(b.iou(truth) >= 0.5 for b in short.detect(f, scan=False)) for f in frames)
    assert good >= 0.95 * len(frames)


def _run(detector: FaceDetector, path: Path, truth: GroundTruth, *, scan: bool = True
         ) -> tuple[int, int, int, list[list[FaceBox]]]:
    """(found, missed, false detections, detections per frame) over a composed video."""
    size = detector.detection_size(truth.width, truth.height)
    frames = decode_scaled(path, *size)
    assert len(frames) == len(truth.frames)
    found = missed = false = 0
    per_frame = []
    for frame, faces in zip(frames, truth.frames, strict=True):
        boxes = detector.detect(frame, scan=scan)
        f, m, fp, _ = match_faces(boxes, faces)
        found, missed, false = found + f, missed + m, false + fp
        per_frame.append(boxes)
    return found, missed, false, per_frame


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, GroundTruth]]:
    needs_encoder("libx264")
    folder = tmp_path_factory.mktemp("faces")
    builders = {"quarter": one_face_quarter, "two": two_faces, "leaving": leaving_face,
                "small": small_face, "none": faceless, "tiny": tiny_face}
    return {name: build(folder / f"{name}.mp4", seconds=SECONDS)
            for name, build in builders.items()}


@pytest.mark.parametrize("name", ["quarter", "two", "small", "tiny"])
def test_composed_faces_are_found_at_detection_size(
        detector: FaceDetector, videos: dict[str, tuple[Path, GroundTruth]], name: str) -> None:
    found, missed, false, _ = _run(detector, *videos[name])
    assert found >= 0.95 * (found + missed), (found, missed)
    assert false <= 1


def test_a_face_leaving_the_frame(detector: FaceDetector,
                                  videos: dict[str, tuple[Path, GroundTruth]]) -> None:
    path, truth = videos["leaving"]
    found, missed, false, per_frame = _run(detector, path, truth)
    assert found >= 0.9 * (found + missed) and false <= 1
    gone = [i for i, faces in enumerate(truth.frames) if not faces]
    assert len(gone) >= 3
    assert all(not per_frame[i] for i in gone)


def test_no_face_no_detection(detector: FaceDetector,
                              videos: dict[str, tuple[Path, GroundTruth]]) -> None:
    _, _, _, per_frame = _run(detector, *videos["none"])
    assert sum(bool(b) for b in per_frame) <= 1


def test_near_refinds_a_tiny_face_without_tiles(
        detector: FaceDetector, videos: dict[str, tuple[Path, GroundTruth]]) -> None:
    path, truth = videos["tiny"]
    frames = decode_scaled(path, *detector.detection_size(truth.width, truth.height))
    found_plain = found_near = 0
    for frame, faces in zip(frames, truth.frames, strict=True):
        known = faces[0].box
        found_plain += match_faces(detector.detect(frame, scan=False), faces)[0]
        near = FaceBox(known.x + 0.005, known.y - 0.005, known.w, known.h)  # a bit off
        found_near += match_faces(detector.detect(frame, scan=False, near=[near]), faces)[0]
    assert found_plain == 0
    assert found_near >= 0.95 * len(frames)


def test_near_passes_only_for_small_faces() -> None:
    det = FaceDetector()
    image = np.zeros((288, 512, 3), np.uint8)
    small, big = FaceBox(0.5, 0.5, 0.04, 0.07), FaceBox(0.2, 0.2, 0.3, 0.5)
    assert len(det.near_regions(512, 288, [small, big])) == 1
    x0, y0, side = det.near_regions(512, 288, [FaceBox(0.0, 0.0, 0.05, 0.05)])[0]
    assert (x0, y0) == (0.0, 0.0) and side == pytest.approx(3 * 0.05 * 512)  # kept inside
    before = det.passes
    det.detect(image, scan=False, near=[small, big])
    assert det.passes - before == 2  # whole image + one near square


def test_detectors_in_threads_agree(tmp_path: Path) -> None:
    needs_encoder("libx264")
    path, truth = face_at_width(tmp_path / "f.mp4", 60, seconds=0.4)
    frames = decode_scaled(path, 512, 288)
    serial = [FaceDetector().detect(f) for f in frames]
    results: dict[int, list[list[FaceBox]]] = {}

    def work(k: int) -> None:
        local = FaceDetector()
        results[k] = [local.detect(f) for f in frames]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == serial and results[1] == serial
    assert all(len(s) == 1 for s in serial)


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("image", [
    np.zeros((64, 64, 3), np.float32),
    np.zeros((64, 64), np.uint8),
    np.zeros((64, 64, 4), np.uint8),
    np.zeros((1, 64, 64, 3), np.uint8),
    np.zeros((1, 1, 3), np.uint8),
    [[[0, 0, 0]]],
])
def test_bad_images_are_refused(detector: FaceDetector, image: object) -> None:
    with pytest.raises(ValueError):
        detector.detect(image)  # type: ignore[arg-type]


def test_bad_arguments_are_refused(detector: FaceDetector) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="FaceBox"):
        detector.detect(image, near=[(0.1, 0.1, 0.2, 0.2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="finite"):
        detector.detect(image, near=[FaceBox(float("nan"), 0, 0.1, 0.1)])
    with pytest.raises(ValueError, match="model"):
        FaceDetector("long_range")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_score"):
        FaceDetector(min_score=1.5)
    with pytest.raises(ValueError):
        detector.detection_size(0, 720)
    with pytest.raises(ValueError, match="shapes"):
        decode_boxes(np.zeros((10, 16)), np.zeros(9), np.zeros((10, 2)), 192, 0.5)
    with pytest.raises(ValueError):
        anchors(128, (), 2)
