"""`LuminaMGPTARScheduler`: plain autoregressive sampling, one new token per transformer forward."""

from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .image_decoding import ImageDecodingMixin


class LuminaMGPTARScheduler(ImageDecodingMixin, SchedulerMixin, ConfigMixin):
    """Chooses image tokens one at a time, as Lumina-mGPT's own inference does.

    Args:
        image_top_k: top-k over the VQ codes inside an image (Lumina-mGPT demo default 2000).
        text_top_k: top-k over text tokens outside images.
        temperature: softmax temperature for both.
        top_p: optional nucleus sampling applied after top-k.

    Forced tokens (NEWLINE at row ends, EOI) are appended without a forward of their own, so an
    `h x w` latent image costs `h * w` forwards after the prompt's prefill.
    """

    config_name = "scheduler_config.json"
    order = 1
    _compatibles = ["LuminaMGPTARScheduler", "LuminaMGPTJacobiScheduler"]

    @register_to_config
    def __init__(
        self,
        image_top_k: int | None = 2000,
        text_top_k: int | None = 5,
        temperature: float = 1.0,
        top_p: float | None = None,
    ):
        # `from_config(jacobi.config)` drops the Jacobi-only keys (num_drafts, draft_init) silently:
        # diffusers ignores the init keys of compatible classes.
        pass
