"""The registry: the promotion rule and production.json."""

from __future__ import annotations

from pathlib import Path

from tasks.training.registry import decide, read_production


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
