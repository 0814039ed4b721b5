"""One loaded model per process: the deployment file (torch) or ``.onnx`` file (ONNX Runtime,
CPU) a run names, loaded once and shared by the preflight check and every shard task that runs
in the same process (a Dask worker keeps its own)."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any

from emotion_model.onnx_runtime import open_predictor
from emotion_model.predict import BasePredictor
from tasks.common.storage import is_local, read_bytes, resolve

MAX_PREDICTORS = 2
"""Models held at once; the oldest is dropped first (a run uses one)."""


class _PredictorCache:
    """Predictors keyed by ``(uri, device, etag/mtime:size)``, so a replaced file reloads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loads = 0  # deployment files loaded by this process (cache misses)
        self._items: dict[tuple[str, str, str], BasePredictor] = {}
        self._lock = threading.Lock()

    def get(
        self, model_uri: str, device: str, storage_options: Mapping[str, Any] | None
    ) -> BasePredictor:
        fs, path = resolve(model_uri, storage_options)
        info = fs.info(path)
        fingerprint = f"{info.get('ETag') or info.get('mtime') or ''}:{info.get('size')}"
        key = (model_uri, device, fingerprint)
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                if is_local(model_uri):
                    source: Any = path
                else:
                    source = io.BytesIO(read_bytes(model_uri, storage_options))
                    source.name = model_uri  # so a load error names the URI, not "<bytes>"
                hit = open_predictor(source, device=device)  # by the name: .onnx or not
                self.loads += 1
                while len(self._items) >= self.size:
                    self._items.pop(next(iter(self._items)))
                self._items[key] = hit
            return hit

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"loads": self.loads, "cached": len(self._items)}


_CACHE = _PredictorCache(MAX_PREDICTORS)


def load_predictor(
    model_uri: str, device: str = "auto", storage_options: Mapping[str, Any] | None = None
) -> BasePredictor:
    """Load a model file once per process, cached by URI, device and the file's etag/mtime
    and size (a replaced file is loaded again): a deployment file with torch, an ``.onnx``
    file with ONNX Runtime on the CPU (``device`` cuda is refused for it, in one line)."""
    return _CACHE.get(model_uri, device, storage_options)


def predictor_cache_info() -> dict[str, int]:
    """This process's predictor cache: ``loads`` (misses so far) and ``cached`` (held now)."""
    return _CACHE.info()
