"""The demo's input limits: every user value is clamped to these ranges before it reaches a pipeline.

A public demo must not let one request take the machine (a huge image, hundreds of images, a
thousand-token answer), so each numeric input is clamped, sizes come from the model's resolution
buckets, and texts are cut. `clamp` and friends never raise for out-of-range numbers: they bring
them into range (the UI sliders already enforce the same bounds; the API does not).
"""

from __future__ import annotations

import math

MAX_IMAGES = 4  # images per text-to-image request
MAX_SIDE = 1024  # pixels per side of a generated image
MAX_PROMPT_CHARS = 2000  # longer prompts are cut
GUIDANCE_RANGE = (1.0, 10.0)  # classifier-free guidance scale (1.0 = off)
IMAGE_TOP_K_RANGE = (1, 8192)  # top-k over image codes (Chameleon has 8192)
TEXT_TOP_K_RANGE = (1, 100)  # top-k over text tokens in chat (1 = greedy)
TEMPERATURE_RANGE = (0.1, 2.0)
SEED_RANGE = (0, 2**31 - 1)
MAX_NEW_TOKENS_RANGE = (1, 512)  # text tokens of one chat answer
MAX_CHAT_IMAGES = 4  # images attached to one chat message
MAX_TURNS = 8  # edit turns / chat answers kept in one conversation before it must be cleared
MAX_UPLOAD = "20mb"  # Gradio's upload limit (launch(max_file_size=...))
DEFAULT_MAX_QUEUE = 8  # requests waiting at most; more get Gradio's "Queue is full"

# defaults shown in the UI where the model folder records none (handlers.sampling_defaults; Lumina-mGPT's
# demos: t2i guidance 3-4, image top-k 2000; Omni guidance 1.0, image top-k 200)
T2I_GUIDANCE = 3.0
T2I_IMAGE_TOP_K = 2000
EDIT_GUIDANCE = 1.0
EDIT_IMAGE_TOP_K = 200
CHAT_MAX_NEW_TOKENS = 128


def clamp(value: float | int | None, bounds: tuple[float, float], default: float) -> float:
    """`value` brought into `[lo, hi]`; `default` when it is None or not a finite number."""
    lo, hi = bounds
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float(default)
    if not math.isfinite(number):
        return float(default)
    return min(max(number, lo), hi)


def clamp_int(value: float | int | None, bounds: tuple[int, int], default: int) -> int:
    """`clamp` for integer inputs (rounded to the nearest integer)."""
    return int(round(clamp(value, bounds, default)))


def clean_text(text: str | None, limit: int = MAX_PROMPT_CHARS) -> str:
    """The text stripped and cut to `limit` characters ("" for None)."""
    return (text or "").strip()[:limit]


def size_label(height: int, width: int) -> str:
    """The size dropdown's value for an image: "HEIGHTxWIDTH" in pixels."""
    return f"{height}x{width}"


def allowed_sizes(buckets: list[tuple[int, int]], default_size: int, max_side: int = MAX_SIDE) -> list[tuple[int, int]]:
    """(height, width) sizes offered: the model's (width, height) buckets with both sides <= max_side, the
    default square first (added when the buckets lack it)."""
    sizes = [(h, w) for w, h in buckets if max(h, w) <= max_side]
    square = (default_size, default_size)
    if default_size <= max_side:
        sizes = [square] + [s for s in sizes if s != square]
    if not sizes:
        raise ValueError(f"the model has no resolution bucket with both sides <= {max_side} px")
    return sizes


def parse_size(label: str | None, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of a size label; the first (default) size for None; ValueError for sizes not offered."""
    if not label:
        return sizes[0]
    for h, w in sizes:
        if size_label(h, w) == str(label).strip():
            return h, w
    offered = ", ".join(size_label(h, w) for h, w in sizes)
    raise ValueError(f"size {label!r} is not offered by this model; choose one of {offered} (height x width)")
