"""liveact: real-time, audio-driven talking-head video by autoregressive diffusion.

An open reimplementation of SoulX-LiveAct: a Wan2.1 DiT with an audio module denoises one chunk of
latent video at a time in 3 steps, attending to a fixed 14-frame ConvKV memory per denoising step
(Neighbor Forcing), with positions reset to the window (RoPE reset).

Names are imported on first use, so `import liveact` stays fast (torch and diffusers load lazily).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "pipeline",
    "LiveActPipeline": "pipeline",
    "Options": "pipeline",
    "LiveActTransformer": "transformer",
    "ConvKVMemory": "memory",
    "MemoryLayout": "memory",
    "FlowSampler": "sampler",
    "StreamingSession": "stream",
    "StreamConfig": "stream",
    "PromptEdit": "stream",
    "Chunk": "stream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'liveact' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
