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

For training and ablations the same window also exists as `UnrolledMemory`: plain tensors replaced
rather than written in place, so gradients flow through the compression across the chunks of a
training clip. Its "full" variant keeps every frame (the growing cache ConvKV replaces), and both
memories know a "sliding" variant: the same 14 slots with the last four frames kept exact instead
of compressed history (what compression buys, at equal cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
Compression = Literal["conv", "mean", "sliding", "full"]
Filters = Sequence[tuple[torch.Tensor, torch.Tensor]]  # per layer: (key, value) depthwise conv weights [dim, 1, factor]


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


def merge_tokens(x: torch.Tensor, conv_filter: torch.Tensor | None, factor: int) -> torch.Tensor:
    """Merge `factor` consecutive tokens into one, by the depthwise filter or (None) a mean:
    [B, factor*n, heads, head_dim] -> [B, n, heads, head_dim]."""
    batch, tokens, heads, head_dim = x.shape
    if conv_filter is None:
        return x.view(batch, tokens // factor, factor, heads, head_dim).mean(dim=2)
    channels = x.reshape(batch, tokens, heads * head_dim).transpose(1, 2)  # [B, dim, tokens]
    merged = F.conv1d(channels, conv_filter.to(x), stride=factor, groups=heads * head_dim)
    return merged.transpose(1, 2).reshape(batch, tokens // factor, heads, head_dim)


def fold_history(x: torch.Tensor, conv_filter: torch.Tensor | None, layout: "MemoryLayout", tokens_per_frame: int,
                 compression: Compression) -> torch.Tensor:
    """Slots sink..window-1 [B, 12*tokens, heads, head_dim] -> what slots sink..chunk_slot-1 hold next
    [B, 4*tokens, heads, head_dim]: two merged groups of 5 slots and the two recent frames, or for
    "sliding" the last four frames as they are."""
    keep = layout.recent * tokens_per_frame
    if compression == "sliding":
        return x[:, -(layout.compressed * tokens_per_frame + keep):]
    groups = x[:, :layout.compressed * layout.factor * tokens_per_frame]  # slots 2..11
    filter_ = conv_filter if compression == "conv" else None
    history = [merge_tokens(group, filter_, layout.factor) for group in groups.chunk(layout.compressed, dim=1)]
    return torch.cat(history + [x[:, -keep:]], dim=1)  # + slots 12..13


def layer_filters(filters: Filters, layer: int, compression: Compression, value_filter: str, num_layers: int
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (key, value) filters one layer compresses with (None for the variants without learned filters)."""
    if compression != "conv":
        return None, None
    if len(filters) != num_layers:
        raise ValueError(f"need one (key, value) filter pair per layer ({num_layers}), got {len(filters)}")
    k_filter, v_filter = filters[layer]
    return k_filter, k_filter if value_filter == "key" else v_filter


class _Window:
    """Where each chunk goes: chunk 0 at slot 0 (filling 0..5), chunk 1 at 6 (filling 6..13), and every later
    chunk at 6 again, after `compress_and_shift` has folded the history into slots 2..5."""

    layout: MemoryLayout

    def begin_chunk(self, chunk: int, filters: Filters = ()) -> int:
        """The slot of chunk `chunk`; from the third chunk on, make room first."""
        if chunk == 0:
            return 0
        if chunk >= 2:
            self.compress_and_shift(filters)
        return self.layout.chunk_slot

    def compress_and_shift(self, filters: Filters = ()) -> None:
        raise NotImplementedError


class ConvKVMemory(_Window):
    """Key/value window of every layer for one denoising step (Neighbor Forcing keeps one per step).

    Args:
        num_layers, num_heads, head_dim: of the transformer.
        tokens_per_frame: latent tokens per frame after patchify ((H/2) * (W/2)).
        compression: "conv" (learned filters), "mean", or "sliding" (no compression: the last
            frames kept exact).
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
                 compression: Compression = "conv", value_filter: Literal["key", "value"] = "key",
                 fp8: bool = False, offload: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if compression not in ("conv", "mean", "sliding"):
            raise ValueError(f"compression must be 'conv', 'mean' or 'sliding' (a 'full' cache is an "
                             f"UnrolledMemory), got {compression!r}")
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

    def compress_and_shift(self, filters: Filters = ()) -> None:
        """Make room for the next chunk: merge history into the compressed slots, move the last
        two frames to the recent slots. `filters` holds each layer's (key, value) depthwise conv
        weights [dim, 1, factor]; unused (may be empty) without learned compression."""
        lay = self.layout
        for layer in range(self.num_layers):
            pair = layer_filters(filters, layer, self.compression, self.value_filter, self.num_layers)
            stored = self._load(layer, lay.sink, lay.window)  # slots 2..13
            folded = [fold_history(x, f, lay, self.tokens_per_frame, self.compression) for x, f in zip(stored, pair)]
            self._store(layer, lay.sink, *folded)


class UnrolledMemory(_Window):
    """The window as plain tensors, replaced (never written in place) so autograd can unroll it over the
    chunks of a training clip; with compression="full", a cache that keeps every frame and grows.

    Same interface as `ConvKVMemory` (`begin_chunk`, `attend_window`, `nbytes`) and, for conv/mean/sliding,
    the same window: `fold_history` is shared, so what training unrolls is what inference runs.
    """

    def __init__(self, num_layers: int, tokens_per_frame: int, *, layout: MemoryLayout = MemoryLayout(),
                 compression: Compression = "conv", value_filter: Literal["key", "value"] = "key"):
        if compression not in ("conv", "mean", "sliding", "full"):
            raise ValueError(f"compression must be 'conv', 'mean', 'sliding' or 'full', got {compression!r}")
        self.num_layers, self.tokens_per_frame, self.layout = num_layers, tokens_per_frame, layout
        self.compression, self.value_filter = compression, value_filter
        self.keys: list[torch.Tensor | None] = [None] * num_layers  # [B, frames*tokens, heads, head_dim]
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def frames(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[1] // self.tokens_per_frame

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values] if t is not None)

    def begin_chunk(self, chunk: int, filters: Filters = ()) -> int:
        if self.compression == "full":  # every frame stays: each chunk goes after all of them
            return 0 if chunk == 0 else self.frames
        return super().begin_chunk(chunk, filters)

    def compress_and_shift(self, filters: Filters = ()) -> None:
        sink = self.layout.sink * self.tokens_per_frame
        for layer in range(self.num_layers):
            pair = layer_filters(filters, layer, self.compression, self.value_filter, self.num_layers)
            for stored, conv_filter in zip((self.keys, self.values), pair):
                x = stored[layer]
                stored[layer] = torch.cat([x[:, :sink], fold_history(x[:, sink:], conv_filter, self.layout,
                                                                      self.tokens_per_frame, self.compression)], dim=1)

    def attend_window(self, layer: int, slot: int, keys: torch.Tensor, values: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep slots [0, slot), put the chunk's keys/values after them, return the window."""
        span = slot * self.tokens_per_frame
        if slot and (self.keys[layer] is None or self.keys[layer].shape[1] < span):
            raise ValueError(f"slot {slot} is past the {self.frames} frames this memory holds")
        window = []
        for stored, fresh in ((self.keys, keys), (self.values, values)):
            stored[layer] = fresh if slot == 0 else torch.cat([stored[layer][:, :span], fresh], dim=1)
            window.append(stored[layer])
        return window[0], window[1]


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8 e4m3 values and a float32 scale per vector along the last axis: x ~ q * scale."""
    scale = (x.detach().abs().amax(dim=-1, keepdim=True).float() / torch.finfo(FP8).max).clamp(min=1e-12)
    return (x.float() / scale).to(FP8), scale

