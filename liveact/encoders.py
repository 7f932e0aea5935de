"""Image and text encoders (transformers models), with the reference's preprocessing.

- image: a CLIP vision tower; LiveAct uses the tokens after all its blocks but the last (no final norm),
  [1, 257, 1280] for ViT-H/14. The conditioning portrait (already cropped to the video's size) is
  squashed whole to the tower's input size, as the reference does (bicubic, no antialias): nothing of the
  face or hair is cropped away.
- text: a umT5 encoder; the tokens of the cleaned prompt (padding dropped; the denoiser zero-pads to
  `text_len`), [1, L, 4096]. It may run on the CPU (`device="cpu"`, the reference's --t5_cpu) and hand its
  output to the GPU.

Both come from a model folder's transformers parts or from the released `.pth` files (liveact/release.py).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # what open-clip and OpenAI CLIP were trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoder:
    def __init__(self, model, mean=CLIP_MEAN, std=CLIP_STD, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.size = model.config.image_size
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, model_path: str | Path, processor_path: str | Path | None = None, **kwargs) -> "ImageEncoder":
        """A transformers CLIP vision folder; the mean/std of its processor folder when there is one."""
        from transformers import CLIPVisionModel

        processor = Path(processor_path or "") / "preprocessor_config.json"
        stats = json.loads(processor.read_text()) if processor_path and processor.exists() else {}
        return cls(CLIPVisionModel.from_pretrained(model_path), stats.get("image_mean", CLIP_MEAN),
                   stats.get("image_std", CLIP_STD), **kwargs)

    def preprocess(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        """Portrait [1, 3, H, W] in [-1, 1] (or an RGB image) -> the tower's normalised input [1, 3, S, S]."""
        image = image_to_tensor(image) if isinstance(image, Image.Image) else image
        squashed = F.interpolate(image.float().cpu(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        return (squashed * 0.5 + 0.5 - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        param = next(self.model.parameters())
        hidden = self.model(pixel_values=self.preprocess(image).to(param), output_hidden_states=True).hidden_states
        return hidden[-2].float()  # after all blocks but the last, before any final norm


def clean_prompt(text: str) -> str:
    """The reference's cleaning: fix mojibake, unescape HTML twice, collapse whitespace."""
    import ftfy

    return re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip()


class TextEncoder:
    def __init__(self, model, tokenizer, max_length: int = 512, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer, self.max_length = tokenizer, max_length

    @classmethod
    def from_pretrained(cls, model_path: str | Path, tokenizer_path: str | Path, **kwargs) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        return cls(UMT5EncoderModel.from_pretrained(model_path), AutoTokenizer.from_pretrained(tokenizer_path), **kwargs)

    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned prompt -> ids and mask [1, max_length]: the end token appended, padded with the pad id."""
        tokens = self.tokenizer([clean_prompt(prompt)], padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return tokens.input_ids, tokens.attention_mask

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [1, max_length] -> the tokens of the unpadded positions [1, L, dim]."""
        device = next(self.model.parameters()).device
        hidden = self.model(ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        return hidden[:, :int(mask.sum())].float()

    def __call__(self, prompt: str) -> torch.Tensor:
        return self.encode(*self.tokenize(prompt))


def center_crop_resize(image: Image.Image | np.ndarray, height: int, width: int) -> Image.Image:
    """Scale the portrait to cover height x width (bicubic), then crop the centre, as the reference does."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> [1, 3, H, W] in [-1, 1]."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1)[None]
