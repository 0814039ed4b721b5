"""Fixtures of the reliability tests. The Prefect test server (`prefect_server`), the moto S3
server (`s3_server`), the fault proxy (`fault_proxy`) and the untrained small model
(`model_path`) come from tests/conftest.py; helpers are in reliability_helpers.py.
"""

from __future__ import annotations

import pytest
from reliability_helpers import Inputs, build_inputs


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """Every input of the table, generated once (~3 s)."""
    return build_inputs(tmp_path_factory.mktemp("reliability-inputs"))
