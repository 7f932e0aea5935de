"""The shipped tiny video autoencoder: Wan's geometry, streamable, accurate and fast enough for real time."""

from __future__ import annotations

import json

import pytest
import torch

from liveact.autoencoder import WEIGHTS, TinyVideoAutoencoder, decode_rate, load_autoencoder
from liveact.train import evaluate_autoencoder
from liveact.vae import condition


def test_wan_geometry_and_streaming_equal_whole_decode():
    torch.manual_seed(0)
    model = TinyVideoAutoencoder().eval()
    video = torch.rand(1, 3, 1 + 4 * 5, 64, 64) * 2 - 1
    latents = model.encode(video)
    assert latents.shape == (1, 16, 6, 8, 8)  # 16 channels, 1 + n in time, 8x in space
    whole = model.decode(latents)
    assert whole.shape == video.shape
    decoder = model.streaming_decoder()
    parts = [decoder.decode(latents[:, :, :2]), decoder.decode(latents[:, :, 2:])]
    assert [p.shape[2] for p in parts] == [5, 16]
    assert torch.allclose(torch.cat(parts, 2), whole, atol=1e-6)
    y = condition(model, video[:, :, 0], window=14)
    assert y.shape == (1, 20, 14, 8, 8)
    with pytest.raises(ValueError, match="1 \\+ 4n frames"):
        model.encode(video[:, :, :4])


def test_shipped_weights_reconstruct_held_out_video_at_30_db():
    model = load_autoencoder()
    shipped = json.loads((WEIGHTS / "metrics.json").read_text())
    psnr = evaluate_autoencoder(model, clips=3)
    print(f"\ntiny autoencoder held-out PSNR {psnr:.2f} dB (shipped run: {shipped['heldout_psnr_db']:.2f} dB)")
    assert psnr >= 30.0


def test_shipped_weights_decode_100_frames_per_second_at_128():
    rate = decode_rate(load_autoencoder(), seconds=12.0)  # median of 3 runs after a warm-up
    print(f"\ntiny autoencoder streaming decode: {rate:.0f} frames/s at 128x128")
    assert rate >= 100


def test_conditioning_encodes_one_zero_group_and_equals_the_whole_window():
    model = load_autoencoder()
    portrait = torch.rand(1, 3, 128, 128) * 2 - 1
    shortcut = condition(model, portrait, 14)
    model.independent_groups = False  # the generic path: all 53 frames through the encoder
    assert torch.equal(shortcut, condition(model, portrait, 14))
