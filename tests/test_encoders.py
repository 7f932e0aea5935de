from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from conftest import example
from liveact.encoders import ImageEncoder, TextEncoder, center_crop_resize, image_to_tensor


def test_center_crop_resize_covers_then_crops():
    image = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3)))  # 200 wide, 100 high
    out = center_crop_resize(image, 64, 64)
    assert out.size == (64, 64)
    # the horizontal gradient's centre survives, its ends are cropped
    row = np.asarray(out)[32, :, 0].astype(int)
    assert 40 < row[0] < 60 and 140 < row[-1] < 160
    tensor = image_to_tensor(out)
    assert tensor.shape == (1, 3, 64, 64) and -1 <= tensor.min() and tensor.max() <= 1


def test_real_portrait_crops_to_the_reference_sizes():
    portrait = Image.open(example("portrait-1.png"))
    for height, width in [(512, 512), (720, 416), (832, 480)]:
        assert center_crop_resize(portrait, height, width).size == (width, height)


def test_encoders_from_a_model_folder(random_model_dir):
    image_encoder = ImageEncoder.from_pretrained(random_model_dir / "image_encoder", random_model_dir / "image_processor")
    tokens = image_encoder(Image.new("RGB", (48, 64), (200, 150, 120)))
    assert tokens.shape == (1, 17, 16)  # penultimate layer: class token + 4x4 patches
    text_encoder = TextEncoder.from_pretrained(random_model_dir / "text_encoder", random_model_dir / "tokenizer", max_length=8)
    short, longer = text_encoder("a person"), text_encoder("a person is talking")
    assert short.shape == (1, 3, 16) and longer.shape == (1, 5, 16)  # words + end token, padding dropped
    assert not torch.allclose(short, longer[:, :3])  # bidirectional: later words change earlier tokens
