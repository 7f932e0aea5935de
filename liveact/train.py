"""Training on the synthetic world: the tiny LiveAct denoiser, the video autoencoder, the metrics reader.

    python -m liveact train denoiser        (Neighbor Forcing + ConvKV; --objective, --memory for the ablations)
    python -m liveact train autoencoder
    python -m liveact train reader

Each run is seeded and sized for a 2-core CPU (the denoiser about 70 minutes, the others under 30); it
writes the model (diffusers `save_pretrained` layout) and `metrics.json`.

The denoiser trains as it streams. A training clip is 4 chunks; they are denoised in order, each against
the memory its predecessors left (the real `fold_history` compression, unrolled so the convolution
learns), and each chunk's flow-matching loss counts. The objectives differ only in the noise level of
each chunk and of what stays in memory:

    neighbor   all chunks at the same step t_i; memory = the neighbours at t_i      (inference: one memory per step)
    teacher    each chunk at its own t_i; memory = the predecessors clean (t = 0)  (inference: clean context)
    diffusion  each chunk at its own level, clean included; memory = as noised    (inference: clean context)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .autoencoder import TinyVideoAutoencoder
from .memory import MemoryLayout, UnrolledMemory
from .stream import ChunkGeometry, StreamConfig, audio_window
from .synthetic import make_clip, random_frames


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _cosine(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    warmup = min(warmup, steps // 10)  # short fine-tunes warm up for a tenth of their steps
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


# -- the denoiser -----------------------------------------------------------------------------------
#
# Training clips are windows of 4 chunks (6 + 8 + 8 + 8 = 30 latent frames, 117 video frames) cut from
# longer rendered clips: the window's frame 0 is the portrait (as at inference), then 116 talking frames.
# With 4 chunks the memory is compressed twice, the second time recursively, as in a long stream.

CLIP_CHUNKS = 4
AUDIO_LOOKAHEAD = 2  # video frames of audio past a chunk that featurization sees (audio.StreamingFeatures)
OBJECTIVES = ("neighbor", "teacher", "diffusion")


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("LIVEACT_CACHE", Path.home() / ".cache" / "liveact"))


def _fingerprint(*folders: Path) -> str:
    """A short hash of every file under `folders` (names and bytes)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def denoiser_data(encoders: str | Path, clips: int = 240, seconds: float = 10.0, seed: int = 0,
                  progress: bool = True) -> dict:
    """Rendered clips turned into what the denoiser trains on, cached on disk (ablations share it):
    latents [N, 16, 1 + G, 16, 16] (the portrait's, then one per group of 4 frames), y [N, 20, 14, 16, 16],
    per-frame mel features [N, 1 + 4G, 1, 32], image tokens [N, 17, 32], text tokens [N, 16, 32]."""
    from .audio import MelFeatures
    from .autoencoder import WEIGHTS, load_autoencoder
    from .encoders import ImageEncoder, TextEncoder
    from .synthetic import EXPRESSIONS, REST, mouth_position, to_image
    from .tiny import ENCODER_PARTS, FPS, SIZE, TRANSFORMER, prompt_for
    from .vae import condition

    encoders = Path(encoders)
    made_by = _fingerprint(WEIGHTS, *(encoders / part for part in ENCODER_PARTS))  # retrained encoders: new data
    cache = _cache_dir() / f"denoiser-data-v2-{clips}x{seconds:g}s-seed{seed}-{made_by}.pt"
    if cache.exists():
        return torch.load(cache)
    autoencoder = load_autoencoder()
    image_encoder = ImageEncoder.from_pretrained(encoders / "image_encoder", encoders / "image_processor")
    text_encoder = TextEncoder.from_pretrained(encoders / "text_encoder", encoders / "tokenizer",
                                               max_length=TRANSFORMER["text_len"])
    featurizer = MelFeatures(n_mels=TRANSFORMER["audio_channels"])
    frames = 1 + 4 * int(seconds * FPS / 4)
    rng = np.random.default_rng([seed, 7])
    data = {key: [] for key in ("latents", "y", "features", "image", "text", "expression", "mouth")}
    for i in tqdm(range(clips), desc="render clips", disable=not progress):
        expression = EXPRESSIONS[0] if rng.random() < 0.5 else EXPRESSIONS[rng.integers(1, len(EXPRESSIONS))]
        clip = make_clip(seed * 100_003 + 50_000 + i, (frames + 1) / FPS, size=SIZE, expressions=[[expression]] * 64)
        with torch.no_grad():
            portrait = clip.reference[None] * 2 - 1  # [1, 3, H, W]
            video = torch.cat([portrait[:, :, None], clip.video[1:frames].permute(1, 0, 2, 3)[None] * 2 - 1], dim=2)
            data["latents"].append(autoencoder.encode(video)[0].half())
            data["y"].append(condition(autoencoder, portrait)[0].half())
            data["image"].append(image_encoder(to_image(clip.reference))[0])
            text = text_encoder(prompt_for(expression))[0]
            data["text"].append(F.pad(text, (0, 0, 0, TRANSFORMER["text_len"] - text.shape[0])))
        data["features"].append(clip_features(featurizer, clip.audio, frames))
        data["expression"].append(EXPRESSIONS.index(expression))
        # the mouth of each latent frame, in latent pixels: the portrait's, then each group of 4 frames' mean
        mouth = torch.cat([mouth_position(clip.identity, REST), mouth_position(clip.identity, clip.params[1:frames])
                           .view(-1, 4, 2).mean(1)])
        data["mouth"].append((mouth + 1) / 2 * (SIZE // 8))
    data = {key: torch.stack(v) if key != "expression" else torch.tensor(v) for key, v in data.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def clip_features(featurizer, audio: np.ndarray, frames: int) -> torch.Tensor:
    """Per-video-frame features [frames, layers, channels] of a clip's speech, computed as inference does
    (`audio.featurize`); the last row repeats where the tempo filter returns a frame short."""
    from .audio import featurize
    from .tiny import FPS

    features = featurize(featurizer, audio, 16000, FPS)[:frames]
    return torch.cat([features, features[-1:].expand(frames - len(features), -1, -1)])


def _sample_windows(data: dict, batch: int, geometry, generator: torch.Generator) -> dict:
    """A batch of 4-chunk windows at random clips and random starts (multiples of 4 video frames), with the
    audio features of the window's 117 frames and of the 2 after them (the lookahead inference has too)."""
    latent_frames = geometry.latent_frames(CLIP_CHUNKS - 1).stop  # 30
    video_frames = geometry.chunk_video_frames(CLIP_CHUNKS - 1).stop + AUDIO_LOOKAHEAD  # 119
    clip = torch.randint(data["latents"].shape[0], (batch,), generator=generator)
    features = data["features"]
    if features.shape[1] < video_frames:
        raise ValueError(f"training clips must be at least {video_frames} frames long, got {features.shape[1]}")
    start = torch.randint((features.shape[1] - video_frames) // 4 + 1, (batch,), generator=generator)
    window = lambda x: torch.stack([torch.cat([x[c, :1], x[c, 1 + s:s + latent_frames]])  # noqa: E731
                                    for c, s in zip(clip.tolist(), start.tolist())])  # portrait + 29 groups
    latents = window(data["latents"].transpose(1, 2)).transpose(1, 2).float()
    index = (4 * start)[:, None] + torch.arange(video_frames)[None]  # window frame 0 = the portrait
    return dict(latents=latents, y=data["y"][clip].float(), image=data["image"][clip], text=data["text"][clip],
                features=features[clip[:, None], index], mouth=window(data["mouth"]))


LIP_WEIGHT, LIP_RADIUS = 8.0, 1.0  # extra loss weight at the mouth, its Gaussian radius in latent pixels


def lip_weights(mouth: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Loss weights [B, 1, F, H, W]: 1, plus LIP_WEIGHT at the mouth of each latent frame (mouth [B, F, 2] in
    latent pixels). The mouth covers a few latent pixels; without this the audio's share of the loss is faint."""
    ys, xs = torch.arange(height, device=mouth.device) + 0.5, torch.arange(width, device=mouth.device) + 0.5
    dx = xs.view(1, 1, 1, -1) - mouth[..., 0, None, None]
    dy = ys.view(1, 1, -1, 1) - mouth[..., 1, None, None]
    return (1 + LIP_WEIGHT * torch.exp(-(dx ** 2 + dy ** 2) / (2 * LIP_RADIUS ** 2))).unsqueeze(1)


def _noise_level(objective: str, last: bool, shared: float, levels: tuple[float, ...], pick) -> float:
    """The noise level t of one chunk of a training clip."""
    if objective == "neighbor":  # the whole clip at one step: each chunk's memory holds its neighbour at that step
        return shared
    if objective == "teacher":
        return pick(levels)
    return pick(levels if last else levels + (0.0,))  # diffusion: clean context too, but every clip gets a loss


def clip_loss(model, batch: dict, objective: str, compression: str, generator: torch.Generator, geometry,
              stream=None) -> torch.Tensor:
    """Flow-matching loss of one batch of 4-chunk windows, the chunks denoised in order against the memory.

    - neighbor: every chunk at the same step t_i of the 3-step schedule, each attending to its predecessors'
      keys/values at that same step (what Neighbor Forcing's memory holds at inference);
    - teacher: each chunk at its own step, attending to its predecessors as clean latents (t = 0);
    - diffusion: each chunk at its own level (a step, or clean), attending to its predecessors at theirs.
    `stream` supplies the schedule and the steps without audio (default: `StreamConfig()`, as at inference).
    """
    stream = stream or StreamConfig()
    cfg, levels = model.config, stream.sampler.timesteps[:-1]
    x0, y = batch["latents"], batch["y"]  # [B, 16, 30, h, w], [B, 20, 14, h, w]
    weights = lip_weights(batch["mouth"], x0.shape[3], x0.shape[4])  # [B, 1, 30, h, w]
    tokens_per_frame = (x0.shape[3] // cfg.patch_size[1]) * (x0.shape[4] // cfg.patch_size[2])
    memory = UnrolledMemory(cfg.num_layers, tokens_per_frame, layout=geometry.layout, compression=compression)
    context = model.embed_context(batch["text"], batch["image"])
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=generator, device=generator.device))]  # noqa: E731
    shared = pick(levels)
    losses = []
    for k in range(CLIP_CHUNKS):
        frames, rows, last = geometry.latent_frames(k), geometry.audio_rows(k), k == CLIP_CHUNKS - 1
        slot = memory.begin_chunk(k, model.memory_filters() if k >= 2 and compression == "conv" else ())
        t = _noise_level(objective, last, shared, levels, pick)
        clean = x0[:, :, frames]
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        window = audio_window(batch["features"], geometry.audio_window_start(k), geometry.window_video_frames,
                              cfg.audio_window)
        audio = model.project_audio(window)[:, rows]
        with_audio = t not in levels[:stream.audio_from_step]  # as at inference: no audio on the noisiest steps
        velocity = model((1 - t / 1000) * clean + t / 1000 * noise, t, y[:, :, rows], context,
                         audio if with_audio else None, memory, slot)
        if t > 0:  # a clean chunk's velocity (noise - x0) is unknowable: it is context only
            weight = weights[:, :, frames]
            losses.append(((velocity - (noise - clean)) ** 2 * weight).mean() / weight.mean())
        if objective == "teacher" and not last:  # the memory keeps the chunk clean for the next one
            model(clean, 0.0, y[:, :, rows], context, audio, memory, slot)
    return torch.stack(losses).mean()


def train_denoiser(out: str | Path, steps: int = 1800, batch: int = 8, lr: float = 1e-3, seed: int = 0,
                   objective: str = "neighbor", compression: str = "conv", clips: int = 240, seconds: float = 10.0,
                   checkpoint_every: int = 100, progress: bool = True, device: str | None = None,
                   transformer: dict | None = None, init: str | Path | None = None) -> dict:
    """Train the tiny LiveAct denoiser and write a complete model folder to `out` (resumes from its checkpoint).
    `init`: start from the weights of a model folder (fine-tuning) instead of a fresh initialisation."""
    from .tiny import TRANSFORMER, copy_encoders, save_encoders, write_settings
    from .transformer import LiveActTransformer

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    out = Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = _seed_everything(seed)
    if not (out / "text_encoder").exists():  # fine-tuning keeps the encoders the weights were trained with
        copy_encoders(init, out) if init is not None else save_encoders(out, seed)
    data = denoiser_data(out, clips, seconds, seed, progress)
    if init is not None:
        model = LiveActTransformer.from_pretrained(Path(init) / "transformer").to(device)
    else:
        model = LiveActTransformer(**(transformer or TRANSFORMER)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    noise = torch.Generator(device=device).manual_seed(seed)  # noise levels and noise (batches come from `generator`)
    checkpoint, step, minutes, history = out / "checkpoint.pt", 0, 0.0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        noise.set_state(state["noise"])
        step, minutes, history = state["step"], state["minutes"], state["history"]
    geometry = ChunkGeometry(MemoryLayout(), model.config.vae_scale)
    model.train()
    began = time.time()
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=f"denoiser {objective}/{compression}", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, steps, lr)
        batch_ = {k: v.to(device) for k, v in _sample_windows(data, batch, geometry, generator).items()}
        loss = clip_loss(model, batch_, objective, compression, noise, geometry)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-50:]):.4f}")
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                        "noise": noise.get_state(), "step": step + 1, "minutes": minutes + (time.time() - began) / 60, "history": history}, checkpoint)
    model.eval()
    minutes += (time.time() - began) / 60
    model.save_pretrained(out / "transformer")
    metrics = {"objective": objective, "compression": compression, "steps": steps, "batch": batch, "seed": seed,
               "init": None if init is None else Path(init).name, "lr": lr,
               "clips": clips, "clip_seconds": seconds, "train_minutes": round(minutes, 1),
               "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
               "final_loss": float(np.mean(history[-100:])),
               "loss_curve": [float(np.mean(history[i:i + 10])) for i in range(0, len(history), 10)]}
    write_settings(out, context="neighbor" if objective == "neighbor" else "clean", compression=compression,
                   value_filter="key")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)
    return metrics
