"""ShapesWorld: a procedural multimodal world with exact ground truth, and an automatic scorer.

Scenes of 1-4 flat-coloured shapes feed text-to-image, captioning, VQA, editing, segmentation,
depth and no-edit tasks (records in the Lumina-mGPT conversation format), and a GenEval-style
scorer judges any generator's images against prompts and scenes. Only numpy and pillow are
imported here; torch/diffusers load only when `evaluate` calls a pipeline. See docs/shapesworld.md.
"""

from __future__ import annotations

from .language import FAMILIES, HELDOUT_FAMILIES, PromptSpec, caption, make_prompt, parse_caption
from .render import render_depth, render_scene, render_segmentation
from .scene import HELDOUT_COMBOS, SIZE_BUCKETS, Scene, ShapeObject, sample_scene
from .scorer import Detection, TurnScore, check_spec, detect, score_target
from .tasks import TASKS, TaskRecord, make_records, read_records, scene_for_prompt, write_records

__all__ = [
    "FAMILIES", "HELDOUT_COMBOS", "HELDOUT_FAMILIES", "SIZE_BUCKETS", "TASKS", "Detection", "PromptSpec",
    "Scene", "ShapeObject", "TaskRecord", "TurnScore", "caption", "check_spec", "detect", "make_prompt",
    "make_records", "parse_caption", "read_records", "render_depth", "render_scene", "render_segmentation",
    "sample_scene", "scene_for_prompt", "score_target", "write_records",
]
