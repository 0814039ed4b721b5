"""Labelled training data: find the videos under folders, prefixes or manifests, label them by
their RAVDESS or CREMA-D names (or the manifest's columns) and report what was left out."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from emotion_model.labels import EMOTION_LABELS, parse_name
from tasks.common.listing import VideoObject, list_videos, local_etag
from tasks.common.storage import join, read_bytes, resolve, with_retries
from tasks.errors import ManifestError

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".csv", ".parquet")
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
    no_audio: int = 0
    """Models that read audio: decoded videos with no usable sound in any clip (no audio
    stream: RAVDESS modality 02, a silent export; or audio that does not decode)."""
    no_audio_examples: list[str] = field(default_factory=list)
    no_audio_left_out: int = 0
    """Of ``no_audio``, those left out of training: all of them for an audio-only model; none
    for audio-video, which trains on them with its no-audio embedding."""

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
        raise ManifestError(uri, f"not a readable manifest ({type(exc).__name__}: {exc})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = {"uri", "label", "actor"} - set(table.columns)
    if missing:
        raise ManifestError(uri, f"manifest lacks the column(s) {sorted(missing)}; "
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
    sources: Sequence[str], storage_options: Mapping[str, Any] | None = None, *,
    audio: bool = False,
) -> tuple[list[Example], DataReport]:
    """Every labelled video under ``sources`` (folders, prefixes or manifests), deduplicated.

    Names are parsed as RAVDESS or CREMA-D. Labels outside the six classes (calm, surprised),
    names that do not parse and manifest rows whose file is missing are counted in the report,
    not raised. RAVDESS ships each performance twice (modality 01 audio-video, 02 video-only,
    the same frames): one copy is kept, the video-only one when both exist, or with ``audio``
    (a model that reads the sound) the audio-video one.
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
            _keep(by_key, parsed.performance, _copy_rank(video.uri, audio), example, report)
    return _kept(by_key, report)


def _copy_rank(uri: str, audio: bool) -> str:
    """RAVDESS: the same frames as modality 01 (audio-video) and 02 (video-only); a video
    model keeps 02 (as before audio models), an audio model the copy with sound (lower ranks
    win in `_keep`)."""
    return ("0" if os.path.basename(uri).startswith("01-" if audio else "02-") else "1") + uri


def _kept(by_key: dict[str, tuple[str, Example]], report: DataReport
          ) -> tuple[list[Example], DataReport]:
    """The examples `_keep` kept, by URI, with ``report.used`` set."""
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


UNLABELLED_DATASET = "unlabelled"
"""``Example.dataset`` of an unlabelled video whose name gives no actor."""


def collect_unlabelled(
    sources: Sequence[str], storage_options: Mapping[str, Any] | None = None, *,
    audio: bool = False,
) -> tuple[list[Example], DataReport]:
    """Every video under ``sources`` (folders or prefixes) as an unlabelled `Example` (label
    ``""``: a teacher labels it), deduplicated.

    The actor comes from a RAVDESS or CREMA-D name where it parses (so a split by actor holds
    out whole actors); any other video is its own group (actor ``video:<uri>``, dataset
    `UNLABELLED_DATASET`: split by video). Labels in names are ignored. RAVDESS's two copies
    of a performance keep one, as in `collect_examples`.
    """
    report = DataReport()
    by_key: dict[str, tuple[str, Example]] = {}
    for source in sources:
        if is_manifest(source):
            raise ManifestError(source, "unlabelled sources are folders or prefixes of videos; "
                                "give a manifest as a labelled source")
        for video in list_videos(source, storage_options).videos:
            report.listed += 1
            parsed = parse_name(video.uri)
            if parsed is None:
                example = Example(video.uri, video.etag, video.size, "", f"video:{video.uri}",
                                  UNLABELLED_DATASET)
                _keep(by_key, f"uri:{video.uri}", "", example, report)
                continue
            example = Example(video.uri, video.etag, video.size, "",
                              f"{parsed.dataset}:{parsed.actor}", parsed.dataset)
            _keep(by_key, parsed.performance, _copy_rank(video.uri, audio), example, report)
    return _kept(by_key, report)
