"""ConvKV memory: a fixed window of keys and values that summarises an endless past.

A chunk of latent video attends to a window of 14 latent-frame *slots* per layer:

    slot  0  1 | 2  3       | 4  5   | 6 .. 13
          sink | compressed | recent | current chunk (8 frames)

- sink: the first two frames of the stream (the reference image and its neighbour). They
  anchor identity and are never rewritten.
- compressed: older history, squeezed 5:1 by a learned depthwise Conv1d (kernel = stride = 5,
  one filter per channel, no bias) -- or a plain mean.
- recent: the last two frames of the previous chunk, kept exact for smooth motion.
- current: the keys/values of the chunk being denoised.

Before each chunk from the third on the window is compressed and shifted (`compress_and_shift`):
slot 2 absorbs slots 2..6 (the old compressed slot and the oldest history: the merge is
recursive), slot 3 absorbs 7..11, and slots 12..13 move to 4..5. So the window -- and the
attention cost of a chunk -- never grows.

The merge runs along the *flattened token axis* of the 5 slots it absorbs: 5 consecutive tokens
in raster order become one (a group can straddle a frame boundary when tokens-per-frame is not
a multiple of 5). That is what the released model was trained with, so it is what we compute.

Keys are stored after the q/k RMSNorm and before RoPE: positions are applied by slot at
attention time (see `rope.py`), which is what makes moving a key from slot 12 to slot 4 valid.

Storage is allocated once and updated in place: optionally as fp8 (e4m3) with one float32 scale
per token and head, and optionally on the CPU (offload), copied to the compute device per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class MemoryLayout:
    """Slots of the window, in latent frames. The first chunk fills slots 0..5, later ones 6..13."""

    sink: int = 2
    compressed: int = 2
    recent: int = 2
    chunk: int = 8
    factor: int = 5  # slots merged into one compressed slot (conv kernel = stride)

    def __post_init__(self):
        # the compressed slots must absorb exactly themselves plus one chunk of history
        if self.compressed * self.factor != self.compressed + self.chunk:
            raise ValueError(f"inconsistent layout {self}: compressed * factor must equal compressed + chunk")

    @property
    def window(self) -> int:
        return self.sink + self.compressed + self.recent + self.chunk

    @property
    def first_chunk(self) -> int:
        """Frames of the first chunk (reference frame included): everything but the current slots."""
        return self.window - self.chunk

    @property
    def chunk_slot(self) -> int:
        """Slot where every chunk after the first is written."""
        return self.window - self.chunk


class ConvKVMemory:
    """Key/value window of every layer for one denoising step (Neighbor Forcing keeps one per step).

    Args:
        num_layers, num_heads, head_dim: of the transformer.
        tokens_per_frame: latent tokens per frame after patchify ((H/2) * (W/2)).
        compression: "conv" (learned filters) or "mean".
        value_filter: which learned filter compresses the values. "key" reproduces the released
            SoulX-LiveAct code, which compresses values with the key convolution and never uses
            `memory_proj_v`; "value" is the evidently intended per-tensor behaviour. Keep "key" for
            the released weights, which were trained that way.
        fp8: store keys/values as float8 e4m3 with a float32 scale per (token, head).
        offload: keep the storage in CPU memory and move one layer at a time to `device`.
        dtype, device: compute precision and device of the keys/values handed to attention.
    """

    def __init__(self, num_layers: int, tokens_per_frame: int, num_heads: int, head_dim: int, *,
                 batch_size: int = 1, layout: MemoryLayout = MemoryLayout(),
                 compression: Literal["conv", "mean"] = "conv", value_filter: Literal["key", "value"] = "key",
                 fp8: bool = False, offload: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if compression not in ("conv", "mean"):
            raise ValueError(f"compression must be 'conv' or 'mean', got {compression!r}")
        if value_filter not in ("key", "value"):
            raise ValueError(f"value_filter must be 'key' or 'value', got {value_filter!r}")
        self.layout, self.compression, self.value_filter = layout, compression, value_filter
        self.num_layers, self.tokens_per_frame = num_layers, tokens_per_frame
        self.dtype, self.device = dtype, torch.device(device)
        self.fp8, self.offload = fp8, offload

        shape = (num_layers, batch_size, layout.window * tokens_per_frame, num_heads, head_dim)
        home = torch.device("cpu") if offload else self.device
        pin = offload and torch.cuda.is_available()
        self.keys = torch.zeros(shape, dtype=FP8 if fp8 else dtype, device=home, pin_memory=pin)
        self.values = torch.zeros_like(self.keys, pin_memory=pin)
        self.key_scales = self.value_scales = None  # fp8: one float32 scale per (token, head)
        if fp8:
            self.key_scales = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=home, pin_memory=pin)
            self.value_scales = torch.zeros_like(self.key_scales, pin_memory=pin)
        # fp8 and offload need a compute-precision, on-device copy of one layer's window
        self._direct = not (fp8 or offload)
        self._work = None if self._direct else torch.zeros(
            (2,) + shape[1:], dtype=dtype, device=self.device)  # [K/V, B, window*tokens, heads, head_dim]

    @property
    def nbytes(self) -> int:
        """Bytes held by this memory (storage, scales and workspace). Constant for its lifetime."""
        tensors = [self.keys, self.values, self.key_scales, self.value_scales, self._work]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _tokens(self, first_slot: int, last_slot: int) -> slice:
        return slice(first_slot * self.tokens_per_frame, last_slot * self.tokens_per_frame)

    def _load(self, layer: int, first_slot: int, last_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots [first_slot, last_slot) in compute precision on the compute device."""
        span = self._tokens(first_slot, last_slot)
        if self._direct:
            return self.keys[layer, :, span], self.values[layer, :, span]
        loaded = []
        for stored, scales, work in ((self.keys, self.key_scales, self._work[0]),
                                     (self.values, self.value_scales, self._work[1])):
            work[:, span].copy_(stored[layer, :, span], non_blocking=True)
            if self.fp8:
                work[:, span].mul_(scales[layer, :, span].to(self.device, non_blocking=True))
            loaded.append(work[:, span])
        return loaded[0], loaded[1]

    def _store(self, layer: int, first_slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write keys/values [B, slots*tokens, heads, head_dim] into the slots from first_slot on."""
        span = slice(first_slot * self.tokens_per_frame, first_slot * self.tokens_per_frame + keys.shape[1])
        if not self.fp8:
            self.keys[layer, :, span].copy_(keys, non_blocking=True)
            self.values[layer, :, span].copy_(values, non_blocking=True)
            return
        for x, stored, scales in ((keys, self.keys, self.key_scales), (values, self.values, self.value_scales)):
            quantized, scale = quantize_fp8(x)
            stored[layer, :, span].copy_(quantized, non_blocking=True)
            scales[layer, :, span].copy_(scale, non_blocking=True)

    def attend_window(self, layer: int, slot: int, keys: torch.Tensor, values: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk's keys/values [B, frames*tokens, heads, head_dim] at `slot`, return the
        window the chunk attends to: slots [0, slot + frames), the fresh part exact."""
        end = slot + keys.shape[1] // self.tokens_per_frame
        if end > self.layout.window:
            raise ValueError(f"a chunk of {end - slot} frames at slot {slot} overflows the "
                             f"{self.layout.window}-frame window")
        self._store(layer, slot, keys, values)
        if self._direct:
            return self._load(layer, 0, end)
        self._load(layer, 0, slot)  # older slots into the workspace; the fresh ones stay exact
        fresh = self._tokens(slot, end)
        self._work[0][:, fresh].copy_(keys)
        self._work[1][:, fresh].copy_(values)
        span = self._tokens(0, end)
        return self._work[0][:, span], self._work[1][:, span]

    def _merge(self, x: torch.Tensor, conv_filter: torch.Tensor) -> torch.Tensor:
        """Merge `factor` consecutive tokens into one: [B, factor*n, heads, head_dim] -> [B, n, heads, head_dim]."""
        batch, tokens, heads, head_dim = x.shape
        k = self.layout.factor
        if self.compression == "mean":
            return x.view(batch, tokens // k, k, heads, head_dim).mean(dim=2)
        channels = x.reshape(batch, tokens, heads * head_dim).transpose(1, 2)  # [B, dim, tokens]
        merged = F.conv1d(channels, conv_filter.to(x), stride=k, groups=heads * head_dim)
        return merged.transpose(1, 2).reshape(batch, tokens // k, heads, head_dim)

    def compress_and_shift(self, filters: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        """Make room for the next chunk: merge history into the compressed slots, move the last
        two frames to the recent slots. `filters` holds each layer's (key, value) depthwise conv
        weights [dim, 1, factor]; unused (may be empty) with compression="mean"."""
        lay = self.layout
        if self.compression == "conv" and len(filters) != self.num_layers:
            raise ValueError(f"need one (key, value) filter pair per layer ({self.num_layers}), got {len(filters)}")
        for layer in range(self.num_layers):
            k_filter, v_filter = filters[layer] if self.compression == "conv" else (None, None)
            v_filter = k_filter if self.value_filter == "key" else v_filter
            keys, values = self._load(layer, lay.sink, lay.window)  # slots 2..13
            merged = []
            for x, conv_filter in ((keys, k_filter), (values, v_filter)):
                groups = x[:, :lay.compressed * lay.factor * self.tokens_per_frame]  # slots 2..11
                history = [self._merge(group, conv_filter)
                           for group in groups.chunk(lay.compressed, dim=1)]
                recent = x[:, -lay.recent * self.tokens_per_frame:]  # slots 12..13
                merged.append(torch.cat(history + [recent], dim=1))  # new slots 2..5
            self._store(layer, lay.sink, *merged)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8 e4m3 values and a float32 scale per vector along the last axis: x ~ q * scale."""
    scale = (x.detach().abs().amax(dim=-1, keepdim=True).float() / torch.finfo(FP8).max).clamp(min=1e-12)
    return (x.float() / scale).to(FP8), scale

