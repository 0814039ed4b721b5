"""The worker image and the systemd unit agree with the rest: pool names, installed extras, user."""

from __future__ import annotations

import configparser
import fnmatch
import tomllib
from pathlib import Path

from infra_helpers import load_template

from deployments.pools import DEFAULT_POOL_NAMES

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_cuda_base_project_installed_non_root() -> None:
    text = (ROOT / "deployments/Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    base = next(ln for ln in lines if ln.startswith("ARG CUDA_IMAGE="))
    assert base.startswith("ARG CUDA_IMAGE=nvidia/cuda:") and "-runtime-" in base
    assert "pip install --no-deps '.[aws]'" in text
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # the build context keeps every package the wheel needs
    ignored = [ln.strip() for ln in (ROOT / "deployments/Dockerfile.dockerignore").read_text()
               .splitlines() if ln.strip() and not ln.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in ["pyproject.toml", "README.md", *packages]:
        assert not any(fnmatch.fnmatch(needed, pattern) for pattern in ignored), needed
    assert "aws" in project["project"]["optional-dependencies"]


def test_pool_names_agree_across_infra_systemd_and_cli() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deployments/systemd/emotion-pipeline-worker.service")
    command = unit["Service"]["ExecStart"].split()
    assert command[command.index("--pool") + 1] == DEFAULT_POOL_NAMES["process"]
    assert command[command.index("--type") + 1] == "process"
    assert unit["Service"]["User"] != "root"
    compute = load_template("compute.yaml")["Parameters"]
    assert compute["WorkPoolName"]["Default"] == DEFAULT_POOL_NAMES["ecs"]
    iam = load_template("iam.yaml")["Parameters"]
    for shared in ("ClusterName", "FlowTaskFamily"):  # the IAM stack scopes the worker by these
        assert iam[shared]["Default"] == compute[shared]["Default"]
