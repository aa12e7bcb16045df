"""diffusers-lumina-mgpt: Lumina-mGPT-style autoregressive image generation for diffusers.

Public names are imported lazily so that `import diffusers_lumina_mgpt` stays cheap and
optional parts (demo, shapes) never load torch-heavy modules they do not need.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The shipped default model: a diffusers pipeline folder inside the package (a Lumina-mGPT trained on
# ShapesWorld by examples/shapesworld/default.yaml); commands use it when no --model is given.
DEFAULT_MODEL: str = str(Path(__file__).resolve().parent / "models" / "shapesworld")
# The shipped diffusion baseline (a stock diffusers IFPipeline trained on the same ShapesWorld records by
# examples/shapesworld/diffusion.yaml): what `lumina-mgpt compare` sets against DEFAULT_MODEL by default.
DEFAULT_DIFFUSION_MODEL: str = str(Path(__file__).resolve().parent / "models" / "shapesworld-diffusion")

# public name -> module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    "LuminaMGPTTransformer": ".transformer",
    "ChameleonVQModel": ".vq",
    "LuminaVocab": ".vocab",
    "LuminaImageProcessor": ".image_processor",
    "encode_image_block": ".image_tokens",
    "decode_image_block": ".image_tokens",
    "LuminaMGPTARScheduler": ".schedulers",
    "LuminaMGPTJacobiScheduler": ".schedulers",
    "LuminaMGPTPipeline": ".pipelines",
    "LuminaMGPTPipelineOutput": ".pipelines",
    "LuminaMGPTEditPipeline": ".pipelines",
    "LuminaMGPTEditPipelineOutput": ".pipelines",
    "LuminaMGPTChatOutput": ".pipelines",
    "ChatHistory": ".pipelines",
    "OMNI_TASKS": ".pipelines",
    "NO_EDIT_INSTRUCTION": ".pipelines",
}

__all__ = ["DEFAULT_DIFFUSION_MODEL", "DEFAULT_MODEL", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .transformer import LuminaMGPTTransformer  # noqa: F401
