"""The shipped default model: where it lies and how commands fall back to it.

`diffusers_lumina_mgpt.DEFAULT_MODEL` is where the package carries its default pipeline folder
(`models/shapesworld/`, a small Lumina-mGPT trained on ShapesWorld by `examples/shapesworld/default.yaml`
once its scores justify shipping it). Commands that take `--model` use it when none is given, and say
how to fix the call when the install has none.
"""

from __future__ import annotations

from pathlib import Path


def resolve_model(model: str | Path | None,
                  fix: str = "pass --model DIR (a pipeline folder, e.g. from `lumina-mgpt convert`)") -> str:
    """`model`, or the shipped default model when it is None (ValueError if this install has none, ending
    with `fix`: how the command's user gives a model instead)."""
    if model is not None:
        return str(model)
    from . import DEFAULT_MODEL

    if not (Path(DEFAULT_MODEL) / "model_index.json").is_file():
        raise ValueError(f"this install has no default model (expected at {DEFAULT_MODEL}); {fix}")
    return DEFAULT_MODEL


def pipeline_folder(model: str | Path | None) -> Path:
    """The pipeline folder to load (`model`, or the default model); FileNotFoundError unless it holds a
    model_index.json and every component folder that file lists."""
    import json

    path = Path(resolve_model(model))
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} is not a pipeline folder (no model_index.json); pass a folder saved with "
                                "save_pretrained or made by `lumina-mgpt convert`")
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{index} is not valid JSON ({err}); re-save the pipeline") from None
    for name, value in entries.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        if not (path / name).is_dir():
            raise FileNotFoundError(f"{path} has no {name}/ folder, which its model_index.json lists ({value[1]}); "
                                    "copy the whole pipeline folder, or re-create it with `lumina-mgpt convert`")
    return path


def pipeline_class_name(path: str | Path) -> str | None:
    """The pipeline class a folder's model_index.json names (`_class_name` is a string, or
    `[module file, class]` when the folder carries its own loader module)."""
    import json

    name = json.loads((Path(path) / "model_index.json").read_text()).get("_class_name")
    return name[1] if isinstance(name, (list, tuple)) else name
