"""The batch flow serving models that read audio: ``predictions.audio_present`` and
``modality``, ``videos.audio_codec`` and ``clips_no_audio``, the summary's
``counts.clips_no_audio`` and ``model.modality``; a video model file written before the audio
branch runs as before; an audio-only model's clips and videos without sound.

A mix of files with and without sound: drawn faces with a synthetic voice (AAC), one without a
sound track, a real CREMA-D clip (MP3 in FLV) and a file whose first AAC packets are garbage.
Untrained small models (16 frames of 64 px, whole frames) on the CPU, 1 s clips.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from video_fixtures import CREMA_D_DIR, make_test_pattern, tone, write_av

from emotion_model.checkpoint import save_deployment
from emotion_model.errors import NoAudioError
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import build_model
from emotion_model.predict import Predictor, clip_probabilities, predict_video
from emotion_model.sample_data import make_sample_dataset
from emotion_model.video import read_clips
from flows.batch_inference import batch_inference
from tasks.batch.infer import process_shard
from tasks.batch.planning import preflight
from tasks.batch.settings import BatchSettings
from tasks.common.listing import VideoObject, local_etag

CREMA = "1001_DFA_HAP_XX.flv"
SOUND = {
    "voiced_a.mp4": [True, True],
    "voiced_b.mp4": [True, True],
    "mute.mp4": [False, False],
    CREMA: [True, True],
    "garbled.mkv": [False, True],  # its audio packets between 0.2 and 0.6 s are random bytes
}
"""Each file's clips (1 s windows, in order): whether the clip has usable sound."""
CODECS = {"voiced_a.mp4": "aac", "voiced_b.mp4": "aac", "mute.mp4": None, CREMA: "mp3float",
          "garbled.mkv": "aac"}
PROBS = [f"prob_{label}" for label in EMOTION_LABELS]
RUN_ID = "20260101T000000Z-audio001"


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five files of `SOUND` in one folder."""
    root, made = tmp_path_factory.mktemp("audio-mix"), tmp_path_factory.mktemp("audio-made")
    sample = {"actors": 1, "layout": "ravdess", "seconds": 2.0, "fps": 15, "size": (96, 96)}
    voiced = make_sample_dataset(made / "v", emotions=("happy", "sad"), audio=True, **sample)
    mute = make_sample_dataset(made / "m", emotions=("angry",), audio=False, **sample)
    for name, path in zip(("voiced_a.mp4", "voiced_b.mp4", "mute.mp4"), [*voiced, *mute],
                          strict=True):
        shutil.copy(path, root / name)
    shutil.copy(CREMA_D_DIR / CREMA, root / CREMA)
    write_av(root / "garbled.mkv", make_test_pattern(20, 64, 64), audio=tone(2.0, 440.0),
             audio_codec="aac", garble=lambda t: 0.2 <= t < 0.6)
    return root


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An UNTRAINED small audio-only model (its file still names frames: the reader's clips)."""
    path = tmp_path_factory.mktemp("audio-model") / "small-audio.safetensors"
    torch.manual_seed(0)
    save_deployment(build_model("small", modality="audio").eval(), path, num_frames=16,
                    img_size=64, untrained=True)
    return path


def written_before_audio(model: Path, path: Path) -> Path:
    """A copy of video model ``model`` as the code before the audio branch wrote it: its
    metadata without ``modality`` and ``audio``."""
    with safe_open(str(model), "pt") as f:
        header = dict(f.metadata())
    tensors = load_file(str(model))
    record = json.loads(header["emotion_pipeline"])
    assert record.pop("modality") == "video" and record.pop("audio") is None
    save_file(tensors, str(path), metadata={**header, "emotion_pipeline": json.dumps(record)})
    return path


def shard(mix: Path, output: Path, model: Path, names: list[str]) -> tuple[Any, Predictor]:
    """``names`` of ``mix`` through `process_shard` with ``model``: its result and predictor."""
    predictor = Predictor.from_file(model, device="cpu")
    settings = BatchSettings(source=str(mix), output=str(output), model=str(model),
                             clip_seconds=1.0, device="cpu", batch_size=3, decode_threads=2)
    videos = []
    for name in names:
        st = (mix / name).stat()
        videos.append(VideoObject(uri=str(mix / name), size=st.st_size,
                                  etag=local_etag(st.st_size, st.st_mtime_ns)))
    result = process_shard(0, videos, settings, run_id=RUN_ID, predictor=predictor,
                           date="2026-01-01")
    return result, predictor


def rows(output: Path, table: str) -> pd.DataFrame:
    """``table``'s rows, by file name (then clip), the file's name in ``name``."""
    frame = pd.read_parquet(output / table)
    frame["name"] = frame["video_uri"].map(lambda u: Path(u).name)
    keys = ["name", "clip_index"] if table == "predictions" else ["name"]
    return frame.sort_values(keys).reset_index(drop=True)


def by_file(clips: pd.DataFrame, column: str) -> dict[str, list[Any]]:
    """``{file name: column's values over its clips, in order}``."""
    return {name: [v.item() if hasattr(v, "item") else v for v in group[column]]
            for name, group in clips.groupby("name")}


def test_a_fused_model_serves_files_with_and_without_sound(
    prefect_server: None, fused_model: Path, mix: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    summary = batch_inference(source=str(mix), model=str(fused_model), output=str(output),
                              clip_seconds=1.0, batch_size=4, device="cpu")
    counts = summary["counts"]
    assert (counts["succeeded"], counts["failed"], counts["clips"]) == (5, 0, 10)
    assert counts["clips_no_audio"] == 3  # mute.mp4's two, garbled.mkv's first
    assert summary["model"]["modality"] == "audio-video"
    assert sum(s["clips_no_audio"] for s in summary["shards"]) == 3

    clips = rows(output, "predictions")
    assert by_file(clips, "audio_present") == SOUND
    assert by_file(clips, "modality") == {
        name: ["audio-video" if p else "video" for p in sound] for name, sound in SOUND.items()}
    videos = rows(output, "videos").set_index("name")
    codecs = videos["audio_codec"].astype(object)
    assert codecs.where(codecs.notna(), None).to_dict() == CODECS
    assert videos["clips_no_audio"].to_dict() == {n: s.count(False) for n, s in SOUND.items()}

    # each file alone through predict_video: the same sound per clip and the same numbers
    predictor = Predictor.from_file(fused_model, device="cpu")
    for name, group in clips.groupby("name"):
        alone = predict_video(predictor, mix / name, clip_seconds=1.0)
        assert [(c.audio_present, c.modality) for c in alone.clips] == list(
            zip(group["audio_present"], group["modality"].astype(str), strict=True))
        want = [[c.probabilities[k] for k in EMOTION_LABELS] for c in alone.clips]
        np.testing.assert_allclose(group[PROBS].to_numpy(), want, atol=1e-5)
    # the sound did go in: without it, a voiced clip's probabilities differ
    voiced, _ = read_clips(mix / "voiced_a.mp4", num_frames=16, img_size=64, clip_seconds=1.0,
                           audio=predictor.audio_spec)
    with_sound = clip_probabilities(predictor, voiced)
    silent = predictor.probabilities(np.stack([c.frames for c in voiced]), None, [False] * 2)
    assert np.abs(with_sound - silent).max() > 1e-4
    np.testing.assert_allclose(clips[clips["name"] == "voiced_a.mp4"][PROBS], with_sound,
                               atol=1e-5)


def test_a_video_model_file_from_before_the_audio_branch_runs_unchanged(
    model_path: Path, mix: Path, tmp_path: Path
) -> None:
    """No ``modality`` in its file: a video model; no audio demuxed (no codec found even where
    there is sound), every clip ``audio_present`` False and ``modality`` video, the same
    probabilities as its frames alone."""
    old = written_before_audio(model_path, tmp_path / "before.safetensors")
    info = preflight(BatchSettings(source=str(mix), output=str(tmp_path / "out"),
                                   model=str(old), device="cpu"))
    assert info.modality == "video"
    result, predictor = shard(mix, tmp_path / "out", old, list(SOUND))
    assert (result.succeeded, result.clips, result.clips_no_audio) == (5, 10, 0)
    clips = rows(tmp_path / "out", "predictions")
    assert not clips["audio_present"].any() and set(clips["modality"]) == {"video"}
    videos = rows(tmp_path / "out", "videos")
    assert videos["audio_codec"].isna().all() and videos["clips_no_audio"].isna().all()
    for name, group in clips.groupby("name"):
        frames, _ = read_clips(mix / name, num_frames=16, img_size=64, clip_seconds=1.0)
        want = predictor.probabilities(np.stack([c.frames for c in frames]))
        np.testing.assert_allclose(group[PROBS].to_numpy(), want, atol=1e-5)


def test_an_audio_model_leaves_out_what_it_cannot_hear(
    audio_model: Path, mix: Path, tmp_path: Path
) -> None:
    """A clip without sound is written with ``modality`` none (the model's no-audio output)
    and left out of its video's mean; a video with no sound at all is one ``errors`` row
    (stage decode, NoAudioError), as ``predict_video`` raises."""
    output = tmp_path / "out"
    result, predictor = shard(mix, output, audio_model, ["mute.mp4", "garbled.mkv"])
    assert (result.succeeded, result.failed, result.clips, result.clips_no_audio) == (1, 1, 2, 1)
    assert result.failed_by_stage == {"decode": 1}
    errors = pd.read_parquet(output / "errors")
    assert errors["error_type"].tolist() == ["NoAudioError"]
    assert errors["message"].iloc[0] == (
        f"{mix / 'mute.mp4'}: an audio model, and no clip has sound: no audio stream")
    with pytest.raises(NoAudioError, match="no audio stream"):
        predict_video(predictor, mix / "mute.mp4", clip_seconds=1.0)

    clips = rows(output, "predictions")
    assert by_file(clips, "audio_present") == {"garbled.mkv": [False, True]}
    assert by_file(clips, "modality") == {"garbled.mkv": ["none", "audio"]}
    video = rows(output, "videos").iloc[0]
    heard = clips.iloc[1]
    assert (video["label"], video["clips_no_audio"], video["num_clips"]) == (heard["label"], 1, 2)
    np.testing.assert_allclose(video[PROBS].to_numpy(float), heard[PROBS].to_numpy(float),
                               rtol=1e-6)
    alone = predict_video(predictor, mix / "garbled.mkv", clip_seconds=1.0)
    assert [c.modality for c in alone.clips] == ["none", "audio"]
    assert alone.label == heard["label"]
