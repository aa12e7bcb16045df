"""Lets `diffusers.DiffusionPipeline.from_pretrained(this_folder, trust_remote_code=True)` load this folder.

The classes come from the installed package: `pip install diffusers-lumina-mgpt`.
"""

from diffusers_lumina_mgpt import LuminaMGPTEditPipeline, LuminaMGPTPipeline

__all__ = ["LuminaMGPTEditPipeline", "LuminaMGPTPipeline"]
