"""diffusers pipelines of Lumina-mGPT: text-to-image, image-to-image (edit / Omni tasks) and chat."""

from .chat import ChatHistory, ChatStream, LuminaMGPTChatMixin, LuminaMGPTChatOutput, chat
from .edit import LuminaMGPTEditPipeline, LuminaMGPTEditPipelineOutput, psnr
from .tasks import NO_EDIT_INSTRUCTION, OMNI_TASKS, task_message
from .text_to_image import LuminaMGPTPipeline, LuminaMGPTPipelineOutput

__all__ = [
    "NO_EDIT_INSTRUCTION",
    "OMNI_TASKS",
    "ChatHistory",
    "ChatStream",
    "LuminaMGPTChatMixin",
    "LuminaMGPTChatOutput",
    "LuminaMGPTEditPipeline",
    "LuminaMGPTEditPipelineOutput",
    "LuminaMGPTPipeline",
    "LuminaMGPTPipelineOutput",
    "chat",
    "psnr",
    "task_message",
]
