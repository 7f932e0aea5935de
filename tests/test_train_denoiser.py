"""Training the denoiser: the unrolled memory is the inference memory, every objective and memory variant
trains, a short run lowers the loss and resumes from its checkpoint, and the shipped tiny model streams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from liveact import train
from liveact.memory import ConvKVMemory, MemoryLayout, UnrolledMemory
from liveact.stream import ChunkGeometry

SMALL = dict(text_len=16, dim=32, ffn_dim=64, freq_dim=16, text_dim=32, num_heads=2, num_layers=2, intermediate_dim=16,
             output_dim=16, context_tokens=2, image_dim=32, image_tokens=17, audio_layers=1, audio_channels=32)
T = 4  # tokens per frame


@pytest.mark.parametrize("compression", ["conv", "mean", "sliding"])
def test_unrolled_memory_holds_the_same_window_as_the_inference_memory(compression):
    torch.manual_seed(0)
    filters = [(torch.rand(6, 1, 5), torch.rand(6, 1, 5))]
    stored = ConvKVMemory(1, T, 2, 3, compression=compression)
    unrolled = UnrolledMemory(1, T, compression=compression)
    geometry = ChunkGeometry(MemoryLayout())
    for chunk in range(5):  # two compressions, the second recursive
        frames = geometry.latent_frames(chunk)
        keys, values = torch.randn(2, 1, (frames.stop - frames.start) * T, 2, 3)
        slots = [m.begin_chunk(chunk, filters) for m in (stored, unrolled)]
        assert slots[0] == slots[1] == (0 if chunk == 0 else 6)
        for a, b in zip(stored.attend_window(0, slots[0], keys, values), unrolled.attend_window(0, slots[1], keys, values)):
            assert torch.allclose(a, b, atol=1e-6)


def test_full_cache_grows_and_keeps_every_frame():
    memory = UnrolledMemory(1, T, compression="full")
    geometry = ChunkGeometry(MemoryLayout())
    for chunk in range(4):
        frames = geometry.latent_frames(chunk)
        slot = memory.begin_chunk(chunk)
        assert slot == frames.start
        keys = torch.randn(1, (frames.stop - frames.start) * T, 2, 3)
        window, _ = memory.attend_window(0, slot, keys, keys)
        assert window.shape[1] == frames.stop * T
    assert memory.nbytes == 2 * 30 * T * 6 * 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four short rendered clips, encoded (cached in a temporary folder)."""
    folder = tmp_path_factory.mktemp("denoiser")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIVEACT_CACHE", str(folder / "cache"))
        from liveact.tiny import save_encoders

        save_encoders(folder / "model")
        return folder, train.denoiser_data(folder / "model", clips=4, seconds=6.5, progress=False)


def batch_of(data, size=2, seed=0):
    geometry = ChunkGeometry(MemoryLayout())
    return train._sample_windows(data[1], size, geometry, torch.Generator().manual_seed(seed))


def test_data_windows_have_the_stream_geometry(data):
    batch = batch_of(data)
    assert batch["latents"].shape == (2, 16, 30, 16, 16)  # portrait + 29 groups of 4 frames
    assert batch["y"].shape == (2, 20, 14, 16, 16)
    assert batch["features"].shape == (2, 119, 1, 32)  # 117 frames + the 2 of lookahead
    assert torch.equal(batch["latents"][:, :, 0], batch["y"][:, 4:, 0])  # frame 0 is the portrait


@pytest.mark.parametrize("objective,compression", [("neighbor", "conv"), ("neighbor", "mean"), ("neighbor", "sliding"),
                                                   ("neighbor", "full"), ("teacher", "conv"), ("diffusion", "conv")])
def test_every_objective_and_memory_trains(data, objective, compression):
    torch.manual_seed(0)
    model = make_tiny_model(**SMALL).train()
    loss = train.clip_loss(model, batch_of(data), objective, compression, torch.Generator().manual_seed(0),
                           ChunkGeometry(MemoryLayout()))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    conv_grad = model.blocks[0].self_attn.memory_proj_k.weight.grad
    # the compression filters learn exactly when they compress (from the third chunk on)
    assert (conv_grad is not None and conv_grad.abs().sum() > 0) == (compression == "conv")


def test_short_run_lowers_the_loss_and_resumes(data, tmp_path, monkeypatch):
    folder, _ = data
    monkeypatch.setenv("LIVEACT_CACHE", str(folder / "cache"))
    out = tmp_path / "run"
    options = dict(steps=60, batch=2, lr=3e-3, clips=4, seconds=6.5, checkpoint_every=20, progress=False, transformer=SMALL)
    real_loss, calls = train.clip_loss, []

    def interrupted(*args, **kwargs):  # the run dies after its second checkpoint
        calls.append(1)
        if len(calls) > 45:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train, "clip_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_denoiser(out, **options)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 40
    monkeypatch.setattr(train, "clip_loss", real_loss)
    metrics = train.train_denoiser(out, **options)
    curve = metrics["loss_curve"]
    print(f"\nloss every 10 steps: {np.round(curve, 3).tolist()}")
    assert len(curve) == 6 and not (out / "checkpoint.pt").exists()
    assert np.mean(curve[-2:]) < 0.9 * curve[0]  # 60 steps of a 2-layer model: it has started to learn
    settings = json.loads((out / "liveact.json").read_text())
    assert settings["context"] == "neighbor" and settings["compression"] == "conv"
    assert (out / "transformer" / "config.json").exists()


def test_a_trained_folder_loads_as_trained(data, tmp_path, monkeypatch):
    """A teacher-forced model streams with clean context, whatever the caller's default."""
    from liveact.pipeline import load
    from liveact.synthetic import speech

    folder, _ = data
    monkeypatch.setenv("LIVEACT_CACHE", str(folder / "cache"))
    out = tmp_path / "teacher"
    train.train_denoiser(out, steps=2, batch=1, clips=4, seconds=6.5, progress=False, transformer=SMALL, objective="teacher")
    pipe = load(out)
    assert (pipe.options.stream.context, pipe.options.stream.compression) == ("clean", "conv")
    live = pipe.start(np.full((128, 128, 3), 128, np.uint8), prompt="a person is talking and smiles")
    live.feed(speech(3.0, seed=1), 16000)
    live.finish()
    frames = [chunk.frames for chunk in live.chunks()]
    assert sum(len(f) for f in frames) >= 60 and frames[0].shape[1:] == (128, 128, 3)


def test_shipped_tiny_model_loads_and_streams_in_sync():
    """The default model: trained weights in the package, streaming a held-out identity with lip sync."""
    from liveact.evaluate import HELDOUT_SEED, rollout
    from liveact.pipeline import load
    from liveact.synthetic import speech
    from liveact.tiny import WEIGHTS

    metrics = json.loads((WEIGHTS / "metrics.json").read_text())
    assert (metrics["objective"], metrics["compression"]) == ("neighbor", "conv")
    pipe = load("tiny")
    assert pipe.name == "tiny" and pipe.size == (128, 128)
    result = rollout(pipe, HELDOUT_SEED + 99, speech(12.0, HELDOUT_SEED + 99), "test")
    print(f"\nshipped tiny model, 12 s held-out: {result.evaluation.report()}")
    assert len(result.evaluation.mouth_read) == 240
    assert result.evaluation.lip_sync_corr > 0.5
    assert result.evaluation.drift_at(12.0) < 0.6  # in spreads; different identities are ~1.1 apart (eval JSON)


def test_eval_command_writes_the_summary(tmp_path):
    from conftest import run_liveact

    summary_file = tmp_path / "eval.json"
    result = run_liveact("eval", "--minutes", "0.2", "--identities", "1", "--real-speech", str(tmp_path),
                         "--json", str(summary_file), "--plot", str(tmp_path / "drift.png"),
                         "--sheet", str(tmp_path / "sheet.png"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_file.read_text())
    assert {"lip_sync_corr", "identity_drift", "flicker", "memory_bytes", "ms_per_chunk"} <= set(summary)
    assert list(summary["identity_drift"]) == ["10s"]  # only the times a 12-second rollout reaches
    assert (tmp_path / "drift.png").stat().st_size > 0 and (tmp_path / "sheet.png").stat().st_size > 0
    assert result.stdout.splitlines()[-1].startswith("| tiny |")


def test_the_data_cache_is_keyed_by_the_encoders_that_made_it(data, tmp_path):
    """Retrained encoders must not reuse clips encoded by the old ones."""
    import shutil

    from liveact.autoencoder import WEIGHTS
    from liveact.tiny import ENCODER_PARTS

    folder = data[0] / "model"
    copy = tmp_path / "model"
    for part in ENCODER_PARTS:
        shutil.copytree(folder / part, copy / part)
    parts = lambda root: [root / part for part in ENCODER_PARTS]  # noqa: E731
    assert train._fingerprint(*parts(copy)) == train._fingerprint(*parts(folder))
    weights = next((copy / "text_encoder").glob("*.safetensors"))
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 1
    weights.write_bytes(bytes(changed))
    assert train._fingerprint(*parts(copy)) != train._fingerprint(*parts(folder))
    assert len(list((data[0] / "cache").glob(f"*-{train._fingerprint(WEIGHTS, *parts(folder))}.pt"))) == 1  # the name
