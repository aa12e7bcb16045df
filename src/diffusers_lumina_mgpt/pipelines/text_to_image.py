"""`LuminaMGPTPipeline`: text-to-image with a Lumina-mGPT / Chameleon-architecture transformer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.models import VQModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..compiled_decoding import CompiledDecoder
from ..conversation import ConversationTokenizer
from ..image_processor import LuminaImageProcessor
from ..image_tokens import decode_image_block
from ..schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
from ..schedulers.image_decoding import ImageDecodingMixin, ImageLayout
from ..transformer import LuminaMGPTTransformer
from ..vocab import LuminaVocab
from ..vq import ChameleonVQModel, check_can_decode, vq_decode_codes, vq_downsample_factor
from .image_generation import decode_image_blocks

OUTPUT_TYPES = ("pil", "np", "pt", "tokens", "latent")

# the module file `save_pretrained` puts beside model_index.json, for `DiffusionPipeline.from_pretrained`
LOADER_MODULE = "pipeline_lumina_mgpt"
LOADER_SOURCE = '''"""Lets `diffusers.DiffusionPipeline.from_pretrained(this_folder, trust_remote_code=True)` load this folder.

The classes come from the installed package: `pip install diffusers-lumina-mgpt`.
"""

from diffusers_lumina_mgpt import LuminaMGPTEditPipeline, LuminaMGPTPipeline

__all__ = ["LuminaMGPTEditPipeline", "LuminaMGPTPipeline"]
'''


@dataclass
class LuminaMGPTPipelineOutput(BaseOutput):
    """Output of the Lumina-mGPT pipelines.

    images: PIL images, a (B, H, W, 3) array, a (B, 3, H, W) tensor in [0, 1], for
        `output_type="tokens"` the (B, block_length) image token blocks, or for `output_type="latent"`
        the (B, h, w) VQ code grids (the AR pipeline's latents; `decode_latents` turns them into images).
    tokens: the generated image blocks `BOI, H, W, (codes, NEWLINE) x h, EOI`, (B, block_length).
    num_forward_passes: transformer forwards of the call (prefill included; CFG rows share them).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    tokens: torch.Tensor
    num_forward_passes: int


class LuminaMGPTPipeline(DiffusionPipeline):
    r"""Text-to-image generation with Lumina-mGPT.

    Components:
        tokenizer: a transformers fast tokenizer with Chameleon's token names (`IMGIMG...Z`, `<racm3:break>`,
            `<eoss>`, `<reservedNNNNN>`) and `<|image|>`, or a compact vocabulary's names.
        transformer ([`LuminaMGPTTransformer`]): the decoder; it knows nothing of pixels.
        vqvae: the VQ image tokenizer (codes -> pixels).
        scheduler ([`LuminaMGPTARScheduler`] or [`LuminaMGPTJacobiScheduler`]): how tokens are chosen.
        default_size: the model's resolution, used when `height`/`width` are not given.
        default_guidance_scale: the CFG scale used when a call gives none (Lumina-mGPT's demo: 3.0; a model
            folder may record the scale its scores were measured at).
        default_edit_image_top_k: the image top-k of [`LuminaMGPTEditPipeline`] calls (editing, Omni tasks,
            no-edit denoising) that give none; None: the scheduler's `image_top_k`, as for text-to-image.
        patch_size: pixels per grid token (two latent cells); read from the `vqvae` when there is one, and
            saved, so that a pipeline loaded with `vqvae=None` (text components only) can still `encode_prompt`.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["tokens"]

    def __init__(
        self,
        tokenizer,
        transformer: LuminaMGPTTransformer,
        vqvae: ChameleonVQModel | VQModel,
        scheduler: LuminaMGPTARScheduler | LuminaMGPTJacobiScheduler,
        default_size: int = 512,
        patch_size: int | None = None,
        default_guidance_scale: float = 3.0,
        default_edit_image_top_k: int | None = None,
    ):
        # the type hints let diffusers' `from_pipe` hand the models over to related pipelines
        super().__init__()
        self.register_modules(tokenizer=tokenizer, transformer=transformer, vqvae=vqvae, scheduler=scheduler)
        if vqvae is not None:  # recorded so that a pipeline loaded without its vqvae still knows the grid
            patch_size = 2 * vq_downsample_factor(vqvae)
        if default_edit_image_top_k is not None and (
            isinstance(default_edit_image_top_k, bool) or not isinstance(default_edit_image_top_k, int)
            or default_edit_image_top_k < 1
        ):
            raise ValueError(
                f"default_edit_image_top_k must be a whole number >= 1 (1, not 1.0) or None (the scheduler's "
                f"image_top_k), got {default_edit_image_top_k!r}; fix it in the folder's model_index.json or the "
                "from_pretrained argument"
            )
        self.register_to_config(default_size=default_size, patch_size=patch_size,
                                default_guidance_scale=default_guidance_scale,
                                default_edit_image_top_k=default_edit_image_top_k)
        self._compiled_decoder: CompiledDecoder | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scheduler" and value is not None and not isinstance(value, ImageDecodingMixin):
            raise ValueError(
                f"{type(value).__name__} cannot decode image tokens: a Lumina-mGPT pipeline needs one of "
                f"{', '.join(c.__name__ for c in LuminaMGPTARScheduler._get_compatibles())} (diffusion schedulers denoise "
                "latents, autoregressive ones choose tokens); e.g. `LuminaMGPTJacobiScheduler.from_config(pipe.scheduler.config)`"
            )
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ compiled decoding
    def enable_compiled_decoding(self, mode: str | None = None, backend: str = "inductor", seq_multiple: int = 256,
                                 cpu_max_window: int | None = 2, freeze: bool | None = None) -> None:
        """Run image decoding steps through `torch.compile` (see `compiled_decoding.py`).

        The first call at a new shape compiles (seconds on small models, a minute or more at 7B); later
        calls reuse the graphs and the KV cache the decoder keeps. mode None picks CUDA graphs
        ("reduce-overhead") on CUDA and inductor's default on CPU. Tokens are those of eager decoding up
        to floating-point rounding (identical at top-k 1 in the tests). `disable_compiled_decoding()`
        goes back to eager decoding and frees the kept cache. On a CPU, windows longer than
        `cpu_max_window` tokens (Jacobi's) stay eager, which measured faster there. On a CPU (mode None) the
        weights are frozen into the graph, whose C++ GEMMs stream them at about the machine's read rate;
        `freeze` overrides that choice (True needs a CPU). Change weights only after `disable_compiled_decoding()`.
        """
        self._compiled_decoder = CompiledDecoder(mode=mode, backend=backend, seq_multiple=seq_multiple,
                                                 cpu_max_window=cpu_max_window, freeze=freeze)

    def disable_compiled_decoding(self) -> None:
        """Decode eagerly again and free the compiled decoder's KV cache."""
        if self._compiled_decoder is not None:
            self._compiled_decoder.release()
        self._compiled_decoder = None

    @property
    def compiled_decoder(self) -> CompiledDecoder | None:
        """The `CompiledDecoder` set by `enable_compiled_decoding()`, or None (eager decoding)."""
        return getattr(self, "_compiled_decoder", None)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' `save_pretrained`, plus a loader module so that `DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)` finds this class offline (model_index.json names `[module file, class]`). The
        weights get the umask's file mode, as the folder's other files (`file_modes.umask_modes`)."""
        import json
        import os

        from ..file_modes import umask_modes

        super().save_pretrained(save_directory, *args, **kwargs)
        umask_modes(save_directory)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [LOADER_MODULE, type(self).__name__]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(save_directory, f"{LOADER_MODULE}.py"), "w") as f:
            f.write(LOADER_SOURCE)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`; a `[module file, class]` class name reads as the class itself, so our own
        `from_pretrained` loads the class it is called on (`LuminaMGPTEditPipeline` from a text-to-image folder)."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][1]
        return out

    # ------------------------------------------------------------------ diffusers call-state properties
    @property
    def guidance_scale(self) -> float:
        """The CFG scale of the running (or last) call; a step callback may set `pipe._guidance_scale`."""
        return self._guidance_scale

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in `callback_on_step_end` to stop decoding (diffusers' convention):
        the call returns the tokens decided so far, -1 where undecided, and images with those cells grey."""
        return getattr(self, "_interrupt", False)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale != 1.0

    # ------------------------------------------------------------------ derived helpers
    @property
    def vocab(self) -> LuminaVocab:
        """Special ids and the code <-> token mapping, read from the tokenizer (rebuilt if it is swapped)."""
        if getattr(self, "_vocab_for", None) is not self.tokenizer:
            self._vocab = LuminaVocab.from_tokenizer(self.tokenizer)
            self._conversation = ConversationTokenizer(self.tokenizer, self._vocab)
            self._vocab_for = self.tokenizer
        return self._vocab

    @property
    def conversation(self) -> ConversationTokenizer:
        self.vocab  # noqa: B018  (builds both for the current tokenizer)
        return self._conversation

    @property
    def image_processor(self) -> LuminaImageProcessor:
        if self.vqvae is not None:
            f = vq_downsample_factor(self.vqvae)
        elif self.config.get("patch_size"):
            f = self.config.patch_size // 2
        else:
            raise ValueError("this pipeline has no vqvae and its config records no patch_size; load it with its vqvae, "
                             "or re-save it with this version (save_pretrained records the patch size)")
        key = (self.config.default_size, f)
        if getattr(self, "_image_processor_key", None) != key:
            self._image_processor = LuminaImageProcessor(
                target_size=self.config.default_size, patch_size=2 * f, downsample_factor=f
            )
            self._image_processor_key = key
        return self._image_processor

    def image_layout(self, h_lat: int, w_lat: int) -> ImageLayout:
        return self.vocab.image_layout(h_lat, w_lat)

    def image_header(self, height: int, width: int) -> torch.Tensor:
        """`BOI, H_grid, W_grid` for an image of `height x width` pixels."""
        p = self.image_processor.config.patch_size
        return torch.tensor(self.vocab.image_header(height // p, width // p))

    def encode_prompt(self, prompt: str, height: int, width: int) -> torch.Tensor:
        """Token ids of the conditional context: the text-to-image conversation then `BOI, H, W`."""
        ids = self.conversation.text_to_image_prompt(prompt, height, width)
        return torch.cat([ids, self.image_header(height, width)])

    def encode_negative_prompt(self, negative_prompt: str | None, height: int, width: int) -> torch.Tensor:
        """The unconditional context: the image alone (Lumina-mGPT), or a negative prompt before it."""
        if not negative_prompt:
            return self.image_header(height, width)
        return self.encode_prompt(negative_prompt, height, width)

    # ------------------------------------------------------------------ validation
    def check_inputs(
        self, prompt, height, width, negative_prompt, num_images_per_prompt, guidance_scale, output_type,
        callback_on_step_end_tensor_inputs,
    ) -> list[str]:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        else:
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if not isinstance(negative_prompt, (list, tuple)) or len(negative_prompt) != len(prompts):
                raise ValueError(
                    f"`negative_prompt` must be a string or a list with one entry per prompt ({len(prompts)}), "
                    f"got {negative_prompt!r}"
                )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a number >= 0 (1.0 turns guidance off), got {guidance_scale!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if output_type not in ("tokens", "latent"):
            check_can_decode(self.vqvae)  # before any decoding work, not after it
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"`{name}` must be an integer number of pixels, got {value!r}")
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(f"callback tensor inputs {bad} are not available; choose from {self._callback_tensor_inputs}")
        return prompts

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image_top_k: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> LuminaMGPTPipelineOutput | tuple:
        r"""Generate images from text.

        Args:
            prompt: the text, or a list of texts.
            height, width: pixels, multiples of the grid (32 px for Chameleon's VQGAN); default
                `default_size`. The grid tokens are forced, so the size is always honoured.
            guidance_scale: classifier-free guidance `s` in `uncond + s * (cond - uncond)`; 1.0 skips the
                unconditional rows. Default: the pipeline's `default_guidance_scale` (3.0, as Lumina-mGPT's
                demo, unless the model folder records another).
            negative_prompt: text for the unconditional context; by default it is the image alone.
            num_images_per_prompt: images per prompt.
            generator: a `torch.Generator`, or one per image, for reproducible sampling.
            image_top_k, temperature, top_p: override the scheduler's sampling settings for this call.
            output_type: "pil", "np", "pt" or "tokens" (the image token blocks, no VQ decoding).
            return_dict: return a [`LuminaMGPTPipelineOutput`] instead of a tuple.
            callback_on_step_end: called after every transformer forward as
                `callback(pipe, step, num_tokens, callback_kwargs)`; `callback_kwargs["tokens"]` holds the
                body tokens decided so far (-1 where undecided). Read-only: tokens cannot be rewritten.
            callback_on_step_end_tensor_inputs: names to pass in `callback_kwargs` (only "tokens").
        """
        height = self.config.default_size if height is None else height
        width = self.config.default_size if width is None else width
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        prompts = self.check_inputs(
            prompt, height, width, negative_prompt, num_images_per_prompt, guidance_scale, output_type,
            callback_on_step_end_tensor_inputs,
        )
        negatives = negative_prompt if isinstance(negative_prompt, (list, tuple)) else [negative_prompt] * len(prompts)
        texts = [(self.conversation.text_to_image_prompt(p, height, width),
                  self.conversation.text_to_image_prompt(n, height, width) if n else None)
                 for p, n in zip(prompts, negatives)]
        header_length = 3  # BOI, H, W
        h_lat, w_lat = self.image_processor.check_size(
            height, width, max_positions=self.transformer.config.max_position_embeddings,
            prompt_length=max(len(c) for pair in texts for c in pair if c is not None) + header_length,
            max_grid=self.vocab.max_grid,
        )
        layout = self.image_layout(h_lat, w_lat)
        header = self.image_header(height, width)
        cond, uncond = [], []
        for text, negative in texts:
            cond += [torch.cat([text, header])] * num_images_per_prompt
            uncond += [header if negative is None else torch.cat([negative, header])] * num_images_per_prompt

        images, blocks, num_forwards = self.generate_image_blocks(
            cond, uncond, layout, height, width, guidance_scale, generator,
            {"image_top_k": image_top_k, "temperature": temperature, "top_p": top_p}, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, blocks, num_forwards)
        return LuminaMGPTPipelineOutput(images=images, tokens=blocks, num_forward_passes=num_forwards)

    def generate_image_blocks(
        self, cond, uncond, layout, height, width, guidance_scale, generator, sampling, output_type,
        callback_on_step_end=None, callback_on_step_end_tensor_inputs=None,
    ) -> tuple[Any, torch.Tensor, int]:
        """Decode one image block per conditional context (with a progress bar and the step callback).

        `cond[i]` ends with `BOI, H, W`; `uncond[i]` is its unconditional context (unused when
        `guidance_scale == 1`). Returns (images in `output_type`, blocks (N, block_length), forwards).
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["tokens"]
        self._guidance_scale = guidance_scale
        self._interrupt = False
        with self.progress_bar(total=layout.length) as bar:
            done = [0]

            def on_step(step: int, state) -> None:
                now = min(state.num_accepted)
                bar.update(now - done[0])
                done[0] = now
                if callback_on_step_end is not None:
                    kwargs = {"tokens": state.body.clone()} if "tokens" in tensor_inputs else {}
                    callback_on_step_end(self, step, now, kwargs)

            result = decode_image_blocks(
                self.transformer, self.scheduler, cond, uncond if guidance_scale != 1.0 else None, layout,
                lambda: self._guidance_scale, pad_id=self.vocab.pad_id, generator=generator, sampling=sampling,
                on_step=on_step, device=self._execution_device, decoder=self.compiled_decoder,
                should_stop=lambda: self.interrupt,
            )

        header = self.image_header(height, width)
        blocks = torch.cat([header.expand(result.body.shape[0], -1), result.body], dim=1)
        if output_type == "tokens":
            return blocks, blocks, result.num_forwards
        codes = layout.codes_grid(result.body)  # the layout placed every token: nothing to re-parse
        if output_type == "latent":
            return codes, blocks, result.num_forwards
        return self.decode_latents(codes, output_type), blocks, result.num_forwards

    def image_tokens_to_latents(self, blocks) -> torch.Tensor:
        """Image token blocks of one size (validated) -> (B, h, w) VQ code grids."""
        lpg = self.image_processor.latents_per_grid
        return torch.stack([decode_image_block(b, self.vocab, latents_per_grid=lpg) for b in blocks])

    def decode_latents(self, codes: torch.Tensor, output_type: str = "pil") -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """(B, h, w) VQ code grids -> images through the `vqvae` ("pil", "np" or "pt"). Cells of -1 (left
        undecided by an interrupted call) come out grey."""
        blank = codes < 0
        pixels = vq_decode_codes(self.vqvae, codes.clamp_min(0).to(self._execution_device))
        if blank.any():
            cell = pixels.shape[-1] // codes.shape[-1]
            up = blank.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, None]
            pixels = pixels.masked_fill(up.to(pixels.device), 0.0)
        return self.image_processor.postprocess(pixels, output_type)

    def decode_image_tokens(self, blocks, output_type: str = "pil") -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Image token blocks of one size (validated) -> images through the `vqvae` ("pil", "np" or "pt")."""
        return self.decode_latents(self.image_tokens_to_latents(blocks), output_type)
