"""A complete model folder of the real layout with tiny random weights (see liveact/hub.py), built offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel,
                          Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model)

from liveact.tiny import word_tokenizer
from liveact.transformer import LiveActTransformer

WORDS = ["<pad>", "</s>", "<unk>", "a", "person", "is", "talking", "smiles", "nods", "the"]


def build_random_model(folder: Path, size=(32, 32), fps: float = 20, seed: int = 0, class_name: str | None = None) -> Path:
    """Write transformer/, vae/, image_encoder/, image_processor/, text_encoder/, tokenizer/, audio_encoder/
    and liveact.json into `folder`; every part tiny and random, shapes consistent with each other."""
    torch.manual_seed(seed)
    folder = Path(folder)
    clip = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=8)  # (32/8)^2 + 1 = 17 tokens
    CLIPVisionModel(clip).save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / "image_processor")
    UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                relative_attention_num_buckets=8)).save_pretrained(folder / "text_encoder")
    word_tokenizer(WORDS).save_pretrained(folder / "tokenizer")
    wav2vec = Wav2Vec2Config(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                             conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(wav2vec).save_pretrained(folder / "audio_encoder")
    Wav2Vec2FeatureExtractor().save_pretrained(folder / "audio_encoder")
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(folder / "vae")
    transformer = LiveActTransformer(text_len=8, dim=32, ffn_dim=64, freq_dim=16, text_dim=16, num_heads=2, num_layers=2,
                                     intermediate_dim=8, output_dim=8, context_tokens=2, image_dim=16, image_tokens=17,
                                     audio_layers=2, audio_channels=8)
    with torch.no_grad():
        transformer.head.head.weight.normal_(std=0.2)
    transformer.save_pretrained(folder / "transformer")
    if class_name:  # as the released config names its class
        config_file = folder / "transformer" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_class_name": class_name}))
    (folder / "liveact.json").write_text(json.dumps({"fps": fps, "size": list(size), "featurizer": "wav2vec2"}))
    return folder
