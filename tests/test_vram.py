from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from transformers import CLIPVisionConfig, UMT5Config, Wav2Vec2Config

from conftest import LATENT_HW, SHARED, TINY, make_conditioning, make_tiny_model
from liveact import release, vram
from liveact.hub import config_18b
from liveact.memory import MemoryLayout
from liveact.pipeline import Options
from liveact.stream import StreamConfig, StreamingSession
from liveact.vae import WanVAE

KIB = 1024
SIZE = tuple(side * WanVAE.spatial_ratio for side in LATENT_HW)  # the tiny model's video size (H, W)
FIXTURES = SHARED / "fixtures"


# -- the tracker ------------------------------------------------------------------------------------------

def test_live_bytes_follows_storages_from_their_op_to_their_free():
    before = torch.ones(KIB // 4)  # 1 KiB made before the tracker: its views and reads cost nothing
    with vram.LiveBytes("cpu") as tracker:
        a = before * 2
        assert tracker.live == KIB
        b = torch.cat([a, a])
        assert tracker.live == 3 * KIB
        view = b[:KIB // 4].mul_(2)  # a view and an in-place result: no new storage
        del a
        assert tracker.live == 2 * KIB
        c = view + before.view(-1)
        del b
        assert tracker.live == 3 * KIB  # the view keeps b's storage alive
        del view
        assert tracker.live == KIB
        d = torch.stack([c, c, c])
        assert (tracker.live, tracker.peak) == (4 * KIB, 4 * KIB)
        del c, d
        assert tracker.live == 0
        assert tracker.transient(lambda: torch.cat([before, before]) + 1) == 4 * KIB  # the cat and the sum at once
    assert (tracker.live, tracker.peak) == (0, 4 * KIB)


def test_fused_attention_allocates_its_output_only():
    q, kv = torch.zeros(1, 2, 64, 8, device="meta"), torch.zeros(1, 2, 128, 8, device="meta")  # [B, heads, L, head_dim]
    scores = q.shape[2] * kv.shape[2] * q.shape[1] * q.element_size()
    with vram.LiveBytes("meta") as tracker:
        math_path = tracker.transient(lambda: F.scaled_dot_product_attention(q, kv, kv))
        with vram.FusedAttention():
            assert tracker.transient(lambda: F.scaled_dot_product_attention(q, kv, kv)) == q.nbytes
    assert math_path >= q.nbytes + scores


# -- measuring on the meta device -------------------------------------------------------------------------

def test_a_chunk_on_the_meta_device_allocates_what_it_does_on_the_cpu():
    cpu = make_tiny_model()
    meta = vram.meta_transformer(TINY, torch.float32)
    assert vram.measure_call(meta, SIZE) == vram.measure_call(cpu, SIZE) > 0
    assert vram.measure_context(meta, SIZE) == vram.measure_context(cpu, SIZE) > 0


def test_a_call_peaks_in_one_block():
    peaks = [vram.measure_call(vram.meta_transformer({**TINY, "num_layers": layers}, torch.float32), SIZE)
             for layers in (1, 3)]
    assert peaks[0] == peaks[1]


def test_a_decode_on_the_meta_device_allocates_what_it_does_on_the_cpu():
    tiny, size = {**vram.VAE, "base_dim": 4}, (16, 16)  # the released VAE's layout, small for the CPU's conv3d
    short = StreamConfig(layout=MemoryLayout(sink=1, compressed=1, recent=1, chunk=2, factor=3))  # 3 frames, then 2
    cpu = AutoencoderKLWan(**tiny)
    with torch.device("meta"):
        meta = AutoencoderKLWan(**tiny)
    measured = vram.measure_decode(WanVAE(meta), size, short)
    assert measured == vram.measure_decode(WanVAE(cpu), size, short)
    assert measured.cache > 0 and measured.peak > 0


# -- weights ------------------------------------------------------------------------------------------------

def shapes(name: str) -> dict[str, torch.Tensor]:
    """A released file's full-size state dict as meta tensors."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"missing fixture {path}")
    listed = json.loads(path.read_text())
    state = {key: torch.empty(shape, device="meta") for key, shape in listed["state_dict"].items()}
    assert sum(t.numel() for t in state.values()) == listed["values"]
    return state


def parameters(name: str) -> int:
    return sum(p.numel() for p in vram.released_part(name).parameters())


def test_the_released_configs_are_those_of_the_released_files():
    vae, clip, t5 = shapes("release-vae-keys.json"), shapes("release-clip-keys.json"), shapes("release-t5-keys.json")
    assert release.vae_config(vae) == vram.VAE
    assert release.clip_config(clip).to_dict() == CLIPVisionConfig(**vram.CLIP).to_dict()
    assert release.t5_config(t5).to_dict() == UMT5Config(**vram.UMT5).to_dict()
    assert parameters("vae") == sum(t.numel() for t in vae.values())
    assert parameters("image_encoder") == sum(t.numel() for key, t in clip.items() if key.startswith("visual."))
    assert parameters("text_encoder") == sum(t.numel() for t in t5.values())  # one token embedding, tied


def test_the_audio_encoder_gives_the_features_the_transformer_takes():
    config, wav2vec = config_18b(), Wav2Vec2Config(**vram.WAV2VEC2)
    assert (wav2vec.num_hidden_layers, wav2vec.hidden_size) == (config["audio_layers"], config["audio_channels"])


def test_transformer_weights_are_the_released_checkpoints():
    path = FIXTURES / "liveact-18b-state-dict.json"
    if not path.exists():
        pytest.skip(f"missing fixture {path}")
    weights = vram.transformer_weights(config_18b(), torch.bfloat16)
    assert weights.on_device() == json.loads(path.read_text())["num_params"] * torch.bfloat16.itemsize
    assert weights.on_device(2) == weights.rest + 2 * weights.block


def test_fp8_gemm_stores_block_linears_in_one_byte_and_a_float32_scale_per_row():
    plain = vram.transformer_weights(TINY, torch.bfloat16)
    linears = [m for m in make_tiny_model().blocks[0].modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    rows = sum(m.out_features for m in linears)
    fp8 = vram.transformer_weights(TINY, torch.bfloat16, fp8_gemm=True)
    assert fp8.block == plain.block - weights * (torch.bfloat16.itemsize - 1) + rows * torch.float32.itemsize
    assert fp8.rest == plain.rest


# -- session state and the sum ------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [StreamConfig(), StreamConfig(fp8_memory=True)])
def test_memory_bytes_are_the_memorys_nbytes(stream):
    model = vram.meta_transformer(TINY)
    memory = vram.make_memory(model, SIZE, stream)
    assert vram.memory_bytes(TINY, SIZE, stream) == memory.nbytes
    assert vram.memory_bytes(TINY, SIZE, stream, world=2) == memory.nbytes // 2
    offloaded = vram.memory_bytes(TINY, SIZE, replace(stream, offload_memory=True))
    window = stream.layout.window * memory.tokens_per_frame * model.config.dim  # one layer's keys
    assert offloaded == 2 * window * torch.bfloat16.itemsize  # its workspace: one layer's keys and values


@pytest.mark.parametrize("stream", [StreamConfig(), StreamConfig(audio_guidance=1.5), StreamConfig(context="clean"),
                                    StreamConfig(context="clean", audio_guidance=1.5)])
def test_memory_count_is_the_sessions(stream):
    model = make_tiny_model()
    y, image, text, _ = make_conditioning(model)
    session = StreamingSession(model, y, image, text, config=stream)
    one = vram.memory_bytes(TINY, SIZE, stream, torch.float32)
    assert session.memory_bytes == vram.memory_count(stream) * one > 0


def test_count_follows_the_options():
    plain = vram.count(TINY, SIZE, Options(dtype=torch.bfloat16))
    weights = vram.transformer_weights(TINY, torch.bfloat16)
    active = vram.peak_activation_bytes(TINY, SIZE)
    assert plain.transformer == weights.on_device()
    assert plain.memories == Options().stream.sampler.num_steps * vram.memory_bytes(TINY, SIZE)  # one per step
    assert plain.activations == max(active.call, active.decode)
    assert plain.total == sum(vars(plain).values())
    changed = vram.count(TINY, SIZE, Options(dtype=torch.bfloat16, text_encoder_on_cpu=True, overlap_decode=True,
                                             block_offload=True), world=2)
    assert (changed.text_encoder, changed.activations) == (0, active.call + active.decode)
    assert changed.transformer == weights.on_device(vram.STREAMED_ON_DEVICE)
    assert changed.memories == plain.memories // 2


def test_resident_blocks_stay_on_the_gpu():
    weights = vram.transformer_weights(TINY, torch.bfloat16)
    kept = vram.count(TINY, SIZE, Options(dtype=torch.bfloat16, block_offload=True, resident_blocks=1))
    assert kept.transformer == weights.on_device(1 + vram.STREAMED_ON_DEVICE)


def test_low_vram_takes_the_cheapest_measures_that_fit():
    """The 18B config at 416x720: what fits a 24 GiB and a 48 GiB card, and a budget nothing fits."""
    config, size, bf16 = config_18b(), (720, 416), Options(dtype=torch.bfloat16)
    plenty = vram.count(config, size, bf16).total
    options, measures = vram.fit(config, size, bf16, int(plenty / vram.HEADROOM) + 1)
    assert options == bf16 and measures == []  # it fits as it is
    order = [name for name, _ in vram._measures(fp8_gemm=True)]
    for gib in (24, 48):
        options, measures = vram.fit(config, size, bf16, gib * 2**30)
        assert vram.count(config, size, options).total <= vram.HEADROOM * gib * 2**30
        taken = [m for m in measures if m in order]
        assert taken == order[:len(taken)]  # cheapest first, none skipped
        fewer = vram.fit(config, size, bf16, gib * 2**30, fp8_gemm=False)[1]
        assert "fp8 GEMMs" not in fewer  # only where the card has fp8 tensor cores
    assert "fp8 GEMMs" in vram.fit(config, size, bf16, 24 * 2**30)[1]
    small, measures24 = vram.fit(config, size, bf16, 24 * 2**30)
    assert small.block_offload and 0 < small.resident_blocks < 40 and small.text_encoder_on_cpu
    with pytest.raises(ValueError, match="even with every block streamed"):
        vram.fit(config, size, bf16, 2 * 2**30)


def test_fit_table_says_what_each_card_takes():
    table = vram.fit_table(config_18b(), [(720, 416)], [2, 24, 200])
    rows = table.splitlines()[2:]
    assert "does not fit" in rows[0] and "blocks kept on the GPU" in rows[1] and "as it is" in rows[2]
