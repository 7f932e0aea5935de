"""Long rollouts scored by the reader: `python -m liveact eval`.

For each of K identities never seen in training, stream M minutes of video from the portrait and held-out
synthetic speech through the pipeline (and two more from the real recordings in ../shared/examples, looped
to M minutes, when present). Every chunk is measured as it arrives (`metrics.VideoMeter` keeps per-frame
numbers, never frames), so a 5-minute rollout costs the memory of one chunk. Reported: lip sync, identity
drift at 10 s / 1 min / 5 min, flicker, and the session's memory bytes and ms per chunk at 1 and 5 minutes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import featurize, load_audio
from .metrics import Evaluation, VideoMeter, load_reader
from .synthetic import REST, SAMPLE_RATE, identity, render, speech, to_image

HELDOUT_SEED = 7_000_000  # identities and speech of seeds from here on never appear in training
DRIFT_TIMES = {"10s": 10.0, "1min": 60.0, "5min": 300.0}
COST_TIMES = {"1min": 60.0, "2min": 120.0, "5min": 300.0}
SNAPSHOT_TIMES = (0.0, 10.0, 60.0, 120.0, 300.0)
REACH_TOLERANCE = 2.0  # seconds: a rollout this close to a time counts as reaching it (audio filters trim a little)


@dataclass
class Rollout:
    name: str
    evaluation: Evaluation
    chunk_seconds: list[float]  # wall time of each chunk (denoise + decode)
    chunk_stop: list[int]  # the video frame each chunk ends at
    memory_bytes: list[int]  # of the session, after each chunk
    snapshots: dict[float, np.ndarray] = field(default_factory=dict)  # time -> uint8 frame [H, W, 3]

    @property
    def seconds(self) -> float:
        return self.chunk_stop[-1] / self.evaluation.fps

    def reaches(self, seconds: float) -> bool:
        return self.seconds >= seconds - REACH_TOLERANCE

    def cost_at(self, seconds: float, values: list) -> float | None:
        """Median over the 5 chunks that end at or before `seconds` (None if the rollout does not reach it)."""
        if not self.reaches(seconds):
            return None
        ended = [v for v, stop in zip(values, self.chunk_stop) if stop <= seconds * self.evaluation.fps]
        return float(statistics.median(ended[-5:]))


def looped(samples: np.ndarray, seconds: float) -> np.ndarray:
    """A recording repeated to last `seconds`."""
    total = int(seconds * SAMPLE_RATE)
    return np.tile(samples, total // len(samples) + 1)[:total]


def rollout(pipe, seed: int, audio: np.ndarray, name: str, reader=None, progress=None) -> Rollout:
    """Stream the whole `audio` (16 kHz) from the portrait of identity `seed` and measure it chunk by chunk."""
    portrait = render(identity(seed), REST, pipe.size[0])[0]  # [3, H, W] in [0, 1]
    live = pipe.start(to_image(portrait), prompt="a person is talking", seed=seed)
    features = featurize(pipe.featurizer, audio, SAMPLE_RATE, pipe.fps)
    total = features.shape[0]
    meter = VideoMeter(portrait, reader)
    seconds, stops, memory, snapshots = [], [], [], {}
    for chunk in live.chunks_from_features(features, live.session.chunks_for(total)):
        frames = chunk.frames[:max(0, total - chunk.first_frame)]
        meter.update(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255)
        seconds.append(chunk.seconds)
        stops.append(chunk.first_frame + len(frames))
        memory.append(chunk.memory_bytes)
        for t in SNAPSHOT_TIMES:  # a time just past the end is shown by the last frame
            index = min(round(t * pipe.fps), total - 1) - chunk.first_frame
            if 0 <= index < len(frames) and t <= total / pipe.fps + REACH_TOLERANCE:
                snapshots[t] = frames[index]
        if progress is not None:
            progress.update(len(frames))
    return Rollout(name, meter.result(audio, pipe.fps), seconds, stops, memory, snapshots)


def evaluate_model(model: str | Path = "tiny", minutes: float = 5.0, identities: int = 10,
                   real_speech: Path | None = None, progress: bool = True, options=None) -> tuple[dict, list[Rollout]]:
    """Roll out and score a model (loaded with pipeline `options`, default the plain ones); returns the summary
    (the JSON of `python -m liveact eval`) and the rollouts."""
    from tqdm.auto import tqdm

    from .hub import LiveActError
    from .pipeline import load

    pipe, reader = load(model, options=options), load_reader()
    seconds = minutes * 60
    jobs = [(f"synthetic-{i}", HELDOUT_SEED + i, speech(seconds, HELDOUT_SEED + i)) for i in range(identities)]
    recordings = sorted(Path(real_speech).glob("speech-*.wav")) if real_speech and Path(real_speech).is_dir() else []
    jobs += [(f"real-{path.stem}", HELDOUT_SEED + identities + i, looped(load_audio(path), seconds))
             for i, path in enumerate(recordings)]
    if not jobs:
        raise LiveActError("nothing to evaluate: ask for at least one identity or give --real-speech recordings.")
    bar = tqdm(total=int(seconds * pipe.fps) * len(jobs), unit="frame", desc=f"eval {pipe.name}", disable=not progress)
    rollouts = [rollout(pipe, seed, audio, name, reader, bar) for name, seed, audio in jobs]
    bar.close()
    summary = summarize(rollouts, pipe)
    summary["identity_distance_between_portraits"] = identity_scale([seed for _, seed, _ in jobs], reader, pipe.size[0])
    return summary, rollouts


def identity_scale(seeds: list[int], reader, size: int) -> float | None:
    """Mean identity distance between the portraits of different identities: what drift is measured against."""
    if len(seeds) < 2:
        return None
    _, identities = reader.read(torch.stack([render(identity(seed), REST, size)[0] for seed in seeds]))
    return float(torch.stack([reader.identity_distance(identities, identities[i]) for i in range(len(seeds))]).sum()
                 / (len(seeds) * (len(seeds) - 1)))


def summarize(rollouts: list[Rollout], pipe) -> dict:
    synthetic = [r for r in rollouts if r.name.startswith("synthetic")]
    real = [r for r in rollouts if r.name.startswith("real")]
    times = lambda table: {key: t for key, t in table.items() if all(r.reaches(t) for r in rollouts)}  # noqa: E731

    def mean(values, scale=1.0):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) * scale if values else None

    stream = pipe.options.stream
    return {
        "model": pipe.name, "context": stream.context, "compression": stream.compression,
        "minutes": round(min(r.seconds for r in rollouts) / 60, 2), "rollouts": len(rollouts),
        "lip_sync_corr": mean([r.evaluation.lip_sync_corr for r in synthetic]),
        "lip_sync_corr_real": mean([r.evaluation.lip_sync_corr for r in real]),
        "lip_sync_offset": mean([r.evaluation.offset for r in synthetic]),
        "identity_drift": {key: mean([r.evaluation.drift_at(t) for r in rollouts]) for key, t in times(DRIFT_TIMES).items()},
        "flicker": mean([r.evaluation.flicker for r in rollouts]),
        "memory_bytes": {key: mean([r.cost_at(t, r.memory_bytes) for r in rollouts]) for key, t in times(COST_TIMES).items()},
        "ms_per_chunk": {key: mean([r.cost_at(t, r.chunk_seconds) for r in rollouts], 1000)
                         for key, t in times(COST_TIMES).items()},
        "per_rollout": {r.name: {"lip_sync_corr": r.evaluation.lip_sync_corr, "flicker": r.evaluation.flicker,
                                 "identity_drift": {key: r.evaluation.drift_at(t) for key, t in times(DRIFT_TIMES).items()}}
                        for r in rollouts},
    }


def table_row(summary: dict, label: str | None = None) -> str:
    """One markdown row: model | lip sync | drift 10 s / 1 min / 5 min | flicker | MiB and ms per chunk at 1 / 5 min."""
    fmt = lambda v, f="{:.3f}": "–" if v is None else f.format(v)  # noqa: E731
    drift, memory, ms = summary["identity_drift"], summary["memory_bytes"], summary["ms_per_chunk"]
    mib = lambda key: fmt(memory.get(key) and memory[key] / 2**20, "{:.2f}")  # noqa: E731
    return (f"| {label or summary['model']} | {fmt(summary['lip_sync_corr'], '{:.2f}')} | "
            f"{fmt(summary['lip_sync_corr_real'], '{:.2f}')} | "
            f"{' | '.join(fmt(drift.get(key)) for key in DRIFT_TIMES)} | {fmt(summary['flicker'], '{:.2f}')} | "
            f"{mib('1min')} | {mib('5min')} | {fmt(ms.get('1min'), '{:.0f}')} | {fmt(ms.get('5min'), '{:.0f}')} |")


TABLE_HEADER = ("| model | lip sync | lip sync (real speech) | drift 10 s | drift 1 min | drift 5 min | flicker | "
                "MiB at 1 min | MiB at 5 min | ms/chunk at 1 min | ms/chunk at 5 min |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def plot_drift(rollouts: list[Rollout], path: str | Path, title: str = "") -> Path:
    """Identity drift over time: each rollout (thin) and their mean (thick), per-second means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fps = rollouts[0].evaluation.fps
    figure, axis = plt.subplots(figsize=(9, 3.5))
    curves = []
    for r in rollouts:
        seconds = len(r.evaluation.drift_curve) // int(fps)
        curve = r.evaluation.drift_curve[:seconds * int(fps)].reshape(seconds, -1).mean(1)
        curves.append(curve)
        axis.plot(np.arange(seconds) / 60, curve, lw=0.6, alpha=0.5, color="C3" if r.name.startswith("real") else "C0")
    shortest = min(len(c) for c in curves)
    axis.plot(np.arange(shortest) / 60, np.mean([c[:shortest] for c in curves], 0), lw=2, color="k", label="mean")
    axis.set_xlabel("minutes")
    axis.set_ylabel("identity drift (spreads)")
    axis.set_ylim(bottom=0)
    axis.legend(loc="upper left", fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def contact_sheet(rollouts: list[Rollout], path: str | Path) -> Path:
    """Frames of each rollout (rows) at 0 s, 10 s, 1, 2 and 5 minutes (columns, where reached), labelled."""
    from PIL import Image, ImageDraw

    times = [t for t in SNAPSHOT_TIMES if all(t in r.snapshots for r in rollouts)]
    size = rollouts[0].snapshots[0.0].shape[0]
    label, header = 110, 18
    sheet = Image.new("RGB", (label + size * len(times), header + size * len(rollouts)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, t in enumerate(times):
        draw.text((label + column * size + 4, 3), f"{t / 60:g} min" if t >= 60 else f"{t:g} s", fill="black")
    for row, r in enumerate(rollouts):
        draw.text((4, header + row * size + size // 2 - 6), r.name, fill="black")
        for column, t in enumerate(times):
            sheet.paste(Image.fromarray(r.snapshots[t]), (label + column * size, header + row * size))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Path(path)


# -- what fp8 costs in quality ------------------------------------------------------------------------

def precision_variants():
    """The precisions a low-memory GPU would pick, as pipeline options: the plain one first (the yardstick)."""
    from .pipeline import Options
    from .stream import StreamConfig

    fp8_memory = StreamConfig(fp8_memory=True)
    return {"plain": Options(), "fp8 memory": Options(stream=fp8_memory),
            "fp8 memory + fp8 GEMM": Options(stream=fp8_memory, fp8_gemm=True)}


def frame_difference(plain, other, seeds: list[int], seconds: float) -> dict:
    """Max and mean |pixel difference| (0-255) between two pipelines' videos of the same identities, speech and
    noise, streamed side by side chunk by chunk (no video is kept)."""
    largest, total, count = 0, 0.0, 0
    for seed in seeds:
        audio = speech(seconds, seed)
        streams = []
        for pipe in (plain, other):
            live = pipe.start(to_image(render(identity(seed), REST, pipe.size[0])[0]), prompt="a person is talking", seed=seed)
            features = featurize(pipe.featurizer, audio, SAMPLE_RATE, pipe.fps)
            streams.append(live.chunks_from_features(features, live.session.chunks_for(features.shape[0])))
        for a, b in zip(*streams):
            difference = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
            largest, total, count = max(largest, int(difference.max())), total + float(difference.sum()), count + difference.size
    return {"max_pixel_difference": largest, "mean_pixel_difference": total / count}


def precision_cost(model: str | Path = "tiny", minutes: float = 0.5, identities: int = 4, progress: bool = True) -> dict:
    """Each precision variant scored as `eval` scores a model, and its frames against the plain variant's."""
    from .pipeline import load

    variants, report = precision_variants(), {}
    plain = load(model, options=variants["plain"])
    seeds = [HELDOUT_SEED + i for i in range(identities)]
    for name, options in variants.items():
        summary, _ = evaluate_model(model, minutes, identities, options=options, progress=progress)
        report[name] = {key: summary[key] for key in ("lip_sync_corr", "identity_drift", "flicker", "minutes", "rollouts",
                                                      "per_rollout")}  # per identity: differences are paired
        if name != "plain":
            report[name] |= frame_difference(plain, load(model, options=options), seeds, minutes * 60)
    return report


def precision_table(report: dict) -> str:
    """Markdown: one row per precision variant; after each score of a variant but the plain one, the range of its
    per-identity differences from the plain variant's (the same identities, speech and noise: paired)."""
    plain = report["plain"]["per_rollout"]
    scores = {"lip sync": lambda r: r["lip_sync_corr"], "drift at 10 s": lambda r: r["identity_drift"].get("10s"),
              "flicker": lambda r: r["flicker"]}

    def cell(name: str, score) -> str:
        values = [score(r) for r in report[name]["per_rollout"].values()]
        if None in values:  # a rollout shorter than the time scored
            return "–"
        mean = float(np.mean(values))
        if name == "plain":
            return f"{mean:.3f}"
        differences = [score(r) - score(plain[identity]) for identity, r in report[name]["per_rollout"].items()]
        return f"{mean:.3f} ({min(differences):+.3f} to {max(differences):+.3f})"

    rows = [f"| variant | {' | '.join(scores)} | max / mean pixel difference from plain (0-255) |",
            "| --- |" + " --- |" * (len(scores) + 1)]
    for name, r in report.items():
        difference = (f"{r['max_pixel_difference']} / {r['mean_pixel_difference']:.2f}" if "max_pixel_difference" in r
                      else "–")
        rows.append(f"| {name} | {' | '.join(cell(name, score) for score in scores.values())} | {difference} |")
    return "\n".join(rows)
