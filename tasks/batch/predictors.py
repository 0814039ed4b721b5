"""One loaded model per process: the deployment file a run names, loaded once and shared by
the preflight check and every shard task that runs in the same process (a Dask worker keeps
its own)."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any

from emotion_model.checkpoint import load_deployment
from emotion_model.predict import Predictor
from tasks.common.storage import is_local, read_bytes, resolve

MAX_PREDICTORS = 2
"""Models held at once; the oldest is dropped first (a run uses one)."""


class _PredictorCache:
    """Predictors keyed by ``(uri, device, etag/mtime:size)``, so a replaced file reloads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loads = 0  # deployment files loaded by this process (cache misses)
        self._items: dict[tuple[str, str, str], Predictor] = {}
        self._lock = threading.Lock()

    def get(
        self, model_uri: str, device: str, storage_options: Mapping[str, Any] | None
    ) -> Predictor:
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
                model, metadata = load_deployment(source)
                hit = Predictor(model, metadata, device=device)
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
) -> Predictor:
    """Load a deployment file once per process, cached by URI, device and the file's
    etag/mtime and size (a replaced file is loaded again)."""
    return _CACHE.get(model_uri, device, storage_options)


def predictor_cache_info() -> dict[str, int]:
    """This process's predictor cache: ``loads`` (misses so far) and ``cached`` (held now)."""
    return _CACHE.info()
