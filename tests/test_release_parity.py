"""The released folder's front end, proven equal to the reference on ground truth recorded from its code.

Each folder (format: ../shared/fixtures/README.md, `release/`) holds tiny original-format VAE, CLIP and umT5
files and what the reference computed with them in float32: the raw portrait prepared for the video, what
CLIP sees and its tokens, the VAE's normalised encode and its decode, and the umT5 tokens of given ids. We
read the files with liveact/release.py and run liveact's own encoders on the same inputs.

Set LIVEACT_RELEASE_FIXTURES (os.pathsep-separated folders) to check other folders instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import SHARED
from liveact import release
from liveact.encoders import ImageEncoder, TextEncoder, center_crop_resize, clean_prompt, image_to_tensor

TOLERANCE = 1e-4


def fixture_dirs() -> list[Path]:
    configured = os.environ.get("LIVEACT_RELEASE_FIXTURES")
    return [Path(p) for p in configured.split(os.pathsep) if p] if configured else [SHARED / "fixtures" / "release"]


def errors_of(folder: Path) -> dict[str, float]:
    """Max abs error of each recorded tensor, liveact against the reference."""
    meta = json.loads((folder / "meta.json").read_text())
    expected = load_file(folder / "expected.safetensors")
    portrait = SHARED / "examples" / meta["portrait"]
    cond = expected["cond_image"][:, :, 0]  # [1, 3, H, W] in [-1, 1]
    clip = ImageEncoder(release.load_clip(folder / release.CLIP_FILE, heads=meta["clip_config"]["vision_heads"]))
    vae = release.load_vae(folder / release.VAE_FILE)
    text = TextEncoder(release.load_t5(folder / release.T5_FILE), tokenizer=None)
    decoder, z = vae.streaming_decoder(), expected["vae_z"]
    streamed = torch.cat([decoder.decode(z[:, :, :1]), decoder.decode(z[:, :, 1:])], dim=2)  # first frame alone
    measured = {
        "clip_input": clip.preprocess(cond) - expected["clip_input"],
        "clip_tokens": clip(cond) - expected["clip_tokens"],
        "vae_latent": vae.encode(expected["vae_video"]) - expected["vae_latent"],
        "vae_decoded": vae.decode(z) - expected["vae_decoded"],
        "vae_decoded_streaming": streamed - expected["vae_decoded"],
        "t5_tokens": text.encode(expected["t5_ids"], expected["t5_mask"])[0] - expected["t5_tokens"],
    }
    if portrait.exists():  # the raw portrait -> the conditioning image, as generate.py prepares it
        prepared = image_to_tensor(center_crop_resize(Image.open(portrait), meta["height"], meta["width"]))
        measured["cond_image"] = prepared - cond
    return {name: difference.abs().max().item() for name, difference in measured.items()}


@pytest.mark.parametrize("folder", fixture_dirs(), ids=lambda p: p.name)
def test_front_end_matches_the_reference(folder):
    if not (folder / "expected.safetensors").exists():
        pytest.skip(f"missing release fixture {folder} (see ../shared/fixtures/README.md)")
    errors = errors_of(folder)
    print(f"\n{folder.name}: " + ", ".join(f"{name} {error:.2e}" for name, error in errors.items()))
    assert "cond_image" in errors or not (SHARED / "examples").exists()
    assert errors and max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("raw, cleaned", [
    ("  a   person\tis\ntalking  ", "a person is talking"),
    ("a person &amp;amp; a dog", "a person & a dog"),  # unescaped twice
    ("the cafÃ© scene", "the café scene"),  # mojibake fixed by ftfy
])
def test_prompts_are_cleaned_as_the_reference_cleans_them(raw, cleaned):
    assert clean_prompt(raw) == cleaned


def test_umt5_ids_end_with_the_end_token_and_pad_with_zero(random_model_dir):
    from transformers import AutoTokenizer

    text = TextEncoder(model=torch.nn.Linear(1, 1), tokenizer=AutoTokenizer.from_pretrained(random_model_dir / "tokenizer"),
                       max_length=8)
    ids, mask = text.tokenize("  a  person   talking ")
    eos = text.tokenizer.eos_token_id
    assert ids.shape == mask.shape == (1, 8)
    assert ids[0, :4].tolist()[-1] == eos and mask[0].tolist() == [1] * 4 + [0] * 4
    assert ids[0, 4:].tolist() == [0] * 4
