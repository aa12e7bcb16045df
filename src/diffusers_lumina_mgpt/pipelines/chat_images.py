"""Image in and image out of a chat: inputs checked and VQ-encoded into token blocks, blocks decoded
to the requested output type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..image_processor import load_image
from ..image_tokens import decode_image_block, encode_image_block
from ..vq import vq_encode_codes

CHAT_OUTPUT_TYPES = ("pil", "np", "pt", "tokens")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _check_image_input(image: Any, index: int) -> None:
    """Reject inputs `load_image` would convert silently into garbage."""
    if isinstance(image, PIL.Image.Image) and image.mode in _HIGH_DEPTH_MODES:
        raise ValueError(
            f"image {index} has PIL mode {image.mode!r} (16-bit / 32-bit single channel), which cannot be "
            "converted to 8-bit RGB without a value range; scale it to 0..255 and convert('RGB') first"
        )
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        raise ValueError(
            f"image {index} is a batch of shape {tuple(image.shape)}; pass one (C, H, W) tensor per image in a list"
        )
    if isinstance(image, np.ndarray) and image.ndim == 4:
        raise ValueError(f"image {index} is a batch of shape {image.shape}; pass one (H, W, C) array per image")


def encode_image(pipe, image: Any, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """One image -> its token block `BOI, H, W, (codes, NEWLINE) x h, EOI` (1-D LongTensor).

    The image goes to the bucket of the pipeline's `default_size` that keeps most of it (or to
    `height` x `width`), is centre-cropped, VQ-encoded and written as a block. A 1-D LongTensor that
    already is a block is validated and returned as is. Paths, PIL, numpy (H, W, C) and torch
    (C, H, W) inputs are accepted (floats in [0, 1]).
    """
    if isinstance(image, torch.Tensor) and image.dim() == 1:
        if image.dtype.is_floating_point:
            raise ValueError("a 1-D tensor is read as an image token block and must hold integer token ids")
        decode_image_block(image, pipe.vocab, latents_per_grid=pipe.image_processor.latents_per_grid)
        return image.long().cpu()
    _check_image_input(image, 0)
    if isinstance(image, (str, Path)):
        image = load_image(image)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)  # (1, 3, H, W) in [-1, 1]
    codes = vq_encode_codes(pipe.vqvae, pixels.to(pipe._execution_device))  # (1, h, w)
    return encode_image_block(codes[0].cpu(), pipe.vocab, latents_per_grid=pipe.image_processor.latents_per_grid)


def encode_images(pipe, images: Any) -> list[torch.Tensor]:
    """A single image or a list of images -> their token blocks (each at its own bucket)."""
    if images is None:
        return []
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    blocks = []
    for i, image in enumerate(items):
        _check_image_input(image, i)
        try:
            blocks.append(encode_image(pipe, image))
        except (ValueError, FileNotFoundError) as err:
            if len(items) == 1:
                raise
            raise type(err)(f"image {i}: {err}") from err
    return blocks


def block_size(pipe, block: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of an image token block."""
    lpg = pipe.image_processor.latents_per_grid
    h_lat, w_lat = decode_image_block(block, pipe.vocab, latents_per_grid=lpg).shape
    f = pipe.image_processor.config.downsample_factor
    return h_lat * f, w_lat * f


def decode_blocks(pipe, blocks: Sequence[torch.Tensor], output_type: str) -> list:
    """Image token blocks -> a list of images ("pil", "np" (H, W, 3), "pt" (3, H, W) or the blocks)."""
    if output_type not in CHAT_OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {CHAT_OUTPUT_TYPES}, got {output_type!r}")
    if output_type == "tokens":
        return list(blocks)
    # one block at a time: the images of a conversation may have different sizes
    return [pipe.decode_image_tokens([block], output_type)[0] for block in blocks]
