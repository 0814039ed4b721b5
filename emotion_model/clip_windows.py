"""Clip windows: which frame of a video each clip takes, as the frames arrive in order.

::

    frames in presentation order (ClipReader)
        -> ClipAssembler: windows [k * stride, k * stride + clip_seconds), opened as time
           advances; num_frames target times per window, each taking the frame on screen
        -> a filled window becomes a Clip: the frames resized whole (``crop="frame"``), or,
           in ``emotion_model.face_clips``, one clip per face track, cut around the face

Only the frames a target takes are converted to RGB (swscale), once each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np


@dataclass(frozen=True)
class Clip:
    """One clip: ``frames`` uint8 ``[T, H, W, 3]`` RGB in 0..255, seconds from the first frame.

    With face crops, ``face_id`` is the face track the clip follows (-1: the whole frame),
    ``face_box`` its mean box over the clip ``(x, y, w, h)`` as fractions of the frame, and
    ``face_score`` the detector's mean score.

    With audio (``ClipReader(audio=AudioSpec(...))``), ``audio`` is the log-mel of the clip's
    window, float32 ``[n_mels, frames]`` (``emotion_model.audio``; the clips of one window
    share it); where the window has no usable audio it is the log-mel of silence,
    ``audio_present`` is False and ``audio_reason`` says why. Without: None, False, None.
    """

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray
    face_id: int = -1
    face_box: tuple[float, float, float, float] | None = None
    face_score: float | None = None
    audio: np.ndarray | None = None
    audio_present: bool = False
    audio_reason: str | None = None


@dataclass
class Window:
    """One clip window while it fills: its target times and what each target took."""

    index: int
    start: float  # seconds from the first frame
    end: float
    targets: np.ndarray  # [T] target times, ascending
    frames: list[Any] = field(default_factory=list)
    filled: int = 0


def plan_window_starts(
    duration: float | None, clip_seconds: float, stride_seconds: float
) -> list[float]:
    """Window starts for a video of ``duration`` seconds (from its metadata).

    Windows of ``clip_seconds`` every ``stride_seconds`` that fit in the video, plus one window
    aligned to the end when the uncovered tail is at least half a stride. A video shorter
    than one clip gets ``[0.0]`` (then sampled over its real length). Unknown duration: ``[]``
    (windows are then opened as the frames arrive).
    """
    if duration is None:
        return []
    if duration < clip_seconds:
        return [0.0]
    count = int(math.floor((duration - clip_seconds) / stride_seconds + 1e-6)) + 1
    starts = [float(k * stride_seconds) for k in range(count)]
    tail = duration - (starts[-1] + clip_seconds)
    if tail >= stride_seconds / 2 - 1e-6:
        starts.append(duration - clip_seconds)
    return starts


def plan_targets(start: float, length: float, num_frames: int) -> np.ndarray:
    """``num_frames`` times spread uniformly over ``[start, start + length)`` (bin centres)."""
    return start + (np.arange(num_frames) + 0.5) * (length / num_frames)


def to_rgb(
    frame: av.VideoFrame, width: int, height: int, interpolation: str = "BILINEAR"
) -> np.ndarray:
    """Resize in swscale and convert to RGB: uint8 ``[height, width, 3]`` of the UPRIGHT picture.

    ``width`` and ``height`` are those of the upright picture: for a frame whose display matrix
    turns it a quarter, the stored picture is converted at ``height x width`` and then turned.
    """
    rotation = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    w, h = (height, width) if rotation % 2 else (width, height)
    image = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation=interpolation)
    if rotation:
        # Display-matrix rotation is counter-clockwise; turn the picture upright.
        image = np.ascontiguousarray(np.rot90(image, k=rotation))
    return image


def upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """``(width, height)`` of ``frame`` as displayed (after its rotation)."""
    rotation = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return (frame.height, frame.width) if rotation % 2 else (frame.width, frame.height)


class ClipAssembler:
    """Turns the frames of one video, in presentation order, into clips of whole frames.

    Each window ``[start, start + clip_seconds)`` has ``num_frames`` target times; a target
    takes the frame on screen at that time. The assembler owns the planned window starts,
    the windows still open (at most ``ceil(clip / stride) + 1``), the frame on screen and its
    image (resized once, and only when a target wants it), and the count of windows filled.
    With ``open_ended`` (unknown duration) a window opens every ``stride_seconds`` for as long
    as frames come; the planned starts are then empty.

    Subclasses change what a target keeps (`take`) and what a filled window becomes
    (`close`): ``emotion_model.face_clips.FaceClipAssembler`` keeps the frames themselves
    and cuts one clip per face.
    """

    def __init__(
        self,
        starts: list[float],
        *,
        open_ended: bool,
        clip_seconds: float,
        stride_seconds: float,
        num_frames: int,
        img_size: int,
        interpolation: str,
        max_clips: int | None,
    ) -> None:
        self.starts = starts
        self.open_ended = open_ended
        self.clip_seconds = clip_seconds
        self.stride_seconds = stride_seconds
        self.num_frames = num_frames
        self.img_size = img_size
        self.interpolation = interpolation
        self.max_clips = max_clips
        self.windows: list[Window] = []  # open, by index
        self.next_window = 0  # index of the next window to open
        self.emitted = 0  # windows filled
        self.frame: av.VideoFrame | None = None
        self._image: np.ndarray | None = None

    @property
    def done(self) -> bool:
        """Whether ``max_clips`` windows have been filled."""
        return self.max_clips is not None and self.emitted >= self.max_clips

    @property
    def settled_until(self) -> float:
        """The start of the first window not closed yet (open, or not opened): every window
        that starts before it has been closed. +inf when no window is left to open."""
        if self.windows:
            return min(w.start for w in self.windows)
        if self.next_window < len(self.starts):
            return self.starts[self.next_window]
        return self.next_window * self.stride_seconds if self.open_ended else math.inf

    def show(self, frame: av.VideoFrame, t: float) -> Iterator[Clip]:
        """Put ``frame`` on screen at ``t``: targets from now on take it."""
        self.frame, self._image = frame, None
        return iter(())

    def image(self) -> np.ndarray:
        """The frame on screen as uint8 RGB ``[size, size, 3]``, converted on first use."""
        if self._image is None:
            assert self.frame is not None, "no frame on screen yet"
            self._image = to_rgb(self.frame, self.img_size, self.img_size, self.interpolation)
        return self._image

    def take(self) -> Any:
        """What a target keeps of the frame on screen: here its resized image."""
        return self.image()

    def close(self, window: Window, end: float | None = None) -> Iterator[Clip]:
        """A filled window becomes its clip (``end`` overrides the window's end)."""
        yield Clip(window.index, window.start, window.end if end is None else end,
                   np.stack(window.frames))

    def advance(self, until: float) -> Iterator[Clip]:
        """The frame on screen stays there until ``until``: open the windows that start
        before it, give the frame to their targets before it, and yield the clips filled."""
        while self.next_window < len(self.starts) or self.open_ended:
            k = self.next_window
            start = self.starts[k] if k < len(self.starts) else k * self.stride_seconds
            if start >= until:
                break
            targets = plan_targets(start, self.clip_seconds, self.num_frames)
            self.windows.append(
                Window(k, start, start + self.clip_seconds, targets, [None] * self.num_frames)
            )
            self.next_window += 1
        yield from self._fill(list(self.windows), until)

    def finish(self, end: float, frame_dt: float, *, cut: bool) -> Iterator[Clip]:
        """The video ends at ``end`` (the last frame stays on screen for ``frame_dt``).

        Fills the targets before ``end``; then a window that ends within half a frame of
        ``end`` is complete, its last targets taking the last frame, unless the data was
        ``cut`` by an error. Other windows stay open, unfilled.
        """
        yield from self.advance(end)
        if not cut:
            last = [w for w in self.windows if w.end <= end + frame_dt / 2 + 1e-6]
            yield from self._fill(last, math.inf)

    def whole_video(self, kept: list[tuple[float, Any]], length: float) -> Iterator[Clip]:
        """One clip over ``[0, length)`` of a short video, its targets taking from ``kept``
        (``(time, frame)`` of the frames shown, in order) or, when nothing was kept, from what
        window 0 got (the metadata promised a longer video than the data holds)."""
        targets = plan_targets(0.0, length, self.num_frames)
        if kept:
            times = np.array([t for t, _ in kept])
            idx = np.clip(np.searchsorted(times, targets, side="right") - 1, 0, len(kept) - 1)
            frames = []
            for i in idx:
                self.frame, self._image = kept[i][1], None
                frames.append(self.take())
        else:
            got = [f for f in (self.windows[0].frames if self.windows else []) if f is not None]
            if not got:
                got = [self.take()]
            idx = np.round(np.linspace(0, len(got) - 1, self.num_frames)).astype(int)
            frames = [got[i] for i in idx]
        self.emitted += 1
        yield from self.close(Window(0, 0.0, length, targets, frames, self.num_frames))

    def flush(self, end: float) -> Iterator[Clip]:
        """The video ended at ``end``: yield the clips still held (none here)."""
        return iter(())

    def _fill(self, windows: list[Window], until: float) -> Iterator[Clip]:
        """Give the frame on screen to each window's targets before ``until``; a window
        whose targets are all filled is closed."""
        for win in windows:
            while win.filled < self.num_frames and win.targets[win.filled] < until:
                win.frames[win.filled] = self.take()
                win.filled += 1
            if win.filled == self.num_frames:
                self.windows.remove(win)
                self.emitted += 1
                yield from self.close(win)
