"""Convert Chameleon VQGAN weights into `ChameleonVQModel` (diffusers `VQModel` layout).

Two sources exist in the wild:

- Meta's tokenizer release: `vqgan.ckpt` (a Lightning checkpoint, weights under `state_dict`, taming
  key names `encoder.down.{i}.block.{j}...`, `decoder.up.{i}...`) plus `vqgan.yaml` (the `ddconfig`).
  `load_meta_vqgan` converts it to a full encoder + decoder model.
- transformers' Chameleon checkpoints: the same encoder weights under `model.vqmodel.*` and the
  architecture in `config.json` -> `vq_config`; no decoder. `load_chameleon_vq_encoder` reads just
  those tensors (memory-mapped, sharded or not) into an encoder-only model.

Both go through `taming_to_diffusers_state_dict`, an explicit key map; loading is exact: any missing
or unexpected key raises one `ValueError` that lists them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .vq import ChameleonVQModel

__all__ = [
    "chameleon_vq_config_to_ddconfig",
    "ddconfig_to_model_config",
    "load_chameleon_vq_encoder",
    "load_meta_vqgan",
    "load_taming_state_dict",
    "taming_to_diffusers_state_dict",
]

# Keys of Meta's Lightning checkpoint that only training used (GAN discriminator, LPIPS).
_TRAINING_ONLY_PREFIXES = ("loss.",)
_TRANSFORMERS_PREFIX = "model.vqmodel."


def ddconfig_to_model_config(
    ddconfig: dict[str, Any], n_embed: int, embed_dim: int, has_decoder: bool = True
) -> dict[str, Any]:
    """Taming `ddconfig` (+ quantizer sizes) -> `ChameleonVQModel` config kwargs.

    Raises `ValueError` for the taming options diffusers' Encoder/Decoder cannot express.
    """
    ch = int(ddconfig["ch"])
    ch_mult = [int(m) for m in ddconfig["ch_mult"]]
    if ch_mult[0] != 1:
        raise ValueError(
            f"ch_mult[0] must be 1 (got {ch_mult}): taming's conv_in outputs `ch` channels while diffusers' "
            "Encoder outputs block_out_channels[0]; only ch_mult starting with 1 converts exactly."
        )
    if ddconfig.get("double_z", False):
        raise ValueError("double_z must be false for a VQ tokenizer (true is a KL autoencoder's layout).")
    if not ddconfig.get("resamp_with_conv", True):
        raise ValueError("resamp_with_conv=false (average-pool resampling) is not supported; Chameleon uses convs.")
    if ddconfig.get("tanh_out", False) or ddconfig.get("give_pre_end", False):
        raise ValueError("tanh_out / give_pre_end are not supported; Chameleon's VQGAN uses neither.")
    if ddconfig.get("use_linear_attn", False) or ddconfig.get("attn_type", "vanilla") not in ("vanilla", "none"):
        raise ValueError(f"attn_type {ddconfig.get('attn_type')!r} is not supported; use 'vanilla' or 'none'.")
    resolution = int(ddconfig["resolution"])
    attn_resolutions = {int(r) for r in ddconfig.get("attn_resolutions") or []}
    levels = len(ch_mult)
    # level i works at resolution / 2**i, in the encoder and (mirrored) in the decoder
    has_attn = [resolution // 2**i in attn_resolutions for i in range(levels)]
    return {
        "in_channels": int(ddconfig["in_channels"]),
        "out_channels": int(ddconfig["out_ch"]),
        "down_block_types": tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in has_attn),
        "up_block_types": tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(has_attn)),
        "block_out_channels": tuple(ch * m for m in ch_mult),
        "layers_per_block": int(ddconfig["num_res_blocks"]),
        "latent_channels": int(ddconfig["z_channels"]),
        "sample_size": resolution,
        "num_vq_embeddings": int(n_embed),
        "norm_num_groups": 32,
        "vq_embed_dim": int(embed_dim),
        "mid_block_add_attention": ddconfig.get("attn_type", "vanilla") == "vanilla",
        "has_decoder": has_decoder,
    }


def chameleon_vq_config_to_ddconfig(vq_config: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """transformers `ChameleonVQVAEConfig` dict -> (taming ddconfig, n_embed, embed_dim)."""
    try:
        ddconfig = {
            "ch": vq_config["base_channels"],
            "ch_mult": vq_config["channel_multiplier"],
            "num_res_blocks": vq_config["num_res_blocks"],
            "z_channels": vq_config["latent_channels"],
            "in_channels": vq_config["in_channels"],
            "out_ch": vq_config["in_channels"],
            "resolution": vq_config["resolution"],
            "attn_resolutions": vq_config.get("attn_resolutions") or [],
            "attn_type": vq_config.get("attn_type", "vanilla"),
            "double_z": vq_config.get("double_latent", False),
        }
        return ddconfig, int(vq_config["num_embeddings"]), int(vq_config["embed_dim"])
    except KeyError as err:
        raise ValueError(f"config.json vq_config lacks {err}; it must be a transformers ChameleonVQVAEConfig.") from err


def _map_block(rest: str) -> str:
    """Inside one resnet / attention block: taming names -> diffusers names."""
    rest = rest.replace("nin_shortcut.", "conv_shortcut.")
    for old, new in (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")):
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _map_key(key: str, levels: int) -> str:
    """One taming key -> its diffusers key (unknown patterns pass through and fail validation)."""
    for part, top in (("encoder", "down"), ("decoder", "up")):
        if not key.startswith(part + "."):
            continue
        rest = key[len(part) + 1 :]
        if match := re.fullmatch(rf"{top}\.(\d+)\.(block|attn)\.(\d+)\.(.+)", rest):
            level, kind, idx, tail = match.groups()
            level = int(level) if part == "encoder" else levels - 1 - int(level)  # diffusers up_blocks are reversed
            blocks = f"{top}_blocks.{level}"
            if kind == "block":
                return f"{part}.{blocks}.resnets.{idx}.{_map_block(tail)}"
            return f"{part}.{blocks}.attentions.{idx}.{_map_block(tail)}"
        if match := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(.+)", rest):
            return f"{part}.down_blocks.{match[1]}.downsamplers.0.conv.{match[2]}"
        if match := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(.+)", rest):
            return f"{part}.up_blocks.{levels - 1 - int(match[1])}.upsamplers.0.conv.{match[2]}"
        if match := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
            return f"{part}.mid_block.resnets.{int(match[1]) - 1}.{_map_block(match[2])}"
        if rest.startswith("mid.attn_1."):
            return f"{part}.mid_block.attentions.0.{_map_block(rest[len('mid.attn_1.') :])}"
        if rest.startswith("norm_out."):
            return f"{part}.conv_norm_out.{rest[len('norm_out.') :]}"
        return key  # conv_in / conv_out keep their names
    return key  # quantize.embedding.weight, quant_conv.*, post_quant_conv.*


def taming_to_diffusers_state_dict(state_dict: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename taming / Meta / transformers VQGAN keys to diffusers `VQModel` keys.

    `levels` = len(ch_mult). Attention q/k/v/proj_out are 1x1 convs (C, C, 1, 1) in taming and
    linears (C, C) in diffusers.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new_key = _map_key(key, levels)
        if ".attentions." in new_key and new_key.endswith(".weight") and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        if new_key in out:
            raise ValueError(f"Two checkpoint keys map to {new_key!r}; the checkpoint has duplicate weights.")
        out[new_key] = tensor
    return out


def load_taming_state_dict(model: ChameleonVQModel, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load taming-named weights into `model`, exactly: any missing / unexpected / misshapen key -> ValueError."""
    converted = taming_to_diffusers_state_dict(state_dict, len(model.config.block_out_channels))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(converted)
        if converted[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the VQGAN architecture its config describes:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        lines.append("Check that the config file belongs to this checkpoint.")
        raise ValueError("\n".join(lines))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()}, strict=True)


def _finish(model: ChameleonVQModel, torch_dtype: torch.dtype | None) -> ChameleonVQModel:
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


def load_meta_vqgan(
    ckpt_path: str | Path,
    config_path: str | Path,
    torch_dtype: torch.dtype | None = None,
    *,
    allow_pickle: bool = False,
) -> ChameleonVQModel:
    """Meta's `vqgan.ckpt` + `vqgan.yaml` -> full (encoder + decoder) `ChameleonVQModel`, in eval mode.

    The checkpoint is read with `torch.load(weights_only=True)`; pass `allow_pickle=True` only for a
    file you trust if that refuses it. `loss.*` (discriminator / LPIPS) weights are ignored; every
    other key must match the yaml's architecture exactly. Float32 unless `torch_dtype` is given.
    """
    import yaml

    ckpt_path, config_path = Path(ckpt_path), Path(config_path)
    for path, what in ((ckpt_path, "vqgan.ckpt"), (config_path, "vqgan.yaml")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass the path of Meta's {what} (Chameleon's tokenizer/ folder).")
    config = yaml.safe_load(config_path.read_text())
    try:
        params = config["model"]["params"]
        ddconfig, n_embed, embed_dim = params["ddconfig"], params["n_embed"], params["embed_dim"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{config_path} is not a taming VQGAN config: expected model.params.{{ddconfig, n_embed, embed_dim}}."
        ) from err
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # pickle refusals come as several exception types
        if allow_pickle:
            raise
        raise ValueError(
            f"{ckpt_path} could not be read with torch.load(weights_only=True) ({err}). If you trust the file, "
            "call load_meta_vqgan(..., allow_pickle=True)."
        ) from err
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{ckpt_path} holds no state dict (expected a Lightning checkpoint with 'state_dict').")
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    model = ChameleonVQModel(**ddconfig_to_model_config(ddconfig, n_embed, embed_dim, has_decoder=True))
    load_taming_state_dict(model, state_dict, str(ckpt_path))
    return _finish(model, torch_dtype)


def _read_prefixed_safetensors(model_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose name starts with `prefix` (prefix removed), from model.safetensors or a sharded index."""
    from safetensors import safe_open

    index_path = model_dir / "model.safetensors.index.json"
    single_path = model_dir / "model.safetensors"
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        files: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            if name.startswith(prefix):
                files.setdefault(shard, []).append(name)
    elif single_path.is_file():
        files = {single_path.name: []}  # names read from the file itself
    else:
        raise FileNotFoundError(
            f"{model_dir} has neither model.safetensors nor model.safetensors.index.json; pass a transformers "
            "Chameleon checkpoint folder (saved with safe_serialization)."
        )
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in files.items():
        with safe_open(str(model_dir / shard), framework="pt", device="cpu") as handle:  # memory-mapped
            for name in names or [n for n in handle.keys() if n.startswith(prefix)]:
                tensors[name[len(prefix) :]] = handle.get_tensor(name)
    return tensors


def load_chameleon_vq_encoder(model_dir: str | Path, torch_dtype: torch.dtype | None = None) -> ChameleonVQModel:
    """transformers Chameleon folder -> encoder-only `ChameleonVQModel` (config.has_decoder=False).

    Reads only the `model.vqmodel.*` tensors (memory-mapped; `model.safetensors` or a sharded index)
    and `config.json`'s `vq_config`. Encoding works; decoding raises a ValueError that points to
    Meta's `vqgan.ckpt`. Float32 unless `torch_dtype` is given.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: pass a transformers Chameleon checkpoint folder.")
    config = json.loads(config_path.read_text())
    if "vq_config" not in config:
        raise ValueError(f"{config_path} has no vq_config; it is not a Chameleon checkpoint with an image tokenizer.")
    ddconfig, n_embed, embed_dim = chameleon_vq_config_to_ddconfig(config["vq_config"])
    state_dict = _read_prefixed_safetensors(model_dir, _TRANSFORMERS_PREFIX)
    if not state_dict:
        raise ValueError(
            f"{model_dir} holds no `{_TRANSFORMERS_PREFIX}*` weights; this checkpoint carries no VQ encoder. "
            "Use load_meta_vqgan with Meta's vqgan.ckpt and vqgan.yaml instead."
        )
    model = ChameleonVQModel(**ddconfig_to_model_config(ddconfig, n_embed, embed_dim, has_decoder=False))
    load_taming_state_dict(model, state_dict, f"{model_dir} ({_TRANSFORMERS_PREFIX}*)")
    return _finish(model, torch_dtype)
