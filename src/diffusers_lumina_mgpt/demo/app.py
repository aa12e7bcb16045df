"""The Gradio app: three tabs (text to image, edit / Omni, chat) over one loaded model.

`build_demo(pipe_or_folder)` returns a queued `gradio.Blocks`; `launch(demo, host, port)` serves it with
the demo's upload limit and system fonts (no web fonts to fetch). Every model event shares one
concurrency slot ("model"), so requests run one at a time; at most `max_queue` wait, and Gradio refuses
the rest with "Queue is full". A failing request shows its message in the page (`gr.Error`) and the
app keeps serving.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from .handlers import AUTO_SIZE, SCHEDULERS, TASK_CHOICES, DemoBackend, EditSession
from .limits import (
    CHAT_MAX_NEW_TOKENS, DEFAULT_MAX_QUEUE, GUIDANCE_RANGE, IMAGE_TOP_K_RANGE, MAX_CHAT_IMAGES, MAX_IMAGES,
    MAX_NEW_TOKENS_RANGE, MAX_PROMPT_CHARS, MAX_UPLOAD, SEED_RANGE, TEMPERATURE_RANGE, TEXT_TOP_K_RANGE,
)

logger = logging.getLogger(__name__)
MODEL_SLOT = {"concurrency_id": "model", "concurrency_limit": 1}  # one model call at a time, all tabs together
IMAGE_BOX_HEIGHT = 320  # px of the edit tab's input and result boxes
SYSTEM_FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}


def as_page_error(err: Exception) -> gr.Error:
    """The `gr.Error` that shows `err` in the page: the message of a user error (ValueError, missing
    file), else the exception's type and message (logged with its traceback)."""
    if isinstance(err, (ValueError, FileNotFoundError)):
        logger.info("demo request refused: %s", err)
        return gr.Error(str(err), print_exception=False)
    logger.exception("demo request failed")
    return gr.Error(f"{type(err).__name__}: {err}")


def shows_errors(fn: Callable) -> Callable:
    """`fn` (a function or a generator function) with its exceptions raised as `gr.Error` (shown in the page)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any):
            try:
                yield from fn(*args)
            except gr.Error:
                raise
            except Exception as err:
                raise as_page_error(err) from err

        return stream

    @functools.wraps(fn)
    def call(*args: Any):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except Exception as err:
            raise as_page_error(err) from err

    return call


def _seed_box() -> gr.Number:
    return gr.Number(value=0, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1], label="Seed")


def _text_to_image_tab(backend: DemoBackend) -> None:
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="t2i-prompt",
                                placeholder="a red circle above a blue square")
            size = gr.Dropdown(backend.size_choices, value=backend.size_choices[0], label="Size (height x width, px)",
                               elem_id="t2i-size")
            with gr.Row():
                seed = _seed_box()
                randomize = gr.Checkbox(False, label="Random seed")
            guidance = gr.Slider(*GUIDANCE_RANGE, value=backend.defaults["t2i_guidance"], step=0.5,
                                 label="Guidance scale (1 = off)")
            top_k = gr.Slider(*IMAGE_TOP_K_RANGE, value=backend.defaults["t2i_image_top_k"], step=1, label="Image top-k")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature")
            scheduler = gr.Radio(list(SCHEDULERS), value=SCHEDULERS[0], label="Scheduler (Jacobi: speculative, same "
                                                                               "distribution, fewer forwards)")
            count = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images")
            run = gr.Button("Generate", variant="primary", elem_id="t2i-run")
        with gr.Column():
            gallery = gr.Gallery(label="Images (previewed row by row)", columns=2, format="png", elem_id="t2i-gallery")
            files = gr.File(label="PNG files (settings in their metadata)", file_count="multiple", elem_id="t2i-files")
            status = gr.Textbox(label="Status", interactive=False, elem_id="t2i-status")
    inputs = [prompt, size, seed, randomize, guidance, top_k, temperature, scheduler, count]
    outputs = [gallery, files, seed, status]
    handler = shows_errors(backend.text_to_image)
    run.click(handler, inputs, outputs, api_name="text_to_image", **MODEL_SLOT)
    prompt.submit(handler, inputs, outputs, api_name=False, **MODEL_SLOT)


def _edit_tab(backend: DemoBackend) -> None:
    session = gr.State(EditSession())
    with gr.Row():
        source = gr.Image(type="pil", image_mode="RGB", sources=["upload", "clipboard"], label="Input image",
                          height=IMAGE_BOX_HEIGHT, elem_id="edit-input")
        result = gr.Image(type="filepath", format="png", interactive=False, label="Result", height=IMAGE_BOX_HEIGHT,
                          elem_id="edit-output")
    with gr.Row():
        with gr.Column():
            task = gr.Dropdown(TASK_CHOICES, value="edit", label="Task", elem_id="edit-task")
            prompt = gr.Textbox(label="Instruction (edit), object (detection) or caption (condition)",
                                max_length=MAX_PROMPT_CHARS, elem_id="edit-prompt")
            follow = gr.Checkbox(False, label="Continue from the last result (multi-turn; the upload is not used)",
                                 elem_id="edit-continue")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="edit-run")
                reset = gr.Button("New conversation", elem_id="edit-reset")
        with gr.Column():
            seed = _seed_box()
            guidance = gr.Slider(*GUIDANCE_RANGE, value=backend.defaults["edit_guidance"], step=0.5,
                                 label="Guidance scale (1 = off)")
            top_k = gr.Slider(*IMAGE_TOP_K_RANGE, value=backend.defaults["edit_image_top_k"], step=1,
                              label="Image top-k (1 = greedy)")
    turns = gr.Gallery(label="Results of this conversation", columns=6, height=160, format="png", elem_id="edit-turns")
    status = gr.Textbox(label="Status", interactive=False, elem_id="edit-status")
    run.click(shows_errors(backend.edit), [source, task, prompt, seed, guidance, top_k, follow, session],
              [result, session, turns, status], api_name="edit", **MODEL_SLOT)
    reset.click(lambda: (EditSession(), [], None, "new conversation"), None, [session, turns, result, status],
                api_name=False, queue=False)


def _take_message(message: dict | None) -> tuple[dict | None, None]:
    """Move the typed message into a state and empty the input box."""
    return message, None


def _chat_tab(backend: DemoBackend) -> None:
    history = gr.State(None)
    pending = gr.State(None)
    chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chat-window")
    box = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"], label="Message",
                               placeholder=f"Message; attach up to {MAX_CHAT_IMAGES} images with the clip",
                               elem_id="chat-input")
    with gr.Accordion("Settings", open=False, elem_id="chat-settings"):
        with gr.Row():
            max_new_tokens = gr.Slider(*MAX_NEW_TOKENS_RANGE, value=CHAT_MAX_NEW_TOKENS, step=1,
                                       label="Max new text tokens")
            text_top_k = gr.Slider(*TEXT_TOP_K_RANGE, value=5, step=1, label="Text top-k (1 = greedy)")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature")
        with gr.Row():
            allow_images = gr.Checkbox(True, label="The model may answer with images")
            image_size = gr.Dropdown([AUTO_SIZE, *backend.size_choices], value=AUTO_SIZE,
                                     label="Size of answer images (height x width)", elem_id="chat-image-size")
            seed = _seed_box()
    clear = gr.Button("Clear", elem_id="chat-clear")
    settings = [max_new_tokens, text_top_k, temperature, allow_images, image_size, seed]
    box.submit(_take_message, [box], [pending, box], api_name=False, queue=False).then(
        shows_errors(backend.chat), [pending, chatbot, history, *settings], [chatbot, history], api_name="chat",
        **MODEL_SLOT,
    )
    clear.click(lambda: ([], None), None, [chatbot, history], api_name=False, queue=False)


def build_demo(pipe_or_folder: Any, *, max_queue: int = DEFAULT_MAX_QUEUE, device: str | None = None) -> gr.Blocks:
    """The demo over a `LuminaMGPTPipeline` (or edit pipeline, or `DemoBackend`) or a pipeline folder; queued
    with at most `max_queue` waiting requests, one running at a time."""
    if not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be a positive integer, got {max_queue!r}")
    backend = pipe_or_folder if isinstance(pipe_or_folder, DemoBackend) else DemoBackend(pipe_or_folder, device)
    with gr.Blocks(title="Lumina-mGPT", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown("## Lumina-mGPT: autoregressive text and image generation")
        with gr.Tab("Text to image", id="t2i"):
            _text_to_image_tab(backend)
        with gr.Tab("Edit / Omni", id="edit"):
            _edit_tab(backend)
        with gr.Tab("Chat", id="chat"):
            _chat_tab(backend)
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    demo.backend = backend  # for callers that want the loaded pipelines
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any):
    """Serve the demo (kwargs go to `Blocks.launch`, e.g. prevent_thread_lock=True)."""
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, show_error=True,
                       theme=gr.themes.Default(**SYSTEM_FONTS), **kwargs)
