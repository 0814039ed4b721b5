"""emotion_model.sample_data: drawn faces per emotion, RAVDESS and CREMA-D names, demo videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_fixtures import decode_frames, needs_encoder

from emotion_model.labels import EMOTION_LABELS, parse_crema_d, parse_ravdess
from emotion_model.sample_data import (
    EMOTION_CODES,
    make_sample_dataset,
    render_face_clip,
)


def test_render_face_clip_shape_determinism_and_onset() -> None:
    kwargs = {"actor_seed": 7, "num_frames": 30, "height": 96, "width": 128, "fps": 30}
    happy = render_face_clip("happy", **kwargs)
    assert happy.shape == (30, 96, 128, 3)
    assert happy.dtype == np.uint8
    np.testing.assert_array_equal(happy, render_face_clip("happy", **kwargs))
    assert not np.array_equal(happy, render_face_clip("happy", take_seed=1, **kwargs))
    # the expression grows over the clip: late frames differ from the start more than
    # two early frames differ from each other
    start = happy[0].astype(float)
    assert np.abs(happy[-1] - start).mean() > 2 * np.abs(happy[1] - start).mean()


def test_render_face_clip_emotions_differ() -> None:
    last = {
        e: render_face_clip(e, actor_seed=3, num_frames=12, height=64, width=64,
                            fps=10)[-1].astype(float)
        for e in EMOTION_LABELS
    }
    for a in EMOTION_LABELS:
        for b in EMOTION_LABELS:
            if a < b:
                assert np.abs(last[a] - last[b]).mean() > 0.5, (a, b)


def test_render_face_clip_rejects_unknown_emotion() -> None:
    with pytest.raises(ValueError, match="unknown emotion 'calm'"):
        render_face_clip("calm", actor_seed=0, num_frames=2, height=32, width=32, fps=30)


def test_ravdess_layout_names_parse_back(tmp_path: Path) -> None:
    paths = make_sample_dataset(tmp_path, actors=2, layout="ravdess", takes_per_emotion=2,
                                seconds=0.4, fps=10, size=(48, 48))
    assert len(paths) == 2 * 6 * 2
    seen = set()
    for path in paths:
        parsed = parse_ravdess(path)
        assert parsed is not None, path
        actor = int(parsed.actor)
        assert path.parent.name == f"Actor_{actor:02d}"
        assert path.name.startswith("02-01-")
        assert path.stem.split("-")[2] == EMOTION_CODES["ravdess"][parsed.label]
        seen.add((parsed.label, parsed.actor))
    assert seen == {(e, a) for e in EMOTION_LABELS for a in ("01", "02")}
    assert len({p.name for p in paths}) == len(paths)
    decoded, _ = decode_frames(paths[0])
    assert len(decoded) == 4
    assert decoded[0].shape == (48, 48, 3)


@pytest.mark.parametrize("crema_format", ["mp4", "flv"])
def test_crema_d_layout_names_parse_back(tmp_path: Path, crema_format: str) -> None:
    if crema_format == "flv":
        needs_encoder("flv")
    emotions = ("angry", "neutral", "sad")
    paths = make_sample_dataset(tmp_path, actors=2, layout="crema-d", emotions=emotions,
                                takes_per_emotion=3, seconds=0.3, fps=10, size=(32, 48),
                                crema_format=crema_format)
    assert len(paths) == 2 * 3 * 3
    labels = set()
    for path in paths:
        assert path.suffix == f".{crema_format}"
        parsed = parse_crema_d(path)
        assert parsed is not None, path
        assert parsed.actor in {"1001", "1002"}
        labels.add(parsed.label)
    assert labels == set(emotions)
    decoded, _ = decode_frames(paths[0])
    assert len(decoded) == 3
    assert decoded[0].shape == (32, 48, 3)


def test_sample_dataset_rejects_too_many_takes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes_per_emotion must be in 1..4"):
        make_sample_dataset(tmp_path, actors=1, layout="ravdess", takes_per_emotion=5)
    with pytest.raises(ValueError, match="layout must be one of"):
        make_sample_dataset(tmp_path, actors=1, layout="affectnet")  # type: ignore[arg-type]


def test_first_actor_adds_new_faces_that_match_a_larger_render(tmp_path: Path) -> None:
    kwargs = {"layout": "ravdess", "emotions": ("happy",), "seconds": 0.2, "fps": 10,
              "size": (32, 32)}
    both = make_sample_dataset(tmp_path / "all", actors=3, **kwargs)
    third = make_sample_dataset(tmp_path / "third", actors=1, first_actor=3, **kwargs)
    assert [p.name for p in third] == ["02-01-03-01-01-01-03.mp4"]  # 03: happy
    assert third[0].parent.name == "Actor_03"
    assert decode_frames(third[0])[0][0].tobytes() == decode_frames(both[2])[0][0].tobytes()
    assert decode_frames(both[0])[0][0].tobytes() != decode_frames(third[0])[0][0].tobytes()
    with pytest.raises(ValueError, match=r"actors 99\.\.100 must be within 1\.\.99"):
        make_sample_dataset(tmp_path / "x", actors=2, first_actor=99, **kwargs)
