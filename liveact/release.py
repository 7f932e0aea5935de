"""The released LiveAct folder, as the reference's users have it on disk, read in one place.

`generate.py --ckpt_dir LiveAct --wav2vec_dir chinese-wav2vec2-base` reads:

    LiveAct/
      config.json                        the transformer: the reference's constructor fields
      diffusion_pytorch_model*.safetensors (+ .index.json when sharded), named as diffusers names them
      Wan2.1_VAE.pth                     Wan's video VAE, original format
      models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   open-clip XLM-R + ViT-H/14 (only visual.* is used)
      models_t5_umt5-xxl-enc-bf16.pth    the umT5-XXL encoder
      xlm-roberta-large/  google/umt5-xxl/   tokenizer folders (CLIP's text side is unused here)
    chinese-wav2vec2-base/               Hugging Face format, a folder of its own

Each `.pth` is memory-mapped (`torch.load(mmap=True)`: the file's pages back the tensors, no second copy in
host memory), its keys renamed to the class liveact runs it with (diffusers `AutoencoderKLWan`, transformers
`CLIPVisionModelWithProjection` and `UMT5EncoderModel`), built on the meta device and filled tensor by
tensor in the target dtype. Sizes are read from the tensors' shapes; the few numbers shapes do not hold
(CLIP's head count, the layer it is read at) are the released model's, in one place below.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

import torch

from .hub import Components, LiveActError

VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER = "google/umt5-xxl"
WAV2VEC2_FOLDER = "chinese-wav2vec2-base"  # where the reference's README puts it: beside the model folder
CLIP_HEAD_DIM = 80  # ViT-H/14: 1280 channels in 16 heads (the one size shapes do not tell)
SETTINGS = {"fps": 20, "size": [720, 416], "featurizer": "wav2vec2"}  # the reference README's first example
SIZES = ("512*512", "416*720", "720*416", "480*832")  # WIDTH*HEIGHT the reference runs the released model at

State = dict[str, torch.Tensor]


# -- the folder ---------------------------------------------------------------------------------------

def is_release(folder: Path) -> bool:
    """The released layout holds the transformer at the top and its other parts as files beside it."""
    folder = Path(folder)
    return (any((folder / name).exists() for name in (VAE_FILE, CLIP_FILE, T5_FILE))
            or ((folder / "config.json").exists() and not (folder / "transformer").is_dir()))


def components(folder: Path, wav2vec: Path | None = None, name: str | None = None) -> Components:
    """Where each part of a released folder is; one sentence naming the first file that is missing."""
    from .hub import transformer_config, wav2vec_folder

    folder = Path(folder)
    transformer_config(folder)  # another model's folder is named as such, not as a LiveAct folder missing files
    paths = {"transformer": folder, "vae": folder / VAE_FILE, "image_encoder": folder / CLIP_FILE,
             "text_encoder": folder / T5_FILE, "tokenizer": folder / T5_TOKENIZER}
    for path in paths.values():
        if not path.exists():
            raise LiveActError(f"the released LiveAct folder {folder} lacks {path.relative_to(folder)}: download it "
                               f"again with `hf download Soul-AILab/LiveAct --local-dir {folder}`.")
    paths["audio_encoder"] = wav2vec_folder(wav2vec) if wav2vec else _find_wav2vec(folder)
    return Components(name or folder.name, paths, dict(SETTINGS), released=True)


def _find_wav2vec(folder: Path) -> Path:
    if (folder.parent / WAV2VEC2_FOLDER / "config.json").exists():
        return folder.parent / WAV2VEC2_FOLDER
    raise LiveActError(f"no {WAV2VEC2_FOLDER} folder beside {folder}: download it with `hf download "
                       f"TencentGameMate/{WAV2VEC2_FOLDER} --local-dir {folder.parent / WAV2VEC2_FOLDER}`, or pass --wav2vec PATH.")


def read(path: Path) -> State:
    """A released .pth, memory-mapped; an unreadable file is one sentence naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise LiveActError(f"{path} is missing: download the released folder again.") from None
    except Exception as error:  # truncated zip, not a checkpoint, a pickle weights_only refuses
        raise LiveActError(f"{path} is unreadable ({type(error).__name__}: truncated or not a PyTorch checkpoint): "
                           f"download it again.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LiveActError(f"{path} holds no state dict of tensors: it is not a released LiveAct part.")
    return state


def _build(factory: Callable, converted: State, path: Path, device, dtype) -> torch.nn.Module:
    """Build on the meta device, then assign each converted tensor in `dtype` on `device`."""
    with torch.device("meta"):
        model = factory()
    placed: dict[int, torch.Tensor] = {}  # one copy of a tensor that fills two names (tied embeddings)
    for tensor in converted.values():
        if id(tensor) not in placed:
            placed[id(tensor)] = tensor.to(device=device, dtype=dtype)
    state = {name: placed[id(tensor)] for name, tensor in converted.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise LiveActError(f"{path} does not fit the released layout: {str(error).splitlines()[0]}") from None
    return model.eval()


def _config(reader: Callable, state: State, path: Path, *args):
    """A config read from a file's shapes; a file without the tensors it needs is one sentence naming it."""
    try:
        return reader(state, *args)
    except (KeyError, IndexError) as error:
        raise LiveActError(f"{path} lacks the tensor {error}: it is not the file the released folder names so.") from None


def _indices(state: State, prefix: str) -> list[int]:
    """Sorted distinct N of keys 'prefix.N.*'."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for key in state if (m := pattern.match(key))})


def load_parts(parts: Components, device, text_device, dtype, text_len: int):
    """The released folder's autoencoder, image encoder and text encoder (with its tokenizer folder)."""
    from transformers import AutoTokenizer

    from .encoders import ImageEncoder, TextEncoder

    try:
        tokenizer = AutoTokenizer.from_pretrained(parts["tokenizer"])
    except (OSError, ValueError) as error:
        raise LiveActError(f"the tokenizer folder {parts['tokenizer']} is unreadable ({type(error).__name__}): "
                           f"download the released folder again.") from None
    return (load_vae(parts["vae"], device, dtype),
            ImageEncoder(load_clip(parts["image_encoder"], device, dtype), device=device, dtype=dtype),
            TextEncoder(load_t5(parts["text_encoder"], text_device, dtype), tokenizer, max_length=text_len,
                        device=text_device, dtype=dtype))


# -- Wan2.1_VAE.pth -> diffusers AutoencoderKLWan --------------------------------------------------------

def vae_config(state: State) -> dict:
    """AutoencoderKLWan's config from the encoder's shapes (base width, stages, residual blocks, time strides)."""
    base = state["encoder.conv1.weight"].shape[0]
    blocks = _indices(state, "encoder.downsamples")
    resamples = [i for i in blocks if f"encoder.downsamples.{i}.resample.1.weight" in state]
    per_stage = resamples[0] if resamples else len(blocks)
    stage_starts = [0] + [i + 1 for i in resamples]
    dim_mult = [state[f"encoder.downsamples.{i}.residual.6.weight"].shape[0] // base for i in stage_starts]
    return dict(base_dim=base, z_dim=state["conv2.weight"].shape[0], dim_mult=dim_mult,
                num_res_blocks=per_stage, attn_scales=[],
                temperal_downsample=[f"encoder.downsamples.{i}.time_conv.weight" in state for i in resamples])


def _vae_block(name: str) -> str:
    """A residual block's / middle's inner names: residual.{0,2,3,6} are norm1, conv1, norm2, conv2."""
    for old, new in (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
                     ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut.")):
        name = name.replace(old, new)
    return name


def convert_vae(state: State, num_res_blocks: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Wan's original VAE keys -> diffusers' (the decoder's flat `upsamples` list regrouped into up_blocks)."""
    per_up_block = num_res_blocks + 2  # num_res_blocks + 1 residual blocks, then the upsampler
    for key, tensor in state.items():
        name = key
        for old, new in (("encoder.conv1.", "encoder.conv_in."), ("decoder.conv1.", "decoder.conv_in."),
                         ("encoder.head.0.", "encoder.norm_out."), ("encoder.head.2.", "encoder.conv_out."),
                         ("decoder.head.0.", "decoder.norm_out."), ("decoder.head.2.", "decoder.conv_out."),
                         (".middle.0.", ".mid_block.resnets.0."), (".middle.1.", ".mid_block.attentions.0."),
                         (".middle.2.", ".mid_block.resnets.1."), ("encoder.downsamples.", "encoder.down_blocks.")):
            name = name.replace(old, new)
        if name.startswith(("conv1.", "conv2.")):  # the latent-side 1x1x1 convolutions
            name = {"conv1": "quant_conv", "conv2": "post_quant_conv"}[name[:5]] + name[5:]
        if match := re.match(r"decoder\.upsamples\.(\d+)\.(.*)", name):
            block, position = divmod(int(match.group(1)), per_up_block)
            inner = f"resnets.{position}" if position <= num_res_blocks else "upsamplers.0"
            name = f"decoder.up_blocks.{block}.{inner}.{match.group(2)}"
        yield _vae_block(name), tensor


def load_vae(path: Path, device="cpu", dtype=torch.float32):
    """Wan2.1_VAE.pth -> liveact's WanVAE (diffusers AutoencoderKLWan, Wan 2.1's latent mean/std)."""
    from diffusers import AutoencoderKLWan

    from .vae import WanVAE

    state = read(path)
    config = _config(vae_config, state, path)
    converted = dict(convert_vae(state, config["num_res_blocks"]))
    return WanVAE(_build(lambda: AutoencoderKLWan(**config), converted, path, device, dtype))


# -- open-clip XLM-R ViT-H/14 -> transformers CLIPVisionModelWithProjection --------------------------------

def clip_config(state: State, heads: int | None = None):
    """The vision tower's config from its shapes; `heads` defaults to the released head width (80)."""
    from transformers import CLIPVisionConfig

    width = state["visual.cls_embedding"].shape[-1]
    patch = state["visual.patch_embedding.weight"].shape[-1]
    grid = round((state["visual.pos_embedding"].shape[1] - 1) ** 0.5)
    return CLIPVisionConfig(hidden_size=width, intermediate_size=state["visual.transformer.0.mlp.0.weight"].shape[0],
                            num_hidden_layers=len(_indices(state, "visual.transformer")),
                            num_attention_heads=heads or width // CLIP_HEAD_DIM, image_size=grid * patch,
                            patch_size=patch, projection_dim=state["visual.head"].shape[1], hidden_act="gelu",
                            layer_norm_eps=1e-5)


def convert_clip(state: State) -> Iterator[tuple[str, torch.Tensor]]:
    """open-clip's visual.* -> transformers' names; the fused qkv splits in three; textual.* is not read."""
    for key, tensor in state.items():
        if not key.startswith("visual."):
            continue
        name = key.removeprefix("visual.")
        if name == "cls_embedding":
            yield "vision_model.embeddings.class_embedding", tensor.reshape(-1)
        elif name == "pos_embedding":
            yield "vision_model.embeddings.position_embedding.weight", tensor[0]
        elif name == "head":  # [width, projection] used as x @ head
            yield "visual_projection.weight", tensor.T
        elif name.startswith("patch_embedding."):
            yield f"vision_model.embeddings.{name}", tensor
        elif name.startswith(("pre_norm.", "post_norm.")):
            yield "vision_model." + name.replace("pre_norm", "pre_layrnorm").replace("post_norm", "post_layernorm"), tensor
        elif match := re.match(r"transformer\.(\d+)\.(.*)", name):
            layer, inner = f"vision_model.encoder.layers.{match.group(1)}", match.group(2)
            if inner.startswith("attn.to_qkv."):
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    yield f"{layer}.self_attn.{projection}.{inner.rsplit('.', 1)[1]}", part
                continue
            for old, new in (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."), ("attn.proj.", "self_attn.out_proj."),
                             ("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2.")):
                inner = inner.replace(old, new)
            yield f"{layer}.{inner}", tensor
        else:
            raise LiveActError(f"{CLIP_FILE} holds visual.{name}, which no released ViT-H/14 has.")


def load_clip(path: Path, device="cpu", dtype=torch.float32, heads: int | None = None):
    """The CLIP file's vision tower as transformers' CLIPVisionModelWithProjection."""
    from transformers import CLIPVisionModelWithProjection

    state = read(path)
    config = _config(clip_config, state, path, heads)
    model = _build(lambda: CLIPVisionModelWithProjection(config), dict(convert_clip(state)), path, device, dtype)
    embeddings = model.vision_model.embeddings  # a non-persistent buffer: the meta build left it empty
    embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions, device=device)[None], persistent=False)
    return model


# -- umT5-XXL encoder -> transformers UMT5EncoderModel ---------------------------------------------------------

def t5_config(state: State):
    """umT5's config from its shapes: the per-layer relative bias is [buckets, heads]."""
    from transformers import UMT5Config

    vocab, dim = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    return UMT5Config(vocab_size=vocab, d_model=dim, d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
                      d_ff=state["blocks.0.ffn.fc1.weight"].shape[0], num_layers=len(_indices(state, "blocks")),
                      num_heads=heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)


def convert_t5(state: State) -> Iterator[tuple[str, torch.Tensor]]:
    """Wan's T5 encoder keys -> transformers' (the token embedding is tied: it fills both names)."""
    renames = (("norm1.", "layer.0.layer_norm."), ("attn.", "layer.0.SelfAttention."),
               ("pos_embedding.embedding.", "layer.0.SelfAttention.relative_attention_bias."),
               ("norm2.", "layer.1.layer_norm."), ("ffn.gate.0.", "layer.1.DenseReluDense.wi_0."),
               ("ffn.fc1.", "layer.1.DenseReluDense.wi_1."), ("ffn.fc2.", "layer.1.DenseReluDense.wo."))
    for key, tensor in state.items():
        if key == "token_embedding.weight":
            yield "shared.weight", tensor
            yield "encoder.embed_tokens.weight", tensor
        elif key == "norm.weight":
            yield "encoder.final_layer_norm.weight", tensor
        elif match := re.match(r"blocks\.(\d+)\.(.*)", key):
            inner = match.group(2)
            for old, new in renames:
                if inner.startswith(old):
                    inner = new + inner[len(old):]
                    break
            yield f"encoder.block.{match.group(1)}.{inner}", tensor
        else:
            raise LiveActError(f"{T5_FILE} holds {key}, which no released umT5 encoder has.")


def load_t5(path: Path, device="cpu", dtype=torch.float32):
    """The umT5 file as transformers' UMT5EncoderModel."""
    from transformers import UMT5EncoderModel

    state = read(path)
    config = _config(t5_config, state, path)
    return _build(lambda: UMT5EncoderModel(config), dict(convert_t5(state)), path, device, dtype)
