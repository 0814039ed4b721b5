"""Prediction: a ``Predictor`` that turns uint8 clip batches into probabilities on CPU or GPU
(torch; ``emotion_model.onnx_runtime.OnnxPredictor`` serves an ONNX file the same way),
and ``predict_video`` for one file (the CLI's single-file mode), made of three steps that
``emotion_model.annotate`` streams too: ``prediction_reader`` -> ``predict_batches`` ->
``video_prediction``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from emotion_model.audio import AudioSpec
from emotion_model.checkpoint import load_deployment
from emotion_model.errors import NoAudioError
from emotion_model.face_clips import CropSpec, FaceTrackInfo
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import MODALITIES, EmotionClassifier
from emotion_model.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from emotion_model.video import Clip, ClipReader, FrameTap, VideoInfo, VideoSource

DeviceName = Literal["auto", "cpu", "cuda"] | str
ClipBatch = np.ndarray | torch.Tensor
"""uint8 clips ``[B, T, H, W, 3]``."""
AudioBatch = np.ndarray | torch.Tensor
"""float32 log-mel ``[B, n_mels, frames]``."""
PresentBatch = np.ndarray | torch.Tensor | Sequence[bool]
"""bool ``audio_present [B]``."""
ClipModality = Literal["video", "audio", "audio-video", "none"]
CLIP_MODALITIES: tuple[ClipModality, ...] = ("video", "audio", "audio-video", "none")
"""What one clip's prediction was made from (`clip_modality`): a model's modality, or
``none`` for an audio model's clip without sound."""


def resolve_device(device: DeviceName = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU when present, else the CPU; other names are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists twenty device types
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
    return dev


class BasePredictor:
    """What every predictor shares: the deployment metadata it serves with (labels, frames per
    clip, size, normalization, crop, version), and its inputs made from uint8 clips, log-mel
    and ``audio_present`` (`model_inputs`). Subclasses run the model: `Predictor` (torch, CPU
    or GPU) and ``emotion_model.onnx_runtime.OnnxPredictor`` (ONNX Runtime, CPU); everything
    that serves a model (`predict_video`, the batch flow, ``annotate``) takes either.
    """

    device: torch.device
    preferred_batch_size: int
    """Clips per call when the caller does not choose."""

    def __init__(self, metadata: Mapping[str, Any] | None = None) -> None:
        meta = dict(metadata or {})
        self.labels: tuple[str, ...] = tuple(meta.get("labels") or EMOTION_LABELS)
        self.num_frames = int(meta.get("num_frames", 48))
        self.img_size = int(meta.get("img_size", 112))
        self.mean = tuple(meta.get("mean") or IMAGENET_MEAN)
        self.std = tuple(meta.get("std") or IMAGENET_STD)
        self.model_version = str(meta.get("model_version", "unversioned"))
        self.crop = CropSpec.from_metadata(meta)
        """Whole frames or face crops, as the model was trained (``crop`` in its metadata)."""
        self.metadata = meta

    @property
    def modality(self) -> str:
        """``video``, ``audio`` or ``audio-video``: what the model reads."""
        raise NotImplementedError

    @property
    def audio_spec(self) -> AudioSpec | None:
        """The log-mel the model reads (``audio`` in its metadata); None for a video model."""
        raise NotImplementedError

    def probabilities(
        self, clips: ClipBatch | None, audio: AudioBatch | None = None,
        audio_present: PresentBatch | None = None,
    ) -> np.ndarray:
        """uint8 ``[B, T, H, W, 3]`` (and, for an audio model, float32 log-mel ``[B, n_mels,
        frames]`` with bool ``audio_present [B]``) -> float32 ``[B, num_classes]`` softmax
        probabilities.

        A video model ignores the audio; an audio model ignores the clips (None allowed when
        ``audio`` or ``audio_present`` gives the batch). ``audio`` None: no clip has audio;
        ``audio_present`` None: every clip has (when ``audio`` is given). Clips without
        audio take the model's learned no-audio embedding.
        """
        raise NotImplementedError

    def model_inputs(
        self, clips: ClipBatch | None, audio: AudioBatch | None = None,
        audio_present: PresentBatch | None = None,
        *,
        move: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`probabilities`' arguments as the model's inputs: normalized float32 frames ``[B,
        T, 3, H, W]`` (None for an audio model), the checked log-mel and bool
        ``audio_present [B]`` (None where not given and not implied; both None for a video
        model). ``move`` takes each tensor where the model runs (uint8 frames before they are
        normalized: 4x fewer bytes to copy)."""
        x = None
        if self.modality != "audio":
            if clips is None:
                raise ValueError(f"a {self.modality} model needs clips [B, T, H, W, 3]")
            frames = torch.from_numpy(clips) if isinstance(clips, np.ndarray) else clips
            x = normalize(move(frames), mean=self.mean, std=self.std)
        return (x, *self.audio_inputs(clips, audio, audio_present, move=move))

    def audio_inputs(
        self, clips: ClipBatch | None, audio: AudioBatch | None = None,
        audio_present: PresentBatch | None = None,
        *,
        move: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`model_inputs`' log-mel and ``audio_present`` (both None for a video model; an audio
        model given clips alone: every clip without audio)."""
        a = present = None
        if self.modality == "video":
            return a, present
        if audio is not None:
            a = move(check_audio_batch(audio, self.audio_spec))
        if audio_present is not None:
            present = move(
                audio_present.bool() if isinstance(audio_present, torch.Tensor)
                else torch.from_numpy(np.asarray(audio_present, dtype=bool)))
        elif a is None and self.modality == "audio" and clips is not None:
            present = move(torch.zeros(len(clips), dtype=torch.bool))
        return a, present


class Predictor(BasePredictor):
    """A torch model in eval mode plus its preprocessing, ready for batches of uint8 clips.

    On a GPU: bf16 autocast where supported (else fp16), pinned host memory and non-blocking
    copies, channels_last_3d. On a CPU: fp32, or bf16 autocast with ``amp=True`` (opt-in:
    R50 1.8x faster on an AVX512-BF16 CPU, probabilities within ~5e-3 of fp32;
    ``bench/tuning.py``).
    """

    def __init__(
        self,
        model: EmotionClassifier,
        metadata: Mapping[str, Any] | None = None,
        *,
        device: DeviceName = "auto",
        amp: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        super().__init__(metadata)
        cuda = self.device.type == "cuda"
        self.amp = cuda if amp is None else amp
        # CPU autocast: bf16 (oneDNN); fp16 autocast has no fast CPU convolutions
        self.amp_dtype = (
            torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16
        )
        self.model = model.to(self.device).eval()
        backbone = getattr(model, "backbone", None)  # an audio model has none
        if backbone is not None:
            # channels_last_3d: measured faster on CPU too (R50, 48x112: 273 vs 311 ms per clip);
            # the backbone only: the audio encoder's 2D convolutions cannot take it
            backbone.to(memory_format=torch.channels_last_3d)
        self.preferred_batch_size = 32 if cuda else 2
        """Clips per call when the caller does not choose: on a 2-core CPU, batches above 2
        are slower per clip (R50 at batch 4: +20%); a GPU wants large batches."""

    @classmethod
    def from_file(cls, source: VideoSource, *, device: DeviceName = "auto") -> Predictor:
        """Load a deployment file (path, URI, bytes or file object) onto ``device``
        (``emotion_model.onnx_runtime.open_predictor`` also takes ``.onnx`` files)."""
        model, metadata = load_deployment(source)
        return cls(model, metadata, device=device)

    @property
    def modality(self) -> str:
        """``video``, ``audio`` or ``audio-video``: what the model reads."""
        return str(getattr(self.model, "modality", "video"))

    @property
    def audio_spec(self) -> AudioSpec | None:
        """The log-mel the model reads (``audio`` in its metadata); None for a video model."""
        return getattr(self.model, "audio_spec", None)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x

    def probabilities(
        self, clips: ClipBatch | None, audio: AudioBatch | None = None,
        audio_present: PresentBatch | None = None,
    ) -> np.ndarray:
        """See `BasePredictor.probabilities`."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            batch, a, present = self.model_inputs(clips, audio, audio_present,
                                                  move=self._to_device)
            logits = (self.model(batch) if self.modality == "video"
                      else self.model(batch, a, present))
            probs = torch.softmax(logits.float(), dim=-1)
        return probs.cpu().numpy().astype(np.float32, copy=False)


def check_audio_batch(audio: np.ndarray | torch.Tensor, spec: AudioSpec | None) -> torch.Tensor:
    """float32 log-mel ``[B, n_mels, frames]`` as a tensor, its shape checked against ``spec``
    (the model's normalization is inside the model: nothing else to do)."""
    a = torch.from_numpy(np.ascontiguousarray(audio)) if isinstance(audio, np.ndarray) else audio
    want = spec.shape if spec is not None else None
    if a.dtype != torch.float32 or a.ndim != 3 or (want and tuple(a.shape[1:]) != want):
        raise ValueError(
            f"expected float32 log-mel [B, {', '.join(map(str, want or ('n_mels', 'frames')))}], "
            f"got {a.dtype} {tuple(a.shape)}"
        )
    return a


@dataclass(frozen=True)
class ClipPrediction:
    """One clip's label, confidence (its top probability) and all probabilities; in face
    mode, the face track it follows and its mean box (fractions of the frame)."""

    index: int
    start_s: float
    end_s: float
    label: str
    confidence: float
    probabilities: dict[str, float]
    face_id: int = -1
    face_box: tuple[float, float, float, float] | None = None
    face_score: float | None = None
    audio_present: bool = False
    """The clip's sound went into its prediction (always False for a video model)."""
    modality: ClipModality = "video"
    """What the prediction was made from (`clip_modality`)."""


@dataclass(frozen=True)
class FacePrediction:
    """One face track: when and where it was seen, and the mean of its clips' probabilities."""

    face_id: int
    first_s: float
    last_s: float
    box: tuple[float, float, float, float]
    clips: int
    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class VideoPrediction:
    """Every clip of a video, plus the video-level label: the mean of the clips'
    probabilities (whole frames), or the longest face track's (face crops; None when no face
    was found)."""

    uri: str
    clips: list[ClipPrediction]
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    duration_s: float
    partial: bool
    partial_reason: str | None
    model_version: str
    crop: str = "frame"
    faces: list[FacePrediction] = field(default_factory=list)


def label_probabilities(
    probs: np.ndarray, labels: Sequence[str]
) -> tuple[str, float, dict[str, float]]:
    """float ``[C]`` -> (top label, its probability, ``{label: probability}``)."""
    top = int(np.argmax(probs))
    return labels[top], float(probs[top]), {k: float(v) for k, v in zip(labels, probs, strict=True)}


def face_predictions(
    face_ids: Sequence[int],
    probs: np.ndarray,
    tracks: Sequence[FaceTrackInfo],
    labels: Sequence[str],
) -> list[FacePrediction]:
    """Per face track of ``tracks``: the mean of its clips' probabilities (``face_ids[i]`` is
    clip ``i``'s track, ``probs[i]`` its probabilities). Tracks without a clip are left out."""
    ids = np.asarray(face_ids)
    out = []
    for track in tracks:
        mine = ids == track.face_id
        if not mine.any():
            continue
        label, conf, named = label_probabilities(probs[mine].mean(axis=0), labels)
        out.append(FacePrediction(track.face_id, track.first_s, track.last_s, track.box,
                                  int(mine.sum()), label, conf, named))
    return out


def on_kept_tracks(face_ids: Sequence[int], tracks: Sequence[FaceTrackInfo]) -> np.ndarray:
    """bool mask: which clips (by their ``face_id``) follow a face track the video kept
    (``VideoInfo.faces``: at most ``max_faces``)."""
    return np.isin(np.asarray(face_ids, dtype=np.int64), [t.face_id for t in tracks])


def main_face(faces: Sequence[FacePrediction]) -> FacePrediction | None:
    """The longest-seen face track (then the one with more clips, then the lower id): it
    labels the video in face mode."""
    if not faces:
        return None
    return min(faces, key=lambda f: (-(f.last_s - f.first_s), -f.clips, f.face_id))


def video_label(
    mode: str,
    face_ids: Sequence[int],
    probs: np.ndarray,
    pool: np.ndarray,
    tracks: Sequence[FaceTrackInfo],
    labels: Sequence[str],
) -> tuple[list[FacePrediction], tuple[str, float, dict[str, float]] | None]:
    """A video's face tracks (face ``mode``) and its label, confidence and probabilities from
    its clips (``face_ids[i]`` and ``probs[i]`` clip ``i``'s) that ``pool`` keeps
    (`pooled_clips`): the mean of the clips (whole frames), or the longest-seen face's (None
    when no face was found)."""
    ids, pooled = np.asarray(face_ids)[pool], probs[pool]
    if mode != "face":
        return [], label_probabilities(pooled.mean(axis=0), labels)
    faces = face_predictions(ids.tolist(), pooled, tracks, labels)
    main = main_face(faces)
    return faces, (main.label, main.confidence, main.probabilities) if main else None


def prediction_reader(
    predictor: BasePredictor,
    source: VideoSource,
    *,
    clip_seconds: float = 4.0,
    stride_seconds: float | None = None,
    detect_fps: float | None = None,
    max_faces: int = 4,
    frame_tap: FrameTap | None = None,
) -> ClipReader:
    """The `ClipReader` ``predict_video`` reads ``source`` with: the model's frames per clip,
    size and crop (``detect_fps`` overriding the model's rate), and each clip's sound for a
    model that reads audio (its `AudioSpec`; none for a video model); ``frame_tap`` sees each
    frame decoded (``emotion_model.annotate`` draws on them)."""
    return ClipReader(
        source,
        num_frames=predictor.num_frames,
        img_size=predictor.img_size,
        clip_seconds=clip_seconds,
        stride_seconds=stride_seconds,
        crop=predictor.crop.with_detect_fps(detect_fps),
        max_faces=max_faces,
        frame_tap=frame_tap,
        audio=None if predictor.modality == "video" else predictor.audio_spec,
    )


def predict_batches(
    predictor: BasePredictor,
    clips: Iterable[Clip],
    batch_size: int | None = None,
    *,
    flush: Callable[[], bool] | None = None,
) -> Iterator[tuple[list[Clip], np.ndarray]]:
    """``clips`` in batches of ``batch_size`` (default: the predictor's), each with its
    probabilities ``[len(batch), num_classes]``, as soon as the batch is full (the last one
    may be smaller). ``flush``, asked after each clip, may cut a batch short (a caller whose
    held frames wait for these clips); probabilities then differ in the last bits only."""
    batch_size = batch_size or predictor.preferred_batch_size
    pending: list[Clip] = []
    for clip in clips:
        pending.append(clip)
        if len(pending) == batch_size or (flush is not None and flush()):
            yield pending, clip_probabilities(predictor, pending)
            pending = []
    if pending:
        yield pending, clip_probabilities(predictor, pending)


def audio_used(model_modality: str, clip: Clip) -> bool:
    """Whether a model of ``model_modality`` predicts ``clip`` from its sound: it reads audio
    and the clip has some (``audio_present``; a clip read without audio, ``audio`` None,
    counts as absent)."""
    return model_modality != "video" and clip.audio_present and clip.audio is not None


def clip_modality(model_modality: str, audio_present: bool) -> ClipModality:
    """What a clip's prediction was made from: the model's modality, less the sound when the
    clip had none (``audio_present`` False): an ``audio-video`` model's clip then comes from
    its frames alone (``video``), an ``audio`` model's from nothing (``none``: the model's
    learned no-audio output, the same for every such clip)."""
    if model_modality not in MODALITIES:
        raise ValueError(f"unknown model modality {model_modality!r}")
    if audio_present or model_modality == "video":
        return model_modality  # type: ignore[return-value]
    return "video" if model_modality == "audio-video" else "none"


def pooled_clips(model_modality: str, audio_present: Sequence[bool], info: VideoInfo
                 ) -> np.ndarray:
    """bool mask of the clips whose probabilities make their video's (and faces') label: all
    of them, except an audio model's clips without sound (``none``: they say nothing about the
    video). Raises `NoAudioError` when an audio model's video has clips and none has sound."""
    present = np.asarray(audio_present, dtype=bool).reshape(-1)
    if model_modality != "audio":
        return np.ones(len(present), dtype=bool)
    if len(present) and not present.any():
        reason = ("no audio stream" if info.audio_codec is None
                  else info.audio_error or "no clip window has usable audio")
        raise NoAudioError(info.uri, f"an audio model, and no clip has sound: {reason}")
    return present


def clip_arrays(
    predictor: BasePredictor, clips: Sequence[Clip]
) -> tuple[np.ndarray, np.ndarray | None, list[bool] | None]:
    """``predictor.probabilities``' arguments for ``clips``: their frames uint8 ``[B, T, H, W,
    3]``, and, for a model that reads audio, their log-mel ``[B, n_mels, frames]`` (None when
    no clip has sound) and ``audio_present`` (`audio_used`); both None for a video model."""
    frames = np.stack([c.frames for c in clips])
    spec = predictor.audio_spec
    if predictor.modality == "video" or spec is None:
        return frames, None, None
    present = [audio_used(predictor.modality, c) for c in clips]
    if not any(present):
        return frames, None, present
    placeholder = np.zeros(spec.shape, np.float32)  # never read: its clip is absent
    audio = np.stack([c.audio if c.audio is not None else placeholder for c in clips])
    return frames, audio, present


def clip_probabilities(predictor: BasePredictor, clips: Sequence[Clip]) -> np.ndarray:
    """``predictor``'s probabilities ``[len(clips), num_classes]`` for ``clips``: their frames,
    and, for a model that reads audio, their log-mel and ``audio_present`` (`clip_arrays`)."""
    frames, audio, present = clip_arrays(predictor, clips)
    if present is None:  # a video model: the frames alone
        return predictor.probabilities(frames)
    return predictor.probabilities(frames, audio, present)


def clip_prediction(clip: Clip, probs: np.ndarray, labels: Sequence[str],
                    model_modality: str = "video") -> ClipPrediction:
    """One clip's prediction from its probabilities ``[num_classes]`` by a model of
    ``model_modality`` (its sound's part: `audio_used`, `clip_modality`)."""
    label, conf, named = label_probabilities(probs, labels)
    present = audio_used(model_modality, clip)
    return ClipPrediction(clip.index, clip.start_s, clip.end_s, label, conf, named,
                          clip.face_id, clip.face_box, clip.face_score, present,
                          clip_modality(model_modality, present))


def video_prediction(
    predictor: BasePredictor, reader: ClipReader, clips: Sequence[Clip],
    probs: Sequence[np.ndarray],
) -> VideoPrediction:
    """What ``predict_video`` returns once ``reader`` has read every clip: ``clips`` in the
    order read and their probabilities (``probs``: one array per batch). In face mode only the
    clips of the face tracks the video kept count; an audio model's clips without sound are
    listed but left out of the means (`pooled_clips`: `NoAudioError` when no clip has sound)."""
    info = reader.info
    labels = predictor.labels
    all_probs = np.concatenate(probs) if len(probs) else np.zeros((0, len(labels)), np.float32)
    mode = reader.crop.mode
    if mode == "face":
        keep = on_kept_tracks([c.face_id for c in clips], info.faces)
        clips = [c for c, k in zip(clips, keep, strict=True) if k]
        all_probs = all_probs[keep]
    per_clip = [clip_prediction(c, p, labels, predictor.modality)
                for c, p in zip(clips, all_probs, strict=True)]
    pool = pooled_clips(predictor.modality, [c.audio_present for c in per_clip], info)
    faces, top = video_label(mode, [c.face_id for c in per_clip], all_probs, pool, info.faces,
                             labels)
    label, conf, named = top if top is not None else (None, None, None)
    return VideoPrediction(
        uri=info.uri,
        clips=per_clip,
        label=label,
        confidence=conf,
        probabilities=named,
        duration_s=info.duration_s,
        partial=info.partial,
        partial_reason=info.partial_reason,
        model_version=predictor.model_version,
        crop=mode,
        faces=faces,
    )


def predict_video(
    model: EmotionClassifier | BasePredictor,
    source: VideoSource,
    metadata: Mapping[str, Any] | None = None,
    *,
    clip_seconds: float = 4.0,
    stride_seconds: float | None = None,
    batch_size: int | None = None,
    device: DeviceName = "auto",
    detect_fps: float | None = None,
    max_faces: int = 4,
) -> VideoPrediction:
    """Predict every clip of one video (path, bytes or file object) and their mean.

    ``metadata`` (from ``load_deployment``) gives labels, frames per clip, size, normalization
    and the crop (whole frame, or faces: then one set of clips per face track, at most
    ``max_faces``, detected at ``detect_fps`` or the model's rate); without it the model
    card's defaults apply (48 frames, 112 px, ImageNet, whole frame). Raises the typed errors
    of ``emotion_model.video`` for a video that gives no clip.
    """
    predictor = model if isinstance(model, BasePredictor) else Predictor(
        model, metadata, device=device
    )
    reader = prediction_reader(predictor, source, clip_seconds=clip_seconds,
                               stride_seconds=stride_seconds, detect_fps=detect_fps,
                               max_faces=max_faces)
    clips: list[Clip] = []
    probs: list[np.ndarray] = []
    for batch, p in predict_batches(predictor, reader, batch_size):
        clips += batch
        probs.append(p)
    return video_prediction(predictor, reader, clips, probs)
