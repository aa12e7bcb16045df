"""Shared pytest setup: the `slow` marker and paths to shipped test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "chameleon-tiny"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory) -> Path:
    """A diffusers pipeline folder converted from the tiny fixture (default_size 64), once per session."""
    from diffusers_lumina_mgpt.cli import main as cli

    out = tmp_path_factory.mktemp("tiny_pipe")
    code = cli([
        "convert", "--model", str(FIXTURE / "model"), "--vqgan-ckpt", str(FIXTURE / "tokenizer/vqgan.ckpt"),
        "--vqgan-config", str(FIXTURE / "tokenizer/vqgan.yaml"), "--out", str(out), "--default-size", "64",
    ])
    assert code == 0
    return out
