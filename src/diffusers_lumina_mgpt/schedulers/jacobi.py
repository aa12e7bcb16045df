"""`LuminaMGPTJacobiScheduler`: speculative Jacobi decoding (SJD, arXiv 2410.01699) of image blocks."""

from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .image_decoding import ImageDecodingMixin

DRAFT_INITS = ("random", "spatial")


class LuminaMGPTJacobiScheduler(ImageDecodingMixin, SchedulerMixin, ConfigMixin):
    """Verifies a window of draft image tokens per transformer forward.

    Each forward feeds the tokens accepted since the shared cache prefix plus `num_drafts` drafts.
    A draft `x` with proposal probability `p_draft(x)` is accepted when `u < p_now(x) / p_draft(x)`;
    the first rejected position is resampled from `normalise(max(0, p_now - p_draft))`, and the
    positions after it are re-drafted from the distributions the same forward produced (the Jacobi
    update). Sampling stays exact: the tokens follow the same distribution as the AR scheduler, and
    with `image_top_k=1` both give identical tokens.

    Args:
        image_top_k, text_top_k, temperature, top_p: as for `LuminaMGPTARScheduler`.
        num_drafts: drafts verified per forward (SJD uses 16).
        draft_init: how drafts beyond the last computed distribution start: "random" (uniform over
            the codes) or "spatial" (the code right above in the previous latent row, a point-mass
            proposal; uniform for the first row).
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
        num_drafts: int = 16,
        draft_init: str = "random",
    ):
        if num_drafts < 1:
            raise ValueError(f"num_drafts must be >= 1 (use LuminaMGPTARScheduler for plain decoding), got {num_drafts}")
        if draft_init not in DRAFT_INITS:
            raise ValueError(f"draft_init must be one of {DRAFT_INITS}, got {draft_init!r}")

    @property
    def num_drafts(self) -> int:
        return self.config.num_drafts

    def _draft_init(self) -> str:
        return self.config.draft_init
