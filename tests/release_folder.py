"""A tiny folder in exactly the released LiveAct layout (liveact/release.py), built offline from the fixtures.

- the transformer: the reference fixture's DiT (../shared/fixtures/reference/conv) with a config.json of the
  reference's constructor fields, in two diffusers-named safetensors shards with their index;
- Wan2.1_VAE.pth and the umT5 file: the fixture's tiny original-format files (../shared/fixtures/release);
- the CLIP file: original open-clip keys at the released ViT-H/14 width (1280, as the DiT expects) with
  2 blocks, random, shapes from the full-size manifest;
- google/umt5-xxl/ and xlm-roberta-large/ tokenizer folders (word-level);
- chinese-wav2vec2-base/ beside it: a random wav2vec2 of the released width (12 layers of 768).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from liveact import release
from liveact.tiny import word_tokenizer
from liveact.transformer import LiveActTransformer

CLIP_BLOCKS = 2
WORDS = ["<pad>", "</s>", "<unk>", "a", "person", "is", "talking", "smiles", "nods", "the"]


def write_transformer(folder: Path, fixture: Path) -> None:
    meta = json.loads((fixture / "meta.json").read_text())
    model = LiveActTransformer.from_config(meta["model_config"])
    model.load_state_dict({k: v.float() for k, v in load_file(fixture / "weights.safetensors").items()})
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size=f"{total * 0.6 / 1e3:.0f}KB")  # two shards and an index
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", **meta["model_config"]}, indent=2))


def write_clip(path: Path, manifest: Path, seed: int = 0) -> None:
    """Random tensors under the released file's visual.* names, cut to CLIP_BLOCKS blocks (fp16, as small as can be)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = json.loads(manifest.read_text())["state_dict"]
    kept = {name: shape for name, shape in shapes.items() if name.startswith("visual.") and
            not (name.startswith("visual.transformer.") and int(name.split(".")[2]) >= CLIP_BLOCKS)}
    state = {}
    for name, shape in kept.items():
        if "norm" in name:
            state[name] = (torch.ones if name.endswith("weight") else torch.zeros)(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.02
    state["log_scale"] = torch.tensor(4.6052)
    torch.save({name: tensor.half() for name, tensor in state.items()}, path)


def write_wav2vec(folder: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=64,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor().save_pretrained(folder)


def build_release_folder(root: Path, shared: Path) -> Path:
    """root/LiveAct (the released layout) and root/chinese-wav2vec2-base; returns root/LiveAct."""
    folder = root / "LiveAct"
    folder.mkdir(parents=True)
    fixtures = shared / "fixtures"
    write_transformer(folder, fixtures / "reference" / "conv")
    for name in (release.VAE_FILE, release.T5_FILE):
        shutil.copy(fixtures / "release" / name, folder / name)
    write_clip(folder / release.CLIP_FILE, fixtures / "release-clip-keys.json")
    for tokenizer in (release.T5_TOKENIZER, "xlm-roberta-large"):
        word_tokenizer(WORDS).save_pretrained(folder / tokenizer)
    write_wav2vec(root / release.WAV2VEC2_FOLDER)
    return folder
