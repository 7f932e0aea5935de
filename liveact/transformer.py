"""The LiveAct denoiser: a Wan2.1 image-to-video DiT with an audio module and a ConvKV memory.

One call denoises one chunk of latent frames at one noise level. Per block:

    x += gate * SelfAttn(modulate(LN(x)))      queries: this chunk; keys/values: the memory window
    x += CrossAttn(LN(x), image tokens, text tokens)
    x += AudioCrossAttn(LN(x), this frame's audio tokens)      (per latent frame; skipped on step 0)
    x += gate * FFN(modulate(LN(x)))

Parameter names and shapes are exactly those of the released checkpoint (Soul-AILab/LiveAct), so
`from_pretrained` loads it with no missing or unexpected keys. Sizes the reference code hard-codes
(image-encoder width and tokens, audio-encoder layers and channels) are config fields here with the
released values as defaults, so the same class builds the 18.9B model and the tiny one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .kernels import Attention, Fp8Linear, attention_kernel, check_fp8_gemm
from .offload import BlockStreamer
from .parallel import SequenceParallel
from .rope import apply_rope, rope_table


class KVWindow(Protocol):
    """What self-attention needs from a memory (see `memory.ConvKVMemory`)."""

    def attend_window(self, layer: int, slot: int, keys: torch.Tensor, values: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class LayerWindow:
    """One layer's part of a memory: what that layer's self-attention writes and attends to."""

    memory: KVWindow
    layer: int

    @torch.compiler.disable  # eager under --compile; traced, each layer index would cost a graph of its own
    def attend(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.memory.attend_window(self.layer, slot, keys, values)


@dataclass(frozen=True)
class RopeTables:
    """RoPE reset: queries rotate by the chunk's slots, keys by their window slots 0..slot+frames-1
    (by the chunk's own slots when there is no memory). Built once per call, shared by the layers."""

    queries: tuple[torch.Tensor, torch.Tensor]
    keys: tuple[torch.Tensor, torch.Tensor]
    tokens_per_frame: int

    @classmethod
    def for_chunk(cls, head_dim: int, grid: tuple[int, int, int], slot: int, with_memory: bool,
                  device: torch.device) -> "RopeTables":
        frames, height, width = grid
        queries = rope_table(head_dim, slot, frames, height, width, device)
        keys = rope_table(head_dim, 0, slot + frames, height, width, device) if with_memory else queries
        return cls(queries, keys, height * width)


class RMSNorm(nn.Module):
    """RMS norm over the whole channel axis, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activations' precision."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class SelfAttention(Attention):
    """Self-attention of a chunk over its memory window, with q/k RMSNorm and slot-based RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, memory_kernel: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        # ConvKV compression filters: depthwise, kernel = stride, no bias (applied by the memory)
        self.memory_proj_k = nn.Conv1d(dim, dim, memory_kernel, stride=memory_kernel, groups=dim, bias=False)
        self.memory_proj_v = nn.Conv1d(dim, dim, memory_kernel, stride=memory_kernel, groups=dim, bias=False)

    def forward(self, x: torch.Tensor, rope: RopeTables, slot: int, window: LayerWindow | None,
                parallel: SequenceParallel | None = None) -> torch.Tensor:
        split = lambda t: t.unflatten(-1, (self.num_heads, self.head_dim))  # noqa: E731 [B, L, heads, head_dim]
        q = split(self.norm_q(self.q(x)))
        k = split(self.norm_k(self.k(x)))  # cached after the norm, before RoPE
        v = split(self.v(x))
        if parallel is not None:  # my frames, all heads -> all frames, my heads
            q, k, v = (parallel.sequence_to_heads(t) for t in (q, k, v))
        keys, values = (k, v) if window is None else window.attend(slot, k, v)
        q, keys = apply_rope(q, rope.queries), apply_rope(keys, rope.keys)
        out = self.attend(q, keys, values.type_as(q))
        if parallel is not None:
            out = parallel.heads_to_sequence(out)
        return self.o(out.flatten(2))


CrossKeysValues = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # text k, v, image k, v: [B, L, heads, head_dim]


class ImageTextCrossAttention(Attention):
    """Cross-attention to the image-encoder tokens and the text tokens, summed (Wan I2V)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image_tokens: int):
        super().__init__()
        self.num_heads, self.image_tokens = num_heads, image_tokens
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.num_heads, -1))  # [B, L, heads, head_dim]

    def keys_values(self, context: torch.Tensor) -> CrossKeysValues:
        """The keys and values of a context [B, image_tokens + text_len, dim]: the same for every call of a session."""
        image, text = context[:, :self.image_tokens], context[:, self.image_tokens:]
        return (self._split(self.norm_k(self.k(text))), self._split(self.v(text)),
                self._split(self.norm_k_img(self.k_img(image))), self._split(self.v_img(image)))

    def forward(self, x: torch.Tensor, context: torch.Tensor | CrossKeysValues) -> torch.Tensor:
        """`context`: from `embed_context`, or its `keys_values` computed before."""
        text_k, text_v, image_k, image_v = self.keys_values(context) if torch.is_tensor(context) else context
        q = self._split(self.norm_q(self.q(x)))
        return self.o((self.attend(q, text_k, text_v) + self.attend(q, image_k, image_v)).flatten(2))


class AudioCrossAttention(Attention):
    """Each latent frame's tokens attend to that frame's audio tokens only (no q/k norm)."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """x [B, frames*tokens, dim], audio [B, frames, audio_tokens, audio_dim]."""
        batch, frames = audio.shape[:2]
        per_frame = x.unflatten(1, (frames, -1)).flatten(0, 1)  # [B*frames, tokens, dim]
        q = self.q_linear(per_frame).unflatten(-1, (self.num_heads, -1))
        k, v = self.kv_linear(audio.flatten(0, 1)).unflatten(-1, (2, self.num_heads, -1)).unbind(2)
        out = self.proj(self.attend(q, k, v).flatten(2))
        return out.unflatten(0, (batch, frames)).flatten(1, 2)


class LiveActBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, cross_attn_norm: bool,
                 eps: float, audio_dim: int, norm_input_visual: bool, image_tokens: int, memory_kernel: int):
        super().__init__()
        self.norm1 = LayerNorm32(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps, memory_kernel)
        self.norm3 = LayerNorm32(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = ImageTextCrossAttention(dim, num_heads, qk_norm, eps, image_tokens)
        self.norm2 = LayerNorm32(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)  # shift, scale, gate x2
        self.audio_cross_attn = AudioCrossAttention(dim, audio_dim, num_heads)
        self.norm_x = LayerNorm32(dim, eps, elementwise_affine=True) if norm_input_visual else nn.Identity()

    def forward(self, x, time_mod, context, audio, rope, slot, window, parallel=None):
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation + time_mod).chunk(6, dim=1)
        attn_in = (self.norm1(x).float() * (1 + scale_sa) + shift_sa).type_as(x)
        x = (x + self.self_attn(attn_in, rope, slot, window, parallel) * gate_sa).type_as(x)
        x = x + self.cross_attn(self.norm3(x), context)
        if audio is not None:
            audio_out = self.audio_cross_attn(self.norm_x(x), audio)
            if slot == 0 and (parallel is None or parallel.rank == 0):  # the reference frame takes no audio
                audio_out[:, :rope.tokens_per_frame] = 0
            x = x + audio_out
        ffn_in = (self.norm2(x).float() * (1 + scale_ff) + shift_ff).type_as(x)
        return (x + self.ffn(ffn_in) * gate_ff).type_as(x)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float):
        super().__init__()
        self.norm = LayerNorm32(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        # the head modulates with the time embedding itself, not the blocks' 6-way projection
        shift, scale = (self.modulation + time_emb.unsqueeze(1)).chunk(2, dim=1)
        return self.head((self.norm(x) * (1 + scale) + shift).type_as(x))


class ImageProjection(nn.Module):
    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, image_dim), nn.GELU(),
                                  nn.Linear(image_dim, dim), nn.LayerNorm(dim))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(image_tokens)


class AudioProjection(nn.Module):
    """Windowed per-video-frame audio features -> `context_tokens` tokens per latent frame.

    The first latent frame is one video frame (its 5-frame context goes through `proj1`); every
    later latent frame covers `vae_scale` video frames, summarised by the first one's left half
    context, the middle ones' centres and the last one's right half (8 frames, `proj1_vf`).
    """

    def __init__(self, audio_window: int, vae_scale: int, audio_layers: int, audio_channels: int,
                 intermediate_dim: int, output_dim: int, context_tokens: int, norm_output_audio: bool):
        super().__init__()
        self.audio_window, self.vae_scale = audio_window, vae_scale
        self.context_tokens, self.output_dim = context_tokens, output_dim
        per_frame = audio_layers * audio_channels
        self.proj1 = nn.Linear(audio_window * per_frame, intermediate_dim)
        self.proj1_vf = nn.Linear((audio_window + vae_scale - 1) * per_frame, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim) if norm_output_audio else nn.Identity()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 1 + vae_scale*n, window, layers, channels] -> [B, 1 + n, context_tokens, output_dim]."""
        mid = self.audio_window // 2
        first = audio[:, 0].flatten(1)  # [B, window*layers*channels]
        later = audio[:, 1:].unflatten(1, (-1, self.vae_scale))  # [B, n, vae_scale, window, layers, channels]
        later = torch.cat([later[:, :, 0, :mid + 1],  # first video frame: its past and centre
                           later[:, :, 1:-1, mid],  # middle frames: centre only
                           later[:, :, -1, mid:]], dim=2).flatten(2)  # last frame: centre and future
        hidden = torch.cat([F.relu(self.proj1(first)).unsqueeze(1), F.relu(self.proj1_vf(later))], dim=1)
        tokens = self.proj3(F.relu(self.proj2(hidden)))
        return self.norm(tokens.unflatten(-1, (self.context_tokens, self.output_dim)))


def timestep_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (cos first), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class LiveActTransformer(ModelMixin, ConfigMixin):
    """Wan2.1-I2V DiT + audio module, denoising one chunk against a ConvKV memory window.

    Defaults are the released 18.9B configuration (`liveact-18b`).
    """

    _no_split_modules = ["LiveActBlock"]

    @register_to_config
    def __init__(self, patch_size: Sequence[int] = (1, 2, 2), text_len: int = 512, in_dim: int = 36,
                 dim: int = 5120, ffn_dim: int = 13824, freq_dim: int = 256, text_dim: int = 4096,
                 out_dim: int = 16, num_heads: int = 40, num_layers: int = 40, qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6,
                 audio_window: int = 5, intermediate_dim: int = 512, output_dim: int = 768,
                 context_tokens: int = 32, vae_scale: int = 4, norm_input_visual: bool = True,
                 norm_output_audio: bool = True,
                 image_dim: int = 1280, image_tokens: int = 257, audio_layers: int = 12,
                 audio_channels: int = 768, memory_kernel: int = 5):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of even size")
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size))
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            LiveActBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, output_dim,
                         norm_input_visual, image_tokens, memory_kernel)
            for _ in range(num_layers))
        self.head = Head(dim, out_dim, patch_size, eps)
        self.img_emb = ImageProjection(image_dim, dim)
        self.audio_proj = AudioProjection(audio_window, vae_scale, audio_layers, audio_channels,
                                          intermediate_dim, output_dim, context_tokens, norm_output_audio)
        self.init_weights()
        self.attention_backend = "sdpa"  # set_attention_backend changes it

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's initialisation; memory filters start as a plain mean of the 5 merged tokens."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for module in (*self.text_embedding, *self.time_embedding):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for block in self.blocks:
            nn.init.constant_(block.self_attn.memory_proj_k.weight, 1 / self.config.memory_kernel)
            nn.init.constant_(block.self_attn.memory_proj_v.weight, 1 / self.config.memory_kernel)

    def set_attention_backend(self, name: str) -> None:
        """Every attention layer of this model uses the kernel `name` (ATTENTION_BACKENDS)."""
        kernel = attention_kernel(name)
        for module in self.modules():
            if isinstance(module, Attention):
                module.kernel = kernel
        self.attention_backend = name

    def enable_fp8_gemm(self) -> None:
        """The blocks' linear layers multiply in fp8 (`Fp8Linear`), as the reference's --fp8_gemm; the embeddings,
        the head, the norms and the memory filters stay in the model's dtype. Before compiling or offloading."""
        check_fp8_gemm(next(self.blocks.parameters()).device)
        for block in self.blocks:
            for parent in list(block.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(parent, name, Fp8Linear(child))

    def prepare(self, device: torch.device | str, attention: str = "sdpa", fp8_gemm: bool = False,
                block_offload: bool = False, resident_blocks: int = 0, compile: bool = False) -> None:
        """A loaded model's run-time settings, in the order they must come: the attention kernel; fp8 GEMMs before
        offloading (the fp8 weights are what streams); offloading before compiling (the graphs see streamed blocks)."""
        self.set_attention_backend(attention)
        if fp8_gemm:
            self.enable_fp8_gemm()
        if block_offload:
            self.enable_block_offload(device, resident_blocks)
        if compile:
            self.compile_blocks()

    def compile_blocks(self) -> None:
        """torch.compile each block on its own (the --compile flag): the block loop and the memory's
        bookkeeping between blocks stay eager Python."""
        for block in self.blocks:
            block.compile(dynamic=False)

    def enable_block_offload(self, device: torch.device | str, resident: int = 0) -> None:
        """Keep the blocks after the first `resident` in (pinned) CPU memory and stream each to `device` as it is
        needed, prefetched while the block before it computes (`offload.py`): a 24-32 GB card holds `resident`
        blocks and two streamed ones instead of 40. Everything outside the blocks moves to `device`."""
        device = torch.device(device)
        for name, child in self.named_children():
            if name != "blocks":
                child.to(device)
        # the ConvKV filters are read between calls (memory_filters): tiny, they stay on the device
        self.block_streamer = BlockStreamer(self.blocks, device, resident,
                                            kept=("self_attn.memory_proj_k", "self_attn.memory_proj_v"))

    # -- conditioning, computed once and reused across calls ------------------------------------

    def embed_context(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """text [B, <=text_len, text_dim] (zero-padded to text_len, no mask, as released),
        image [B, image_tokens, image_dim] -> context [B, image_tokens + text_len, dim]."""
        cfg = self.config
        if text.ndim != 3 or text.shape[-1] != cfg.text_dim or text.shape[1] > cfg.text_len:
            raise ValueError(f"text tokens must be [B, <={cfg.text_len}, {cfg.text_dim}], got {list(text.shape)}")
        if image.ndim != 3 or tuple(image.shape[1:]) != (cfg.image_tokens, cfg.image_dim):
            raise ValueError(f"image tokens must be [B, {cfg.image_tokens}, {cfg.image_dim}], got {list(image.shape)}")
        text = F.pad(text.to(self.dtype), (0, 0, 0, cfg.text_len - text.shape[1]))
        return torch.cat([self.img_emb(image.to(self.dtype)), self.text_embedding(text)], dim=1)

    def cross_keys_values(self, context: torch.Tensor) -> list[CrossKeysValues]:
        """Each block's image and text keys and values for a context from `embed_context`. They are the same for
        every chunk and step, so a session computes them once and passes them as `forward`'s context."""
        return [block.cross_attn.keys_values(context) for block in self.blocks]

    def project_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Windowed features [B, 1 + vae_scale*n, audio_window, audio_layers, audio_channels]
        -> audio tokens per latent frame [B, 1 + n, context_tokens, output_dim]."""
        cfg = self.config
        expected = (cfg.audio_window, cfg.audio_layers, cfg.audio_channels)
        if audio.ndim != 5 or tuple(audio.shape[2:]) != expected or (audio.shape[1] - 1) % cfg.vae_scale:
            raise ValueError(f"audio window must be [B, 1 + {cfg.vae_scale}*n video frames, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}], got {list(audio.shape)}")
        return self.audio_proj(audio.to(self.dtype))

    def memory_filters(self, parallel: SequenceParallel | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (key, value) ConvKV compression filters, for `ConvKVMemory.compress_and_shift`
        (under sequence parallelism: the channels of this rank's heads)."""
        channels = slice(None)
        if parallel is not None:
            heads, head_dim = parallel.heads(self.config.num_heads), self.config.dim // self.config.num_heads
            channels = slice(heads.start * head_dim, heads.stop * head_dim)
        return [(b.self_attn.memory_proj_k.weight[channels], b.self_attn.memory_proj_v.weight[channels])
                for b in self.blocks]

    # -- one denoiser call -----------------------------------------------------------------------

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor | float, y: torch.Tensor,
                context: torch.Tensor | list[CrossKeysValues], audio: torch.Tensor | None = None,
                memory: KVWindow | None = None, slot: int = 0,
                parallel: SequenceParallel | None = None) -> torch.Tensor:
        """Predict the flow velocity of a chunk.

        Args:
            latents: noisy chunk [B, out_dim, frames, H, W].
            timestep: t in [0, 1000], scalar or [B].
            y: mask + reference latents of the chunk's slots [B, in_dim - out_dim, frames, H, W].
            context: from `embed_context`, or its `cross_keys_values` (computed once per session).
            audio: this chunk's audio tokens [B, frames, context_tokens, output_dim] (rows of
                `project_audio` for the chunk's slots), or None to skip the audio module.
            memory: the ConvKV window of this denoising step, or None to attend within the chunk.
            slot: the chunk's first frame slot in the window (0 for the first chunk, 6 after).
            parallel: split the chunk's frames over ranks (`parallel.py`); every rank gets the whole output.
        Returns:
            velocity [B, out_dim, frames, H, W].
        """
        grid = self._check_inputs(latents, y, context, audio)
        x = self.patch_embedding(torch.cat([latents, y], dim=1).to(self.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, frames*tokens, dim]
        if parallel is not None:  # keep my frames
            mine, tokens = parallel.frames(grid[0]), grid[1] * grid[2]
            x = x[:, mine.start * tokens:mine.stop * tokens]
            audio = None if audio is None else audio[:, mine]
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        time_emb = self.time_embedding(timestep_embedding(self.config.freq_dim, t).to(self.dtype))
        time_mod = self.time_projection(time_emb).unflatten(1, (6, -1)).float()  # [B, 6, dim], modulation in fp32
        rope = RopeTables.for_chunk(self.config.dim // self.config.num_heads, grid, slot, memory is not None, x.device)
        for layer, block in enumerate(self.blocks):
            window = None if memory is None else LayerWindow(memory, layer)
            x = block(x, time_mod, context if torch.is_tensor(context) else context[layer], audio, rope, slot, window,
                      parallel)
        x = self.head(x, time_emb.float())
        if parallel is not None:
            x = parallel.gather_sequence(x)
        return self.unpatchify(x, grid)

    def _check_inputs(self, latents, y, context, audio) -> tuple[int, int, int]:
        cfg = self.config
        if latents.ndim != 5 or latents.shape[1] != cfg.out_dim:
            raise ValueError(f"latents must be [B, {cfg.out_dim}, frames, H, W], got {list(latents.shape)}")
        batch, _, frames, height, width = latents.shape
        if y.shape != (batch, cfg.in_dim - cfg.out_dim, frames, height, width):
            raise ValueError(f"y must be [{batch}, {cfg.in_dim - cfg.out_dim}, {frames}, {height}, {width}] "
                             f"to match the latents, got {list(y.shape)}")
        pt, ph, pw = cfg.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent size {frames}x{height}x{width} is not divisible by the patch {pt}x{ph}x{pw}")
        if not torch.is_tensor(context):
            if len(context) != cfg.num_layers or context[0][0].shape[0] != batch:
                raise ValueError(f"precomputed context must be cross_keys_values of a batch of {batch}: one per block")
        elif context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.dim:
            raise ValueError(f"context must be [{batch}, tokens, {cfg.dim}] from embed_context, got {list(context.shape)}")
        expected_audio = (batch, frames, cfg.context_tokens, cfg.output_dim)
        if audio is not None and tuple(audio.shape) != expected_audio:
            raise ValueError(f"audio tokens must be {list(expected_audio)} (the chunk's rows of project_audio), "
                             f"got {list(audio.shape)}")
        return frames // pt, height // ph, width // pw

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, frames*h*w, pt*ph*pw*out_dim] -> [B, out_dim, frames*pt, h*ph, w*pw]."""
        frames, height, width = grid
        pt, ph, pw = self.config.patch_size
        x = x.view(x.shape[0], frames, height, width, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, c, frames, pt, h, ph, w, pw]
        return x.reshape(x.shape[0], self.config.out_dim, frames * pt, height * ph, width * pw)
