"""Two deliberate differences from the reference code, measured (docs/RELEASE.md).

    python -m liveact reference-differences [--size 64] [--chunks 4]

1. Streaming VAE decode. liveact decodes each chunk with one causal cache kept across chunks, which equals
   decoding the whole latent sequence at once. The reference (`generate.py`) decodes chunk 0 alone and every
   later chunk afresh together with the last 3 latent frames of the chunk before, dropping the 9 video frames
   those 3 give (`vae.decode(cat([pre_latent[:, -3:], latent]))[:, :, 9:]`). Both schemes decode the same latent
   stream here -- a portrait panned and zoomed over time, encoded by the VAE, and random-normal latents -- and
   we compare their frames with the whole decode, at chunk boundaries and elsewhere.
2. The 2-GPU memory fold. The reference's sequence-parallel model (`model_memory_sp.py`) splits every chunk's
   frames in halves over 2 ranks, so each rank's cache holds 3 history slots and half a chunk, and each rank
   merges 5 of its own slots: the two compressed slots are made from other frames than on 1 GPU
   (`model_memory.py`, liveact's rule on any number of GPUs). We replay the recorded reference fixtures with
   the 2-GPU fold in place of liveact's and compare compressed keys, velocities and clean latents.

Each measurement comes with a yardstick: the whole decode's own change from frame to frame, and the outputs'
change when the compressed slots are zeroed.

The fixture VAE has random weights: its numbers show the mechanism, not the released VAE's magnitudes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .memory import ConvKVMemory, MemoryLayout, fold_history, layer_filters, merge_tokens

SHARED = Path(os.environ.get("LIVEACT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FIRST, CHUNK, OVERLAP = 6, 8, 3  # the reference's latent frames: chunk 0 (reference frame included), later, re-decoded
LEVELS = 127.5  # [-1, 1] -> 8-bit levels


# -- 1. streaming VAE decode ---------------------------------------------------------------------------------

def portrait_pan(image_path: Path, size: int, latent_frames: int) -> torch.Tensor:
    """A video-like input: the portrait, slowly panned and zoomed (sub-pixel) for 1 + 4(latent_frames-1)
    frames: [1, 3, T, size, size] in [-1, 1]."""
    from PIL import Image

    frames = 1 + 4 * (latent_frames - 1)
    with Image.open(image_path) as im:
        im = im.convert("RGB")
        im = im.resize((2 * size, round(2 * size * im.height / im.width)), Image.BICUBIC)
    still = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    t = torch.arange(frames, dtype=torch.float32)
    scale = 0.6 + 0.03 * torch.sin(2 * math.pi * t / 60)  # the window's share of the width: a slow zoom
    theta = torch.zeros(frames, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale * still.shape[3] / still.shape[2]  # a square window
    theta[:, 0, 2] = -0.3 + 0.06 * torch.sin(2 * math.pi * t / 45)  # the head: a sway left and right ...
    theta[:, 1, 2] = 0.04 * torch.sin(2 * math.pi * t / 33)  # ... and a nod
    grid = F.affine_grid(theta, [frames, 3, size, size], align_corners=False)
    video = F.grid_sample(still.expand(frames, -1, -1, -1), grid, mode="bilinear", align_corners=False)
    return video.permute(1, 0, 2, 3)[None].clamp(-1, 1)  # [1, 3, T, size, size]


def chunk_sizes(chunks: int, first: int = FIRST, chunk: int = CHUNK) -> list[int]:
    return [first] + [chunk] * (chunks - 1)


def overlap_decode(vae, latents: torch.Tensor, sizes: list[int], overlap: int = OVERLAP) -> torch.Tensor:
    """The reference's scheme: chunk 0 decoded alone; each later chunk decoded afresh after the last `overlap`
    latent frames of the chunk before, whose 1 + 4(overlap-1) video frames are dropped. [1, 3, T, H, W]."""
    parts, start, previous = [], 0, None
    for size in sizes:
        current = latents[:, :, start:start + size]  # [1, 16, size, h, w]
        if previous is None:
            parts.append(vae.decode(current))
        else:
            fresh = vae.decode(torch.cat([previous[:, :, -overlap:], current], dim=2))  # [1, 3, 1 + 4(o+s-1), H, W]
            parts.append(fresh[:, :, 1 + 4 * (overlap - 1):])
        previous, start = current, start + size
    return torch.cat(parts, dim=2)


def streamed_decode(vae, latents: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """liveact's scheme: one persistent causal cache across chunks. [1, 3, T, H, W]."""
    decoder, parts, start = vae.streaming_decoder(), [], 0
    for size in sizes:
        parts.append(decoder.decode(latents[:, :, start:start + size]))
        start += size
    return torch.cat(parts, dim=2)


def compare_decodes(vae, latents: torch.Tensor, sizes: list[int], overlap: int = OVERLAP) -> dict:
    """Both schemes against the whole-sequence decode of the same latents [1, 16, sum(sizes), h, w].

    Boundary frames: the 4 video frames of each later chunk's first latent frame (where the overlap scheme's
    fresh decode starts); elsewhere: the other frames of later chunks (chunk 0 is decoded alone by both)."""
    whole = vae.decode(latents)  # [1, 3, 1 + 4(F-1), H, W]
    streamed = streamed_decode(vae, latents, sizes)
    overlapped = overlap_decode(vae, latents, sizes, overlap)
    diff = (overlapped - whole).abs()[0].amax(dim=0)  # [T, H, W]: the worst colour channel
    first_video = 1 + 4 * (sizes[0] - 1)
    later = diff[first_video:].unflatten(0, (len(sizes) - 1, -1))  # [chunks-1, 4*chunk, H, W]
    boundary, rest = later[:, :4], later[:, 4:]
    decoded = sizes[0] + sum(s + overlap for s in sizes[1:])  # latent frames through the decoder
    return dict(
        streamed_vs_whole=(streamed - whole).abs().max().item(),
        chunk0_max=diff[:first_video].max().item(),
        boundary_max=boundary.max().item(), boundary_mean=boundary.mean().item(),
        rest_max=rest.max().item(), rest_mean=rest.mean().item(),
        motion_mean=(whole[:, :, first_video:] - whole[:, :, first_video - 1:-1]).abs().mean().item(),  # yardstick
        by_latent_frame=later.unflatten(1, (-1, 4)).mean(dim=(0, 2, 3, 4)).tolist(),  # mean per latent frame of a chunk
        latent_ratio=decoded / sum(sizes),
        video_ratio=(1 + 4 * (sizes[0] - 1) + sum(4 * (s + overlap) - 3 for s in sizes[1:])) / whole.shape[2],
    )


def measure_vae(vae_path: Path, image_path: Path | None, size: int = 64, chunks: int = 4, seed: int = 0) -> dict:
    """{latents name: compare_decodes(...)} for the portrait pan (when an image is given) and random latents."""
    from . import release

    vae = release.load_vae(vae_path)
    sizes = chunk_sizes(chunks)
    frames, latent_hw = sum(sizes), size // vae.spatial_ratio
    inputs = {}
    if image_path is not None and image_path.exists():
        inputs["portrait, panned (encoded)"] = vae.encode(portrait_pan(image_path, size, frames))
    inputs["random normal"] = torch.randn(1, 16, frames, latent_hw, latent_hw,
                                          generator=torch.Generator().manual_seed(seed))
    return {name: compare_decodes(vae, latents, sizes) for name, latents in inputs.items()}


# -- 2. the 2-GPU memory fold --------------------------------------------------------------------------------

# On 2 GPUs the reference gives rank 0 slots 0..2 (history) and 6..9 (first half of a chunk), rank 1 slots 3..5
# and 10..13; each rank then folds its own cache: rank 0 merges its last 5 slots into its slot 2, rank 1 its first
# 5 into its slot 0 (window slot 3) and moves its last 2 (12, 13) to window slots 4, 5. On 1 GPU (and in liveact)
# slot 2 merges slots 2..6 and slot 3 merges 7..11.
TWO_GPU_GROUPS = ((2, 6, 7, 8, 9), (3, 4, 5, 10, 11))  # window slots merged into slot 2 and slot 3


def two_gpu_fold(history: torch.Tensor, conv_filter: torch.Tensor | None, tokens_per_frame: int,
                 compression: str = "conv", layout: MemoryLayout = MemoryLayout()) -> torch.Tensor:
    """What the reference's 2-GPU path leaves in slots 2..5 from slots 2..13 [B, 12*tokens, heads, head_dim]:
    [B, 4*tokens, heads, head_dim] (the counterpart of `memory.fold_history`; recent slots 4, 5 are the same)."""
    if layout != MemoryLayout() or compression not in ("conv", "mean"):
        raise ValueError("the reference's 2-GPU fold exists only for its own layout and conv/mean compression")
    slots = history.unflatten(1, (layout.window - layout.sink, tokens_per_frame))  # [B, 12, tokens, heads, head_dim]

    def group(window_slots):  # the slots in a rank's cache order, flattened: 5 consecutive tokens merge
        return slots[:, [s - layout.sink for s in window_slots]].flatten(1, 2)

    filter_ = conv_filter if compression == "conv" else None
    merged = [merge_tokens(group(g), filter_, layout.factor) for g in TWO_GPU_GROUPS]
    return torch.cat(merged + [group((12, 13))], dim=1)


def _fold(memory: ConvKVMemory, filters, rule: str, records: list | None) -> None:
    """`ConvKVMemory.compress_and_shift` by `rule`: "one" (1-GPU), "two" (2-GPU) or "zero" (1-GPU with the
    compressed slots zeroed: a yardstick of how much they matter); records (1-GPU, 2-GPU) compressed keys."""
    lay, tokens = memory.layout, memory.tokens_per_frame
    for layer in range(memory.num_layers):
        pair = layer_filters(filters, layer, memory.compression, memory.value_filter, memory.num_layers)
        stored = memory._load(layer, lay.sink, lay.window)  # slots 2..13: keys, values [B, 12*tokens, heads, hd]
        one = [fold_history(x, f, lay, tokens, memory.compression) for x, f in zip(stored, pair)]
        two = [two_gpu_fold(x, f, tokens, memory.compression) for x, f in zip(stored, pair)]
        if records is not None:  # the two compressed slots' keys, from the same state
            records.append((one[0][:, :2 * tokens].clone(), two[0][:, :2 * tokens].clone()))
        if rule == "zero":
            for x in one:
                x[:, :2 * tokens] = 0
        memory._store(layer, lay.sink, *(two if rule == "two" else one))


def fixture_session(folder: Path, chunks: int | None = None, on_step=None):
    """A StreamingSession on a recorded reference fixture (format: shared/fixtures/README.md) that draws the
    recorded noise in the order the reference drew it -> (session, meta, recorded tensors)."""
    from safetensors.torch import load_file

    from .stream import StreamConfig, StreamingSession
    from .transformer import LiveActTransformer

    meta = json.loads((folder / "meta.json").read_text())
    model = LiveActTransformer.from_config(meta["model_config"]).eval()
    model.load_state_dict({k: v.float() for k, v in load_file(folder / "weights.safetensors").items()})
    rec = {k: v.float() for k, v in load_file(folder / "tensors.safetensors").items()}
    steps, chunks = len(meta["timesteps"]) - 1, chunks or meta["chunks"]
    # the chunk's start, then one per re-noise
    noise = iter([rec[f"c{c}.s0.latent_in"] if s == 0 else rec[f"c{c}.s{s - 1}.renoise"]
                  for c in range(chunks) for s in range(steps)])
    config = StreamConfig(compression="mean" if meta["mean_memory"] else "conv", audio_guidance=meta["audio_cfg"])
    session = StreamingSession(model, rec["y"], rec["clip_fea"], rec["context"][None], config=config,
                               noise=lambda shape: next(noise).reshape(shape), on_step=on_step)
    return session, meta, rec


def replay(folder: Path, rule: str = "one", records: list | None = None, chunks: int | None = None) -> dict:
    """Run liveact's stream on a recorded reference fixture with its recorded noise, folding the memory by
    `rule` (see `_fold`).
    -> {"pred": {(chunk, step): velocity}, "final": {chunk: clean latents}, "recorded": fixture tensors}."""
    preds = {}
    session, meta, rec = fixture_session(folder, chunks, on_step=lambda c, s, x, v: preds.__setitem__((c, s), v[0].clone()))
    for memory in session._distinct_memories:  # the fold is the only thing that changes
        memory.compress_and_shift = partial(_fold, memory, rule=rule, records=records)
    finals = {chunk.index: chunk.latents[0] for chunk in session.stream(rec["audio_feat"], num_chunks=chunks or meta["chunks"])}
    return dict(pred=preds, final=finals, recorded=rec)


def _stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    """max/mean abs difference of b from a, and a's max/mean abs."""
    d = (b - a).abs()
    return dict(max=d.max().item(), mean=d.mean().item(), ref_max=a.abs().max().item(), ref_mean=a.abs().mean().item())


def _compare_runs(a: dict, b: dict, chunks: list[int]) -> dict:
    """Velocities (every step) and clean latents of `chunks` in run b against run a."""
    calls = sorted(k for k in a["pred"] if k[0] in chunks)
    def stacked(run, kind, keys):
        return torch.stack([run[kind][k] for k in keys])

    return dict(pred=_stats(stacked(a, "pred", calls), stacked(b, "pred", calls)),
                final=_stats(stacked(a, "final", chunks), stacked(b, "final", chunks)))


def measure_fold(folder: Path, chunks: int | None = None) -> dict:
    """The 2-GPU fold against the 1-GPU one on a reference fixture: compressed keys (same input state), velocities
    and clean latents of each chunk from 2 on (where the runs part) and of all of them; as a yardstick the same
    with the compressed slots zeroed; and the 1-GPU run's parity with the recording."""
    records = []
    one = replay(folder, "one", records, chunks)
    two, zero = replay(folder, "two", chunks=chunks), replay(folder, "zero", chunks=chunks)
    rec, later = one["recorded"], sorted(c for c in one["final"] if c >= 2)
    return dict(
        keys=_stats(torch.cat([r[0].flatten() for r in records]), torch.cat([r[1].flatten() for r in records])),
        folds=len(records),
        chunks={c: _compare_runs(one, two, [c]) for c in later},
        all=_compare_runs(one, two, later),
        zeroed=_compare_runs(one, zero, later),
        early=max((two["final"][c] - one["final"][c]).abs().max().item() for c in one["final"] if c < 2),
        parity=max((v - rec[f"c{c}.s{s}.pred"]).abs().max().item() for (c, s), v in one["pred"].items()))


# -- the report ---------------------------------------------------------------------------------------------

def vae_markdown(vae: dict, size: int, chunks: int) -> str:
    """Table of `measure_vae`: one column per kind of latents."""
    def cell(r, a, b, scale=1.0, digits=4):
        return f"{r[a] * scale:.{digits}f} / {r[b] * scale:.{digits}f}"

    rows = [("persistent cache (liveact) vs whole decode: max abs", lambda r: f"{r['streamed_vs_whole']:.1e}"),
            ("overlap (reference) vs whole, chunk boundaries (first 4 frames of each later chunk): max / mean abs",
             lambda r: cell(r, "boundary_max", "boundary_mean")),
            ("... in 8-bit levels", lambda r: cell(r, "boundary_max", "boundary_mean", LEVELS, 1)),
            (f"overlap vs whole, the other {4 * CHUNK - 4} frames of later chunks: max / mean abs",
             lambda r: cell(r, "rest_max", "rest_mean")),
            ("... in 8-bit levels", lambda r: cell(r, "rest_max", "rest_mean", LEVELS, 1)),
            (f"overlap vs whole, mean abs by latent frame 0..{CHUNK - 1} of a later chunk",
             lambda r: ", ".join(f"{v:.3f}" for v in r["by_latent_frame"])),
            ("yardstick: the whole decode's own frame-to-frame change in later chunks, mean abs",
             lambda r: f"{r['motion_mean']:.4f}"),
            ("overlap decodes per frame shown: latent frames, video frames",
             lambda r: f"{r['latent_ratio']:.3f}, {r['video_ratio']:.3f} (persistent: 1, 1)")]
    lines = [f"### 1. Streaming VAE decode: the reference's {OVERLAP}-latent-frame overlap re-decode vs one persistent "
             f"cache ({size}x{size} video, chunks of {chunk_sizes(chunks)} latent frames; pixels in [-1, 1])", "",
             "| Wan VAE of the fixture (random weights) | " + " | ".join(vae) + " |", "|" + " --- |" * (len(vae) + 1)]
    lines += [f"| {label} | " + " | ".join(fn(r) for r in vae.values()) + " |" for label, fn in rows]
    chunk0 = max(r["chunk0_max"] for r in vae.values())
    lines += ["", f"Chunk 0 is decoded alone by both (max abs difference {chunk0:.1e}). In the limit the overlap "
              f"scheme decodes {CHUNK + OVERLAP} latent frames ({4 * (CHUNK + OVERLAP) - 3} "
              f"video frames) per {CHUNK} shown ({4 * CHUNK}): x{(4 * (CHUNK + OVERLAP) - 3) / (4 * CHUNK):.3f}. "
              "Random weights: the numbers show the mechanism, not the released VAE's magnitudes."]
    return "\n".join(lines)


def fold_markdown(folds: dict) -> str:
    """Table of `measure_fold` for each fixture."""
    lines = ["### 2. The 2-GPU memory fold: the reference's sequence-parallel rule vs its (and liveact's) 1-GPU rule "
             "(replays of the recorded reference fixtures; the fold acts before each chunk from 2 on)", "",
             "| fixture | 2-GPU rule vs 1-GPU rule (unless said) | max abs diff | mean abs diff | max abs value "
             "| mean abs value | relative: mean diff / mean value |", "|" + " --- |" * 7]
    for name, f in folds.items():
        rows = [(f"compressed keys, slots 2-3 ({f['folds']} folds from the same state: chunks x steps x layers)",
                 f["keys"])]
        for label, runs in [*((f"chunk {c}", r) for c, r in f["chunks"].items()), ("all chunks >= 2", f["all"]),
                            ("all chunks >= 2, yardstick: 1-GPU rule with the compressed slots zeroed", f["zeroed"])]:
            rows += [(f"velocity, {label}", runs["pred"]), (f"clean latents, {label}", runs["final"])]
        lines += [f"| {name} | {label} | {s['max']:.2e} | {s['mean']:.2e} | {s['ref_max']:.3f} | {s['ref_mean']:.3f} "
                  f"| {s['mean'] / s['ref_mean']:.2e} |" for label, s in rows]
    lines += ["", "Chunks 0-1 are identical under both rules (max abs " +
              ", ".join(f"{n} {f['early']:.0e}" for n, f in folds.items()) + "); liveact's 1-GPU replay matches the "
              "recorded reference velocities to max abs "
              + ", ".join(f"{n} {f['parity']:.1e}" for n, f in folds.items())
              + ". The fixtures' tiny model is not the released one: its sensitivity to the memory is its own."]
    return "\n".join(lines)


def main(size: int = 64, chunks: int = 4, shared: Path = SHARED) -> int:
    """Measure both differences and print the markdown tables (needs ../shared/fixtures)."""
    fixtures = Path(shared) / "fixtures"
    if not fixtures.exists():
        print(f"error: no shared fixtures at {fixtures} (set LIVEACT_SHARED)", file=sys.stderr)
        return 2
    portrait = Path(shared) / "examples" / "portrait-1.png"
    vae = measure_vae(fixtures / "release" / "Wan2.1_VAE.pth", portrait, size, chunks)
    folds = {p.name: measure_fold(p) for p in sorted((fixtures / "reference").glob("*")) if (p / "meta.json").exists()}
    print(vae_markdown(vae, size, chunks) + "\n\n" + fold_markdown(folds))
    return 0
