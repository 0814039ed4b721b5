"""The clip cache: each training video decoded once into uint8 clips that every epoch (and
every later retrain) reads instead of the video; for a model that reads audio, each clip's
log-mel beside its frames, from the same decoding pass."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emotion_model.audio import AUDIO_CODE_VERSION, AudioSpec
from emotion_model.errors import NoFaceError, VideoError
from emotion_model.face_clips import FRAME_CROP, CropSpec
from emotion_model.video import ClipReader
from tasks.common.storage import (
    atomic_write_bytes,
    is_local,
    join,
    read_bytes,
    resolve,
    with_retries,
)
from tasks.training.data import Example

log = logging.getLogger(__name__)

CACHE_FORMAT = "clips-v2"
CACHE_FRAME_FACTOR = 2
"""The cache holds this many times ``num_frames`` frames per clip, for temporal jitter."""


@dataclass(frozen=True)
class ClipSpec:
    """How training clips are cut: the cache key holds every field."""

    num_frames: int
    img_size: int
    clip_seconds: float = 4.0
    max_clips: int = 4
    crop: CropSpec = FRAME_CROP
    """Whole frames, or the crops of the video's main face track (the one labelled)."""
    audio: AudioSpec | None = None
    """Models that read audio: each clip's log-mel too (`audio_dtype`); None: frames only."""

    @property
    def cached_frames(self) -> int:
        """Frames stored per clip (``CACHE_FRAME_FACTOR`` x ``num_frames``)."""
        return self.num_frames * CACHE_FRAME_FACTOR


def audio_dtype(spec: AudioSpec) -> np.dtype:
    """One clip's cached sound: its log-mel float32 ``[n_mels, frames]`` and whether the clip
    has audio (``Clip.audio_present``; False: the log-mel is silence)."""
    return np.dtype([("log_mel", np.float32, spec.shape), ("present", np.bool_)])


def cache_key(example: Example, spec: ClipSpec) -> str:
    """``(uri, etag, num_frames, img_size, ...)`` -> a file name in the cache (the frames').

    With ``spec.audio`` the key also holds the `AudioSpec` and ``AUDIO_CODE_VERSION``, and the
    clips' sound sits beside the frames (`audio_entry`); a frames-only key is as it was before
    audio, so existing caches stay valid.
    """
    parts: list[object] = [CACHE_FORMAT, example.uri, example.etag, spec.num_frames,
                           spec.img_size, spec.clip_seconds, spec.max_clips, spec.crop.key()]
    if spec.audio is not None:
        parts += [f"audio{AUDIO_CODE_VERSION}",
                  json.dumps(spec.audio.to_metadata(), sort_keys=True)]
    text = "|".join(str(v) for v in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32] + ".npy"


def audio_entry(key: str) -> str:
    """The file of the clips' sound beside the frames' file ``key``: ``<key>.audio.npy``."""
    return key.removesuffix(".npy") + ".audio.npy"


@dataclass(frozen=True)
class TrainingClips:
    """One video's decoded clips: uint8 ``frames`` ``[N, F, H, W, 3]`` and, when the spec
    reads audio, ``audio`` ``[N]`` of `audio_dtype` (None otherwise)."""

    frames: np.ndarray
    audio: np.ndarray | None = None


class ClipCache:
    """Decoded uint8 clips ``[N, F, H, W, 3]`` per video under a folder or ``s3://`` prefix
    (and, with ``spec.audio``, their sound ``[N]`` of `audio_dtype` in a file beside them).

    A remote cache is mirrored into ``local_dir`` on first read, so epochs read local
    memory-mapped files.
    """

    def __init__(
        self, uri: str, spec: ClipSpec, storage_options: Mapping[str, Any] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.uri = uri
        self.spec = spec
        self.storage_options = dict(storage_options or {})
        self.remote = not is_local(uri)
        if self.remote:
            root = Path(local_dir or Path(tempfile.gettempdir()) / "emotion-pipeline-cache")
            self.local_dir = root / hashlib.sha256(uri.encode()).hexdigest()[:12]
        else:
            self.local_dir = Path(resolve(uri)[1])
        self._counts: dict[str, int] = {}

    def _names(self, example: Example) -> list[str]:
        """The entry's files: the frames', then (with audio) the sound's, written last."""
        key = cache_key(example, self.spec)
        return [key] if self.spec.audio is None else [key, audio_entry(key)]

    def entry_uri(self, example: Example) -> str:
        """Where ``example``'s clips (their frames) are (or will be) in the cache."""
        return join(self.uri, "clips", cache_key(example, self.spec))

    def has(self, example: Example) -> bool:
        """True when the clips of ``example`` are cached (with their sound, if the spec says)."""
        names = self._names(example)
        if all((self.local_dir / "clips" / name).exists() for name in names):
            return True
        return self.remote and all(self._remote_exists(name) for name in names)

    def _remote_exists(self, name: str) -> bool:
        uri = join(self.uri, "clips", name)
        fs, path = resolve(uri, self.storage_options)
        return bool(with_retries(lambda: fs.exists(path), what=f"stat {uri}"))

    def store(self, example: Example, clips: TrainingClips) -> None:
        """Write the clips of ``example`` (each file whole or not at all; the sound last, so
        an entry whose writing was cut short is not ``has``)."""
        arrays = [np.ascontiguousarray(clips.frames, dtype=np.uint8)]
        if self.spec.audio is not None:
            if clips.audio is None or len(clips.audio) != len(clips.frames):
                raise ValueError(f"{example.uri}: the cache wants the sound of each clip")
            arrays.append(np.ascontiguousarray(clips.audio, dtype=audio_dtype(self.spec.audio)))
        for name, array in zip(self._names(example), arrays, strict=True):
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            data = buffer.getvalue()
            atomic_write_bytes(join(self.uri, "clips", name), data, self.storage_options)
            if self.remote:
                atomic_write_bytes(str(self.local_dir / "clips" / name), data)

    def _local_copy(self, name: str) -> Path:
        path = self.local_dir / "clips" / name
        if self.remote and not path.exists():
            atomic_write_bytes(str(path), read_bytes(join(self.uri, "clips", name),
                                                     self.storage_options))
        return path

    def load(self, example: Example) -> np.ndarray:
        """The cached clips of ``example``, memory-mapped (read-only; no file stays open)."""
        return np.load(self._local_copy(cache_key(example, self.spec)), mmap_mode="r",
                       allow_pickle=False)

    def load_audio(self, example: Example) -> np.ndarray:
        """The cached sound of ``example``'s clips, ``[N]`` of `audio_dtype` (``log_mel``,
        ``present``), memory-mapped; the spec must read audio."""
        if self.spec.audio is None:
            raise ValueError("this clip cache holds no audio (ClipSpec.audio is None)")
        name = audio_entry(cache_key(example, self.spec))
        return np.load(self._local_copy(name), mmap_mode="r", allow_pickle=False)

    def count(self, example: Example) -> int:
        """How many clips ``example`` has in the cache (read from the ``.npy`` header)."""
        key = cache_key(example, self.spec)
        if key not in self._counts:
            with open(self._local_copy(key), "rb") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(fh)
            self._counts[key] = int(shape[0])
        return self._counts[key]


def decode_training_clips(example: Example, spec: ClipSpec,
                          storage_options: Mapping[str, Any] | None = None) -> TrainingClips:
    """Decode ``example`` into ``[N, cached_frames, H, W, 3]`` uint8 clips (N >= 1) and, with
    ``spec.audio``, each clip's log-mel and ``audio_present``, in the same pass (a clip
    without usable sound gets silence and False: never an error).

    With face crops, the clips follow the video's main face track (the largest and longest:
    a labelled video shows one actor); a video in which no face is found raises
    ``NoFaceError``.
    """
    source: Any = example.uri if is_local(example.uri) else read_bytes(example.uri,
                                                                       storage_options)
    reader = ClipReader(source, num_frames=spec.cached_frames, img_size=spec.img_size,
                        clip_seconds=spec.clip_seconds, uri=example.uri, threads=1,
                        max_clips=spec.max_clips, crop=spec.crop, max_faces=1,
                        audio=spec.audio)
    clips = list(reader)
    if spec.crop.mode == "face":
        main = {face.face_id for face in reader.info.faces}
        clips = [clip for clip in clips if clip.face_id in main]
        if not clips:
            raise NoFaceError(example.uri, "no face found")
    if not clips:  # ClipReader raises NoDecodableFramesError first; kept as a guard
        raise ValueError(f"{example.uri}: no clips")
    frames = np.stack([clip.frames for clip in clips])
    if spec.audio is None:
        return TrainingClips(frames)
    audio = np.zeros(len(clips), audio_dtype(spec.audio))  # absent: never read
    for i, clip in enumerate(clips):
        if clip.audio is not None:  # always, with an AudioSpec: silence where absent
            audio[i] = (clip.audio, clip.audio_present)
    return TrainingClips(frames, audio)


@dataclass
class CacheReport:
    """What building the cache did."""

    cached: int = 0
    decoded: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    decode_s: float = 0.0


def build_cache(
    cache: ClipCache, examples: Sequence[Example], *, threads: int = 2,
    on_video: Callable[[Example, bool], None] | None = None,
) -> tuple[list[Example], CacheReport]:
    """Decode every example not cached yet; returns the examples that are cached and a report.

    A video that does not decode (corrupt, truncated, no video stream) is reported and left
    out; transient storage errors are retried and, when they persist, raised.
    """
    report = CacheReport()
    start = time.perf_counter()

    def work(example: Example) -> tuple[Example, str | None, bool]:
        if cache.has(example):
            return example, None, False
        try:
            clips = decode_training_clips(example, cache.spec, cache.storage_options)
        except VideoError as exc:
            return example, f"{type(exc).__name__}: {exc}", False
        cache.store(example, clips)
        return example, None, True

    kept: list[Example] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for example, problem, decoded in pool.map(work, examples):
            if problem is None:
                kept.append(example)
                report.decoded += int(decoded)
                report.cached += int(not decoded)
            else:
                report.corrupt.append((example.uri, problem))
                log.warning("training video skipped: %s", problem)
            if on_video is not None:
                on_video(example, problem is None)
    report.decode_s = time.perf_counter() - start
    return kept, report
