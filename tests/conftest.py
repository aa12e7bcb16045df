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


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    """A `LuminaMGPTEditPipeline` (text-to-image, editing and chat) on the tiny fixture, one per test module
    (modules swap its scheduler); a module may define its own `pipe`."""
    from diffusers_lumina_mgpt.pipelines import LuminaMGPTEditPipeline

    p = LuminaMGPTEditPipeline.from_pretrained(tiny_pipe_dir)
    p.set_progress_bar_config(disable=True)
    return p


def naive_greedy_cfg(pipe, cond, uncond, h_lat: int, w_lat: int, guidance_scale: float) -> list[int]:
    """Reference decoding: two explicit full forwards per token (cond, then uncond context), no cache.

    Returns the greedy image-block body (codes, NEWLINEs, EOI) under `uncond + s * (cond - uncond)`.
    """
    import torch

    tr, codes = pipe.transformer, torch.tensor(pipe.vocab.code_token_ids)
    layout = pipe.image_layout(h_lat, w_lat)
    body: list[int] = []
    for p in range(layout.length):
        tok = layout.forced(p)
        if tok is None:
            ext = torch.tensor(body, dtype=torch.long)
            c = tr(torch.cat([cond, ext])[None]).logits[0, -1, codes]
            u = tr(torch.cat([uncond, ext])[None]).logits[0, -1, codes]
            tok = int(codes[torch.argmax(u + guidance_scale * (c - u))])
        body.append(tok)
    return body
