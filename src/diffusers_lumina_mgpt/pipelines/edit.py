"""`LuminaMGPTEditPipeline`: image-to-image with Lumina-mGPT Omni (editing, dense prediction, no-edit
denoising), plus understanding and chat (`pipe.chat`, `pipe.understand`) from `LuminaMGPTChatMixin`.

An edit turn is the conversation `BOS, [history], "{task text} <|image|>" <sep>` followed by the
forced header `BOI, H, W` of the answer image; the image body is then decoded by the scheduler like
text-to-image. The input image enters as its token block (bucket of `default_size`, VQ-encoded).
Classifier-free guidance uses Lumina-mGPT's unconditional context for image-to-image, which is the
same as for text-to-image: the generated image alone, `[BOI, H, W, image tokens...]`, without the
input image or the instruction (Lumina's CFG processor starts the unconditional context at the last
BOI of the sequence, i.e. the answer's). Each turn's answer becomes an assistant turn `<|image|>`
of the returned history, so multi-turn editing continues from it without re-encoding pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..vocab import IMAGE_PLACEHOLDER
from .chat import LuminaMGPTChatMixin
from .chat_history import ChatHistory, as_history
from .chat_images import block_size, encode_images
from .tasks import NO_EDIT_INSTRUCTION, task_message
from .text_to_image import LuminaMGPTPipeline, LuminaMGPTPipelineOutput

OMNI_GUIDANCE_SCALE = 1.0  # Lumina-mGPT's image-to-image demo default (its image_top_k default is 200)


@dataclass
class LuminaMGPTEditPipelineOutput(LuminaMGPTPipelineOutput):
    """`LuminaMGPTPipelineOutput` plus `histories`: for each output image, the conversation with that
    image as the assistant's answer (pass one as `history=` for the next editing turn)."""

    histories: list[ChatHistory]


def psnr(image: Any, reference: Any) -> float:
    """Peak signal-to-noise ratio in dB of two same-size 8-bit RGB images (PIL or uint8 (H, W, 3) arrays)."""
    a, b = (np.asarray(x.convert("RGB") if isinstance(x, PIL.Image.Image) else x) for x in (image, reference))
    if a.shape != b.shape:
        raise ValueError(
            f"images differ in shape {a.shape} vs {b.shape}; bring the reference to the pipeline's bucket first, "
            "e.g. pipe.image_processor.postprocess(pipe.image_processor.preprocess(reference))[0]"
        )
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


class LuminaMGPTEditPipeline(LuminaMGPTChatMixin, LuminaMGPTPipeline):
    r"""Image-to-image with Lumina-mGPT Omni: editing, Omni tasks, no-edit denoising, and chat.

    Same components as [`LuminaMGPTPipeline`] (load the same folder, or `from_pipe(t2i_pipe)`).
    `pipe(image, "make the sky red")` edits; `task=` selects an Omni task ("depth", "segmentation",
    "surface_normal", "pose", "detection", "condition"); `history=` continues a multi-turn edit;
    `pipe.denoise(image)` regenerates an image with less VQ noise; `pipe.chat(...)` /
    `pipe.understand(...)` answer with text (and images).
    """

    # ------------------------------------------------------------------ conversation
    def prepare_conversation(
        self, image: Any = None, prompt: str | None = None, task: str = "edit", history: Any = None
    ) -> ChatHistory:
        """The history plus the new human turn `"{task text} <|image|>"` (one placeholder per new image)."""
        base = as_history(self, history, must_end_with="gpt")
        blocks = encode_images(self, image)
        if not blocks and base.last_image is None:
            raise ValueError("nothing to edit: pass an image, or a history that contains one")
        return base.append("human", task_message(task, prompt, len(blocks)), blocks)

    def encode_edit_prompt(self, conversation: ChatHistory, height: int, width: int) -> torch.Tensor:
        """Conditional context: the conversation (ending with the human turn's `<sep>`) then `BOI, H, W`."""
        ids = self.conversation.generation_prompt(conversation.messages, conversation.images)
        return torch.cat([ids, self.image_header(height, width)])

    def default_answer_size(self, conversation: ChatHistory) -> tuple[int, int]:
        """(height, width) of the last image of the conversation: the input's bucket for a single edit."""
        return block_size(self, conversation.last_image)

    @property
    def edit_image_top_k(self) -> int | None:
        """The image top-k of calls that give none: the folder's `default_edit_image_top_k`, else the
        scheduler's `image_top_k` (None: no top-k)."""
        top_k = self.config.get("default_edit_image_top_k")
        return self.scheduler.config.image_top_k if top_k is None else top_k

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        prompt: str | None = None,
        task: str = "edit",
        history: Any = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = OMNI_GUIDANCE_SCALE,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image_top_k: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> LuminaMGPTEditPipelineOutput | tuple:
        r"""Answer an image (or a conversation) with an image.

        Args:
            image: the input image (path, PIL, numpy (H, W, C), torch (C, H, W), or a token block), or a
                list of them for one message; optional when `history` already holds an image.
            prompt: the instruction (`task="edit"`), the object (`"detection"`) or the caption
                (`"condition"`); None for the fixed-text tasks.
            task: an Omni task name (see `pipelines.tasks.OMNI_TASKS`); unknown names list the known ones.
            history: earlier turns (`output.histories[i]`, or a Lumina-mGPT record dict).
            height, width: size of the answer image; default: the last image in the conversation (the
                input's bucket). The answer's `BOI, H, W` are forced, so the size is always honoured.
            guidance_scale: CFG with the image alone as unconditional context; 1.0 (Lumina's Omni demo
                default) skips the unconditional rows.
            image_top_k: top-k over the VQ codes; default: the folder's `default_edit_image_top_k`, else the
                scheduler's `image_top_k`. Lumina's Omni demo samples with 200.
            num_images_per_prompt, generator, temperature, top_p, output_type, return_dict,
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in `LuminaMGPTPipeline`.
        """
        conv = self.prepare_conversation(image, prompt, task, history)
        if (height is None) != (width is None):
            raise ValueError("pass both height and width for the answer image, or neither to keep the input's size")
        if height is None:
            height, width = self.default_answer_size(conv)
        self.check_inputs(
            conv.messages[-1].value, height, width, None, num_images_per_prompt, guidance_scale, output_type,
            callback_on_step_end_tensor_inputs,
        )
        h_lat, w_lat = self.image_processor.check_size(height, width, max_grid=self.vocab.max_grid)
        layout = self.image_layout(h_lat, w_lat)
        cond = self.encode_edit_prompt(conv, height, width)
        uncond = self.image_header(height, width)  # Lumina-mGPT: the answer image alone
        self.image_processor.check_size(
            height, width, max_positions=self.transformer.config.max_position_embeddings,
            prompt_length=len(cond), max_grid=self.vocab.max_grid,
        )

        if image_top_k is None:
            image_top_k = self.edit_image_top_k
        images, blocks, num_forwards = self.generate_image_blocks(
            [cond] * num_images_per_prompt, [uncond] * num_images_per_prompt, layout, height, width,
            guidance_scale, generator, {"image_top_k": image_top_k, "temperature": temperature, "top_p": top_p},
            output_type, callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        histories = [conv.append("gpt", IMAGE_PLACEHOLDER, [b]) for b in blocks]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, blocks, num_forwards, histories)
        return LuminaMGPTEditPipelineOutput(
            images=images, tokens=blocks, num_forward_passes=num_forwards, histories=histories
        )

    # ------------------------------------------------------------------ no-edit denoising
    def denoise(self, image: Any, instruction: str = NO_EDIT_INSTRUCTION, **kwargs) -> LuminaMGPTEditPipelineOutput | tuple:
        """No-edit denoising: send the image with an instruction not to change it; returns the regenerated image.

        The answer has the input's bucket size. Keyword arguments are those of `__call__`.
        """
        if "prompt" in kwargs or "task" in kwargs:
            raise ValueError("denoise() fixes the task; pass `instruction=` to change the no-edit wording")
        return self(image=image, prompt=instruction, task="edit", **kwargs)

    @torch.no_grad()
    def reconstruct(self, image: Any, output_type: str = "pil") -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """The plain VQ round trip of an image at its bucket (encode, decode): the baseline of `denoise`."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
        block = encode_images(self, image)
        if len(block) != 1:
            raise ValueError(f"reconstruct takes one image, got {len(block)}")
        return self.decode_image_tokens(block, output_type)
