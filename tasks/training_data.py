"""Labelled training data: find the videos, split them by actor, decode each once into a clip
cache that every epoch (and every later retrain) reads instead of the videos."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from emotion_model.errors import VideoError
from emotion_model.labels import EMOTION_LABELS, parse_name
from emotion_model.video import ClipReader
from tasks.listing import VideoObject, list_videos, local_etag
from tasks.storage import atomic_write_bytes, is_local, join, read_bytes, resolve, with_retries

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".csv", ".parquet")
CACHE_FORMAT = "clips-v1"
CACHE_FRAME_FACTOR = 2
"""The cache holds this many times ``num_frames`` frames per clip, for temporal jitter."""
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Example:
    """One labelled training video."""

    uri: str
    etag: str
    size: int
    label: str
    actor: str
    """Unique across datasets: ``ravdess:12``, ``crema-d:1001`` or the manifest's value."""
    dataset: str


@dataclass
class DataReport:
    """What was found under the sources, and what was left out and why."""

    listed: int = 0
    used: int = 0
    outside_classes: dict[str, int] = field(default_factory=dict)
    unparsed: int = 0
    unparsed_examples: list[str] = field(default_factory=list)
    duplicates_removed: int = 0
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    corrupt: int = 0
    corrupt_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _note(examples: list[str], text: str) -> None:
    if len(examples) < _MAX_EXAMPLES:
        examples.append(text)


# --- finding the data ---------------------------------------------------------------------------
def is_manifest(uri: str) -> bool:
    """True for a ``.csv`` or ``.parquet`` source (a manifest of ``uri, label, actor``)."""
    return uri.lower().endswith(MANIFEST_EXTENSIONS)


def _stat(uri: str, storage_options: Mapping[str, Any] | None) -> VideoObject | None:
    fs, path = resolve(uri, storage_options)
    try:
        if isinstance(fs, LocalFileSystem):
            st = os.stat(path)
            return VideoObject(uri=path, size=st.st_size, etag=local_etag(st.st_size,
                                                                           st.st_mtime_ns))
        info = with_retries(lambda: fs.info(path), what=f"stat {uri}")
    except FileNotFoundError:
        return None
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return VideoObject(uri=uri, size=int(info.get("size") or 0), etag=etag)


def _read_manifest(uri: str, storage_options: Mapping[str, Any] | None) -> list[dict[str, str]]:
    import pandas as pd

    data = read_bytes(uri, storage_options)
    try:
        if uri.lower().endswith(".csv"):
            table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        else:
            table = pd.read_parquet(io.BytesIO(data)).astype(str)
    except Exception as exc:
        raise ValueError(f"{uri}: not a readable manifest ({type(exc).__name__}: {exc})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = {"uri", "label", "actor"} - set(table.columns)
    if missing:
        raise ValueError(f"{uri}: manifest lacks the column(s) {sorted(missing)}; "
                         "it needs uri, label, actor")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    rows = []
    for row in table.to_dict("records"):
        video = str(row["uri"]).strip()
        if video and "://" not in video and not video.startswith("/"):
            video = join(base, video)  # relative to the manifest's folder
        rows.append({"uri": video, "label": str(row["label"]).strip().lower(),
                     "actor": str(row["actor"]).strip(),
                     "dataset": str(row.get("dataset") or "manifest").strip() or "manifest"})
    return rows


def collect_examples(
    sources: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[list[Example], DataReport]:
    """Every labelled video under ``sources`` (folders, prefixes or manifests), deduplicated.

    Names are parsed as RAVDESS or CREMA-D. Labels outside the six classes (calm, surprised),
    names that do not parse and manifest rows whose file is missing are counted in the report,
    not raised. RAVDESS ships each performance twice (modality 01 audio-video, 02 video-only,
    the same frames): one copy is kept, the video-only one when both exist.
    """
    report = DataReport()
    by_key: dict[str, tuple[str, Example]] = {}
    for source in sources:
        if is_manifest(source):
            for row in _read_manifest(source, storage_options):
                report.listed += 1
                if row["label"] not in EMOTION_LABELS:
                    report.outside_classes[row["label"]] = (
                        report.outside_classes.get(row["label"], 0) + 1)
                    continue
                video = _stat(row["uri"], storage_options)
                if video is None:
                    report.missing += 1
                    _note(report.missing_examples, row["uri"])
                    continue
                example = Example(video.uri, video.etag, video.size, row["label"],
                                  row["actor"], row["dataset"])
                _keep(by_key, f"uri:{video.uri}", "", example, report)
            continue
        for video in list_videos(source, storage_options).videos:
            report.listed += 1
            parsed = parse_name(video.uri)
            if parsed is None:
                report.unparsed += 1
                _note(report.unparsed_examples, video.uri)
                continue
            if not parsed.in_classes:
                report.outside_classes[parsed.label] = (
                    report.outside_classes.get(parsed.label, 0) + 1)
                continue
            example = Example(video.uri, video.etag, video.size, parsed.label,
                              f"{parsed.dataset}:{parsed.actor}", parsed.dataset)
            # Prefer RAVDESS modality 02 (video-only) over 01 (audio-video): same frames.
            rank = "0" if os.path.basename(video.uri).startswith("02-") else "1"
            _keep(by_key, parsed.performance, rank + video.uri, example, report)
    examples = sorted((e for _, e in by_key.values()), key=lambda e: e.uri)
    report.used = len(examples)
    return examples, report


def _keep(
    by_key: dict[str, tuple[str, Example]], key: str, rank: str, example: Example,
    report: DataReport,
) -> None:
    current = by_key.get(key)
    if current is not None:
        report.duplicates_removed += 1
        if current[0] <= rank:
            return
    by_key[key] = (rank, example)


# --- the split ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Train and validation examples; no actor is on both sides."""

    train: list[Example]
    val: list[Example]
    val_fraction: float
    seed: int

    @property
    def train_actors(self) -> list[str]:
        """Actors of the training side, sorted."""
        return sorted({e.actor for e in self.train})

    @property
    def val_actors(self) -> list[str]:
        """Actors of the validation side, sorted."""
        return sorted({e.actor for e in self.val})

    def as_dict(self) -> dict[str, Any]:
        """The split as written next to the model (``split.json``)."""
        return {
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "train_actors": self.train_actors,
            "val_actors": self.val_actors,
            "train": [{"uri": e.uri, "etag": e.etag, "label": e.label, "actor": e.actor}
                      for e in self.train],
            "val": [{"uri": e.uri, "etag": e.etag, "label": e.label, "actor": e.actor}
                    for e in self.val],
        }


def _actor_rank(seed: int, actor: str) -> str:
    return hashlib.sha256(f"{seed}:{actor}".encode()).hexdigest()


def split_by_actor(examples: Sequence[Example], val_fraction: float, seed: int) -> Split:
    """Hold out about ``val_fraction`` of the actors of each dataset for validation.

    Speaker-independent: every actor lands on one side only. Stratified by dataset (each
    dataset gives its share of validation actors), and each actor's side depends only on
    ``seed`` and its rank among its dataset's actors by a hash, not on listing order.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    actors_by_dataset: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        actors_by_dataset[e.dataset].add(e.actor)
    total_actors = sum(len(a) for a in actors_by_dataset.values())
    if total_actors < 2:
        raise ValueError(f"a split by actor needs at least 2 actors, found {total_actors}")
    val_actors: set[str] = set()
    for actors in actors_by_dataset.values():
        ranked = sorted(actors, key=lambda a: _actor_rank(seed, a))
        k = round(len(ranked) * val_fraction)
        if len(ranked) >= 2:
            k = min(max(k, 1), len(ranked) - 1)
        val_actors.update(ranked[:k])
    if not val_actors:  # one actor per dataset everywhere: hold out the first-ranked one
        val_actors.add(min((e.actor for e in examples), key=lambda a: _actor_rank(seed, a)))
    train = [e for e in examples if e.actor not in val_actors]
    val = [e for e in examples if e.actor in val_actors]
    return Split(train=train, val=val, val_fraction=val_fraction, seed=seed)


def class_counts(examples: Iterable[Example]) -> dict[str, int]:
    """Examples per label, in label order."""
    counts = Counter(e.label for e in examples)
    return {label: counts.get(label, 0) for label in EMOTION_LABELS}


# --- the clip cache -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """How training clips are cut: the cache key holds every field."""

    num_frames: int
    img_size: int
    clip_seconds: float = 4.0
    max_clips: int = 4

    @property
    def cached_frames(self) -> int:
        """Frames stored per clip (``CACHE_FRAME_FACTOR`` x ``num_frames``)."""
        return self.num_frames * CACHE_FRAME_FACTOR


def cache_key(example: Example, spec: ClipSpec) -> str:
    """``(uri, etag, num_frames, img_size, ...)`` -> a file name in the cache."""
    text = "|".join(str(v) for v in (CACHE_FORMAT, example.uri, example.etag, spec.num_frames,
                                      spec.img_size, spec.clip_seconds, spec.max_clips))
    return hashlib.sha256(text.encode()).hexdigest()[:32] + ".npy"


class ClipCache:
    """Decoded uint8 clips ``[N, F, H, W, 3]`` per video under a folder or ``s3://`` prefix.

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

    def entry_uri(self, example: Example) -> str:
        """Where ``example``'s clips are (or will be) in the cache."""
        return join(self.uri, "clips", cache_key(example, self.spec))

    def _local_path(self, example: Example) -> Path:
        return self.local_dir / "clips" / cache_key(example, self.spec)

    def has(self, example: Example) -> bool:
        """True when the clips of ``example`` are cached."""
        if self._local_path(example).exists():
            return True
        if not self.remote:
            return False
        fs, path = resolve(self.entry_uri(example), self.storage_options)
        return bool(with_retries(lambda: fs.exists(path), what=f"stat {self.entry_uri(example)}"))

    def store(self, example: Example, clips: np.ndarray) -> None:
        """Write the clips of ``example`` (whole file or nothing)."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(clips, dtype=np.uint8), allow_pickle=False)
        data = buffer.getvalue()
        atomic_write_bytes(self.entry_uri(example), data, self.storage_options)
        if self.remote:
            atomic_write_bytes(str(self._local_path(example)), data)

    def _local_copy(self, example: Example) -> Path:
        path = self._local_path(example)
        if self.remote and not path.exists():
            atomic_write_bytes(str(path), read_bytes(self.entry_uri(example),
                                                     self.storage_options))
        return path

    def load(self, example: Example) -> np.ndarray:
        """The cached clips of ``example``, memory-mapped (read-only; no file stays open)."""
        return np.load(self._local_copy(example), mmap_mode="r", allow_pickle=False)

    def count(self, example: Example) -> int:
        """How many clips ``example`` has in the cache (read from the ``.npy`` header)."""
        key = cache_key(example, self.spec)
        if key not in self._counts:
            with open(self._local_copy(example), "rb") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(fh)
            self._counts[key] = int(shape[0])
        return self._counts[key]


def decode_training_clips(example: Example, spec: ClipSpec,
                          storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Decode ``example`` into ``[N, cached_frames, H, W, 3]`` uint8 clips (N >= 1)."""
    source: Any = example.uri if is_local(example.uri) else read_bytes(example.uri,
                                                                       storage_options)
    reader = ClipReader(source, num_frames=spec.cached_frames, img_size=spec.img_size,
                        clip_seconds=spec.clip_seconds, uri=example.uri, threads=1,
                        max_clips=spec.max_clips)
    clips = [clip.frames for clip in reader]
    if not clips:  # ClipReader raises NoDecodableFramesError first; kept as a guard
        raise ValueError(f"{example.uri}: no clips")
    return np.stack(clips)


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
    import time

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
