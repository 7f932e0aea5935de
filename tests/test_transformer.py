from __future__ import annotations

import json

import pytest
import torch

from conftest import LATENT_HW, SHARED, TINY, make_tiny_model
from liveact.transformer import LiveActTransformer

STATE_DICT_JSON = SHARED / "fixtures" / "liveact-18b-state-dict.json"


def test_18b_layout_matches_released_checkpoint_on_meta_device():
    if not STATE_DICT_JSON.exists():
        pytest.skip(f"missing {STATE_DICT_JSON}")
    released = json.loads(STATE_DICT_JSON.read_text())
    with torch.device("meta"):
        model = LiveActTransformer.from_config(released["config"])
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    theirs = released["state_dict"]
    assert sorted(set(theirs) - set(ours)) == [], "missing parameters"
    assert sorted(set(ours) - set(theirs)) == [], "unexpected parameters"
    assert {k: v for k, v in ours.items() if v != theirs[k]} == {}, "shape mismatches"
    assert len(ours) == 1713
    assert sum(p.numel() for p in model.parameters()) == released["num_params"] == 18_884_094_784


def test_defaults_are_the_released_config():
    if not STATE_DICT_JSON.exists():
        pytest.skip(f"missing {STATE_DICT_JSON}")
    released = json.loads(STATE_DICT_JSON.read_text())["config"]
    with torch.device("meta"):
        config = LiveActTransformer().config
    for key, value in released.items():
        if key in config:
            assert list(config[key]) == value if isinstance(value, list) else config[key] == value, key


def test_save_and_load_pretrained_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    loaded = LiveActTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config.dim == TINY["dim"] and loaded.config.image_tokens == TINY["image_tokens"]
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def _inputs(model, frames=6, batch=1):
    cfg = model.config
    latents = torch.randn(batch, cfg.out_dim, frames, *LATENT_HW)
    y = torch.randn(batch, cfg.in_dim - cfg.out_dim, frames, *LATENT_HW)
    context = model.embed_context(torch.randn(batch, 3, cfg.text_dim), torch.randn(batch, cfg.image_tokens, cfg.image_dim))
    audio = model.project_audio(torch.randn(batch, 53, cfg.audio_window, cfg.audio_layers, cfg.audio_channels))
    return latents, y, context, audio[:, :frames]


@torch.no_grad()
def test_forward_shapes_and_audio_effects(tiny_model):
    latents, y, context, audio = _inputs(tiny_model)
    without = tiny_model(latents, 1000.0, y, context, None)
    with_audio = tiny_model(latents, 1000.0, y, context, audio)
    assert without.shape == latents.shape
    assert not torch.allclose(without, with_audio), "audio must change the prediction"
    # batch of two = two batches of one
    latents2, y2, context2, audio2 = _inputs(tiny_model, batch=2)
    both = tiny_model(latents2, torch.tensor([1000.0, 500.0]), y2, context2, audio2)
    first = tiny_model(latents2[:1], 1000.0, y2[:1], context2[:1], audio2[:1])
    second = tiny_model(latents2[1:], 500.0, y2[1:], context2[1:], audio2[1:])
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5)


@torch.no_grad()
def test_cross_attention_keys_values_computed_once_give_the_same_velocity(tiny_model):
    latents, y, context, audio = _inputs(tiny_model)
    once = tiny_model.cross_keys_values(context)
    assert len(once) == tiny_model.config.num_layers
    assert torch.equal(tiny_model(latents, 500.0, y, once, audio), tiny_model(latents, 500.0, y, context, audio))
    with pytest.raises(ValueError, match="one per block"):
        tiny_model(latents, 500.0, y, once[:-1], audio)


@torch.no_grad()
def test_reference_frame_of_first_chunk_takes_no_audio():
    # one frame per chunk and no temporal mixing: self-attention sees only the frame itself
    model = make_tiny_model()
    latents, y, context, audio = _inputs(model, frames=1)
    other_audio = torch.randn_like(audio)
    at_slot0 = [model(latents, 937.5, y, context, a, slot=0) for a in (audio, other_audio)]
    at_slot6 = [model(latents, 937.5, y, context, a, slot=6) for a in (audio, other_audio)]
    assert torch.equal(at_slot0[0], at_slot0[1]), "slot 0 (reference frame) must ignore audio"
    assert not torch.allclose(at_slot6[0], at_slot6[1]), "other slots must follow the audio"


@torch.no_grad()
@pytest.mark.parametrize("case, message", [
    ("latent_channels", "latents must be"),
    ("y_frames", "y must be"),
    ("odd_size", "not divisible by the patch"),
    ("audio_frames", "audio tokens must be"),
    ("context", "context must be"),
])
def test_clear_errors_on_wrong_shapes(tiny_model, case, message):
    latents, y, context, audio = _inputs(tiny_model)
    if case == "latent_channels":
        latents = latents[:, :8]
    elif case == "y_frames":
        y = y[:, :, :4]
    elif case == "odd_size":
        latents, y = latents[..., :3], y[..., :3]
    elif case == "audio_frames":
        audio = audio[:, :5]
    elif case == "context":
        context = context[..., :8]
    with pytest.raises(ValueError, match=message):
        tiny_model(latents, 1000.0, y, context, audio)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.embed_context(torch.randn(1, 20, m.config.text_dim), torch.randn(1, 5, 16)), "text tokens must be"),
    (lambda m: m.embed_context(torch.randn(1, 3, 7), torch.randn(1, 5, 16)), "text tokens must be"),
    (lambda m: m.embed_context(torch.randn(1, 3, 16), torch.randn(1, 4, 16)), "image tokens must be"),
    (lambda m: m.project_audio(torch.randn(1, 52, 5, 2, 8)), "audio window must be"),
    (lambda m: m.project_audio(torch.randn(1, 53, 3, 2, 8)), "audio window must be"),
])
def test_clear_errors_on_wrong_conditioning(tiny_model, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_model)


def test_invalid_head_split():
    with pytest.raises(ValueError, match="heads of even size"):
        LiveActTransformer(**{**TINY, "dim": 30, "num_heads": 4})
