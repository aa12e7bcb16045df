"""Decoding schedulers: how image tokens are chosen (plain AR sampling or speculative Jacobi decoding)."""

from .ar import LuminaMGPTARScheduler
from .image_decoding import ImageDecodeState, ImageDecodeStepOutput, ImageLayout
from .jacobi import LuminaMGPTJacobiScheduler
from .sampling import guided_logits, logits_to_probs

__all__ = [
    "ImageDecodeState",
    "ImageDecodeStepOutput",
    "ImageLayout",
    "LuminaMGPTARScheduler",
    "LuminaMGPTJacobiScheduler",
    "guided_logits",
    "logits_to_probs",
]
