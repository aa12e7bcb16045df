"""`lumina-mgpt average`: one pipeline whose transformer is a weighted mean of several fine-tunes.

Fine-tunes started from the same weights can be averaged parameter by parameter (Wortsman et al., "Model
soups", 2022; "Robust fine-tuning of zero-shot models" (WiSE-FT), 2022): the mean often keeps much of
what each run learned, so a stage that gained one task and lost another can be blended back with its
starting point at a chosen weight. Only the transformer is averaged; the VQ tokenizer and the text
tokenizer must be the same in every folder (image codes and token ids would otherwise mean different
things), and the first folder gives every other component and setting (scheduler, default size,
guidance).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from .checkpoints import save_pipeline


def _check_weights(paths: Sequence[str | Path], weights: Sequence[float] | None) -> list[float]:
    if len(paths) < 2:
        raise ValueError(f"average needs at least two pipeline folders, got {len(paths)}")
    if weights is None:
        return [1.0 / len(paths)] * len(paths)
    weights = [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"got {len(weights)} weights for {len(paths)} pipeline folders: give one weight per folder "
                         "(e.g. --weights 0.75 0.25), or none for the plain mean")
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {weights}")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise ValueError(f"weights must sum to 1 (a weighted mean), got {weights} summing to {sum(weights):g}")
    return weights


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def average_pipelines(paths: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None) -> Path:
    """Write `out`: the first folder's pipeline with transformer weights `sum_i weights[i] * theta_i`
    (computed and stored in float32, as the pipelines load). `weights` default to equal ones. `out` must be a
    new folder, or an earlier pipeline folder that is not one of the inputs (it is replaced)."""
    from transformers import AutoTokenizer

    from ..pipelines import LuminaMGPTPipeline
    from ..transformer import LuminaMGPTTransformer
    from .pretokenize import load_vqvae

    weights = _check_weights(paths, weights)
    out = Path(out)
    for p in paths:
        if out.resolve() in (Path(p).resolve(), *Path(p).resolve().parents):
            raise ValueError(f"--out {out} is or holds {p}, one of the folders being averaged; write the mean to a "
                             "new folder")
        if not (Path(p) / "vqvae").is_dir() or not (Path(p) / "tokenizer").is_dir():
            raise ValueError(f"{p} has no vqvae/ or tokenizer/ folder: average whole pipeline folders (e.g. a run's "
                             "pipeline/), which the check that they share one VQ tokenizer and tokenizer needs")
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise ValueError(f"--out {out} is a folder with files that is not a pipeline folder; writing the mean there "
                         "would delete them: choose a new folder")
    first = LuminaMGPTPipeline.from_pretrained(str(paths[0]))
    arch = {k: v for k, v in first.transformer.config.items() if not k.startswith("_")}

    def states():  # checked and loaded one at a time: one other transformer in memory besides the sum
        yield weights[0], first.transformer.state_dict()
        for path, w in zip(paths[1:], weights[1:]):
            other = LuminaMGPTTransformer.from_pretrained(str(path), subfolder="transformer")
            other_arch = {k: v for k, v in other.config.items() if not k.startswith("_")}
            if other_arch != arch:
                diff = sorted(k for k in set(arch) | set(other_arch) if arch.get(k) != other_arch.get(k))
                raise ValueError(f"{path}'s transformer config differs from {paths[0]}'s in {diff}: only fine-tunes of "
                                 "one architecture can be averaged")
            if not _same_state(load_vqvae(Path(path) / "vqvae"), first.vqvae):
                raise ValueError(f"{path}'s vqvae differs from {paths[0]}'s: the image codes would mean different "
                                 "things; average only transformers trained on the same VQ tokenizer")
            if AutoTokenizer.from_pretrained(str(Path(path) / "tokenizer")).get_vocab() != first.tokenizer.get_vocab():
                raise ValueError(f"{path}'s tokenizer differs from {paths[0]}'s: token ids would mean different things; "
                                 "average only fine-tunes of one base model")
            yield w, other.state_dict()
            del other

    first.transformer.load_state_dict(weighted_mean_state(states()))
    return save_pipeline(first, out)


def weighted_mean_state(weighted: Iterable[tuple[float, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """`sum_i w_i * state_i` over `(w_i, state_i)` pairs, taken one at a time; summed in float32 and each
    tensor cast back to the first state's dtype. The states must have the same keys and shapes."""
    total: dict[str, torch.Tensor] | None = None
    dtypes: dict[str, torch.dtype] = {}
    for w, state in weighted:
        if total is None:
            total = {k: w * v.float() for k, v in state.items()}
            dtypes = {k: v.dtype for k, v in state.items()}
            continue
        if state.keys() != total.keys() or any(state[k].shape != total[k].shape for k in total):
            raise ValueError("the weights to average hold different parameters (names or shapes): only fine-tunes of "
                             "one architecture can be averaged")
        for k, v in state.items():
            total[k] += w * v.float()
        del state  # before the next one loads
    if total is None:
        raise ValueError("nothing to average: no weights were given")
    return {k: v.to(dtypes[k]) for k, v in total.items()}


__all__ = ["average_pipelines", "weighted_mean_state"]
