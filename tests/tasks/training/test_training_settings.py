"""RetrainSettings: the run key, and what validation refuses."""

from __future__ import annotations

from tasks.training.settings import RetrainSettings


def test_run_key_ignores_where_and_how_but_not_what() -> None:
    base = RetrainSettings(sources=["/d"], registry="/r", preset="small")
    assert base.run_key() == RetrainSettings(sources=["/d"], registry="/other", preset="small",
                                             resume=True, device="cpu").run_key()
    assert base.run_key() != RetrainSettings(sources=["/d"], registry="/r", preset="small",
                                             lr=2e-3).run_key()
    assert base.checkpoint_uri == f"/r/training/{base.run_key()}"
    assert base.cache_uri == "/r/cache"


def test_the_floor_does_not_change_the_run_key() -> None:
    base = RetrainSettings(sources=["/d"], registry="/r")
    assert base.min_val_accuracy == 0.4
    assert RetrainSettings(sources=["/d"], registry="/r", min_val_accuracy=0.0,
                           force=True).run_key() == base.run_key()
