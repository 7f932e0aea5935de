"""Where a model's parts come from, and clear sentences when they cannot be had.

A model is one of two folder layouts, or a preset that names one:

- the released LiveAct folder, as the reference's users have it (`generate.py --ckpt_dir`): the transformer
  at the top, Wan's original `.pth` VAE/CLIP/umT5 beside it, tokenizer folders, and wav2vec2 in a folder of
  its own. liveact/release.py reads it.
- a folder of part folders (diffusers / transformers formats):

    transformer/                    config.json + safetensors (shards allowed)
    vae/                            diffusers AutoencoderKLWan (or the tiny autoencoder)
    image_encoder/ [image_processor/]  CLIP vision tower (+ its processor's mean/std)
    text_encoder/ tokenizer/        umT5 encoder + its tokenizer
    audio_encoder/                  wav2vec2 (config, weights, preprocessor) -- or none for mel features
    liveact.json                    pipeline settings: fps, size, featurizer ("wav2vec2" | "mel"), how the
                                    denoiser was trained (context, compression), and "parts": {part: path}
                                    for parts kept elsewhere (relative to the folder)

`tiny` is the folder shipped in the package (liveact/weights/tiny, trained by `python -m liveact train
denoiser`). `liveact-18b` downloads what the reference's README lists: Soul-AILab/LiveAct (the released
folder) and TencentGameMate/chinese-wav2vec2-base. Downloads go through `huggingface_hub.snapshot_download`,
so HF_HOME, HF_HUB_OFFLINE, HF_TOKEN and HF_ENDPOINT behave as everywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

PARTS = ("transformer", "vae", "image_encoder", "image_processor", "text_encoder", "tokenizer", "audio_encoder")
REQUIRED_PARTS = ("transformer", "vae", "image_encoder", "text_encoder", "tokenizer")


class LiveActError(RuntimeError):
    """A problem the user can fix; its message says how, in one sentence."""


@dataclass(frozen=True)
class Preset:
    name: str
    repo: str | None = None  # the released folder on the Hub, downloaded whole as the reference's README says
    wav2vec_repo: str | None = None  # the wav2vec2 folder (its Hugging Face files)
    needs_gpu: bool = True
    folder: Path | None = None  # a preset shipped with the package: a local model folder


WAV2VEC2_FILES = ("config.json", "preprocessor_config.json", "*.safetensors", "pytorch_model.bin")
PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny", needs_gpu=False, folder=Path(__file__).parent / "weights" / "tiny"),
    "liveact-18b": Preset(name="liveact-18b", repo="Soul-AILab/LiveAct",
                          wav2vec_repo="TencentGameMate/chinese-wav2vec2-base"),
}


@dataclass
class Components:
    """Local paths of each part of a model (folders, or the released folder's files), and its pipeline settings."""

    name: str
    paths: dict[str, Path]
    settings: dict
    released: bool = False  # the released folder's layout: original-format files read by liveact/release.py

    def __getitem__(self, part: str) -> Path:
        return self.paths[part]


def resolve(model: str | Path | Preset, wav2vec: str | Path | None = None) -> Components:
    """A preset name, a Preset or a local folder -> local paths of every part (downloading if needed);
    `wav2vec` names the wav2vec2 folder (the reference's --wav2vec_dir)."""
    from . import release

    preset = model if isinstance(model, Preset) else PRESETS.get(str(model))
    if preset is not None and preset.folder is None:
        return _from_preset(preset, wav2vec)
    folder = Path(model) if preset is None else preset.folder
    if preset is None and folder.is_dir() and release.is_release(folder):
        return release.components(folder, Path(wav2vec) if wav2vec else None)
    if preset is not None and not (folder / "transformer").is_dir():
        raise LiveActError(f"the {preset.name} model is not in {folder}: train it with `python -m liveact train denoiser`.")
    if not folder.is_dir():
        names = ", ".join(PRESETS)
        raise LiveActError(f"'{model}' is neither a model folder nor a preset ({names}): pass --model with one of those.")
    settings_file = folder / "liveact.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    located = {part: folder / part for part in PARTS} | {part: folder / path for part, path in settings.pop("parts", {}).items()}
    if wav2vec:
        located["audio_encoder"] = wav2vec_folder(wav2vec)
    paths = {part: path for part, path in located.items() if path.is_dir()}
    missing = [part for part in REQUIRED_PARTS if part not in paths]
    if missing:
        raise LiveActError(f"model folder {folder} lacks {', '.join(missing)}: it needs one of the layouts described in "
                           f"liveact/hub.py (the released LiveAct folder, or part folders).")
    return Components(preset.name if preset else folder.name, paths, settings)


def wav2vec_folder(path: str | Path) -> Path:
    """A wav2vec2 folder in Hugging Face format (--wav2vec), refused in one sentence when it is not one."""
    if not (Path(path) / "config.json").is_file():
        raise LiveActError(f"--wav2vec {path} is not a wav2vec2 folder (no config.json in it): give the "
                           f"chinese-wav2vec2-base folder, in Hugging Face format.")
    return Path(path)


def download(repo: str, preset: str, allow_patterns: Sequence[str] | None = None) -> Path:
    """A Hub repository's snapshot in the local cache, fetched when missing; one sentence when it cannot be had."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(snapshot_download(repo, allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        raise LiveActError(
            f"the {preset} weights ({repo}) are not in the Hugging Face cache and could not be downloaded "
            f"({type(error).__name__}): run `hf download {repo}` on a machine with network access (same HF_HOME), "
            f"or pass --model PATH to a local copy.") from None


def _from_preset(preset: Preset, wav2vec: str | Path | None = None) -> Components:
    from . import release

    folder = download(preset.repo, preset.name)
    wav2vec = Path(wav2vec) if wav2vec else download(preset.wav2vec_repo, preset.name, WAV2VEC2_FILES)
    return release.components(folder, wav2vec, name=preset.name)


def download_bytes(preset: Preset) -> int:
    """The bytes `_from_preset` downloads, from the Hub's file listings (nothing is downloaded); one sentence
    when the Hub cannot be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects, httpx  # httpx: the Hub client's HTTP library, by version

    total = 0
    for repo, patterns in ((preset.repo, None), (preset.wav2vec_repo, WAV2VEC2_FILES)):
        try:  # a timeout: a network that drops packets must not hang the caller
            files = HfApi().model_info(repo, files_metadata=True, timeout=30).siblings
        except (OSError, httpx.HTTPError) as error:  # offline mode and HTTP statuses are OSErrors, no network is not
            raise LiveActError(f"the Hub could not list the files of {repo} ({type(error).__name__}): sizes need the "
                               f"network (HF_HUB_OFFLINE unset) and, for a gated repository, HF_TOKEN.") from None
        total += sum(f.size for f in filter_repo_objects(files, allow_patterns=patterns, key=lambda f: f.rfilename))
    return total


# the reference's constructor fields that any LiveAct transformer's config.json holds
TRANSFORMER_FIELDS = ("in_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "out_dim", "num_heads", "num_layers")


def transformer_config(folder: Path) -> dict:
    """The transformer's config.json, refused in one sentence when it is another model's."""
    import inspect

    from .transformer import LiveActTransformer

    config_file = Path(folder) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LiveActError(f"{config_file} is unreadable ({type(error).__name__}): download the model again.") from None
    if not isinstance(config, dict) or any(name not in config for name in TRANSFORMER_FIELDS):
        kind = config.get("_class_name", "another model") if isinstance(config, dict) else "another model"
        raise LiveActError(f"{config_file} is {kind}'s config, not a LiveAct transformer's (it lacks "
                           f"{', '.join(TRANSFORMER_FIELDS[:3])}, ...): point --model at the released LiveAct folder.")
    accepted = inspect.signature(LiveActTransformer.__init__).parameters
    return {name: value for name, value in config.items() if name in accepted}  # the reference's extra keys are not ours


def weight_files(folder: Path) -> list[Path]:
    """The transformer's safetensors by diffusers' rules: the shards an index names, else the single file."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, _get_checkpoint_shard_files

    folder = Path(folder)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).exists():
        try:
            shards, _ = _get_checkpoint_shard_files(str(folder), str(folder / SAFE_WEIGHTS_INDEX_NAME))
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as error:
            raise LiveActError(f"{folder / SAFE_WEIGHTS_INDEX_NAME} does not name its shards ({error}): download the model again.") from None
        return [Path(shard) for shard in shards]
    if (folder / SAFETENSORS_WEIGHTS_NAME).exists():
        return [folder / SAFETENSORS_WEIGHTS_NAME]
    raise LiveActError(f"{folder} holds no transformer weights ({SAFETENSORS_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} expected).")


def load_transformer(folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Build the transformer on the meta device and assign the safetensors weights directly in `dtype` on
    `device`: no full-precision copy in host memory (the 18B model would need 75 GB of it)."""
    from safetensors import SafetensorError, safe_open

    from .transformer import LiveActTransformer

    config = transformer_config(folder)
    shards = weight_files(folder)
    with torch.device("meta"):
        model = LiveActTransformer.from_config(config)
    state = {}
    for shard in shards:
        try:
            with safe_open(shard, framework="pt", device=str(device)) as f:
                state.update({name: f.get_tensor(name).to(dtype) for name in f.keys()})
        except (SafetensorError, OSError) as error:
            raise LiveActError(f"{shard} is unreadable ({error}): download the model again.") from None
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise LiveActError(f"the checkpoint in {folder} does not fit the LiveAct layout: {str(error).splitlines()[0]}") from None
    return model.eval()


def config_18b() -> dict:
    """The released transformer's configuration (shipped with the package: no download)."""
    return json.loads((Path(__file__).parent / "configs" / "liveact-18b.json").read_text())


def parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    """'W*H' (as the reference), or (height, width) -> (height, width), multiples of 16."""
    if isinstance(size, str):
        try:
            width, height = (int(v) for v in size.lower().replace("x", "*").split("*"))
        except ValueError:
            raise LiveActError(f"size '{size}' is not WIDTH*HEIGHT, e.g. 512*512 or 416*720.") from None
    else:
        height, width = size
    if height % 16 or width % 16:
        raise LiveActError(f"size {width}*{height}: width and height must be multiples of 16.")
    return height, width


def check_gpu(device: torch.device | str, needed_bytes: int, name: str, hint: str | Callable[[int], str]) -> None:
    """Fail with one sentence when a CUDA device is missing or has too little memory; `hint` says what to do
    then (or makes that sentence from the GPU's bytes)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise LiveActError(f"{name} needs a CUDA GPU and none is visible here: run it on a machine with an NVIDIA "
                           f"GPU, or use --model tiny (the small model, real time on a CPU).")
    total = torch.cuda.get_device_properties(device).total_memory
    if total < needed_bytes:
        raise LiveActError(f"{name} needs about {needed_bytes / 2**30:.0f} GiB of GPU memory with these options and "
                           f"{torch.cuda.get_device_name(device)} has {total / 2**30:.0f} GiB: "
                           f"{hint(total) if callable(hint) else hint}")
