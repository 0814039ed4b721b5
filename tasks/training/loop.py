"""The training loop of the model card's recipe, resumable from a checkpoint every epoch.

AdamW + OneCycleLR, cross-entropy with label smoothing, augmentation (random resized crop,
horizontal flip, temporal jitter) on the device, AMP and gradient clipping on GPU, early
stopping on validation accuracy (counted only after the one-cycle warm-up). A model that reads
audio gets each clip's cached log-mel and ``audio_present`` as they are (no augmentation: the
temporal jitter moves frames within the clip window, whose sound stays whole). Each epoch's
shuffle and augmentation come from a generator seeded by ``(seed, epoch)`` and the checkpoint
restores the RNGs, so a resumed run ends with the same weights as one that was never
interrupted. One training at a time writes a checkpoint folder (its lease).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emotion_model.audio import AudioSpec
from emotion_model.checkpoint import (
    load_deployment,
    load_training_checkpoint,
    save_deployment,
    save_training_checkpoint,
)
from emotion_model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
)
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import PRESETS, EmotionClassifier, build_model
from emotion_model.predict import resolve_device
from emotion_model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from emotion_model.weights import read_state_dict
from tasks.common.storage import join, read_bytes, resolve, with_retries
from tasks.errors import NoTrainingDataError
from tasks.training.clip_cache import ClipCache
from tasks.training.data import Example
from tasks.training.lease import CheckpointLease
from tasks.training.settings import RetrainSettings

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
"""The full training checkpoint in ``settings.checkpoint_uri``, rewritten every epoch."""
BEST_NAME = "best.safetensors"
"""The best epoch's weights so far (a deployment file: weights and metadata, no optimizer)."""
CROP_RATIO = (0.9, 1 / 0.9)
"""Random resized crop: the crop's aspect ratio, log-uniform."""
TEMPORAL_SPAN = 0.8
"""Temporal jitter: the sampled span covers at least this share of the clip (expressions
build up over a clip, so a short span at its start would show a neutral face)."""
LABEL_INDEX = {label: i for i, label in enumerate(EMOTION_LABELS)}
UNLABELLED = -1
"""The label index of a clip without a label (distillation's unlabelled videos)."""
WARMUP_PCT = 0.3
"""OneCycleLR's warm-up: the learning rate rises to its peak over this share of the steps."""


def warmup_epochs(epochs: int) -> int:
    """The epochs of the warm-up, ``ceil(0.3 x epochs)``: early stopping does not count them
    (a model may not improve before its learning rate is up), so a run stops at the earliest
    after ``warmup_epochs(epochs) + patience`` epochs."""
    return math.ceil(WARMUP_PCT * epochs)


# --- data in batches ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipIndex:
    """Every cached clip of some examples: ``(example position, clip position)`` pairs, and
    (distillation) the teacher's logits of each item, ``[len(items), num_classes]``."""

    examples: Sequence[Example]
    items: list[tuple[int, int]]
    teacher: np.ndarray | None = None

    @classmethod
    def build(cls, examples: Sequence[Example], cache: ClipCache) -> ClipIndex:
        """Index all clips of ``examples`` (which must be cached)."""
        items = [(i, c) for i, e in enumerate(examples) for c in range(cache.count(e))]
        return cls(examples=examples, items=items)

    def frames(self, cache: ClipCache, positions: Sequence[int]) -> Tensor:
        """uint8 ``[B, F, H, W, 3]`` clips of the items at ``positions``."""
        clips = [np.asarray(cache.load(self.examples[e])[c])
                 for e, c in (self.items[p] for p in positions)]
        return torch.from_numpy(np.stack(clips))

    def labels(self, positions: Sequence[int]) -> Tensor:
        """int64 ``[B]`` label indices of the items at ``positions``; ``-1`` (`UNLABELLED`)
        for an unlabelled example (distillation)."""
        return torch.tensor([LABEL_INDEX.get(self.examples[self.items[p][0]].label, UNLABELLED)
                             for p in positions], dtype=torch.int64)

    def teacher_logits(self, positions: Sequence[int]) -> Tensor:
        """float32 ``[B, num_classes]``: the teacher's logits of the items at ``positions``."""
        if self.teacher is None:
            raise ValueError("this clip index holds no teacher outputs")
        return torch.from_numpy(np.ascontiguousarray(self.teacher[list(positions)]))

    def audio(self, cache: ClipCache, positions: Sequence[int]) -> tuple[Tensor, Tensor]:
        """float32 log-mel ``[B, n_mels, frames]`` and bool ``audio_present`` ``[B]`` of the
        items at ``positions`` (the cache must hold audio)."""
        rows = np.stack([np.asarray(cache.load_audio(self.examples[e])[c])
                         for e, c in (self.items[p] for p in positions)])
        return torch.from_numpy(np.ascontiguousarray(rows["log_mel"])), \
            torch.from_numpy(np.ascontiguousarray(rows["present"]))


def model_inputs(
    model: EmotionClassifier, index: ClipIndex, cache: ClipCache, positions: Sequence[int],
    device: torch.device, view: Callable[[Tensor], Tensor],
) -> tuple[Tensor | None, ...]:
    """The arguments of ``model`` for the items at ``positions``: the frames (uint8 on
    ``device``, through ``view``: the training or the evaluation view), none for an audio
    model; then, for a model that reads audio, the log-mel and ``audio_present``."""
    frames = None
    if model.modality != "audio":
        frames = view(index.frames(cache, positions).to(device, non_blocking=True))
    if model.modality == "video":
        return (frames,)
    log_mel, present = index.audio(cache, positions)
    return frames, log_mel.to(device, non_blocking=True), present.to(device)


def _to_float(clips: Tensor) -> Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, T, 3, H, W]`` normalized."""
    x = clips.permute(0, 1, 4, 2, 3).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def eval_frames(clips: Tensor, num_frames: int) -> Tensor:
    """The evaluation view of cached clips: ``num_frames`` frames spread evenly, normalized."""
    cached = clips.shape[1]
    index = torch.linspace(0, cached - 1, num_frames).round().long().to(clips.device)
    return _to_float(clips.index_select(1, index))


def augment(
    clips: Tensor, num_frames: int, generator: torch.Generator, *, crop_scale: float = 0.8
) -> Tensor:
    """Training view of cached uint8 clips ``[B, F, H, W, 3]`` -> float ``[B, T, 3, H, W]``.

    Temporal jitter (a random span of 80-100% of the cached frames, ``num_frames`` spread
    over it), random resized crop (area ``crop_scale``-1, aspect 0.9-1.1; 1 turns it off) back
    to the input size, and a horizontal flip with probability 1/2; the same for every frame of
    a clip.
    """
    b, cached, h, w, _ = clips.shape
    out = []
    draws = torch.rand(b, 7, generator=generator).tolist()
    for i in range(b):
        u_len, u_start, u_scale, u_ratio, u_x, u_y, u_flip = draws[i]
        span = max(num_frames, cached * (TEMPORAL_SPAN + u_len * (1 - TEMPORAL_SPAN)))
        start = u_start * (cached - span)
        index = torch.linspace(start, start + span - 1, num_frames).round().long()
        index = index.clamp_(0, cached - 1).to(clips.device)
        x = _to_float(clips[i : i + 1].index_select(1, index))[0]  # [T, 3, H, W]
        if crop_scale < 1.0:
            scale = crop_scale + u_scale * (1.0 - crop_scale)
            log_r = math.log(CROP_RATIO[0]) + u_ratio * (math.log(CROP_RATIO[1]) -
                                                        math.log(CROP_RATIO[0]))
            ratio = math.exp(log_r)
            cw = min(w, max(8, round(math.sqrt(scale * h * w * ratio))))
            ch = min(h, max(8, round(math.sqrt(scale * h * w / ratio))))
            top, left = round(u_y * (h - ch)), round(u_x * (w - cw))
            x = x[:, :, top : top + ch, left : left + cw]
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if u_flip < 0.5:
            x = x.flip(-1)
        out.append(x)
    return torch.stack(out)


# --- the model ----------------------------------------------------------------------------------
def initial_model(settings: RetrainSettings) -> EmotionClassifier:
    """The model training starts from: ``init`` weights (`from_init`), Kinetics weights
    (the SlowFast backbone of a video or audio-video model) or random, of the run's
    ``modality``."""
    torch.manual_seed(settings.seed)
    audio = settings.audio_spec()
    if settings.init:
        model, meta = load_deployment(read_model_file(settings.init, settings.storage_options))
        log.info("fine-tuning %s (version %s, %s)", settings.init, meta["model_version"],
                 meta["modality"])
        return from_init(model, settings.init, settings.modality, audio,
                         preset=settings.preset).train()
    if settings.pretrained:
        weights = read_model_file(settings.pretrained, settings.storage_options)
        return build_model(settings.preset, modality=settings.modality, audio_spec=audio,
                           pretrained=weights)
    return build_model(settings.preset, modality=settings.modality, audio_spec=audio)


def from_init(
    init: EmotionClassifier, uri: str, modality: str, audio: AudioSpec | None, *,
    preset: str = "r50",
) -> EmotionClassifier:
    """The model a run of ``modality`` (reading ``audio``) starts from when it fine-tunes
    ``init`` (the deployment file at ``uri``).

    A model of the run's modality is fine-tuned as it is. An audio-video run may also start
    from a video model (its SlowFast backbone and width; the audio encoder new) or an audio
    model (its audio encoder and no-audio embedding; the backbone new, of ``preset``); the
    head is then new, since it reads both. Anything else, or a log-mel other than the run's,
    is refused in one line (`ArchitectureMismatchError` naming ``uri``).
    """
    if init.modality != modality and (modality != "audio-video" or
                                      init.modality == "audio-video"):
        raise ArchitectureMismatchError(
            uri, f"init is {_a(init.modality)} model; {_a(modality)} run fine-tunes "
            f"{_a(modality)} model (an audio-video run may also start from a video or an audio "
            "model)")
    if init.audio_spec is not None and init.audio_spec != audio:
        raise ArchitectureMismatchError(
            uri, f"init reads the log-mel {init.audio_spec.to_metadata()}, this run "
            f"{audio.to_metadata() if audio else None} (seconds follow clip_seconds)")
    if init.modality == modality:
        return init
    if init.modality == "video":
        arch = {k: v for k, v in init.config.items() if k != "modality_dropout"}
        kept: tuple[str, ...] = ("backbone.",)
    else:
        arch, kept = dict(PRESETS[preset]), ("audio_encoder.", "no_audio")
    fused = EmotionClassifier(**arch, modality="audio-video", audio_spec=audio)
    fused.load_state_dict({k: v for k, v in init.state_dict().items() if k.startswith(kept)},
                          strict=False)
    log.info("audio-video model from %s: its %s carried over, the head new", uri,
             "SlowFast backbone" if init.modality == "video" else "audio encoder")
    return fused


def _a(modality: str) -> str:
    """``a video``, ``an audio``, ``an audio-video``."""
    return ("an " if modality.startswith("a") else "a ") + modality


def read_model_file(uri: str, storage_options: dict[str, Any] | None) -> io.BytesIO:
    """The bytes at `uri` (a local path or an ``s3://`` URI), read with the run's
    `storage_options` and retries, as a file object whose ``name`` is `uri` so that the
    loaders' errors name it. A missing file is a `CheckpointNotFoundError` naming `uri`."""
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(uri, "no such model file") from exc
    except (IsADirectoryError, PermissionError) as exc:
        raise CheckpointError(uri, f"cannot read: {type(exc).__name__}: {exc}") from exc
    buffer = io.BytesIO(data)
    buffer.name = uri
    return buffer


def default_batch_size(device: torch.device) -> int:
    """Clips per training step when the settings do not say: CPU 8, GPU 16."""
    return 16 if device.type == "cuda" else 8


# --- what is learned ------------------------------------------------------------------------------
class TrainingRecipe(Protocol):
    """The settings ``train`` reads (`RetrainSettings`, `DistillSettings`)."""

    device: str
    batch_size: int | None
    seed: int
    epochs: int
    patience: int
    lr: float
    weight_decay: float
    crop_scale: float
    grad_clip: float | None
    resume: bool
    storage_options: dict[str, Any] | None

    @property
    def checkpoint_uri(self) -> str: ...

    def run_key(self) -> str: ...


class Objective(Protocol):
    """What training minimises and what validation maximises (early stopping)."""

    score_name: str
    """What `score` measures (``val_accuracy``, ``agreement``), for the logs."""

    def loss(self, logits: Tensor, index: ClipIndex, positions: Sequence[int]) -> Tensor:
        """The mean loss of a batch: ``logits`` of the items at ``positions`` of ``index``."""
        ...

    def hits(self, logits: Tensor, index: ClipIndex, positions: Sequence[int]) -> int:
        """How many of the batch's items are right (the training accuracy's numerator)."""
        ...

    def score(self, probs: np.ndarray, index: ClipIndex) -> float:
        """Validation: higher is better. ``probs`` ``[len(index.examples), C]`` are the mean
        of each example's clip probabilities."""
        ...


@dataclass(frozen=True)
class Supervised:
    """The model card's objective: cross-entropy with label smoothing on the labels; validation
    accuracy per video."""

    label_smoothing: float = 0.05
    score_name: str = "val_accuracy"

    def loss(self, logits: Tensor, index: ClipIndex, positions: Sequence[int]) -> Tensor:
        labels = index.labels(positions).to(logits.device)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def hits(self, logits: Tensor, index: ClipIndex, positions: Sequence[int]) -> int:
        return int((logits.argmax(1).cpu() == index.labels(positions)).sum())

    def score(self, probs: np.ndarray, index: ClipIndex) -> float:
        return _accuracy(probs, index.examples)


# --- training -----------------------------------------------------------------------------------
@dataclass
class EpochStats:
    """One epoch's numbers, as in the training curves."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    train_s: float
    val_s: float


@dataclass
class TrainResult:
    """What training produced: the best epoch's model and the history."""

    model: EmotionClassifier
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None
    checkpoint_uri: str
    device: str
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Loop:
    model: EmotionClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None


def _make_loop(settings: TrainingRecipe, model: EmotionClassifier, device: torch.device,
               steps_per_epoch: int) -> _Loop:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
        pct_start=WARMUP_PCT,
    )
    autocast_dtype = None
    scaler = None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            autocast_dtype = torch.bfloat16
        else:
            autocast_dtype = torch.float16
            scaler = torch.amp.GradScaler("cuda")
    return _Loop(model, optimizer, scheduler, scaler, autocast_dtype)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _exists(uri: str, storage_options: Any) -> bool:
    fs, path = resolve(uri, storage_options)
    return bool(with_retries(lambda: fs.exists(path), what=f"stat {uri}"))


def evaluate_clips(
    model: EmotionClassifier, index: ClipIndex, cache: ClipCache, *, num_frames: int,
    batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None = None,
    objective: Objective | None = None,
) -> tuple[np.ndarray, float]:
    """Per-example probabilities (mean over its clips) ``[N, 6]`` and the mean clip loss (the
    ``objective``'s; default: cross-entropy on the labels)."""
    model.eval()
    sums = np.zeros((len(index.examples), len(EMOTION_LABELS)), np.float64)
    counts = np.zeros(len(index.examples), np.int64)
    loss_sum = 0.0
    with torch.inference_mode():
        for start in range(0, len(index.items), batch_size):
            positions = list(range(start, min(start + batch_size, len(index.items))))
            inputs = model_inputs(model, index, cache, positions, device,
                                  lambda clips: eval_frames(clips, num_frames))
            with _autocast(device, autocast_dtype):
                logits = model(*inputs).float()
            if objective is None:
                labels = index.labels(positions).to(device)
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            else:
                loss_sum += float(objective.loss(logits, index, positions)) * len(positions)
            probs = torch.softmax(logits, dim=-1).cpu().numpy()
            for p, row in zip(positions, probs, strict=True):
                e = index.items[p][0]
                sums[e] += row
                counts[e] += 1
    probs = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return probs, loss_sum / max(1, len(index.items))


def _accuracy(probs: np.ndarray, examples: Sequence[Example]) -> float:
    truth = np.array([LABEL_INDEX[e.label] for e in examples])
    return float((probs.argmax(1) == truth).mean()) if len(truth) else 0.0


def train(
    settings: TrainingRecipe,
    train_examples: Sequence[Example] | ClipIndex,
    val_examples: Sequence[Example] | ClipIndex,
    cache: ClipCache,
    *,
    on_epoch: Callable[[EpochStats, int], None] | None = None,
    model: EmotionClassifier | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train on ``train_examples``, early-stop on ``val_examples``; both must be cached (or
    given as `ClipIndex`es over the cache, e.g. holding the teacher's outputs).

    ``model``: the model to train (default `initial_model(settings)`, which needs
    `RetrainSettings`); ``objective``: the loss and the validation score (default
    `Supervised` with the settings' label smoothing: the model card's recipe).

    Writes ``last.pt`` (everything needed to resume) every epoch and ``best.pt`` when the
    validation accuracy improves, under ``settings.checkpoint_uri``. With ``settings.resume``
    an existing ``last.pt`` of the same run key is continued. ``on_epoch(stats, epochs)`` is
    called after each epoch. Early stopping counts epochs without a better validation accuracy
    only after the warm-up (``warmup_epochs``).

    The checkpoint folder is leased (``CheckpointLease``) for the whole run: a second training
    of the same run key refuses with ``CheckpointInUseError`` naming the holder, and this one
    stops with it should its lease be taken over.
    """
    n_train = len(train_examples.examples if isinstance(train_examples, ClipIndex)
                  else train_examples)
    n_val = len(val_examples.examples if isinstance(val_examples, ClipIndex) else val_examples)
    if not n_train or not n_val:
        raise NoTrainingDataError(f"training needs examples on both sides of the split; got "
                         f"{n_train} train and {n_val} validation")
    if objective is None:
        objective = Supervised(getattr(settings, "label_smoothing", 0.0))
    with CheckpointLease(settings.checkpoint_uri, run_key=settings.run_key(),
                         storage_options=settings.storage_options) as lease:
        # the lease first: nothing is read before it is held
        train_index = train_examples if isinstance(train_examples, ClipIndex) \
            else ClipIndex.build(train_examples, cache)
        val_index = val_examples if isinstance(val_examples, ClipIndex) \
            else ClipIndex.build(val_examples, cache)
        if model is None:
            model = initial_model(settings)  # type: ignore[arg-type]
        return _train(settings, train_index, val_index, cache, lease, on_epoch, model,
                      objective)


def _train(
    settings: TrainingRecipe,
    train_index: ClipIndex,
    val_index: ClipIndex,
    cache: ClipCache,
    lease: CheckpointLease,
    on_epoch: Callable[[EpochStats, int], None] | None,
    model: EmotionClassifier,
    objective: Objective,
) -> TrainResult:
    """``train``'s work, done while ``lease`` is held."""
    device = resolve_device(settings.device)
    batch_size = settings.batch_size or default_batch_size(device)
    num_frames, img_size = cache.spec.num_frames, cache.spec.img_size
    steps = math.ceil(len(train_index.items) / batch_size)
    model = model.to(device)
    loop = _make_loop(settings, model, device, steps)
    ckpt_dir = settings.checkpoint_uri
    last_uri, best_uri = join(ckpt_dir, CHECKPOINT_NAME), join(ckpt_dir, BEST_NAME)
    so = settings.storage_options

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, bad_epochs, start_epoch = -1.0, 0, 0, 1
    resumed_from: int | None = None
    finished = False
    if settings.resume and _exists(last_uri, so):
        state = load_training_checkpoint(
            read_bytes(last_uri, so), model=model, optimizer=loop.optimizer,
            scheduler=loop.scheduler, scaler=loop.scaler,
        )
        history = list(state.extra.get("history", []))
        best_acc = float(state.best_metric if state.best_metric is not None else -1.0)
        best_epoch = int(state.extra.get("best_epoch", 0))
        bad_epochs = int(state.extra.get("bad_epochs", 0))
        finished = bool(state.extra.get("finished", False))
        start_epoch = state.epoch + 1
        resumed_from = state.epoch
        log.info("resuming %s after epoch %d (best %.4f at epoch %d)", last_uri, state.epoch,
                 best_acc, best_epoch)
    elif settings.resume:
        log.info("resume: no checkpoint at %s; starting from epoch 1", last_uri)

    warmup = warmup_epochs(settings.epochs)
    epoch = start_epoch - 1
    for epoch in range(start_epoch, settings.epochs + 1):
        if finished:
            break
        torch.manual_seed(settings.seed * 1_000_003 + epoch)  # dropout of this epoch
        generator = torch.Generator().manual_seed(settings.seed * 1_000_033 + epoch)
        order = torch.randperm(len(train_index.items), generator=generator).tolist()
        view = partial(augment, num_frames=num_frames, generator=generator,
                       crop_scale=settings.crop_scale)
        model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), batch_size):
            lease.check()  # the heartbeat found the folder taken over: stop now
            positions = order[start : start + batch_size]
            inputs = model_inputs(model, train_index, cache, positions, device, view)
            with _autocast(device, loop.autocast_dtype):
                logits = model(*inputs)
                loss = objective.loss(logits.float(), train_index, positions)
            loop.optimizer.zero_grad(set_to_none=True)
            if loop.scaler is not None:
                loop.scaler.scale(loss).backward()
                loop.scaler.unscale_(loop.optimizer)
            else:
                loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            if loop.scaler is not None:
                loop.scaler.step(loop.optimizer)
                loop.scaler.update()
            else:
                loop.optimizer.step()
            loop.scheduler.step()
            loss_sum += float(loss.detach()) * len(positions)
            correct += objective.hits(logits.detach(), train_index, positions)
            seen += len(positions)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        probs, val_loss = evaluate_clips(
            model, val_index, cache, num_frames=num_frames, batch_size=batch_size,
            device=device, autocast_dtype=loop.autocast_dtype,
            objective=None if isinstance(objective, Supervised) else objective,  # plain CE
        )
        val_acc = objective.score(probs, val_index)
        stats = EpochStats(
            epoch=epoch, train_loss=loss_sum / max(1, seen), train_accuracy=correct / max(1, seen),
            val_loss=val_loss, val_accuracy=val_acc, lr=loop.scheduler.get_last_lr()[0],
            train_s=train_s, val_s=time.perf_counter() - t1,
        )
        history.append(stats.__dict__.copy())
        lease.renew()  # before writing: a training whose lease was taken over writes nothing
        if val_acc > best_acc + 1e-9:
            best_acc, best_epoch, bad_epochs = val_acc, epoch, 0
            save_deployment(model, best_uri, num_frames=num_frames,
                            img_size=img_size, epoch=epoch,
                            crop=cache.spec.crop.to_metadata())
        elif epoch > warmup:
            bad_epochs += 1
        finished = bad_epochs >= settings.patience or epoch == settings.epochs
        save_training_checkpoint(
            last_uri, model=model, optimizer=loop.optimizer, scheduler=loop.scheduler,
            scaler=loop.scaler, epoch=epoch, best_metric=best_acc,
            extra={"history": history, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                   "finished": finished, "run_key": settings.run_key()},
        )
        log.info("epoch %d/%d: train loss %.4f acc %.3f, val loss %.4f %s %.3f (%.1fs + %.1fs)",
                 epoch, settings.epochs, stats.train_loss, stats.train_accuracy, val_loss,
                 objective.score_name, val_acc, stats.train_s, stats.val_s)
        if on_epoch is not None:
            on_epoch(stats, settings.epochs)
        if finished:
            break

    epochs_run = len(history)
    model.load_state_dict(read_state_dict(read_bytes(best_uri, so)))
    return TrainResult(
        model=model.eval(), history=history, best_epoch=best_epoch, best_val_accuracy=best_acc,
        epochs_run=epochs_run, stopped_early=epochs_run < settings.epochs,
        resumed_from=resumed_from, checkpoint_uri=ckpt_dir, device=str(device),
        batch_size=batch_size,
    )
