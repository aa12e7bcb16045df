"""Run a model call in a worker thread and stream what it reports: progressive image previews, chat text.

`stream_from_worker` runs `work(emit, cancelled)` in a thread that holds the model lock and yields
`("update", value)` for what `work` emits, then `("done", result)`; an exception in the worker is
raised in the consumer. Updates are snapshots (the decided tokens so far, the text so far), so when
the consumer is slower than the model only the newest waiting one is yielded: previews throttle
themselves. If the consumer stops early (the browser left), `cancelled` is set for `work` to check.

`finished_rows` and `partial_images` turn the `tokens` of `callback_on_step_end` (body tokens decided
so far, -1 where undecided) into preview images: the finished latent rows are decoded by the VQ
decoder and the unfinished part is grey.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import PIL.Image
import torch

from ..image_tokens import decode_image_block
from ..vq import vq_decode_codes

PENDING_GREY = (128, 128, 128)  # colour of the rows not decided yet


class GenerationCancelled(Exception):
    """Raised inside a pipeline callback to stop a generation whose viewer has gone."""


def stream_from_worker(
    lock: threading.Lock, work: Callable[[Callable[[Any], None], threading.Event], Any]
) -> Iterator[tuple[str, Any]]:
    """Yield ("update", newest emitted value) while `work` runs (holding `lock`), then ("done", its result)."""
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def emit(value: Any) -> None:
        events.put(("update", value))

    def run() -> None:
        try:
            with lock:
                result = work(emit, cancelled)
            events.put(("done", result))
        except BaseException as err:  # handed to the consumer, which raises it
            events.put(("error", err))

    threading.Thread(target=run, name="lumina-mgpt-demo-worker", daemon=True).start()
    try:
        while True:
            kind, value = events.get()
            while kind == "update":  # skip to the newest waiting snapshot
                try:
                    kind, value = events.get_nowait()
                except queue.Empty:
                    break
                if kind != "update":
                    break
            if kind == "update":
                yield kind, value
            elif kind == "done":
                yield kind, value
                return
            else:
                raise value
    finally:
        cancelled.set()


def finished_rows(tokens: torch.Tensor, width_latents: int) -> list[int]:
    """Latent rows (codes and NEWLINE) fully decided at the start of each body in `tokens` (N, L)."""
    decided = (tokens >= 0).long().cumprod(dim=1).sum(dim=1)  # leading decided positions per image
    return (decided // (width_latents + 1)).tolist()


@torch.no_grad()
def partial_images(pipe, tokens: torch.Tensor, rows: list[int], height: int, width: int) -> list[PIL.Image.Image]:
    """Preview images of bodies (N, L) of which `rows[i]` latent rows are finished: those rows decoded,
    the rest grey."""
    factor = pipe.image_processor.config.downsample_factor
    lpg = pipe.image_processor.latents_per_grid
    width_latents = width // factor
    header = pipe.image_header(height, width)
    images = []
    for body, done in zip(tokens, rows):
        canvas = PIL.Image.new("RGB", (width, height), PENDING_GREY)
        if done > 0:
            block = torch.cat([header, body[: done * (width_latents + 1)].cpu()])
            codes = decode_image_block(block, pipe.vocab, latents_per_grid=lpg, lenient=True)[:done]
            pixels = vq_decode_codes(pipe.vqvae, codes[None])
            canvas.paste(pipe.image_processor.postprocess(pixels, "pil")[0], (0, 0))
        images.append(canvas)
    return images
