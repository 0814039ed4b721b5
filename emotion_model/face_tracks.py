"""Face tracks over one front-to-back decode: link sparse detections, smooth, interpolate, crop.

The face detector runs only at sampled times (a few per second); the clip frames in between
need a face box too. :class:`FaceTracker` links each detection frame's boxes to tracks by IoU
(in pixels, against each track's last box and its constant-velocity prediction), smooths every
track over its detections and answers :meth:`FaceTracker.box_at` for any time by linear
interpolation between the smoothed detections. :attr:`FaceTracker.final_until` says up to
when those answers are settled, so the caller can hold clip frames only that long.

All boxes are fractions of the frame width / height (x, y top-left); IoU, areas and crops are
computed in pixels, since frames are not square.

Smoothing (the choice): every detection's centre, size and score are replaced by a local
linear least-squares fit over the same track's detections within ``smoothing`` seconds of it,
evaluated at its time. Inside a track at a steady detection rate this is the centred moving
average of the neighbours (jitter variance / 3 at 5/s with the default 0.25 s); unlike a plain
average or exponential smoothing it has no lag on a steadily moving face, also with uneven
detection times. A detection's smoothed value changes only while detections within
``smoothing`` seconds after it can still arrive, which is what makes :attr:`final_until` exact.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

_EPS = 1e-9  # seconds: slack for float times (0.2 + 0.2 != 0.4 exactly)


class BoxLike(Protocol):
    """Any face box: x, y (top-left), w, h as fractions of the frame, and a score."""

    @property
    def x(self) -> float: ...

    @property
    def y(self) -> float: ...

    @property
    def w(self) -> float: ...

    @property
    def h(self) -> float: ...

    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class TrackBox:
    """A track's box: x, y (top-left), w, h as fractions of the frame, and a score in 0..1."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def cx(self) -> float:
        """Centre x, fraction of the frame width."""
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        """Centre y, fraction of the frame height."""
        return self.y + self.h / 2


@dataclass(frozen=True, slots=True)
class TrackSummary:
    """One track: when it was seen, how often, and its mean box and mean area in pixels."""

    id: int
    first_s: float
    last_s: float
    detections: int
    mean_box: TrackBox
    mean_area_px: float

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last detection (0 for a single detection)."""
        return self.last_s - self.first_s


def _row(box: BoxLike) -> np.ndarray:
    """[cx, cy, w, h, score] of a detection, checked."""
    vals = (float(box.x), float(box.y), float(box.w), float(box.h), float(box.score))
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"face box has a non-finite value: {box!r}")
    x, y, w, h, score = vals
    if w <= 0 or h <= 0:
        raise ValueError(f"face box needs w > 0 and h > 0, got w={w}, h={h}")
    return np.array([x + w / 2, y + h / 2, w, h, score], dtype=np.float64)


def _box(row: np.ndarray) -> TrackBox:
    cx, cy, w, h, score = (float(v) for v in row)
    w, h = max(w, 1e-6), max(h, 1e-6)
    return TrackBox(cx - w / 2, cy - h / 2, w, h, min(max(score, 0.0), 1.0))


def _iou_px(a: np.ndarray, b: np.ndarray, width: int, height: int) -> float:
    """IoU of two [cx, cy, w, h, ...] rows, measured in pixels."""
    ax0, ax1 = (a[0] - a[2] / 2) * width, (a[0] + a[2] / 2) * width
    ay0, ay1 = (a[1] - a[3] / 2) * height, (a[1] + a[3] / 2) * height
    bx0, bx1 = (b[0] - b[2] / 2) * width, (b[0] + b[2] / 2) * width
    by0, by1 = (b[1] - b[3] / 2) * height, (b[1] + b[3] / 2) * height
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    times: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)  # raw [cx, cy, w, h, score]
    areas_px: list[float] = field(default_factory=list)
    smooth: list[np.ndarray] = field(default_factory=list)  # valid for the first `clean`
    clean: int = 0
    ended: bool = False

    @property
    def last_t(self) -> float:
        return self.times[-1]

    def add(self, t: float, row: np.ndarray, area_px: float, smoothing: float) -> None:
        self.times.append(t)
        self.rows.append(row)
        self.areas_px.append(area_px)
        # smoothed values of detections within `smoothing` before t now see one more neighbour
        self.clean = min(self.clean, bisect_left(self.times, t - smoothing - _EPS))

    def predict(self, t: float, max_gap_s: float) -> np.ndarray:
        """The last raw box moved on at the velocity of the last two detections."""
        last = self.rows[-1]
        if len(self.rows) < 2:
            return last
        dt_prev = self.times[-1] - self.times[-2]
        velocity = (last[:2] - self.rows[-2][:2]) / dt_prev
        out = last.copy()
        out[:2] += velocity * min(t - self.times[-1], max_gap_s)
        return out

    def smoothed(self, smoothing: float) -> list[np.ndarray]:
        """Smoothed rows, recomputing only those a new detection may have changed."""
        n = len(self.times)
        if self.clean == n:
            return self.smooth
        del self.smooth[self.clean :]
        for k in range(self.clean, n):
            t_k = self.times[k]
            lo = bisect_left(self.times, t_k - smoothing - _EPS)
            hi = bisect_right(self.times, t_k + smoothing + _EPS)
            dt = np.asarray(self.times[lo:hi]) - t_k
            self.smooth.append(_local_linear(dt, np.stack(self.rows[lo:hi])))
        self.clean = n
        return self.smooth


def _local_linear(dt: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The least-squares line through (dt, values), per column, evaluated at dt = 0."""
    if len(dt) == 1:
        return values[0].copy()
    dm = dt - dt.mean()
    var = float(dm @ dm)
    mean = values.mean(axis=0)
    if var <= 0:
        return mean
    slope = dm @ (values - mean) / var
    return mean - slope * dt.mean()


class FaceTracker:
    """Links per-frame face detections into tracks and answers smoothed boxes at any time.

    Feed :meth:`update` at every detection time, in increasing order, also when no face was
    found (that moves :attr:`final_until` on and ends stale tracks); call :meth:`finish` at
    the end of the video.

    - ``iou_threshold``: the least IoU (in pixels, against a track's last box or its
      constant-velocity prediction, whichever is higher) that links a detection to a track.
    - ``max_gap_s``: a track not matched for longer than this ends for good; a later
      detection of the same face starts a new track.
    - ``smoothing``: half-width in seconds of the local linear fit over a track's detections
      (0: no smoothing). See the module docstring.
    - ``min_detections``: the fewest detections of a track :meth:`tracks` reports (see there).
    - ``hold_s``: how long a track's first / last smoothed box is held before / after it;
      best half the detection interval (0.5 / detect_fps; the default suits 5/s).
    """

    def __init__(
        self,
        *,
        iou_threshold: float = 0.3,
        max_gap_s: float = 1.0,
        smoothing: float = 0.25,
        min_detections: int = 2,
        hold_s: float = 0.1,
    ) -> None:
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if not (math.isfinite(max_gap_s) and max_gap_s > 0):
            raise ValueError(f"max_gap_s must be a finite number > 0, got {max_gap_s}")
        if not (math.isfinite(smoothing) and smoothing >= 0):
            raise ValueError(f"smoothing must be a finite number >= 0 seconds, got {smoothing}")
        if min_detections < 1:
            raise ValueError(f"min_detections must be >= 1, got {min_detections}")
        if not (math.isfinite(hold_s) and 0 <= hold_s <= max_gap_s):
            raise ValueError(f"hold_s must be in [0, max_gap_s={max_gap_s}], got {hold_s}")
        self.iou_threshold = iou_threshold
        self.max_gap_s = max_gap_s
        self.smoothing = smoothing
        self.min_detections = min_detections
        self.hold_s = hold_s
        self._tracks: list[_Track] = []
        self._last_t: float | None = None
        self._finished = False

    # -- feeding ----------------------------------------------------------------------------

    def update(self, t: float, boxes: Sequence[BoxLike], width: int, height: int) -> None:
        """Add the detections of the frame at ``t`` seconds (boxes in fractions of a
        ``width`` x ``height`` pixel frame); times must strictly increase."""
        if self._finished:
            raise RuntimeError("FaceTracker.update after finish()")
        if not math.isfinite(t):
            raise ValueError(f"t must be finite, got {t}")
        if self._last_t is not None and t <= self._last_t:
            raise ValueError(f"times must strictly increase: got t={t} after t={self._last_t}")
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be >= 1x1 pixels, got {width}x{height}")
        rows = [_row(b) for b in boxes]
        self._last_t = t
        for track in self._tracks:
            if not track.ended and t - track.last_t > self.max_gap_s + _EPS:
                track.ended = True
        live = [tr for tr in self._tracks if not tr.ended]

        pairs: list[tuple[float, int, int]] = []
        for i, track in enumerate(live):
            last, pred = track.rows[-1], track.predict(t, self.max_gap_s)
            for j, row in enumerate(rows):
                iou = max(_iou_px(last, row, width, height), _iou_px(pred, row, width, height))
                if iou >= self.iou_threshold:
                    pairs.append((iou, i, j))
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))  # highest IoU first, then stable
        used_tracks: set[int] = set()
        assigned: dict[int, _Track] = {}
        for _, i, j in pairs:
            if i not in used_tracks and j not in assigned:
                used_tracks.add(i)
                assigned[j] = live[i]
        for j, row in enumerate(rows):
            track = assigned.get(j)
            if track is None:
                track = _Track(id=len(self._tracks))
                self._tracks.append(track)
            track.add(t, row, float(row[2] * width * row[3] * height), self.smoothing)

    def finish(self, end_t: float) -> None:
        """The video ended at ``end_t`` seconds: end every track; all answers are final."""
        if not math.isfinite(end_t):
            raise ValueError(f"end_t must be finite, got {end_t}")
        if self._last_t is not None and end_t < self._last_t:
            raise ValueError(f"end_t={end_t} is before the last update at t={self._last_t}")
        for track in self._tracks:
            track.ended = True
        self._finished = True

    # -- queries ----------------------------------------------------------------------------

    def _track(self, track_id: int) -> _Track:
        if not 0 <= track_id < len(self._tracks):
            raise KeyError(f"no face track with id {track_id} (have {len(self._tracks)})")
        return self._tracks[track_id]

    def _can_grow(self, track: _Track) -> bool:
        """Whether a later update may still add a detection to ``track``."""
        if track.ended or self._finished or self._last_t is None:
            return False
        return track.last_t + self.max_gap_s + _EPS > self._last_t

    def live_ids(self, t: float) -> list[int]:
        """Ids of the tracks that can still be matched at ``t`` (unseen for <= max_gap_s)."""
        return [
            tr.id
            for tr in self._tracks
            if not tr.ended and tr.last_t <= t and t - tr.last_t <= self.max_gap_s + _EPS
        ]

    def predicted(self, t: float) -> list[TrackBox]:
        """Expected boxes at ``t`` of the tracks in :meth:`live_ids` (same order): the last
        detection moved on at constant velocity, unclipped to the frame."""
        return [_box(self._tracks[i].predict(t, self.max_gap_s)) for i in self.live_ids(t)]

    def box_at(self, track_id: int, t: float) -> TrackBox | None:
        """The track's smoothed box at ``t``: linear between its smoothed detections, held
        within ``hold_s`` before the first / after the last, None further out.

        Raises KeyError for an unknown id."""
        track = self._track(track_id)
        times = track.times
        if t < times[0] - self.hold_s - _EPS or t > times[-1] + self.hold_s + _EPS:
            return None
        smooth = track.smoothed(self.smoothing)
        if t <= times[0]:
            return _box(smooth[0])
        if t >= times[-1]:
            return _box(smooth[-1])
        k = bisect_right(times, t) - 1  # times[k] <= t < times[k + 1]
        a = (t - times[k]) / (times[k + 1] - times[k])
        return _box((1 - a) * smooth[k] + a * smooth[k + 1])

    def path(self, track_id: int) -> list[tuple[float, TrackBox]]:
        """The track's smoothed box at each of its detection times, in order."""
        track = self._tracks[track_id]
        return [(t, _box(row)) for t, row in zip(track.times, track.smoothed(self.smoothing),
                                                  strict=True)]

    def boxes_at(self, t: float) -> dict[int, TrackBox]:
        """``{track id: box_at(id, t)}`` for every track with a box at ``t``."""
        out: dict[int, TrackBox] = {}
        for track in self._tracks:
            box = self.box_at(track.id, t)
            if box is not None:
                out[track.id] = box
        return out

    @property
    def final_until(self) -> float:
        """Answers of :meth:`box_at` / :meth:`boxes_at` for any ``t < final_until`` will not
        change any more (-inf before the first update, +inf after :meth:`finish`).

        Bounded by the last update minus ``hold_s`` (a track started later reaches back that
        far) and, per track that may still grow, by its latest detection at least
        ``smoothing`` older than the last update (or its first detection minus ``hold_s``).
        So at 5/s with the default smoothing, the boxes between a track's last two detections
        become final when a later detection frame arrives."""
        if self._finished:
            return math.inf
        if self._last_t is None:
            return -math.inf
        bound = self._last_t - self.hold_s
        for track in self._tracks:
            if not self._can_grow(track):
                continue
            m = bisect_right(track.times, self._last_t - self.smoothing - _EPS) - 1
            bound = min(bound, track.times[m] if m >= 0 else track.times[0] - self.hold_s)
        return bound

    def _summary(self, track: _Track) -> TrackSummary:
        rows = np.stack(track.rows)
        mean = rows.mean(axis=0)
        return TrackSummary(
            id=track.id,
            first_s=track.times[0],
            last_s=track.times[-1],
            detections=len(track.times),
            mean_box=_box(mean),
            mean_area_px=float(np.mean(track.areas_px)),
        )

    def tracks(self) -> list[TrackSummary]:
        """Summaries of the tracks with at least ``min(min_detections, most detections of
        any track)`` detections, by id: a one-off box is dropped when some track was seen
        ``min_detections`` times, but a video whose faces were all seen fewer times (say one
        detection frame in all) still keeps its best-seen ones."""
        if not self._tracks:
            return []
        need = min(self.min_detections, max(len(tr.times) for tr in self._tracks))
        return [self._summary(tr) for tr in self._tracks if len(tr.times) >= need]

    def select(self, max_faces: int) -> list[int]:
        """Ids of at most ``max_faces`` of :meth:`tracks`, best first: ranked by detections x
        mean area in pixels (how long and how large the face was seen), ties by longer
        duration, then earlier first detection, then lower id."""
        if max_faces < 0:
            raise ValueError(f"max_faces must be >= 0, got {max_faces}")
        ranked = sorted(
            self.tracks(),
            key=lambda s: (-s.detections * s.mean_area_px, -s.duration_s, s.first_s, s.id),
        )
        return [s.id for s in ranked[:max_faces]]


def square_crop(box: BoxLike, width: int, height: int, margin: float) -> tuple[int, int, int]:
    """``(x0, y0, side)`` in pixels: a square around the box centre with side
    ``max(w_px, h_px) * (1 + 2 * margin)``, shrunk to the frame's shorter side if larger and
    shifted to lie fully inside the ``width`` x ``height`` frame; side >= 1."""
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be >= 1x1 pixels, got {width}x{height}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    x, y, w, h = float(box.x), float(box.y), float(box.w), float(box.h)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"face box has a non-finite value: {box!r}")
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    side_f = max(abs(w) * width, abs(h) * height) * (1 + 2 * margin)
    side = int(min(max(round(side_f), 1), min(width, height)))
    x0 = int(min(max(round(cx - side / 2), 0), width - side))
    y0 = int(min(max(round(cy - side / 2), 0), height - side))
    return x0, y0, side


def square_crop_box(box: BoxLike, width: int, height: int, margin: float) -> TrackBox:
    """:func:`square_crop` as fractions of the frame (keeps the box's score)."""
    x0, y0, side = square_crop(box, width, height, margin)
    return TrackBox(x0 / width, y0 / height, side / width, side / height, float(box.score))
