"""Read transformers-format Chameleon / Lumina-mGPT checkpoints into `LuminaMGPTTransformer`, memory-mapped.

`load_chameleon_checkpoint(cls, path, torch_dtype)` (exposed as `LuminaMGPTTransformer.from_chameleon`):

* reads `config.json` (transformers' `ChameleonConfig` fields; `rope_theta` either top level or under
  `rope_parameters`; `model_parallel_size` for Lumina-mGPT's QK-norm layout),
* finds the weights: `model.safetensors` or a sharded `model.safetensors.index.json`,
* memory-maps every file (copy-on-write, `MAP_PRIVATE`) and builds each parameter as a zero-copy view of
  the mapping when the dtype matches and the offset is aligned; otherwise it converts that one tensor and
  drops the mapped pages it read (`MADV_DONTNEED`), so peak resident memory stays close to the weight bytes,
* skips `model.vqmodel.*` (the VQ image encoder lives in the `vqvae` component) and rotary `inv_freq` buffers,
* converts Lumina-mGPT's per-shard QK-norm layout (model_parallel_size, head_dim) to per-head
  (heads, head_dim) by repeating each shard row for the heads of its shard,
* checks keys and shapes against the model and raises one ValueError naming every missing, unexpected or
  misshaped key, never loading a partial model.

The model is first built on the meta device, then the tensors are assigned, so no random init is allocated.
Parameters that are views of a mapping keep the file open until they are freed; do not overwrite or
truncate the checkpoint files while such a model is alive (copy the model with `.clone()`/`.to()` first).
"""

from __future__ import annotations

import json
import mmap
import os
import re
from pathlib import Path
from typing import Any

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SKIPPED_PREFIXES = ("model.vqmodel.",)
SKIPPED_PATTERN = re.compile(r".*rotary_emb\.inv_freq$")
QK_NORM_PATTERN = re.compile(r"model\.layers\.\d+\.self_attn\.(q|k)_norm\.(weight|bias)$")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# ChameleonConfig field -> default used when config.json leaves it out
_CONFIG_FIELDS: dict[str, Any] = {
    "vocab_size": 65536,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "swin_norm": False,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
}


def read_chameleon_config(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
    """(kwargs for LuminaMGPTTransformer, model_parallel_size or None) from a folder's config.json."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: from_chameleon expects a transformers-format Chameleon folder "
            "(config.json + model.safetensors or model.safetensors.index.json)."
        )
    raw = json.loads(config_file.read_text())
    kwargs = {key: raw.get(key, default) for key, default in _CONFIG_FIELDS.items()}
    rope = raw.get("rope_parameters") or {}
    kwargs["rope_theta"] = float(raw.get("rope_theta", rope.get("rope_theta", 10000.0)))
    if rope.get("rope_type", "default") != "default" or raw.get("rope_scaling"):
        raise ValueError(f"{config_file}: only default RoPE is supported, got {rope or raw.get('rope_scaling')}.")
    if isinstance(kwargs["eos_token_id"], list):
        kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
    return kwargs, raw.get("model_parallel_size")


def checkpoint_files(path: str | os.PathLike) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it (single file or sharded index)."""
    folder = Path(path)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map'; it is not a safetensors shard index.")
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise FileNotFoundError(f"{index} names shard files that are not in {folder}: {missing}.")
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SINGLE_FILE
    if single.is_file():
        return {name: single for name in read_safetensors_header(single)[0]}
    raise FileNotFoundError(
        f"No {SINGLE_FILE} or {INDEX_FILE} in {folder}. Save the model with "
        "ChameleonForConditionalGeneration.save_pretrained(..., safe_serialization=True)."
    )


def read_safetensors_header(file: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """(tensor name -> {dtype, shape, data_offsets}, byte offset where the data section starts)."""
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{file} is not a safetensors file (shorter than 8 bytes).")
        header_len = int.from_bytes(prefix, "little")
        header = json.loads(handle.read(header_len))
    header.pop("__metadata__", None)
    return header, 8 + header_len


class MappedSafetensors:
    """One safetensors file mapped copy-on-write; `tensor(name, dtype)` returns a view or a converted copy."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.header, self.data_start = read_safetensors_header(file)
        with open(file, "rb") as handle:
            self.mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)

    def tensor(self, name: str, dtype: torch.dtype | None) -> torch.Tensor:
        info = self.header[name]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{self.file}: tensor {name} has unsupported dtype {info['dtype']}.")
        src_dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        offset = self.data_start + begin
        shape = info["shape"]
        itemsize = torch.empty((), dtype=src_dtype).element_size()
        count = (end - begin) // itemsize
        if count == 0:
            return torch.empty(shape, dtype=dtype or src_dtype)
        view = torch.frombuffer(self.mmap, dtype=src_dtype, count=count, offset=offset).view(shape)
        if (dtype is None or dtype == src_dtype) and offset % itemsize == 0:
            return view  # zero copy: pages are read on first use
        converted = view.to(dtype or src_dtype, copy=True)
        self.release(offset, end - begin)
        return converted

    def release(self, offset: int, length: int) -> None:
        """Drop resident pages of [offset, offset+length) that are no longer referenced (whole pages only)."""
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        stop = (offset + length) // page * page
        if stop > start and hasattr(self.mmap, "madvise"):
            self.mmap.madvise(mmap.MADV_DONTNEED, start, stop - start)


def _per_head_norm(tensor: torch.Tensor, num_heads: int, mp_size: int | None, name: str) -> torch.Tensor:
    """(shards, head_dim) or (head_dim,) QK-norm parameter -> (num_heads, head_dim) by repeating shard rows."""
    if tensor.dim() == 1:
        tensor = tensor[None]
    shards = tensor.shape[0]
    if shards == num_heads:
        return tensor
    if mp_size is not None and shards != mp_size:
        raise ValueError(
            f"{name} has {shards} rows but config.json says model_parallel_size={mp_size} and the layer has "
            f"{num_heads} heads; the checkpoint and config.json do not match."
        )
    if num_heads % shards:
        raise ValueError(f"{name}: {num_heads} heads cannot be split over {shards} model-parallel shards.")
    return tensor.repeat_interleave(num_heads // shards, dim=0)


def load_chameleon_checkpoint(cls: type, path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """Build `cls` (LuminaMGPTTransformer) from a transformers-format folder; see the module docstring."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass the checkpoint folder that holds config.json.")
    kwargs, mp_size = read_chameleon_config(path)
    files = checkpoint_files(path)
    with torch.device("meta"):
        model = cls(**kwargs)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    heads = {"q": model.config.num_attention_heads, "k": model.model.layers[0].self_attn.num_kv_heads if kwargs["num_hidden_layers"] else 0}

    mapped: dict[Path, MappedSafetensors] = {}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    misshaped: list[str] = []
    for name, file in files.items():
        if name.startswith(SKIPPED_PREFIXES) or SKIPPED_PATTERN.match(name):
            continue
        if name not in expected:
            unexpected.append(name)
            continue
        if file not in mapped:
            mapped[file] = MappedSafetensors(file)
        if name not in mapped[file].header:
            raise ValueError(f"{file} does not contain {name}, although the shard index says it does.")
        tensor = mapped[file].tensor(name, torch_dtype)
        match = QK_NORM_PATTERN.match(name)
        if match and tuple(tensor.shape) != expected[name] and tensor.shape[-1] == expected[name][-1]:
            tensor = _per_head_norm(tensor, heads[match.group(1)], mp_size, name)
        if tuple(tensor.shape) != expected[name]:
            misshaped.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {expected[name]}")
            continue
        state[name] = tensor
    if "lm_head.weight" not in state and "lm_head.weight" not in files and "model.embed_tokens.weight" in state:
        raw = json.loads((path / "config.json").read_text())
        if raw.get("tie_word_embeddings"):
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(state) - {m.split(":")[0] for m in misshaped})
    if missing or unexpected or misshaped:
        problems = []
        for label, items in (("missing", missing), ("unexpected", sorted(unexpected)), ("wrong shape", misshaped)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                problems.append(f"{label} keys ({len(items)}): {shown}")
        raise ValueError(
            f"Checkpoint {path} does not match a LuminaMGPTTransformer built from its config.json; nothing was "
            f"loaded. " + "; ".join(problems) + ". Check that config.json belongs to these weights."
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return model
