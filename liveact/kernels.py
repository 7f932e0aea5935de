"""The fast kernels a model can choose: which attention kernel runs, and fp8 matrix multiplies.

    model.set_attention_backend("sdpa-cudnn")     every attention layer of this model (ATTENTION_BACKENDS)
    model.enable_fp8_gemm()                       the blocks' linear layers in fp8, scaled per row

Both are settings of one model (no process-wide state), and both run everywhere: a GPU kernel that does not
apply (the CPU, float32, shapes it refuses) falls back to the plain computation, so tests check the math on CPUs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# -- attention kernels ------------------------------------------------------------------------------

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # [B, tokens, heads, head_dim]
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION"}
ATTENTION_BACKENDS = ("sdpa", *SDPA_BACKENDS, "flash", "sage")  # "sdpa": PyTorch picks; "sdpa-*": one of its kernels


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _sdpa_backend(name: str) -> AttentionKernel:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_BACKENDS[name])

    def kernel(q, k, v):
        with sdpa_kernel(backend):
            return _sdpa(q, k, v)
    return kernel


def _optional_kernel(name: str) -> AttentionKernel:
    """flash-attn's or SageAttention's kernel, where its wheel is installed."""
    try:
        if name == "flash":
            from flash_attn import flash_attn_func
            return flash_attn_func  # [B, tokens, heads, head_dim] layout, as ours
        from sageattention import sageattn
        return lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")
    except ImportError:
        package = {"flash": "flash-attn", "sage": "sageattention"}[name]
        raise ImportError(f"attention backend {name!r} needs `pip install {package}` (see requirements-gpu.txt)") from None


def attention_kernel(name: str = "sdpa") -> AttentionKernel:
    """The attention kernel called `name` (ATTENTION_BACKENDS). All but plain "sdpa" are GPU kernels for fp16/bf16:
    other calls (the CPU, float32) go to plain SDPA, so one model runs everywhere."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
    if name == "sdpa":
        return _sdpa
    kernel = _sdpa_backend(name) if name in SDPA_BACKENDS else _optional_kernel(name)

    def dispatch(q, k, v):
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            return kernel(q, k.to(q.dtype), v.to(q.dtype))
        return _sdpa(q, k, v)
    return dispatch


class Attention(nn.Module):
    """Holds the model's attention kernel (set by `LiveActTransformer.set_attention_backend`) for the layers
    that attend: a setting of this model, not of the process."""

    kernel: AttentionKernel = staticmethod(_sdpa)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Full (non-causal) attention on [B, tokens, heads, head_dim] tensors."""
        return self.kernel(q, k, v)


# -- fp8 matrix multiplies ----------------------------------------------------------------------------

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448: a row's largest magnitude is scaled to this


def check_fp8_gemm(device: torch.device | str) -> None:
    """fp8 tensor cores: Ada and Hopper GPUs (compute capability 8.9+); the CPU runs the same math dequantised."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"fp8 GEMMs need an Ada or Hopper GPU (compute capability 8.9+), and "
                         f"{torch.cuda.get_device_name(device)} has none: leave out --fp8-gemm.")


def has_fp8_gemm(device: torch.device | str) -> bool:
    """Whether `device` multiplies in fp8 (Ada, Hopper; a CPU runs the same math dequantised)."""
    try:
        check_fp8_gemm(device)
    except ValueError:
        return False
    return True


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, K] -> (e4m3 values, one float32 scale per row [rows, 1]): per-row scaling keeps an outlier token or
    output channel from flattening every other row to zero."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8), scale


class Fp8Linear(nn.Module):
    """A Linear computed in fp8 (e4m3): the weight quantised once with a scale per output row, the input per row
    (token) at every call. On an fp8 GPU `torch._scaled_mm` multiplies on the fp8 tensor cores and accumulates
    in fp32; elsewhere (the CPU, shapes its kernel refuses) the same quantised values are multiplied dequantised."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, weight_scale = _to_fp8(linear.weight.detach())
        self.register_buffer("weight", weight)  # [out, in] e4m3
        self.register_buffer("weight_scale", weight_scale.t().contiguous())  # [1, out]
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _apply(self, fn, recurse=True):
        """`.to(device)` moves the fp8 weight and its float32 scales, but `.to(dtype)` must not cast them (the GPU
        kernel takes e4m3 and float32 only): they move to the new device in their own dtypes."""
        originals = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, original in originals.items():
            if self._buffers[name].dtype != original.dtype:
                self._buffers[name] = original.to(self._buffers[name].device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, scale = _to_fp8(x.reshape(-1, self.in_features))  # [tokens, in], [tokens, 1]
        if x.is_cuda and x.dtype == torch.bfloat16 and self.in_features % 16 == 0 and self.out_features % 16 == 0:
            out = torch._scaled_mm(rows, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                                   bias=self.bias, out_dtype=x.dtype)
        else:
            out = F.linear(rows.float() * scale, self.weight.float() * self.weight_scale.t(),
                           None if self.bias is None else self.bias.float()).to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)
