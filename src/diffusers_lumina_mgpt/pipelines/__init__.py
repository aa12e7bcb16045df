"""diffusers pipelines of Lumina-mGPT: text-to-image (and, later, editing and chat)."""

from .text_to_image import LuminaMGPTPipeline, LuminaMGPTPipelineOutput

__all__ = ["LuminaMGPTPipeline", "LuminaMGPTPipelineOutput"]
