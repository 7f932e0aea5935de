from __future__ import annotations

import diffusers
import torch
from diffusers import AutoencoderKLWan

from liveact.vae import WanVAE, condition


def tiny_wan_vae() -> WanVAE:
    torch.manual_seed(0)
    return WanVAE(AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1))


def test_diffusers_version_is_the_pinned_one():
    # WanStreamingDecoder drives private attributes of AutoencoderKLWan: re-check them before moving the pin
    assert diffusers.__version__ == "0.42.1"


def test_streamed_decode_equals_whole_decode(capsys):
    wan = tiny_wan_vae()
    latents = torch.randn(1, 16, 6 + 8 + 8, 4, 4)  # the stream's chunks: 6 latent frames, then 8, 8
    whole = wan.decode(latents)
    decoder = wan.streaming_decoder()
    parts = [decoder.decode(latents[:, :, a:b]) for a, b in [(0, 6), (6, 14), (14, 22)]]
    assert [p.shape[2] for p in parts] == [21, 32, 32]
    streamed = torch.cat(parts, dim=2)
    difference = (streamed - whole).abs().max().item()
    with capsys.disabled():
        print(f"\nstreamed vs whole Wan VAE decode: max abs difference {difference:.2e} over {whole.shape[2]} frames")
    assert streamed.shape == whole.shape and difference <= 1e-5


def test_condition_is_mask_plus_latents_of_portrait_and_zero_frames():
    wan = tiny_wan_vae()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    y = condition(wan, image, window=14)
    assert y.shape == (1, 20, 14, 4, 4)
    assert torch.equal(y[:, :4, 0], torch.ones(1, 4, 4, 4)) and torch.equal(y[:, :4, 1:], torch.zeros(1, 4, 13, 4, 4))
    video = torch.cat([image[:, :, None], torch.zeros(1, 3, 52, 32, 32)], dim=2)
    assert torch.allclose(y[:, 4:], wan.encode(video))
    # normalisation round trip
    z = torch.randn(1, 16, 2, 4, 4)
    assert torch.allclose(wan.denormalize(wan.normalize(z)), z, atol=1e-6)


def test_decode_beside_decodes_chunk_k_while_chunk_k_plus_1_denoises():
    """The order of events, and the same results as decoding after each denoise."""
    import threading

    from liveact.vae import DecodeThread, decode_beside

    events = []

    class Chunk:
        def __init__(self, index):
            self.index, self.latents = index, torch.full((2,), float(index))

    def denoised():
        for index in range(3):
            events.append(f"denoise {index}")
            yield Chunk(index)

    def decode(latents):
        events.append(f"decode {int(latents[0])} on {threading.current_thread().name.split('_')[0]}")
        return latents * 2

    def run(overlap):
        events.clear()
        made = []
        for chunk, decoded, seconds in decode_beside(denoised(), decode, DecodeThread() if overlap else None):
            events.append(f"out {chunk.index}")
            made.append(decoded.tolist())
            assert seconds >= 0
        return made, list(events)

    sequential, order = run(False)
    assert order == ["denoise 0", "decode 0 on MainThread", "out 0", "denoise 1", "decode 1 on MainThread", "out 1",
                     "denoise 2", "decode 2 on MainThread", "out 2"]
    overlapped, order = run(True)
    assert overlapped == sequential
    decodes = [event for event in order if event.startswith("decode")]
    assert decodes == [f"decode {k} on liveact-decode" for k in range(3)]
    for k in range(2):  # chunk k is handed out only after chunk k+1 has started denoising
        assert order.index(f"denoise {k + 1}") < order.index(f"out {k}")
