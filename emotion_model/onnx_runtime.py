"""Serving an ONNX file with ONNX Runtime on the CPU: ``OnnxPredictor``, the same interface as
the torch ``Predictor`` (``predict_video``, the batch flow and ``annotate`` take either), and
``open_predictor``, which picks one by the file's name.

::

    model.onnx (float32 from ``export --format onnx``, int8 from ``--int8``)
        -> read_onnx: bytes parsed, the graph's sha256 checked, the ``emotion_pipeline``
           metadata read and checked (labels, modality, frames, size, log-mel)
        -> onnxruntime.InferenceSession (CPUExecutionProvider), its inputs and output checked
           against that metadata
    uint8 clips [B, T, H, W, 3] -> normalize_array (numpy, the torch Predictor's values; only
        the frames the graph reads) -> frames float32 [B, T, 3, H, W] (+ audio [B, n_mels,
        frames], audio_present bool [B]) -> logits [B, C] -> softmax -> probabilities [B, C]

Every refusal is one typed line naming the file, raised when the file is loaded, so the batch
flow's preflight refuses it before any video is read: an empty, truncated or damaged file
(``TruncatedCheckpointError``), an ONNX model without our metadata (``CheckpointError``),
labels other than the six (``LabelMismatchError``), inputs or output that do not match the
metadata (``ArchitectureMismatchError``). CPU only: ``device`` ``auto`` or ``cpu``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from emotion_model.audio import AudioSpec
from emotion_model.checkpoint import recorded_modality
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    LabelMismatchError,
    TruncatedCheckpointError,
    one_line,
)
from emotion_model.export import ONNX_METADATA_KEY, graph_sha256
from emotion_model.files import Source, read_source_bytes, source_name
from emotion_model.labels import EMOTION_LABELS
from emotion_model.predict import (
    AudioBatch,
    BasePredictor,
    ClipBatch,
    DeviceName,
    Predictor,
    PresentBatch,
)
from emotion_model.preprocess import normalize_array

ONNX_SUFFIX = ".onnx"
PREFERRED_BATCH_SIZE = 2
"""Clips per call on a 2-core CPU: the X3D student's float and int8 files run as many clips
per second at batch 2 as at 4 or 8 (and batch 1 is ~8 % slower)."""


def is_onnx(source: Any) -> bool:
    """Whether ``source`` (a path, URI or named file object) names an ``.onnx`` file."""
    return source_name(source).lower().endswith(ONNX_SUFFIX)


def check_cpu_device(device: DeviceName) -> torch.device:
    """``auto`` or ``cpu`` -> the CPU; ``cuda[:N]`` is refused in one line (ONNX files run on
    the CPU only), anything else as ``resolve_device`` refuses it."""
    name = str(device).strip().lower()
    if name in ("auto", "cpu"):
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        raise ValueError(f"device {device!r}: an ONNX model runs on the CPU only (ONNX "
                         "Runtime's CPU provider); use device 'cpu' or 'auto', or serve the "
                         ".safetensors file on the GPU")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def _parse(name: str, data: bytes) -> Any:
    """``data`` as an ``onnx.ModelProto``; a truncated or damaged file in one line."""
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise TruncatedCheckpointError(name, "empty file (0 bytes)")
    try:
        proto = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise TruncatedCheckpointError(
            name, f"not a readable ONNX model (truncated or damaged): {one_line(exc, 200)}"
        ) from exc
    if not proto.ir_version or not len(proto.graph.node) or not proto.graph.output:
        raise TruncatedCheckpointError(
            name, "not a readable ONNX model (truncated or damaged): no graph in it")
    return proto


def _metadata(name: str, proto: Any, expected_labels: Sequence[str] | None) -> dict[str, Any]:
    """The ``emotion_pipeline`` metadata of ``proto``, checked: ours, its graph unchanged since
    it was written (when it records the graph's sha256: every file ``export`` writes), labels,
    modality and log-mel."""
    props = {p.key: p.value for p in proto.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise CheckpointError(
            name, f"an ONNX model without emotion-pipeline metadata (no {ONNX_METADATA_KEY!r} "
            "entry in its metadata_props): not written by `emotion-pipeline export`")
    try:
        metadata = json.loads(props[ONNX_METADATA_KEY])
        if not isinstance(metadata, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise CheckpointError(name, f"unreadable {ONNX_METADATA_KEY!r} metadata: "
                              f"{one_line(exc, 200)}") from exc
    record = metadata.get("onnx")
    recorded = record.get("graph_sha256") if isinstance(record, Mapping) else None
    if recorded:
        sha = graph_sha256(proto)
        if sha != recorded:
            raise TruncatedCheckpointError(
                name, f"graph sha256 {sha[:12]} differs from the recorded {str(recorded)[:12]} "
                "(damaged)")
    labels = metadata.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise LabelMismatchError(name, f"labels {labels!r} are not a list of names")
    if expected_labels is not None and tuple(labels) != tuple(expected_labels):
        raise LabelMismatchError(
            name, f"labels {labels} differ from the expected {list(expected_labels)}")
    modality, audio = recorded_modality(name, metadata)
    for key in ("num_frames", "img_size"):
        value = metadata.get(key)
        if value is not None and not (isinstance(value, int) and value > 0):
            raise ArchitectureMismatchError(name, f"{key} {value!r} is not a positive integer")
    metadata["modality"] = modality
    metadata["audio"] = audio.to_metadata() if audio else None
    return metadata


def expected_signature(metadata: Mapping[str, Any]) -> dict[str, tuple[str, list[int | None]]]:
    """What an ONNX file of a model with this metadata must take and give: name -> (ONNX Runtime
    type, shape with None for the batch axis), inputs first, then ``logits``."""
    modality = metadata.get("modality") or "video"
    t, s = int(metadata.get("num_frames", 48)), int(metadata.get("img_size", 112))
    want: dict[str, tuple[str, list[int | None]]] = {}
    if modality != "audio":
        want["frames"] = ("tensor(float)", [None, t, 3, s, s])
    if modality != "video":
        spec = AudioSpec.from_metadata(metadata.get("audio")) or AudioSpec()
        want["audio"] = ("tensor(float)", [None, *spec.shape])
        want["audio_present"] = ("tensor(bool)", [None])
    want["logits"] = ("tensor(float)", [None, len(metadata.get("labels") or EMOTION_LABELS)])
    return want


def _check_signature(name: str, session: Any, metadata: Mapping[str, Any]) -> None:
    """The session's inputs and output against `expected_signature` (names, types, ranks, the
    fixed sizes, a free batch axis): one line naming the first difference."""
    want = expected_signature(metadata)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    expected_inputs = [k for k in want if k != "logits"]
    if sorted(inputs) != sorted(expected_inputs):
        raise ArchitectureMismatchError(
            name, f"inputs {sorted(inputs)} differ from the {sorted(expected_inputs)} of a "
            f"{metadata.get('modality', 'video')} model")
    if "logits" not in outputs:
        raise ArchitectureMismatchError(name, f"outputs {sorted(outputs)} have no 'logits'")
    described = {"num_frames": metadata.get("num_frames", 48),
                 "img_size": metadata.get("img_size", 112)}
    for key, (kind, shape) in want.items():
        arg = inputs.get(key) or outputs[key]
        got = [d if isinstance(d, int) else None for d in arg.shape]
        if arg.type != kind:
            raise ArchitectureMismatchError(name, f"{key} is {arg.type}, expected {kind}")
        if got[:1] != [None] or len(got) != len(shape) or any(
                w is not None and g != w for g, w in zip(got, shape, strict=True)):
            shown = ["batch" if d is None else d for d in shape]
            raise ArchitectureMismatchError(
                name, f"{key} has shape {arg.shape}, the metadata ({described}, "
                f"{len(metadata.get('labels') or EMOTION_LABELS)} labels) says {shown}")


def _session(name: str, data: bytes, threads: int | None) -> Any:
    """An ONNX Runtime CPU session over ``data``; a graph it cannot load in one line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    # waiting threads sleep instead of spinning: the decode threads share the cores
    # (measured, 2 cores with another process busy: the int8 student 92 vs 45 clips/s)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no warnings on stderr for every load
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... exceptions
        raise CheckpointError(
            name, f"ONNX Runtime cannot load the model: {one_line(exc, 300)}") from exc


def read_onnx(
    source: Source, *, expected_labels: Sequence[str] | None = EMOTION_LABELS
) -> tuple[bytes, dict[str, Any]]:
    """An ONNX file's bytes and its checked metadata (`OnnxPredictor`'s checks but the
    session's), ``modality`` and ``audio`` always present (a file without them is a video
    model)."""
    name, data = read_source_bytes(source)
    proto = _parse(name, data)
    return data, _metadata(name, proto, expected_labels)


class OnnxPredictor(BasePredictor):
    """An ONNX file served by ONNX Runtime on the CPU, with the torch `Predictor`'s interface:
    the same metadata fields, ``probabilities`` of uint8 clips (and log-mel), the same
    normalization, so a float file's outputs are the torch model's within 1e-4.

    ``model_version`` is the file's: the source model's for float32, with ``-int8`` (static) or
    ``-int8-dynamic`` for an int8 file (``metadata["onnx"]`` says how it was made).
    ``threads``: ONNX Runtime's intra-op threads (default: as many as torch uses in this
    process, ``torch.get_num_threads()``: the cores, unless set lower).
    """

    def __init__(self, session: Any, metadata: Mapping[str, Any], *,
                 device: DeviceName = "auto", name: str = "<onnx>") -> None:
        self.device = check_cpu_device(device)
        super().__init__(metadata)
        self.session = session
        self.name = name
        self.preferred_batch_size = PREFERRED_BATCH_SIZE
        self._modality = str(self.metadata.get("modality") or "video")
        self._audio_spec = AudioSpec.from_metadata(self.metadata.get("audio"))
        self._inputs = {i.name for i in session.get_inputs()}
        self.frames_read = self._probe_frames_read()
        """The clip frames the graph reads (None: all): only these are normalized, the others
        fed as zeros. The X3D student reads 4 of 48; normalizing all 48 took longer than its
        int8 forward pass."""

    @classmethod
    def from_file(cls, source: Source, *, device: DeviceName = "auto",
                  expected_labels: Sequence[str] | None = EMOTION_LABELS,
                  threads: int | None = None) -> OnnxPredictor:
        """Load and check an ONNX file (path, URI, bytes or named file object): the device
        first (CPU only), then every check of the module's docstring."""
        check_cpu_device(device)
        name = source_name(source)
        data, metadata = read_onnx(source, expected_labels=expected_labels)
        session = _session(name, data, threads)
        _check_signature(name, session, metadata)
        return cls(session, metadata, device=device, name=name)

    @property
    def modality(self) -> str:
        """``video``, ``audio`` or ``audio-video``: what the model reads."""
        return self._modality

    @property
    def audio_spec(self) -> AudioSpec | None:
        """The log-mel the model reads (``audio`` in its metadata); None for a video model."""
        return self._audio_spec

    @property
    def precision(self) -> str:
        """``float32`` or ``int8`` (a file written before the record was kept: ``float32``)."""
        return str((self.metadata.get("onnx") or {}).get("precision") or "float32")

    def _probe_frames_read(self) -> np.ndarray | None:
        """The frames a sampling backbone reads (``architecture.sampled_frames``: evenly
        spaced, each the middle of its share of the clip), kept only when one probe shows the
        graph's output unchanged with every other frame zeroed; else None (all frames)."""
        arch = self.metadata.get("architecture") or {}
        want, t = arch.get("sampled_frames"), self.num_frames
        if self.modality == "audio" or not isinstance(want, int) or not 0 < want < t or t % want:
            return None
        step = t // want
        read = np.arange(step // 2, t, step)
        probe = np.random.default_rng(0).standard_normal(
            (1, t, 3, self.img_size, self.img_size)).astype(np.float32)
        thinned = np.zeros_like(probe)
        thinned[:, read] = probe[:, read]
        extra = {}
        if self.modality != "video":
            spec = self.audio_spec or AudioSpec()
            extra = {"audio": np.zeros((1, *spec.shape), np.float32),
                     "audio_present": np.zeros(1, bool)}
        same = np.array_equal(self.logits({"frames": probe, **extra}),
                              self.logits({"frames": thinned, **extra}))
        return read if same else None

    def feeds(
        self, clips: ClipBatch | None, audio: AudioBatch | None = None,
        audio_present: PresentBatch | None = None,
    ) -> dict[str, np.ndarray]:
        """`probabilities`' arguments as the session's inputs (``emotion_model.quantize``
        calibrates on these): frames normalized in numpy (`normalize_array`: the torch
        Predictor's values, no torch kernel), only `frames_read` of them (the rest zeros); an
        audio model's absent audio is zeros with ``audio_present`` False (the model then takes
        its no-audio embedding; the zeros are never used)."""
        feed: dict[str, np.ndarray] = {}
        if self.modality != "audio":
            if clips is None:
                raise ValueError(f"a {self.modality} model needs clips [B, T, H, W, 3]")
            frames = clips.numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
            read = self.frames_read
            if read is None:
                feed["frames"] = normalize_array(frames, mean=self.mean, std=self.std)
            else:  # zero pages the graph never reads: not even touched
                full = np.zeros((*frames.shape[:2], 3, *frames.shape[2:4]), np.float32)
                full[:, read] = normalize_array(frames[:, read], mean=self.mean, std=self.std)
                feed["frames"] = full
        if self.modality == "video":
            return feed
        a, present = self.audio_inputs(clips, audio, audio_present)
        sizes = {len(t) for t in (feed.get("frames"), a, present) if t is not None}
        if len(sizes) != 1:
            raise ValueError(f"frames, audio and audio_present disagree on the batch: {sizes}")
        batch = sizes.pop()
        if present is None:
            present = torch.full((batch,), a is not None, dtype=torch.bool)
        if a is None:
            if bool(present.any()):
                raise ValueError("audio_present says some clips have audio, but no audio given")
            spec = self.audio_spec or AudioSpec()
            a = torch.zeros(batch, *spec.shape, dtype=torch.float32)
        feed["audio"] = np.ascontiguousarray(a.numpy())
        feed["audio_present"] = present.numpy()
        return feed

    def logits(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """float32 logits ``[B, C]`` of one feed (`feeds`)."""
        (out,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self._inputs})
        return np.asarray(out, dtype=np.float32)

    def probabilities(
        self, clips: ClipBatch | None, audio: AudioBatch | None = None,
        audio_present: PresentBatch | None = None,
    ) -> np.ndarray:
        """See `BasePredictor.probabilities`."""
        logits = self.logits(self.feeds(clips, audio, audio_present))
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))  # softmax, in numpy too
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)


def open_predictor(source: Source, *, device: DeviceName = "auto") -> BasePredictor:
    """The predictor for a model file: `OnnxPredictor` (ONNX Runtime, CPU) for a name ending in
    ``.onnx``, else the torch `Predictor` of a deployment file (``.safetensors``, a state
    dict, ...). A file object or bytes is named by its ``name`` attribute."""
    if is_onnx(source):
        return OnnxPredictor.from_file(source, device=device)
    return Predictor.from_file(source, device=device)
