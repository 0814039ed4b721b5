"""FaceTracker (linking, smoothing, interpolation, finality, selection) and square_crop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from emotion_model.face_tracks import (
    FaceTracker,
    TrackBox,
    square_crop,
    square_crop_box,
)

W, H = 640, 360  # not square: IoU and areas are in pixels


@dataclass(frozen=True)
class Box:
    """A stand-in for faces.FaceBox: any object with x, y, w, h, score will do."""

    x: float
    y: float
    w: float
    h: float
    score: float = 0.9


def centred(cx: float, cy: float, w: float = 0.1, h: float = 0.16, score: float = 0.9) -> Box:
    return Box(cx - w / 2, cy - h / 2, w, h, score)


def times(n: int, fps: float = 5.0, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(n)]


def test_crossing_faces_keep_their_ids() -> None:
    tracker = FaceTracker()
    ts = times(21)
    for i, t in enumerate(ts):  # A goes right, B goes left, crossing at i = 10
        a = centred(0.2 + 0.03 * i, 0.50)
        b = centred(0.8 - 0.03 * i, 0.52)
        tracker.update(t, [b, a] if i % 2 else [a, b], W, H)
    tracker.finish(ts[-1])
    assert [s.id for s in tracker.tracks()] == [0, 1]
    start_a = tracker.box_at(0, 0.0)
    end_a = tracker.box_at(0, ts[-1])
    assert start_a is not None and end_a is not None
    assert start_a.cx == pytest.approx(0.2, abs=1e-6)
    assert end_a.cx == pytest.approx(0.8, abs=1e-6)  # still A after the crossing
    end_b = tracker.box_at(1, ts[-1])
    assert end_b is not None and end_b.cx == pytest.approx(0.2, abs=1e-6)
    assert all(s.detections == 21 for s in tracker.tracks())


def test_predicted_moves_at_constant_velocity_and_links_fast_faces() -> None:
    tracker = FaceTracker(iou_threshold=0.5)
    # a 0.1-wide face steps 0.03, then 0.06 on: IoU with the last box is then 0.25, with the
    # constant-velocity prediction 0.54 and then 1
    xs = [0.1, 0.13, 0.19, 0.25, 0.31, 0.37]
    for t, x in zip(times(6), xs, strict=True):
        tracker.update(t, [centred(x, 0.5)], W, H)
    assert [s.detections for s in tracker.tracks()] == [6]
    assert tracker.live_ids(1.2) == [0]
    (pred,) = tracker.predicted(1.2)
    assert isinstance(pred, TrackBox)
    assert pred.cx == pytest.approx(0.43)
    assert pred.w == pytest.approx(0.1)
    assert tracker.predicted(1.0 + 1.5) == []  # past max_gap_s


def test_face_unseen_longer_than_max_gap_ends_and_a_new_track_starts() -> None:
    tracker = FaceTracker(max_gap_s=1.0)
    face = centred(0.5, 0.5)
    for t in times(5):  # 0 .. 0.8
        tracker.update(t, [face], W, H)
    for t in times(7, start=1.0):  # 1.0 .. 2.2: gone
        tracker.update(t, [], W, H)
    assert tracker.live_ids(2.2) == []
    for t in times(5, start=2.4):  # same place, after 1.6 s unseen
        tracker.update(t, [face], W, H)
    tracker.finish(3.2)
    summaries = tracker.tracks()
    assert [(s.id, s.first_s, s.detections) for s in summaries] == [(0, 0.0, 5), (1, 2.4, 5)]
    assert tracker.box_at(0, 1.6) is None  # never bridged
    assert tracker.box_at(1, 1.6) is None


def test_a_gap_within_max_gap_is_interpolated_across() -> None:
    tracker = FaceTracker(max_gap_s=1.0, smoothing=0.0)
    tracker.update(0.0, [centred(0.3, 0.5)], W, H)
    tracker.update(0.2, [centred(0.3, 0.5)], W, H)
    for t in (0.4, 0.6, 0.8):
        tracker.update(t, [], W, H)
    tracker.update(1.0, [centred(0.34, 0.5)], W, H)  # 0.8 s unseen: same track
    tracker.finish(1.0)
    assert len(tracker.tracks()) == 1
    mid = tracker.box_at(0, 0.6)
    assert mid is not None and mid.cx == pytest.approx(0.32)


def test_interpolation_is_linear_between_detections() -> None:
    tracker = FaceTracker()
    ts = times(11)
    for i, t in enumerate(ts):  # steady motion and growth: smoothing must not bend it
        tracker.update(t, [centred(0.2 + 0.02 * i, 0.4 + 0.01 * i, w=0.1 + 0.002 * i)], W, H)
    tracker.finish(ts[-1])
    for t in np.linspace(0.0, 2.0, 41):
        box = tracker.box_at(0, float(t))
        assert box is not None
        i = t * 5
        assert box.cx == pytest.approx(0.2 + 0.02 * i, abs=1e-9)
        assert box.cy == pytest.approx(0.4 + 0.01 * i, abs=1e-9)
        assert box.w == pytest.approx(0.1 + 0.002 * i, abs=1e-9)


def test_jittered_detections_give_a_smoother_box_path() -> None:
    rng = np.random.default_rng(0)
    ts = times(100)
    truth = [0.3 + 0.002 * i for i in range(100)]
    raw = FaceTracker(smoothing=0.0)
    smooth = FaceTracker()  # default smoothing
    for i, t in enumerate(ts):
        face = centred(truth[i] + rng.normal(0, 0.005), 0.5 + rng.normal(0, 0.005))
        raw.update(t, [face], W, H)
        smooth.update(t, [face], W, H)
    raw.finish(ts[-1])
    smooth.finish(ts[-1])
    grid = np.linspace(0.2, ts[-2], 400)  # between and at detections, off the ends
    true_cx = 0.3 + 0.002 * grid * 5

    def errors(tracker: FaceTracker) -> tuple[float, float]:
        boxes = [tracker.box_at(0, float(t)) for t in grid]
        assert all(b is not None for b in boxes)
        cx = np.array([b.cx for b in boxes if b is not None])
        cy = np.array([b.cy for b in boxes if b is not None])
        return float(np.var(cx - true_cx)), float(np.var(np.diff(cy)))

    raw_err, raw_step = errors(raw)
    smooth_err, smooth_step = errors(smooth)
    assert smooth_err < 0.6 * raw_err
    assert smooth_step < 0.6 * raw_step


def test_box_at_holds_near_the_span_and_is_none_well_outside() -> None:
    tracker = FaceTracker(hold_s=0.1)
    for t in times(5, start=1.0):  # 1.0 .. 1.8
        tracker.update(t, [centred(0.5, 0.5, score=0.8)], W, H)
    tracker.finish(5.0)
    first, last = tracker.box_at(0, 1.0), tracker.box_at(0, 1.8)
    assert tracker.box_at(0, 0.95) == first
    assert tracker.box_at(0, 1.85) == last
    assert first is not None and first.score == pytest.approx(0.8)
    assert tracker.box_at(0, 0.8) is None
    assert tracker.box_at(0, 2.0) is None
    assert tracker.box_at(0, -10.0) is None
    assert tracker.boxes_at(4.0) == {}
    assert set(tracker.boxes_at(1.3)) == {0}
    with pytest.raises(KeyError, match="no face track with id 7"):
        tracker.box_at(7, 1.0)


def test_scores_interpolate() -> None:
    tracker = FaceTracker(smoothing=0.0)
    tracker.update(0.0, [centred(0.5, 0.5, score=0.6)], W, H)
    tracker.update(0.2, [centred(0.5, 0.5, score=1.0)], W, H)
    tracker.finish(0.2)
    mid = tracker.box_at(0, 0.1)
    assert mid is not None and mid.score == pytest.approx(0.8)


def test_final_until_answers_do_not_change() -> None:
    rng = np.random.default_rng(1)
    tracker = FaceTracker()
    assert tracker.final_until == -math.inf
    grid = np.linspace(-0.5, 6.5, 701)
    settled: dict[float, dict[int, TrackBox]] = {}
    ts = times(30)
    for i, t in enumerate(ts):
        faces = [centred(0.3 + rng.normal(0, 0.005), 0.5)]
        if 10 <= i < 20:
            faces.append(centred(0.7 + rng.normal(0, 0.005), 0.5))  # a second face, 2 s .. 3.8 s
        if i in (12, 13, 14):
            faces = faces[1:]  # the first face is missed 0.6 s
        tracker.update(t, faces, W, H)
        until = tracker.final_until
        assert until <= t
        for g in grid:
            if g < until:
                now = tracker.boxes_at(float(g))
                assert settled.setdefault(float(g), now) == now
    assert settled  # some answers were settled before the end
    tracker.finish(ts[-1])
    assert tracker.final_until == math.inf
    for g, seen in settled.items():
        assert tracker.boxes_at(g) == seen


def test_final_until_follows_the_last_two_detections_at_5_per_second() -> None:
    tracker = FaceTracker(smoothing=0.25, hold_s=0.1)
    tracker.update(0.0, [centred(0.5, 0.5)], W, H)
    assert tracker.final_until == pytest.approx(-0.1)  # first detection minus hold_s
    tracker.update(0.2, [centred(0.5, 0.5)], W, H)
    assert tracker.final_until == pytest.approx(-0.1)
    tracker.update(0.4, [centred(0.5, 0.5)], W, H)
    assert tracker.final_until == pytest.approx(0.0)
    tracker.update(0.6, [centred(0.5, 0.5)], W, H)
    assert tracker.final_until == pytest.approx(0.2)  # between 0.2 and 0.4: waits for 0.6
    tracker.update(0.8, [], W, H)
    assert tracker.final_until == pytest.approx(0.4)
    for t in (1.0, 1.2, 1.4, 1.6, 1.8):  # the face is gone; its track can no longer grow
        tracker.update(t, [], W, H)
    assert tracker.final_until == pytest.approx(1.8 - 0.1)  # a new face may reach back hold_s


def test_a_one_off_box_is_not_a_track_when_others_are_long() -> None:
    tracker = FaceTracker(min_detections=2)
    for i, t in enumerate(times(10)):
        faces = [centred(0.3, 0.5)]
        if i == 4:
            faces.append(centred(0.8, 0.2, w=0.3, h=0.5))  # large, but seen once
        tracker.update(t, faces, W, H)
    tracker.finish(2.0)
    assert [s.id for s in tracker.tracks()] == [0]
    assert tracker.select(5) == [0]
    assert tracker.box_at(1, 0.8) is not None  # still answerable by id


def test_a_single_detection_frame_still_yields_its_faces() -> None:
    tracker = FaceTracker(min_detections=2)
    tracker.update(0.0, [centred(0.3, 0.5), centred(0.7, 0.5, w=0.2, h=0.3)], W, H)
    tracker.finish(0.5)
    summaries = tracker.tracks()
    assert [(s.id, s.detections, s.duration_s) for s in summaries] == [(0, 1, 0.0), (1, 1, 0.0)]
    assert summaries[1].mean_area_px == pytest.approx(0.2 * W * 0.3 * H)
    assert tracker.select(1) == [1]  # the larger one


def test_no_detections_no_tracks() -> None:
    tracker = FaceTracker()
    for t in times(5):
        tracker.update(t, [], W, H)
    tracker.finish(1.0)
    assert tracker.tracks() == []
    assert tracker.select(3) == []


def test_select_prefers_large_and_long_and_is_deterministic() -> None:
    tracker = FaceTracker()
    for i, t in enumerate(times(20)):
        faces = [centred(0.15, 0.5, w=0.1, h=0.16)]  # small, whole video: 20 x 1
        if i < 10:
            faces.append(centred(0.4, 0.5, w=0.2, h=0.32))  # 4x area, half the video: 10 x 4
        if i >= 10:
            faces.append(centred(0.65, 0.5, w=0.2, h=0.32))  # the same, later: ties with id 1
        if i >= 15:
            faces.append(centred(0.88, 0.5, w=0.15, h=0.24))  # 5 x 2.25: ranks below 20 x 1
        tracker.update(t, faces, W, H)
    tracker.finish(4.0)
    assert [s.id for s in tracker.tracks()] == [0, 1, 2, 3]
    assert tracker.select(10) == [1, 2, 0, 3]  # 1 and 2 tie: earlier first detection wins
    assert tracker.select(2) == [1, 2]
    assert tracker.select(0) == []
    assert tracker.select(2) == tracker.select(2)
    with pytest.raises(ValueError, match="max_faces"):
        tracker.select(-1)


def test_summary_mean_box() -> None:
    tracker = FaceTracker()
    for i, t in enumerate(times(3)):
        tracker.update(t, [centred(0.4 + 0.01 * i, 0.5)], W, H)
    tracker.finish(0.4)
    (s,) = tracker.tracks()
    assert (s.first_s, s.last_s, s.detections) == (0.0, 0.4, 3)
    assert s.mean_box.cx == pytest.approx(0.41)
    assert s.mean_area_px == pytest.approx(0.1 * W * 0.16 * H)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (centred(0.5, 0.5, w=0.1, h=0.1), (288, 148, 64)),  # centred: max(64, 36) px
        (Box(0.0, 0.4, 0.1, 0.1), (0, 130, 64)),  # left edge
        (Box(0.95, 0.4, 0.1, 0.1), (576, 130, 64)),  # right edge, the box even leaks out
        (Box(0.5, -0.05, 0.1, 0.1), (320, 0, 64)),  # top edge
        (Box(0.5, 0.98, 0.1, 0.1), (320, 296, 64)),  # bottom edge
        (Box(-0.02, 0.95, 0.1, 0.1), (0, 296, 64)),  # a corner
        (Box(0.1, 0.0, 0.8, 1.0), (140, 0, 360)),  # larger than the frame: the shorter side
    ],
)
def test_square_crop_clamps_to_the_frame(box: Box, expected: tuple[int, int, int]) -> None:
    x0, y0, side = square_crop(box, W, H, margin=0.0)
    assert (x0, y0, side) == expected
    assert x0 >= 0 and x0 + side <= W and y0 >= 0 and y0 + side <= H


def test_square_crop_margin_tiny_faces_and_fractions() -> None:
    assert square_crop(centred(0.5, 0.5, w=0.1, h=0.1), W, H, margin=0.25) == (272, 132, 96)
    assert square_crop(centred(0.5, 0.5, w=0.1, h=0.1), W, H, margin=5.0) == (140, 0, 360)
    assert square_crop(Box(0.999, 0.999, 1e-6, 1e-6), W, H, margin=0.0) == (639, 359, 1)
    assert square_crop(Box(0.5, 0.5, 0.5, 0.5), 1, 1, margin=0.2) == (0, 0, 1)
    frac = square_crop_box(centred(0.5, 0.5, w=0.1, h=0.1, score=0.7), W, H, margin=0.0)
    assert frac == TrackBox(288 / W, 148 / H, 64 / W, 64 / H, 0.7)
    rng = np.random.default_rng(2)
    for _ in range(200):
        x, y = rng.uniform(-0.3, 1.1, 2)
        w, h = rng.uniform(0.001, 1.5, 2)
        x0, y0, side = square_crop(Box(x, y, w, h), 97, 53, float(rng.uniform(0, 1)))
        assert side >= 1 and 0 <= x0 <= 97 - side and 0 <= y0 <= 53 - side


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iou_threshold": 0.0}, "iou_threshold"),
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"max_gap_s": 0.0}, "max_gap_s"),
        ({"max_gap_s": -1.0}, "max_gap_s"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"min_detections": 0}, "min_detections"),
        ({"hold_s": 2.0}, "hold_s"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceTracker(**kwargs)  # type: ignore[arg-type]


def test_bad_calls_raise() -> None:
    tracker = FaceTracker()
    tracker.update(1.0, [centred(0.5, 0.5)], W, H)
    with pytest.raises(ValueError, match="strictly increase"):
        tracker.update(1.0, [], W, H)
    with pytest.raises(ValueError, match="strictly increase"):
        tracker.update(0.5, [], W, H)
    with pytest.raises(ValueError, match="frame size"):
        tracker.update(2.0, [], 0, H)
    with pytest.raises(ValueError, match="w > 0 and h > 0"):
        tracker.update(2.0, [Box(0.1, 0.1, 0.0, 0.1)], W, H)
    with pytest.raises(ValueError, match="non-finite"):
        tracker.update(2.0, [Box(float("nan"), 0.1, 0.1, 0.1)], W, H)
    with pytest.raises(ValueError, match="end_t"):
        tracker.finish(0.5)
    tracker.finish(1.0)
    with pytest.raises(RuntimeError, match="after finish"):
        tracker.update(3.0, [], W, H)
    with pytest.raises(ValueError, match="margin"):
        square_crop(centred(0.5, 0.5), W, H, margin=-0.1)
    with pytest.raises(ValueError, match="frame size"):
        square_crop(centred(0.5, 0.5), W, 0, margin=0.1)
