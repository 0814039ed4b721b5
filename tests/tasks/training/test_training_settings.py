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
