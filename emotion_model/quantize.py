"""int8 ONNX: a float ONNX export quantized with ONNX Runtime, and checked against the float
file on clips the calibration never saw, before anything is written.

::

    deployment file -> export_onnx (float32, parity with torch <= 1e-4)
        -> quant_pre_process (shape inference, graph clean-up)
        -> static: quantize_static, QDQ, per-channel int8 weights, uint8 activations whose
           ranges (MinMax) come from the calibration clips
           dynamic: quantize_dynamic, per-channel int8 weights, activations quantized per call
        -> the agreement check: the float and the int8 file on the check clips (other videos,
           other actors) -> ExportParityError below the bar, nothing written
        -> one ONNX file whose metadata records how it was made (``onnx``: precision,
           quantization, calibration, check) and serves as ``<source version>-int8``

**The bar** (`AGREEMENT_BAR`): on the check clips, the int8 file's label must be the float
file's for at least 95 % of them; a clip on which the float model itself hesitates, its
probabilities of the two labels within `NEAR_TIE` (0.01) of each other, counts as agreeing
whichever of the two the int8 file picks. The max and mean absolute probability difference
are measured and recorded beside it. Why top-1: the outputs that matter downstream are the
labels (``label`` of every row, the videos' label mix that the drift check watches); 95 %
means at most one label in twenty moves, while a broken quantization (a saturated range, a
wrong scale) falls to chance (about 1 in 6) and is refused. Why the near-tie allowance: an
untrained or uncertain model's top two probabilities can be 1e-4 apart, closer than any int8
rounding, and which of two tied labels wins is noise, not disagreement.

**Calibration** (static), when no source is given: `sample_calibration` renders drawn-face
videos with ``emotion_model.sample_data`` into a temporary folder (4 s each, 4 actors x 6
emotions x 2 takes, with their synthetic voice when the model reads audio), and decodes them
with the model's own ``ClipReader`` settings (frames, size, crop, log-mel), as serving does:
actors 1-2 calibrate, actors 3-4 check. A source can be given instead: a folder of videos
(every other one calibrates, the others check) or a clip cache of the retrain flow (its
``.npy`` files, every other one each). Drawn faces are not real faces: the activation
ranges they give fit real footage less well than the archive's own videos would (give a
folder of them: ``--calibration``).

CPU numbers (2 cores, 48 x 112 clips, README "Edge export"): the X3D student runs 1.9x as
fast in static int8 as in float; dynamic int8 is slower than float (ConvInteger), and the
SlowFast models gain little or nothing from int8 (the small one loses). Every int8 export says
both speeds as measured on the check clips.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from emotion_model.errors import ExportParityError, VideoError
from emotion_model.export import Quantization, export_onnx, onnx_record, stamp_onnx
from emotion_model.files import Source, read_source_bytes, write_target
from emotion_model.model import EmotionClassifier
from emotion_model.onnx_runtime import OnnxPredictor
from emotion_model.predict import BasePredictor, clip_arrays, prediction_reader

log = logging.getLogger(__name__)

QUANTIZATIONS: tuple[Quantization, ...] = ("static", "dynamic")
AGREEMENT_BAR = 0.95
"""Least share of check clips whose int8 label is the float file's (see the module's doc)."""
NEAR_TIE = 0.01
"""Float probabilities of two labels this close: either label counts as agreeing."""
MAX_CLIPS = 32
"""Clips taken at most from a given source for each of calibration and check."""
CLIPS_PER_VIDEO = 2
"""Clips taken at most from one video of a given folder (spread over more videos)."""
MIN_CLIPS = 4
"""Fewest clips a calibration or check set may have."""
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".flv", ".mpg", ".mpeg")
SAMPLE_ACTORS = ((1, 2), (3, 4))
"""The drawn actors of the default calibration set and of its check set."""
SAMPLE_SECONDS = 4.0


# --- clips ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSet:
    """Clips as a model reads them: frames uint8 ``[N, T, H, W, 3]``, and for a model that
    reads audio their log-mel float32 ``[N, n_mels, frames]`` (None: no clip has sound) and
    ``audio_present`` bool ``[N]``; ``source`` says where they came from."""

    frames: np.ndarray
    audio: np.ndarray | None
    audio_present: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.frames)

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None,
                                                   np.ndarray | None]]:
        """``predictor.probabilities``' arguments, ``size`` clips at a time."""
        for i in range(0, len(self), size):
            cut = slice(i, i + size)
            yield (self.frames[cut], None if self.audio is None else self.audio[cut],
                   None if self.audio_present is None else self.audio_present[cut])

    @classmethod
    def of_clips(cls, predictor: BasePredictor, clips: Sequence[Any], source: str) -> ClipSet:
        """Decoded ``Clip``s as ``predictor`` reads them (`clip_arrays`)."""
        if not clips:
            raise ValueError(f"{source}: no clip could be decoded for the model "
                             f"({predictor.num_frames} frames of {predictor.img_size} px, "
                             f"{predictor.crop.mode} crops)")
        frames, audio, present = clip_arrays(predictor, clips)
        return cls(frames, audio, None if present is None else np.asarray(present, bool),
                   source)


def video_clips(predictor: BasePredictor, paths: Sequence[Path], *, limit: int = MAX_CLIPS,
                per_video: int = CLIPS_PER_VIDEO) -> list[Any]:
    """Up to ``limit`` clips of ``paths`` (``per_video`` at most from each), decoded as
    ``predictor`` is served (`prediction_reader`); a video that does not decode is skipped."""
    clips: list[Any] = []
    for path in paths:
        if len(clips) >= limit:
            break
        try:
            reader = prediction_reader(predictor, str(path), clip_seconds=SAMPLE_SECONDS)
            clips += list(islice(reader, min(per_video, limit - len(clips))))
        except VideoError as exc:
            log.warning("calibration: %s skipped: %s", path, exc)
    return clips


def sample_calibration(predictor: BasePredictor, folder: str | Path, *, static: bool = True
                       ) -> tuple[ClipSet | None, ClipSet]:
    """The default calibration and check sets: drawn-face videos rendered under ``folder``
    (`SAMPLE_ACTORS`: 6 emotions x 2 takes each, 4 s at 12 fps, with their voice when the
    model reads audio), decoded with the model's settings. ``static`` False: the check set
    only (dynamic quantization needs no calibration)."""
    from emotion_model.sample_data import make_sample_dataset

    size = max(96, predictor.img_size + predictor.img_size % 2)
    sets: list[ClipSet | None] = []
    for role, actors in zip(("calibration", "check"), SAMPLE_ACTORS, strict=True):
        if role == "calibration" and not static:
            sets.append(None)
            continue
        paths = make_sample_dataset(
            Path(folder) / role, actors=len(actors), first_actor=actors[0], layout="ravdess",
            takes_per_emotion=2, seconds=SAMPLE_SECONDS, fps=12, size=(size, size), seed=0,
            audio=predictor.modality != "video")
        source = (f"sample data: {len(paths)} drawn-face videos of actors "
                  f"{actors[0]}-{actors[-1]} (emotion_model.sample_data, seed 0)")
        sets.append(ClipSet.of_clips(predictor, video_clips(predictor, paths, limit=len(paths),
                                                            per_video=1), source))
    calibration, check = sets
    assert check is not None
    return calibration, check


def _alternate(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Every other file (sorted) calibrates, the others check: no check clip comes from a
    calibration file."""
    ordered = sorted(paths)
    return ordered[::2], ordered[1::2]


def folder_calibration(predictor: BasePredictor, folder: str | Path
                       ) -> tuple[ClipSet, ClipSet]:
    """Calibration and check sets from a folder of videos (any depth; `VIDEO_SUFFIXES`)."""
    root = Path(folder)
    paths = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    if len(paths) < 2:
        raise ValueError(f"{root}: calibration needs at least 2 videos, found {len(paths)}")
    calibrate, check = _alternate(paths)
    return (ClipSet.of_clips(predictor, video_clips(predictor, calibrate),
                             f"{root}: {len(calibrate)} videos (every other one)"),
            ClipSet.of_clips(predictor, video_clips(predictor, check),
                             f"{root}: {len(check)} other videos"))


def _cached_set(predictor: BasePredictor, files: Sequence[Path], source: str) -> ClipSet:
    """Clips of clip-cache files: each file's clips (uint8 ``[n, F, S, S, 3]``, F a multiple of
    ``num_frames``) thinned to ``num_frames`` evenly spaced frames; its sound from the
    ``.audio.npy`` beside it (absent: no sound)."""
    t, s = predictor.num_frames, predictor.img_size
    frames: list[np.ndarray] = []
    audio: list[np.ndarray] = []
    present: list[bool] = []
    spec = predictor.audio_spec if predictor.modality != "video" else None
    for path in files:
        clips = np.load(path, mmap_mode="r", allow_pickle=False)
        if (clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[2:] != (s, s, 3)
                or clips.shape[1] % t):
            continue
        sound = path.with_name(path.name.removesuffix(".npy") + ".audio.npy")
        mels = np.load(sound, allow_pickle=False) if spec and sound.is_file() else None
        for i in range(min(len(clips), CLIPS_PER_VIDEO)):
            frames.append(np.asarray(clips[i, :: clips.shape[1] // t]))
            if spec is not None:
                ok = mels is not None and i < len(mels) and mels["log_mel"].shape[1:] == spec.shape
                audio.append(mels["log_mel"][i] if ok else np.zeros(spec.shape, np.float32))
                present.append(bool(ok and mels["present"][i]))
        if len(frames) >= MAX_CLIPS:
            break
    if not frames:
        raise ValueError(f"{source}: no cached clips of {t} frames (or a multiple) of {s} px")
    return ClipSet(np.stack(frames[:MAX_CLIPS]),
                   np.stack(audio[:MAX_CLIPS]) if spec is not None and any(present) else None,
                   np.asarray(present[:MAX_CLIPS], bool) if spec is not None else None,
                   source)


def cache_calibration(predictor: BasePredictor, folder: str | Path) -> tuple[ClipSet, ClipSet]:
    """Calibration and check sets from a clip cache folder (the retrain flow's ``.npy`` files
    of a model with these frames, size and crop)."""
    root = Path(folder)
    files = [p for p in root.rglob("*.npy") if not p.name.endswith(".audio.npy")]
    calibrate, check = _alternate(files)
    return (_cached_set(predictor, calibrate, f"{root}: clip cache, every other file"),
            _cached_set(predictor, check, f"{root}: clip cache, the other files"))


def check_calibration_source(source: str | Path) -> Path:
    """``source`` as a folder; a ValueError in one line when it is not one."""
    root = Path(source)
    if not root.is_dir():
        raise ValueError(f"{source}: calibration source must be a folder of videos or a clip "
                         "cache folder")
    return root


def calibration_sets(predictor: BasePredictor, source: str | Path | None = None, *,
                     static: bool = True, workdir: str | Path | None = None
                     ) -> tuple[ClipSet | None, ClipSet]:
    """(calibration, check) clip sets for ``predictor``'s model: rendered sample data when
    ``source`` is None (under ``workdir``, else a temporary folder), else a folder of videos or
    a clip cache (a folder holding ``.npy`` files). ``static`` False: no calibration set."""
    if source is None:
        if workdir is not None:
            return sample_calibration(predictor, workdir, static=static)
        with tempfile.TemporaryDirectory(prefix="emotion-calibration-") as tmp:
            return sample_calibration(predictor, tmp, static=static)
    root = check_calibration_source(source)
    cached = next((p for p in root.rglob("*.npy")), None) is not None
    calibration, check = (cache_calibration if cached else folder_calibration)(predictor, root)
    for role, clips in (("calibration", calibration), ("check", check)):
        if len(clips) < MIN_CLIPS:
            raise ValueError(f"{source}: {len(clips)} {role} clips, fewer than {MIN_CLIPS}: "
                             "give more videos")
    return (calibration if static else None), check


# --- agreement -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agreement:
    """How far a candidate's probabilities (int8) are from a reference's (float) on the same
    clips, and whether that passes `AGREEMENT_BAR`."""

    clips: int
    top1: float
    """Share of clips with the reference's label (near ties counted as agreeing)."""
    exact_top1: float
    """Share of clips with exactly the reference's label."""
    max_abs_diff: float
    mean_abs_diff: float
    bar: float = AGREEMENT_BAR
    near_tie: float = NEAR_TIE

    @property
    def passed(self) -> bool:
        return self.top1 >= self.bar

    def describe(self) -> str:
        """One line: the agreement, the bar and the differences."""
        return (f"top-1 agreement {self.top1:.3f} on {self.clips} clips (bar {self.bar}; exact "
                f"{self.exact_top1:.3f}), max |probability difference| {self.max_abs_diff:.2e}, "
                f"mean {self.mean_abs_diff:.2e}")


def compare_probabilities(reference: np.ndarray, candidate: np.ndarray, *,
                          bar: float = AGREEMENT_BAR, near_tie: float = NEAR_TIE) -> Agreement:
    """`Agreement` of two float ``[N, C]`` probability arrays of the same clips."""
    ref, got = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != got.shape or ref.ndim != 2 or not len(ref):
        raise ValueError(f"need two [N, C] arrays of the same shape, got {ref.shape} and "
                         f"{got.shape}")
    rows = np.arange(len(ref))
    want, have = ref.argmax(1), got.argmax(1)
    tied = ref[rows, want] - ref[rows, have] < near_tie
    diff = np.abs(got - ref)
    finite = bool(np.isfinite(got).all())
    return Agreement(
        clips=len(ref),
        top1=float(((want == have) | tied).mean()) if finite else 0.0,
        exact_top1=float((want == have).mean()),
        max_abs_diff=float(diff.max()) if finite else float("inf"),
        mean_abs_diff=float(diff.mean()) if finite else float("inf"),
        bar=bar, near_tie=near_tie)


def _timed_probabilities(predictor: BasePredictor, clips: ClipSet) -> tuple[np.ndarray, float]:
    """``predictor``'s probabilities of ``clips`` (its preferred batch) and clips per second
    (after one untimed batch: a session's first run sets itself up)."""
    batches = list(clips.batches(predictor.preferred_batch_size))
    predictor.probabilities(*batches[0])
    started = time.perf_counter()
    probs = [predictor.probabilities(*b) for b in batches]
    return np.concatenate(probs), len(clips) / max(time.perf_counter() - started, 1e-9)


def agreement(reference: BasePredictor, candidate: BasePredictor, clips: ClipSet, *,
              bar: float = AGREEMENT_BAR) -> tuple[Agreement, dict[str, float]]:
    """`compare_probabilities` of two predictors on ``clips``, and each one's clips per second
    (``reference``, ``candidate``) on this machine."""
    want, ref_speed = _timed_probabilities(reference, clips)
    got, cand_speed = _timed_probabilities(candidate, clips)
    return (compare_probabilities(want, got, bar=bar),
            {"reference": ref_speed, "candidate": cand_speed})


# --- quantization --------------------------------------------------------------------------------
class _Feeds:
    """An ONNX Runtime ``CalibrationDataReader`` over prepared input feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds = [dict(f) for f in feeds]
        self._next = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self.feeds)


def calibration_feeds(predictor: OnnxPredictor, clips: ClipSet, batch_size: int = 2
                      ) -> list[dict[str, np.ndarray]]:
    """The session inputs of ``clips`` (`OnnxPredictor.feeds`), ``batch_size`` at a time."""
    return [predictor.feeds(*b) for b in clips.batches(batch_size)]


def quantize_onnx(float_data: bytes, *, quantization: Quantization = "static",
                  feeds: Sequence[Mapping[str, np.ndarray]] = ()) -> bytes:
    """int8 ONNX bytes of a float ONNX model: ``static`` (QDQ, per-channel int8 weights, uint8
    activations whose ranges, MinMax, come from ``feeds``: session inputs, see
    `calibration_feeds`) or ``dynamic`` (per-channel int8 weights; no feeds). The model is
    pre-processed first (``quant_pre_process``: shape inference, graph clean-up). No metadata
    is added: `quantize_model` stamps and checks the result."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be 'static' or 'dynamic', got {quantization!r}")
    if quantization == "static" and not feeds:
        raise ValueError("static quantization needs calibration feeds")
    with tempfile.TemporaryDirectory(prefix="emotion-quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(onnx.load_from_string(float_data), prepared)
        if quantization == "static":
            quantize_static(
                prepared, quantized, _Feeds(feeds), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        else:
            quantize_dynamic(prepared, quantized, per_channel=True,
                             weight_type=QuantType.QInt8)
        return quantized.read_bytes()


def quantize_model(
    float_data: bytes,
    *,
    quantization: Quantization = "static",
    calibration: str | Path | None = None,
    clips: tuple[ClipSet | None, ClipSet] | None = None,
    bar: float = AGREEMENT_BAR,
) -> tuple[bytes, dict[str, Any]]:
    """Quantize a float ONNX file of ours (``export_onnx``'s bytes) and check it against the
    float file on clips the calibration did not use, before returning it.

    ``calibration``: where the clips come from (`calibration_sets`: None renders sample data);
    ``clips`` gives the (calibration, check) sets directly instead. Returns the int8 bytes
    (serving as ``<source version>-int8``, or ``-int8-dynamic``) and a report; raises
    `ExportParityError` (one line) when the agreement is under ``bar``.
    """
    import onnx

    timings: dict[str, float] = {}
    started = time.perf_counter()
    reference = OnnxPredictor.from_file(float_data, device="cpu")
    if reference.precision != "float32":
        raise ValueError(f"the model is already {reference.precision} "
                         f"({reference.model_version}): quantize its float export")
    calibrate, check = clips or calibration_sets(reference, calibration,
                                                 static=quantization == "static")
    if quantization == "dynamic":
        calibrate = None  # ranges are taken at each call
    timings["clips_s"] = time.perf_counter() - started
    started = time.perf_counter()
    feeds = calibration_feeds(reference, calibrate) if calibrate is not None else []
    proto = onnx.load_from_string(quantize_onnx(float_data, quantization=quantization,
                                                feeds=feeds))
    timings["quantize_s"] = time.perf_counter() - started
    settings: dict[str, Any] = {
        "method": "MinMax" if quantization == "static" else "dynamic (ranges per call)",
        "format": "QDQ" if quantization == "static" else "QOperator",
        "per_channel": True, "weights": "int8",
        "activations": "uint8" if quantization == "static" else "uint8, dynamic",
        "source": calibrate.source if calibrate is not None else None,
        "clips": len(calibrate) if calibrate is not None else 0,
    }
    float_record = reference.metadata.get("onnx") or {}
    parity = float_record.get("parity")
    record = onnx_record(proto, reference.metadata, precision="int8", quantization=quantization,
                         parity=parity, calibration=settings)
    candidate = OnnxPredictor.from_file(stamp_onnx(proto, reference.metadata, record),
                                        device="cpu")
    started = time.perf_counter()
    agreed, speed = agreement(reference, candidate, check, bar=bar)
    timings["check_s"] = time.perf_counter() - started
    if not agreed.passed:
        raise ExportParityError(f"onnx int8 ({quantization})",
                                f"{agreed.describe()} against the float model on {check.source}")
    check_record = {**asdict(agreed), "source": check.source}
    data = stamp_onnx(proto, reference.metadata, {**record, "check": check_record})
    report = {
        "format": "onnx", "precision": "int8", "quantization": quantization,
        "model_version": candidate.model_version, "source_version": record["source_version"],
        "bytes": len(data), "float_bytes": len(float_data), "max_abs_diff": parity,
        "calibration": settings, "check": check_record, "agreement": agreed,
        "clips_per_s": {"float32": speed["reference"], "int8": speed["candidate"]},
        "timings": timings,
    }
    return data, report


def export_int8(
    model: EmotionClassifier,
    metadata: Mapping[str, Any],
    output: str | Path,
    *,
    quantization: Quantization = "static",
    calibration: str | Path | None = None,
    clips: tuple[ClipSet | None, ClipSet] | None = None,
    bar: float = AGREEMENT_BAR,
) -> dict[str, Any]:
    """Export ``model`` to float ONNX (parity with torch <= 1e-4), quantize it to int8
    (`quantize_model`: ``calibration`` or ``clips``), check it, then write ``output`` (local:
    atomically; a URI: one PUT); returns `quantize_model`'s report with ``path`` and
    ``timings.export_s``."""
    if calibration is not None:  # before the export: a bad source fails at once
        check_calibration_source(calibration)
    started = time.perf_counter()
    float_data, _ = export_onnx(model, metadata)
    export_s = time.perf_counter() - started
    data, report = quantize_model(float_data, quantization=quantization,
                                  calibration=calibration, clips=clips, bar=bar)
    return {**report, **_write(output, data), "timings": {"export_s": export_s,
                                                          **report["timings"]}}


def quantize_file(source: Source, output: str | Path, *,
                  quantization: Quantization = "static",
                  calibration: str | Path | None = None,
                  bar: float = AGREEMENT_BAR) -> dict[str, Any]:
    """`export_int8` from a float ONNX file of ours (path, URI or bytes) instead of a
    deployment file."""
    if calibration is not None:
        check_calibration_source(calibration)
    _, float_data = read_source_bytes(source)
    data, report = quantize_model(float_data, quantization=quantization,
                                  calibration=calibration, bar=bar)
    return {**report, **_write(output, data)}


def _write(output: str | Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``output`` (local: atomically; a URI: one PUT)."""
    write_target(output, data)
    return {"path": str(output)}
