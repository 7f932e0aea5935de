"""Training on the synthetic world: the tiny video autoencoder and the metrics reader.

    python -m liveact train autoencoder --out liveact/weights/autoencoder
    python -m liveact train reader --out liveact/weights/reader

Each run is seeded and sized to finish within 30 minutes on a 2-core CPU; it writes the model
(diffusers `save_pretrained` layout) and `metrics.json` with its held-out quality.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .autoencoder import TinyVideoAutoencoder
from .synthetic import make_clip, random_frames


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _cosine(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


# -- autoencoder ----------------------------------------------------------------------------------

def clip_pool(count: int, seconds: float, seed: int, size: int = 128) -> torch.Tensor:
    """Rendered clips as uint8 [count, T, 3, H, W] (compact enough to keep thousands of frames in memory)."""
    clips = [make_clip(seed * 100_003 + i, seconds, size=size).video for i in tqdm(range(count), desc="render", leave=False)]
    return torch.stack([(c * 255).round().to(torch.uint8) for c in clips])


def _segments(pool: torch.Tensor, batch: int, frames: int, generator: torch.Generator,
              crop: int | None = None) -> torch.Tensor:
    """Random 1 + 4k-frame segments [B, 3, frames, crop, crop] in [-1, 1] (crops aligned to the 8-pixel grid)."""
    clip = torch.randint(pool.shape[0], (batch,), generator=generator).tolist()
    start = torch.randint(pool.shape[1] - frames + 1, (batch,), generator=generator).tolist()
    size = pool.shape[-1]
    crop = crop or size
    top, left = (torch.randint((size - crop) // 8 + 1, (2, batch), generator=generator) * 8).tolist()
    video = torch.stack([pool[c, s:s + frames, :, t:t + crop, l:l + crop]
                         for c, s, t, l in zip(clip, start, top, left)])
    return video.permute(0, 2, 1, 3, 4).float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float().clamp(-1, 1)).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def evaluate_autoencoder(model: TinyVideoAutoencoder, clips: int = 8, seed: int = 999, size: int = 128) -> float:
    """Mean PSNR over held-out clips (seeds never used in training), whole 1 + 4n-frame clips."""
    scores = []
    for i in range(clips):
        video = make_clip(seed * 100_003 + i, 4.05, size=size).video[:81]  # 81 = 1 + 4*20 frames
        video = video.permute(1, 0, 2, 3)[None] * 2 - 1
        scores.append(psnr(model.decode(model.encode(video)), video))
    return float(np.mean(scores))


def train_autoencoder(out: str | Path, steps: int = 3000, batch: int = 16, lr: float = 2e-3, seed: int = 0,
                      pool_clips: int = 240, size: int = 128, crop: int = 64, progress: bool = True) -> dict:
    """The convolutional autoencoder trains on 64x64 crops (4x cheaper) and runs on whole frames."""
    generator = _seed_everything(seed)
    pool = clip_pool(pool_clips, 4.05, seed, size)  # 81 frames each
    model = TinyVideoAutoencoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    began = time.time()
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, steps, lr)
        video = _segments(pool, batch, 5, generator, crop)  # the first frame alone + a group of 4
        z = model.encode_raw(video)
        reconstruction = model.decode_raw(z)
        loss = F.mse_loss(reconstruction, video) + 0.5 * F.l1_loss(reconstruction, video) + 1e-4 * z.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr(reconstruction.detach(), video):.1f}")
    model.eval()
    with torch.no_grad():  # latent statistics, so the diffusion model sees roughly unit-variance latents
        z = torch.cat([model.encode_raw(_segments(pool, 8, 9, generator)) for _ in range(8)])
        mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4))
    model.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    model.latent_mean.copy_(mean.view(1, -1, 1, 1, 1))
    model.latent_std.copy_(std.view(1, -1, 1, 1, 1))
    metrics = {"heldout_psnr_db": evaluate_autoencoder(model, size=size), "steps": steps, "batch": batch,
               "seed": seed, "train_minutes": (time.time() - began) / 60}
    _save(model, out, metrics)
    return metrics


def _save(model, out: str | Path, metrics: dict) -> None:
    out = Path(out)
    model.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# -- reader ---------------------------------------------------------------------------------------

def train_reader(out: str | Path, steps: int = 3500, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                 pool_frames: int = 24000, size: int = 128, progress: bool = True) -> dict:
    from .metrics import Reader, evaluate_reader

    generator = _seed_everything(seed)
    frames, params, identities = [], [], []
    for part in tqdm(range(pool_frames // 1000), desc="render", leave=False, disable=not progress):
        f, p, i = random_frames(1000, seed * 1000 + part, size)
        frames.append((f * 255).round().to(torch.uint8))
        params.append(p)
        identities.append(i)
    frames, params, identities = torch.cat(frames), torch.cat(params), torch.cat(identities)
    model = Reader(size=size)
    targets = model.targets(params, identities)
    model.set_target_stats(targets.mean(0), targets.std(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    began = time.time()
    bar = tqdm(range(steps), desc="reader", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, steps, lr)
        index = torch.randint(frames.shape[0], (batch,), generator=generator)
        images = frames[index].float() / 255
        loss = F.smooth_l1_loss(model(images), model.normalize(targets[index]), beta=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    metrics = {**evaluate_reader(model, size=size), "steps": steps, "batch": batch, "seed": seed,
               "train_minutes": (time.time() - began) / 60}
    _save(model, out, metrics)
    return metrics
