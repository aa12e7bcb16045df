"""Pixels in and out of a Lumina-mGPT pipeline: resolution buckets, resize/crop, [-1, 1] tensors.

Lumina-mGPT encodes an image at one of a fixed list of sizes ("resolution buckets") for a target
size T: walking the staircase of (w, h) grid counts with w * h <= (T / 32)^2 from wide to tall and
keeping aspect ratios <= 4 (49 sizes for 512, 73 for 768, 97 for 1024). An image goes to the bucket
that keeps the largest fraction of it, is halved with BOX while at least twice the bucket, resized
with BICUBIC to cover it, cropped, composited onto white if it has transparency, and scaled to
[-1, 1] as x / 127.5 - 1. This module reproduces that (Lumina's `var_center_crop` / `center_crop`
and Chameleon's white compositing) in `LuminaImageProcessor`, in the spirit of diffusers'
`VaeImageProcessor`, and adds `check_size` for requested generation sizes.

Differences from Lumina-mGPT's item processor, on purpose:
* Lumina always crops at a random position (`random.randint`); here the crop is centred unless
  `crop="random"` is asked for, with an explicit `torch.Generator`.
* Lumina feeds pixels through transformers' `ChameleonImageProcessor` (x * 0.0078 - 1); Meta's
  Chameleon tokenizer and the facts use x / 127.5 - 1, the default here. `rescale_factor=0.0078`
  reproduces Lumina's training inputs exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import CONFIG_NAME

from .image_tokens import image_block_length

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | Path


def resolution_buckets(target_size: int, patch_size: int = 32, max_aspect_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Lumina-mGPT's (width, height) sizes for a target size, wide to tall.

    With N = (target_size // patch_size)^2 grids, walk (wp, hp) from (N, 1): raise hp while
    (hp + 1) * wp <= N, else lower wp; keep every visited point whose aspect ratio is <= max_aspect_ratio.
    """
    if patch_size < 1 or target_size < patch_size:
        raise ValueError(f"target_size ({target_size}) must be at least one patch ({patch_size} px)")
    if max_aspect_ratio < 1.0:
        raise ValueError(f"max_aspect_ratio must be >= 1, got {max_aspect_ratio}")
    num_patches = (target_size // patch_size) ** 2
    sizes: list[tuple[int, int]] = []
    wp, hp = num_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_aspect_ratio:
            sizes.append((wp * patch_size, hp * patch_size))
        if (hp + 1) * wp <= num_patches:
            hp += 1
        else:
            wp -= 1
    return sizes


def kept_fraction(width: int, height: int, bucket: tuple[int, int]) -> float:
    """Fraction of a width x height image a bucket (w, h) keeps after cover-resize and crop."""
    sw, sh = bucket[0] / width, bucket[1] / height
    return min(sw, sh) / max(sw, sh)


def choose_bucket(
    width: int,
    height: int,
    buckets: Sequence[tuple[int, int]],
    top_k: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """The bucket keeping the largest fraction of the image; ties go to the larger (w, h) as in
    Lumina's sort. top_k > 1 picks uniformly among the best top_k (Lumina's `random_top_k`)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has zero size ({width} x {height})")
    if not buckets:
        raise ValueError("no resolution buckets to choose from")
    ranked = sorted(((kept_fraction(width, height, b), tuple(b)) for b in buckets), reverse=True)
    k = max(1, min(int(top_k), len(ranked)))
    index = 0 if k == 1 else int(torch.randint(k, (1,), generator=generator))
    return ranked[index][1]


def resize_and_crop(
    image: PIL.Image.Image,
    size: tuple[int, int],
    crop: Literal["center", "random"] = "center",
    generator: torch.Generator | None = None,
) -> PIL.Image.Image:
    """Halve with BOX while >= 2x the (width, height) `size`, BICUBIC-resize to cover it, crop."""
    cw, ch = size
    while image.width >= 2 * cw and image.height >= 2 * ch:
        image = image.resize((image.width // 2, image.height // 2), resample=PIL.Image.BOX)
    scale = max(cw / image.width, ch / image.height)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), resample=PIL.Image.BICUBIC
    )
    dx, dy = image.width - cw, image.height - ch
    if crop == "center":
        left, top = int(round(dx / 2.0)), int(round(dy / 2.0))
    elif crop == "random":  # inclusive bounds, like random.randint in Lumina
        left = int(torch.randint(dx + 1, (1,), generator=generator))
        top = int(torch.randint(dy + 1, (1,), generator=generator))
    else:
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    return image.crop((left, top, left + cw, top + ch))


def whiten_transparency(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB image; transparency is blended onto white with Chameleon's formula (truncated to uint8)."""
    if image.mode == "RGB":
        return image
    rgba = np.array(image.convert("RGBA"))
    if not (rgba[:, :, 3] < 255).any():
        return image.convert("RGB")
    alpha = rgba[:, :, 3:4] / 255.0
    rgb = (1 - alpha) * 255 + alpha * rgba[:, :, :3]
    return PIL.Image.fromarray(rgb.astype("uint8"), "RGB")


def load_image(image: ImageInput, value_range: tuple[float, float] = (0.0, 1.0)) -> PIL.Image.Image | np.ndarray:
    """One image as a PIL image (RGB / RGBA) or, for float inputs, an (H, W, 3|4) float64 array in [0, 1].

    Accepts a file path, a PIL image, a numpy (H, W[, C]) array (uint8 0..255 or float in
    `value_range`) or a torch (C, H, W) tensor (uint8, or float in `value_range`); C is 1, 3 or 4.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (PIL.UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"cannot read {path} as an image ({err}); pass a PNG/JPEG/WebP file") from err
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image has zero size ({image.width} x {image.height})")
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB") if image.mode not in ("RGB", "RGBA") else image
    if isinstance(image, torch.Tensor):
        if image.dim() != 3:
            raise ValueError(f"a torch image must be (C, H, W) or a (B, C, H, W) batch, got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"unsupported image type {type(image).__name__}; pass a path, PIL image, numpy array or torch tensor"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, C) image with C in 1, 3, 4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has zero size ({image.shape[1]} x {image.shape[0]})")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype == np.uint8:
        return PIL.Image.fromarray(np.ascontiguousarray(image), "RGBA" if image.shape[2] == 4 else "RGB")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image arrays must be uint8 or float, got {image.dtype}")
    lo, hi = value_range
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if image.min() < lo - 1e-3 or image.max() > hi + 1e-3:
        raise ValueError(
            f"float image values span [{image.min():.3f}, {image.max():.3f}] but value_range is {value_range}; "
            "pass value_range=(-1, 1) for [-1, 1] images, or uint8 data"
        )
    return np.clip((image.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


class LuminaImageProcessor(ConfigMixin):
    """Resolution buckets, resize/crop and pixel scaling for Lumina-mGPT (see the module docstring).

    target_size: the model's resolution (512 / 768 / 1024). patch_size: pixels per grid token
    (32 for Chameleon's 16x VQGAN, 16 for a downsample-8 tokenizer). downsample_factor: pixels per
    latent. rescale_factor: pixels = uint8 * rescale_factor - 1.
    """

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(
        self,
        target_size: int = 512,
        patch_size: int = 32,
        downsample_factor: int = 16,
        max_aspect_ratio: float = 4.0,
        rescale_factor: float = 1 / 127.5,
    ) -> None:
        super().__init__()
        if patch_size % downsample_factor:
            raise ValueError(
                f"patch_size ({patch_size}) must be a multiple of downsample_factor ({downsample_factor})"
            )
        self.buckets = resolution_buckets(target_size, patch_size, max_aspect_ratio)

    @property
    def latents_per_grid(self) -> int:
        return self.config.patch_size // self.config.downsample_factor

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h_lat, w_lat) of an image of height x width pixels (both multiples of patch_size)."""
        self.check_size(height, width)
        return height // self.config.downsample_factor, width // self.config.downsample_factor

    def choose_size(
        self, image: ImageInput, top_k: int = 1, generator: torch.Generator | None = None
    ) -> tuple[int, int]:
        """(height, width) bucket for an image."""
        loaded = load_image(image) if not isinstance(image, (PIL.Image.Image, np.ndarray)) else image
        width, height = loaded.size if isinstance(loaded, PIL.Image.Image) else (loaded.shape[1], loaded.shape[0])
        w, h = choose_bucket(width, height, self.buckets, top_k, generator)
        return h, w

    # ------------------------------------------------------------------ validation
    def check_size(
        self,
        height: int,
        width: int,
        max_positions: int | None = None,
        prompt_length: int = 0,
        max_grid: int | None = None,
    ) -> tuple[int, int]:
        """Validate a requested generation size; returns (h_lat, w_lat).

        Raises ValueError listing the nearest valid (height, width) sizes when a side is not a positive
        multiple of patch_size, exceeds `max_grid` grids, or when prompt_length + the image block
        would exceed `max_positions`.
        """
        p = self.config.patch_size
        down = self.config.downsample_factor

        def fits(h: int, w: int) -> bool:
            if h < p or w < p or h % p or w % p:
                return False
            if max_grid is not None and max(h, w) // p > max_grid:
                return False
            if max_positions is not None and prompt_length + image_block_length(h // down, w // down) > max_positions:
                return False
            return True

        if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))):
            raise ValueError(f"height and width must be integers, got {height!r} and {width!r}")
        if fits(height, width):
            return height // down, width // down
        if height % p or width % p or height < p or width < p:
            reason = f"height and width must be positive multiples of {p} px"
        elif max_grid is not None and max(height, width) // p > max_grid:
            reason = f"a side of {max(height, width) // p} grids exceeds the vocabulary's {max_grid} grid tokens"
        else:
            need = prompt_length + image_block_length(height // down, width // down)
            reason = f"prompt ({prompt_length}) + image block needs {need} positions but the model has {max_positions}"
        nearest = self._nearest_sizes(max(height, p), max(width, p), fits)
        suggestion = ", ".join(f"{h}x{w}" for h, w in nearest) if nearest else "none (shorten the prompt)"
        raise ValueError(
            f"cannot generate height={height}, width={width}: {reason}. "
            f"Nearest valid sizes (height x width): {suggestion}"
        )

    def _nearest_sizes(self, height: int, width: int, fits: Any, count: int = 4) -> list[tuple[int, int]]:
        p = self.config.patch_size
        top = min(max(height, width) // p + 2, 256)  # at most 256 grids a side (8192 px at 32 px)
        candidates = [(i * p, j * p) for i in range(1, top + 1) for j in range(1, top + 1) if fits(i * p, j * p)]
        candidates.sort(key=lambda hw: (abs(math.log(hw[0] / height)) + abs(math.log(hw[1] / width)), hw))
        return candidates[:count]

    # ------------------------------------------------------------------ pixels in
    def preprocess(
        self,
        image: ImageInput | Sequence[ImageInput],
        height: int | None = None,
        width: int | None = None,
        crop: Literal["center", "random"] = "center",
        generator: torch.Generator | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> torch.Tensor:
        """Image(s) -> float32 (B, 3, H, W) in [-1, 1].

        Each image goes to its best bucket unless height and width are given; a batch must land on
        one size. Float inputs (numpy or torch) are read in `value_range` (default [0, 1], diffusers'
        convention; pass (-1, 1) for pipeline outputs); uint8 inputs are 0..255. A float image already
        at the output size skips resampling and keeps its precision.
        """
        if (height is None) != (width is None):
            raise ValueError("pass both height and width, or neither to use the best resolution bucket")
        if isinstance(image, torch.Tensor) and image.dim() == 4:
            images: list[Any] = list(image)
        elif isinstance(image, np.ndarray) and image.ndim == 4:
            images = list(image)
        elif isinstance(image, (list, tuple)):
            images = list(image)
        else:
            images = [image]
        if not images:
            raise ValueError("no images to preprocess")
        loaded = [load_image(im, value_range) for im in images]
        if height is not None:
            self.check_size(height, width)
            sizes = [(width, height)] * len(loaded)
        else:
            sizes = []
            for im in loaded:
                w0, h0 = im.size if isinstance(im, PIL.Image.Image) else (im.shape[1], im.shape[0])
                sizes.append(choose_bucket(w0, h0, self.buckets))
            if len(set(sizes)) > 1:
                raise ValueError(
                    f"images in this batch map to different sizes {sorted(set(sizes))} (width, height); "
                    "pass height and width, or preprocess them one at a time"
                )
        out = [self._to_pixels(im, size, crop, generator) for im, size in zip(loaded, sizes)]
        return torch.stack(out)

    def _to_pixels(
        self,
        image: PIL.Image.Image | np.ndarray,
        size: tuple[int, int],
        crop: Literal["center", "random"],
        generator: torch.Generator | None,
    ) -> torch.Tensor:  # (3, H, W) float32
        rescale = self.config.rescale_factor
        if isinstance(image, np.ndarray):
            if (image.shape[1], image.shape[0]) == size:  # already the right size: stay in float
                rgb = image[:, :, :3]
                if image.shape[2] == 4:
                    alpha = image[:, :, 3:4]
                    rgb = (1 - alpha) + alpha * rgb
                pixels = rgb * 255.0 * rescale - 1.0
                return torch.from_numpy(pixels).permute(2, 0, 1).float()
            mode = "RGBA" if image.shape[2] == 4 else "RGB"
            image = PIL.Image.fromarray(np.round(image * 255.0).astype(np.uint8), mode)
        image = whiten_transparency(resize_and_crop(image, size, crop, generator))
        pixels = np.asarray(image, dtype=np.float64) * rescale - 1.0  # (H, W, 3)
        return torch.from_numpy(pixels).permute(2, 0, 1).float()

    # ------------------------------------------------------------------ pixels out
    @staticmethod
    def postprocess(
        pixels: torch.Tensor, output_type: Literal["pil", "np", "pt"] = "pil"
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Decoder output in [-1, 1], (B, 3, H, W) or (3, H, W), to images.

        "pt": float (B, 3, H, W) in [0, 1]; "np": float32 (B, H, W, 3) in [0, 1]; "pil": list of RGB
        images, uint8 = floor((clamp(x, -1, 1) + 1) / 2 * 255) as Lumina-mGPT / Chameleon convert.
        """
        if not isinstance(pixels, torch.Tensor):
            raise ValueError(f"postprocess expects a torch tensor in [-1, 1], got {type(pixels).__name__}")
        if pixels.dim() == 3:
            pixels = pixels[None]
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) or (3, H, W) pixels, got shape {tuple(pixels.shape)}")
        unit = (pixels.detach().float().clamp(-1.0, 1.0) + 1.0) / 2.0
        if output_type == "pt":
            return unit
        if output_type == "np":
            return unit.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            arrays = (unit.permute(0, 2, 3, 1).cpu() * 255).to(torch.uint8).numpy()
            return [PIL.Image.fromarray(a, "RGB") for a in arrays]
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
