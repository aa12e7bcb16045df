"""Lumina-mGPT Omni task prompts: the exact instructions the Omni model was trained with.

Each Omni task is one human message, the task text followed by ` <|image|>` (the input image's token
block); the answer is an image. The texts are Lumina-mGPT's own (its image-to-image demo), spelling
included (`Segmentic segmentation.` is what the model saw in training):

| task | human message |
|---|---|
| `edit` | `{prompt} <|image|>` (the raw instruction) |
| `segmentation` | `Segmentic segmentation. <|image|>` |
| `depth` | `Depth estimation. <|image|>` |
| `surface_normal` | `Surface normal estimation. <|image|>` |
| `pose` | `Human pose estimation. <|image|>` |
| `detection` | `Detect: {prompt} <|image|>` |
| `condition` | `Generate an image according to the provided image, and according to the following caption:\\n{prompt} <|image|>` |

`NO_EDIT_INSTRUCTION` is the instruction of no-edit denoising (an edit that asks for no change);
it is the first of ShapesWorld's `noedit` instructions so that a model trained on ShapesWorld knows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..prompts import DEPTH_TEXT, IMAGE_PLACEHOLDER, SEGMENTATION_TEXT

# Lumina-mGPT Omni-SFT has no fixed no-edit instruction; the paper only notes that an image given
# with an instruction not to change it comes back with less VQ noise. This wording is the first of
# `shapes.language.NOEDIT_INSTRUCTIONS`, the instructions this project trains the no-edit task with.
NO_EDIT_INSTRUCTION = "Do not change anything in this image."


@dataclass(frozen=True)
class OmniTask:
    """One Omni task: its instruction template and whether it needs the caller's text."""

    name: str
    template: str  # `{prompt}` marks where the caller's text goes
    description: str

    @property
    def needs_prompt(self) -> bool:
        return "{prompt}" in self.template


OMNI_TASKS: dict[str, OmniTask] = {
    t.name: t
    for t in (
        OmniTask("edit", "{prompt}", "instruction editing: the prompt is the raw instruction"),
        OmniTask("segmentation", SEGMENTATION_TEXT, "semantic segmentation map"),
        OmniTask("depth", DEPTH_TEXT, "depth map"),
        OmniTask("surface_normal", "Surface normal estimation.", "surface normal map"),
        OmniTask("pose", "Human pose estimation.", "human pose skeleton image"),
        OmniTask("detection", "Detect: {prompt}", "detection of the object named by the prompt"),
        OmniTask(
            "condition",
            "Generate an image according to the provided image, and according to the following caption:\n{prompt}",
            "condition-to-image: an image from a control image (canny, depth, ...) and a caption",
        ),
    )
}

# other spellings people use (Lumina's demo labels among them) -> task name
_ALIASES: dict[str, str] = {
    "editing": "edit",
    "semantic_segmentation": "segmentation",
    "depth_estimation": "depth",
    "surface_norm_estimation": "surface_normal",
    "surface_normal_estimation": "surface_normal",
    "normal": "surface_normal",
    "normals": "surface_normal",
    "human_pose_estimation": "pose",
    "detect": "detection",
    "condition_to_image": "condition",
}


def resolve_task(task: str) -> OmniTask:
    """The `OmniTask` for a name ("depth", "Depth Estimation", "condition-to-image", ...)."""
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, one of {', '.join(OMNI_TASKS)}; got {task!r}")
    key = task.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in OMNI_TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(OMNI_TASKS)}")
    return OMNI_TASKS[key]


def task_instruction(task: str, prompt: str | None = None) -> str:
    """The task's text without image placeholders (`Detect: cat`, `Depth estimation.`, ...)."""
    spec = resolve_task(task)
    if spec.needs_prompt:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"task {spec.name!r} needs a text prompt ({spec.description}); pass prompt='...'")
        if IMAGE_PLACEHOLDER in prompt and spec.name != "edit":
            raise ValueError(
                f"the prompt of task {spec.name!r} must not contain {IMAGE_PLACEHOLDER}; the image is appended for you"
            )
        return spec.template.format(prompt=prompt)
    if prompt is not None and prompt != "":
        raise ValueError(
            f"task {spec.name!r} has a fixed instruction ({spec.template!r}) and takes no prompt; "
            f"drop prompt= or use task='edit' for a free instruction"
        )
    return spec.template


def task_message(task: str, prompt: str | None = None, num_images: int = 1) -> str:
    """The human message of a task turn: the instruction, then ` <|image|>` for each input image.

    For `edit`, a prompt that already holds `<|image|>` placeholders is used as written (their count
    must equal `num_images`), so instructions that refer to several images keep their layout.
    """
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
    text = task_instruction(task, prompt)
    placed = text.count(IMAGE_PLACEHOLDER)
    if placed:
        if placed != num_images:
            raise ValueError(
                f"the prompt has {placed} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} new image(s) were "
                f"given; use one placeholder per image or none (then they are appended)"
            )
        return text
    return text + f" {IMAGE_PLACEHOLDER}" * num_images
