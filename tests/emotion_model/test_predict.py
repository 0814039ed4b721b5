"""predict_video end to end with the small variant on an encoded video, and the Predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_model.checkpoint import save_deployment
from emotion_model.errors import CorruptVideoError, EmptyVideoError
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import EmotionClassifier
from emotion_model.predict import (
    Predictor,
    VideoPrediction,
    clip_modality,
    predict_video,
    resolve_device,
)
from emotion_model.video import read_clips

METADATA = {"labels": list(EMOTION_LABELS), "num_frames": 16, "img_size": 112}


@pytest.fixture(scope="module")
def prediction(small_model: EmotionClassifier, long_video: Path) -> VideoPrediction:
    return predict_video(small_model, long_video, METADATA, device="cpu")


def test_predict_video_end_to_end(prediction: VideoPrediction, long_video: Path) -> None:
    assert prediction.uri == str(long_video)
    assert len(prediction.clips) == 5
    assert [(c.index, c.start_s, c.end_s) for c in prediction.clips] == [
        (i, 4.0 * i, 4.0 * i + 4.0) for i in range(5)
    ]
    assert prediction.duration_s == pytest.approx(20.0)
    assert not prediction.partial and prediction.partial_reason is None
    assert prediction.model_version == "unversioned"
    # a video model reads no sound
    assert {(c.audio_present, c.modality) for c in prediction.clips} == {(False, "video")}
    for clip in [*prediction.clips, prediction]:
        assert list(clip.probabilities) == list(EMOTION_LABELS)
        assert sum(clip.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= p <= 1.0 for p in clip.probabilities.values())
        assert clip.label in EMOTION_LABELS
        assert clip.confidence == max(clip.probabilities.values())
        assert clip.probabilities[clip.label] == clip.confidence


def test_a_clips_modality_is_its_models_less_the_missing_sound() -> None:
    got = {(m, p): clip_modality(m, p) for m in ("video", "audio-video", "audio")
           for p in (True, False)}
    assert got == {("video", True): "video", ("video", False): "video",
                   ("audio-video", True): "audio-video", ("audio-video", False): "video",
                   ("audio", True): "audio", ("audio", False): "none"}
    with pytest.raises(ValueError, match="unknown model modality 'speech'"):
        clip_modality("speech", True)


def test_video_probabilities_are_the_mean_of_clips(prediction: VideoPrediction) -> None:
    per_clip = np.array([[c.probabilities[k] for k in EMOTION_LABELS] for c in prediction.clips])
    video = np.array([prediction.probabilities[k] for k in EMOTION_LABELS])
    np.testing.assert_allclose(video, per_clip.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert prediction.label == EMOTION_LABELS[int(video.argmax())]


def test_probabilities_match_the_model(small_model: EmotionClassifier, long_video: Path,
                                       prediction: VideoPrediction) -> None:
    """The same clips through normalize + model + softmax by hand give the same numbers."""
    from emotion_model.preprocess import normalize

    clips, _ = read_clips(long_video, num_frames=16, img_size=112)
    with torch.no_grad():
        want = torch.softmax(small_model(normalize(np.stack([c.frames for c in clips]))), -1)
    got = np.array([[c.probabilities[k] for k in EMOTION_LABELS] for c in prediction.clips])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_batch_size_does_not_change_results(small_model: EmotionClassifier, long_video: Path,
                                            prediction: VideoPrediction) -> None:
    again = predict_video(small_model, long_video, METADATA, batch_size=2, device="cpu")
    for a, b in zip(again.clips, prediction.clips, strict=True):
        assert a.label == b.label
        for k in EMOTION_LABELS:
            assert a.probabilities[k] == pytest.approx(b.probabilities[k], abs=1e-5)


def test_overlapping_clips(small_model: EmotionClassifier, long_video: Path) -> None:
    result = predict_video(small_model, long_video, METADATA, clip_seconds=8,
                           stride_seconds=4, device="cpu")
    assert [(c.start_s, c.end_s) for c in result.clips] == [
        (0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0)
    ]


def test_predictor_on_cpu_from_a_deployment_file(
    small_model: EmotionClassifier, long_video: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    meta = save_deployment(small_model, path, num_frames=16, img_size=64)
    predictor = Predictor.from_file(path, device="cpu")
    assert predictor.device == torch.device("cpu")
    assert not predictor.amp
    assert (predictor.num_frames, predictor.img_size) == (16, 64)
    assert predictor.model_version == meta["model_version"]
    assert predictor.labels == EMOTION_LABELS

    clips = np.random.default_rng(0).integers(0, 256, (3, 16, 64, 64, 3), dtype=np.uint8)
    probs = predictor.probabilities(clips)
    assert probs.shape == (3, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    result = predict_video(predictor, long_video.read_bytes())
    assert result.model_version == meta["model_version"]
    assert result.uri == "<video>"
    assert len(result.clips) == 5


def test_predict_from_a_file_object(small_model: EmotionClassifier, long_video: Path,
                                    prediction: VideoPrediction) -> None:
    with open(long_video, "rb") as fh:
        result = predict_video(small_model, fh, METADATA, device="cpu")
    assert [c.label for c in result.clips] == [c.label for c in prediction.clips]


def test_short_video_is_one_clip(small_model: EmotionClassifier, tmp_path: Path) -> None:
    from video_fixtures import make_test_pattern

    from emotion_model.video_writer import encode_video

    path = encode_video(tmp_path / "short.mp4", make_test_pattern(30, 96, 128), fps=30)
    result = predict_video(small_model, path, METADATA, device="cpu")
    assert len(result.clips) == 1
    assert result.clips[0].end_s == pytest.approx(result.duration_s) == pytest.approx(1.0)
    assert result.probabilities == pytest.approx(result.clips[0].probabilities)


def test_bad_videos_raise_typed_errors(small_model: EmotionClassifier, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyVideoError, match="empty file"):
        predict_video(small_model, empty, METADATA, device="cpu")
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    with pytest.raises(CorruptVideoError, match=r"notes\.txt: not a"):
        predict_video(small_model, text, METADATA, device="cpu")


@pytest.mark.parametrize("device", ["tpu", "gpu", "", "mps", "meta", "cuda:x", "cpu:"])
def test_bad_device_string(small_model: EmotionClassifier, device: str) -> None:
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu' or 'cuda\[:N\]', got"):
        Predictor(small_model, METADATA, device=device)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_cpu_amp_is_bf16_and_close_to_fp32(small_model: EmotionClassifier) -> None:
    """``amp=True`` on a CPU runs the convolutions in bf16 and returns float32 probabilities
    close to fp32 (bench/tuning.py: R50 1.8x faster on an AVX512-BF16 CPU)."""
    fp32 = Predictor(small_model, METADATA, device="cpu")
    bf16 = Predictor(small_model, METADATA, device="cpu", amp=True)
    assert not fp32.amp and bf16.amp and bf16.amp_dtype == torch.bfloat16

    seen: list[torch.dtype] = []
    conv = next(m for m in small_model.modules() if isinstance(m, torch.nn.Conv3d))
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    clips = np.random.default_rng(1).integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8)
    try:
        want = fp32.probabilities(clips)
        got = bf16.probabilities(clips)
    finally:
        handle.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-2)
