"""The teacher's outputs, computed once per cached clip and kept beside the clip cache
(``<cache>/teacher/<teacher version>/<clip key>``), so distillation's epochs never rerun the
teacher and a second run with the same teacher and clips reruns nothing."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emotion_model.model import EmotionClassifier
from tasks.common.storage import atomic_write_bytes, join, read_bytes, resolve, with_retries
from tasks.training.clip_cache import ClipCache, cache_key
from tasks.training.data import Example
from tasks.training.loop import ClipIndex, eval_frames, model_inputs


class TeacherOutputs:
    """float32 logits ``[N clips, num_classes]`` of one teacher (``version``) for each video of
    a clip cache, in the cache's clip order."""

    def __init__(self, cache: ClipCache, version: str) -> None:
        self.cache = cache
        self.version = version
        self._loaded: dict[str, np.ndarray] = {}

    def uri(self, example: Example) -> str:
        """Where ``example``'s teacher logits are (or will be)."""
        key = cache_key(example, self.cache.spec).removesuffix(".npy")
        return join(self.cache.uri, "teacher", self.version, f"{key}.logits.npy")

    def has(self, example: Example) -> bool:
        """True when ``example``'s logits are stored."""
        fs, path = resolve(self.uri(example), self.cache.storage_options)
        return bool(with_retries(lambda: fs.exists(path), what=f"stat {self.uri(example)}"))

    def store(self, example: Example, logits: np.ndarray) -> None:
        """Write ``example``'s logits (whole or not at all)."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(logits, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self.uri(example), buffer.getvalue(), self.cache.storage_options)
        self._loaded[example.uri] = logits

    def load(self, example: Example) -> np.ndarray:
        """``example``'s logits ``[N, C]``; N equals its cached clips."""
        if example.uri not in self._loaded:
            data = read_bytes(self.uri(example), self.cache.storage_options)
            self._loaded[example.uri] = np.load(io.BytesIO(data), allow_pickle=False)
        return self._loaded[example.uri]

    def index(self, examples: Sequence[Example]) -> ClipIndex:
        """A `ClipIndex` of ``examples``' cached clips holding the teacher's logits."""
        plain = ClipIndex.build(examples, self.cache)
        rows = [self.load(e) for e in examples]
        teacher = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        if len(teacher) != len(plain.items):
            raise ValueError(f"teacher outputs of {len(teacher)} clips for "
                             f"{len(plain.items)} cached clips: the cache changed under them")
        return ClipIndex(plain.examples, plain.items, teacher)


def clip_logits(model: EmotionClassifier, index: ClipIndex, cache: ClipCache, *,
                num_frames: int, batch_size: int, device: torch.device) -> np.ndarray:
    """float32 ``[len(index.items), C]``: ``model``'s logits of each clip, in the evaluation
    view (``num_frames`` spread evenly, no augmentation)."""
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(index.items), batch_size):
            positions = list(range(start, min(start + batch_size, len(index.items))))
            inputs = model_inputs(model, index, cache, positions, device,
                                  lambda clips: eval_frames(clips, num_frames))
            out.append(model(*inputs).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


@dataclass
class TeacherReport:
    """What labelling with the teacher did."""

    computed: int = 0
    already_cached: int = 0
    clips: int = 0
    seconds: float = 0.0


def label_with_teacher(
    teacher: EmotionClassifier, outputs: TeacherOutputs, examples: Sequence[Example], *,
    num_frames: int, batch_size: int, device: torch.device,
    on_video: Callable[[Example], None] | None = None,
) -> TeacherReport:
    """Run ``teacher`` once over each cached video of ``examples`` whose logits are not stored
    yet, and store them."""
    report = TeacherReport()
    start = time.perf_counter()
    teacher = teacher.to(device).eval()
    for example in examples:
        if outputs.has(example):
            report.already_cached += 1
        else:
            index = ClipIndex.build([example], outputs.cache)
            logits = clip_logits(teacher, index, outputs.cache, num_frames=num_frames,
                                 batch_size=batch_size, device=device)
            outputs.store(example, logits)
            report.computed += 1
            report.clips += len(logits)
        if on_video is not None:
            on_video(example)
    report.seconds = time.perf_counter() - start
    return report
