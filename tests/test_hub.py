"""Hub resolution against a local Hugging Face cache (HF_HUB_OFFLINE), loading, and clear failures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import example, run_liveact
from liveact.hub import LiveActError, config_18b, load_transformer, resolve
from liveact.pipeline import Options
from liveact.stream import StreamConfig
from liveact.transformer import LiveActTransformer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(hf_home: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<commit>/...}."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        target = root / "snapshots" / COMMIT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HOME=<tmp>/hf and HF_HUB_OFFLINE=1 (huggingface_hub reads both at import, so patch its constants too)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def test_18b_preset_downloads_exactly_the_reference_readme_repositories(offline_hub, random_model_dir, monkeypatch):
    # the tiny random model's transformer stands in for the released folder, its encoders' files for the .pth parts
    import huggingface_hub

    from liveact import release

    model = random_model_dir
    released = {p.name: p for p in (model / "transformer").iterdir()}
    released |= {name: model / "vae" / "config.json" for name in (release.VAE_FILE, release.CLIP_FILE, release.T5_FILE)}
    released |= {f"{release.T5_TOKENIZER}/{p.name}": p for p in (model / "tokenizer").iterdir()}
    put_in_cache(offline_hub, "Soul-AILab/LiveAct", released)
    put_in_cache(offline_hub, "TencentGameMate/chinese-wav2vec2-base", {p.name: p for p in (model / "audio_encoder").iterdir()})
    asked = []
    download = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(repo) or download(repo, **kw))
    parts = resolve("liveact-18b")
    assert sorted(asked) == ["Soul-AILab/LiveAct", "TencentGameMate/chinese-wav2vec2-base"]
    assert parts.released and parts["transformer"].name == COMMIT and parts["vae"].name == release.VAE_FILE
    assert (parts["audio_encoder"] / "preprocessor_config.json").exists()
    assert load_transformer(parts["transformer"]).config.dim == 32


def test_a_folder_of_part_folders_takes_another_wav2vec2(random_model_dir, tmp_path):
    elsewhere = shutil.copytree(random_model_dir / "audio_encoder", tmp_path / "wav2vec2")
    parts = resolve(random_model_dir, wav2vec=elsewhere)
    assert not parts.released and parts["audio_encoder"] == elsewhere
    with pytest.raises(LiveActError, match="is not a wav2vec2 folder"):
        resolve(random_model_dir, wav2vec=tmp_path / "nowhere")


def test_missing_weights_are_one_actionable_sentence(offline_hub):
    with pytest.raises(LiveActError) as error:
        resolve("liveact-18b")
    message = str(error.value)
    assert "Soul-AILab/LiveAct" in message and "--model PATH" in message and "\n" not in message


def test_load_transformer_from_released_style_sharded_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = LiveActTransformer(text_len=8, dim=32, ffn_dim=64, freq_dim=16, text_dim=16, num_heads=2, num_layers=2,
                               intermediate_dim=8, output_dim=8, context_tokens=2, image_dim=16, image_tokens=5,
                               audio_layers=2, audio_channels=8)
    model.save_pretrained(tmp_path, max_shard_size="20KB")  # several shards + index, as the 18B checkpoint
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(_class_name="WanModel", model_type="i2v", weight_init=True)  # the released config's extra keys
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = load_transformer(tmp_path, dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b), name
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(LiveActError, match="does not fit the LiveAct layout"):
        load_transformer(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").unlink()  # shards without their index: not globbed
    with pytest.raises(LiveActError, match="holds no transformer weights"):
        load_transformer(tmp_path)


def test_a_folder_missing_parts_is_a_clear_error(tmp_path):
    with pytest.raises(LiveActError, match="neither a model folder nor a preset"):
        resolve(tmp_path / "nowhere")
    (tmp_path / "transformer").mkdir()
    with pytest.raises(LiveActError, match="lacks vae"):
        resolve(tmp_path)


def test_too_little_gpu_memory_names_the_low_vram_setting_that_fits(monkeypatch):
    """A 24 GiB card for the released config: one sentence that says which --low-vram would fit it."""
    from liveact.pipeline import _low_vram_hint

    config, size, bf16 = config_18b(), (720, 416), Options(dtype=torch.bfloat16)
    assert _low_vram_hint(config, size, bf16, 1, 24 * 2**30).startswith("add --low-vram 24 ")
    assert "two GPUs" in _low_vram_hint(config, size, bf16, 1, 2 * 2**30)


def test_18b_without_gpu_or_weights_exits_with_one_sentence(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = ["--image", str(example("portrait-1.png")), "--audio", str(example("speech-1.wav")), "--out", str(tmp_path / "o.mp4")]
    for extra, expected in [([], "needs a CUDA GPU"), (["--device", "cpu"], "not in the Hugging Face cache"),
                            (["--low-vram", "2"], "does not fit 2 GiB: it needs about")]:
        result = run_liveact("generate", "--model", "liveact-18b", *common, *extra, env=env)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_too_little_gpu_memory_is_one_actionable_sentence(monkeypatch):
    from types import SimpleNamespace

    from liveact.hub import check_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=24 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a 24 GB card")
    check_gpu("cuda", 20 * 2**30, "liveact-18b", "add --fp8-memory.")  # fits: no error
    with pytest.raises(LiveActError) as error:
        check_gpu("cuda", 80 * 2**30, "liveact-18b", "add --fp8-memory.")
    assert str(error.value) == ("liveact-18b needs about 80 GiB of GPU memory with these options and a 24 GB card "
                                "has 24 GiB: add --fp8-memory.")
