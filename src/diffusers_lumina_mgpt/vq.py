"""The `vqvae` component: Chameleon's VQGAN image tokenizer as a diffusers model, plus code helpers.

Chameleon (and so Lumina-mGPT) turns images into grids of codebook indices with a taming-style
VQGAN: encoder -> `quant_conv` -> nearest codebook entry -> `post_quant_conv` -> decoder.
diffusers' own `VQModel` (Encoder/Decoder of `vae.py`, `UNetMidBlock2D` attention, `Downsample2D`
with (0, 1, 0, 1) padding, nearest x2 upsampling) computes exactly that once the weights are
renamed (`vq_convert.py`); the parity tests check it against transformers' `ChameleonVQVAE`
encoder and taming's `Decoder`.

`ChameleonVQModel` is `VQModel` plus two config fields: `has_decoder` (transformers' Chameleon
checkpoints carry only the encoder half (`model.vqmodel.*`), and a model converted from them must
say so in its saved config instead of carrying a randomly initialised decoder) and `pixel_norm`
(per-pixel normalisation for tokenizers trained here, so a code depends only on nearby pixels), and
`cell_encoder` (each cell of the code grid encoded on its own, so a code depends on its cell's pixels alone) and
`cell_decoder` (each code decoded to its cell on its own, so one code always draws the same pixels). Everything else
(downsample factor, channels, codebook size) is plain `VQModel` config, so small tokenizers
(downsample 8, 512 codes) are the same class.

The helpers below are what pipelines code against; they work for any `VQModel`:

- `vq_encode_codes(vqvae, pixels)`: pixels (B, 3, H, W) in [-1, 1] -> codes (B, H/f, W/f)
- `vq_decode_codes(vqvae, codes)`: codes (B, h, w) -> pixels (B, 3, h*f, w*f), NOT clamped
- `vq_pixels_to_uint8(pixels)`: Lumina-mGPT's exact post-processing to uint8 (clamp, truncate)
- `vq_downsample_factor(vqvae)`, `vq_num_codes(vqvae)`
"""

from __future__ import annotations

import torch
from diffusers import VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' loader looks the base class up here
from diffusers.utils.accelerate_utils import apply_forward_hook

from . import diffusers_compat

diffusers_compat.install()

__all__ = [
    "ChameleonVQModel",
    "PixelNorm",
    "vq_decode_codes",
    "vq_downsample_factor",
    "vq_encode_codes",
    "vq_nearest_codes",
    "check_can_decode",
    "vq_num_codes",
    "vq_pixels_to_uint8",
]

_ENCODER_ONLY_MESSAGE = (
    "This ChameleonVQModel is encoder-only (config.has_decoder is False): it was converted from the "
    "`model.vqmodel.*` weights of a transformers Chameleon checkpoint, which carry no decoder. To decode "
    "codes to pixels, load a decoder checkpoint instead: "
    "`diffusers_lumina_mgpt.vq_convert.load_meta_vqgan('tokenizer/vqgan.ckpt', 'tokenizer/vqgan.yaml')` "
    "(Meta's Chameleon release ships both files); from the command line, re-run `lumina-mgpt convert` with "
    "--vqgan-ckpt and --vqgan-config. Pipelines can still return `output_type='tokens'`."
)


class ChameleonVQModel(VQModel):
    r"""
    diffusers `VQModel` holding Chameleon's VQGAN, optionally without its decoder.

    All arguments except `has_decoder`, `pixel_norm`, `cell_encoder` and `cell_decoder` are `VQModel`'s. Chameleon's 16x tokenizer is
    `block_out_channels=(128, 128, 256, 256, 512)`, `layers_per_block=2`, `latent_channels=256`,
    `vq_embed_dim=256`, `num_vq_embeddings=8192`; build one from Meta's files with
    `vq_convert.load_meta_vqgan`.

    Parameters:
        has_decoder (`bool`, defaults to `True`):
            `False` for encoder-only models (converted from a transformers Chameleon checkpoint): the
            decoder is not built, is not saved, and `decode` raises a `ValueError` that says which
            checkpoint to load instead. Stored in the config, so it survives `save_pretrained` /
            `from_pretrained`.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 1.0,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = True,
        force_upcast: bool = False,
        has_decoder: bool = True,
        pixel_norm: bool = False,
        cell_encoder: bool = False,
        cell_decoder: bool = False,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            sample_size=sample_size,
            num_vq_embeddings=num_vq_embeddings,
            norm_num_groups=norm_num_groups,
            vq_embed_dim=vq_embed_dim,
            scaling_factor=scaling_factor,
            norm_type=norm_type,
            mid_block_add_attention=mid_block_add_attention,
            lookup_from_codebook=lookup_from_codebook,
            force_upcast=force_upcast,
        )
        if not has_decoder:
            # post_quant_conv stays: transformers' checkpoints store it next to the encoder.
            self.decoder = None
        if cell_decoder and norm_type == "spatial":
            raise ValueError("cell_decoder decodes each code alone, which a spatial norm (conditioned on the whole "
                             "latent grid) cannot; use norm_type='group'")
        if pixel_norm:
            for part in (self.encoder, self.decoder):
                if part is not None:
                    _use_pixel_norm(part)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """`VQModel.encode`; with `cell_encoder`, each f x f cell of `x` (f the downsample factor) is encoded
        on its own, so its code is a function of that cell's pixels alone and never of its neighbours. Without
        autograd, a cell that occurs several times is encoded once."""
        if not self.config.cell_encoder:
            return super().encode(x, return_dict=return_dict)
        f = vq_downsample_factor(self)
        b, c, height, width = x.shape
        if height % f or width % f:
            raise ValueError(f"a cell encoder needs image sides that are multiples of {f}, got {height}x{width}")
        cells = _to_cells(x, f)
        if torch.is_grad_enabled():  # training: every cell (sharing encodings gained nothing there, measured)
            encoded = super().encode(cells).latents
        else:  # each distinct cell once: pictures repeat cells (background, flat colour) many times over
            unique, inverse = torch.unique(cells.flatten(1), dim=0, return_inverse=True)
            encoded = super().encode(unique.view(-1, *cells.shape[1:])).latents[inverse]
        latents = _from_cells(encoded, b, height // f, width // f)
        return VQEncoderOutput(latents=latents) if return_dict else (latents,)

    @apply_forward_hook
    def decode(
        self,
        h: torch.Tensor,
        force_not_quantize: bool = False,
        return_dict: bool = True,
        shape=None,
    ) -> DecoderOutput | torch.Tensor:
        """`VQModel.decode`; with `cell_decoder`, each code is decoded to its f x f cell on its own, so a code
        draws the same pixels wherever it stands and whatever its neighbours are."""
        if not self.config.has_decoder:
            raise ValueError(_ENCODER_ONLY_MESSAGE)
        if not self.config.cell_decoder:
            return super().decode(h, force_not_quantize=force_not_quantize, return_dict=return_dict, shape=shape)
        if not force_not_quantize:
            quant = self.quantize(h)[0]
        elif self.config.lookup_from_codebook:  # h holds codes (B, h, w); shape is (B, h, w, D)
            quant = self.quantize.get_codebook_entry(h, shape)
        else:
            quant = h
        b, _, rows, cols = quant.shape
        pixels = _from_cells(self.decoder(self.post_quant_conv(_to_cells(quant, 1))), b, rows, cols)
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)


def _to_cells(x: torch.Tensor, f: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * H/f * W/f, C, f, f): each f x f cell as an image of its own, in raster order."""
    b, c, height, width = x.shape
    h, w = height // f, width // f
    return x.reshape(b, c, h, f, w, f).permute(0, 2, 4, 1, 3, 5).reshape(b * h * w, c, f, f)


def _from_cells(cells: torch.Tensor, b: int, rows: int, cols: int) -> torch.Tensor:
    """The inverse of `_to_cells`: (b * rows * cols, C, s, s) -> (b, C, rows * s, cols * s)."""
    c, s = cells.shape[1], cells.shape[-1]
    return cells.reshape(b, rows, cols, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * s, cols * s)


class PixelNorm(torch.nn.Module):
    """Layer norm over dim 1 (channels) of a (B, C, ...) tensor, each position on its own; holds
    `weight` and `bias` of shape (C,) like the `GroupNorm` it replaces."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = torch.nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)


def _use_pixel_norm(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm):
            setattr(module, name, PixelNorm(child.num_channels, child.eps, child.affine))
        else:
            _use_pixel_norm(child)


def vq_downsample_factor(vqvae: VQModel) -> int:
    """Pixels per code along each side: 2 ** (number of encoder levels - 1), e.g. 16 for Chameleon."""
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


def vq_num_codes(vqvae: VQModel) -> int:
    """Codebook size, e.g. 8192 for Chameleon."""
    return int(vqvae.config.num_vq_embeddings)


def _param_dtype_device(vqvae: VQModel) -> tuple[torch.dtype, torch.device]:
    weight = vqvae.quantize.embedding.weight
    return weight.dtype, weight.device


def vq_nearest_codes(codebook: torch.Tensor, latents: torch.Tensor) -> torch.LongTensor:
    """Index of the nearest codebook row for every latent vector.

    codebook: (N, D); latents: (B, D, h, w) -> codes (B, h, w).
    Uses the same expression as Chameleon / taming / transformers (|z|^2 + |e|^2 - 2 z.e, then
    argmin) so that near-ties resolve the same way; diffusers' `VectorQuantizer` uses `torch.cdist`.
    Half-precision inputs are compared in float32 (bf16 distances would tie far too often).
    """
    if latents.dtype in (torch.float16, torch.bfloat16):
        latents, codebook = latents.float(), codebook.float()
    batch, dim, height, width = latents.shape
    flat = latents.permute(0, 2, 3, 1).reshape(-1, dim)  # (B*h*w, D)
    distances = (
        torch.sum(flat**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", flat, codebook.transpose(0, 1))
    )  # (B*h*w, N)
    return torch.argmin(distances, dim=1).reshape(batch, height, width)


@torch.no_grad()
def vq_encode_codes(vqvae: VQModel, pixels: torch.Tensor) -> torch.LongTensor:
    """Encode images to code grids.

    pixels: (B, 3, H, W) in [-1, 1] (Lumina-mGPT: x / 127.5 - 1 after compositing RGBA onto white),
    H and W multiples of `vq_downsample_factor(vqvae)` -> codes (B, H/f, W/f), int64 in [0, N).
    """
    factor = vq_downsample_factor(vqvae)
    in_channels = int(vqvae.config.in_channels)
    if pixels.ndim != 4 or pixels.shape[1] != in_channels:
        raise ValueError(
            f"vq_encode_codes expects pixels of shape (batch, {in_channels}, height, width), got "
            f"{tuple(pixels.shape)}; add a batch dimension with `pixels[None]` or move channels first."
        )
    height, width = pixels.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"Image size {height}x{width} (HxW) is not a multiple of the tokenizer's downsample factor {factor}; "
            f"resize or crop to e.g. {max(factor, height // factor * factor)}x{max(factor, width // factor * factor)}."
        )
    dtype, device = _param_dtype_device(vqvae)
    latents = vqvae.encode(pixels.to(device=device, dtype=dtype)).latents  # (B, D, H/f, W/f)
    return vq_nearest_codes(vqvae.quantize.embedding.weight, latents)


def check_can_decode(vqvae: VQModel) -> None:
    """ValueError (saying how to get a decoder) when `vqvae` is an encoder-only `ChameleonVQModel`."""
    if isinstance(vqvae, ChameleonVQModel) and not vqvae.config.has_decoder:
        raise ValueError(_ENCODER_ONLY_MESSAGE)


def vq_decode_codes(vqvae: VQModel, codes: torch.LongTensor) -> torch.Tensor:
    """Decode code grids to pixels.

    codes: (B, h, w) integers in [0, N) -> pixels (B, 3, h*f, w*f) in the model dtype, roughly in
    [-1, 1] but NOT clamped (the decoder can overshoot); use `vq_pixels_to_uint8` for Lumina-mGPT's
    exact uint8 conversion, or diffusers' `VaeImageProcessor.postprocess` (which clamps).
    Runs with autograd as the caller has it set (wrap in `torch.no_grad()` for inference).
    Raises `ValueError` for an encoder-only model.
    """
    check_can_decode(vqvae)
    if codes.ndim != 3:
        raise ValueError(
            f"vq_decode_codes expects codes of shape (batch, rows, columns), got {tuple(codes.shape)}; "
            "add a batch dimension with `codes[None]`."
        )
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"vq_decode_codes expects integer codes, got dtype {codes.dtype}; use `codes.long()`.")
    num_codes = vq_num_codes(vqvae)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
        raise ValueError(
            f"Codes must lie in [0, {num_codes}) for this tokenizer, got values in "
            f"[{int(codes.min())}, {int(codes.max())}]; map image token ids to codes with the vocabulary first."
        )
    _, device = _param_dtype_device(vqvae)
    codes = codes.to(device=device, dtype=torch.long)
    if vqvae.config.lookup_from_codebook:  # VQModel looks the codes up itself
        shape = (*codes.shape, vqvae.quantize.embedding.weight.shape[1])  # (B, h, w, D)
        return vqvae.decode(codes, force_not_quantize=True, shape=shape).sample
    quant = vqvae.quantize.embedding(codes).permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)
    return vqvae.decode(quant, force_not_quantize=True).sample


def vq_pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Lumina-mGPT's (Chameleon's `_pil_from_chw_tensor`) post-processing, bit for bit.

    pixels (..., C, H, W) float -> uint8 (..., H, W, C): clamp to [-1, 1], (x + 1) / 2, * 255, then
    truncate (numpy `astype(uint8)`, not rounding). Computed in float32 like the reference.
    """
    scaled = (torch.clamp(pixels.detach().float(), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return scaled.to(torch.uint8).movedim(-3, -1)
