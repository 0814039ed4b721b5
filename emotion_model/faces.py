"""Face detection with MediaPipe's BlazeFace models (vendored in ``face_models/``) on the TFLite
runtime (``ai_edge_litert``): SSD anchors, box decoding and MediaPipe's weighted non-maximum
suppression in numpy, and `FaceDetector`, which runs one whole-image pass plus, on request,
overlapping tiles (small faces anywhere) and one pass around each known face (small faces that
were already found, cheaply).

Coordinates: every `FaceBox` is in fractions of the width and height of the image it was found
in (``[0, 1]``, top-left origin), whatever resolution the detector was given.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "DECODER_VERSION",
    "MODELS",
    "MODEL_DIR",
    "FaceBox",
    "FaceDetector",
    "ModelSpec",
    "anchors",
    "decode_boxes",
    "non_max_suppression",
    "resize",
]

DECODER_VERSION = 1
"""Bumped whenever preprocessing, decoding, tiling or merging changes what `detect` returns."""

MODEL_DIR = Path(__file__).resolve().parent / "face_models"


@dataclass(frozen=True)
class ModelSpec:
    """What decoding needs to know about one BlazeFace model file."""

    file: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int
    num_anchors: int


MODELS: dict[str, ModelSpec] = {
    # MediaPipe face_detection_short_range: 4 SSD layers, strides 8/16/16/16, two anchors per
    # layer and cell (aspect 1 plus the interpolated scale): 16x16x2 + 8x8x6 = 896.
    "short_range": ModelSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 896),
    # MediaPipe face_detection_full_range: one stride-4 layer, one anchor per cell: 48x48 = 2304.
    "full_range": ModelSpec("face_detection_full_range.tflite", 192, (4,), 1, 2304),
}


@dataclass(frozen=True)
class FaceBox:
    """A face: top-left corner, width, height (fractions of the image's width/height) and score."""

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    @property
    def area(self) -> float:
        """w * h (0 for a degenerate box)."""
        return max(0.0, self.w) * max(0.0, self.h)

    @property
    def centre(self) -> tuple[float, float]:
        """(cx, cy), fractions."""
        return self.x + self.w / 2, self.y + self.h / 2

    def iou(self, other: FaceBox) -> float:
        """Intersection over union with `other` (0 when disjoint or both empty)."""
        ix = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        iy = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        if ix <= 0 or iy <= 0:
            return 0.0
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) integer pixel bounds in an image of `width` x `height`, clamped."""
        eps = 1e-9  # 0.4 * 50 may come out as 20.000000000000004
        x0 = min(max(math.floor(self.x * width + eps), 0), width)
        y0 = min(max(math.floor(self.y * height + eps), 0), height)
        x1 = min(max(math.ceil((self.x + self.w) * width - eps), x0), width)
        y1 = min(max(math.ceil((self.y + self.h) * height - eps), y0), height)
        return x0, y0, x1, y1


def anchors(input_size: int, strides: Sequence[int], anchors_per_layer: int) -> np.ndarray:
    """SSD anchor centres `[N, 2]` (x, y as fractions of the input) the way MediaPipe's
    SsdAnchorsCalculator lays them out with fixed_anchor_size (all anchors 1 x 1).

    Consecutive layers with the same stride share one feature map; each contributes
    `anchors_per_layer` anchors per cell. Order: feature map, row, column, anchor.
    """
    if input_size < 1 or not strides or anchors_per_layer < 1 or min(strides) < 1:
        raise ValueError("need input_size >= 1, at least one stride >= 1, anchors_per_layer >= 1")
    out: list[np.ndarray] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        grid = math.ceil(input_size / strides[i])
        per_cell = (j - i) * anchors_per_layer
        centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        cell = np.stack([cx.ravel(), cy.ravel()], axis=1)
        out.append(np.repeat(cell, per_cell, axis=0))
        i = j
    return np.concatenate(out, axis=0)


def decode_boxes(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                 input_size: int, min_score: float) -> list[FaceBox]:
    """Boxes whose score reaches `min_score`, in fractions of the model input, best first.

    `raw_boxes`: regressors `[N, 16]` (or `[1, N, 16]`): centre x, centre y, width, height and
    six key points, in input pixels, centres relative to the anchor; `raw_scores`: logits `[N]`,
    `[N, 1]` or `[1, N, 1]`; score = sigmoid(clip(logit, -100, 100)).
    """
    boxes = np.asarray(raw_boxes, dtype=np.float32)
    boxes = boxes.reshape(-1, boxes.shape[-1]) if boxes.ndim else boxes.reshape(1, 1)
    logits = np.asarray(raw_scores, dtype=np.float64).reshape(-1)
    anchors = np.asarray(anchors, dtype=np.float32)
    if boxes.shape[1] < 4 or boxes.shape[0] != logits.shape[0] or \
            anchors.shape != (boxes.shape[0], 2):
        raise ValueError(f"shapes do not match: boxes {boxes.shape}, scores {logits.shape}, "
                         f"anchors {anchors.shape}")
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
    keep = np.nonzero(scores >= min_score)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    sel = boxes[keep, :4] / float(input_size)
    cx = sel[:, 0] + anchors[keep, 0]
    cy = sel[:, 1] + anchors[keep, 1]
    w, h = sel[:, 2], sel[:, 3]
    return [FaceBox(float(a - c / 2), float(b - d / 2), float(c), float(d), float(s))
            for a, b, c, d, s in zip(cx, cy, w, h, scores[keep], strict=True)
            if c > 0 and d > 0]


def non_max_suppression(boxes: Sequence[FaceBox], iou_threshold: float = 0.3) -> list[FaceBox]:
    """MediaPipe's weighted NMS: take the best remaining box, gather every remaining box whose
    IoU with it exceeds `iou_threshold`, replace the group by its score-weighted mean box (with
    the best box's score). Returns the merged boxes, best first."""
    remaining = sorted(boxes, key=lambda b: -b.score)
    out: list[FaceBox] = []
    while remaining:
        best = remaining[0]
        group = [b for b in remaining if b is best or best.iou(b) > iou_threshold]
        remaining = [b for b in remaining if not (b is best or best.iou(b) > iou_threshold)]
        total = sum(b.score for b in group)
        if len(group) == 1 or total <= 0:
            out.append(best)
            continue
        x0 = sum(b.x * b.score for b in group) / total
        y0 = sum(b.y * b.score for b in group) / total
        x1 = sum((b.x + b.w) * b.score for b in group) / total
        y1 = sum((b.y + b.h) * b.score for b in group) / total
        out.append(FaceBox(x0, y0, x1 - x0, y1 - y0, best.score))
    return out


@cache
def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@cache
def _anchors_of(model: str) -> np.ndarray:
    spec = MODELS[model]
    out = anchors(spec.input_size, spec.strides, spec.anchors_per_layer)
    assert out.shape[0] == spec.num_anchors
    return out


_Region = tuple[float, float, float]  # x0, y0, side: a square in pixels of the detection image


class FaceDetector:
    """BlazeFace on the TFLite runtime.

    Measured with the defaults (bench/faces.py, bench/README.md "Face detectors"): a 720p frame
    is given at 512x288; the whole-image pass (full range, 192 px input) finds faces from about
    50 px wide in 1280x720 (4 % of the width) up; `scan` adds 8 tiles of 192 px (model
    input 1:1, no resampling) overlapping by a quarter and finds faces from about 20 px wide in
    1280x720 up (9 passes, ~25 ms on one core); `near` re-finds a known small face with one
    extra pass per face smaller than `near_max` (larger ones the whole-image pass finds).

    One TFLite interpreter per detector (a few ms to create). `detect` holds a lock, so a
    detector shared by threads is safe but serialises them; give each thread its own detector
    for parallelism.

    Args:
        model: ``"full_range"`` (192 px input, faces far from and near to the camera) or
            ``"short_range"`` (128 px, faces close to the camera).
        min_score: detections scoring below this are dropped (MediaPipe: 0.5).
        num_threads: TFLite interpreter threads.
        iou_threshold: the weighted NMS merge threshold (MediaPipe: 0.3).
        max_side: `detection_size` caps the long side of frames at this (never upscales).
        tile: side in pixels (of the detection image) of the `scan` tiles.
        tile_overlap: fraction of `tile` that neighbouring tiles share.
        near_scale: side of the square searched around a `near` box, in box sizes.
        near_max: `near` boxes whose long side exceeds this fraction of the image's long side
            get no pass of their own: the whole-image pass finds faces from about 4 % up.
    """

    def __init__(self, model: Literal["full_range", "short_range"] = "full_range", *,
                 min_score: float = 0.5, num_threads: int = 1, iou_threshold: float = 0.3,
                 max_side: int = 512, tile: int = 192, tile_overlap: float = 0.25,
                 near_scale: float = 3.0, near_max: float = 0.1) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if not 0.0 < iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
        if num_threads < 1 or max_side < 16 or tile < 16:
            raise ValueError("need num_threads >= 1, max_side >= 16, tile >= 16")
        if not 0.0 <= tile_overlap < 0.9 or near_scale < 1.0 or not 0.0 <= near_max <= 1.0:
            raise ValueError("need 0 <= tile_overlap < 0.9, near_scale >= 1, 0 <= near_max <= 1")
        from ai_edge_litert.interpreter import Interpreter

        self.model = model
        self.spec = MODELS[model]
        self.min_score = float(min_score)
        self.iou_threshold = float(iou_threshold)
        self.max_side = int(max_side)
        self.tile = int(tile)
        self.tile_overlap = float(tile_overlap)
        self.near_scale = float(near_scale)
        self.near_max = float(near_max)
        path = str(MODEL_DIR / self.spec.file)
        self._sha = _sha256(path)
        self._anchors = _anchors_of(model)
        self._interpreter = Interpreter(model_path=path, num_threads=int(num_threads))
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()[0]
        size = self.spec.input_size
        if tuple(inp["shape"]) != (1, size, size, 3):
            raise ValueError(f"{path}: input shape {tuple(inp['shape'])}, expected "
                             f"(1, {size}, {size}, 3)")
        self._input = inp["index"]
        outs = sorted(self._interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        self._out_boxes, self._out_scores = outs[0]["index"], outs[1]["index"]
        self._lock = threading.Lock()
        self.passes = 0  # model invocations so far (for cost accounting)

    @property
    def name(self) -> str:
        """E.g. ``"blazeface-full-range"``."""
        return "blazeface-" + self.model.replace("_", "-")

    @property
    def version(self) -> str:
        """The model file's sha256 (first 12 hex) and `DECODER_VERSION`, e.g.
        ``"99bf9494d84f-d1"``: changes when either does."""
        return f"{self._sha[:12]}-d{DECODER_VERSION}"

    def detection_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) to scale a `width` x `height` frame to before `detect`: the long
        side capped at `max_side`, aspect kept, even sizes, never upscaled."""
        if width < 1 or height < 1:
            raise ValueError(f"need a positive frame size, got {width}x{height}")
        scale = min(1.0, self.max_side / max(width, height))
        if scale >= 1.0:
            return width, height
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)

    def whole_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) that the whole-image pass alone needs: the long side at the
        model's input size (never upscaled). A caller with nothing to scan and no small known
        face converts the frame to this (much cheaper than `detection_size`)."""
        if width < 1 or height < 1:
            raise ValueError(f"need a positive frame size, got {width}x{height}")
        size = self.spec.input_size
        scale = min(1.0, size / max(width, height))
        return max(2, round(width * scale)), max(2, round(height * scale))

    def needs_detail(self, width: int, height: int, near: Sequence[FaceBox]) -> bool:
        """Whether any of ``near`` (boxes in fractions of a ``width`` x ``height`` frame) is
        small enough for its own pass (see `near_regions`): then the frame must be given at
        `detection_size`, else `whole_size` is enough."""
        longest = max(width, height)
        return any(max(b.w * width, b.h * height) <= self.near_max * longest for b in near)

    def tiles(self, width: int, height: int) -> list[_Region]:
        """The `scan` tiles of a `width` x `height` image: squares of side `tile` (at most the
        short side), overlapping by `tile_overlap`, evenly spread to cover the image; none when
        the whole image fits one tile."""
        side = min(self.tile, width, height)
        if max(width, height) <= self.tile:
            return []

        def starts(length: int) -> list[float]:
            if length <= side:
                return [0.0]
            step = side * (1.0 - self.tile_overlap)
            n = math.ceil((length - side) / step) + 1
            return [i * (length - side) / (n - 1) for i in range(n)]

        return [(x, y, float(side)) for y in starts(height) for x in starts(width)]

    def near_regions(self, width: int, height: int, near: Sequence[FaceBox], *,
                     small_only: bool = True) -> list[_Region]:
        """One square per `near` box: `near_scale` times the box's long side (in pixels),
        centred on it and shifted to lie inside the image where it fits. With `small_only`,
        none for a box whose long side exceeds `near_max` of the image's (the whole-image pass
        finds it)."""
        out = []
        for box in near:
            if not isinstance(box, FaceBox):
                raise ValueError(f"near must hold FaceBox values, got {type(box).__name__}")
            if not all(map(math.isfinite, (box.x, box.y, box.w, box.h))) or box.w < 0 \
                    or box.h < 0:
                raise ValueError(f"near box must be finite with w, h >= 0, got {box}")
            long_side = max(box.w * width, box.h * height, 1.0)
            if small_only and long_side > self.near_max * max(width, height):
                continue
            side = self.near_scale * long_side
            cx, cy = box.centre
            x0 = _clamp_start(cx * width - side / 2, side, width)
            y0 = _clamp_start(cy * height - side / 2, side, height)
            out.append((x0, y0, side))
        return out

    def track(self, image: np.ndarray, known: Sequence[FaceBox]) -> list[FaceBox]:
        """Faces re-found near ``known`` boxes only (fractions of `image`): one pass on the
        square around each, whatever its size; no whole-image pass, no tiles. The cheap step
        between two full detections; best with the short-range model, since the face fills a
        third of each square."""
        _check_image(image)
        height, width = image.shape[:2]
        found: list[FaceBox] = []
        with self._lock:
            for region in self.near_regions(width, height, known, small_only=False):
                found += self._detect_region(image, region, True)
        return non_max_suppression(found, self.iou_threshold)

    def detect(self, image: np.ndarray, *, scan: bool = True,
               near: Sequence[FaceBox] = ()) -> list[FaceBox]:
        """Faces in `image` (uint8 RGB `[H, W, 3]`, ideally at `detection_size`), best first,
        in fractions of `image`'s width and height.

        Always one pass over the whole image (letterboxed to the model's square input); `scan`
        adds the overlapping `tiles` (small faces anywhere); `near` adds one pass around each
        given box (fractions; e.g. the faces of the previous frame). Detections from all passes
        are merged with weighted NMS.
        """
        _check_image(image)
        height, width = image.shape[:2]
        regions: list[tuple[_Region, bool]] = [((
            (width - max(width, height)) / 2, (height - max(width, height)) / 2,
            float(max(width, height))), False)]
        if scan:
            regions += [(r, True) for r in self.tiles(width, height)]
        regions += [(r, True) for r in self.near_regions(width, height, near)]
        found: list[FaceBox] = []
        with self._lock:
            for region, partial in regions:
                found += self._detect_region(image, region, partial)
        return non_max_suppression(found, self.iou_threshold)

    def _detect_region(self, image: np.ndarray, region: _Region, partial: bool) -> list[FaceBox]:
        """Run the model on a square region (may extend past the image: padded) and return its
        boxes in fractions of the whole image. For a `partial` region (a tile or a `near`
        square), boxes touching a region edge that lies inside the image are dropped: a face
        cut by that edge is found whole by a neighbour or by the whole-image pass."""
        height, width = image.shape[:2]
        x0, y0, side = region
        size = self.spec.input_size
        tensor = _region_tensor(image, x0, y0, side, size)
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        self.passes += 1
        raw_boxes = self._interpreter.get_tensor(self._out_boxes)
        raw_scores = self._interpreter.get_tensor(self._out_scores)
        out = []
        margin = 2.0 / size  # boxes within 2 input pixels of a cut edge
        for b in decode_boxes(raw_boxes, raw_scores, self._anchors, size, self.min_score):
            if partial and _touches_inner_edge(b, x0, y0, side, width, height, margin):
                continue
            out.append(FaceBox((x0 + b.x * side) / width, (y0 + b.y * side) / height,
                               b.w * side / width, b.h * side / height, b.score))
        return out


def _clamp_start(start: float, side: float, length: int) -> float:
    """Shift a span [start, start + side) inside [0, length) where it fits, else centre it."""
    if side >= length:
        return (length - side) / 2
    return min(max(start, 0.0), length - side)


def _touches_inner_edge(b: FaceBox, x0: float, y0: float, side: float, width: int,
                        height: int, margin: float) -> bool:
    """Whether box `b` (fractions of the region) reaches an edge of the region that is not an
    edge of the image."""
    eps = 1e-6
    return ((b.x < margin and x0 > eps)
            or (b.y < margin and y0 > eps)
            or (b.x + b.w > 1 - margin and x0 + side < width - eps)
            or (b.y + b.h > 1 - margin and y0 + side < height - eps))


def _region_tensor(image: np.ndarray, x0: float, y0: float, side: float,
                   size: int) -> np.ndarray:
    """The square `[x0, x0 + side) x [y0, y0 + side)` of `image` scaled to `size` x `size`,
    RGB in [-1, 1], `[1, size, size, 3]` float32; parts outside the image are 0 (mid grey)."""
    height, width = image.shape[:2]
    scale = size / side
    ix0, iy0 = max(0, int(round(x0))), max(0, int(round(y0)))
    ix1, iy1 = min(width, int(round(x0 + side))), min(height, int(round(y0 + side)))
    out = np.zeros((1, size, size, 3), np.float32)
    if ix1 <= ix0 or iy1 <= iy0:
        return out
    ow = max(1, min(size, int(round((ix1 - ix0) * scale))))
    oh = max(1, min(size, int(round((iy1 - iy0) * scale))))
    pixels = resize(image[iy0:iy1, ix0:ix1], oh, ow)
    px = min(size - ow, max(0, int(round((ix0 - x0) * scale))))
    py = min(size - oh, max(0, int(round((iy0 - y0) * scale))))
    np.multiply(pixels, 1.0 / 127.5, out=out[0, py:py + oh, px:px + ow])
    out[0, py:py + oh, px:px + ow] -= 1.0
    return out


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` `[h, w, C]` resized to `[height, width, C]` float32, in numpy: shrinking by a
    factor k >= 2 first averages k x k blocks (so small faces do not alias away), then bilinear
    sampling at pixel centres gives the exact size."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    img = image.astype(np.float32, copy=False)
    ky, kx = max(1, img.shape[0] // height), max(1, img.shape[1] // width)
    if ky > 1 or kx > 1:
        h, w = img.shape[0] // ky * ky, img.shape[1] // kx * kx
        rows = sum(img[i:h:ky, :w] for i in range(ky))
        img = sum(rows[:, i:w:kx] for i in range(kx)) * (1.0 / (ky * kx))
    if img.shape[:2] == (height, width):
        return img
    y0, y1, wy = _linear_taps(img.shape[0], height)
    x0, x1, wx = _linear_taps(img.shape[1], width)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for bilinear resampling of `n_in` samples to `n_out`."""
    pos = np.clip((np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def _check_image(image: object) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small: {image.shape[1]}x{image.shape[0]}")
