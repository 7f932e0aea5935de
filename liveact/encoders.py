"""Image and text encoders (transformers), loaded from the diffusers-format Wan2.1-I2V repository.

- image: CLIP ViT-H/14 vision tower; LiveAct uses the tokens of its penultimate layer, [1, 257, 1280].
- text: umT5-XXL encoder; the tokens of the prompt (padding dropped; the denoiser zero-pads to 512),
  [1, L, 4096]. It may run on the CPU (`device="cpu"`, the reference's --t5-cpu) and hand its output
  to the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


class ImageEncoder:
    def __init__(self, model, processor, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, model_path: str | Path, processor_path: str | Path, **kwargs) -> "ImageEncoder":
        from transformers import CLIPImageProcessor, CLIPVisionModel

        return cls(CLIPVisionModel.from_pretrained(model_path), CLIPImageProcessor.from_pretrained(processor_path), **kwargs)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> torch.Tensor:
        param = next(self.model.parameters())
        pixels = self.processor(images=image, return_tensors="pt").pixel_values.to(param)
        return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].float()


class TextEncoder:
    def __init__(self, model, tokenizer, max_length: int = 512, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer, self.max_length = tokenizer, max_length

    @classmethod
    def from_pretrained(cls, model_path: str | Path, tokenizer_path: str | Path, **kwargs) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        return cls(UMT5EncoderModel.from_pretrained(model_path), AutoTokenizer.from_pretrained(tokenizer_path), **kwargs)

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer([prompt], padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        length = int(tokens.attention_mask.sum())
        hidden = self.model(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)).last_hidden_state
        return hidden[:, :length].float()


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
