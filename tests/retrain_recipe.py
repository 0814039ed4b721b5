"""The retrain recipe the tests train the small model with (``tests/conftest.py::retrained``,
tests/flows/test_retrain.py); importable from every test module (``tests/`` is on ``sys.path``
through its conftest)."""

from __future__ import annotations

from typing import Any

RETRAIN_RECIPE: dict[str, Any] = {
    "preset": "small", "num_frames": 16, "img_size": 64, "batch_size": 8, "lr": 3e-3,
    "crop_scale": 1.0, "val_fraction": 0.34, "seed": 0, "device": "cpu",
}
"""The small model at 16 frames of 64 px: about 3 s per epoch on 2 cores. The random resized
crop is off: on 96 training clips it slows convergence (measured: 0.75 after 20 epochs with
crop_scale 0.8, 0.92 without)."""
