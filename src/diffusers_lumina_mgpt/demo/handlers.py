"""What the demo's buttons do, without gradio: clamp the inputs, call the public pipelines, save PNGs.

`DemoBackend` holds one loaded model: the text-to-image pipeline, the edit pipeline sharing its
weights (`LuminaMGPTEditPipeline.from_pipe`), one scheduler of each kind, and a lock so that only one
request uses the model at a time (Gradio's queue runs them one by one too; the lock also covers a
generation that is still finishing after its viewer left). Handlers raise `ValueError` with a
message for the user; `app.py` shows it in the page.
"""

from __future__ import annotations

import html
import json
import random
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo

from ..pipelines import OMNI_TASKS, ChatHistory, LuminaMGPTEditPipeline, LuminaMGPTPipeline
from ..schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
from ..vocab import IMAGE_PLACEHOLDER
from .limits import (
    CHAT_MAX_NEW_TOKENS, EDIT_GUIDANCE, EDIT_IMAGE_TOP_K, GUIDANCE_RANGE, IMAGE_TOP_K_RANGE, MAX_CHAT_IMAGES,
    MAX_IMAGES, MAX_NEW_TOKENS_RANGE, MAX_TURNS, SEED_RANGE, T2I_GUIDANCE, T2I_IMAGE_TOP_K, TEMPERATURE_RANGE,
    TEXT_TOP_K_RANGE, allowed_sizes, clamp, clamp_int, clean_text, parse_size, size_label,
)
from .preview import GenerationCancelled, finished_rows, partial_images, stream_from_worker

PNG_METADATA_KEY = "lumina-mgpt"  # as `lumina-mgpt generate` writes it
SCHEDULERS = ("AR", "Jacobi")
DENOISE_TASK = "denoise"  # no-edit denoising (`pipe.denoise`), offered beside the Omni tasks
TASK_CHOICES: list[tuple[str, str]] = [(f"{t.name}: {t.description}", t.name) for t in OMNI_TASKS.values()] + [
    ("denoise: no-edit denoising (the image back with less VQ noise)", DENOISE_TASK)
]
AUTO_SIZE = "model chooses"  # chat answer images: the model picks the grid tokens
MAX_SAVED_FILES = 1000  # PNGs kept in the output folder; the oldest go first


@dataclass
class EditSession:
    """One browser session's editing conversation: the history to continue and its result files."""

    history: ChatHistory | None = None
    outputs: list[str] = field(default_factory=list)


def load_pipeline(pipe_or_folder: Any, device: str | None = None) -> LuminaMGPTPipeline:
    """A loaded `LuminaMGPTPipeline` (an edit pipeline is turned into one sharing its weights), or one
    loaded from a pipeline folder; moved to `device` when given."""
    if isinstance(pipe_or_folder, LuminaMGPTPipeline):
        pipe = pipe_or_folder
        if type(pipe) is not LuminaMGPTPipeline:
            pipe = LuminaMGPTPipeline.from_pipe(pipe)
    else:
        from ..default_model import pipeline_folder

        pipe = LuminaMGPTPipeline.from_pretrained(str(pipeline_folder(pipe_or_folder)))
    if device is not None:
        pipe.to(device)
    return pipe


def _seed(seed: Any, randomize: bool) -> int:
    return random.randint(*SEED_RANGE) if randomize else clamp_int(seed, SEED_RANGE, 0)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _keep_newest(folder: Path, count: int) -> None:
    """Delete all but the `count` newest PNGs of `folder` (another request may be deleting too)."""
    dated = []
    for path in folder.glob("*.png"):
        try:
            dated.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            pass
    for _, old in sorted(dated)[: max(0, len(dated) - count)]:
        old.unlink(missing_ok=True)


def _file_path(item: Any) -> str:
    """A path from a Gradio file value (a path string or a {"path": ...} dict)."""
    return item["path"] if isinstance(item, dict) else str(item)


def sampling_defaults(pipe: LuminaMGPTPipeline) -> dict[str, float | int]:
    """The sliders' starting values: what the pipelines use when a call gives none (the folder's
    `default_guidance_scale`, the scheduler's `image_top_k`, the folder's `default_edit_image_top_k`), with
    Lumina-mGPT's demo values (limits.py) where the folder says nothing (or "no top-k", which a slider can't show)."""
    scheduler_top_k = pipe.scheduler.config.get("image_top_k")
    edit_top_k = pipe.config.get("default_edit_image_top_k")
    return {
        "t2i_guidance": float(pipe.config.get("default_guidance_scale", T2I_GUIDANCE)),
        "t2i_image_top_k": clamp_int(scheduler_top_k, IMAGE_TOP_K_RANGE, T2I_IMAGE_TOP_K),
        "edit_guidance": EDIT_GUIDANCE,
        "edit_image_top_k": clamp_int(edit_top_k, IMAGE_TOP_K_RANGE, EDIT_IMAGE_TOP_K),
    }


class DemoBackend:
    def __init__(self, pipe_or_folder: Any, device: str | None = None, output_dir: str | Path | None = None):
        self.pipe = load_pipeline(pipe_or_folder, device)
        self.edit_pipe = LuminaMGPTEditPipeline.from_pipe(self.pipe)
        for p in (self.pipe, self.edit_pipe):
            p.set_progress_bar_config(disable=True)
        config = self.pipe.scheduler.config
        self.schedulers = {"AR": LuminaMGPTARScheduler.from_config(config),
                           "Jacobi": LuminaMGPTJacobiScheduler.from_config(config)}
        self.defaults = sampling_defaults(self.pipe)
        self.sizes = allowed_sizes(self.pipe.image_processor.buckets, self.pipe.config.default_size)
        self.size_choices = [size_label(h, w) for h, w in self.sizes]
        self.model_name = str(getattr(self.pipe, "name_or_path", None) or "")
        self.lock = threading.Lock()
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="lumina-mgpt-demo-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ files
    def save_png(self, image, settings: dict) -> str:
        """Write `image` as a PNG with `settings` as JSON under the text key "lumina-mgpt"; returns its path."""
        info = PngInfo()
        info.add_text(PNG_METADATA_KEY, json.dumps({**settings, "model": self.model_name}))
        path = self.output_dir / f"{uuid.uuid4().hex}.png"
        image.save(path, pnginfo=info)
        _keep_newest(self.output_dir, MAX_SAVED_FILES)
        return str(path)

    # ------------------------------------------------------------------ text to image
    def text_to_image(
        self, prompt: str, size: str | None, seed: Any, randomize_seed: bool, guidance_scale: Any,
        image_top_k: Any, temperature: Any, scheduler: str, num_images: Any,
    ) -> Iterator[tuple[list, list[str] | None, int, str]]:
        """Yield (gallery images, PNG files or None, seed used, status): previews row by row, then the result."""
        prompt = clean_text(prompt)
        if not prompt:
            raise ValueError("enter a prompt")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
        height, width = parse_size(size, self.sizes)
        seed = _seed(seed, randomize_seed)
        settings = {
            "prompt": prompt, "height": height, "width": width, "seed": seed, "scheduler": scheduler.lower(),
            "guidance_scale": clamp(guidance_scale, GUIDANCE_RANGE, self.defaults["t2i_guidance"]),
            "image_top_k": clamp_int(image_top_k, IMAGE_TOP_K_RANGE, self.defaults["t2i_image_top_k"]),
            "temperature": clamp(temperature, TEMPERATURE_RANGE, 1.0),
        }
        count = clamp_int(num_images, (1, MAX_IMAGES), 1)
        width_latents = width // self.pipe.image_processor.config.downsample_factor
        total_rows = height // self.pipe.image_processor.config.downsample_factor

        def work(emit, cancelled):
            shown = [0]

            def on_step(pipe, step, num_tokens, callback_kwargs):
                if cancelled.is_set():
                    raise GenerationCancelled("the request was abandoned")
                tokens = callback_kwargs["tokens"]
                rows = finished_rows(tokens, width_latents)
                if min(rows) > shown[0] and min(rows) < total_rows:  # a new row for every image
                    shown[0] = min(rows)
                    emit((tokens, rows))
                return callback_kwargs

            self.pipe.scheduler = self.schedulers[scheduler]
            return self.pipe(
                prompt, height=height, width=width, guidance_scale=settings["guidance_scale"],
                num_images_per_prompt=count, generator=_generator(seed), image_top_k=settings["image_top_k"],
                temperature=settings["temperature"], callback_on_step_end=on_step,
                callback_on_step_end_tensor_inputs=["tokens"],
            )

        for kind, value in stream_from_worker(self.lock, work):
            if kind == "update":
                tokens, rows = value
                yield partial_images(self.pipe, tokens, rows, height, width), None, seed, \
                    f"decoding: row {min(rows)} of {total_rows}"
            else:
                files = [self.save_png(im, {**settings, "index": i, "num_forward_passes": value.num_forward_passes})
                         for i, im in enumerate(value.images)]
                yield files, files, seed, f"done: {count} image(s) of {height}x{width}, seed {seed}, " \
                    f"{value.num_forward_passes} forward passes"

    # ------------------------------------------------------------------ edit / Omni
    def edit(
        self, image: Any, task: str, prompt: str, seed: Any, guidance_scale: Any, image_top_k: Any,
        continue_last: bool, session: EditSession | None,
    ) -> tuple[str, EditSession, list[str], str]:
        """Run one edit turn; returns (result PNG, the session with this turn, the session's results, status)."""
        session = session or EditSession()
        history = session.history if continue_last else None
        if continue_last and history is None:
            raise ValueError("there is no earlier result to continue from; untick 'continue' or run a first edit")
        if history is None and image is None:
            raise ValueError("upload an image to edit")
        if history is not None and len(session.outputs) >= MAX_TURNS:
            raise ValueError(f"this conversation has {MAX_TURNS} turns, the most the demo keeps; "
                             "press 'New conversation'")
        valid = [value for _, value in TASK_CHOICES]
        if task not in valid:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(valid)}")
        needs_prompt = task != DENOISE_TASK and OMNI_TASKS[task].needs_prompt
        prompt = clean_text(prompt) if needs_prompt else None
        seed = clamp_int(seed, SEED_RANGE, 0)
        settings = {
            "task": task, "prompt": prompt, "seed": seed, "continued": history is not None,
            "guidance_scale": clamp(guidance_scale, GUIDANCE_RANGE, self.defaults["edit_guidance"]),
            "image_top_k": clamp_int(image_top_k, IMAGE_TOP_K_RANGE, self.defaults["edit_image_top_k"]),
        }
        common = {"history": history, "generator": _generator(seed), "guidance_scale": settings["guidance_scale"],
                  "image_top_k": settings["image_top_k"]}
        new_image = None if history is not None else image
        with self.lock:
            if task == DENOISE_TASK:
                out = self.edit_pipe.denoise(new_image, **common)
            else:
                out = self.edit_pipe(image=new_image, prompt=prompt or None, task=task, **common)
        result = out.images[0]
        path = self.save_png(result, {**settings, "height": result.height, "width": result.width,
                                      "num_forward_passes": out.num_forward_passes})
        outputs = [*session.outputs, path] if history is not None else [path]
        status = f"turn {len(outputs)}: {task}, {result.height}x{result.width}, {out.num_forward_passes} forward passes"
        return path, EditSession(out.histories[0], outputs), outputs, status

    # ------------------------------------------------------------------ chat
    def chat(
        self, message: dict | None, messages: list | None, history: ChatHistory | None, max_new_tokens: Any,
        text_top_k: Any, temperature: Any, allow_images: bool, image_size: str | None, seed: Any,
    ) -> Iterator[tuple[list, ChatHistory | None]]:
        """Answer one message; yield (chatbot messages, chat history) as the text streams, images at the end.

        `image_size` fixes the size of answer images ("HEIGHTxWIDTH"); `AUTO_SIZE` (or None) lets the model choose.
        """
        message = message or {}
        text = clean_text(message.get("text"))
        files = [_file_path(f) for f in message.get("files") or []]
        if not text and not files:
            raise ValueError("type a message (and attach images if you like)")
        if len(files) > MAX_CHAT_IMAGES:
            raise ValueError(f"attach at most {MAX_CHAT_IMAGES} images to one message, got {len(files)}")
        if history is not None and sum(m.role == "gpt" for m in history.messages) >= MAX_TURNS:
            raise ValueError(f"this conversation has {MAX_TURNS} answers, the most the demo keeps; press 'Clear'")
        options = {
            "max_new_tokens": clamp_int(max_new_tokens, MAX_NEW_TOKENS_RANGE, CHAT_MAX_NEW_TOKENS),
            "text_top_k": clamp_int(text_top_k, TEXT_TOP_K_RANGE, 5),
            "temperature": clamp(temperature, TEMPERATURE_RANGE, 1.0),
            "allow_images": bool(allow_images),
            **self._answer_size(image_size),
            "generator": _generator(clamp_int(seed, SEED_RANGE, 0)),
        }
        question = [*({"path": f} for f in files), *([text] if text else [])]
        shown = [*(messages or []), {"role": "user", "content": question}]

        def work(emit, cancelled):
            stream = self.edit_pipe.chat(text, images=files or None, history=history, stream=True, **options)
            answer = ""
            for piece in stream:
                answer += piece
                emit(answer)
            return stream.result

        for kind, value in stream_from_worker(self.lock, work):
            if kind == "update":
                yield [*shown, {"role": "assistant", "content": _display_text(value)}], history
            else:
                yield [*shown, {"role": "assistant", "content": self._answer_content(value)}], value.history

    def _answer_size(self, image_size: str | None) -> dict:
        if not image_size or image_size == AUTO_SIZE:
            return {}
        height, width = parse_size(image_size, self.sizes)
        return {"height": height, "width": width}

    def _answer_content(self, result) -> list:
        """The answer as chat content: text pieces with each `<|image|>` replaced by its image file."""
        parts = result.text.split(IMAGE_PLACEHOLDER)
        content: list = []
        for i, part in enumerate(parts):
            if part.strip():
                content.append(_display_text(part))
            if i < len(result.images):
                content.append({"path": self.save_png(result.images[i], {"chat_answer_image": i})})
        return content or [_display_text("(empty answer)")]


def _display_text(text: str) -> str:
    """Model text for the chat window: special tokens like `<reserved08430>` stay visible (escaped), image
    placeholders of an answer still streaming read "[image]"."""
    return html.escape(text.replace(IMAGE_PLACEHOLDER, "[image]"), quote=False)
