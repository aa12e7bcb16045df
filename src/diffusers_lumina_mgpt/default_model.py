"""The shipped default model: where it lies and how commands fall back to it.

`diffusers_lumina_mgpt.DEFAULT_MODEL` is where the package carries its default pipeline folder
(`models/shapesworld/`, a small Lumina-mGPT trained on ShapesWorld by `examples/shapesworld/default.yaml`
once its scores justify shipping it). Commands that take `--model` use it when none is given, and say
how to fix the call when the install has none.
"""

from __future__ import annotations

from pathlib import Path


def resolve_model(model: str | Path | None) -> str:
    """`model`, or the shipped default model when it is None (ValueError if this install has none)."""
    if model is not None:
        return str(model)
    from . import DEFAULT_MODEL

    if not (Path(DEFAULT_MODEL) / "model_index.json").is_file():
        raise ValueError(f"this install has no default model (expected at {DEFAULT_MODEL}); pass --model DIR "
                         "(a pipeline folder, e.g. from `lumina-mgpt convert`)")
    return DEFAULT_MODEL


def pipeline_folder(model: str | Path | None) -> Path:
    """The pipeline folder to load (`model`, or the default model); FileNotFoundError unless it holds a
    model_index.json."""
    path = Path(resolve_model(model))
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a pipeline folder (no model_index.json); pass a folder saved with "
                                "save_pretrained or made by `lumina-mgpt convert`")
    return path
