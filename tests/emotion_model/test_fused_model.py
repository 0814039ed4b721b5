"""The audio and audio-video models: shapes, the no-audio embedding and modality dropout,
gradients, deployment files (video files unchanged, modality checked against the weights),
the Predictor, ONNX / TorchScript export and ``new-model --modality``. Small preset, 8 frames
of 32 px, half a second of audio (50 log-mel frames), on the CPU."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn import functional as F  # noqa: N812

from cli.main import main as cli_main
from emotion_model.audio import AudioSpec
from emotion_model.audio_model import AUDIO_EMBED_DIM, AudioEncoder
from emotion_model.checkpoint import (
    load_deployment,
    save_deployment,
    save_training_checkpoint,
    weights_sha256,
)
from emotion_model.clip_windows import Clip
from emotion_model.errors import ArchitectureMismatchError
from emotion_model.export import PARITY_TOLERANCE, export_model
from emotion_model.model import EmotionClassifier, build_model, modality_of_state
from emotion_model.predict import Predictor, clip_probabilities, predict_batches
from emotion_model.preprocess import normalize

SPEC = AudioSpec(seconds=0.5)
"""64 mel bands x 50 frames: short audio for fast tests."""
T, SIZE = 8, 32
METADATA = {"num_frames": T, "img_size": SIZE}
NO_AUDIO = -7.0
"""A value no real embedding takes (they are means of ReLU outputs, >= 0)."""
VIDEO_SMALL_KEYS = ("fb57e2b195ef9533", 792)
"""sha256 (first 16 hex) of the small video model's sorted ``name|shape`` lines, and its
number of tensors, as the code before the audio branch built it: every video deployment file
written before keeps loading, with the same model_version."""


def _frames(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _audio(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *SPEC.shape, generator=torch.Generator().manual_seed(seed))


def _model(modality: str, seed: int = 0, **kwargs: object) -> EmotionClassifier:
    """A seeded small model whose no-audio embedding is set to `NO_AUDIO`."""
    torch.manual_seed(seed)
    model = build_model("small", modality=modality, audio_spec=SPEC, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        model.no_audio.fill_(NO_AUDIO)
    return model.eval()


def _head_inputs(model: EmotionClassifier, *args: torch.Tensor | None) -> torch.Tensor:
    """What ``model.head`` receives for ``model(*args)``."""
    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
    try:
        model(*args)
    finally:
        handle.remove()
    return seen[0].flatten(1)


@pytest.fixture(scope="module")
def fused() -> EmotionClassifier:
    return _model("audio-video")


@pytest.fixture(scope="module")
def audio_only() -> EmotionClassifier:
    return _model("audio")


# --- shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["video", "audio", "audio-video"])
def test_shapes_for_each_modality(modality: str) -> None:
    torch.manual_seed(0)
    spec = None if modality == "video" else SPEC
    model = build_model("small", modality=modality, audio_spec=spec).eval()  # type: ignore[arg-type]
    frames = None if modality == "audio" else _frames(2)
    with torch.no_grad():
        logits = model(frames, _audio(2), torch.tensor([True, False]))
        with_channel = model(frames, _audio(2).unsqueeze(1))
        without = model(frames, _audio(2))
    assert logits.shape == with_channel.shape == (2, 6) and logits.dtype == torch.float32
    torch.testing.assert_close(with_channel, without)
    assert model.modality == modality and model.audio_spec == spec
    assert modality_of_state(model.state_dict()) == modality
    features = {"video": 576, "audio": AUDIO_EMBED_DIM, "audio-video": 576 + AUDIO_EMBED_DIM}
    assert model.head[1].in_features == features[modality]  # small: 16 * 32 + 16 * 4 = 576


def test_audio_encoder_size_and_compute() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    encoder = AudioEncoder().eval()
    assert sum(p.numel() for p in encoder.parameters()) == 97_520
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = encoder(torch.randn(1, *AudioSpec().shape))
    assert out.shape == (1, 128)
    assert counter.get_total_flops() == pytest.approx(0.184e9, rel=0.01)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="modality must be one of video, audio, audio-video"):
        build_model("small", modality="sound")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a video model takes no audio_spec"):
        build_model("small", audio_spec=SPEC)
    with pytest.raises(ValueError, match="no SlowFast backbone"):
        build_model("small", modality="audio", pretrained="kinetics.pyth")
    with pytest.raises(ValueError, match="needs >= 16 log-mel frames"):
        build_model("small", modality="audio", audio_spec=AudioSpec(seconds=0.1))


def test_bad_inputs(fused: EmotionClassifier, audio_only: EmotionClassifier) -> None:
    with torch.no_grad():
        with pytest.raises(ValueError, match="disagree on the batch"):
            fused(_frames(2), _audio(3))
        with pytest.raises(ValueError, match=r"expected audio \[B, 64, frames\]"):
            fused(_frames(1), torch.randn(1, 32, 50))
        with pytest.raises(ValueError, match="needs frames"):
            fused(None, _audio(1))
        with pytest.raises(ValueError, match="no audio given"):
            audio_only(None, None, torch.tensor([True]))
        with pytest.raises(ValueError, match="needs audio or audio_present"):
            audio_only(None)


# --- the video model is the model card's, unchanged ----------------------------------------------
def test_video_model_is_unchanged(small_model: EmotionClassifier) -> None:
    state = small_model.state_dict()
    lines = "".join(f"{k}|{tuple(v.shape)}\n" for k, v in sorted(state.items()))
    assert (hashlib.sha256(lines.encode()).hexdigest()[:16], len(state)) == VIDEO_SMALL_KEYS
    assert not any("audio" in k for k in state)
    assert small_model.config == {"num_classes": 6, "hidden_size": 256, "dropout": 0.5,
                                  "use_se": True, "width": 16}
    x = _frames(2)
    with torch.no_grad():  # a video model ignores audio
        torch.testing.assert_close(small_model(x, _audio(2)), small_model(x), rtol=0, atol=0)


def test_a_video_file_written_before_the_audio_branch_loads_unchanged(
    small_model: EmotionClassifier, tmp_path: Path
) -> None:
    """A file with the metadata of before (no ``modality``, no ``audio``) is a video model:
    same model_version, same outputs."""
    data = io.BytesIO()
    saved = save_deployment(small_model, data, num_frames=T, img_size=SIZE)
    assert (saved["modality"], saved["audio"]) == ("video", None)
    raw = data.getvalue()
    header = json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    record = json.loads(header["emotion_pipeline"])
    del record["modality"], record["audio"]
    path = tmp_path / "before.safetensors"
    path.write_bytes(st_save(st_load(raw), metadata={"emotion_pipeline": json.dumps(record)}))

    model, meta = load_deployment(path)
    assert meta["model_version"] == saved["model_version"]
    assert (meta["modality"], meta["audio"], model.modality, model.audio_spec) == (
        "video", None, "video", None)
    x = _frames(2, seed=5)
    with torch.no_grad():
        assert torch.equal(model(x), small_model(x))
    predictor = Predictor(model, meta, device="cpu")
    assert (predictor.modality, predictor.audio_spec) == ("video", None)


# --- the no-audio embedding and modality dropout -------------------------------------------------
def test_audio_present_false_takes_the_no_audio_embedding(fused: EmotionClassifier) -> None:
    x, audio = _frames(3), _audio(3)
    garbage = audio.clone()
    garbage[1] = float("nan")  # an absent clip's audio is never read
    present = torch.tensor([True, False, True])
    with torch.no_grad():
        head_in = _head_inputs(fused, x, garbage, present)
        got = fused(x, garbage, present)
        no_audio = fused(x, None)
        all_present = fused(x, audio)
    assert torch.all(head_in[1, -AUDIO_EMBED_DIM:] == NO_AUDIO)
    assert torch.all(head_in[[0, 2], -AUDIO_EMBED_DIM:] >= 0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[1], no_audio[1])
    torch.testing.assert_close(got[[0, 2]], all_present[[0, 2]])


def test_an_audio_model_without_audio_predicts_its_prior(audio_only: EmotionClassifier) -> None:
    """Every clip without audio gets the same logits: the head on the no-audio embedding."""
    with torch.no_grad():
        absent = audio_only(None, _audio(3), torch.zeros(3, dtype=torch.bool))
        none = audio_only(None, None, torch.zeros(2, dtype=torch.bool))
        prior = audio_only.head(audio_only.no_audio[None])
    torch.testing.assert_close(absent, prior.expand(3, -1))
    torch.testing.assert_close(none, prior.expand(2, -1))


def test_modality_dropout_in_training_and_none_in_eval() -> None:
    model = _model("audio", seed=1, modality_dropout=0.3)
    batch = 64
    audio = _audio(batch)
    encoded: list[int] = []
    model.audio_encoder.register_forward_hook(lambda _m, inp, _o: encoded.append(len(inp[0])))

    model.train()
    torch.manual_seed(7)
    head_in = _head_inputs(model, None, audio)
    dropped = int((head_in == NO_AUDIO).all(dim=1).sum())
    assert 5 <= dropped <= 35  # binomial(64, 0.3): mean 19
    assert encoded == [batch - dropped]  # only the clips whose sound is used are encoded
    torch.manual_seed(7)
    assert torch.equal(_head_inputs(model, None, audio), head_in)  # seeded by the torch RNG

    model.eval()  # no dropout: deterministic, every clip with audio uses it
    with torch.no_grad():
        first, second = model(None, audio), model(None, audio)
        eval_in = _head_inputs(model, None, audio)
    assert torch.equal(first, second)
    assert not (eval_in == NO_AUDIO).all(dim=1).any()


def test_absent_audio_stays_out_of_the_encoders_batch_norm() -> None:
    model = _model("audio-video", seed=2, modality_dropout=0.0).train()
    before = model.audio_encoder.input_norm.running_mean.clone()
    audio = _audio(2)
    audio[1] = -23.0  # the log-mel of silence, as the reader gives an absent clip
    present = torch.tensor([True, False])
    model(_frames(2), audio, present)
    momentum = model.audio_encoder.input_norm.momentum
    want = (1 - momentum) * before + momentum * audio[:1].mean(dim=(0, 2))
    torch.testing.assert_close(model.audio_encoder.input_norm.running_mean, want)


def test_the_fused_gradient_reaches_both_branches() -> None:
    model = _model("audio-video", seed=3, modality_dropout=0.0).train()
    loss = F.cross_entropy(model(_frames(2), _audio(2), torch.tensor([True, False])),
                           torch.tensor([1, 4]))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for prefix in ("backbone.blocks.0.", "backbone.blocks.4.", "audio_encoder.blocks.0.",
                   "audio_encoder.input_norm.", "head."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
                   if n.startswith(prefix)), prefix
    assert grads["no_audio"] is not None and grads["no_audio"].abs().sum() > 0


# --- deployment files ----------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["audio", "audio-video"])
def test_save_load_keeps_modality_and_audio_spec(modality: str, tmp_path: Path) -> None:
    model = _model(modality, seed=4, modality_dropout=0.25)
    path = tmp_path / "model.safetensors"
    saved = save_deployment(model, path, num_frames=T, img_size=SIZE)
    assert saved["modality"] == modality and saved["audio"] == SPEC.to_metadata()
    assert saved["architecture"]["modality_dropout"] == 0.25

    loaded, meta = load_deployment(path)
    assert (loaded.modality, loaded.audio_spec, loaded.config) == (modality, SPEC, model.config)
    assert meta["model_version"] == saved["model_version"]
    frames = None if modality == "audio" else _frames(3)
    present = torch.tensor([True, False, True])
    with torch.no_grad():
        assert torch.equal(loaded(frames, _audio(3), present), model(frames, _audio(3), present))

    predictor = Predictor.from_file(path, device="cpu")
    assert (predictor.modality, predictor.audio_spec) == (modality, SPEC)
    clips = np.random.default_rng(0).integers(0, 256, (3, T, SIZE, SIZE, 3), dtype=np.uint8)
    probs = predictor.probabilities(clips, _audio(3).numpy(), [True, False, True])
    with torch.no_grad():
        want = torch.softmax(model(None if modality == "audio" else normalize(clips),
                                   _audio(3), present), -1)
    np.testing.assert_allclose(probs, want.numpy(), atol=1e-5)
    # no audio at all: every clip takes the no-audio embedding
    absent = predictor.probabilities(clips, None, None)
    np.testing.assert_allclose(absent, predictor.probabilities(
        clips, _audio(3).numpy(), np.zeros(3, bool)), atol=1e-6)
    with pytest.raises(ValueError, match=r"expected float32 log-mel \[B, 64, 50\]"):
        predictor.probabilities(clips, np.zeros((3, 64, 40), np.float32))


def test_clips_carry_their_audio_into_the_batch(fused: EmotionClassifier,
                                                 small_model: EmotionClassifier) -> None:
    """predict_batches hands an audio model each clip's log-mel and ``audio_present``; a clip
    read without audio (``audio`` None) counts as absent; a video model sees frames only."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, T, SIZE, SIZE, 3), dtype=np.uint8)
    audio = _audio(4).numpy()
    present = [True, False, True, True]
    clips = [Clip(i, 4.0 * i, 4.0 * i + 4, frames[i], audio=audio[i] if i != 3 else None,
                  audio_present=present[i]) for i in range(4)]
    predictor = Predictor(fused, METADATA, device="cpu")
    got = np.concatenate([p for _, p in predict_batches(predictor, clips, batch_size=3)])
    want = predictor.probabilities(frames, audio, [True, False, True, False])
    np.testing.assert_allclose(got, want, atol=1e-6)
    bare = [Clip(i, 0.0, 4.0, frames[i]) for i in range(2)]  # a reader without audio
    np.testing.assert_allclose(clip_probabilities(predictor, bare),
                               predictor.probabilities(frames[:2]), atol=1e-6)
    video = Predictor(small_model, METADATA, device="cpu")
    np.testing.assert_array_equal(clip_probabilities(video, clips), video.probabilities(frames))


def test_save_refuses_modality_as_a_keyword(fused: EmotionClassifier) -> None:
    with pytest.raises(ValueError, match="come from the model"):
        save_deployment(fused, io.BytesIO(), num_frames=T, modality="video")


def _with_record(model: EmotionClassifier, path: Path, **changes: object) -> Path:
    """``model``'s deployment file with its metadata record changed (sha256 kept right)."""
    data = io.BytesIO()
    record = save_deployment(model, data, num_frames=T, img_size=SIZE)
    record.update(changes)
    path.write_bytes(st_save(st_load(data.getvalue()),
                             metadata={"emotion_pipeline": json.dumps(record)}))
    return path


def test_audio_video_metadata_on_video_weights_is_refused(small_model: EmotionClassifier,
                                                          tmp_path: Path) -> None:
    path = _with_record(small_model, tmp_path / "liar.safetensors", modality="audio-video",
                        audio=SPEC.to_metadata())
    with pytest.raises(ArchitectureMismatchError) as caught:
        load_deployment(path)
    message = str(caught.value)
    assert message == (f"{path}: the metadata says modality 'audio-video' but the weights are "
                       "a video model's (a SlowFast backbone, no audio encoder)")


@pytest.mark.parametrize(("changes", "match"), [
    ({"modality": None, "audio": None}, "says modality 'video' but the weights are an "
                                        "audio-video model's"),
    ({"modality": "audio"}, "says modality 'audio' but the weights are an audio-video"),
    ({"modality": "stereo"}, "unknown modality 'stereo'"),
    ({"audio": None}, "modality 'audio-video' with audio settings None"),
    ({"audio": {"n_mels": 64, "bits": 16}}, r"bad audio settings: unknown audio settings"),
])
def test_fused_files_whose_metadata_lies_are_refused(
    fused: EmotionClassifier, tmp_path: Path, changes: dict, match: str
) -> None:
    path = _with_record(fused, tmp_path / "fused.safetensors", **changes)
    with pytest.raises(ArchitectureMismatchError, match=match) as caught:
        load_deployment(path)
    assert "\n" not in str(caught.value)


def test_plain_state_dicts_and_training_checkpoints_of_audio_models(tmp_path: Path) -> None:
    spec = AudioSpec(n_mels=32, seconds=0.5)
    torch.manual_seed(5)
    model = build_model("small", modality="audio", audio_spec=spec).eval()
    plain = tmp_path / "audio.pt"
    torch.save(model.state_dict(), plain)
    loaded, meta = load_deployment(plain)  # the modality and n_mels read off the weights
    assert (meta["modality"], meta["audio"]["n_mels"]) == ("audio", 32)
    assert loaded.audio_spec == AudioSpec(n_mels=32)

    checkpoint = tmp_path / "last.pt"
    optimizer = torch.optim.AdamW(model.parameters())
    save_training_checkpoint(checkpoint, model=model, optimizer=optimizer, epoch=0)
    loaded, meta = load_deployment(checkpoint)  # the spec recorded in the checkpoint
    assert (loaded.modality, loaded.audio_spec) == ("audio", spec)
    assert meta["model_version"] == weights_sha256(model.state_dict())[:12]


# --- export --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fused_exports(tmp_path_factory: pytest.TempPathFactory, fused: EmotionClassifier
                  ) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("fused-export")
    return {fmt: export_model(fused, METADATA, out / f"fused.{fmt}", format=fmt)
            for fmt in ("onnx", "torchscript")}


def _eager(model: EmotionClassifier, *inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(*inputs), -1).numpy()


def test_fused_onnx_agrees_with_eager(fused_exports: dict[str, dict],
                                      fused: EmotionClassifier) -> None:
    import onnxruntime as ort

    assert 0.0 <= fused_exports["onnx"]["max_abs_diff"] <= PARITY_TOLERANCE
    session = ort.InferenceSession(fused_exports["onnx"]["path"],
                                   providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["frames", "audio", "audio_present"]
    assert inputs["audio"].shape == ["batch", 64, 50] and inputs["audio_present"].type == (
        "tensor(bool)")
    x, audio, present = _frames(4, seed=9), _audio(4, seed=9), torch.tensor([1, 0, 1, 0]).bool()
    (logits,) = session.run(["logits"], {"frames": x.numpy(), "audio": audio.numpy(),
                                         "audio_present": present.numpy()})
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    np.testing.assert_allclose(probs, _eager(fused, x, audio, present), atol=1e-4, rtol=0)


def test_fused_torchscript_agrees_with_eager(fused_exports: dict[str, dict],
                                             fused: EmotionClassifier) -> None:
    assert 0.0 <= fused_exports["torchscript"]["max_abs_diff"] <= PARITY_TOLERANCE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(fused_exports["torchscript"]["path"], map_location="cpu")
    x, audio, present = _frames(4, seed=8), _audio(4, seed=8), torch.tensor([0, 1, 1, 0]).bool()
    with torch.no_grad():
        probs = torch.softmax(scripted(x, audio, present), -1).numpy()
    np.testing.assert_allclose(probs, _eager(fused, x, audio, present), atol=1e-4, rtol=0)
    assert not fused.training  # the export left the model in eval mode


# --- new-model --modality, export from the command line ------------------------------------------
def _cli(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("modality", ["video", "audio", "audio-video"])
def test_new_model_modality_writes_a_loadable_file(modality: str, tmp_path: Path) -> None:
    path = tmp_path / f"{modality}.safetensors"
    assert _cli(["new-model", str(path), "--small", "--modality", modality, "--num-frames",
                 str(T), "--img-size", str(SIZE), "--crop", "frame"]) == 0
    model, meta = load_deployment(path)
    assert model.modality == meta["modality"] == modality
    assert meta["audio"] == (None if modality == "video" else AudioSpec().to_metadata())
    assert meta["untrained"] is True
    if modality == "audio":  # the cheapest to export: the command line covers every modality
        out = tmp_path / "audio.onnx"
        assert _cli(["export", str(path), "--format", "onnx", "--output", str(out)]) == 0
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["audio", "audio_present"]
