"""The tiny scale: the LiveAct classes at a size that streams in real time on a 2-core CPU.

Everything here is the 18.9B model's code path at other sizes: the same `LiveActTransformer`, a CLIP vision
tower and a umT5 encoder (transformers classes, tiny and frozen at their seeded random initialisation:
fixed random features the denoiser learns to read), log-mel audio features instead of wav2vec2, and the
tiny video autoencoder with Wan's latent geometry. The text encoder's tokenizer is word-level over the
synthetic world's vocabulary, so prompts such as "a person is talking and smiles" mean something.

    128x128 video -> 16x16x16 latents -> 8x8 = 64 tokens per latent frame (patch 2x2)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS = Path(__file__).parent / "weights" / "tiny"
SIZE, FPS = 128, 20

TRANSFORMER = dict(text_len=16, dim=128, ffn_dim=512, freq_dim=64, text_dim=32, num_heads=4, num_layers=4,
                   intermediate_dim=64, output_dim=64, context_tokens=4, image_dim=32, image_tokens=17,
                   audio_layers=1, audio_channels=32)

# what each expression of the world is called in a prompt (synthetic.expressions_in reads them back)
PHRASES = {"neutral": "", "smile": "smiles", "frown": "frowns", "surprised": "is surprised", "nod": "nods",
           "shake head": "shakes his head", "look left": "looks left", "look right": "looks right"}
VOCABULARY = ["<pad>", "</s>", "<unk>", "a", "the", "person", "man", "woman", "is", "talking", "speaking", "and",
              "smiles", "smiling", "frowns", "sad", "surprised", "nods", "shakes", "his", "her", "head", "looks",
              "left", "right", "neutral"]


def prompt_for(expression: str) -> str:
    phrase = PHRASES[expression]
    return "a person is talking" + (f" and {phrase}" if phrase else "")


def word_tokenizer(words: list[str] = VOCABULARY):
    """A word-level tokenizer (whitespace split, unknown words -> <unk>, </s> appended), as transformers expects."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", words.index("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


ENCODER_PARTS = ("image_encoder", "image_processor", "text_encoder", "tokenizer")


def save_encoders(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny image_encoder/, image_processor/, text_encoder/ and tokenizer/ (seeded) into `folder`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    clip = CLIPVisionConfig(hidden_size=TRANSFORMER["image_dim"], intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=64, patch_size=16)  # (64/16)^2 + 1 = 17 tokens
    CLIPVisionModel(clip).save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder / "image_processor")
    umt5 = UMT5Config(vocab_size=len(VOCABULARY), d_model=TRANSFORMER["text_dim"], d_kv=16, d_ff=64, num_layers=2,
                      num_heads=2, relative_attention_num_buckets=8)
    UMT5EncoderModel(umt5).save_pretrained(folder / "text_encoder")
    word_tokenizer().save_pretrained(folder / "tokenizer")
    return folder


def copy_encoders(source: str | Path, folder: str | Path) -> None:
    """The encoder parts of one tiny model folder into another."""
    import shutil

    for part in ENCODER_PARTS:
        shutil.copytree(Path(source) / part, Path(folder) / part)


def write_settings(folder: str | Path, **training) -> None:
    """liveact.json: pipeline settings, where the autoencoder lives, and how the denoiser was trained."""
    import os

    from .autoencoder import WEIGHTS as AUTOENCODER

    vae = Path(os.path.relpath(AUTOENCODER.resolve(), Path(folder).resolve())).as_posix()
    settings = {"fps": FPS, "size": [SIZE, SIZE], "featurizer": "mel", "parts": {"vae": vae}, **training}
    (Path(folder) / "liveact.json").write_text(json.dumps(settings, indent=2) + "\n")
