"""On a CUDA GPU only (skipped elsewhere, so in CI): the whole pipeline, encoders to decoded frames, on the GPU.

    pytest tests/test_gpu.py        on a machine with an NVIDIA GPU; needs no weights from the Hub
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liveact.pipeline import load
from liveact.synthetic import SAMPLE_RATE, portrait, speech
from random_model import build_random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def stream_on_the_gpu(model, dtype: torch.dtype) -> list:
    pipe = load(model, device="cuda", dtype=dtype)
    assert next(pipe.transformer.parameters()).device.type == "cuda"
    live = pipe.start(portrait(5, pipe.size[0]), prompt="a person is talking", seed=1)
    live.feed(speech(6.0, 5), SAMPLE_RATE)
    live.finish()
    chunks = list(live.chunks())
    assert len(chunks) == live.session.chunks_for(int(6.0 * pipe.fps))
    assert all(c.frames.dtype == np.uint8 and c.frames.shape[1:] == (*pipe.size, 3) for c in chunks)
    return chunks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_tiny_model_streams_on_the_gpu(dtype):
    chunks = stream_on_the_gpu("tiny", dtype)
    assert np.std(chunks[-1].frames) > 1  # a picture, not a flat or blown-out frame


def test_a_checkpoint_of_the_released_layout_streams_on_the_gpu_in_bf16(tmp_path):
    """CLIP, umT5, wav2vec2, the Wan VAE and the transformer, as the 18B model loads them (tiny random weights)."""
    stream_on_the_gpu(build_random_model(tmp_path / "model", size=(64, 64)), torch.bfloat16)
