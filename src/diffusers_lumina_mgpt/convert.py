"""Convert Lumina-mGPT / Chameleon checkpoints (transformers folder + Meta's VQGAN files) to a diffusers folder.

The transformer is read memory-mapped and written shard by shard, the VQGAN is loaded only after the
transformer has been written and released, so conversion never holds two copies of the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .vocab import IMAGE_PLACEHOLDER


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(model_dir: str | os.PathLike, text_tokenizer: str | os.PathLike | None = None):
    """The text tokenizer of a checkpoint, with the `<|image|>` placeholder token added if missing.

    Reads the transformers tokenizer files in `model_dir`, or Meta's `text_tokenizer.json`.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if text_tokenizer is not None:
        path = Path(text_tokenizer)
        if not path.is_file():
            raise FileNotFoundError(f"text tokenizer file {path} does not exist")
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>")
    else:
        model_dir = Path(model_dir)
        if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise FileNotFoundError(
                f"{model_dir} has no tokenizer.json; pass --text-tokenizer with Meta's text_tokenizer.json"
            )
        tok = AutoTokenizer.from_pretrained(model_dir)
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
    return tok


def convert_checkpoint(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    vqgan_ckpt: str | os.PathLike | None = None,
    vqgan_config: str | os.PathLike | None = None,
    text_tokenizer: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    default_size: int = 512,
    scheduler: str = "ar",
    max_shard_size: str = "2GB",
) -> Path:
    """Write a `LuminaMGPTPipeline` folder from a Lumina-mGPT / Chameleon checkpoint.

    Without `vqgan_ckpt`, the encoder inside the transformers checkpoint (`model.vqmodel.*`) becomes
    the `vqvae`; such a pipeline can tokenize images but not decode them.
    """
    from .pipelines import LuminaMGPTPipeline
    from .schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
    from .transformer import LuminaMGPTTransformer
    from .vq_convert import load_chameleon_vq_encoder, load_meta_vqgan

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a transformers checkpoint folder (no config.json)")
    if (vqgan_ckpt is None) != (vqgan_config is None):
        raise ValueError("pass both --vqgan-ckpt and --vqgan-config (Meta's vqgan.ckpt and vqgan.yaml), or neither")
    if scheduler not in ("ar", "jacobi"):
        raise ValueError(f"scheduler must be 'ar' or 'jacobi', got {scheduler!r}")
    if not isinstance(default_size, int) or default_size <= 0:
        raise ValueError(f"default_size must be a positive number of pixels (512, 768 or 1024 for Lumina-mGPT), "
                         f"got {default_size!r}")

    tokenizer = load_tokenizer(model_dir, text_tokenizer)
    sched = (LuminaMGPTJacobiScheduler if scheduler == "jacobi" else LuminaMGPTARScheduler)()

    transformer = LuminaMGPTTransformer.from_chameleon(model_dir, torch_dtype=torch_dtype)  # memory-mapped
    if vqgan_ckpt is not None:
        vqvae = load_meta_vqgan(vqgan_ckpt, vqgan_config)
    else:
        vqvae = load_chameleon_vq_encoder(model_dir)
    pipe = LuminaMGPTPipeline(
        tokenizer=tokenizer, transformer=transformer, vqvae=vqvae, scheduler=sched, default_size=default_size
    )
    try:  # the default size must be one the model can generate
        pipe.image_processor.check_size(default_size, default_size, max_grid=pipe.vocab.max_grid)
    except ValueError as err:
        raise ValueError(f"default_size {default_size}: {err}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    # small shards: serialising a shard copies it, so the extra memory is bounded by the shard size
    pipe.save_pretrained(out_dir, max_shard_size=max_shard_size)
    return out_dir
