"""Face crops in the decoding pass (``ClipReader(crop=CropSpec.face())``): tracks on the real
CREMA-D clips and on videos composed from real faces with known boxes (``face_fixtures``), the
crops themselves, ``max_faces``, ``CropSpec`` in a model file's metadata, and bad arguments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from face_fixtures import (
    GroundTruth,
    faceless,
    leaving_face,
    one_face_quarter,
    small_face,
    tiny_face,
    two_faces,
)
from video_fixtures import CREMA_D_CLIPS, CREMA_D_DIR, make_test_pattern, needs_encoder

import emotion_model.clip_windows as clip_windows
from emotion_model.face_clips import FRAME_CROP, CropSpec, FaceTrackInfo
from emotion_model.faces import FaceBox
from emotion_model.sample_data import render_face_clip_with_boxes
from emotion_model.video import ClipReader, read_clips
from emotion_model.video_writer import encode_video

FACE = CropSpec.face()


def iou(a: tuple[float, ...], b: FaceBox) -> float:
    """IoU of an ``(x, y, w, h)`` tuple with a box (fractions)."""
    return FaceBox(*a[:4]).iou(b)


def track_iou(track: FaceTrackInfo, truth: GroundTruth) -> float:
    """Mean IoU of the track's boxes (at its detection times) with the true box of the face it
    follows (the identity it overlaps most) in the frame shown at that time."""
    by_identity: dict[str, list[float]] = {}
    for t, *box in track.path:
        frame = truth.frames[min(len(truth.frames) - 1, int(round(t * truth.fps)))]
        for face in frame:
            if face.visible >= 0.5:
                by_identity.setdefault(face.identity, []).append(iou(tuple(box), face.box))
    if not by_identity:
        return 0.0
    return max(float(np.mean(v)) for v in by_identity.values())


# --- the real clips ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CREMA_D_CLIPS))
def test_real_clip_one_track_found_in_nearly_every_detected_frame(name: str) -> None:
    clips, info = read_clips(CREMA_D_DIR / name, crop=FACE, num_frames=16, img_size=64)
    assert info.crop == "face" and len(info.faces) == 1
    (face,) = info.faces
    assert face.detections >= 0.95 * info.detect_frames
    # detect_fps 5 over ~2 s, plus the first frame
    assert 9 <= info.detect_frames <= 13
    assert [c.face_id for c in clips] == [face.face_id] and clips[0].frames.shape == (16, 64, 64, 3)
    assert face.clips == 1 and face.first_s == 0.0 and face.last_s > 1.5


def test_the_crop_is_a_square_around_the_face() -> None:
    """The clip of a real clip is cut around the face: its centre is the face's centre, and
    with margin 1 the face takes about a third of the crop."""
    (face_clip,), info = read_clips(CREMA_D_DIR / "1001_DFA_NEU_XX.flv", crop=FACE,
                                    num_frames=8, img_size=96)
    (whole,), _ = read_clips(CREMA_D_DIR / "1001_DFA_NEU_XX.flv", num_frames=8, img_size=96)
    assert not np.array_equal(face_clip.frames, whole.frames)
    x, y, w, h = face_clip.face_box
    width, height = 480, 360
    side = max(w * width, h * height) * (1 + 2 * FACE.margin)
    assert side == pytest.approx(3 * max(w * width, h * height))
    # skin at the centre (the face), the green screen in the top corners
    centre = face_clip.frames[:, 40:56, 40:56].reshape(-1, 3).mean(0)
    assert centre[0] > centre[1] + 30 and centre[0] > centre[2] + 30
    for corner in (face_clip.frames[:, :8, :8], face_clip.frames[:, :8, -8:]):
        r, g, b = corner.reshape(-1, 3).mean(0)
        assert g > r + 30 and g > b + 30


# --- composed videos with known boxes ------------------------------------------------------------
COMPOSED: list[tuple[str, Callable[..., tuple[Path, GroundTruth]], int]] = [
    ("quarter-off-centre", one_face_quarter, 1),
    ("two-side-by-side-one-moving", two_faces, 2),
    ("leaves-half-way", leaving_face, 1),
    ("ten-percent", small_face, 1),
    ("thirty-px", tiny_face, 1),
    ("faceless", faceless, 0),
]


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, GroundTruth]]:
    needs_encoder("libx264")
    root = tmp_path_factory.mktemp("composed")
    return {name: build(root / f"{name}.mp4", seconds=2.0, fps=25.0)
            for name, build, _ in COMPOSED}


@pytest.mark.parametrize(("name", "tracks"), [(n, k) for n, _, k in COMPOSED])
def test_composed_video_tracks_follow_the_known_faces(
    composed: dict[str, tuple[Path, GroundTruth]], name: str, tracks: int
) -> None:
    path, truth = composed[name]
    clips, info = read_clips(path, crop=FACE, num_frames=8, img_size=64, clip_seconds=1.0)
    assert len(info.faces) == tracks, [(f.face_id, f.first_s, f.last_s) for f in info.faces]
    for face in info.faces:
        assert track_iou(face, truth) >= 0.5, (name, face.face_id)
        assert face.clips >= 1
    assert {c.face_id for c in clips} >= {f.face_id for f in info.faces}
    if tracks == 0:
        assert clips == [] and info.clips == 2  # windows decoded, no face to cut
    if name == "leaves-half-way":  # seen in the first half only
        assert info.faces[0].last_s < 1.4


def test_max_faces_keeps_the_largest_and_longest(
    composed: dict[str, tuple[Path, GroundTruth]]
) -> None:
    path, truth = composed["two-side-by-side-one-moving"]
    _, info = read_clips(path, crop=FACE, num_frames=8, img_size=64, clip_seconds=1.0,
                         max_faces=1)
    (face,) = info.faces
    # the still face (160 px, "a") is larger than the moving one (140 px) and seen as long
    still = [f for f in truth.frames[0] if f.identity == "a"][0].box
    assert iou(face.box, still) >= 0.5


# --- the short-video fix and the crop spec -------------------------------------------------------
def test_a_short_video_converts_only_the_sampled_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video shorter than the clip window keeps its decoded frames and converts only the
    ones its targets take (it used to convert every frame)."""
    path = encode_video(tmp_path / "short.mp4", make_test_pattern(60, 96, 96), fps=30)
    calls = []
    real = clip_windows.to_rgb

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(clip_windows, "to_rgb", counting)
    (clip,), info = read_clips(path, num_frames=12, img_size=32)
    assert info.frames_decoded == 60 and clip.frames.shape == (12, 32, 32, 3)
    assert len(calls) == 12


def test_crop_spec_in_metadata_round_trips_and_frame_is_the_default() -> None:
    assert CropSpec.from_metadata({}) == FRAME_CROP
    assert CropSpec.from_metadata({"crop": "frame"}) == FRAME_CROP
    assert CropSpec.from_metadata({"crop": FACE.to_metadata()}) == FACE
    assert FACE.to_metadata()["detector"] == "blazeface-full-range"
    assert FACE.key() != FRAME_CROP.key() != CropSpec.face(margin=0.5).key()
    assert FACE.with_detect_fps(2.0).detect_fps == 2.0 and FACE.with_detect_fps(None) == FACE


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"detect_fps": 0}, "detect_fps"),
    ({"detect_fps": -1.0}, "detect_fps"),
    ({"margin": -0.1}, "margin"),
])
def test_bad_crop_settings_are_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CropSpec.face(**kwargs)


def test_bad_reader_arguments() -> None:
    with pytest.raises(ValueError, match="max_faces"):
        ClipReader(b"x", crop=FACE, max_faces=0)
    with pytest.raises(ValueError, match="crop must be"):
        CropSpec.of("faces")
    with pytest.raises(ValueError, match="unknown face detector"):
        CropSpec.face(detector="yolo")


# --- the drawn-face sample data goes through the face path ---------------------------------------
@pytest.mark.parametrize(("actor", "size"), [(1, (96, 96)), (4, (160, 160)), (7, (360, 480))])
def test_drawn_faces_are_found_where_the_renderer_drew_them(
    tmp_path: Path, actor: int, size: tuple[int, int]
) -> None:
    """The renderer's own head boxes are the ground truth: one track, found at every detection,
    its boxes overlapping the drawn head (IoU >= 0.5)."""
    frames, boxes = render_face_clip_with_boxes("fearful", actor_seed=actor, num_frames=30,
                                                height=size[0], width=size[1], fps=15)
    path = encode_video(tmp_path / "drawn.mp4", frames, fps=15)
    _, info = read_clips(path, crop=FACE, num_frames=8, img_size=32)
    (face,) = info.faces
    assert face.detections == info.detect_frames
    ious = [FaceBox(x, y, w, h).iou(FaceBox(*boxes[min(29, round(t * 15))]))
            for t, x, y, w, h in face.path]
    assert min(ious) >= 0.5
