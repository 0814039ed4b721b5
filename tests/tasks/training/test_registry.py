"""The registry: the promotion rule and production.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import RegistryError
from tasks.training.registry import Candidate, decide, promote_candidate, read_production


def test_promotion_rule() -> None:
    champion = {"val_accuracy": 0.8, "val_macro_f1": 0.7}
    assert decide({"val_accuracy": 0.9, "val_macro_f1": 0.1}, champion).promote
    assert decide({"val_accuracy": 0.8, "val_macro_f1": 0.75}, champion).promote  # F1 breaks tie
    same = decide(dict(champion), champion)
    assert not same.promote and "production stays" in same.reason
    worse = decide({"val_accuracy": 0.5, "val_macro_f1": 0.5}, champion, force=True)
    assert worse.promote and worse.forced and "force=True" in worse.reason
    assert decide({"val_accuracy": 0.1, "val_macro_f1": 0.1}, None).promote


def test_no_production_yet(tmp_path: Path) -> None:
    assert read_production(str(tmp_path)) is None


CHANCE_LEVEL = {"val_accuracy": 1 / 6, "val_macro_f1": 0.05}


def test_a_candidate_below_the_floor_is_never_promoted() -> None:
    first = decide(CHANCE_LEVEL, None, floor=0.4)
    assert not first.promote
    assert first.reason == ("candidate accuracy 0.167 is below the floor 0.40 (chance is "
                            "0.167): published, not promoted")
    worse_than_floor_and_production = decide(CHANCE_LEVEL, {"val_accuracy": 0.1,
                                                            "val_macro_f1": 0.1}, floor=0.4)
    assert not worse_than_floor_and_production.promote  # beating production is not enough
    assert worse_than_floor_and_production.reason.endswith("published, not promoted; "
                                                           "production stays")
    unreadable = decide(CHANCE_LEVEL, None, floor=0.4, champion_problem="gone")
    assert not unreadable.promote and "below the floor" in unreadable.reason


def test_force_overrides_the_floor_and_says_so() -> None:
    forced = decide(CHANCE_LEVEL, None, floor=0.4, force=True)
    assert forced.promote and forced.forced
    assert forced.reason == ("candidate accuracy 0.167 is below the floor 0.40 (chance is "
                             "0.167): promoted because force=True")


def test_at_the_floor_the_usual_rule_applies() -> None:
    assert decide({"val_accuracy": 0.4, "val_macro_f1": 0.3}, None, floor=0.4).promote
    replaced = decide({"val_accuracy": 0.5, "val_macro_f1": 0.3}, None, floor=0.4,
                      champion_problem="CheckpointError: gone")
    assert replaced.promote and replaced.reason == ("production model unreadable "
                                                    "(CheckpointError: gone); replaced")


def test_promote_candidate_below_the_floor_writes_nothing(tmp_path: Path) -> None:
    promotion = promote_candidate(
        str(tmp_path), Candidate("v1", str(tmp_path / "v1" / "model.safetensors"),
                                 CHANCE_LEVEL, "key"),
        champion=None, champion_metrics=None, evaluate_champion=lambda p: (None, "unused"),
        floor=0.4)
    assert not promotion.decision.promote and promotion.pointer is None
    assert "below the floor 0.40" in promotion.decision.reason
    assert read_production(str(tmp_path)) is None


def test_a_production_json_that_is_not_json_is_a_registry_error(tmp_path: Path) -> None:
    (tmp_path / "production.json").write_text("{half")
    with pytest.raises(RegistryError, match=r"production\.json: not JSON"):
        read_production(str(tmp_path))


def test_a_relative_registry_writes_a_pointer_that_resolves_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.common.model_pointer import resolve_model_uri

    monkeypatch.chdir(tmp_path)  # `train --registry ./registry`, then `run --model ...`
    model = Path("registry/v1/model.safetensors")
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    promotion = promote_candidate(
        "./registry", Candidate("v1", "./registry/v1/model.safetensors",
                                {"val_accuracy": 0.9, "val_macro_f1": 0.9}, "key"),
        champion=None, champion_metrics=None, evaluate_champion=lambda p: (None, "unused"))
    assert promotion.pointer is not None and promotion.pointer["uri"] == "v1/model.safetensors"
    assert Path(resolve_model_uri("./registry/production.json")).resolve() == model.resolve()
    monkeypatch.chdir(tmp_path / "registry")
    assert Path(resolve_model_uri("production.json")).resolve() == (tmp_path / model).resolve()
