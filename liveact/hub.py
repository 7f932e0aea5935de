"""Where a model's parts come from, and clear sentences when they cannot be had.

A model is a folder (or a preset that names Hugging Face repositories) with these parts:

    transformer/                    config.json + safetensors (shards allowed)
    vae/                            diffusers AutoencoderKLWan
    image_encoder/ image_processor/ CLIP vision tower + its processor
    text_encoder/ tokenizer/        umT5 encoder + its tokenizer
    audio_encoder/                  wav2vec2 (config, weights, preprocessor) -- or none for mel features
    liveact.json                    pipeline settings: fps, size, featurizer ("wav2vec2" | "mel"), how the
                                    denoiser was trained (context, compression), and "parts": {part: path}
                                    for parts kept elsewhere (relative to the folder)

`tiny` is the folder shipped in the package (liveact/weights/tiny, trained by `python -m liveact train
denoiser`). `liveact-18b` assembles them from the released repositories: the transformer from Soul-AILab/LiveAct,
the Wan parts from the diffusers-format Wan2.1-I2V repository, wav2vec2 from TencentGameMate.
Downloads go through `huggingface_hub.snapshot_download`, so HF_HOME, HF_HUB_OFFLINE, HF_TOKEN and
HF_ENDPOINT behave as everywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

PARTS = ("transformer", "vae", "image_encoder", "image_processor", "text_encoder", "tokenizer", "audio_encoder")


class LiveActError(RuntimeError):
    """A problem the user can fix; its message says how, in one sentence."""


@dataclass(frozen=True)
class Preset:
    name: str
    # part -> (repo id, folder inside the repo, files to fetch)
    sources: dict[str, tuple[str, str, tuple[str, ...]]]
    settings: dict = field(default_factory=dict)
    needs_gpu: bool = True
    folder: Path | None = None  # a preset shipped with the package: a local model folder


_WAN = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
_WAV2VEC2 = "TencentGameMate/chinese-wav2vec2-base"
PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny", sources={}, needs_gpu=False, folder=Path(__file__).parent / "weights" / "tiny"),
    "liveact-18b": Preset(
        name="liveact-18b",
        sources={
            "transformer": ("Soul-AILab/LiveAct", "", ("config.json", "*.safetensors", "*.safetensors.index.json")),
            "vae": (_WAN, "vae", ("vae/*",)),
            "image_encoder": (_WAN, "image_encoder", ("image_encoder/*",)),
            "image_processor": (_WAN, "image_processor", ("image_processor/*",)),
            "text_encoder": (_WAN, "text_encoder", ("text_encoder/*",)),
            "tokenizer": (_WAN, "tokenizer", ("tokenizer/*",)),
            "audio_encoder": (_WAV2VEC2, "", ("config.json", "preprocessor_config.json", "*.safetensors", "*.bin")),
        },
        settings={"fps": 20, "size": [720, 416], "featurizer": "wav2vec2"},
    ),
}


@dataclass
class Components:
    """Local folders of each part of a model, and its pipeline settings."""

    name: str
    paths: dict[str, Path]
    settings: dict

    def __getitem__(self, part: str) -> Path:
        return self.paths[part]


def resolve(model: str | Path | Preset) -> Components:
    """A preset name, a Preset or a local folder -> local folders of every part (downloading if needed)."""
    preset = model if isinstance(model, Preset) else PRESETS.get(str(model))
    if preset is not None and preset.folder is None:
        return _from_preset(preset)
    folder = Path(model) if preset is None else preset.folder
    if preset is not None and not (folder / "transformer").is_dir():
        raise LiveActError(f"the {preset.name} model is not in {folder}: train it with `python -m liveact train denoiser`.")
    if not folder.is_dir():
        names = ", ".join(PRESETS)
        raise LiveActError(f"'{model}' is neither a model folder nor a preset ({names}): pass --model with one of those.")
    settings_file = folder / "liveact.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    located = {part: folder / part for part in PARTS} | {part: folder / path for part, path in settings.pop("parts", {}).items()}
    paths = {part: path for part, path in located.items() if path.is_dir()}
    missing = [part for part in PARTS[:-1] if part not in paths]
    if missing:
        raise LiveActError(f"model folder {folder} lacks {', '.join(missing)}: it needs the layout described in liveact/hub.py.")
    return Components(preset.name if preset else folder.name, paths, settings)


def _from_preset(preset: Preset) -> Components:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    roots: dict[str, Path] = {}
    paths = {}
    by_repo: dict[str, list[str]] = {}
    for repo, _, patterns in preset.sources.values():
        by_repo.setdefault(repo, []).extend(patterns)
    for repo, patterns in by_repo.items():
        try:
            roots[repo] = Path(snapshot_download(repo, allow_patterns=patterns))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
            raise LiveActError(
                f"the {preset.name} weights ({repo}) are not in the Hugging Face cache and could not be downloaded "
                f"({type(error).__name__}): run `hf download {repo}` on a machine with network access (same HF_HOME), "
                f"or pass --model PATH to a local copy.") from None
    for part, (repo, subfolder, _) in preset.sources.items():
        paths[part] = roots[repo] / subfolder if subfolder else roots[repo]
    return Components(preset.name, paths, dict(preset.settings))


def load_transformer(folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Build the transformer on the meta device and assign the safetensors weights directly in `dtype` on
    `device`: no full-precision copy in host memory (the 18B model would need 75 GB of it)."""
    from safetensors import safe_open

    from .transformer import LiveActTransformer

    config_file = Path(folder) / "config.json"
    shards = sorted(Path(folder).glob("*.safetensors"))
    if not config_file.exists() or not shards:
        raise LiveActError(f"{folder} holds no transformer (config.json and *.safetensors expected).")
    with torch.device("meta"):
        model = LiveActTransformer.from_config(json.loads(config_file.read_text()))
    state = {}
    for shard in shards:
        with safe_open(shard, framework="pt", device=str(device)) as f:
            state.update({name: f.get_tensor(name).to(dtype) for name in f.keys()})
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


def check_gpu(device: torch.device | str, needed_bytes: int, name: str, hint: str) -> None:
    """Fail with one sentence when a CUDA device is missing or has too little memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise LiveActError(f"{name} needs a CUDA GPU and none is visible here: run it on a machine with an NVIDIA "
                           f"GPU, or use --model tiny (the small model, real time on a CPU).")
    total = torch.cuda.get_device_properties(device).total_memory
    if total < needed_bytes:
        raise LiveActError(f"{name} needs about {needed_bytes / 2**30:.0f} GiB of GPU memory with these options and "
                           f"{torch.cuda.get_device_name(device)} has {total / 2**30:.0f} GiB: {hint}")
