"""CLIP score of an image against its prompt, as torchmetrics' `CLIPScore` defines it for one image:
`max(100 * cos(E_image, E_text), 0)`, with a local transformers `CLIPModel` folder (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image


class ClipScorer:
    """Loads `CLIPModel` + `CLIPProcessor` from `folder` once; `score(image, text)` -> float in [0, 100]."""

    def __init__(self, folder: str | Path, device: Any = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--clip-model {folder} has no config.json; pass a folder saved by "
                             "CLIPModel.save_pretrained (with its processor: CLIPProcessor.save_pretrained)")
        try:
            self.model = CLIPModel.from_pretrained(str(folder)).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"--clip-model {folder} does not load as a CLIPModel with its CLIPProcessor ({err}); "
                             "save both into the folder with save_pretrained") from None
        self.device = device
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.folder = str(folder)

    def score(self, image: Image.Image, text: str) -> float:
        import torch

        inputs = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt", padding=True,
                                truncation=True, max_length=self.max_length)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            txt = self.model.get_text_features(input_ids=inputs["input_ids"],
                                               attention_mask=inputs.get("attention_mask"))
        img, txt = _as_tensor(img), _as_tensor(txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)[0]
        return float(torch.clamp(100 * cos, min=0))


def _as_tensor(features: Any) -> Any:
    """transformers 5 may return a model output instead of a tensor; take its pooled projection."""
    import torch

    if isinstance(features, torch.Tensor):
        return features
    for key in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(features, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"CLIP features of unexpected type {type(features).__name__}")
