"""Face crops in the one decoding pass: detect faces at ``detect_fps``, link them into tracks,
and cut each clip window into one clip per face track.

::

    frame on screen (ClipReader, front to back)
        -> at detect times (every 1 / detect_fps s, and the first frame of each clip window),
           the frame converted small (swscale) and, on a window's first frame and every
           FULL_EVERY_S: a full detection (BlazeFace full range on the whole image, plus a
           look near each known small face; on a window's first frame also overlapping tiles:
           faces down to ~20 px in 1280x720); in between, a tracking step (BlazeFace short
           range near each known face) -> FaceTracker.update
        -> clip windows keep the decoded frames their targets take (nothing converted yet)
        -> a filled window waits until its boxes are final (the tracker has seen past it),
           then, per track present in at least half its targets (at most max_faces, the
           largest and longest first): the smoothed, interpolated box at each target time
           -> a square crop with ``margin`` around the face, clamped to the frame
           -> the frame converted once at the scale where the smallest crop still has
           img_size pixels (never above full size) -> crops resized to img_size (roi_align)

The deployment file's ``crop`` metadata (``CropSpec``) says which mode a model was trained
with; training and serving both cut clips here, so their crops come from the same code.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from emotion_model.clip_windows import Clip, ClipAssembler, Window, to_rgb, upright_size
from emotion_model.face_tracks import FaceTracker, square_crop

if TYPE_CHECKING:
    import av

    from emotion_model.faces import FaceDetector

CropMode = Literal["frame", "face"]

DEFAULT_MARGIN = 1.0
"""Crop side = the face box's longer side x (1 + 2 x margin): with 1.0 the face takes a third of
the crop's width and height, the framing of the CREMA-D frames the model card trained on (its
face box measures 0.24 of the frame's width and 0.32 of its height: head and shoulders)."""
CROP_CODE_VERSION = 1
"""Bumped whenever the detection schedule, the tracking or the cutting here changes the crops
(part of the clip cache's key, with the detector's own version)."""
DEFAULT_DETECT_FPS = 5.0
DEFAULT_MAX_FACES = 4
DEFAULT_DETECTOR = "blazeface-full-range"
TRACK_MAX_GAP_S = 1.0
"""A track unseen for longer than this ends."""
FULL_EVERY_S = 1.0
"""Seconds between two full detections (the whole image, full-range model). The detections in
between are tracking steps: the short-range model, near each known face only (or, with no face
known, on the whole image for close-ups), at a third of the cost."""


@dataclass(frozen=True)
class CropSpec:
    """How clips are cut from frames: the whole frame (``"frame"``) or around each face.

    Recorded in a deployment file's metadata as ``crop``; a file without it means ``frame``.
    """

    mode: CropMode = "frame"
    detector: str = ""
    detector_version: str = ""
    margin: float = DEFAULT_MARGIN
    detect_fps: float = DEFAULT_DETECT_FPS

    def __post_init__(self) -> None:
        if self.mode not in ("frame", "face"):
            raise ValueError(f"crop must be 'face' or 'frame', got {self.mode!r}")
        if not (isinstance(self.margin, int | float) and 0 <= self.margin <= 3):
            raise ValueError(f"crop margin must be between 0 and 3, got {self.margin!r}")
        if not (isinstance(self.detect_fps, int | float) and 0 < self.detect_fps <= 120):
            raise ValueError(f"detect_fps must be > 0 and <= 120, got {self.detect_fps!r}")
        if self.mode == "face" and not self.detector:
            raise ValueError("a face crop names its detector (see CropSpec.face)")

    @classmethod
    def face(
        cls, *, margin: float = DEFAULT_MARGIN, detect_fps: float = DEFAULT_DETECT_FPS,
        detector: str = DEFAULT_DETECTOR,
    ) -> CropSpec:
        """Face crops with the installed detector (its name and version recorded)."""
        name, version = _detector_identity(_detector_model(detector))
        return cls("face", name, version, float(margin), float(detect_fps))

    @classmethod
    def of(cls, mode: CropMode | str, **kwargs: Any) -> CropSpec:
        """``"face"`` (see `face`) or ``"frame"``."""
        if mode == "face":
            return cls.face(**kwargs)
        if mode == "frame":
            return FRAME_CROP
        raise ValueError(f"crop must be 'face' or 'frame', got {mode!r}")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> CropSpec:
        """The ``crop`` of a deployment file's metadata; absent (files written before face
        crops) means the whole frame."""
        value = (metadata or {}).get("crop")
        if value is None or value == "frame":
            return FRAME_CROP
        if value == "face":
            return cls.face()
        if not isinstance(value, Mapping):
            raise ValueError(f"crop metadata must be 'face', 'frame' or a mapping, got {value!r}")
        known = {"mode", "detector", "detector_version", "margin", "detect_fps"}
        return cls(**{k: v for k, v in value.items() if k in known})

    def to_metadata(self) -> dict[str, Any]:
        """What a deployment file records."""
        return {"mode": "frame"} if self.mode == "frame" else asdict(self)

    def with_detect_fps(self, detect_fps: float | None) -> CropSpec:
        """The same crop with another detection rate (None: unchanged)."""
        return self if detect_fps is None else replace(self, detect_fps=float(detect_fps))

    def key(self) -> str:
        """A text that changes whenever the crops would (for cache keys)."""
        if self.mode == "frame":
            return "frame"
        return (f"face{CROP_CODE_VERSION}:{self.detector}:{self.detector_version}:"
                f"{self.margin:g}:{self.detect_fps:g}")


FRAME_CROP = CropSpec()
"""The whole frame, resized (the model card's approach, and every file without ``crop``)."""


def _detector_model(name: str) -> Literal["full_range", "short_range"]:
    """``blazeface-full-range`` -> ``full_range``."""
    model = name.removeprefix("blazeface-").replace("-", "_")
    if model not in ("full_range", "short_range"):
        raise ValueError(f"unknown face detector {name!r} (known: blazeface-full-range, "
                         "blazeface-short-range)")
    return model  # type: ignore[return-value]


@functools.cache
def _detector_identity(model: str) -> tuple[str, str]:
    """``(name, version)`` of the installed detector ``model``."""
    detector = thread_detector(model)
    return detector.name, detector.version


_threads = threading.local()


def thread_detector(model: str = "full_range") -> FaceDetector:
    """This thread's `FaceDetector` for ``model`` (made on first use): decoding threads detect
    in parallel, each with its own TFLite interpreter."""
    from emotion_model.faces import FaceDetector

    detectors = _threads.__dict__.setdefault("detectors", {})
    if model not in detectors:
        detectors[model] = FaceDetector(model)  # type: ignore[arg-type]
    return detectors[model]


@dataclass(frozen=True)
class FaceTrackInfo:
    """One face track of a video: where and when it was seen."""

    face_id: int
    first_s: float
    last_s: float
    box: tuple[float, float, float, float]
    """Mean box ``(x, y, w, h)``, fractions of the frame."""
    detections: int
    clips: int
    path: tuple[tuple[float, float, float, float, float], ...] = ()
    """``(t, x, y, w, h)``: the smoothed box at each detection (interpolate between them)."""


class FaceClipAssembler(ClipAssembler):
    """`ClipAssembler` whose targets keep the decoded frames and whose windows become one
    clip per face track (see the module's docstring). Counts and timings go to ``info``."""

    def __init__(
        self,
        starts: list[float],
        *,
        crop: CropSpec,
        max_faces: int,
        detector: FaceDetector | None,
        info: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(starts, **kwargs)
        if detector is None:
            detector = thread_detector(_detector_model(crop.detector or DEFAULT_DETECTOR))
        self.crop = crop
        self.max_faces = max_faces
        self.detector = detector
        self.info = info
        # a track's first and last boxes hold for half a detection interval
        self.tracker = FaceTracker(max_gap_s=TRACK_MAX_GAP_S,
                                   hold_s=min(0.5 / crop.detect_fps, TRACK_MAX_GAP_S))
        self.held: list[tuple[Window, float | None]] = []
        self.prev_t: float | None = None
        self.next_detect = 0.0
        self.next_full = 0.0
        self.short = thread_detector("short_range")  # tracking steps
        self._next_start = 0  # the first planned window start not reached yet
        self.face_ids: dict[int, int] = {}  # track id -> face_id (in order of first clip)
        self.clip_counts: dict[int, int] = {}  # face_id -> clips

    # --- what targets keep: the decoded frame ----------------------------------------------
    def take(self) -> Any:
        """The frame on screen itself (converted only if a face clip needs it)."""
        assert self.frame is not None, "no frame on screen yet"
        return self.frame

    def show(self, frame: av.VideoFrame, t: float) -> Iterator[Clip]:
        """Put ``frame`` on screen; detect faces in it when a detection is due."""
        self.frame, self._image = frame, None
        window_start = self._window_starts_in(self.prev_t, t)
        first = self.prev_t is None
        self.prev_t = t
        if first or window_start or t >= self.next_detect - 1e-6:
            # tiles (small new faces) only where a window starts: a face must be seen over
            # half a window to get its clip, and the whole-image pass finds faces from ~50 px
            full = first or window_start or t >= self.next_full - 1e-6
            self._detect(frame, t, scan=first or window_start, full=full)
            self.next_detect = t + 1.0 / self.crop.detect_fps
            if full:
                self.next_full = t + FULL_EVERY_S
            yield from self._release(self.tracker.final_until)

    def _window_starts_in(self, prev: float | None, t: float) -> bool:
        """Whether a clip window starts in ``(prev, t]`` (this frame is its first)."""
        if prev is None:
            return True
        if self.open_ended:
            k = math.floor(t / self.stride_seconds)
            return k * self.stride_seconds > prev
        found = False
        while self._next_start < len(self.starts) and self.starts[self._next_start] <= t:
            found = found or self.starts[self._next_start] > prev
            self._next_start += 1
        return found

    def _detect(self, frame: av.VideoFrame, t: float, *, scan: bool, full: bool) -> None:
        """Detect faces in ``frame`` (a full detection, or a tracking step) and feed the
        tracker. The frame is converted at `FaceDetector.detection_size` (512 px) when tiles
        are due or a known face is small, else at the whole-image pass's own size (192 px,
        ~2x cheaper to convert); swscale's fast bilinear (the detector is not fussy, and it
        costs 60 % of the default's time when shrinking 720p)."""
        from emotion_model.faces import FaceBox

        start = time.perf_counter()
        width, height = upright_size(frame)
        near = [FaceBox(b.x, b.y, b.w, b.h, b.score) for b in self.tracker.predicted(t)]
        if scan or self.detector.needs_detail(width, height, near):
            size = self.detector.detection_size(width, height)
        else:
            size = self.detector.whole_size(width, height)
        image = to_rgb(frame, *size, "FAST_BILINEAR")
        if full:
            boxes = self.detector.detect(image, scan=scan, near=near)
        elif near:
            boxes = self.short.track(image, near)
        else:
            boxes = self.short.detect(image, scan=False)
        self.tracker.update(t, boxes, width, height)
        self.info.detect_frames += 1
        self.info.detect_s += time.perf_counter() - start

    # --- windows wait for final boxes, then become face clips -------------------------------
    def close(self, window: Window, end: float | None = None) -> Iterator[Clip]:
        """Hold ``window`` until the tracker's boxes over it are final."""
        self.held.append((window, end))
        yield from self._release(self.tracker.final_until)

    def _release(self, until: float) -> Iterator[Clip]:
        ready = [(w, e) for w, e in self.held if w.targets[-1] <= until + 1e-9]
        for item in ready:
            yield from self._face_clips(*item)
            self.held.remove(item)  # after its clips: `settled_until` passes it only then

    @property
    def settled_until(self) -> float:
        """As `ClipAssembler.settled_until`, counting the windows held for their boxes, and
        no later than the time up to which the tracker's boxes are final."""
        held = min((w.start for w, _ in self.held), default=math.inf)
        return min(super().settled_until, held, self.tracker.final_until)

    def face_box(self, face_id: int, t: float) -> tuple[float, float, float, float] | None:
        """Face ``face_id``'s smoothed box at ``t`` (fractions), as its crops were cut around;
        None where its track has no box (or no clip yet)."""
        track_id = next((k for k, v in self.face_ids.items() if v == face_id), None)
        box = None if track_id is None else self.tracker.box_at(track_id, t)
        return None if box is None else (box.x, box.y, box.w, box.h)

    def flush(self, end: float) -> Iterator[Clip]:
        """The video ended: every box is final; cut the windows still held and record the
        tracks kept (``info.faces``)."""
        self.tracker.finish(end)
        yield from self._release(math.inf)
        kept = self.tracker.select(self.max_faces)
        summaries = {s.id: s for s in self.tracker.tracks()}
        faces = []
        for track_id in kept:
            face_id = self.face_ids.get(track_id)
            summary = summaries.get(track_id)
            if face_id is None or summary is None:
                continue  # a track that never filled half a window has no clip
            box = summary.mean_box
            faces.append(FaceTrackInfo(
                face_id, float(summary.first_s), float(summary.last_s),
                (float(box.x), float(box.y), float(box.w), float(box.h)),
                int(summary.detections), self.clip_counts.get(face_id, 0),
                tuple((float(t), float(b.x), float(b.y), float(b.w), float(b.h))
                      for t, b in self.tracker.path(track_id)),
            ))
        self.info.faces = sorted(faces, key=lambda f: f.face_id)

    def _tracks_in(self, window: Window) -> list[tuple[int, list[Any]]]:
        """The tracks present at half or more of ``window``'s targets, best first (at most
        ``max_faces``), each with its box at every target (held from the nearest target
        where it has one)."""
        order = self.tracker.select(10**6)
        found = []
        for track_id in order:
            boxes = [self.tracker.box_at(track_id, float(t)) for t in window.targets]
            have = [i for i, b in enumerate(boxes) if b is not None]
            if 2 * len(have) < len(boxes):
                continue
            for i, b in enumerate(boxes):
                if b is None:
                    boxes[i] = boxes[min(have, key=lambda j, i=i: abs(j - i))]
            found.append((track_id, boxes))
            if len(found) == self.max_faces:
                break
        return found

    def _face_clips(self, window: Window, end: float | None) -> Iterator[Clip]:
        tracks = self._tracks_in(window)
        if not tracks:
            return
        width, height = upright_size(window.frames[0])
        crops = {tid: [square_crop(b, width, height, self.crop.margin) for b in boxes]
                 for tid, boxes in tracks}
        smallest = min(side for squares in crops.values() for _, _, side in squares)
        scale = min(1.0, self.img_size / max(1, smallest))
        cut = cut_crops(window.frames, [sq for squares in crops.values() for sq in squares],
                        scale=scale, size=self.img_size, width=width, height=height,
                        interpolation=self.interpolation)
        n = len(window.targets)
        for k, (tid, boxes) in enumerate(tracks):
            face_id = self.face_ids.setdefault(tid, len(self.face_ids))
            self.clip_counts[face_id] = self.clip_counts.get(face_id, 0) + 1
            mean = np.mean([[b.x, b.y, b.w, b.h] for b in boxes], axis=0)
            yield Clip(
                window.index, window.start, window.end if end is None else end,
                cut[k * n:(k + 1) * n], face_id=face_id,
                face_box=tuple(float(v) for v in mean),  # type: ignore[arg-type]
                face_score=float(np.mean([b.score for b in boxes])),
            )


def cut_crops(
    frames: list[Any],
    squares: list[tuple[int, int, int]],
    *,
    scale: float,
    size: int,
    width: int,
    height: int,
    interpolation: str = "BILINEAR",
) -> np.ndarray:
    """Cut ``squares`` (``(x0, y0, side)`` in pixels of the upright frame) and resize each to
    ``size``: uint8 ``[len(squares), size, size, 3]``. ``frames`` holds the decoded frame of
    each square, cycling (square ``i`` is cut from ``frames[i % len(frames)]``).

    Each distinct frame is converted to RGB once, at ``scale`` of its size (swscale); each
    square is then cut from that picture and resized to ``size`` by swscale too, so no torch
    thread competes with the model for the cores.
    """
    import av

    n = len(frames)
    by_frame: dict[int, list[int]] = {}  # id(frame) -> indices of its squares
    for i in range(len(squares)):
        by_frame.setdefault(id(frames[i % n]), []).append(i)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = w / width, h / height
    out = np.empty((len(squares), size, size, 3), np.uint8)
    for indices in by_frame.values():
        image = to_rgb(frames[indices[0] % n], w, h, interpolation)
        for i in indices:
            x0, y0, side = squares[i]
            left, top = int(round(x0 * sx)), int(round(y0 * sy))
            right = max(left + 1, min(w, int(round((x0 + side) * sx))))
            bottom = max(top + 1, min(h, int(round((y0 + side) * sy))))
            piece = np.ascontiguousarray(image[top:bottom, left:right])
            if piece.shape[:2] == (size, size):
                out[i] = piece
                continue
            out[i] = av.VideoFrame.from_ndarray(piece, format="rgb24").to_ndarray(
                width=size, height=size, format="rgb24", interpolation=interpolation)
    return out
