"""emotion_model: the SlowFast-R50 + SE emotion classifier, usable without Prefect or S3.

Public names are imported lazily, so ``import emotion_model.labels`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EMOTION_LABELS": "emotion_model.labels",
    "parse_ravdess": "emotion_model.labels",
    "parse_crema_d": "emotion_model.labels",
    "EmotionClassifier": "emotion_model.model",
    "build_model": "emotion_model.model",
    "ClipReader": "emotion_model.video",
    "read_clips": "emotion_model.video",
    "CropSpec": "emotion_model.face_clips",
    "FaceDetector": "emotion_model.faces",
    "FaceTracker": "emotion_model.face_tracks",
    "normalize": "emotion_model.preprocess",
    "save_deployment": "emotion_model.checkpoint",
    "load_deployment": "emotion_model.checkpoint",
    "save_training_checkpoint": "emotion_model.checkpoint",
    "load_training_checkpoint": "emotion_model.checkpoint",
    "Predictor": "emotion_model.predict",
    "BasePredictor": "emotion_model.predict",
    "OnnxPredictor": "emotion_model.onnx_runtime",
    "open_predictor": "emotion_model.onnx_runtime",
    "predict_video": "emotion_model.predict",
    "annotate_video": "emotion_model.annotate",
    "export_model": "emotion_model.export",
    "export_int8": "emotion_model.quantize",
    "read_state_dict": "emotion_model.weights",
    "encode_video": "emotion_model.video_writer",
    "make_sample_dataset": "emotion_model.sample_data",
    "render_face_clip": "emotion_model.sample_data",
    "render_face_clip_with_boxes": "emotion_model.sample_data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emotion_model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
