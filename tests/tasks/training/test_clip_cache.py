"""The clip cache: each video decoded once, keys, S3, the real clips, the clips' sound."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from emotion_model.audio import AudioSpec
from emotion_model.face_clips import CropSpec
from tasks.training.clip_cache import (
    ClipCache,
    ClipSpec,
    audio_dtype,
    audio_entry,
    build_cache,
    cache_key,
    decode_training_clips,
)
from tasks.training.data import Example, collect_examples

SPEC = ClipSpec(num_frames=8, img_size=32, clip_seconds=4.0, max_clips=2)


def test_cache_decodes_each_video_once_and_skips_corrupt(two_layouts: Path,
                                                         tmp_path: Path) -> None:
    examples, _ = collect_examples([str(two_layouts / "crema")])
    cache = ClipCache(str(tmp_path / "cache"), SPEC)
    seen: list[bool] = []
    kept, first = build_cache(cache, examples, threads=2, on_video=lambda e, ok: seen.append(ok))
    assert first.decoded == 6 and first.cached == 0 and len(kept) == 6
    assert [uri for uri, _ in first.corrupt] == [str(two_layouts / "crema" / "1003_IEO_SAD_HI.mp4")]
    assert "CorruptVideoError" in first.corrupt[0][1] and "\n" not in first.corrupt[0][1]
    assert sorted(seen) == [False] + [True] * 6

    clips = cache.load(kept[0])
    assert clips.dtype == np.uint8 and clips.shape[1:] == (16, 32, 32, 3)  # 2 x num_frames
    _, second = build_cache(ClipCache(str(tmp_path / "cache"), SPEC), kept)
    assert second.decoded == 0 and second.cached == 6  # later epochs and retrains: no decode


def test_cache_key_follows_what_changes_the_clips(two_layouts: Path) -> None:
    e = collect_examples([str(two_layouts / "crema")])[0][0]
    keys = {
        cache_key(e, SPEC),
        cache_key(e, ClipSpec(12, 32, 4.0, 2)),
        cache_key(e, ClipSpec(8, 48, 4.0, 2)),
        cache_key(Example(e.uri, "other-etag", e.size, e.label, e.actor, e.dataset), SPEC),
    }
    assert len(keys) == 4
    assert cache_key(e, SPEC) == cache_key(e, ClipSpec(8, 32, 4.0, 2))


def test_cache_on_s3(two_layouts: Path, s3_server, s3_bucket: str, tmp_path: Path) -> None:
    client = s3_server.client()
    for path in sorted((two_layouts / "ravdess" / "Actor_02").glob("*.mp4")):
        client.upload_file(str(path), s3_bucket, f"data/Actor_02/{path.name}")
    options = {"endpoint_url": s3_server.endpoint_url}
    examples, _ = collect_examples([f"s3://{s3_bucket}/data"], options)
    assert len(examples) == 3 and all(e.uri.startswith("s3://") and e.etag for e in examples)
    cache = ClipCache(f"s3://{s3_bucket}/cache", SPEC, options, local_dir=tmp_path / "a")
    kept, report = build_cache(cache, examples)
    assert report.decoded == 3
    keys = client.list_objects_v2(Bucket=s3_bucket, Prefix="cache/clips/")["Contents"]
    assert len(keys) == 3
    fresh = ClipCache(f"s3://{s3_bucket}/cache", SPEC, options, local_dir=tmp_path / "b")
    _, again = build_cache(fresh, kept)  # another machine: the cache is found on S3
    assert again.cached == 3 and again.decoded == 0
    np.testing.assert_array_equal(fresh.load(kept[0]), cache.load(kept[0]))


def test_real_clips_parse_and_decode_through_the_cache(crema_d_dir: Path, ravdess_like_clip: Path,
                                                       tmp_path: Path) -> None:
    examples, report = collect_examples([str(crema_d_dir), str(ravdess_like_clip.parent)])
    assert {(e.label, e.actor) for e in examples} == {
        ("angry", "crema-d:1001"), ("happy", "crema-d:1001"), ("neutral", "crema-d:1001"),
        ("sad", "crema-d:1001")}
    assert report.outside_classes == {"surprised": 1}  # the RAVDESS-shaped clip: emotion 08
    cache = ClipCache(str(tmp_path / "cache"), ClipSpec(16, 64, 4.0, 2))
    kept, cache_report = build_cache(cache, examples)
    assert len(kept) == 4 and not cache_report.corrupt
    for e in kept:
        clips = cache.load(e)
        assert clips.shape[1:] == (32, 64, 64, 3) and clips.std() > 5  # real pictures


def test_face_crops_follow_the_main_face_and_key_the_cache(tmp_path: Path,
                                                           crema_d_dir: Path) -> None:
    """Face crops: the real clip's face (one track) gives its clips; the key includes the crop,
    so whole-frame and face-crop clips of one video never share an entry."""
    face = ClipSpec(8, 32, 4.0, 2, CropSpec.face())
    examples, _ = collect_examples([str(crema_d_dir)])
    e = examples[0]
    assert cache_key(e, face) != cache_key(e, SPEC)
    assert cache_key(e, face) != cache_key(e, ClipSpec(8, 32, 4.0, 2, CropSpec.face(margin=0.5)))
    clips = decode_training_clips(e, face).frames
    whole = decode_training_clips(e, SPEC).frames
    assert clips.shape == whole.shape == (1, 16, 32, 32, 3)
    assert not np.array_equal(clips, whole)


def test_a_training_video_without_a_face_is_left_out(tmp_path: Path, crema_d_dir: Path) -> None:
    from video_fixtures import make_test_pattern

    from emotion_model.video_writer import encode_video

    folder = tmp_path / "crema"
    folder.mkdir()
    shutil.copy(crema_d_dir / "1001_DFA_ANG_XX.flv", folder / "1001_DFA_ANG_XX.flv")
    encode_video(folder / "1002_DFA_HAP_XX.mp4", make_test_pattern(20, 64, 64), fps=10)
    examples, _ = collect_examples([str(folder)])
    cache = ClipCache(str(tmp_path / "cache"), ClipSpec(8, 32, 4.0, 2, CropSpec.face()))
    kept, report = build_cache(cache, examples)
    assert [Path(e.uri).name for e in kept] == ["1001_DFA_ANG_XX.flv"]
    ((uri, problem),) = report.corrupt
    assert uri.endswith("1002_DFA_HAP_XX.mp4") and problem.startswith("NoFaceError: ")
    assert problem.endswith("no face found")


# --- the sound of each clip, for models that read audio ------------------------------------------
VOICE = AudioSpec(seconds=1.0)
AUDIO_SPEC = ClipSpec(num_frames=8, img_size=32, clip_seconds=1.0, max_clips=2, audio=VOICE)


def test_audio_cache_keeps_each_clips_sound_beside_its_frames(voiced: Path,
                                                              tmp_path: Path) -> None:
    """One decoding pass gives the frames (the same as a frames-only cache's) and each clip's
    log-mel with ``present``; a video without an audio stream is cached with silence, absent."""
    examples, _ = collect_examples([str(voiced)])
    cache = ClipCache(str(tmp_path / "cache"), AUDIO_SPEC)
    kept, report = build_cache(cache, examples)
    assert report.decoded == len(kept) == 24 and not report.corrupt
    frames_only = ClipCache(str(tmp_path / "cache"), dataclasses.replace(AUDIO_SPEC, audio=None))
    build_cache(frames_only, kept)
    for e in kept:
        sound = cache.load_audio(e)
        assert sound.dtype == audio_dtype(VOICE) and sound.shape == (cache.count(e),)
        assert sound["log_mel"].shape[1:] == VOICE.shape == (64, 100)
        voiced_take = e.actor != "crema-d:1004"
        assert sound["present"].all() if voiced_take else not sound["present"].any()
        if voiced_take:
            assert sound["log_mel"].std() > 1.0  # a voice, not the constant of silence
        np.testing.assert_array_equal(cache.load(e), frames_only.load(e))
    names = sorted(p.name for p in (tmp_path / "cache" / "clips").iterdir())
    keys = [cache_key(e, AUDIO_SPEC) for e in kept]
    assert names == sorted([*keys, *(audio_entry(k) for k in keys),
                            *(cache_key(e, frames_only.spec) for e in kept)])

    (tmp_path / "cache" / "clips" / audio_entry(keys[0])).unlink()  # cut short before the sound
    _, again = build_cache(ClipCache(str(tmp_path / "cache"), AUDIO_SPEC), kept)
    assert (again.decoded, again.cached) == (1, 23)


def test_audio_cache_key_holds_the_audio_spec_and_code_version(
    two_layouts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frames-only key is the key of before audio (existing caches stay valid); with audio
    it changes with the log-mel's spec and with ``AUDIO_CODE_VERSION``."""
    import tasks.training.clip_cache as clip_cache

    e = collect_examples([str(two_layouts / "crema")])[0][0]
    before = "|".join(str(v) for v in ("clips-v2", e.uri, e.etag, 8, 32, 4.0, 2, "frame"))
    assert cache_key(e, SPEC) == hashlib.sha256(before.encode()).hexdigest()[:32] + ".npy"
    with_audio = dataclasses.replace(SPEC, audio=AudioSpec())
    keys = {cache_key(e, SPEC), cache_key(e, with_audio),
            cache_key(e, dataclasses.replace(SPEC, audio=AudioSpec(n_mels=32))),
            cache_key(e, dataclasses.replace(SPEC, audio=AudioSpec(seconds=2.0)))}
    monkeypatch.setattr(clip_cache, "AUDIO_CODE_VERSION", clip_cache.AUDIO_CODE_VERSION + 1)
    keys |= {cache_key(e, with_audio), cache_key(e, SPEC)}
    assert len(keys) == 5  # the frames-only key ignores the audio code's version
