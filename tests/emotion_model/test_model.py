"""EmotionClassifier: output shapes, parameter counts, compute of the small variant, SE blocks,
Kinetics backbone loading and input checks. Real pytorchvideo models, seeded, on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fvcore.nn.squeeze_excitation import SqueezeExcitation
from pytorchvideo.models.resnet import BottleneckBlock
from torch.utils.flop_counter import FlopCounterMode

from emotion_model.errors import ArchitectureMismatchError
from emotion_model.labels import EMOTION_LABELS
from emotion_model.model import (
    PRESETS,
    EmotionClassifier,
    build_model,
    create_emotion_backbone,
    load_kinetics_backbone,
)

R50_BACKBONE_PARAMS = 33.7e6
"""SlowFast-R50 without its Kinetics head (34.6M with it, minus 2304 x 400 + 400)."""


@pytest.fixture(scope="module")
def r50() -> EmotionClassifier:
    """SlowFast-R50 + SE, built exactly as the model card calls it."""
    torch.manual_seed(0)
    return EmotionClassifier(
        num_classes=6, hidden_size=256, dropout=0.5, use_se=True, pretrained=False
    ).eval()


def _clip(t: int, size: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, t, 3, size, size, generator=torch.Generator().manual_seed(t + size))


def _backbone_params_before_se(model: torch.nn.Module) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters()
        if name.startswith("backbone.") and ".act_b." not in name
    )


def _flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


# --- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("t", [16, 32, 48])
def test_small_output_shape(small_model: EmotionClassifier, t: int, size: int) -> None:
    with torch.no_grad():
        logits = small_model(_clip(t, size))
    assert logits.shape == (1, len(EMOTION_LABELS))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_small_batch_of_two(small_model: EmotionClassifier) -> None:
    x = _clip(16, 112, batch=2)
    with torch.no_grad():
        both = small_model(x)
        first = small_model(x[:1])
    assert both.shape == (2, 6)
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)


def test_r50_output_shape(r50: EmotionClassifier) -> None:
    with torch.no_grad():
        logits = r50(_clip(16, 112))
    assert logits.shape == (1, 6)
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_r50_output_shape_at_model_card_size(r50: EmotionClassifier) -> None:
    with torch.no_grad():
        assert r50(_clip(48, 224)).shape == (1, 6)


def test_num_classes_and_hidden_size() -> None:
    model = build_model("small", num_classes=3, hidden_size=32).eval()
    assert model.num_classes == 3
    assert model.head[1].out_features == 32
    with torch.no_grad():
        assert model(_clip(16, 64)).shape == (1, 3)


# --- size and compute ------------------------------------------------------------------------
def test_r50_backbone_parameter_count(r50: EmotionClassifier) -> None:
    assert _backbone_params_before_se(r50) == pytest.approx(R50_BACKBONE_PARAMS, rel=0.01)
    assert r50.config["width"] == PRESETS["r50"]["width"] == 64


def test_model_card_call_is_r50(r50: EmotionClassifier) -> None:
    assert r50.config == {"num_classes": 6, "hidden_size": 256, "dropout": 0.5,
                          "use_se": True, "width": 64}
    assert r50.head[1].in_features == 2304  # slow 2048 + fast 256 pooled features


def test_small_variant_needs_ten_times_less_compute(
    small_model: EmotionClassifier, r50: EmotionClassifier
) -> None:
    x = _clip(16, 112)
    small, big = _flops(small_model, x), _flops(r50, x)
    assert small > 0
    assert big >= 10 * small, f"R50 {big / 1e9:.2f} GFLOP vs small {small / 1e9:.2f} GFLOP"
    assert _backbone_params_before_se(small_model) * 10 <= _backbone_params_before_se(r50)


# --- squeeze-and-excitation ------------------------------------------------------------------
def test_se_in_every_bottleneck(small_model: EmotionClassifier) -> None:
    se = [m for m in small_model.modules() if isinstance(m, SqueezeExcitation)]
    blocks = [m for m in small_model.modules() if isinstance(m, BottleneckBlock)]
    assert len(se) == 32  # (3 + 4 + 6 + 3) bottlenecks x 2 pathways
    assert len(blocks) == 32
    for block in blocks:
        inside = [m for m in block.modules() if isinstance(m, SqueezeExcitation)]
        assert len(inside) == 1
    assert not any(isinstance(m, SqueezeExcitation) for m in small_model.head.modules())


def test_r50_has_the_same_se_layout(r50: EmotionClassifier) -> None:
    assert sum(isinstance(m, SqueezeExcitation) for m in r50.modules()) == 32


def test_use_se_false_has_none() -> None:
    model = build_model("small", use_se=False)
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())
    assert not any(".act_b." in name for name in model.state_dict())
    with torch.no_grad():
        assert model.eval()(_clip(16, 64)).shape == (1, 6)


# --- pretrained backbone ---------------------------------------------------------------------
def test_pretrained_true_without_a_source_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a source"):
        EmotionClassifier(pretrained=True)


def _kinetics_checkpoint(path: Path, *, width: int, seed: int) -> dict[str, torch.Tensor]:
    """A file shaped like pytorchvideo's SLOWFAST_8x8_R50: ``{"model_state": {"blocks.N..."}}``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in create_emotion_backbone(width=width, use_se=False).state_dict().items():
        if value.is_floating_point():
            value = torch.randn(value.shape, generator=gen)
        state[key] = value
    features = 32 * width + 4 * width
    state["blocks.6.proj.weight"] = torch.randn(400, features, generator=gen)
    state["blocks.6.proj.bias"] = torch.randn(400, generator=gen)
    torch.save({"model_state": state, "epoch": 196}, path)
    return state


@pytest.fixture(scope="module")
def kinetics_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("kinetics") / "SLOWFAST_8x8_R50_w16.pyth"
    return path, _kinetics_checkpoint(path, width=16, seed=7)


def test_pretrained_path_loads_the_backbone_exactly(kinetics_small: tuple[Path, dict]) -> None:
    path, state = kinetics_small
    torch.manual_seed(1)
    model = EmotionClassifier(width=16, pretrained=str(path))
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith("blocks.6"):
            assert f"backbone.{key}" not in own
            continue
        assert torch.equal(own[f"backbone.{key}"], value), key
    # The head stays freshly initialised: another seed gives another head, same backbone.
    torch.manual_seed(2)
    other = EmotionClassifier(width=16, pretrained=path).state_dict()
    for key in ("head.1.weight", "head.4.weight"):
        assert not torch.equal(own[key], other[key])
    last = "backbone.blocks.4.multipathway_blocks.0.res_blocks.2.branch2.conv_c.weight"
    assert torch.equal(own[last], other[last])


def test_pretrained_from_a_file_object(kinetics_small: tuple[Path, dict]) -> None:
    path, state = kinetics_small
    with open(path, "rb") as fh:
        model = EmotionClassifier(width=16, pretrained=fh)
    key = "blocks.0.multipathway_blocks.0.conv.weight"
    assert torch.equal(model.state_dict()[f"backbone.{key}"], state[key])


def test_load_kinetics_backbone_reports_the_se_tensors_left_untouched(
    kinetics_small: tuple[Path, dict],
) -> None:
    path, _ = kinetics_small
    model = build_model("small")
    untouched = load_kinetics_backbone(model, path)
    assert untouched
    assert all(".act_b." in key for key in untouched)
    assert len({k.split(".act_b.")[0] for k in untouched}) == 32  # one SE per bottleneck


def test_pretrained_of_another_width_is_an_architecture_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "SLOWFAST_8x8_R50_w8.pyth"
    _kinetics_checkpoint(path, width=8, seed=3)
    with pytest.raises(ArchitectureMismatchError, match=r"has shape .* width 16") as caught:
        EmotionClassifier(width=16, pretrained=path)
    assert str(caught.value).startswith(f"{path}: ")


def test_pretrained_missing_file_is_an_error(tmp_path: Path) -> None:
    from emotion_model.errors import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match="no such model file"):
        EmotionClassifier(width=16, pretrained=tmp_path / "absent.pyth")


# --- input checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("t", [6, 10, 15])
def test_t_not_a_multiple_of_four(small_model: EmotionClassifier, t: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        small_model(_clip(t, 64))


@pytest.mark.parametrize("shape", [(16, 3, 64, 64), (1, 1, 16, 3, 64, 64), (3, 64, 64)])
def test_wrong_ndim(small_model: EmotionClassifier, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected input \[B, T, C, H, W\]"):
        small_model(torch.zeros(shape))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"width": 12}, "multiple of 8"), ({"num_classes": 1}, "num_classes"),
     ({"dropout": 1.0}, "dropout")],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmotionClassifier(**kwargs)
